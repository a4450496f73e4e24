//! Ported tests of handler order, negotiation, auto states, the queue and failures.

use std::sync::{Arc, Mutex};

use asyncmachine::machine::{Args, Event, MutationKind, Outcome, StateDef, StateSource};

use crate::helpers::{History, assert_states, machine, no_rels, no_rels_but, soon};

/// Go: TestSingleToSingleStateTransition (machine_test.go)
#[test]
fn single_to_single_state_transition() {
    let m = no_rels(&["A", "B"]);
    let history = History::track(&m);
    m.set(&["C"], Args::new()).expect("known states");
    assert_states(&m, &["C"]);
    history.assert_order(&["AExit", "BExit", "CEnter", "AC", "BC", "CState"]);
    history.assert_counts(1);
}

/// Go: TestSingleToMultiStateTransition (machine_test.go)
#[test]
fn single_to_multi_state_transition() {
    let m = no_rels(&["A"]);
    let history = History::track(&m);
    m.set(&["B", "C"], Args::new()).expect("known states");
    assert_states(&m, &["B", "C"]);
    history.assert_order(&["AExit", "BEnter", "CEnter", "AB", "AC", "BState", "CState"]);
    history.assert_counts(1);
}

/// Go: TestMultiToMultiStateTransition (machine_test.go). Unrelated states keep the order of
/// the mutation: D enters before C.
#[test]
fn multi_to_multi_state_transition() {
    let m = no_rels(&["A", "B"]);
    let history = History::track(&m);
    m.set(&["D", "C"], Args::new()).expect("known states");
    assert_states(&m, &["D", "C"]);
    history.assert_order(&[
        "AExit", "BExit", "DEnter", "CEnter", "AD", "AC", "BD", "BC", "CState",
    ]);
    history.assert_order(&["DState", "CState"]);
    history.assert_counts(1);
}

/// Go: TestMultiToSingleStateTransition (machine_test.go). `AnyEnter` runs after the
/// per-state negotiation handlers.
#[test]
fn multi_to_single_state_transition() {
    let m = no_rels(&["A", "B"]);
    let history = History::track(&m);
    m.set(&["C"], Args::new()).expect("known states");
    assert_states(&m, &["C"]);
    history.assert_order(&[
        "AExit", "BExit", "CEnter", "AC", "BC", "AnyEnter", "AEnd", "BEnd", "CState", "AnyState",
    ]);
    history.assert_counts(1);
}

/// Go: TestSelfHandlersOrder (machine_test.go), Go's exact order.
#[test]
fn self_handlers_order() {
    let m = no_rels(&["A"]);
    let history = History::track(&m);
    m.set(&["A", "B"], Args::new()).expect("known states");
    assert_eq!(
        history.order(),
        ["BEnter", "AA", "AB", "AnyEnter", "BState", "AnyState"]
    );
}

/// Go: TestAfterRelationWhenEntering (machine_test.go)
#[test]
fn after_relation_when_entering() {
    let m = no_rels_but(
        vec![
            StateDef::new("A").after(["B"]),
            StateDef::new("C").after(["D"]),
        ],
        &["A", "B"],
    );
    let history = History::track(&m);
    m.set(&["C", "D"], Args::new()).expect("known states");
    assert_states(&m, &["C", "D"]);
    history.assert_order(&["DEnter", "CEnter", "AD", "AC"]);
    history.assert_counts(1);
}

/// Go: TestAfterRelationWhenExiting (machine_test.go). Go expects `AD`, `AC`, `BD`, `BC`:
/// its machine activated A and B before the test added `A after B`, so A stayed first among
/// the active states; here the relation exists from the start, B is first, and the pairs
/// from B run first (the order of the pairs follows the order of the active states in both).
#[test]
fn after_relation_when_exiting() {
    let m = no_rels_but(
        vec![
            StateDef::new("A").after(["B"]),
            StateDef::new("C").after(["D"]),
        ],
        &["A", "B"],
    );
    let history = History::track(&m);
    m.set(&["C", "D"], Args::new()).expect("known states");
    assert_states(&m, &["C", "D"]);
    history.assert_order(&["BExit", "AExit", "BD", "BC", "AD", "AC"]);
    history.assert_counts(1);
}

