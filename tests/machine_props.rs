//! Property tests: random schemas under random mutation sequences keep the core's invariants.
//! - tick parity is activity, and `is`/`active_states` agree with the clock;
//! - ticks never decrease, and a canceled mutation changes no tick;
//! - every active state's requirements are active;
//! - a state and a state it removes are never active together;
//! - self and from-to handlers (Go's `AA`, `AB`) run only where Go runs them, and their
//!   refusals keep the invariants;
//! - mutations queued from handlers take increasing queue ticks and all run before the
//!   outer mutation returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use asyncmachine::machine::{
    Args, Event, HandlerKind, Handlers, Machine, MutationKind, Outcome, Schema, SchemaDef,
    StateDef, StateSource,
};
use proptest::prelude::*;

const MAX_STATES: usize = 7;

#[derive(Debug, Clone)]
struct RandomState {
    require: Vec<usize>,
    add: Vec<usize>,
    remove: Vec<usize>,
    after: Vec<usize>,
    auto: bool,
    multi: bool,
}

fn subset(n: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..n, 0..3)
}

fn schema_strategy() -> impl Strategy<Value = Vec<RandomState>> {
    (2..=MAX_STATES).prop_flat_map(|n| {
        let state = (
            subset(n),
            subset(n),
            subset(n),
            subset(n),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(require, add, remove, after, auto, multi)| RandomState {
                require,
                add,
                remove,
                after,
                auto,
                multi,
            });
        proptest::collection::vec(state, n)
    })
}

fn build(states: &[RandomState]) -> Schema {
    let name = |i: usize| format!("S{i}");
    let others = |i: usize, list: &[usize]| -> Vec<String> {
        list.iter().filter(|&&j| j != i).map(|&j| name(j)).collect()
    };
    let defs = states
        .iter()
        .enumerate()
        .map(|(i, s)| StateDef {
            name: name(i),
            require: others(i, &s.require),
            add: others(i, &s.add),
            remove: others(i, &s.remove),
            // Only backwards `after` edges, so the random schema has no after-cycle.
            after: others(
                i,
                &s.after
                    .iter()
                    .copied()
                    .filter(|&j| j < i)
                    .collect::<Vec<_>>(),
            ),
            auto: s.auto,
            multi: s.multi,
        })
        .collect();
    Schema::new(SchemaDef::of_states(defs)).expect("random schemas are valid by construction")
}

#[derive(Debug, Clone)]
struct Step {
    kind: MutationKind,
    states: Vec<usize>,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let kind = prop_oneof![
        Just(MutationKind::Add),
        Just(MutationKind::Remove),
        Just(MutationKind::Set)
    ];
    let step = (kind, proptest::collection::vec(0..MAX_STATES, 1..4))
        .prop_map(|(kind, states)| Step { kind, states });
    proptest::collection::vec(step, 1..40)
}

fn check_invariants(m: &Machine, schema: &Schema, before: &[u64]) -> Result<(), TestCaseError> {
    let clock = m.clock();
    let active: Vec<bool> = clock.iter().map(|t| t % 2 == 1).collect();
    for (s, def) in schema.def().states.iter().enumerate() {
        prop_assert!(
            clock[s] >= before[s],
            "tick of {} went back: {:?} -> {:?}",
            def.name,
            before,
            clock
        );
        prop_assert_eq!(m.is1(&def.name), active[s]);
        if !active[s] {
            continue;
        }
        for r in &def.require {
            let r_idx = schema.index(r).expect("valid");
            prop_assert!(
                active[r_idx],
                "{} is active without its requirement {}",
                def.name,
                r
            );
        }
        for r in &def.remove {
            let r_idx = schema.index(r).expect("valid");
            prop_assert!(
                !active[r_idx],
                "{} is active together with {}, which it removes",
                def.name,
                r
            );
        }
    }
    let listed: Vec<String> = m.active_states();
    let expected: Vec<String> = (0..schema.len())
        .filter(|&s| active[s])
        .map(|s| schema.name(s).to_owned())
        .collect();
    prop_assert_eq!(listed, expected);
    Ok(())
}

/// Which negotiation handlers refuse now and then.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refusing {
    Nobody,
    EnterAndExit(u64),
    SelfAndFromTo(u64),
}

/// Binds self and from-to handlers on every state and pair that check they run only where
/// asyncmachine runs them (a self handler: a target active before, not in a remove; a
/// from-to handler: `from` active before, `to` another state) and refuse every `every`-th
/// call. A misplaced call is counted in `misplaced`.
fn bind_pair_handlers(m: &Machine, schema: &Schema, every: u64, misplaced: &Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let names: Vec<String> = schema.names().map(str::to_owned).collect();
    let mut set = Handlers::new();
    for from in &names {
        let (c, bad) = (calls.clone(), misplaced.clone());
        set = set.on_self(from, move |e: &Event<'_>| {
            let s = e
                .machine()
                .schema()
                .index(e.state().unwrap_or(""))
                .unwrap_or(usize::MAX);
            let active_before = e.before().get(s).is_some_and(|t| t % 2 == 1);
            if !active_before
                || e.kind() == MutationKind::Remove
                || e.handler() != HandlerKind::SelfEnter
            {
                bad.fetch_add(1, Ordering::Relaxed);
            }
            !c.fetch_add(1, Ordering::Relaxed).is_multiple_of(every)
        });
        for to in names.iter().filter(|&to| to != from) {
            let (c, bad) = (calls.clone(), misplaced.clone());
            set = set.on_from_to(from, to, move |e: &Event<'_>| {
                let schema = e.machine().schema();
                let from = schema.index(e.state().unwrap_or("")).unwrap_or(usize::MAX);
                let active_before = e.before().get(from).is_some_and(|t| t % 2 == 1);
                if !active_before || e.state() == e.to_state() || e.to_state().is_none() {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                !c.fetch_add(1, Ordering::Relaxed).is_multiple_of(every)
            });
        }
    }
    m.bind(set).expect("known states");
}

