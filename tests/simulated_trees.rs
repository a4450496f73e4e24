//! Trees of nodes run in the simulator (`tests/sim`): deep chains, fan-outs and duplex pairs
//! converge; mutations travel up and their answers down; reconnects, resyncs, loop refusals,
//! schema changes and the ACL behave as the design says. Plain tests, milliseconds each.

mod sim;

use std::sync::Arc;

use asyncmachine::machine::{MutationKind, Schema, SchemaDef, StateDef};
use sim::{MirrorOptions, Sim, SourceAt};

fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::new(SchemaDef {
            states: vec![
                StateDef::new("Start"),
                StateDef::new("Flag").require(["Start"]),
                StateDef::new("Tick").multi(),
                StateDef::new("Green").remove(["Red"]),
                StateDef::new("Red").remove(["Green"]),
            ],
        })
        .expect("valid schema"),
    )
}

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
