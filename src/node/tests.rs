//! Nodes started from topology text: TLS material as a topology writes it, and the errors only
//! starting a node can find, located in the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::certs::{CaPolicy, write_dev_certs};

const LIMIT: Duration = Duration::from_secs(10);

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("am-node-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// A port nothing listens on right now, for an upstream that needs a fixed one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn topology(dir: &Path, text: &str) -> Topology {
    let file = dir.join("t.toml");
    std::fs::write(&file, text).expect("written");
    crate::topology::load(&file).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_only_a_ca_mirrors_over_tls() {
    let dir = temp_dir("only-ca");
    write_dev_certs(&dir, &["root".into()], CaPolicy::Reuse).expect("certificates");
    let port = free_port();
    let t = topology(
        &dir,
        &format!(
            r#"
[schemas.s]
states = [{{ name = "Start" }}, {{ name = "Flag" }}]

[[nodes]]
name = "root"
listen = ["tls://127.0.0.1:{port}"]
tls = {{ cert = "root.pem", key = "root.key" }}
machines = [{{ name = "m", schema = "s", start = ["Start"] }}]

[[nodes]]
name = "leaf"
tls = {{ ca = "ca.pem" }}
machines = [{{ name = "m", upstream = "root" }}]
"#
        ),
    );
    let running = tokio::time::timeout(LIMIT, start_topology(&t, &[]))
        .await
        .expect("starts in time")
        .expect("starts");
    let leaf = running
        .node("leaf")
        .and_then(|n| n.machine("m"))
        .expect("the leaf's mirror");
    tokio::time::timeout(LIMIT, leaf.when(&["Start"]))
        .await
        .expect("the leaf verified the root and caught up in time")
        .expect("a wait on a known state");
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn start_up_errors_name_the_file_and_line() {
    let dir = temp_dir("start-errors");
    let text = r#"
[schemas.s]
states = [{ name = "Start" }]

[[nodes]]
name = "root"
listen = ["tls://127.0.0.1:0"]
tls = { cert = "missing.pem", key = "missing.key" }
machines = [{ name = "m", schema = "s" }]
"#;
    let t = topology(&dir, text);
    let e = start_topology(&t, &[])
        .await
        .expect_err("no certificate file");
    let file = dir.join("t.toml").display().to_string();
    assert!(e.to_string().starts_with(&format!("{file}:8: ")), "{e}");
    assert!(e.to_string().contains("missing.pem"), "{e}");
    assert!(e.to_string().contains("hint: "), "{e}");

    // An address the host cannot bind: found only when the node starts.
    let t = topology(
        &dir,
        "[schemas.s]\nstates = [{ name = \"Start\" }]\n\n[[nodes]]\nname = \"n\"\nadmin = \"256.0.0.1:9100\"\nmachines = [{ name = \"m\", schema = \"s\" }]\n",
    );
    let e = start_topology(&t, &[]).await.expect_err("no such address");
    assert!(e.to_string().starts_with(&format!("{file}:6: ")), "{e}");
    assert!(e.to_string().contains("hint: "), "{e}");

    // A port another process holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("bound").port();
    let t = topology(
        &dir,
        &format!(
            "[schemas.s]\nstates = [{{ name = \"Start\" }}]\n\n[[nodes]]\nname = \"n\"\nlisten = [\"tcp://127.0.0.1:0\",\n  \"tcp://127.0.0.1:{port}\"]\nmachines = [{{ name = \"m\", schema = \"s\" }}]\n"
        ),
    );
    let e = start_topology(&t, &[])
        .await
        .expect_err("the port is taken");
    assert!(e.to_string().starts_with(&format!("{file}:7: ")), "{e}");
    assert!(e.to_string().contains("hint: "), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_durable_root_continues_its_clock_across_starts_and_refuses_a_damaged_file() {
    let dir = temp_dir("durable");
    let t = topology(
        &dir,
        r#"
[schemas.s]
states = [{ name = "Start" }, { name = "Counter", multi = true }]

[[nodes]]
name = "root"
state_dir = "state"
admin = "127.0.0.1:0"
machines = [{ name = "m", schema = "s", start = ["Start"] }]
"#,
    );
    let running = start_topology(&t, &[]).await.expect("starts");
    let root = running.node("root").expect("the node");
    let machine = root.machine("m").expect("the machine");
    assert!(machine.is1("Start"), "a new machine gets its start states");
    for _ in 0..3 {
        tokio::time::timeout(LIMIT, machine.add(&["Counter"], Args::new()))
            .await
            .expect("in time")
            .expect("runs");
    }
    let durable = root.durable("m").expect("durable");
    assert!(!durable.restored());
    assert!(durable.stats().saves >= 1);
    let admin = root.admin().expect("an admin listener");
    let metrics = tokio::time::timeout(LIMIT, async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(admin)
            .await
            .expect("connects");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("writes");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reads");
        out
    })
    .await
    .expect("the metrics in time");
    assert!(
        metrics.contains("am_state_saves_total{node=\"root\",source=\"m\"}"),
        "{metrics}"
    );
    let before = machine.clock();
    drop(machine);
    running.shutdown().await;

    // Start states are not applied again: the machine continues where it was.
    let running = start_topology(&t, &[]).await.expect("starts again");
    let root = running.node("root").expect("the node");
    assert!(root.durable("m").expect("durable").restored());
    let machine = root.machine("m").expect("the machine");
    machine.remove(&["Start"], Args::new()).await.expect("runs");
    let mut expected = before.clone();
    expected[0] += 1;
    assert_eq!(machine.clock(), expected);
    drop(machine);
    running.shutdown().await;
    let running = start_topology(&t, &[]).await.expect("starts a third time");
    let machine = running
        .node("root")
        .and_then(|n| n.machine("m"))
        .expect("the machine");
    assert!(
        !machine.is1("Start"),
        "removed before the restart, not started again"
    );
    drop(machine);
    running.shutdown().await;

    std::fs::write(dir.join("state").join("m.json"), b"{ damaged").expect("written");
    let e = start_topology(&t, &[]).await.expect_err("a damaged file");
    let file = dir.join("t.toml").display().to_string();
    assert!(e.to_string().starts_with(&format!("{file}:7: ")), "{e}");
    assert!(e.to_string().contains("move the file away"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
