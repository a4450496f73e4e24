//! A durable root as a real am-node process: SIGKILLed while clients mutate it, restarted from
//! its state file; every mutation acknowledged before the kill is in its clock, and a mirror
//! node below it never sees its clock go back and continues from the restored one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use asyncmachine::machine::{Args, ClockChange, Outcome, Schema, SchemaDef, StateDef, StateSource};
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig};
use asyncmachine::transport::Endpoint;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Every wait of this test is bounded by this.
const LIMIT: Duration = Duration::from_secs(30);

/// Clients mutating the root at once: at most this many mutations are in flight at the kill.
const CLIENTS: u64 = 4;

/// Acknowledged mutations before the root is killed.
const BEFORE_KILL: u64 = 150;

/// The clock's position of `Counter`, a multi state: each activation ticks it (+1 the first
/// time, +2 after), so `n` activations make its tick `2n - 1`.
const COUNTER: usize = 1;

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {LIMIT:?} waiting for {what}"))
}

/// A port that was free a moment ago (separate processes need fixed ports in the file).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::new(SchemaDef::of_states(vec![
            StateDef::new("Start"),
            StateDef::new("Counter").multi(),
        ]))
        .expect("valid schema"),
    )
}

/// The topology: a durable root and a mirror node below it, in a directory of their own.
struct Tree {
    dir: PathBuf,
    file: PathBuf,
    root: u16,
    mid: u16,
}

