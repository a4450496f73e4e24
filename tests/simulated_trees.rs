//! Trees of nodes run in the simulator (`tests/sim`): deep chains, fan-outs and duplex pairs
//! converge; mutations travel up and their answers down; reconnects, resyncs, loop refusals,
//! schema changes and the ACL behave as the design says. Plain tests, milliseconds each.

mod sim;

use std::sync::Arc;
use std::time::Duration;

use asyncmachine::machine::{MutationError, MutationKind, Outcome, Schema, SchemaDef, StateDef};
use asyncmachine::proto::acl::Acl;
use asyncmachine::proto::message::RefusalKind;
use asyncmachine::proto::session::{HandshakeError, Phase};
use sim::{MirrorOptions, Sim, SourceAt, schema};

/// A chain: `root` then mirrors, each of the one before.
fn chain(sim: &mut Sim, names: &[&str]) -> Vec<SourceAt> {
    let mut out = vec![sim.add_root(names[0], "demo", schema(), &["Start"])];
    for pair in names.windows(2) {
        let options = MirrorOptions {
            schema: Some(schema()),
            ..MirrorOptions::default()
        };
        out.push(sim.add_mirror(pair[1], "demo", pair[0], "demo", options));
    }
    out
}

#[test]
fn a_depth_five_chain_converges() {
    let mut sim = Sim::new(1);
    let nodes = chain(&mut sim, &["n0", "n1", "n2", "n3", "n4", "n5"]);
    sim.run_until_quiet();
    assert!(sim.divergent(nodes[0]).is_empty(), "{}", sim.describe());
    sim.mutate(nodes[0], MutationKind::Add, &["Flag"], "r1")
        .expect("runs");
    sim.run_until_quiet();
    assert!(sim.divergent(nodes[0]).is_empty(), "{}", sim.describe());
    assert_eq!(sim.tick(nodes[5], "Flag"), 1);
}

/// A mirror of `upstream`'s "demo" at `node`, expecting the demo schema.
fn mirror(sim: &mut Sim, node: &str, upstream: &str) -> SourceAt {
    let options = MirrorOptions {
        schema: Some(schema()),
        ..MirrorOptions::default()
    };
    sim.add_mirror(node, "demo", upstream, "demo", options)
}

fn assert_converged(sim: &Sim, root: SourceAt) {
    let divergent = sim.divergent(root);
    assert!(divergent.is_empty(), "{divergent:?}\n{}", sim.describe());
}

#[test]
fn a_one_two_six_tree_converges_under_latency_and_reorder() {
    let mut sim = Sim::new(2);
    sim.knobs.latency = (Duration::from_millis(1), Duration::from_millis(30));
    sim.knobs.reorder = true;
    let root = sim.add_root("root", "demo", schema(), &["Start"]);
    for mid in ["a", "b"] {
        mirror(&mut sim, mid, "root");
        for leaf in 0..3 {
            mirror(&mut sim, &format!("{mid}{leaf}"), mid);
        }
    }
    sim.run_until_quiet();
    assert_converged(&sim, root);
    for (i, state) in ["Green", "Red", "Tick", "Tick", "Flag"].iter().enumerate() {
        sim.mutate(root, MutationKind::Add, &[state], &format!("r{i}"))
            .expect("runs");
    }
    sim.run_until_quiet();
    assert_converged(&sim, root);
    let leaf = sim.sources().last().expect("sources");
    // A multi state's tick grows by two when it is added again.
    assert_eq!(sim.tick(leaf, "Tick"), 3);
    assert_eq!(sim.tick(leaf, "Red"), 1);
}