/// Go: TestRequireOrder (machine_test.go). Handlers of states linked by `require` run in the
/// depth-first post-order of the require graph. The resolver's own part (Go sorts lists with
/// `SortStates`) is `Schema::sort_states` here.
#[test]
fn require_order() {
    let m = machine(vec![
        StateDef::new("A").auto().require(["B", "C"]),
        StateDef::new("B").auto().require(["D"]),
        StateDef::new("C").auto(),
        StateDef::new("D").auto(),
        StateDef::new("Start"),
    ]);
    let history = History::track(&m);
    m.add(&["Start"], Args::new()).expect("known states");
    history.assert_order(&["DState", "BState", "AState"]);
    history.assert_order(&["CState", "AState"]);
    assert_states(&m, &["A", "B", "C", "D", "Start"]);
    for (name, count) in history.counts() {
        // the global handlers also run for the auto transition
        let expected = if name.starts_with("Any") { 2 } else { 1 };
        assert_eq!(count, expected, "{name}");
    }

    let schema = m.schema();
    for given in [
        ["A", "B", "C", "D"],
        ["C", "D", "A", "B"],
        ["D", "A", "C", "B"],
    ] {
        let mut order = schema.indices(&given).expect("known states");
        schema.sort_states(&mut order);
        let names: Vec<&str> = order.iter().map(|&s| schema.name(s)).collect();
        assert_eq!(names, ["D", "B", "C", "A"], "from {given:?}");
    }
}

/// Go: TestHandlerArgs (machine_test.go)
#[test]
fn handler_args() {
    let m = no_rels(&["A"]);
    let history = History::track(&m);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let foo = |e: &Event<'_>| e.arg("foo").and_then(|v| v.as_str()).map(str::to_owned);
    let s = seen.clone();
    m.on_enter("B", move |e| {
        s.lock().expect("lock").push(foo(e));
        true
    })
    .expect("known state");
    let s = seen.clone();
    m.on_exit("A", move |e| {
        s.lock().expect("lock").push(foo(e));
        true
    })
    .expect("known state");
    let s = seen.clone();
    m.on_state("C", move |e| s.lock().expect("lock").push(foo(e)))
        .expect("known state");
    let args = || Args::new().with("foo", "bar");
    m.add(&["B"], args()).expect("known states");
    m.remove(&["A"], args()).expect("known states");
    m.set(&["C"], args()).expect("known states");
    assert_eq!(*seen.lock().expect("lock"), vec![Some("bar".to_owned()); 3]);
    assert!(history.counts().values().all(|&n| n >= 1));
}

/// Go: TestAnonHandlers (machine_test.go). Closures are the only kind of handler here.
#[test]
fn anon_handlers() {
    let m = no_rels(&["A"]);
    let ended = Arc::new(Mutex::new(false));
    m.on_exit("A", |_| true).expect("known state");
    let e = ended.clone();
    m.on_end("A", move |_| *e.lock().expect("lock") = true)
        .expect("known state");
    m.remove(&["A"], Args::new()).expect("known states");
    assert!(m.not(&["A"]));
    assert!(*ended.lock().expect("lock"));
}

/// Go: TestHandlerStateInfo (machine_test.go). What the enter handler sees of its
/// transition; Go's transition string and step log have no Rust counterpart.
#[test]
fn handler_state_info() {
    let m = no_rels(&["A"]);
    let history = History::track(&m);
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    m.on_enter("D", move |e| {
        *s.lock().expect("lock") = Some((
            e.machine().active_states(),
            e.entering().map(str::to_owned).collect::<Vec<_>>(),
            e.called().map(str::to_owned).collect::<Vec<_>>(),
        ));
        true
    })
    .expect("known state");
    m.set(&["D"], Args::new()).expect("known states");
    let (before, entering, called) = seen.lock().expect("lock").clone().expect("DEnter ran");
    assert_eq!(before, ["A"], "the previous states");
    assert_eq!(entering, ["D"], "the target states");
    assert_eq!(called, ["D"], "the called states");
    assert_eq!(history.count("DEnter"), 1);
}

/// Go: TestEvMutations (machine_test.go). Go marks mutations made through an event with their
/// source; Rust handlers mutate through `Event::machine` and the source is not kept.
#[test]
fn ev_mutations() {
    let m = no_rels(&[]);
    let history = History::track(&m);
    m.on_state("A", |e| {
        e.machine().add(&["B"], e.args().clone()).expect("known");
        e.machine().remove(&["A"], Args::new()).expect("known");
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known states");
    assert_states(&m, &["B"]);
    assert!(history.counts().values().all(|&n| n >= 1));
}

/// Go: TestNegotiationCancel (machine_test.go), with set and with add.
#[test]
fn negotiation_cancel() {
    for kind in [MutationKind::Set, MutationKind::Add] {
        let m = no_rels(&["A"]);
        m.on_enter("D", |_| false).expect("known state");
        let result = match kind {
            MutationKind::Set => m.set(&["D"], Args::new()),
            _ => m.add(&["D"], Args::new()),
        };
        assert_eq!(result, Ok(Outcome::Canceled), "{kind}");
        assert_states(&m, &["A"]);
    }
}

/// Go: TestNegotiationRemove (machine_test.go)
#[test]
fn negotiation_remove() {
    let m = no_rels(&["A"]);
    m.on_exit("A", |_| false).expect("known state");
    assert_eq!(m.remove(&["A"], Args::new()), Ok(Outcome::Canceled));
    assert_states(&m, &["A"]);
}

/// Go: TestAutoStates (machine_test.go)
#[test]
fn auto_states() {
    let m = no_rels_but(vec![StateDef::new("B").auto().require(["A"])], &[]);
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Executed));
    assert_states(&m, &["A", "B"]);
}

