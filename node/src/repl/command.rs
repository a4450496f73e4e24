//! The REPL's language, without I/O: a line (or the words of a one-shot command line) into a
//! [`Line`]: an optional machine selector and a [`Command`]. Bounded: a line longer than
//! [`MAX_LINE`] or with more than [`MAX_WORDS`] words is an error, as is an unclosed quote.
//!
//! ```text
//! [@MACHINE] COMMAND ARGS...
//! add STATE... [KEY=VALUE...]        remove ...   set ...
//! when STATE... [--timeout T]        when-not STATE... [--timeout T]
//! when-time STATE=TICK... [--timeout T]
//! inspect [MACHINE]   list   status   use MACHINE   connect ENDPOINT
//! watch [--ticks] [--until STATE] [--timeout T]   help [COMMAND]   exit
//! ```
//!
//! `#` at the start of a word begins a comment. A word with an `=` outside quotes is an argument: its value is typed as on the command
//! line (`n=1` an integer, `x=0.5` a float, `flag=true` a boolean, anything else a string),
//! and a quoted value is always a string (`name="1"`).

use std::time::Duration;

use asyncmachine::machine::{Args, MutationKind, Value};

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Most words in one line.
pub const MAX_WORDS: usize = 1024;

/// The commands, with a line of help each: what `help` prints and completion offers.
pub const COMMANDS: &[(&str, &str, &str)] = &[
    (
        "add",
        "STATE... [KEY=VALUE...]",
        "activate states (arguments typed: n=1 x=0.5 ok=true s=\"text\")",
    ),
    ("remove", "STATE... [KEY=VALUE...]", "deactivate states"),
    (
        "set",
        "STATE... [KEY=VALUE...]",
        "activate exactly these states, deactivate the rest",
    ),
    (
        "when",
        "STATE... [--timeout T]",
        "wait until all the states are active",
    ),
    (
        "when-not",
        "STATE... [--timeout T]",
        "wait until none of the states is active",
    ),
    (
        "when-time",
        "STATE=TICK... [--timeout T]",
        "wait until each state's tick reaches TICK",
    ),
    (
        "inspect",
        "[MACHINE]",
        "states, ticks, relations of a machine",
    ),
    ("list", "", "connected machines and their connection state"),
    (
        "status",
        "",
        "the selected machine's node: its machines, clients, counters",
    ),
    ("use", "MACHINE", "select the machine later commands act on"),
    (
        "connect",
        "ENDPOINT",
        "mirror one more machine, e.g. tcp://127.0.0.1:7400/demo",
    ),
    (
        "watch",
        "[--ticks] [--until STATE] [--timeout T]",
        "print changes until Ctrl-C",
    ),
    ("help", "[COMMAND]", "this list, or one command's"),
    ("exit", "", "leave (also quit, Ctrl-D)"),
];

/// Options each command takes, for parsing and completion.
pub fn options_of(command: &str) -> &'static [&'static str] {
    match command {
        "when" | "when-not" | "when-time" => &["--timeout"],
        "watch" => &["--ticks", "--until", "--timeout"],
        _ => &[],
    }
}

/// What went wrong reading a line, with what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the line is {0} bytes long, more than {MAX_LINE}; split it into several commands")]
    TooLong(usize),
    #[error("more than {MAX_WORDS} words in one command; split it into several commands")]
    TooManyWords,
    #[error("unclosed {0} quote; close it, or escape it with \\")]
    UnclosedQuote(char),
    #[error("unknown command {0:?}; `help` lists the commands")]
    UnknownCommand(String),
    #[error("{0} needs {1}; e.g. `{2}`")]
    Missing(&'static str, &'static str, &'static str),
    #[error("{command}: {message}")]
    Invalid {
        command: &'static str,
        message: String,
    },
}

/// One word of a line, with what its quotes said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    /// Byte position in `text` of the first `=` written outside quotes.
    pub eq: Option<usize>,
    /// Whether any of the word after that `=` was quoted (the value is then a string).
    pub value_quoted: bool,
    /// Whether any of the word was quoted (then it is never an option or a selector).
    pub quoted: bool,
}

impl Word {
    /// A word as a shell passed it (a one-shot command line): the shell took its quotes, so a
    /// value still wrapped in quotes (`'name="1"'`) is taken as a quoted string.
    pub fn from_arg(arg: &str) -> Word {
        let eq = arg.find('=');
        if let Some(at) = eq {
            let value = &arg[at + 1..];
            for q in ['"', '\''] {
                if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
                    return Word {
                        text: format!("{}={}", &arg[..at], &value[1..value.len() - 1]),
                        eq,
                        value_quoted: true,
                        quoted: false,
                    };
                }
            }
        }
        Word {
            text: arg.to_owned(),
            eq,
            value_quoted: false,
            quoted: false,
        }
    }
}