#[test]
fn duplex_nodes_each_mirror_the_others_root_and_both_converge() {
    let mut sim = Sim::new(3);
    sim.knobs.latency = (Duration::from_millis(2), Duration::from_millis(8));
    let x = sim.add_root("x", "x", schema(), &["Start"]);
    let y = sim.add_root("y", "y", schema(), &["Start"]);
    let options = MirrorOptions {
        schema: Some(schema()),
        ..MirrorOptions::default()
    };
    let y_at_x = sim.add_mirror("x", "y-copy", "y", "y", options.clone());
    let x_at_y = sim.add_mirror("y", "x-copy", "x", "x", options);
    sim.run_until_quiet();
    // Each side changes the other's root through its mirror, and its own directly.
    let from_x = sim
        .mutate(y_at_x, MutationKind::Add, &["Green"], "x-to-y")
        .expect("sent");
    let from_y = sim
        .mutate(x_at_y, MutationKind::Add, &["Red"], "y-to-x")
        .expect("sent");
    sim.mutate(x, MutationKind::Add, &["Tick"], "x-own")
        .expect("runs");
    sim.mutate(y, MutationKind::Add, &["Flag"], "y-own")
        .expect("runs");
    sim.run_until_quiet();
    for tag in [from_x, from_y] {
        let answer = sim.answer(tag).expect("answered");
        assert_eq!(answer.result, Ok(Outcome::Executed));
    }
    assert_converged(&sim, x);
    assert_converged(&sim, y);
    assert_eq!(sim.tick(x_at_y, "Red"), 1);
    assert_eq!(sim.tick(x_at_y, "Tick"), 1);
    assert_eq!(sim.tick(y_at_x, "Green"), 1);
    assert_eq!(sim.tick(y_at_x, "Flag"), 1);
}

#[test]
fn a_leaf_mutation_travels_up_hop_by_hop_and_its_answer_carries_the_clock() {
    let mut sim = Sim::new(4);
    let latency = Duration::from_millis(5);
    sim.knobs.latency = (latency, latency);
    let nodes = chain(&mut sim, &["n0", "n1", "n2", "n3", "n4"]);
    let (root, leaf) = (nodes[0], nodes[4]);
    sim.run_until_quiet();
    let sent = sim.now();
    let tag = sim
        .mutate(leaf, MutationKind::Add, &["Flag"], "from-the-leaf")
        .expect("sent");
    sim.run_until(Duration::from_secs(5), |sim| sim.answer(tag).is_some());
    let answer = sim.answer(tag).expect("answered").clone();
    assert_eq!(answer.result, Ok(Outcome::Executed));
    // Four hops up and four down.
    assert!(
        sim.now().since(sent) >= latency * 8,
        "{:?}",
        sim.now().since(sent)
    );
    let flag = schema().index("Flag").expect("a state");
    assert_eq!(
        answer.ticks[flag], 1,
        "the answer came with the clock that shows it"
    );
    assert_eq!(answer.ticks, sim.clock(root).0);
    let runs: Vec<_> = sim
        .executed()
        .iter()
        .filter(|e| e.uid.as_deref() == Some("from-the-leaf"))
        .collect();
    assert_eq!(runs.len(), 1, "run once, at the root");
    assert_eq!(runs[0].at, root);
    sim.run_until_quiet();
    assert_converged(&sim, root);
}

#[test]
fn a_mid_cut_off_by_a_partition_reconnects_and_resyncs_after_it_heals() {
    let mut sim = Sim::new(5);
    let nodes = chain(&mut sim, &["root", "mid", "leaf"]);
    let (root, mid, leaf) = (nodes[0], nodes[1], nodes[2]);
    sim.run_until_quiet();
    sim.partition(root.node, mid.node);
    for i in 0..5 {
        sim.mutate(root, MutationKind::Add, &["Tick"], &format!("t{i}"))
            .expect("runs");
    }
    // Long enough for the idle rule to end the silent session and for dials to fail.
    sim.run_for(Duration::from_secs(60));
    assert_ne!(sim.mirror(mid).session.phase(), Phase::Ready);
    assert_eq!(sim.tick(leaf, "Tick"), 0, "nothing crossed the partition");
    assert_eq!(sim.mirror(leaf).sessions, 1, "the leaf kept its session");
    sim.heal(root.node, mid.node);
    sim.run_until_quiet();
    assert_converged(&sim, root);
    assert_eq!(sim.tick(leaf, "Tick"), 9);
    assert_eq!(sim.mirror(mid).sessions, 2);
    assert_eq!(sim.mirror(leaf).sessions, 1);
}

