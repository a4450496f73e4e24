//! `am-node repl` against a root served over TCP in this process: one-shot commands through
//! the real binary, completion through the completer's API on a live session, and (where
//! tmux is installed) a session at a terminal with Tab completion.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use am_node::repl::{ConnectOptions, ReplHelper, Session};
use asyncmachine::machine::{Args, Machine, Schema, SchemaDef, StateDef, StateSource};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::TransportConfig;
use common::within;
use rustyline::completion::Completer as _;

fn schema() -> Schema {
    Schema::new(SchemaDef::of_states(vec![
        StateDef::new("Start"),
        StateDef::new("Ready").require(["Start"]),
        StateDef::new("Tick").multi(),
        StateDef::new("Two words"),
    ]))
    .expect("valid")
}

async fn served() -> (Machine, Server, String) {
    let machine = Machine::new(schema());
    let (server, endpoint) =
        common::serve(Arc::new(machine.clone()), ServerConfig::default(), "tcp").await;
    (machine, server, endpoint.to_string())
}

async fn repl(endpoint: &str, command: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_am-node"));
    cmd.args(["repl", endpoint, "--"]).args(command);
    within("am-node repl", cmd.output())
        .await
        .expect("am-node runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_add_carries_typed_arguments_and_exits_by_outcome() {
    let (machine, _server, endpoint) = served().await;
    // The typed arguments as the handlers see them: the root's args waiter matches by value.
    let args = Args::new()
        .with("n", 1_i64)
        .with("name", "x")
        .with("flag", true)
        .with("s", "7");
    let seen = machine.when_args("Tick", args);
    let out = repl(
        &endpoint,
        &[
            "add",
            "Start",
            "Tick",
            "n=1",
            "name=x",
            "flag=true",
            "s=\"7\"",
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("Executed  now: Start Tick"), "{stdout}");
    within("the arguments at the root", seen)
        .await
        .expect("Tick with those arguments");
    assert!(machine.is(&["Start", "Tick"]));

    // Ready requires Start: with Start gone, adding Ready is canceled (exit code 3).
    machine.remove(&["Start"], Args::new()).expect("removes");
    let out = repl(&endpoint, &["add", "Ready"]).await;
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
    assert!(text(&out).0.starts_with("Canceled"), "{:?}", text(&out));

    // A whole line in one argument, quotes and all.
    let out = repl(&endpoint, &["add \"Two words\" Start"]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(machine.is(&["Two words", "Start"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_when_waits_or_times_out() {
    let (machine, server, endpoint) = served().await;
    let out = repl(&endpoint, &["when", "Start", "--timeout", "300ms"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "timed out after 0.30s waiting for Start to be active; active now: (none active)"
        ),
        "{stderr}"
    );

    // The wait resolves once the root activates Start while it waits.
    let waiting = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { repl(&endpoint, &["when", "Start", "Ready", "--timeout", "20"]).await }
    });
    // Activate only once the REPL's mirror is connected, so it waits, not finds.
    common::eventually("the repl connected", || !server.clients().is_empty()).await;
    machine.add(&["Start", "Ready"], Args::new()).expect("adds");
    let out = within("when", waiting).await.expect("the task ends");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("active: Start Ready"), "{stdout}");

    let out = repl(&endpoint, &["when-time", "Tick=3", "--timeout", "200ms"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("ticks Tick>=3"), "{:?}", text(&out));
    machine.add(&["Tick"], Args::new()).expect("adds");
    machine.add(&["Tick"], Args::new()).expect("adds");
    let out = repl(&endpoint, &["when-time", "Tick=3"]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(
        text(&out).0.starts_with("reached: Tick=3"),
        "{:?}",
        text(&out)
    );
    let out = repl(&endpoint, &["when-not", "Ready", "--timeout", "300ms"]).await;
    assert_eq!(out.status.code(), Some(1), "Ready stays active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_inspect_list_and_errors() {
    let (machine, _server, endpoint) = served().await;
    machine.add(&["Start"], Args::new()).expect("adds");
    let out = repl(&endpoint, &["inspect"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for state in ["Start", "Ready", "Tick", "Two words", "Exception"] {
        assert!(
            stdout.lines().any(|l| l[2..].starts_with(state)),
            "{state} in {stdout}"
        );
    }
    assert!(stdout.lines().any(|l| l.starts_with("* Start")), "{stdout}");
    assert!(stdout.contains("require Start"), "{stdout}");
    assert!(stdout.contains("multi"), "{stdout}");

    let out = repl(&endpoint, &["list"]).await;
    assert!(
        text(&out).0.starts_with("* worker  connected"),
        "{:?}",
        text(&out)
    );

    let out = repl(&endpoint, &["@nope", "list"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .1
            .contains("no machine named \"nope\"; connected: worker"),
        "{:?}",
        text(&out)
    );
    let out = repl(&endpoint, &["add", "Nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("unknown state \"Nope\""),
        "{:?}",
        text(&out)
    );
    let out = repl(&endpoint, &["when", "Start", "--timeout", "soon"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("is not a duration"),
        "{:?}",
        text(&out)
    );
    let out = repl(&endpoint, &["add \"Start"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("unclosed \" quote"),
        "{:?}",
        text(&out)
    );
    let long = "A".repeat(100_000);
    let out = repl(&endpoint, &["add", &long]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.len() < 2000, "a long name is not echoed whole");
    let out = repl("tcp://127.0.0.1:1/none", &["list"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("cannot mirror"), "{:?}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_through_the_completer_sees_live_schemas() {
    let (_machine, _server, endpoint) = served().await;
    let session = Session::new(
        ConnectOptions {
            client_id: "repl-test".into(),
            token: None,
            transport: Box::new(|_| Ok(TransportConfig::default())),
        },
        Duration::from_secs(5),
    );
    within("connect", session.connect(&endpoint))
        .await
        .expect("connects");
    within("connect", session.connect(&endpoint))
        .await
        .expect("connects again");
    assert_eq!(session.names(), ["worker", "worker-2"]);
    let helper = ReplHelper::new(session.clone());
    let history = rustyline::history::DefaultHistory::new();
    let cx = rustyline::Context::new(&history);
    let complete = |line: &str| helper.complete(line, line.len(), &cx).expect("completes");
    assert_eq!(complete("add R"), (4, vec!["Ready ".to_owned()]));
    assert_eq!(
        complete("when "),
        (
            5,
            ["Exception", "Ready", "Start", "Tick", "\"Two words\""]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(complete("when-time Ti"), (10, vec!["Tick=".to_owned()]));
    assert_eq!(complete("@worker-"), (0, vec!["@worker-2 ".to_owned()]));
    assert_eq!(complete("insp"), (0, vec!["inspect ".to_owned()]));
    session.close().await;
}

/// A person at a terminal: tmux runs the REPL, keys go in, the screen is read back.
#[test]
fn interactive_session_completes_on_tab() {
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
        // scripts/test.sh installs tmux and sets this: the suite never skips the terminal.
        assert!(
            std::env::var_os("AM_REQUIRE_TMUX").is_none(),
            "tmux is missing: scripts/test.sh installs it (apt-get install tmux)"
        );
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "tmux is not installed: the terminal session is not tested here"
        );
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let (machine, _server, endpoint) = runtime.block_on(served());
    let name = format!("am-repl-test-{}", std::process::id());
    let history = std::env::temp_dir().join(format!("{name}.history"));
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux runs")
    };
    let command = format!(
        "{} repl {endpoint} --history {}",
        env!("CARGO_BIN_EXE_am-node"),
        history.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "100",
        "-y",
        "30",
        &command,
    ]);
    assert!(started.status.success(), "{started:?}");
    // A failed assertion below must not leave the session (and the REPL in it) running.
    struct KillOnDrop(String);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .output();
        }
    }
    let _session = KillOnDrop(name.clone());
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &name]).stdout).into_owned();
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + common::LIMIT;
        loop {
            let shown = screen();
            if shown.contains(what) {
                return shown;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {what:?} on the screen:\n{shown}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // (tmux leaves out the spaces that end a line.)
    wait_for("worker>");
    tmux(&["send-keys", "-t", &name, "-l", "ad"]);
    tmux(&["send-keys", "-t", &name, "Tab"]);
    tmux(&["send-keys", "-t", &name, "-l", "St"]);
    tmux(&["send-keys", "-t", &name, "Tab"]);
    wait_for("worker> add Start");
    tmux(&["send-keys", "-t", &name, "Enter"]);
    let shown = wait_for("Executed  now: Start");
    assert!(!shown.contains("error"), "{shown}");
    assert!(machine.is1("Start"));
    tmux(&["send-keys", "-t", &name, "C-d"]);
    let deadline = std::time::Instant::now() + common::LIMIT;
    while tmux(&["has-session", "-t", &name]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the REPL did not leave on Ctrl-D"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let kept = std::fs::read_to_string(&history).expect("the history was saved");
    assert!(kept.contains("add Start"), "{kept}");
    let _ = std::fs::remove_file(&history);
}