/// The result of splitting a line: its words, and whether it ended inside a quote (an error
/// for a command, the usual case for completion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub words: Vec<Word>,
    pub open_quote: Option<char>,
    /// Whether the line ends in whitespace outside quotes (a new word begins).
    pub trailing_space: bool,
    /// Byte position in the line where the last word begins.
    pub last_start: usize,
}

/// Splits a line into words as a shell would: whitespace separates, `"..."` and `'...'`
/// quote, `\` escapes the next character (outside single quotes), and a `#` that begins a
/// word begins a comment.
pub fn split(line: &str) -> Split {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut quote: Option<char> = None;
    let mut last_start = 0;
    let mut chars = line.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if quote.is_none() && c.is_whitespace() {
            if let Some(done) = current.take() {
                words.push(done);
            }
            last_start = at + c.len_utf8();
            continue;
        }
        if quote.is_none() && current.is_none() && c == '#' {
            // A comment, to the end of the line (scripts piped in, examples pasted).
            break;
        }
        let word = current.get_or_insert_with(|| {
            last_start = at;
            Word {
                text: String::new(),
                eq: None,
                value_quoted: false,
                quoted: false,
            }
        });
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                word.quoted = true;
                word.value_quoted |= word.eq.is_some();
            }
            (Some(q), c) if c == q => quote = None,
            (None | Some('"'), '\\') => {
                if let Some((_, next)) = chars.next() {
                    word.text.push(next);
                }
            }
            (None, '=') if word.eq.is_none() => {
                word.eq = Some(word.text.len());
                word.text.push('=');
            }
            (_, c) => word.text.push(c),
        }
    }
    let trailing_space = current.is_none() && quote.is_none();
    if let Some(done) = current.take() {
        words.push(done);
    }
    if trailing_space {
        last_start = line.len();
    }
    Split {
        words,
        open_quote: quote,
        trailing_space,
        last_start,
    }
}

/// A command and the machine it was addressed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// `@NAME` before the command: this command only acts on that machine.
    pub machine: Option<String>,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Mutate {
        kind: MutationKind,
        states: Vec<String>,
        args: Args,
    },
    When {
        states: Vec<String>,
        timeout: Option<Duration>,
    },
    WhenNot {
        states: Vec<String>,
        timeout: Option<Duration>,
    },
    WhenTime {
        ticks: Vec<(String, u64)>,
        timeout: Option<Duration>,
    },
    Inspect(Option<String>),
    List,
    Status,
    Use(String),
    Connect(String),
    Watch {
        ticks: bool,
        until: Option<String>,
        timeout: Option<Duration>,
    },
    Help(Option<String>),
    Exit,
    /// An empty line.
    Nothing,
}

/// Parses a line as a person typed it.
pub fn parse_line(line: &str) -> Result<Line, ParseError> {
    if line.len() > MAX_LINE {
        return Err(ParseError::TooLong(line.len()));
    }
    let split = split(line);
    if let Some(q) = split.open_quote {
        return Err(ParseError::UnclosedQuote(q));
    }
    parse_words(split.words)
}