/// Go: TestPartialAutoStates (machine_test.go)
#[test]
fn partial_auto_states() {
    let m = no_rels_but(
        vec![
            StateDef::new("A").auto(),
            StateDef::new("B").auto().after(["A"]).require(["C"]),
        ],
        &[],
    );
    assert_eq!(m.add(&["D"], Args::new()), Ok(Outcome::Executed));
    assert_states(&m, &["A", "D"]);
}

/// Go: TestPartialAutoStatesByEnter (machine_test.go). B's enter refuses the auto mutation
/// of A and B: A goes ahead, and D, which only B would have added, stays out.
#[tokio::test]
async fn partial_auto_states_by_enter() {
    let m = machine(vec![
        StateDef::new("A").auto(),
        StateDef::new("B").auto().add(["D"]),
        StateDef::new("C"),
        StateDef::new("D"),
    ]);
    let b_state = Arc::new(Mutex::new(0));
    m.on_enter("B", |_| false).expect("known state");
    let b = b_state.clone();
    m.on_state("B", move |_| *b.lock().expect("lock") += 1)
        .expect("known state");
    let adder = m.clone();
    std::thread::spawn(move || adder.add(&["C"], Args::new()));
    soon(m.when(&["C", "A"])).await.expect("not disposed");
    assert_states(&m, &["C", "A"]);
    assert_eq!(*b_state.lock().expect("lock"), 0, "BState must not run");
}

/// Go: TestPartialAuto (machine_test.go)
#[test]
fn partial_auto() {
    let m = no_rels_but(
        vec![
            StateDef::new("C").auto().require(["B"]),
            StateDef::new("D").auto().require(["B"]),
        ],
        &[],
    );
    m.add(&["A"], Args::new()).expect("known states");
    assert_states(&m, &["A"]);
}

/// Go: TestQueue (machine_test.go). The nested add returns `Queued` rather than its queue
/// tick (part 3 of issue 14).
#[test]
fn queue() {
    let m = no_rels(&["A"]);
    let history = History::track(&m);
    let nested = Arc::new(Mutex::new(None));
    let n = nested.clone();
    m.on_enter("B", move |e| {
        *n.lock().expect("lock") = Some(e.machine().add(&["C"], Args::new()));
        true
    })
    .expect("known state");
    m.set(&["B"], Args::new()).expect("known states");
    assert_eq!(*nested.lock().expect("lock"), Some(Ok(Outcome::Queued)));
    for (name, count) in history.counts() {
        let expected = if name.starts_with("Any") { 2 } else { 1 };
        assert_eq!(count, expected, "{name}");
    }
    assert_states(&m, &["C", "B"]);
}

