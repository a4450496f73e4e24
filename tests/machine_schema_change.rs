//! A running machine's schema enlarged (`Machine::set_schema`): what is refused, and that
//! clocks, waiters, handlers and observers carry over.

use std::sync::{Arc, Mutex};

use asyncmachine::machine::{
    Args, ClockChange, Machine, Schema, SchemaChangeError, SchemaDef, StateDef, StateSource,
};

fn schema(names: &[&str]) -> Schema {
    Schema::new(SchemaDef::of_states(
        names.iter().map(|&n| StateDef::new(n)).collect(),
    ))
    .expect("valid schema")
}

/// The current definition with `extra` states appended.
fn enlarged(m: &Machine, extra: &[&str]) -> Schema {
    let mut def = m.schema().def().clone();
    def.states.extend(extra.iter().map(|&n| StateDef::new(n)));
    Schema::new(def).expect("valid schema")
}

#[test]
fn only_an_enlargement_that_keeps_every_position_is_taken() {
    let m = Machine::new(schema(&["A", "B"]));
    let same = m.schema().def().clone();
    assert_eq!(
        m.set_schema(Schema::new(same).expect("valid")),
        Err(SchemaChangeError::NotLarger { current: 3, new: 3 })
    );
    // `Exception` was appended to A, B: a schema that puts C before it renames position 2.
    let reordered = schema(&["A", "B", "C"]);
    assert!(matches!(
        m.set_schema(reordered),
        Err(SchemaChangeError::Reordered { position: 2, .. })
    ));
    m.set_schema(enlarged(&m, &["C"]))
        .expect("enlarged at the end");
    assert_eq!(m.schema().len(), 4);
    m.dispose();
    assert_eq!(
        m.set_schema(enlarged(&m, &["D"])),
        Err(SchemaChangeError::Disposed)
    );
}

#[test]
fn a_schema_cannot_change_during_a_transition() {
    let m = Machine::new(schema(&["A"]));
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    m.on_state("A", move |e| {
        let next = enlarged(e.machine(), &["B"]);
        *seen2.lock().expect("lock") = Some(e.machine().set_schema(next));
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    assert_eq!(
        seen.lock().expect("lock").clone(),
        Some(Err(SchemaChangeError::Busy))
    );
}

#[test]
fn clocks_waiters_and_handlers_carry_over_and_new_states_work() {
    let m = Machine::new(schema(&["A", "B"]));
    m.add(&["A"], Args::new()).expect("known state");
    let mut when_b = Box::pin(m.when(&["B"]));
    let entered = Arc::new(Mutex::new(Vec::new()));
    let e2 = entered.clone();
    m.on_enter("A", move |_| {
        e2.lock().expect("lock").push("A");
        true
    })
    .expect("known state");

    m.set_schema(enlarged(&m, &["C"])).expect("enlarged");
    assert_eq!(m.clock(), vec![1, 0, 0, 0], "old ticks kept, C starts at 0");
    assert!(m.is(&["A"]));

    m.on_state("C", {
        let entered = entered.clone();
        move |_| entered.lock().expect("lock").push("C")
    })
    .expect("a handler of a new state");
    m.add(&["B", "C"], Args::new()).expect("known states");
    assert!(m.is(&["A", "B", "C"]));
    assert!(
        futures_ready(&mut when_b),
        "a waiter from before the change resolves"
    );
    m.remove(&["A"], Args::new()).expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    assert_eq!(*entered.lock().expect("lock"), vec!["C", "A"]);
}

#[test]
fn observers_see_the_new_positions() {
    let m = Machine::new(schema(&["A"]));
    m.add(&["A"], Args::new()).expect("known state");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let _ = m.observe(Arc::new(move |c: &ClockChange<'_>| {
        s2.lock().expect("lock").push((
            c.before.to_vec(),
            c.after.to_vec(),
            c.changed.to_vec(),
            c.transition.is_none(),
        ));
    }));
    m.set_schema(enlarged(&m, &["B", "C"])).expect("enlarged");
    assert_eq!(
        *seen.lock().expect("lock"),
        vec![(vec![1, 0], vec![1, 0, 0, 0], vec![2, 3], true)]
    );
}

fn futures_ready<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    std::pin::Pin::new(fut).poll(&mut cx).is_ready()
}