/// Parses the words of a command (a split line, or a one-shot command line's arguments).
pub fn parse_words(mut words: Vec<Word>) -> Result<Line, ParseError> {
    if words.len() > MAX_WORDS {
        return Err(ParseError::TooManyWords);
    }
    if words.iter().map(|w| w.text.len()).sum::<usize>() > MAX_LINE {
        return Err(ParseError::TooLong(
            words.iter().map(|w| w.text.len()).sum(),
        ));
    }
    let mut machine = None;
    if let Some(first) = words.first()
        && !first.quoted
        && let Some(name) = first.text.strip_prefix('@')
    {
        if name.is_empty() {
            return Err(ParseError::Missing("@", "a machine name", "@demo add Flag"));
        }
        machine = Some(name.to_owned());
        words.remove(0);
    }
    let Some(first) = words.first() else {
        return Ok(Line {
            machine,
            command: Command::Nothing,
        });
    };
    let name = first.text.clone();
    let rest = &words[1..];
    let command = match name.as_str() {
        "add" => mutate(MutationKind::Add, "add", rest)?,
        "remove" => mutate(MutationKind::Remove, "remove", rest)?,
        "set" => mutate(MutationKind::Set, "set", rest)?,
        "when" => {
            let (states, timeout) = states_and_timeout("when", rest)?;
            Command::When { states, timeout }
        }
        "when-not" => {
            let (states, timeout) = states_and_timeout("when-not", rest)?;
            Command::WhenNot { states, timeout }
        }
        "when-time" => when_time(rest)?,
        "inspect" => Command::Inspect(at_most_one("inspect", rest)?),
        "list" | "ls" => no_args("list", rest, Command::List)?,
        "status" => no_args("status", rest, Command::Status)?,
        "use" => Command::Use(at_most_one("use", rest)?.ok_or(ParseError::Missing(
            "use",
            "a machine name",
            "use demo",
        ))?),
        "connect" => Command::Connect(at_most_one("connect", rest)?.ok_or(ParseError::Missing(
            "connect",
            "an endpoint",
            "connect tcp://127.0.0.1:7400/demo",
        ))?),
        "watch" => watch(rest)?,
        "help" | "?" => Command::Help(at_most_one("help", rest)?),
        "exit" | "quit" => no_args("exit", rest, Command::Exit)?,
        other => return Err(ParseError::UnknownCommand(shown(other))),
    };
    Ok(Line { machine, command })
}

/// A name as quoted in an error: control characters escaped, cut at 80 characters.
fn shown(text: &str) -> String {
    let printable = asyncmachine::printable::printable(text);
    if printable.chars().count() > 80 {
        format!("{}…", printable.chars().take(79).collect::<String>())
    } else {
        printable.into_owned()
    }
}

fn invalid(command: &'static str, message: impl Into<String>) -> ParseError {
    ParseError::Invalid {
        command,
        message: message.into(),
    }
}

fn is_option(word: &Word) -> bool {
    !word.quoted && word.text.starts_with("--")
}

fn no_args(command: &'static str, rest: &[Word], done: Command) -> Result<Command, ParseError> {
    match rest.first() {
        None => Ok(done),
        Some(w) => Err(invalid(
            command,
            format!("takes no arguments, got {:?}", shown(&w.text)),
        )),
    }
}

fn at_most_one(command: &'static str, rest: &[Word]) -> Result<Option<String>, ParseError> {
    match rest {
        [] => Ok(None),
        [one] => Ok(Some(one.text.clone())),
        [_, extra, ..] => Err(invalid(
            command,
            format!(
                "takes one argument; {:?} is one too many",
                shown(&extra.text)
            ),
        )),
    }
}

fn mutate(kind: MutationKind, command: &'static str, rest: &[Word]) -> Result<Command, ParseError> {
    let mut states = Vec::new();
    let mut args = Args::new();
    for word in rest {
        if is_option(word) {
            return Err(invalid(
                command,
                format!("unknown option {:?}", shown(&word.text)),
            ));
        }
        match word.eq {
            Some(at) => {
                let key = &word.text[..at];
                let value = &word.text[at + 1..];
                if key.is_empty() {
                    return Err(invalid(
                        command,
                        format!(
                            "argument {:?} has no name; write NAME=VALUE",
                            shown(&word.text)
                        ),
                    ));
                }
                let value = if word.value_quoted {
                    Value::Str(value.to_owned())
                } else {
                    Value::from_text(value)
                };
                args.insert(key, value);
            }
            None => states.push(word.text.clone()),
        }
    }
    if states.is_empty() {
        let example = match kind {
            MutationKind::Add => "add Foo n=1",
            MutationKind::Remove => "remove Foo",
            _ => "set Foo Bar",
        };
        // `set` with no state would deactivate everything: ask for it by name.
        return Err(ParseError::Missing(command, "at least one state", example));
    }
    Ok(Command::Mutate { kind, states, args })
}

/// Reads `--timeout T` (`5`, `2.5`, `500ms`, `3s`, `1m`) out of the words; the rest are kept.
fn take_timeout<'a>(
    command: &'static str,
    rest: &'a [Word],
) -> Result<(Vec<&'a Word>, Option<Duration>), ParseError> {
    let mut kept = Vec::new();
    let mut timeout = None;
    let mut words = rest.iter();
    while let Some(word) = words.next() {
        if is_option(word) {
            let (name, inline) = match word.text.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (word.text.as_str(), None),
            };
            if name != "--timeout" || !options_of(command).contains(&"--timeout") {
                if options_of(command).contains(&name) {
                    kept.push(word);
                    continue;
                }
                return Err(invalid(
                    command,
                    format!("unknown option {:?}", shown(name)),
                ));
            }
            let value = match inline {
                Some(v) => v,
                None => words.next().map(|w| w.text.clone()).ok_or_else(|| {
                    invalid(command, "--timeout needs a duration, e.g. --timeout 5s")
                })?,
            };
            timeout = Some(parse_duration(&value).map_err(|m| invalid(command, m))?);
        } else {
            kept.push(word);
        }
    }
    Ok((kept, timeout))
}

