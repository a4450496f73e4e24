//! Every program in `examples/` runs to its end and succeeds, so none can rot. `cargo test`
//! builds the examples beside the tests; each one is a short script that checks what it shows
//! (its asserts and errors fail the run). `join_a_tree` runs its nodes in process here;
//! node/tests/examples.rs runs them as `am-node` processes.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The built example `name`: `target/<profile>/examples/<name>`, next to this test's `deps/`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .expect("the test runs from target/<profile>/deps");
    assert!(
        path.exists(),
        "{} is not built: `cargo test` builds examples; run `cargo build --examples` first",
        path.display()
    );
    path
}

/// Runs an example to its end (at most a minute) and returns what it printed.
fn run(name: &str) -> String {
    let mut child = Command::new(example(name))
        .env_remove("AM_NODE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the example starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("waits").is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().expect("waits").is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("its output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn source_and_mirror() {
    let out = run("source_and_mirror");
    assert!(out.contains("add Downloading: Executed"), "{out}");
    assert!(
        out.contains(r#"the mirror sees ["Connected", "Done"]"#),
        "{out}"
    );
}

#[test]
fn payloads() {
    let out = run("payloads");
    assert!(out.contains("alice got \"report\""), "{out}");
    assert!(out.contains("bob got \"notice\""), "{out}");
}

#[test]
fn duplex() {
    let out = run("duplex");
    assert!(out.contains("foo: bar replied"), "{out}");
    assert!(out.contains("bar exited: exit status: 0"), "{out}");
}

#[test]
fn tls_tree() {
    let out = run("tls_tree");
    assert!(out.contains("ops adds Flag: Executed"), "{out}");
    assert!(out.contains("mallory connects to mid: refused"), "{out}");
}

#[test]
fn join_a_tree_in_process() {
    let out = run("join_a_tree");
    assert!(
        out.contains(r#"its ancestry is ["worker", "edge", "hub", "app"]"#),
        "{out}"
    );
    assert!(out.contains("add Job at the leaf: Executed"), "{out}");
}
