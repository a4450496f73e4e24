//! Telemetry end to end: a root and its mirrors at depths 1-3 (over TCP, then WebSocket) send
//! their transitions to one collector; a mutation made at the leaf is recorded at every hop
//! and linked back through them; an exported history imports the same.

mod common;

use std::sync::Arc;

use asyncmachine::machine::{Args, Machine, StateSource};
use asyncmachine::server::ServerConfig;
use asyncmachine::telemetry::collector::{self, Collector};
use asyncmachine::telemetry::{Record, Telemetry, TelemetryConfig};
use common::*;

/// One telemetry sender per "node" of the chain, named as its mirror's client id, so that the
/// origins the servers record name the nodes.
fn attach(collector: &Collector, node: &str, source: Arc<dyn StateSource>) -> Telemetry {
    let config = TelemetryConfig::new(&format!("tcp://{}", collector.telemetry_addr()))
        .expect("valid address");
    let telemetry = Telemetry::start(node, config);
    telemetry.attach("worker", source);
    telemetry
}

fn transitions_of(collector: &Collector, key: &str, state: &str) -> usize {
    collector.with_history(|h| {
        h.entries()
            .filter(|e| match &e.record {
                Record::Transition(t) => {
                    t.at.key() == key
                        && h.machine(key).is_some_and(|m| {
                            m.info.as_ref().is_some_and(|i| {
                                t.changed.iter().any(|&s| {
                                    i.states.get(s as usize).is_some_and(|d| d.name == state)
                                })
                            })
                        })
                }
                _ => false,
            })
            .count()
    })
}