fn run(
    states: Vec<RandomState>,
    steps: Vec<Step>,
    refusing: Refusing,
) -> Result<(), TestCaseError> {
    let schema = build(&states);
    let m = Machine::new(schema.clone());
    let misplaced = Arc::new(AtomicU64::new(0));
    if let Refusing::SelfAndFromTo(every) = refusing {
        bind_pair_handlers(&m, &schema, every, &misplaced);
    }
    if let Refusing::EnterAndExit(refuse_every) = refusing {
        // Negotiation handlers that refuse now and then, deterministically.
        let calls = Arc::new(AtomicU64::new(0));
        for name in schema.names().map(str::to_owned).collect::<Vec<_>>() {
            let c = calls.clone();
            m.on_enter(&name, move |_: &Event<'_>| {
                !c.fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(refuse_every)
            })
            .expect("known state");
            let c = calls.clone();
            m.on_exit(&name, move |_: &Event<'_>| {
                c.fetch_add(1, Ordering::Relaxed) % refuse_every != 1
            })
            .expect("known state");
        }
    }
    for step in steps {
        let called: Vec<usize> = step.states.iter().map(|&s| s % states.len()).collect();
        let names: Vec<&str> = called.iter().map(|&s| schema.name(s)).collect();
        let before = m.clock();
        let outcome = match step.kind {
            MutationKind::Add => m.add(&names, Args::new()),
            MutationKind::Remove => m.remove(&names, Args::new()),
            MutationKind::Set => m.set(&names, Args::new()),
        }
        .expect("no queue overflow without handlers that mutate");
        prop_assert_ne!(outcome, Outcome::Queued, "nothing else is processing");
        if outcome == Outcome::Canceled {
            prop_assert_eq!(&m.clock(), &before, "a canceled mutation changed the clock");
        }
        check_invariants(&m, &schema, &before)?;
    }
    prop_assert_eq!(
        misplaced.load(Ordering::Relaxed),
        0,
        "a self or from-to handler ran where Go runs none"
    );
    Ok(())
}

/// A handler that queues a mutation on every `every`-th transition it sees; the receipts'
/// queue ticks increase, and every queued mutation has run when the outer one returns.
fn run_queued(states: Vec<RandomState>, steps: Vec<Step>, every: u64) -> Result<(), TestCaseError> {
    let schema = build(&states);
    let m = Machine::new(schema.clone());
    let seen = Arc::new(AtomicU64::new(0));
    let receipts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let n = schema.len();
    let (s2, r2) = (seen.clone(), receipts.clone());
    m.on_any_state(move |e: &Event<'_>| {
        let k = s2.fetch_add(1, Ordering::Relaxed);
        if k.is_multiple_of(every) && k < 64 {
            let state = (k as usize) % n;
            let name = e.machine().schema().name(state).to_owned();
            let mutation =
                e.machine()
                    .mutation(MutationKind::Add, &[&name], Args::new().with("k", k as i64));
            if let Ok(mutation) = mutation
                && let Ok(receipt) = e.machine().mutate_tracked(mutation)
            {
                r2.lock().expect("lock").push(receipt);
            }
        }
    });
    for step in steps {
        let names: Vec<&str> = step
            .states
            .iter()
            .map(|&s| schema.name(s % states.len()))
            .collect();
        let before = m.clock();
        m.add(&names, Args::new()).expect("the queue has room");
        prop_assert_eq!(
            m.queue_len(),
            0,
            "the queue drained before the mutation returned"
        );
        check_invariants(&m, &schema, &before)?;
    }
    let receipts = receipts.lock().expect("lock");
    for pair in receipts.windows(2) {
        prop_assert!(
            pair[0].queue_tick < pair[1].queue_tick,
            "queue ticks increase: {:?}",
            pair
        );
    }
    for receipt in receipts.iter() {
        prop_assert_eq!(receipt.outcome, Outcome::Queued);
        prop_assert!(
            receipt.queue_tick <= m.queue_tick(),
            "every queued mutation ran"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_mutations_keep_the_invariants(states in schema_strategy(), steps in steps()) {
        run(states, steps, Refusing::Nobody)?;
    }

    #[test]
    fn random_refusals_keep_the_invariants(states in schema_strategy(), steps in steps(), every in 2u64..5) {
        run(states, steps, Refusing::EnterAndExit(every))?;
    }

    #[test]
    fn self_and_from_to_refusals_keep_the_invariants(states in schema_strategy(), steps in steps(), every in 2u64..6) {
        run(states, steps, Refusing::SelfAndFromTo(every))?;
    }

    #[test]
    fn mutations_queued_from_handlers_all_run_in_queue_tick_order(states in schema_strategy(), steps in steps(), every in 1u64..4) {
        run_queued(states, steps, every)?;
    }

    #[test]
    fn resolution_is_deterministic(states in schema_strategy(), steps in steps()) {
        let schema = build(&states);
        let (a, b) = (Machine::new(schema.clone()), Machine::new(schema.clone()));
        for step in steps {
            let names: Vec<&str> = step.states.iter().map(|&s| schema.name(s % states.len())).collect();
            let ra = a.add(&names, Args::new());
            let rb = b.add(&names, Args::new());
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(a.clock(), b.clock());
        }
    }
}
