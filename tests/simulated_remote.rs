//! Remote waits and last-error requests in simulated trees (`tests/sim`): a leaf's wait on the
//! arguments of an activation travels up to the root and its end comes down; it survives a
//! link flap below the root (withdrawn up there while the link is down, sent again once it is
//! back) and a partition that only stalls the link; a withdrawn wait is dropped at every hop; a
//! refusal further up reaches the leaf with its reason; the root's last error reaches the leaf.

mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use asyncmachine::machine::{Args, MutationError, MutationKind, WaitError};
use asyncmachine::proto::acl::Acl;
use sim::{MirrorOptions, Sim, SourceAt, schema};

/// The chain root <- a <- b <- c.
fn chain(sim: &mut Sim) -> [SourceAt; 4] {
    let root = sim.add_root("root", "demo", schema(), &["Start"]);
    let mut out = [root; 4];
    for (i, pair) in [["root", "a"], ["a", "b"], ["b", "c"]].iter().enumerate() {
        let options = MirrorOptions {
            schema: Some(schema()),
            ..MirrorOptions::default()
        };
        out[i + 1] = sim.add_mirror(pair[1], "demo", pair[0], "demo", options);
    }
    sim.run_until_quiet();
    out
}

/// A wait on `Tick` activated by the mutation with this `uid` (the simulator's mutations carry
/// their uid as an argument).
fn tick_with(uid: &str) -> Args {
    Args::new().with("uid", uid)
}

/// Waits the servers of every hop run for their clients, root first.
fn served(sim: &Sim, tree: &[SourceAt; 4]) -> Vec<usize> {
    tree[..3].iter().map(|&at| sim.served_waits(at)).collect()
}

#[test]
fn a_leaf_wait_survives_a_link_flap_and_misses_only_what_happened_during_it() {
    let mut sim = Sim::new(11);
    let [root, a, b, c] = chain(&mut sim);
    let wait = sim.when_args(c, "Tick", tick_with("t7"));
    sim.run_until_quiet();
    assert_eq!(sim.machine(root).waiter_count(), 1, "{}", sim.describe());
    assert_eq!(served(&sim, &[root, a, b, c]), [1, 1, 1]);

    // Other arguments leave it waiting.
    sim.mutate(root, MutationKind::Add, &["Tick"], "t1")
        .expect("runs");
    sim.run_until_quiet();
    assert_eq!(sim.wait_result(wait), None);

    // b's link to a breaks: a withdraws b's wait, up to the root; b and c keep theirs.
    sim.break_link(b);
    sim.run_until(Duration::from_secs(1), |sim| {
        sim.machine(root).waiter_count() == 0
    });
    assert_eq!(sim.mirror(b).session.waits(), 1);
    assert_eq!(sim.mirror(c).session.waits(), 1);
    // An activation while the link is down is missed: nobody up there waits for it.
    sim.mutate(root, MutationKind::Add, &["Tick"], "t7")
        .expect("runs");

    // b reconnects and sends the wait again; the next activation ends it at the leaf.
    sim.run_until_quiet();
    assert!(sim.mirror(b).sessions >= 2, "{}", sim.describe());
    assert_eq!(sim.wait_result(wait), None, "the missed activation");
    assert_eq!(sim.machine(root).waiter_count(), 1, "{}", sim.describe());
    assert_eq!(served(&sim, &[root, a, b, c]), [1, 1, 1]);
    sim.mutate(root, MutationKind::Add, &["Tick"], "t7")
        .expect("runs");
    sim.run_until_quiet();
    assert_eq!(sim.wait_result(wait), Some(&Ok(())), "{}", sim.describe());
    assert_eq!(sim.machine(root).waiter_count(), 0);
    assert_eq!(served(&sim, &[root, a, b, c]), [0, 0, 0]);
    assert_eq!(sim.mirror(c).session.waits(), 0);
}