/// A duration as a person writes it: seconds (`5`, `0.5`) or with a unit (`500ms`, `3s`,
/// `2m`); at most a day.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.parse().map_err(|_| {
        format!(
            "{:?} is not a duration; write e.g. 5, 2.5s or 500ms",
            shown(text)
        )
    })?;
    let seconds = value * scale;
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!(
            "{:?}: a timeout is between 0 and a day",
            shown(text)
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn states_and_timeout(
    command: &'static str,
    rest: &[Word],
) -> Result<(Vec<String>, Option<Duration>), ParseError> {
    let (words, timeout) = take_timeout(command, rest)?;
    let states: Vec<String> = words.iter().map(|w| w.text.clone()).collect();
    if states.is_empty() {
        return Err(ParseError::Missing(
            command,
            "at least one state",
            "when Ready --timeout 5",
        ));
    }
    Ok((states, timeout))
}

fn when_time(rest: &[Word]) -> Result<Command, ParseError> {
    let (words, timeout) = take_timeout("when-time", rest)?;
    let mut ticks = Vec::new();
    for word in words {
        let parsed = word
            .eq
            .and_then(|at| Some((&word.text[..at], word.text[at + 1..].parse::<u64>().ok()?)));
        match parsed {
            Some((state, tick)) if !state.is_empty() => ticks.push((state.to_owned(), tick)),
            _ => {
                return Err(invalid(
                    "when-time",
                    format!(
                        "{:?} is not STATE=TICK, e.g. Heartbeat=9",
                        shown(&word.text)
                    ),
                ));
            }
        }
    }
    if ticks.is_empty() {
        return Err(ParseError::Missing(
            "when-time",
            "at least one STATE=TICK",
            "when-time Heartbeat=9",
        ));
    }
    Ok(Command::WhenTime { ticks, timeout })
}

fn watch(rest: &[Word]) -> Result<Command, ParseError> {
    let (words, timeout) = take_timeout("watch", rest)?;
    let mut ticks = false;
    let mut until = None;
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        match word.text.as_str() {
            "--ticks" if is_option(word) => ticks = true,
            "--until" if is_option(word) => {
                until = Some(words.next().map(|w| w.text.clone()).ok_or_else(|| {
                    invalid("watch", "--until needs a state, e.g. --until Ready")
                })?);
            }
            other => {
                return Err(invalid(
                    "watch",
                    format!(
                        "unexpected {:?}; watch takes --ticks, --until STATE, --timeout T",
                        shown(other)
                    ),
                ));
            }
        }
    }
    Ok(Command::Watch {
        ticks,
        until,
        timeout,
    })
}

/// The states a command names, to check against the machine's schema before it runs.
pub fn named_states(command: &Command) -> Vec<&str> {
    match command {
        Command::Mutate { states, .. }
        | Command::When { states, .. }
        | Command::WhenNot { states, .. } => states.iter().map(String::as_str).collect(),
        Command::WhenTime { ticks, .. } => ticks.iter().map(|(s, _)| s.as_str()).collect(),
        Command::Watch { until: Some(s), .. } => vec![s.as_str()],
        _ => Vec::new(),
    }
}

/// The first state a command names that the schema does not have, as an error that lists
/// the closest names.
pub fn check_states(command: &Command, known: &[&str]) -> Result<(), String> {
    for state in named_states(command) {
        if !known.contains(&state) {
            let close: Vec<&str> = known
                .iter()
                .copied()
                .filter(|k| {
                    let (a, b) = (k.to_lowercase(), state.to_lowercase());
                    a.starts_with(&b.chars().take(2).collect::<String>())
                        || a.contains(&b)
                        || b.contains(&a)
                })
                .take(5)
                .collect();
            let hint = if close.is_empty() {
                format!("the machine has: {}", shown(&known.join(" ")))
            } else {
                format!("did you mean: {}", shown(&close.join(" ")))
            };
            return Err(format!("unknown state {:?}; {hint}", shown(state)));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
