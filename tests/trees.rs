//! State-source trees in one process: topologies started from TOML over in-memory transports,
//! mutations from leaves and from the root, every mirror converging to the root's clock.

mod common;

use std::path::Path;
use std::sync::Arc;

use asyncmachine::machine::{Args, Condition, Outcome, StateSource};
use asyncmachine::mirror::{Mirror, MirrorError};
use asyncmachine::node::{RunningTopology, start_topology};
use asyncmachine::proto::message::RefusalKind;
use asyncmachine::topology;
use common::*;

const SCHEMA: &str = r#"
[schemas.demo]
states = [
  { name = "Start" },
  { name = "Flag", require = ["Start"] },
  { name = "Tick", multi = true },
  { name = "Green", remove = ["Red"] },
  { name = "Red", remove = ["Green"] },
]
"#;

/// A unique prefix for mem:// names, so tests in one process never collide.
fn unique(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// A topology text: `edges` are (node, upstream) pairs; the first node is the root.
fn tree_toml(prefix: &str, root: &str, edges: &[(&str, &str)]) -> String {
    let mut text = SCHEMA.to_owned();
    text.push_str(&format!(
        "\n[[nodes]]\nname = \"{root}\"\nlisten = [\"mem://{prefix}-{root}\"]\nmachines = [{{ name = \"demo\", schema = \"demo\", start = [\"Start\"] }}]\n"
    ));
    for (node, up) in edges {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{node}\"\nlisten = [\"mem://{prefix}-{node}\"]\nmachines = [{{ name = \"demo\", upstream = \"{up}\" }}]\n"
        ));
    }
    text
}

/// A root, a mid mirroring it and a leaf mirroring the mid, each its own node.
fn root_mid_leaf(label: &str) -> topology::Topology {
    let toml = tree_toml(&unique(label), "root", &[("mid", "root"), ("leaf", "mid")]);
    topology::parse(Path::new("inline.toml"), &toml).expect("valid")
}

/// Starts one node of `plan`.
async fn start_one(plan: &topology::Topology, name: &str) -> asyncmachine::node::RunningNode {
    let node = plan.node(name).expect("planned");
    within(name, asyncmachine::node::start_node(node))
        .await
        .expect("starts")
}

async fn start(text: &str) -> RunningTopology {
    let plan = topology::parse(Path::new("inline.toml"), text).expect("valid topology");
    within("start", start_topology(&plan, &[]))
        .await
        .expect("starts")
}

fn demo(running: &RunningTopology, node: &str) -> Arc<dyn StateSource> {
    running
        .node(node)
        .and_then(|n| n.machine("demo"))
        .expect("node and machine exist")
}