#[test]
fn a_wait_answered_across_a_stalled_link_arrives_when_it_heals() {
    let mut sim = Sim::new(12);
    sim.knobs.latency = (Duration::from_millis(2), Duration::from_millis(20));
    let [root, _a, b, c] = chain(&mut sim);
    let wait = sim.when_args(c, "Tick", tick_with("t2"));
    sim.run_until_quiet();
    // Shorter than the idle timeout: the link between a and b stalls but stays up.
    let (a_node, b_node) = (sim.upstream_of(b).expect("a mirror").node, b.node);
    sim.partition(a_node, b_node);
    sim.run_for(Duration::from_secs(2));
    sim.mutate(root, MutationKind::Add, &["Tick"], "t2")
        .expect("runs");
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.wait_result(wait), None, "held by the partition");
    sim.heal_all();
    sim.run_until_quiet();
    assert_eq!(sim.wait_result(wait), Some(&Ok(())), "{}", sim.describe());
    assert_eq!(sim.mirror(b).sessions, 1, "the link stayed up");
}

#[test]
fn a_withdrawn_wait_is_dropped_at_every_hop() {
    let mut sim = Sim::new(13);
    let tree = chain(&mut sim);
    let [root, _, _, c] = tree;
    let kept = sim.when_args(c, "Tick", tick_with("kept"));
    let withdrawn = sim.when_args(c, "Tick", tick_with("gone"));
    sim.run_until_quiet();
    assert_eq!(sim.machine(root).waiter_count(), 2);
    sim.cancel_wait(withdrawn);
    sim.run_until_quiet();
    assert_eq!(sim.machine(root).waiter_count(), 1, "{}", sim.describe());
    assert_eq!(served(&sim, &tree), [1, 1, 1]);
    sim.mutate(root, MutationKind::Add, &["Tick"], "gone")
        .expect("runs");
    sim.mutate(root, MutationKind::Add, &["Tick"], "kept")
        .expect("runs");
    sim.run_until_quiet();
    assert_eq!(sim.wait_result(withdrawn), None, "nothing more of it");
    assert_eq!(sim.wait_result(kept), Some(&Ok(())));
}

#[test]
fn a_wait_refused_further_up_reaches_the_leaf_with_the_reason() {
    let mut sim = Sim::new(14);
    // a lets b see only Start: b (and so c) may not wait on Tick there.
    sim.set_acl(
        "a",
        Acl {
            see: BTreeMap::from([("b".into(), vec!["Start".into()])]),
            ..Acl::default()
        },
    );
    let [root, _, _, c] = chain(&mut sim);
    let wait = sim.when_args(c, "Tick", tick_with("t"));
    sim.run_until_quiet();
    match sim.wait_result(wait) {
        Some(Err(WaitError::Refused(reason))) => {
            assert!(reason.contains("may not see state Tick"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}\n{}", sim.describe()),
    }
    assert_eq!(sim.machine(root).waiter_count(), 0);
}

#[test]
fn the_roots_last_error_reaches_the_leaf_and_a_disconnected_leaf_says_so() {
    let mut sim = Sim::new(15);
    let [root, _, b, c] = chain(&mut sim);
    let before = sim.err(c).expect("asked");
    sim.run_until_quiet();
    assert_eq!(sim.err_answer(before), Some(&Ok(None)));

    sim.machine(root)
        .on_state("Red", |_| Err::<(), _>("boom at the root"))
        .expect("known state");
    sim.mutate(root, MutationKind::Add, &["Red"], "fail")
        .expect("runs");
    sim.run_until_quiet();
    let at_root = sim.err(root).expect("answered at once");
    assert_eq!(
        sim.err_answer(at_root),
        Some(&Ok(Some("boom at the root".to_owned())))
    );
    let at_leaf = sim.err(c).expect("asked");
    sim.run_until_quiet();
    assert_eq!(
        sim.err_answer(at_leaf),
        Some(&Ok(Some("boom at the root".to_owned()))),
        "{}",
        sim.describe()
    );

    // A hop that lost its own link cannot ask: the leaf hears why.
    sim.break_link(b);
    let cut_off = sim.err(c).expect("c is still connected to b");
    sim.run_until(Duration::from_secs(1), |sim| {
        sim.err_answer(cut_off).is_some()
    });
    match sim.err_answer(cut_off) {
        Some(Err(MutationError::Refused(reason))) => {
            assert!(reason.contains("not connected to the source"), "{reason}");
        }
        other => panic!("expected the reason b could not ask, got {other:?}"),
    }
    // A leaf without a link fails at once.
    sim.break_link(c);
    assert_eq!(sim.err(c), Err(MutationError::Disconnected));
}
