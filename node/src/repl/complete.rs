//! Completion without I/O: the line up to the cursor and what is connected (machine names,
//! their states) in, the candidates for the word under the cursor out. Commands in the first
//! word, `@MACHINE` before it, states after a command that takes them (`STATE=` for
//! `when-time`), machines after `use`/`inspect`, options after `--`.

use super::command::{COMMANDS, MAX_LINE, options_of, split};

/// Most candidates offered at once.
pub const MAX_CANDIDATES: usize = 500;

/// A connected machine as completion sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    pub name: String,
    pub states: Vec<String>,
}

/// What completion knows: the machines and which one commands act on.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub machines: &'a [MachineInfo],
    pub current: Option<&'a str>,
}

/// Candidates for the text from `start` to the cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub start: usize,
    pub candidates: Vec<String>,
}

/// Completes the word before `pos` in `line`.
pub fn complete(line: &str, pos: usize, cx: Context<'_>) -> Completion {
    let none = Completion {
        start: pos.min(line.len()),
        candidates: Vec::new(),
    };
    if pos > line.len() || pos > MAX_LINE || !line.is_char_boundary(pos) {
        return none;
    }
    let split = split(&line[..pos]);
    if split.open_quote.is_some() {
        return none;
    }
    let words: Vec<&str> = split.words.iter().map(|w| w.text.as_str()).collect();
    let (index, partial) = if split.trailing_space || words.is_empty() {
        (words.len(), "")
    } else {
        (words.len() - 1, words[words.len() - 1])
    };
    let start = split.last_start;
    let selector = words.first().and_then(|w| w.strip_prefix('@'));
    let command_at = usize::from(selector.is_some() && index > 0);
    let machine_names = || cx.machines.iter().map(|m| m.name.clone());
    let candidates: Vec<String> = if index == 0 && partial.starts_with('@') {
        machine_names()
            .map(|n| format!("@{}", quoted(&n)))
            .collect()
    } else if index == command_at {
        COMMANDS
            .iter()
            .map(|(name, ..)| (*name).to_owned())
            .collect()
    } else {
        let command = words[command_at];
        let previous = words[index - 1];
        let selected = selector.or(cx.current);
        let states = || -> Vec<String> {
            cx.machines
                .iter()
                .find(|m| Some(m.name.as_str()) == selected)
                .map(|m| m.states.clone())
                .unwrap_or_default()
        };
        // States already written are not offered again.
        let unused = || -> Vec<String> {
            states()
                .into_iter()
                .filter(|s| !words[command_at + 1..index].contains(&s.as_str()))
                .map(|s| quoted(&s))
                .collect()
        };
        if previous == "--until" && options_of(command).contains(&"--until") {
            states().iter().map(|s| quoted(s)).collect()
        } else if previous == "--timeout" {
            Vec::new()
        } else if partial.starts_with("--") {
            options_of(command)
                .iter()
                .map(|o| (*o).to_owned())
                .collect()
        } else {
            match command {
                "add" | "remove" | "set" | "when" | "when-not" if !partial.contains('=') => {
                    unused()
                }
                "when-time" if !partial.contains('=') => {
                    unused().into_iter().map(|s| format!("{s}=")).collect()
                }
                "inspect" | "use" if index == command_at + 1 => {
                    machine_names().map(|n| quoted(&n)).collect()
                }
                "help" if index == command_at + 1 => COMMANDS
                    .iter()
                    .map(|(name, ..)| (*name).to_owned())
                    .collect(),
                _ => Vec::new(),
            }
        }
    };
    let mut candidates: Vec<String> = candidates
        .into_iter()
        // A quoted candidate matches what was typed of the name inside its quotes.
        .filter(|c| {
            c.starts_with(partial) || c.strip_prefix('"').is_some_and(|b| b.starts_with(partial))
        })
        .take(MAX_CANDIDATES)
        .collect();
    // In name order, quotes aside.
    candidates.sort_by(|a, b| a.trim_start_matches('"').cmp(b.trim_start_matches('"')));
    candidates.dedup();
    Completion { start, candidates }
}

