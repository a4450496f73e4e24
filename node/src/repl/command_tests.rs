use super::*;

fn parse(line: &str) -> Result<Command, ParseError> {
    parse_line(line).map(|l| l.command)
}

#[test]
fn mutations_take_states_and_typed_arguments() {
    let Command::Mutate { kind, states, args } =
        parse(r#"add Foo Bar n=1 x=0.5 name="x" flag=true s="1" word=hello"#).expect("parses")
    else {
        panic!("a mutation");
    };
    assert_eq!(kind, MutationKind::Add);
    assert_eq!(states, ["Foo", "Bar"]);
    assert_eq!(args.get("n"), Some(&Value::Int(1)));
    assert_eq!(args.get("x"), Some(&Value::Float(0.5)));
    assert_eq!(args.get("name"), Some(&Value::Str("x".into())));
    assert_eq!(args.get("flag"), Some(&Value::Bool(true)));
    assert_eq!(
        args.get("s"),
        Some(&Value::Str("1".into())),
        "a quoted value is a string"
    );
    assert_eq!(args.get("word"), Some(&Value::Str("hello".into())));
    assert!(matches!(
        parse("remove Foo"),
        Ok(Command::Mutate {
            kind: MutationKind::Remove,
            ..
        })
    ));
    assert!(matches!(
        parse("set A B"),
        Ok(Command::Mutate {
            kind: MutationKind::Set,
            ..
        })
    ));
}

#[test]
fn quotes_and_escapes_make_one_word() {
    let Command::Mutate { states, args, .. } =
        parse(r#"add "Two words" 'it''s' a\ b msg="say \"hi\"" "k=v""#).expect("parses")
    else {
        panic!("a mutation");
    };
    assert_eq!(
        states,
        ["Two words", "its", "a b", "k=v"],
        "a quoted = is part of a state"
    );
    assert_eq!(args.get("msg"), Some(&Value::Str("say \"hi\"".into())));
    let Command::Mutate { states, .. } = parse("add A \"#B\" C#D # a comment \"").expect("parses")
    else {
        panic!("a mutation");
    };
    assert_eq!(
        states,
        ["A", "#B", "C#D"],
        "a # inside a word or quotes is no comment"
    );
    assert_eq!(parse("# only a comment"), Ok(Command::Nothing));
}

#[test]
fn waits_take_a_timeout_in_several_forms() {
    for (line, ms) in [
        ("when A --timeout 5", 5000),
        ("when A --timeout=2.5s", 2500),
        ("when A --timeout 500ms", 500),
        ("when A --timeout 1m", 60_000),
    ] {
        let Command::When { states, timeout } = parse(line).expect(line) else {
            panic!("{line}");
        };
        assert_eq!(states, ["A"]);
        assert_eq!(timeout, Some(Duration::from_millis(ms)), "{line}");
    }
    assert_eq!(
        parse("when-not A B"),
        Ok(Command::WhenNot {
            states: vec!["A".into(), "B".into()],
            timeout: None
        })
    );
    assert_eq!(
        parse("when-time A=3 B=10 --timeout 1"),
        Ok(Command::WhenTime {
            ticks: vec![("A".into(), 3), ("B".into(), 10)],
            timeout: Some(Duration::from_secs(1))
        })
    );
    assert_eq!(
        parse("watch --ticks --until Ready --timeout 3"),
        Ok(Command::Watch {
            ticks: true,
            until: Some("Ready".into()),
            timeout: Some(Duration::from_secs(3))
        })
    );
}

#[test]
fn a_selector_addresses_one_command() {
    let line = parse_line("@leaf add Flag").expect("parses");
    assert_eq!(line.machine.as_deref(), Some("leaf"));
    assert!(matches!(line.command, Command::Mutate { .. }));
    assert_eq!(parse("use leaf"), Ok(Command::Use("leaf".into())));
    assert_eq!(parse("inspect"), Ok(Command::Inspect(None)));
    assert_eq!(
        parse("inspect leaf"),
        Ok(Command::Inspect(Some("leaf".into())))
    );
    assert_eq!(parse("   "), Ok(Command::Nothing));
    assert_eq!(parse("quit"), Ok(Command::Exit));
    assert!(matches!(
        parse_line("@ add A"),
        Err(ParseError::Missing("@", ..))
    ));
}

#[test]
fn mistakes_are_clear_errors() {
    let cases: &[(&str, &str)] = &[
        ("add", "add needs at least one state"),
        ("set", "set needs at least one state"),
        ("add \"Foo", "unclosed \" quote"),
        ("add 'Foo", "unclosed ' quote"),
        ("frobnicate A", "unknown command \"frobnicate\""),
        ("when A --timeout", "--timeout needs a duration"),
        ("when A --timeout soon", "\"soon\" is not a duration"),
        ("when A --timeout -1", "between 0 and a day"),
        ("when A --timeout 1e300", "between 0 and a day"),
        ("when A --frob", "unknown option \"--frob\""),
        ("add A --timeout 1", "unknown option \"--timeout\""),
        ("when-time A", "\"A\" is not STATE=TICK"),
        ("when-time A=-1", "is not STATE=TICK"),
        ("when-time A=99999999999999999999999", "is not STATE=TICK"),
        ("add =1", "has no name"),
        ("list extra", "takes no arguments"),
        ("use", "use needs a machine name"),
        ("use a b", "one too many"),
        ("watch --until", "--until needs a state"),
        ("watch Foo", "unexpected \"Foo\""),
    ];
    for (line, expected) in cases {
        let err = parse(line).expect_err(line).to_string();
        assert!(err.contains(expected), "{line:?}: {err}");
    }
}

#[test]
fn hostile_lines_are_bounded() {
    let long = format!("add {}", "A".repeat(MAX_LINE));
    assert!(matches!(parse(&long), Err(ParseError::TooLong(_))));
    let many = format!("add {}", "A ".repeat(MAX_WORDS + 1));
    assert_eq!(parse(&many), Err(ParseError::TooManyWords));
    // An unknown command of a million characters is quoted cut, not echoed whole.
    let junk = "x".repeat(MAX_LINE - 10);
    let err = parse(&junk).expect_err("unknown").to_string();
    assert!(err.len() < 200, "{} bytes", err.len());
    // Control characters in names are escaped in errors.
    let err = parse("\u{1b}[2Jboom").expect_err("unknown").to_string();
    assert!(!err.contains('\u{1b}'), "{err:?}");
    // Words given by a shell are bounded too.
    let words = vec![Word::from_arg(&"A".repeat(MAX_LINE + 1))];
    assert!(matches!(parse_words(words), Err(ParseError::TooLong(_))));
    // Only quotes, only escapes, stray `=`: errors or words, never a panic.
    for line in [
        "\"",
        "'",
        "\\",
        "a\\",
        "===",
        "add ====",
        "\"\"\"",
        "@",
        "@@x add A",
        "add \u{0}",
    ] {
        let _ = parse_line(line);
    }
}

#[test]
fn a_shells_words_keep_a_quoted_value_a_string() {
    let words = ["add", "Foo", "n=1", "name=\"7\"", "s=two words"]
        .iter()
        .map(|w| Word::from_arg(w))
        .collect();
    let Command::Mutate { states, args, .. } = parse_words(words).expect("parses").command else {
        panic!("a mutation");
    };
    assert_eq!(states, ["Foo"]);
    assert_eq!(args.get("n"), Some(&Value::Int(1)));
    assert_eq!(args.get("name"), Some(&Value::Str("7".into())));
    assert_eq!(args.get("s"), Some(&Value::Str("two words".into())));
}

#[test]
fn unknown_states_are_named_with_the_closest_ones() {
    let known = ["Start", "Ready", "Flag", "Exception"];
    let command = parse("add Fla").expect("parses");
    let err = check_states(&command, &known).expect_err("unknown");
    assert!(
        err.contains("unknown state \"Fla\"") && err.contains("did you mean: Flag"),
        "{err}"
    );
    let command = parse("when Zzz").expect("parses");
    let err = check_states(&command, &known).expect_err("unknown");
    assert!(
        err.contains("the machine has: Start Ready Flag Exception"),
        "{err}"
    );
    let command = parse("when-time Ready=3").expect("parses");
    assert_eq!(check_states(&command, &known), Ok(()));
}