#[test]
fn a_root_restarted_with_a_clock_that_went_back_reaches_every_mirror_by_snapshot() {
    let mut sim = Sim::new(6);
    let nodes = chain(&mut sim, &["root", "mid", "leaf"]);
    let (root, mid, leaf) = (nodes[0], nodes[1], nodes[2]);
    sim.run_until_quiet();
    for i in 0..6 {
        sim.mutate(root, MutationKind::Add, &["Tick"], &format!("t{i}"))
            .expect("runs");
    }
    sim.run_until_quiet();
    assert_eq!(sim.tick(leaf, "Tick"), 11);
    sim.restart_root(root, schema(), &["Start"]);
    sim.mutate(root, MutationKind::Add, &["Tick"], "after")
        .expect("runs");
    sim.run_until_quiet();
    assert_converged(&sim, root);
    assert_eq!(sim.tick(leaf, "Tick"), 1, "the leaf's clock went back too");
    assert_eq!(sim.mirror(mid).sessions, 2, "the mid reconnected");
    assert_eq!(
        sim.mirror(leaf).sessions,
        1,
        "the leaf took the snapshot in its session"
    );
}

#[test]
fn a_queue_tick_that_went_back_alone_reaches_the_leaves() {
    let mut sim = Sim::new(10);
    let nodes = chain(&mut sim, &["root", "mid", "leaf"]);
    let (root, leaf) = (nodes[0], nodes[2]);
    sim.run_until_quiet();
    // A removal of an inactive state moves the queue tick alone; the next change publishes it.
    sim.mutate(root, MutationKind::Remove, &["Red"], "no-op")
        .expect("runs");
    sim.mutate(root, MutationKind::Add, &["Green"], "green")
        .expect("runs");
    sim.run_until_quiet();
    assert_eq!(sim.clock(leaf), (sim.clock(root).0, 3));
    // Back with the same ticks and an earlier queue tick: only the queue tick changes.
    sim.restart_root(root, schema(), &["Start"]);
    sim.mutate(root, MutationKind::Add, &["Green"], "green again")
        .expect("runs");
    sim.run_until_quiet();
    assert_eq!(
        sim.clock(leaf),
        (sim.clock(root).0, 2),
        "{}",
        sim.describe()
    );
    assert_converged(&sim, root);
}

#[test]
fn a_node_that_would_mirror_its_own_descendant_is_refused_as_a_loop() {
    let mut sim = Sim::new(7);
    let nodes = chain(&mut sim, &["r", "a", "b"]);
    sim.run_until_quiet();
    // Node a also mirrors b, which mirrors a.
    let options = MirrorOptions {
        schema: Some(schema()),
        ..MirrorOptions::default()
    };
    let back = sim.add_mirror("a", "back", "b", "demo", options);
    sim.run_for(Duration::from_secs(2));
    let failures = &sim.mirror(back).failures;
    assert!(!failures.is_empty());
    for failure in failures {
        assert!(
            matches!(
                failure,
                HandshakeError::Refused {
                    kind: RefusalKind::Loop,
                    ..
                }
            ),
            "{failure}"
        );
    }
    assert_eq!(sim.mirror(back).sessions, 0);
    // The tree itself is unharmed.
    for &at in &nodes[1..] {
        assert_eq!(sim.clock(at), sim.clock(nodes[0]), "{}", sim.describe());
    }
}

