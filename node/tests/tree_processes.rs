//! Real am-node processes: each node of a topology in its own process, the client commands
//! against them, an interior node killed and restarted, and a graceful SIGTERM.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

fn am_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(args)
        .output()
        .expect("am-node runs")
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("am-node starts")
}

/// A port that was free a moment ago (separate processes need fixed ports in the file).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Retries `check` until it holds, or fails the test after LIMIT.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Tree {
    file: PathBuf,
    root: u16,
    mid: u16,
    leaf: u16,
}

impl Tree {
    /// root -> mid -> leaf, with a schema that can refuse.
    fn new(name: &str) -> Tree {
        let (root, mid, leaf) = (free_port(), free_port(), free_port());
        let file = std::env::temp_dir().join(format!("am-{name}-{}.toml", std::process::id()));
        let text = format!(
            r#"
[schemas.demo]
states = [
  {{ name = "Start" }},
  {{ name = "Flag", require = ["Start"] }},
  {{ name = "Other" }},
  {{ name = "Lock", remove = ["Open"] }},
  {{ name = "Open" }},
]

[[nodes]]
name = "root"
listen = ["tcp://127.0.0.1:{root}"]
machines = [{{ name = "demo", schema = "demo", start = ["Start", "Lock"] }}]

[[nodes]]
name = "mid"
listen = ["tcp://127.0.0.1:{mid}"]
limits = {{ keepalive_ms = 200, idle_timeout_ms = 1000 }}
machines = [{{ name = "demo", upstream = "root" }}]

[[nodes]]
name = "leaf"
listen = ["tcp://127.0.0.1:{leaf}"]
machines = [{{ name = "demo", upstream = "mid" }}]
"#
        );
        std::fs::File::create(&file)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("writes the topology");
        Tree {
            file,
            root,
            mid,
            leaf,
        }
    }

    fn endpoint(port: u16) -> String {
        format!("tcp://127.0.0.1:{port}/demo")
    }

    fn run(&self, nodes: &[&str]) -> Child {
        let file = self.file.to_string_lossy().into_owned();
        let mut args = vec!["run", file.as_str(), "--report-ms", "0"];
        for node in nodes {
            args.extend(["--node", node]);
        }
        spawn(&args)
    }