/// Go: TestNestedMutation (machine_test.go): a duplicate of a queued mutation (same kind and
/// states, no arguments, no multi state) is skipped.
#[test]
fn nested_mutation() {
    let m = no_rels(&["B"]);
    let lengths = Arc::new(Mutex::new(Vec::new()));
    let l = lengths.clone();
    m.on_state("A", move |e| {
        let m = e.machine();
        let mut l = l.lock().expect("lock");
        for _ in 0..3 {
            assert_eq!(m.add(&["B"], Args::new()), Ok(Outcome::Queued));
        }
        l.push(m.queue_len());
        m.remove(&["B"], Args::new()).expect("known");
        l.push(m.queue_len());
        m.remove(&["B"], Args::new()).expect("known");
        l.push(m.queue_len());
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known states");
    assert_eq!(*lengths.lock().expect("lock"), [1, 2, 2]);
    assert_states(&m, &["A"]);
}

/// Go: TestPartialNegotiationPanic (machine_test.go)
#[test]
fn partial_negotiation_panic() {
    let m = no_rels(&["A"]);
    m.on_enter("B", |_| -> bool { panic!("BEnter panic") })
        .expect("known state");
    assert_eq!(m.add(&["B"], Args::new()), Ok(Outcome::Canceled));
    assert_states(&m, &["A", "Exception"]);
}

/// Go: TestPartialFinalPanic (machine_test.go): B's state handler panics in add(A, B, C).
/// The transition stops there: B and C, whose state handlers did not complete, are
/// deactivated again, and the mutation is canceled.
#[test]
fn partial_final_panic() {
    let m = no_rels(&[]);
    let c_state = Arc::new(Mutex::new(0));
    m.on_state("B", |_| -> () { panic!("BState panic") })
        .expect("known state");
    let c = c_state.clone();
    m.on_state("C", move |_| *c.lock().expect("lock") += 1)
        .expect("known state");
    assert_eq!(m.add(&["A", "B", "C"], Args::new()), Ok(Outcome::Canceled));
    assert_states(&m, &["A", "Exception"]);
    assert_eq!(*c_state.lock().expect("lock"), 0, "CState must not run");
    assert_eq!(m.time(&["A", "B", "C"]), [1, 2, 2]);
}

/// Go: TestHandlerStateState (machine_test.go): A active, add B runs `AB` and not `BA`.
#[test]
fn handler_state_state() {
    let m = no_rels(&["A"]);
    let calls = Arc::new(Mutex::new(Vec::new()));
    for (from, to) in [("A", "B"), ("B", "A")] {
        let calls = calls.clone();
        m.on_from_to(from, to, move |_| {
            calls.lock().expect("lock").push(format!("{from}{to}"));
            true
        })
        .expect("known states");
    }
    m.add(&["B"], Args::new()).expect("known state");
    assert_eq!(*calls.lock().expect("lock"), ["AB"]);
}

/// Go: TestHandlerNegotiationStateState (machine_test.go): a refusing `AB` cancels.
#[test]
fn handler_negotiation_state_state() {
    let m = no_rels(&["A"]);
    m.on_from_to("A", "B", |_| false).expect("known states");
    m.on_from_to("B", "A", |_| true).expect("known states");
    assert_eq!(m.add(&["B"], Args::new()), Ok(Outcome::Canceled));
}

/// The Go suite's schema of two auto states and a plain one.
fn two_autos() -> asyncmachine::machine::Machine {
    machine(vec![
        StateDef::new("A").auto(),
        StateDef::new("B").auto(),
        StateDef::new("C"),
    ])
}

/// Go: TestPartialAutoStatesByStateState (machine_test.go): `CB` refuses B in the auto
/// mutation that follows add(C); A, the other auto state, goes ahead.
#[tokio::test]
async fn partial_auto_states_by_state_state() {
    let m = two_autos();
    m.on_from_to("C", "B", |_| false).expect("known states");
    let b_state = Arc::new(Mutex::new(0));
    let b2 = b_state.clone();
    m.on_state("B", move |_| *b2.lock().expect("lock") += 1)
        .expect("known state");
    m.add(&["C"], Args::new()).expect("known state");
    soon(m.when_queue_ends()).await.expect("the queue ends");
    assert_states(&m, &["C", "A"]);
    assert_eq!(
        *b_state.lock().expect("lock"),
        0,
        "BState should not be called"
    );
}

/// Go: TestPartialAutoStatesBySelfHandler (machine_test.go): `CC` refuses the auto mutation,
/// in which C is a target again; C is not an auto state, so the whole auto mutation goes.
#[tokio::test]
async fn partial_auto_states_by_self_handler() {
    let m = two_autos();
    m.on_self("C", |_| false).expect("known state");
    let b_state = Arc::new(Mutex::new(0));
    let b2 = b_state.clone();
    m.on_state("B", move |_| *b2.lock().expect("lock") += 1)
        .expect("known state");
    m.add(&["C"], Args::new()).expect("known state");
    soon(m.when_queue_ends()).await.expect("the queue ends");
    assert_states(&m, &["C"]);
    assert_eq!(
        *b_state.lock().expect("lock"),
        0,
        "BState should not be called"
    );
}

/// Go: TestSelfHandlersCancellable (machine_test.go): set(A, B) with A active runs `AA`
/// once, which refuses; no `AnyB`-style final handler runs. Go counts the calls through an
/// argument holding a pointer; a shared counter does it here.
#[test]
fn self_handlers_cancellable() {
    let m = no_rels(&["A"]);
    let history = History::track(&m);
    let counter = Arc::new(Mutex::new(0));
    let c2 = counter.clone();
    m.on_self("A", move |_| {
        *c2.lock().expect("lock") += 1;
        false
    })
    .expect("known state");
    assert_eq!(m.set(&["A", "B"], Args::new()), Ok(Outcome::Canceled));
    assert_eq!(*counter.lock().expect("lock"), 1, "AA call count");
    assert_eq!(history.count("AA"), 1, "History handler called");
    assert_eq!(history.count("BState"), 0, "no final handler ran");
    assert_states(&m, &["A"]);
}

/// Go: TestSelfHandlersForAllNoChangeStates (machine_test.go): self handlers run for every
/// target state that is active already, also in a mutation that changes no tick.
#[test]
fn self_handlers_for_all_no_change_states() {
    let m = no_rels(&["A"]);
    let history = History::track(&m);
    m.add(&["B"], Args::new()).expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    assert_eq!(history.count("AA"), 2, "AA call count");
    assert_eq!(history.count("BB"), 1, "BB call count");
}
