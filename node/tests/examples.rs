//! examples/join_a_tree.rs with its nodes as real `am-node run` processes, as the example's
//! docs show it (tests/examples.rs runs it with the nodes in process). The example is the
//! library's; `cargo test --workspace` builds it beside this test.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .expect("the test runs from target/<profile>/deps");
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build --examples`) first",
        path.display()
    );
    path
}

#[test]
fn join_a_tree_with_am_node_processes() {
    let mut child = Command::new(example("join_a_tree"))
        .env("AM_NODE", env!("CARGO_BIN_EXE_am-node"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("waits").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().expect("waits").is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("its output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "join_a_tree failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("running: "), "{stdout}");
    assert!(stdout.contains("add Job at the leaf: Executed"), "{stdout}");
}
