//! What the ported tests share: the Go suite's two stock schemas, a handler history and the
//! assertions built on it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncmachine::machine::{Args, Machine, Schema, SchemaDef, StateDef, StateSource};

/// How long a ported test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub fn machine(states: Vec<StateDef>) -> Machine {
    Machine::new(Schema::new(SchemaDef::of_states(states)).expect("valid schema"))
}

/// States A, B, C and D without relations, then `Set(active)` (Go's `NewNoRels`). Go sorts
/// state names, so the schema is written in that order; `Exception` sorts last here too.
pub fn no_rels(active: &[&str]) -> Machine {
    with_active(
        machine(vec![
            StateDef::new("A"),
            StateDef::new("B"),
            StateDef::new("C"),
            StateDef::new("D"),
        ]),
        active,
    )
}

/// No relations but the ones given, replacing the plain state of the same name. Go's tests
/// edit the schema of a running machine; here the relations are known before it starts.
pub fn no_rels_but(defs: Vec<StateDef>, active: &[&str]) -> Machine {
    let mut states: Vec<StateDef> = ["A", "B", "C", "D"].map(StateDef::new).into();
    for def in defs {
        match states.iter_mut().find(|s| s.name == def.name) {
            Some(slot) => *slot = def,
            None => states.push(def),
        }
    }
    with_active(machine(states), active)
}

fn with_active(m: Machine, active: &[&str]) -> Machine {
    if !active.is_empty() {
        m.set(active, Args::new()).expect("known states");
    }
    m
}

/// Go's `assertStates`: the active states, in any order.
#[track_caller]
pub fn assert_states(m: &Machine, expected: &[&str]) {
    let mut active = m.active_states();
    active.sort();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(active, expected, "active states");
}

/// Waits for a future with [`PATIENCE`], on the current tokio runtime.
pub async fn soon<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .expect("should have happened at once")
}

/// The handlers Go's `History` type defines, recorded by their Go names (`AExit`, `BEnter`,
/// `AA`, `AB`, `AnyState`, ...). Go binds them from a struct's methods; here each is a closure.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<Vec<String>>>);

impl History {
    pub fn track(m: &Machine) -> History {
        let history = History::default();
        let has = |s: &str| m.schema().index(s).is_some();
        for (state, kinds) in [
            ("A", &["Exit", "End", "State"][..]),
            ("B", &["Enter", "Exit", "End", "State"][..]),
            ("C", &["Enter", "State"][..]),
            ("D", &["Enter", "State"][..]),
        ] {
            if !has(state) {
                continue;
            }
            for &kind in kinds {
                let h = history.clone();
                let name = format!("{state}{kind}");
                let registered = match kind {
                    "Enter" => m.on_enter(state, move |_| {
                        h.push(&name);
                        true
                    }),
                    "Exit" => m.on_exit(state, move |_| {
                        h.push(&name);
                        true
                    }),
                    "State" => m.on_state(state, move |_| h.push(&name)),
                    _ => m.on_end(state, move |_| h.push(&name)),
                };
                registered.expect("known state");
            }
        }
        // Go's History has these self and state-to-state handlers, and no others.
        for (from, to) in [
            ("A", "A"),
            ("A", "B"),
            ("A", "C"),
            ("A", "D"),
            ("B", "B"),
            ("B", "C"),
            ("B", "D"),
        ] {
            if !has(from) || !has(to) {
                continue;
            }
            let h = history.clone();
            let name = format!("{from}{to}");
            let registered = if from == to {
                m.on_self(from, move |_| {
                    h.push(&name);
                    true
                })
            } else {
                m.on_from_to(from, to, move |_| {
                    h.push(&name);
                    true
                })
            };
            registered.expect("known states");
        }
        let h = history.clone();
        m.on_any_enter(move |_| {
            h.push("AnyEnter");
            true
        });
        let h = history.clone();
        m.on_any_state(move |_| h.push("AnyState"));
        history
    }

    pub fn push(&self, name: &str) {
        self.0.lock().expect("history lock").push(name.to_owned());
    }

    pub fn order(&self) -> Vec<String> {
        self.0.lock().expect("history lock").clone()
    }

    pub fn count(&self, name: &str) -> usize {
        self.order().iter().filter(|n| *n == name).count()
    }

    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for name in self.order() {
            *counts.entry(name).or_default() += 1;
        }
        counts
    }

    /// Go's `assertOrder`: each handler was first called before the next one in the list.
    #[track_caller]
    pub fn assert_order(&self, expected: &[&str]) {
        let order = self.order();
        let first = |name: &str| order.iter().position(|n| n == name);
        for pair in expected.windows(2) {
            let (a, b) = (first(pair[0]), first(pair[1]));
            assert!(
                a.is_some() && b.is_some() && a < b,
                "expected {} before {} in {order:?}",
                pair[0],
                pair[1]
            );
        }
    }

    /// Go's `assertEventCounts`: every recorded handler ran exactly `n` times.
    #[track_caller]
    pub fn assert_counts(&self, n: usize) {
        for (name, count) in self.counts() {
            assert_eq!(count, n, "{name} call count");
        }
    }
}
