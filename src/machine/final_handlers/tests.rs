//! Final handlers on a local machine, and the observer they run as, told changes by hand.

use std::sync::Mutex;

use super::*;
use crate::machine::{Machine, SchemaDef, StateDef};

fn machine() -> Machine {
    let schema = Schema::builder()
        .state(StateDef::new("A"))
        .state(StateDef::new("B"))
        .state(StateDef::new("M").multi())
        .build()
        .expect("valid schema");
    Machine::builder(schema).id("m").build()
}

#[derive(Default, Clone)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn push(&self, line: String) {
        self.0.lock().expect("lock").push(line);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}

#[test]
fn on_a_machine_they_run_after_the_transition_and_see_it() {
    let m = machine();
    let lines = Lines::default();
    let inside = lines.clone();
    m.on_state("A", move |_| inside.push("in the transition".into()))
        .expect("known state");
    let after = lines.clone();
    let handler = move |e: &FinalEvent<'_>| {
        let t = e.transition().expect("a local change has its transition");
        after.push(format!(
            "{} {} {:?} n={:?} active={}",
            e.handler_name(),
            t.kind,
            t.called,
            e.args().and_then(|a| a.get("n")).map(ToString::to_string),
            e.is_active("A"),
        ));
    };
    m.bind_final(
        FinalHandlers::new()
            .on_state("A", handler.clone())
            .on_end("A", handler.clone())
            .on_state("M", handler.clone())
            .on_any_state(handler),
    )
    .expect("known states");

    m.add(&["A"], Args::new().with("n", 1))
        .expect("known state");
    m.add(&["M"], Args::new()).expect("known state");
    m.add(&["M"], Args::new()).expect("known state");
    m.remove(&["A"], Args::new()).expect("known state");
    assert_eq!(
        lines.take(),
        [
            "in the transition",
            "AState add [0] n=Some(\"1\") active=true",
            "AnyState add [0] n=Some(\"1\") active=true",
            "MState add [2] n=None active=true",
            "AnyState add [2] n=None active=true",
            "MState add [2] n=None active=true",
            "AnyState add [2] n=None active=true",
            "AEnd remove [0] n=None active=false",
            "AnyState remove [0] n=None active=false",
        ]
    );
    // A change that moves no tick runs nothing.
    m.add(&["B"], Args::new()).expect("known state");
    lines.take();
    m.add(&["B"], Args::new()).expect("known state");
    assert!(lines.take().is_empty());
}

#[test]
fn a_mutation_through_the_events_source_runs_after_the_transition() {
    let m = machine();
    m.bind_final(FinalHandlers::new().on_state("A", |e| {
        // Queued behind the running transition; the future need not be awaited.
        drop(e.source().add(&["B"], Args::new()));
    }))
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    assert!(m.is(&["A", "B"]));
}

#[test]
fn a_failing_final_handler_activates_nothing_and_the_others_run() {
    let m = machine();
    let lines = Lines::default();
    let other = lines.clone();
    m.bind_final(
        FinalHandlers::new()
            .on_state("A", |_| Err::<(), _>("no"))
            .on_state("A", |_| -> () { panic!("boom") })
            .on_any_state(move |_| other.push("any".into())),
    )
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    assert_eq!(lines.take(), ["any"]);
    assert!(
        m.is1("A") && !m.is_err(),
        "an observer's failure is only logged"
    );
}

#[test]
fn unknown_names_bind_nothing_unbinding_and_disposal_stop_them() {
    let m = machine();
    let set = FinalHandlers::new().on_state("Nope", |_| {});
    assert_eq!(m.bind_final(set).err(), Some(UnknownState("Nope".into())));
    let lines = Lines::default();
    let (first, second) = (lines.clone(), lines.clone());
    let unbound = m
        .bind_final(FinalHandlers::new().on_any_state(move |_| first.push("first".into())))
        .expect("binds");
    m.bind_final(FinalHandlers::new().on_any_state(move |_| second.push("second".into())))
        .expect("binds");
    assert!(m.unbind_final(unbound));
    assert!(!m.unbind_final(unbound));
    m.add(&["A"], Args::new()).expect("known state");
    assert_eq!(lines.take(), ["second"]);
    m.dispose();
    assert!(!m.unbind_final(unbound), "disposal dropped every observer");
}

#[test]
fn a_schema_that_moved_states_runs_any_state_only_and_names_follow_it() {
    let schema = |names: &[&str]| {
        let states = names.iter().map(|&n| StateDef::new(n)).collect();
        Schema::new(SchemaDef::of_states(states)).expect("valid")
    };
    let old = schema(&["A", "B", "Exception"]);
    let moved = schema(&["B", "A", "Exception"]);
    let grown = schema(&["B", "A", "Exception", "C"]);
    let lines = Lines::default();
    let (a, any) = (lines.clone(), lines.clone());
    let observer = FinalObserver::new(
        &old,
        FinalHandlers::new()
            .on_state("A", move |e| a.push(format!("AState {:?}", e.after())))
            .on_any_state(move |_| any.push("any".into())),
    )
    .expect("known state");
    let source = Machine::new(old.clone());
    let tell = |schema: &Schema, before: &[u64], after: &[u64]| {
        let changed: Vec<usize> = (0..after.len()).collect();
        observer.clock_changed(&ClockChange {
            source: &source,
            schema,
            before,
            after,
            changed: &changed,
            queue_tick: 1,
            transition: None,
        });
    };
    tell(&old, &[0, 0, 0], &[1, 0, 0]);
    assert_eq!(lines.take(), ["AState [1, 0, 0]", "any"]);
    // `A` was at 0 and is at 1 now: position 1's tick in the old clock says nothing of it.
    tell(&moved, &[1, 0, 0], &[0, 1, 0]);
    assert_eq!(lines.take(), ["any"]);
    // Grown from the moved one: positions compare again, `A` is at 1.
    tell(&grown, &[0, 1, 0], &[0, 3, 0, 0]);
    assert_eq!(lines.take(), ["AState [0, 3, 0, 0]", "any"]);
}