impl Tree {
    fn new() -> Tree {
        let dir = std::env::temp_dir().join(format!("am-durable-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let (root, mid) = (free_port(), free_port());
        let file = dir.join("tree.toml");
        let text = format!(
            r#"
[schemas.demo]
states = [{{ name = "Start" }}, {{ name = "Counter", multi = true }}]

[[nodes]]
name = "root"
listen = ["tcp://127.0.0.1:{root}"]
state_dir = "state"
machines = [{{ name = "demo", schema = "demo", start = ["Start"] }}]

[[nodes]]
name = "mid"
listen = ["tcp://127.0.0.1:{mid}"]
machines = [{{ name = "demo", upstream = "root" }}]
"#
        );
        std::fs::write(&file, text).expect("writes the topology");
        Tree {
            dir,
            file,
            root,
            mid,
        }
    }

    /// Runs one node; its log goes to `NODE.log` beside the topology.
    fn run(&self, node: &str) -> Node {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{node}.log")))
            .expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_am-node"))
            .args(["--log", "info", "run"])
            .arg(&self.file)
            .args(["--report-ms", "0", "--node", node])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("am-node starts");
        Node(child)
    }

    fn endpoint(port: u16) -> Endpoint {
        format!("tcp://127.0.0.1:{port}/demo")
            .parse()
            .expect("an endpoint")
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join("state").join("demo.json")
    }
}

/// A node process, SIGKILLed when dropped.
struct Node(Child);

impl Node {
    fn kill(&mut self) {
        // Child::kill sends SIGKILL: no goodbye, no last save.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A mirror of `port` that reconnects by itself, once it holds the source's clock.
async fn mirror(port: u16, id: &str) -> Mirror {
    let config = MirrorConfig {
        client_id: id.to_owned(),
        schema: Some(schema()),
        mutation_timeout: Duration::from_secs(10),
        ..MirrorConfig::default()
    };
    let mirror = Mirror::start(&Tree::endpoint(port), config).expect("a mirror");
    within(
        &format!("{id} connected"),
        mirror.wait_connection(ConnState::Ready),
    )
    .await;
    mirror
}

/// Adds `Counter` until a mutation fails (the root is gone) or `stop`; counts the
/// acknowledged ones, as `Executed`.
async fn client(port: u16, n: u64, acked: Arc<AtomicU64>, count: watch::Sender<u64>) {
    let source = mirror(port, &format!("client-{n}")).await;
    loop {
        match source.add(&["Counter"], Args::new()).await {
            Ok(Outcome::Executed) => {
                let total = acked.fetch_add(1, Ordering::SeqCst) + 1;
                count.send_replace(total);
            }
            Ok(other) => panic!("client {n}: Counter was {other:?}"),
            Err(_) => break,
        }
    }
    source.close().await;
}

fn saved_tick(path: &Path) -> u64 {
    let bytes = std::fs::read(path).expect("the state file");
    let state = asyncmachine::machine::ExportedState::from_json(&bytes).expect("a valid state");
    state.ticks[COUNTER]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_durable_root_restarts_with_every_acknowledged_mutation() {
    let tree = Tree::new();
    let mut root = tree.run("root");
    let _mid = tree.run("mid");

    // A watcher below the mirror node: every clock the mirror node serves, in order.
    let watcher = mirror(tree.mid, "watcher").await;
    let went_back = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    {
        let (went_back, seen) = (went_back.clone(), seen.clone());
        watcher.observe(Arc::new(move |c: &ClockChange<'_>| {
            let tick = c.after.get(COUNTER).copied().unwrap_or(0);
            if tick < seen.fetch_max(tick, Ordering::SeqCst) {
                went_back.store(true, Ordering::SeqCst);
            }
        }));
    }

    // Clients mutate the root directly; it is killed in the middle of their traffic.
    let acked = Arc::new(AtomicU64::new(0));
    let (count, mut counted) = watch::channel(0u64);
    let mut clients = JoinSet::new();
    for n in 0..CLIENTS {
        clients.spawn(client(tree.root, n, acked.clone(), count.clone()));
    }
    within(
        "acknowledged mutations before the kill",
        counted.wait_for(|&n| n >= BEFORE_KILL),
    )
    .await
    .expect("the clients are running");
    root.kill();
    within("the clients to stop", async {
        while let Some(ended) = clients.join_next().await {
            ended.expect("a client ended without panicking");
        }
    })
    .await;
    let acked = acked.load(Ordering::SeqCst);
    let on_disk = saved_tick(&tree.state_file());
    assert!(
        on_disk >= 2 * acked - 1,
        "the state file holds every acknowledged mutation: tick {on_disk}, {acked} acknowledged (logs in {})",
        tree.dir.display()
    );

    // Restarted from its file: every acknowledged mutation is in the clock, and at most the
    // ones in flight at the kill besides.
    let _root = tree.run("root");
    let probe = mirror(tree.root, "probe").await;
    let restored = probe.tick_at(COUNTER);
    assert!(
        restored >= 2 * acked - 1,
        "the restarted root holds every acknowledged mutation: tick {restored}, {acked} acknowledged (logs in {})",
        tree.dir.display()
    );
    assert!(
        restored < 2 * (acked + CLIENTS),
        "tick {restored} counts more mutations than were sent ({acked} acknowledged, {CLIENTS} in flight)"
    );
    assert!(probe.is1("Start"), "the root continued; not started anew");

    // The mirror node reconnects and continues from the restored clock; it never went back.
    within(
        "the mirror node to reach the restored clock",
        watcher.when_time(&["Counter"], &[restored]),
    )
    .await
    .expect("a wait on a known state");
    let outcome = within(
        "a mutation after the restart",
        probe.add(&["Counter"], Args::new()),
    )
    .await
    .expect("runs");
    assert_eq!(outcome, Outcome::Executed);
    within(
        "the mirror node to see the mutation after the restart",
        watcher.when_time(&["Counter"], &[restored + 2]),
    )
    .await
    .expect("a wait on a known state");
    assert!(
        !went_back.load(Ordering::SeqCst),
        "the mirror node's clock never went back"
    );
    assert_eq!(watcher.tick_at(COUNTER), restored + 2);
    probe.close().await;
    watcher.close().await;
    let _ = std::fs::remove_dir_all(&tree.dir);
}
