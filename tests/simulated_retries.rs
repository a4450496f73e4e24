//! Retries and exactly once in the tree simulator: a depth-3 chain root <- a <- b <- leaf whose
//! mirrors retry, the link at each hop broken while the leaf's mutations are in flight and more
//! are made while it is down. Every mutation is answered `Executed`, and the root ran each one
//! (recognized by its `uid` argument) exactly once: repeats sent after the break were answered
//! from a record, not run again.

mod sim;

use std::collections::HashMap;
use std::time::Duration;

use asyncmachine::machine::{MutationKind, Outcome};
use asyncmachine::proto::session::RetryPolicy;
use sim::{MirrorOptions, Sim, SourceAt, schema};

fn retrying_chain(sim: &mut Sim) -> Vec<SourceAt> {
    let names = ["root", "a", "b", "leaf"];
    let mut out = vec![sim.add_root(names[0], "demo", schema(), &["Start"])];
    for pair in names.windows(2) {
        let options = MirrorOptions {
            schema: Some(schema()),
            retry: Some(RetryPolicy {
                deadline: Duration::from_secs(60),
                max_waiting: 1024,
            }),
            ..MirrorOptions::default()
        };
        out.push(sim.add_mirror(pair[1], "demo", pair[0], "demo", options));
    }
    out
}

/// Breaks the link of `hop` (the mirror at that position) while 10 of the leaf's mutations are
/// on their way, makes 10 more while it is down, and checks each ran once at the root.
fn break_at(hop: usize, seed: u64) -> u64 {
    let mut sim = Sim::new(seed);
    let latency = Duration::from_millis(3);
    sim.knobs.latency = (latency, latency);
    let nodes = retrying_chain(&mut sim);
    sim.run_until_quiet();
    let (root, leaf) = (nodes[0], nodes[3]);
    let mut tags = Vec::new();
    for i in 0..10 {
        tags.push(
            sim.mutate(leaf, MutationKind::Add, &["Tick"], &format!("m{i}"))
                .expect("sent"),
        );
    }
    // Far enough for some to have run at the root, not for their replies to be back.
    sim.run_for(latency * 4);
    sim.break_link(nodes[hop]);
    for i in 10..20 {
        tags.push(
            sim.mutate(leaf, MutationKind::Add, &["Tick"], &format!("m{i}"))
                .expect("kept while the link is down"),
        );
    }
    sim.run_until_quiet();
    for &tag in &tags {
        let answer = sim.answer(tag).expect("answered");
        assert_eq!(
            answer.result,
            Ok(Outcome::Executed),
            "{}: {}",
            answer.uid,
            sim.describe()
        );
    }
    let mut runs: HashMap<String, usize> = HashMap::new();
    for executed in sim.executed().iter().filter(|e| e.at == root) {
        if let Some(uid) = &executed.uid {
            *runs.entry(uid.clone()).or_default() += 1;
        }
    }
    for i in 0..20 {
        assert_eq!(
            runs.get(&format!("m{i}")).copied(),
            Some(1),
            "m{i} ran once at the root (hop {hop}): {runs:?}"
        );
    }
    // Tick is multi: 20 activations take its tick to 2 * 20 - 1.
    assert_eq!(sim.tick(root, "Tick"), 39);
    assert!(sim.divergent(root).is_empty(), "{}", sim.describe());
    sim.deduplicated()
}

#[test]
fn a_break_at_each_hop_of_a_chain_runs_every_mutation_once() {
    let mut deduplicated = 0;
    for hop in 1..=3 {
        for seed in 0..4 {
            deduplicated += break_at(hop, seed * 10 + hop as u64);
        }
    }
    // Some replies were lost with the links: their repeats were answered from a record.
    assert!(deduplicated > 0, "no repeat was ever deduplicated");
}