    /// Waits until `port` serves a machine whose upstream is ready (or the root, with none).
    fn wait_ready(port: u16) {
        eventually(&format!("node on port {port}"), || {
            let out = am_node(&["status", &format!("tcp://127.0.0.1:{port}")]);
            let text = String::from_utf8_lossy(&out.stdout);
            out.status.success() && (!text.contains("upstream") || text.contains("(ready)"))
        });
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn client_commands_against_a_running_tree() {
    let tree = Tree::new("cli");
    let _all = Killed(tree.run(&[]));
    Tree::wait_ready(tree.leaf);
    let leaf = Tree::endpoint(tree.leaf);

    let out = am_node(&["watch", &leaf, "--once"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("Start Lock"), "{}", stdout(&out));

    // A mutation through the leaf reaches the root; the leaf sees it when the command returns.
    let out = am_node(&["add", &leaf, "Flag", "--arg", "n=1", "--arg", "who=test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).starts_with("Executed"), "{}", stdout(&out));
    let out = am_node(&[
        "watch",
        &Tree::endpoint(tree.root),
        "--until",
        "Flag",
        "--timeout",
        "10",
    ]);
    assert!(out.status.success(), "the root has Flag");

    // Canceled by the root's relations: exit code 3.
    let out = am_node(&["add", &leaf, "Open"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("Canceled"));
    // Errors: exit code 1 with a reason.
    let out = am_node(&["remove", &leaf, "Nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown state \"Nope\""));
    let out = am_node(&["set", "tcp://127.0.0.1:1/demo", "Start"]);
    assert_eq!(out.status.code(), Some(1));

    // watch --until exits when the state comes, driven from another client.
    let mut watcher = Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(["watch", &leaf, "--until", "Other", "--timeout", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("watch starts");
    let out = am_node(&["add", &Tree::endpoint(tree.root), "Other"]);
    assert!(out.status.success());
    let status = watcher.wait().expect("watch ends");
    assert!(status.success(), "watch saw Other at the leaf");

    let out = am_node(&["status", &format!("tcp://127.0.0.1:{}", tree.mid)]);
    let text = stdout(&out);
    assert!(out.status.success());
    assert!(text.contains("node mid"), "{text}");
    assert!(
        text.contains(&format!(
            "upstream tcp://127.0.0.1:{}/demo (ready)",
            tree.root
        )),
        "{text}"
    );
    assert!(text.contains("leaf"), "the leaf is a client of mid: {text}");
    let out = am_node(&[
        "status",
        &format!("tcp://127.0.0.1:{}", tree.root),
        "--json",
    ]);
    assert!(
        stdout(&out).trim_start().starts_with('{'),
        "{}",
        stdout(&out)
    );
}

#[test]
fn leaves_reconverge_after_an_interior_node_is_killed_and_restarted() {
    let tree = Tree::new("kill");
    let _root = Killed(tree.run(&["root"]));
    let mut mid = Killed(tree.run(&["mid"]));
    let _leaf = Killed(tree.run(&["leaf"]));
    Tree::wait_ready(tree.leaf);
    let (root, leaf) = (Tree::endpoint(tree.root), Tree::endpoint(tree.leaf));

    for round in 0..3 {
        // Kill the middle node hard, change the root while it is down, bring it back.
        let _ = mid.0.kill();
        let _ = mid.0.wait();
        let state = if round % 2 == 0 { "Flag" } else { "Other" };
        let out = am_node(&["add", &root, state]);
        assert!(out.status.success(), "round {round}: {}", stdout(&out));
        let out = am_node(&["watch", &leaf, "--once"]);
        assert!(
            out.status.success(),
            "a leaf cut off from its upstream still answers"
        );
        mid = Killed(tree.run(&["mid"]));
        let out = am_node(&["watch", &leaf, "--until", state, "--timeout", "20"]);
        assert!(out.status.success(), "round {round}: the leaf reconverged");
    }
    // Finally the whole clock agrees, tick for tick.
    let root_ticks = stdout(&am_node(&["watch", &root, "--once", "--ticks"]));
    eventually("equal clocks", || {
        let leaf_ticks = stdout(&am_node(&["watch", &leaf, "--once", "--ticks"]));
        leaf_ticks.split_once("  ").map(|(_, t)| t) == root_ticks.split_once("  ").map(|(_, t)| t)
    });
}

#[test]
fn sigterm_shuts_a_node_down_gracefully() {
    let tree = Tree::new("term");
    let mut all = tree.run(&[]);
    Tree::wait_ready(tree.leaf);
    let killed = Command::new("kill")
        .args(["-TERM", &all.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = all.try_wait().expect("waits") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "am-node did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "graceful exit, code {status:?}");
}

#[test]
fn a_bad_topology_file_is_an_error_with_its_line() {
    let file = std::env::temp_dir().join(format!("am-bad-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        "[[nodes]]\nname = \"a\"\nlisten = [\"tcp://127.0.0.1:1\"]\nmachins = []\n",
    )
    .expect("writes");
    let out = am_node(&["run", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":4: unknown field `machins`"), "{err}");
}

#[test]
fn certs_then_a_tls_node_and_client_commands_with_ca() {
    let dir = std::env::temp_dir().join(format!("am-certs-{}", std::process::id()));
    let dir_text = dir.to_string_lossy().into_owned();
    let out = am_node(&["certs", &dir_text, "secure"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["ca.pem", "ca.key", "secure.pem", "secure.key"] {
        assert!(dir.join(file).exists(), "{file} written");
    }
    let port = free_port();
    let file = dir.join("secure.toml");
    std::fs::write(
        &file,
        format!(
            "[schemas.s]\nstates = [{{ name = \"A\" }}]\n\n[[nodes]]\nname = \"secure\"\nlisten = [\"tls://127.0.0.1:{port}\"]\ntls = {{ cert = \"secure.pem\", key = \"secure.key\", ca = \"ca.pem\" }}\nmachines = [{{ name = \"s\", schema = \"s\", start = [\"A\"] }}]\n"
        ),
    )
    .expect("writes the topology");
    let _node = Killed(spawn(&["run", &file.to_string_lossy(), "--report-ms", "0"]));
    let endpoint = format!("tls://127.0.0.1:{port}/s");
    let ca = dir.join("ca.pem").to_string_lossy().into_owned();
    eventually("the TLS node", || {
        am_node(&["watch", &endpoint, "--once", "--ca", &ca])
            .status
            .success()
    });
    let out = am_node(&["watch", &endpoint, "--once", "--ca", &ca]);
    assert!(stdout(&out).contains('A'), "{}", stdout(&out));
    let out = am_node(&["watch", &endpoint, "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --ca FILE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = am_node(&["status", &format!("tls://127.0.0.1:{port}"), "--ca", &ca]);
    assert!(stdout(&out).contains("node secure"), "{}", stdout(&out));
    let _ = std::fs::remove_dir_all(&dir);
}