async fn tree_reports_to_one_collector(scheme: &str) {
    let collector = collector().await;
    let root = Machine::builder(abc_schema()).id("root").build();
    let chain = chain(root.clone(), scheme, ServerConfig::default()).await;
    let senders = [
        attach(&collector, "root", Arc::new(root.clone())),
        attach(&collector, "a", Arc::new(chain.a.clone())),
        attach(&collector, "b", Arc::new(chain.b.clone())),
        attach(&collector, "c", Arc::new(chain.c.clone())),
    ];
    let keys = ["root/worker", "a/worker", "b/worker", "c/worker"];
    eventually("every machine's first record", || {
        collector.with_history(|h| {
            keys.iter()
                .all(|k| h.machine(k).is_some_and(|m| m.info.is_some()))
        })
    })
    .await;

    // A change at the root reaches every depth, and each depth reports it.
    root.add(&["A"], Args::new()).expect("taken in");
    eventually("A at every depth", || {
        keys.iter().all(|k| transitions_of(&collector, k, "A") == 1)
    })
    .await;

    // A mutation at the leaf travels up three hops; each hop records who asked it.
    within(
        "the leaf's mutation",
        chain.c.add(&["B"], Args::new().with("password", "hunter2")),
    )
    .await
    .expect("runs at the root");
    eventually("B at every depth", || {
        keys.iter().all(|k| transitions_of(&collector, k, "B") == 1)
    })
    .await;
    let (hops, args, leaf_clock) = collector.with_history(|h| {
        let root_b = h
            .entries()
            .find(|e| matches!(&e.record, Record::Transition(t) if t.at.key() == "root/worker" && t.called == ["B"]))
            .expect("the root's transition of B");
        let Record::Transition(t) = &root_b.record else { unreachable!() };
        (h.hops(root_b.seq), t.args.clone(), h.machine("c/worker").map(|m| m.clock.clone()))
    });
    eventually("the hops' records", || {
        collector.with_history(|h| {
            h.entries()
                .filter(|e| matches!(e.record, Record::Sent(_)))
                .count()
                >= 3
        })
    })
    .await;
    let hops = if hops.len() == 3 {
        hops
    } else {
        // A hop's record may come in after the root's transition (another connection).
        collector.with_history(|h| {
            let seq = h
                .entries()
                .find(|e| matches!(&e.record, Record::Transition(t) if t.at.key() == "root/worker" && t.called == ["B"]))
                .map(|e| e.seq)
                .expect("still kept");
            h.hops(seq)
        })
    };
    assert_eq!(
        hops,
        vec!["a", "b", "c"],
        "the root's server was asked by a, a's by b, b's by c"
    );
    assert_eq!(args, vec![("password".to_owned(), "<redacted>".to_owned())]);
    assert_eq!(leaf_clock, Some(chain.c.clock()));

    // Time travel: at the root's transition of B, the leaf still had the clock before it.
    let (at_b, before_leaf) = collector.with_history(|h| {
        let seq = h
            .entries()
            .find(|e| matches!(&e.record, Record::Transition(t) if t.at.key() == "root/worker" && t.called == ["B"]))
            .map(|e| e.seq)
            .expect("kept");
        let clocks = h.clocks_at(seq);
        (clocks["root/worker"].clone(), clocks["c/worker"].clone())
    });
    assert_eq!(at_b, vec![1, 1, 0, 0], "A, B, C, Exception");
    assert_eq!(before_leaf, vec![1, 0, 0, 0]);

    for s in &senders {
        s.shutdown().await;
    }
    collector.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_over_tcp_reports_every_depth_and_the_hops() {
    tree_reports_to_one_collector("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_over_ws_reports_every_depth_and_the_hops() {
    tree_reports_to_one_collector("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_gives_the_same_history() {
    let collector = collector().await;
    let root = Machine::builder(abc_schema()).id("root").build();
    let sender = attach(&collector, "root", Arc::new(root.clone()));
    churn(&root, 20);
    eventually("20 transitions", || {
        collector.with_history(|h| h.entries().len() >= 21)
    })
    .await;
    let dir = std::env::temp_dir().join(format!("am-dbg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("history.amdbg");
    collector.export(&path).expect("exports");
    let imported = collector::import(&path, 10_000).expect("imports");
    let (lines, entries) = collector.with_history(|h| {
        (
            h.export_lines().collect::<Vec<_>>(),
            h.entries().cloned().collect::<Vec<_>>(),
        )
    });
    assert_eq!(imported.export_lines().collect::<Vec<_>>(), lines);
    assert_eq!(imported.entries().cloned().collect::<Vec<_>>(), entries);
    // Not a dump: refused with a reason.
    std::fs::write(&path, b"plain text").expect("writes");
    assert!(collector::import(&path, 10).is_err());
    let _ = std::fs::remove_dir_all(&dir);
    sender.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_of_a_bad_line_is_dropped_and_the_collector_goes_on() {
    use tokio::io::AsyncWriteExt;
    let collector = collector().await;
    let mut bad = tokio::net::TcpStream::connect(collector.telemetry_addr())
        .await
        .expect("connects");
    bad.write_all(b"{\"t\":\"dispose\",\"node\":\"x\"}\n")
        .await
        .expect("writes");
    // The collector closes it (a record without its machine's name is not taken in).
    let mut rest = Vec::new();
    let _ = within(
        "the collector to close the bad sender",
        tokio::io::AsyncReadExt::read_to_end(&mut bad, &mut rest),
    )
    .await;
    assert_eq!(rest, b"", "a sender is never answered");
    let mut long = tokio::net::TcpStream::connect(collector.telemetry_addr())
        .await
        .expect("connects");
    let junk = vec![b'x'; 300 * 1024];
    let _ = long.write_all(&junk).await;
    let mut sink = Vec::new();
    let _ = within(
        "the collector to close the long line",
        tokio::io::AsyncReadExt::read_to_end(&mut long, &mut sink),
    )
    .await;
    // A good sender is still heard.
    let root = Machine::builder(abc_schema()).id("root").build();
    let sender = attach(&collector, "root", Arc::new(root.clone()));
    eventually("the good sender", || {
        collector.with_history(|h| h.machine("root/worker").is_some())
    })
    .await;
    // Only the good sender's record was taken in.
    assert_eq!(collector.with_history(|h| h.entries().len()), 1);
    sender.shutdown().await;
}

/// A node of a topology with `debug` reports its machines and its status (listeners, clients)
/// without any code of its own; a driver's transitions arrive as they run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_node_with_debug_reports_its_machines_and_status() {
    let collector = collector().await;
    let text = format!(
        r#"
[schemas.demo]
states = [{{ name = "Start" }}, {{ name = "Tick", multi = true }}]

[[nodes]]
name = "solo"
listen = ["tcp://127.0.0.1:0"]
debug = "tcp://{}"

[[nodes.machines]]
name = "demo"
schema = "demo"
start = ["Start"]
driver = {{ every_ms = 20, add = ["Tick"] }}
"#,
        collector.telemetry_addr()
    );
    let topology =
        asyncmachine::topology::parse(std::path::Path::new("t.toml"), &text).expect("valid");
    let running = asyncmachine::node::start_topology(&topology, &[])
        .await
        .expect("starts");
    eventually("the node's machine, status and ticks", || {
        collector.with_history(|h| {
            let listening = h.nodes().any(|s| s.node == "solo" && !s.listen.is_empty());
            let ticks = h
                .entries()
                .filter(|e| matches!(&e.record, Record::Transition(t) if t.at.key() == "solo/demo" && t.called == ["Tick"]))
                .count();
            listening
                && h.machine("solo/demo").is_some_and(|m| m.info.as_ref().is_some_and(|i| i.upstream.is_none() && !i.listen.is_empty()))
                && ticks >= 3
        })
    })
    .await;
    running.shutdown().await;
    collector.shutdown();
}

/// A failing handler's error is in its transition's record; a full buffer drops records and
/// counts them, and the count reaches the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_and_drops_are_recorded() {
    let collector = collector().await;
    let root = Machine::builder(abc_schema()).id("root").build();
    root.on_state("C", |_| Err::<(), _>("the disk is full"))
        .expect("C exists");
    let mut config = TelemetryConfig::new(&format!("tcp://{}", collector.telemetry_addr()))
        .expect("valid address");
    config.capacity = 4;
    let telemetry = Telemetry::start("root", config);
    telemetry.attach("worker", Arc::new(root.clone()));
    root.add(&["C"], Args::new()).expect("taken in");
    eventually("the failed transition", || {
        collector.with_history(|h| {
            h.entries().any(|e| matches!(&e.record, Record::Transition(t) if t.errors.iter().any(|e| e.contains("the disk is full"))))
        })
    })
    .await;
    // Far more than the buffer holds, at once from this thread: some are dropped, counted.
    churn(&root, 2000);
    eventually("the drops counted at the collector", || {
        telemetry.dropped() > 0
            && collector.with_history(|h| h.machine("root/worker").is_some_and(|m| m.dropped > 0))
    })
    .await;
    telemetry.shutdown().await;
}

/// A mutation made while the machine is busy (from a handler) is reported as queued, then as
/// the transition it becomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_mutation_is_reported_queued_then_run() {
    let collector = collector().await;
    let root = Machine::builder(abc_schema()).id("root").build();
    root.on_state("A", |e| e.machine().add(&["B"], Args::new()).map(drop))
        .expect("A exists");
    let telemetry = attach(&collector, "root", Arc::new(root.clone()));
    eventually("the machine's record", || {
        collector.with_history(|h| h.machine("root/worker").is_some())
    })
    .await;
    root.add(&["A"], Args::new()).expect("taken in");
    eventually("B queued, then run", || {
        collector.with_history(|h| {
            let outcomes: Vec<(Vec<String>, String)> = h
                .entries()
                .filter_map(|e| match &e.record {
                    Record::Transition(t) => Some((t.called.clone(), t.outcome.clone())),
                    _ => None,
                })
                .collect();
            let at = |called: &str, outcome: &str| {
                outcomes
                    .iter()
                    .position(|(c, o)| c == &[called] && o == outcome)
            };
            matches!((at("B", "queued"), at("B", "executed")), (Some(q), Some(x)) if q < x)
        })
    })
    .await;
    telemetry.shutdown().await;
}
