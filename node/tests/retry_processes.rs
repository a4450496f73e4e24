//! A middle am-node process is SIGKILLed and restarted while a leaf's `am-node add` waits for
//! it: the add succeeds once mid is back, and the root's multi state moved exactly once.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use asyncmachine::machine::StateSource;
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {LIMIT:?} waiting for {what}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A node process, SIGKILLed when dropped.
struct Node(Child);

impl Node {
    fn start(file: &std::path::Path, node: &str) -> Node {
        Node(
            Command::new(env!("CARGO_BIN_EXE_am-node"))
                .arg("run")
                .arg(file)
                .args(["--report-ms", "0", "--node", node])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("am-node starts"),
        )
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn mirror(port: u16, id: &str) -> Mirror {
    let config = MirrorConfig {
        client_id: id.into(),
        ..MirrorConfig::default()
    };
    let endpoint = format!("tcp://127.0.0.1:{port}/demo")
        .parse()
        .expect("an endpoint");
    within(&format!("{id} connected"), async {
        loop {
            match Mirror::connect(&endpoint, config.clone()).await {
                Ok(mirror) => break mirror,
                // The process may still be starting.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_waiting_on_a_restarted_middle_node_runs_once() {
    let dir = std::env::temp_dir().join(format!("am-retry-processes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (root_port, mid_port) = (free_port(), free_port());
    let file = dir.join("tree.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[schemas.demo]
states = [{{ name = "Counter", multi = true }}]

[[nodes]]
name = "root"
listen = ["tcp://127.0.0.1:{root_port}"]
machines = [{{ name = "demo", schema = "demo" }}]

[[nodes]]
name = "mid"
listen = ["tcp://127.0.0.1:{mid_port}"]
machines = [{{ name = "demo", upstream = "root" }}]
"#
        ),
    )
    .expect("writes the topology");
    let _root = Node::start(&file, "root");
    let mut mid = Node::start(&file, "mid");
    let watcher = mirror(root_port, "watcher").await;
    // mid is up and follows the root before it is killed.
    mirror(mid_port, "probe").await.close().await;

    mid.kill();
    let at = format!("tcp://127.0.0.1:{mid_port}/demo");
    let mut add = tokio::process::Command::new(env!("CARGO_BIN_EXE_am-node"))
        .args(["add", &at, "Counter", "--timeout", "25s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("am-node add runs");
    let mut stderr = BufReader::new(add.stderr.take().expect("piped")).lines();
    let said = within("the add saying it waits", stderr.next_line())
        .await
        .expect("reads")
        .expect("a line");
    assert!(said.contains("waiting for"), "{said}");

    let _mid = Node::start(&file, "mid");
    let out = within("the add", add.wait_with_output())
        .await
        .expect("its output");
    assert!(out.status.success(), "{:?}", out.status);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Executed"));
    within(
        "the root's activation",
        watcher.when_tick_reaches("Counter", 1),
    )
    .await
    .expect("waits");
    watcher.sync().await.expect("a fresh clock");
    assert_eq!(watcher.tick("Counter"), 1, "moved exactly once");
    assert_eq!(watcher.connection(), ConnState::Ready);
    let _ = std::fs::remove_dir_all(&dir);
}