/// Waits until every node's clock equals the root's.
async fn all_converged(running: &RunningTopology, root: &str) {
    let target = demo(running, root).clock();
    for node in running.nodes() {
        let machine = node.machine("demo").expect("demo");
        converged(machine.as_ref(), &target).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_depth_five_carries_diffs_down_and_mutations_up() {
    let prefix = unique("chain5");
    let text = tree_toml(
        &prefix,
        "n0",
        &[
            ("n1", "n0"),
            ("n2", "n1"),
            ("n3", "n2"),
            ("n4", "n3"),
            ("n5", "n4"),
        ],
    );
    let running = start(&text).await;
    let root = demo(&running, "n0");
    let leaf = demo(&running, "n5");
    all_converged(&running, "n0").await;

    // From the root down.
    for _ in 0..20 {
        within("root add", root.add(&["Tick"], Args::new()))
            .await
            .expect("taken in");
    }
    all_converged(&running, "n0").await;

    // From the leaf up, hop by hop, and the result back down.
    let out = within(
        "leaf add",
        leaf.add(&["Flag", "Green"], Args::new().with("from", "n5")),
    )
    .await;
    assert_eq!(out, Ok(Outcome::Executed));
    assert!(
        leaf.is(&["Flag", "Green"]),
        "the leaf sees its mutation when the call returns"
    );
    assert!(root.is(&["Flag", "Green"]));
    // Relations are evaluated at the root: Red removes Green everywhere.
    assert_eq!(
        within("leaf add", leaf.add(&["Red"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(leaf.is1("Red") && !leaf.is1("Green"));
    // A refusal at the root comes back as Canceled.
    within("root remove", root.remove(&["Start"], Args::new()))
        .await
        .expect("taken in");
    all_converged(&running, "n0").await;
    assert_eq!(
        within("refused", leaf.add(&["Flag"], Args::new())).await,
        Ok(Outcome::Canceled)
    );
    all_converged(&running, "n0").await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_two_six_tree_converges_under_mutations_from_everywhere() {
    let prefix = unique("tree126");
    let edges = [
        ("m1", "root"),
        ("m2", "root"),
        ("l1", "m1"),
        ("l2", "m1"),
        ("l3", "m1"),
        ("l4", "m2"),
        ("l5", "m2"),
        ("l6", "m2"),
    ];
    let running = start(&tree_toml(&prefix, "root", &edges)).await;
    all_converged(&running, "root").await;
    let leaves: Vec<_> = ["l1", "l2", "l3", "l4", "l5", "l6"]
        .iter()
        .map(|l| demo(&running, l))
        .collect();
    let root = demo(&running, "root");
    let mut tasks = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        let leaf = leaf.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..25 {
                let state = if (i + j) % 2 == 0 { "Green" } else { "Red" };
                let out = leaf
                    .add(&[state, "Tick"], Args::new())
                    .await
                    .expect("reaches the root");
                assert_eq!(out, Outcome::Executed);
            }
        }));
    }
    for _ in 0..50 {
        root.add(&["Tick"], Args::new()).await.expect("taken in");
    }
    for task in tasks {
        within("leaf mutations", task).await.expect("no panic");
    }
    // 6 leaves x 25 + 50 at the root, each one activation of the multi state Tick.
    let tick = root.schema().index("Tick").expect("known");
    assert_eq!(root.tick_at(tick), 1 + 2 * (6 * 25 + 50 - 1));
    all_converged(&running, "root").await;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplex_nodes_mirror_each_other_and_mutate_both_ways() {
    // The shipped file, with free ports in place of its fixed ones.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/duplex.toml"),
    )
    .expect("topologies/duplex.toml ships");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let text = shipped
        .replace("127.0.0.1:7440", &format!("127.0.0.1:{}", free()))
        .replace("127.0.0.1:7441", &format!("127.0.0.1:{}", free()));
    assert_ne!(text, shipped);
    let running = start(&text).await;
    let machine = |node: &str, m: &str| {
        running
            .node(node)
            .and_then(|n| n.machine(m))
            .expect("exists")
    };
    let (foo_at_foo, bar_at_foo) = (machine("foo", "foo"), machine("foo", "bar"));
    let (bar_at_bar, foo_at_bar) = (machine("bar", "bar"), machine("bar", "foo"));
    // Each mirror connects when the other node is up (foo started first and retried).
    within("bar's mirror of foo", async {
        while foo_at_bar.upstream().is_none_or(|u| u.state != "ready")
            || bar_at_foo.upstream().is_none_or(|u| u.state != "ready")
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // foo mutates bar's machine through its mirror, and bar foo's.
    assert_eq!(
        within("foo -> bar", bar_at_foo.add(&["Pong"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert_eq!(
        within("bar -> foo", foo_at_bar.add(&["Ping", "Busy"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(bar_at_bar.is1("Pong"));
    assert!(foo_at_foo.is(&["Ping", "Busy"]));
    // Local changes flow to the other side.
    within("foo local", foo_at_foo.remove(&["Busy"], Args::new()))
        .await
        .expect("taken in");
    converged(foo_at_bar.as_ref(), &foo_at_foo.clock()).await;
    converged(bar_at_foo.as_ref(), &bar_at_bar.clock()).await;
    assert_eq!(bar_at_foo.ancestry(), ["foo", "bar"]);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_mirror_itself_or_its_descendants() {
    let prefix = unique("loop");
    let running = start(&tree_toml(
        &prefix,
        "root",
        &[("mid", "root"), ("leaf", "mid")],
    ))
    .await;
    all_converged(&running, "root").await;
    // The leaf may have connected before mid reached root: the ancestry follows later.
    let leaf = demo(&running, "leaf");
    within("the leaf's ancestry", async {
        while leaf.ancestry() != ["leaf", "mid", "root"] {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let leaf_endpoint = running.node("leaf").expect("leaf").endpoints()[0]
        .clone()
        .with_machine("demo");
    let root_endpoint = running.node("root").expect("root").endpoints()[0]
        .clone()
        .with_machine("demo");
    for (target, what) in [(leaf_endpoint, "descendants"), (root_endpoint, "itself")] {
        // The root's node id asking to mirror its own descendant (or itself) is refused.
        match within("connect", Mirror::connect(&target, mirror_config("root"))).await {
            Err(MirrorError::Refused {
                kind: RefusalKind::Loop,
                reason,
                ..
            }) => {
                assert!(reason.contains(what), "{reason}");
            }
            other => panic!("expected a loop refusal, got {other:?}"),
        }
    }
    running.shutdown().await;
}

#[test]
fn every_shipped_topology_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies");
    let mut parsed = 0;
    for entry in std::fs::read_dir(&dir).expect("topologies/ exists") {
        let path = entry.expect("readable").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let t = topology::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!t.nodes.is_empty(), "{} has nodes", path.display());
            parsed += 1;
        }
    }
    assert!(parsed >= 5, "only {parsed} topology files");
    let tree = topology::load(&dir.join("tree.toml")).expect("valid");
    assert_eq!(tree.nodes.len(), 9, "root -> 2 -> 6");
    let _ = Condition::Active(vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_root_restarts_fresh_every_level_follows_its_clock_back() {
    let plan = root_mid_leaf("restart");
    let root = start_one(&plan, "root").await;
    let mid = start_one(&plan, "mid").await;
    let leaf = start_one(&plan, "leaf").await;
    let machine = |node: &asyncmachine::node::RunningNode| node.machine("demo").expect("demo");
    for _ in 0..10 {
        within("tick", machine(&root).add(&["Tick", "Green"], Args::new()))
            .await
            .expect("taken in");
    }
    converged(machine(&leaf).as_ref(), &machine(&root).clock()).await;
    let before = machine(&leaf).clock();

    root.shutdown().await;
    let root = start_one(&plan, "root").await;
    let fresh = machine(&root).clock();
    assert!(
        fresh.iter().zip(&before).any(|(now, then)| now < then),
        "the restarted root is behind"
    );
    // Ticks went back: no diff can say that, so each level gets a snapshot.
    within("leaf follows back", async {
        while machine(&leaf).clock() != fresh || machine(&mid).clock() != fresh {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // And from there on, diffs again.
    within("red", machine(&leaf).add(&["Red"], Args::new()))
        .await
        .expect("reaches the new root");
    converged(machine(&leaf).as_ref(), &machine(&root).clock()).await;
    for node in [leaf, mid, root] {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_over_every_transport_carries_mutations_up_and_diffs_down() {
    // root -quic-> l1 -wss-> l2 -tls-> l3 -ws-> l4, each node with its own certificate.
    let dir = std::env::temp_dir().join(unique("mixed"));
    let names: Vec<String> = ["root", "l1", "l2", "l3", "l4"].map(String::from).to_vec();
    asyncmachine::certs::write_dev_certs(&dir, &names, asyncmachine::certs::CaPolicy::Reuse)
        .expect("writes certificates");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free udp")
        .port();
    let tcp = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free tcp")
            .port()
    };
    let listeners = [
        format!("quic://127.0.0.1:{udp}"),
        format!("wss://127.0.0.1:{}", tcp()),
        format!("tls://127.0.0.1:{}", tcp()),
        format!("ws://127.0.0.1:{}", tcp()),
        format!("tcp://127.0.0.1:{}", tcp()),
    ];
    let mut text = SCHEMA.to_owned();
    for (i, name) in names.iter().enumerate() {
        let machine = if i == 0 {
            "{ name = \"demo\", schema = \"demo\", start = [\"Start\"] }".to_owned()
        } else {
            format!("{{ name = \"demo\", upstream = \"{}\" }}", names[i - 1])
        };
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nlisten = [\"{}\"]\ntls = {{ cert = \"{name}.pem\", key = \"{name}.key\", ca = \"ca.pem\" }}\nmachines = [{machine}]\n",
            listeners[i]
        ));
    }
    let file = dir.join("mixed.toml");
    std::fs::write(&file, text).expect("writes the topology");
    let plan = topology::load(&file).expect("valid topology");
    let running = within("start", start_topology(&plan, &[]))
        .await
        .expect("starts");
    all_converged(&running, "root").await;

    let (root, leaf) = (demo(&running, "root"), demo(&running, "l4"));
    assert_eq!(
        within("leaf add", leaf.add(&["Flag", "Green"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(
        root.is(&["Flag", "Green"]),
        "the mutation crossed ws, tls, wss and quic"
    );
    for _ in 0..20 {
        within("root tick", root.add(&["Tick"], Args::new()))
            .await
            .expect("taken in");
    }
    all_converged(&running, "root").await;
    // Each hop knows its upstream over its own transport.
    let schemes: Vec<String> = running
        .nodes()
        .iter()
        .skip(1)
        .map(|n| {
            n.machine("demo")
                .and_then(|m| m.upstream())
                .map(|u| u.endpoint)
                .unwrap_or_default()
        })
        .map(|e| e.split("://").next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(schemes, ["quic", "wss", "tls", "ws"]);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ancestry_reaches_mirrors_that_connected_before_their_upstream_did() {
    let plan = root_mid_leaf("late-root");
    // mid and leaf first: the leaf connects to a mid that has not reached the root yet.
    let mid = start_one(&plan, "mid").await;
    let leaf = start_one(&plan, "leaf").await;
    let leaf_demo = leaf.machine("demo").expect("demo");
    within("leaf connected to mid", async {
        while leaf_demo.upstream().is_none_or(|u| u.state != "ready") {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(leaf_demo.ancestry(), ["leaf", "mid"]);
    let root = start_one(&plan, "root").await;
    within("the root's id reaches the leaf", async {
        while leaf_demo.ancestry() != ["leaf", "mid", "root"] {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let leaf_endpoint = leaf.endpoints()[0].clone().with_machine("demo");
    match within(
        "connect",
        Mirror::connect(&leaf_endpoint, mirror_config("root")),
    )
    .await
    {
        Err(MirrorError::Refused {
            kind: RefusalKind::Loop,
            ..
        }) => {}
        other => panic!("the root mirroring its descendant must be refused, got {other:?}"),
    }
    for node in [leaf, mid, root] {
        node.shutdown().await;
    }
}