#[test]
fn an_upstream_back_with_another_schema_sends_the_mids_clients_away_to_fetch_it() {
    let mut sim = Sim::new(8);
    let root = sim.add_root("root", "demo", schema(), &["Start"]);
    // Mirrors that take the source's schema (and follow its changes).
    let mid = sim.add_mirror("mid", "demo", "root", "demo", MirrorOptions::default());
    let leaves: Vec<SourceAt> = (0..3)
        .map(|i| {
            sim.add_mirror(
                &format!("leaf{i}"),
                "demo",
                "mid",
                "demo",
                MirrorOptions::default(),
            )
        })
        .collect();
    sim.run_until_quiet();
    for &leaf in &leaves {
        assert_eq!(sim.source(leaf).schema().hash(), schema().hash());
    }
    let other = Arc::new(
        Schema::new(SchemaDef::of_states(vec![
            StateDef::new("Up"),
            StateDef::new("Down").remove(["Up"]),
        ]))
        .expect("valid schema"),
    );
    sim.restart_root(root, other.clone(), &["Up"]);
    sim.run_until_quiet();
    assert_eq!(sim.source(mid).schema().hash(), other.hash());
    for &leaf in &leaves {
        let side = sim.mirror(leaf);
        assert_eq!(sim.source(leaf).schema().hash(), other.hash());
        assert!(
            side.closes.iter().any(|c| c.contains("schema changed")),
            "{:?}",
            side.closes
        );
    }
    assert_converged(&sim, root);
    assert_eq!(sim.tick(leaves[0], "Up"), 1);
}

#[test]
fn a_client_may_only_mutate_the_states_its_acl_lists() {
    let mut sim = Sim::new(9);
    let nodes = chain(&mut sim, &["root", "mid"]);
    let mut acl = Acl::default();
    acl.mutate.insert("leaf".into(), vec!["Green".into()]);
    sim.set_acl("mid", acl);
    let leaf = mirror(&mut sim, "leaf", "mid");
    sim.run_until_quiet();
    let denied = sim
        .mutate(leaf, MutationKind::Add, &["Red"], "denied")
        .expect("sent");
    let allowed = sim
        .mutate(leaf, MutationKind::Add, &["Green"], "allowed")
        .expect("sent");
    sim.run_until_quiet();
    let denied = sim.answer(denied).expect("answered");
    assert!(
        matches!(&denied.result, Err(MutationError::Refused(reason)) if reason.contains("may not mutate Red")),
        "{:?}",
        denied.result
    );
    assert_eq!(
        sim.answer(allowed).expect("answered").result,
        Ok(Outcome::Executed)
    );
    assert!(
        sim.executed()
            .iter()
            .all(|e| e.uid.as_deref() != Some("denied")),
        "the root never saw the refused mutation"
    );
    assert_converged(&sim, nodes[0]);
    assert_eq!(sim.tick(leaf, "Green"), 1);
}

#[test]
fn leaves_reconverge_after_their_mid_restarts_under_load() {
    let mut sim = Sim::new(11);
    sim.knobs.latency = (Duration::from_millis(1), Duration::from_millis(10));
    let root = sim.add_root("root", "demo", schema(), &["Start"]);
    let mid = mirror(&mut sim, "mid", "root");
    let leaves: Vec<SourceAt> = (0..3)
        .map(|i| mirror(&mut sim, &format!("leaf{i}"), "mid"))
        .collect();
    sim.run_until_quiet();
    for i in 0..20 {
        sim.mutate(root, MutationKind::Add, &["Tick"], &format!("t{i}"))
            .expect("runs");
        sim.run_for(Duration::from_millis(3));
        if i == 7 {
            sim.restart_mirror(mid);
        }
    }
    sim.run_until_quiet();
    assert_converged(&sim, root);
    for &leaf in &leaves {
        assert_eq!(sim.tick(leaf, "Tick"), 39);
        assert!(sim.mirror(leaf).sessions >= 2, "the leaf reconnected");
    }
}