/// A name as it must be typed to read back as one word: quoted when it has whitespace,
/// quotes, a backslash or an `=`, or could be taken for an option or a selector.
pub fn quoted(name: &str) -> String {
    let plain = !name.is_empty()
        && !name.starts_with("--")
        && !name.starts_with('@')
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\' | '='));
    if plain {
        return name.to_owned();
    }
    let mut out = String::from("\"");
    for c in name.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machines() -> Vec<MachineInfo> {
        vec![
            MachineInfo {
                name: "demo".into(),
                states: ["Start", "Ready", "Red", "Two words", "Exception"]
                    .map(String::from)
                    .to_vec(),
            },
            MachineInfo {
                name: "demo-2".into(),
                states: vec!["Msg".into(), "Reply".into()],
            },
        ]
    }

    fn candidates(line: &str) -> Vec<String> {
        let machines = machines();
        let cx = Context {
            machines: &machines,
            current: Some("demo"),
        };
        complete(line, line.len(), cx).candidates
    }

    #[test]
    fn commands_then_states_of_the_selected_machine() {
        assert_eq!(candidates("w"), ["watch", "when", "when-not", "when-time"]);
        assert_eq!(candidates("add R"), ["Ready", "Red"]);
        assert_eq!(
            candidates("add Ready R"),
            ["Red"],
            "a state written is not offered again"
        );
        assert_eq!(candidates("when-time He"), Vec::<String>::new());
        assert_eq!(candidates("when-time Sta"), ["Start="]);
        assert_eq!(
            candidates("add T"),
            ["\"Two words\""],
            "a name with a space comes quoted"
        );
        assert_eq!(candidates("@demo-2 add "), ["Msg", "Reply"]);
        assert_eq!(candidates("@d"), ["@demo", "@demo-2"]);
        assert_eq!(candidates("@demo-2 "), candidates(""));
        assert_eq!(candidates("use "), ["demo", "demo-2"]);
        assert_eq!(candidates("inspect demo-"), ["demo-2"]);
        assert_eq!(candidates("when Ready --"), ["--timeout"]);
        assert_eq!(candidates("watch --until R"), ["Ready", "Red"]);
        assert_eq!(candidates("watch --timeout "), Vec::<String>::new());
        assert_eq!(candidates("help wh"), ["when", "when-not", "when-time"]);
        assert_eq!(candidates("add Foo n="), Vec::<String>::new());
        assert_eq!(candidates("list "), Vec::<String>::new());
    }

    #[test]
    fn the_start_is_where_the_word_begins() {
        let machines = machines();
        let cx = Context {
            machines: &machines,
            current: Some("demo"),
        };
        let line = "add Ready Re";
        assert_eq!(complete(line, line.len(), cx).start, 10);
        assert_eq!(complete("add ", 4, cx).start, 4);
        // The cursor mid-line completes the word before it.
        let done = complete("add Re Ready", 6, cx);
        assert_eq!(
            (done.start, done.candidates),
            (4, vec!["Ready".into(), "Red".into()])
        );
    }

    #[test]
    fn hostile_input_completes_nothing_and_never_panics() {
        let machines = machines();
        let cx = Context {
            machines: &machines,
            current: None,
        };
        assert!(
            complete("add R", 5, cx).candidates.is_empty(),
            "no machine selected"
        );
        let cx = Context {
            machines: &machines,
            current: Some("demo"),
        };
        assert!(
            complete("add \"Re", 7, cx).candidates.is_empty(),
            "inside a quote"
        );
        assert!(
            complete("add", 99, cx).candidates.is_empty(),
            "cursor past the end"
        );
        assert!(
            complete("añ", 2, cx).candidates.is_empty(),
            "cursor inside a character"
        );
        let long = "a".repeat(MAX_LINE + 10);
        assert!(complete(&long, long.len(), cx).candidates.is_empty());
        for line in ["\\", "@", "@@", "\"\"", "=", "--", "add --until"] {
            let _ = complete(line, line.len(), cx);
        }
    }

    #[test]
    fn quoting_reads_back_as_one_word() {
        use super::super::command::split;
        for name in [
            "plain",
            "two words",
            "say \"hi\"",
            "a\\b",
            "k=v",
            "--opt",
            "@x",
            "",
        ] {
            let typed = quoted(name);
            let words = split(&typed).words;
            assert_eq!(words.len(), 1, "{name:?} as {typed}");
            assert_eq!(words[0].text, name);
            assert!(words[0].eq.is_none(), "{name:?}");
        }
    }
}
