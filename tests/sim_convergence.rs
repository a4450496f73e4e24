//! The convergence property, in the simulator (`tests/sim`): random trees under random
//! mutations from random nodes and random faults (connections dropped, nodes partitioned and
//! healed, latency changed, deliveries reordered). Once every fault is healed and the tree is
//! quiet:
//! - every mirror's ticks are the root's, and after one more change at the root so is its
//!   queue tick (which travels with tick changes);
//! - every mutation a node saw acknowledged as executed ran at the root exactly once, and no
//!   mutation ran twice.

mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use asyncmachine::machine::{MutationKind, Outcome};
use proptest::prelude::*;
use sim::{MirrorOptions, Sim, SourceAt, schema};

const STATES: [&str; 5] = ["Start", "Flag", "Tick", "Green", "Red"];
const MAX_NODES: usize = 12;
const MAX_DEPTH: usize = 5;

/// One thing that happens to the tree. Node numbers are taken modulo the tree's size.
#[derive(Debug, Clone)]
enum Op {
    /// A mutation from a node (the root runs it, a mirror sends it up).
    Mutate {
        node: usize,
        add: bool,
        state: usize,
    },
    /// A node's connection to its upstream breaks.
    Drop {
        node: usize,
    },
    /// A node and its upstream are cut apart.
    Partition {
        node: usize,
    },
    Heal {
        node: usize,
    },
    /// New connections get a latency up to this.
    Latency {
        max_ms: u64,
    },
    /// A node restarts: a root with a fresh machine (its clock goes back), a mirror from an
    /// all-zero clock; every connection it serves breaks.
    Restart {
        node: usize,
    },
    Wait {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..MAX_NODES, any::<bool>(), 0..STATES.len())
            .prop_map(|(node, add, state)| Op::Mutate { node, add, state }),
        1 => (0..MAX_NODES).prop_map(|node| Op::Drop { node }),
        1 => (0..MAX_NODES).prop_map(|node| Op::Partition { node }),
        1 => (0..MAX_NODES).prop_map(|node| Op::Heal { node }),
        1 => (0..50u64).prop_map(|max_ms| Op::Latency { max_ms }),
        1 => (0..MAX_NODES).prop_map(|node| Op::Restart { node }),
        3 => prop_oneof![0..20u64, 0..40_000u64].prop_map(|ms| Op::Wait { ms }),
    ]
}

/// A tree as parents: node `i + 1` mirrors node `picks[i]` among those not yet at the
/// deepest level.
fn parents(picks: &[usize]) -> Vec<usize> {
    let mut depth = vec![0];
    let mut parents = vec![0];
    for (i, &pick) in picks.iter().enumerate() {
        let shallow: Vec<usize> = (0..=i).filter(|&n| depth[n] < MAX_DEPTH).collect();
        let parent = shallow[pick % shallow.len()];
        parents.push(parent);
        depth.push(depth[parent] + 1);
    }
    parents
}

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    picks: Vec<usize>,
    reorder: bool,
    compression: Vec<bool>,
    /// Every node paces its pushes by this, when set.
    pace_ms: Option<u64>,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        proptest::collection::vec(any::<usize>(), 1..MAX_NODES),
        any::<bool>(),
        proptest::collection::vec(any::<bool>(), MAX_NODES),
        proptest::option::weighted(0.25, 1..200u64),
        proptest::collection::vec(op(), 1..40),
    )
        .prop_map(|(seed, picks, reorder, compression, pace_ms, ops)| Case {
            seed,
            picks,
            reorder,
            compression,
            pace_ms,
            ops,
        })
}

/// Builds the tree, plays the case, heals everything and checks the property.
fn play(case: &Case) -> Result<(), TestCaseError> {
    let parents = parents(&case.picks);
    let mut sim = Sim::new(case.seed);
    sim.knobs.reorder = case.reorder;
    for i in 0..parents.len() {
        sim.set_push_interval(&format!("n{i}"), case.pace_ms.map(Duration::from_millis));
    }
    let root = sim.add_root("n0", "demo", schema(), &["Start"]);
    let mut nodes = vec![root];
    for (i, &parent) in parents.iter().enumerate().skip(1) {
        let options = MirrorOptions {
            schema: Some(schema()),
            compression: case.compression[i],
            track: None,
            retry: None,
        };
        nodes.push(sim.add_mirror(
            &format!("n{i}"),
            "demo",
            &format!("n{parent}"),
            "demo",
            options,
        ));
    }
    let n = nodes.len();
    for (uid, op) in case.ops.iter().enumerate() {
        match *op {
            Op::Mutate { node, add, state } => {
                let kind = if add {
                    MutationKind::Add
                } else {
                    MutationKind::Remove
                };
                // A mirror that is not connected refuses at once; that is no loss.
                let _ = sim.mutate(nodes[node % n], kind, &[STATES[state]], &format!("u{uid}"));
            }
            Op::Drop { node } if node % n > 0 => sim.break_link(nodes[node % n]),
            Op::Partition { node } if node % n > 0 => sim.partition(node % n, parents[node % n]),
            Op::Heal { node } if node % n > 0 => sim.heal(node % n, parents[node % n]),
            Op::Latency { max_ms } => sim.knobs.latency.1 = Duration::from_millis(max_ms),
            Op::Restart { node } if node % n == 0 => sim.restart_root(root, schema(), &["Start"]),
            Op::Restart { node } => sim.restart_mirror(nodes[node % n]),
            Op::Wait { ms } => sim.run_for(Duration::from_millis(ms)),
            _ => {}
        }
    }
    sim.heal_all();
    sim.run_until_quiet();
    let divergent = sim.divergent_ticks(root);
    prop_assert!(divergent.is_empty(), "{divergent:?}\n{}", sim.describe());
    // The queue tick travels with tick changes: one more brings it everywhere.
    sim.mutate(root, MutationKind::Add, &["Tick"], "last")
        .expect("runs");
    sim.run_until_quiet();
    check(&sim, root)
}

fn check(sim: &Sim, root: SourceAt) -> Result<(), TestCaseError> {
    let divergent = sim.divergent(root);
    prop_assert!(divergent.is_empty(), "{divergent:?}\n{}", sim.describe());
    let mut runs: BTreeMap<&str, Vec<&Result<Outcome, _>>> = BTreeMap::new();
    for executed in sim.executed() {
        let uid = executed.uid.as_deref().unwrap_or("");
        runs.entry(uid).or_default().push(&executed.result);
    }
    for (uid, results) in &runs {
        prop_assert_eq!(results.len(), 1, "{} ran {} times", uid, results.len());
    }
    for answer in sim.answers() {
        if answer.result != Ok(Outcome::Executed) {
            continue;
        }
        let uid = answer.uid.as_str();
        let ran = runs.get(uid).map(Vec::as_slice);
        prop_assert_eq!(
            ran,
            Some(&[&Ok(Outcome::Executed)][..]),
            "{} was acknowledged as executed",
            uid
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_mirror_converges_and_no_acknowledged_mutation_is_lost(case in case()) {
        play(&case)?;
    }
}
