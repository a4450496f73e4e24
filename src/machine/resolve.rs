//! Relation resolution: from a clock and a mutation to the states that will exit and enter, or
//! the reason the mutation is canceled. A pure function of its inputs; handlers, queues and
//! clocks are the machine's business.
//!
//! Order, as in asyncmachine: expand adds, drop blocked, apply removes, check requires, sort
//! (mutation order, then [`Schema::sort_states`]; see [`Plan`]).
//! Every state in play has a class, and a higher class wins a conflict:
//! - **called**: named by an `add`/`set` mutation. Two called states that remove one another
//!   cancel the mutation; so does a called state blocked by an active state that stays, or a
//!   called state whose requirements cannot be met.
//! - **implied**: reached through `add` relations of states being activated, or an auto state of
//!   an auto mutation. Optional: when blocked or missing a requirement it is dropped, and the
//!   rest goes ahead.
//! - **active**: active before and not called. Deactivated when a called or implied state
//!   removes it, or when one of its requirements goes.

use std::fmt;

use super::schema::Schema;

/// What a mutation does with its called states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MutationKind {
    /// Activate the called states, keep the others.
    Add,
    /// Deactivate the called states, keep the others.
    Remove,
    /// Activate exactly the called states, deactivate the others.
    Set,
}

impl fmt::Display for MutationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MutationKind::Add => "add",
            MutationKind::Remove => "remove",
            MutationKind::Set => "set",
        })
    }
}

/// Why a mutation was canceled, with state names so that a person can act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    /// Two called states remove one another (or one removes the other).
    Conflict {
        /// A called state.
        state: String,
        /// The called state it removes (or that removes it).
        removes: String,
    },
    /// A called state is removed by an active state that stays active.
    BlockedBy {
        /// The called state.
        state: String,
        /// The active state whose `remove` relation blocks it.
        by: String,
    },
    /// A called state requires a state that is not and will not be active.
    MissingRequire {
        /// The called state.
        state: String,
        /// The state it requires that is not and will not be active.
        missing: String,
    },
    /// A negotiation handler said no.
    Refused {
        /// The state whose handler refused; `None` for `any_enter`.
        state: Option<String>,
        /// Which handler refused (`enter`, `exit`, `self`, `from_to`, `any_enter`).
        handler: &'static str,
    },
    /// A negotiation handler failed; the error went to `Exception`.
    HandlerFailed {
        /// The state whose handler failed; `None` for `any_enter`.
        state: Option<String>,
        /// Which handler failed.
        handler: &'static str,
    },
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CancelReason::Conflict { state, removes } => {
                write!(f, "called state {state} removes called state {removes}")
            }
            CancelReason::BlockedBy { state, by } => {
                write!(
                    f,
                    "{state} is blocked by active state {by}; remove {by} first"
                )
            }
            CancelReason::MissingRequire { state, missing } => {
                write!(f, "{state} requires {missing}, which is not active")
            }
            CancelReason::Refused {
                state: Some(s),
                handler,
            } => {
                write!(f, "the {handler} handler of {s} refused")
            }
            CancelReason::Refused {
                state: None,
                handler,
            } => write!(f, "the {handler} handler refused"),
            CancelReason::HandlerFailed {
                state: Some(s),
                handler,
            } => {
                write!(f, "the {handler} handler of {s} failed (see Exception)")
            }
            CancelReason::HandlerFailed {
                state: None,
                handler,
            } => {
                write!(f, "the {handler} handler failed (see Exception)")
            }
        }
    }
}

/// The accepted outcome of resolution: who leaves, who arrives, each in handler order.
///
/// Handler order is asyncmachine's: the called states in mutation order, then the states that
/// stay active (in the order they were left), then implied states; sorted by
/// [`Schema::sort_states`] (`require` post-order, then `after`). Leaving states keep the order
/// they were active in, sorted the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Active before, inactive after.
    pub exiting: Vec<usize>,
    /// Inactive before, active after.
    pub entering: Vec<usize>,
    /// Active multi states called again: a new activation (tick + 2).
    pub reentering: Vec<usize>,
    /// Every state active after, in handler order; the next resolution's `active_order`.
    pub targets: Vec<usize>,
    /// `entering` and `reentering` together, in handler order.
    arriving: Vec<usize>,
}

impl Plan {
    /// Whether applying the plan changes any tick.
    pub fn changes_clock(&self) -> bool {
        !(self.exiting.is_empty() && self.entering.is_empty() && self.reentering.is_empty())
    }

    /// Applies the plan to a clock: +1 for each state that flips, +2 for a re-activation.
    pub fn apply(&self, ticks: &mut [u64]) {
        for &s in self.exiting.iter().chain(&self.entering) {
            ticks[s] += 1;
        }
        for &s in &self.reentering {
            ticks[s] += 2;
        }
    }

    /// The states that arrive (enter, or enter again), in handler order.
    pub fn arriving(&self) -> impl Iterator<Item = usize> + '_ {
        self.arriving.iter().copied()
    }

    /// [`Plan::arriving`] as a slice.
    pub fn arriving_states(&self) -> &[usize] {
        &self.arriving
    }

    /// Empties the plan, keeping its buffers for the next resolution.
    fn clear(&mut self) {
        self.exiting.clear();
        self.entering.clear();
        self.reentering.clear();
        self.targets.clear();
        self.arriving.clear();
    }

    /// The states whose ticks the plan changes.
    pub fn changed(&self) -> impl Iterator<Item = usize> + '_ {
        self.exiting
            .iter()
            .chain(&self.entering)
            .chain(&self.reentering)
            .copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Absent,
    Called,
    Implied,
    Active,
}

enum Attempt {
    /// The classes in the scratch buffer are the outcome.
    Accepted,
    /// An implied state misses a requirement: drop it and resolve again, so that its removals
    /// do not apply either.
    DropImplied(usize),
    Canceled(CancelReason),
}

/// Tick parity is activity: odd ticks are active states.
pub fn is_active(tick: u64) -> bool {
    tick % 2 == 1
}

/// Resolves a mutation against a clock. With `auto`, the called states are only tried (an auto
/// mutation accepts whatever part it can). Called positions must be inside the schema.
///
/// `active_order` is the order of the active states, as the previous plan's `targets` left
/// them (states it misses follow in schema order): it decides the order of the handlers of
/// states that no relation orders.
pub fn resolve(
    schema: &Schema,
    ticks: &[u64],
    active_order: &[usize],
    kind: MutationKind,
    called: &[usize],
    auto: bool,
) -> Result<Plan, CancelReason> {
    let order = Order {
        ticks,
        active_order,
        kind,
        called,
    };
    resolve_in(
        &mut Scratch::default(),
        Plan::default(),
        schema,
        &order,
        auto,
    )
}

/// Buffers resolution works in, kept by a machine between transitions so that resolving
/// allocates nothing once they have grown to the schema.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    excluded: Vec<bool>,
    class: Vec<Class>,
    stack: Vec<usize>,
    before: Vec<usize>,
}

/// [`resolve`] in a machine's buffers: `scratch` for the work, `plan`'s vectors for the result
/// (whatever they held is cleared).
pub(crate) fn resolve_in(
    scratch: &mut Scratch,
    mut plan: Plan,
    schema: &Schema,
    order: &Order<'_>,
    auto: bool,
) -> Result<Plan, CancelReason> {
    scratch.excluded.clear();
    scratch.excluded.resize(schema.len(), false);
    loop {
        match attempt(schema, order, auto, scratch) {
            Attempt::Accepted => {
                plan.clear();
                fill_plan(schema, order, scratch, &mut plan);
                return Ok(plan);
            }
            Attempt::DropImplied(s) => scratch.excluded[s] = true,
            Attempt::Canceled(reason) => return Err(reason),
        }
    }
}

fn attempt(schema: &Schema, order: &Order<'_>, auto: bool, scratch: &mut Scratch) -> Attempt {
    let Order {
        ticks,
        kind,
        called,
        ..
    } = *order;
    let n = schema.len();
    let was_active = |s: usize| is_active(ticks[s]);
    let excluded = &scratch.excluded;
    let class = &mut scratch.class;
    class.clear();
    class.resize(n, Class::Absent);
    if kind != MutationKind::Set {
        for (s, c) in class.iter_mut().enumerate() {
            if was_active(s) {
                *c = Class::Active;
            }
        }
    }
    let activated = if auto { Class::Implied } else { Class::Called };
    for &s in called {
        match kind {
            MutationKind::Remove => class[s] = Class::Absent,
            MutationKind::Add | MutationKind::Set if !excluded[s] => class[s] = activated,
            _ => {}
        }
    }

    // Expand adds: only states being activated pull in their `add` lists; an already-active
    // state (that is not a multi re-activation) activates nothing.
    let stack = &mut scratch.stack;
    stack.clear();
    stack.extend((0..n).filter(|&s| {
        matches!(class[s], Class::Called | Class::Implied)
            && (!was_active(s) || schema.resolved(s).multi)
    }));
    while let Some(s) = stack.pop() {
        for &a in &schema.resolved(s).add {
            if class[a] == Class::Absent && !excluded[a] {
                class[a] = Class::Implied;
                if !was_active(a) {
                    stack.push(a);
                }
            }
        }
    }

    // Drop blocked and apply removes, called states first, then implied, then active.
    for round in [Class::Called, Class::Implied, Class::Active] {
        for s in 0..n {
            if class[s] != round {
                continue;
            }
            let removes = &schema.resolved(s).remove;
            // A state that is not called and would remove a called one: an implied state is
            // dropped, an active one blocks the called state.
            if round != Class::Called
                && let Some(&victim) = removes.iter().find(|&&r| class[r] == Class::Called)
            {
                if round == Class::Implied {
                    class[s] = Class::Absent;
                    continue;
                }
                return Attempt::Canceled(CancelReason::BlockedBy {
                    state: schema.name(victim).to_owned(),
                    by: schema.name(s).to_owned(),
                });
            }
            if round == Class::Implied {
                // A kept implied state loses to an earlier kept implied state it would remove,
                // and to an active state that removes it and that it does not remove back.
                let loses = removes.iter().any(|&r| class[r] == Class::Implied && r < s)
                    || (0..n).any(|a| {
                        class[a] == Class::Active
                            && schema.resolved(a).remove.contains(&s)
                            && !removes.contains(&a)
                    });
                if loses {
                    class[s] = Class::Absent;
                    continue;
                }
            }
            for &r in removes {
                match class[r] {
                    Class::Called => {
                        return Attempt::Canceled(CancelReason::Conflict {
                            state: schema.name(s).to_owned(),
                            removes: schema.name(r).to_owned(),
                        });
                    }
                    Class::Implied | Class::Active => class[r] = Class::Absent,
                    Class::Absent => {}
                }
            }
        }
    }

    // Check requires until nothing changes: active states lose what they depend on, implied
    // ones are dropped (by resolving again without them), called ones cancel.
    loop {
        let mut changed = false;
        for s in 0..n {
            if class[s] == Class::Absent {
                continue;
            }
            let Some(&missing) = schema
                .resolved(s)
                .require
                .iter()
                .find(|&&r| class[r] == Class::Absent)
            else {
                continue;
            };
            match class[s] {
                Class::Called => {
                    return Attempt::Canceled(CancelReason::MissingRequire {
                        state: schema.name(s).to_owned(),
                        missing: schema.name(missing).to_owned(),
                    });
                }
                Class::Implied => return Attempt::DropImplied(s),
                Class::Active => {
                    class[s] = Class::Absent;
                    changed = true;
                }
                Class::Absent => {}
            }
        }
        if !changed {
            return Attempt::Accepted;
        }
    }
}

/// A set of state positions, without an allocation for schemas of up to 64 states (a plan is
/// made for every transition).
enum Flags {
    Small(u64),
    Large(Vec<bool>),
}

impl Flags {
    fn new(states: usize) -> Flags {
        if states <= 64 {
            Flags::Small(0)
        } else {
            Flags::Large(vec![false; states])
        }
    }

    /// Adds `s`; whether it was not in the set yet.
    fn insert(&mut self, s: usize) -> bool {
        match self {
            Flags::Small(bits) => {
                let bit = 1u64 << s;
                let new = *bits & bit == 0;
                *bits |= bit;
                new
            }
            Flags::Large(flags) => !std::mem::replace(&mut flags[s], true),
        }
    }

    fn clear(&mut self) {
        match self {
            Flags::Small(bits) => *bits = 0,
            Flags::Large(flags) => flags.fill(false),
        }
    }
}

/// What resolution starts from: the clock, the order of the active states, the mutation.
#[derive(Clone, Copy)]
pub(crate) struct Order<'a> {
    pub ticks: &'a [u64],
    pub active_order: &'a [usize],
    pub kind: MutationKind,
    pub called: &'a [usize],
}

fn fill_plan(schema: &Schema, order: &Order<'_>, scratch: &mut Scratch, plan: &mut Plan) {
    let n = schema.len();
    let class = &scratch.class;
    let was_active = |s: usize| is_active(order.ticks[s]);
    // The states active before, in the order the previous transition left them.
    // One set of flags for both passes below: "listed", then "taken".
    let mut seen = Flags::new(n);
    let before = &mut scratch.before;
    before.clear();
    for s in order.active_order.iter().copied().chain(0..n) {
        if s < n && was_active(s) && seen.insert(s) {
            before.push(s);
        }
    }

    // Targets as asyncmachine lists them before sorting: the called states in mutation order,
    // then the states that stay active, then the states implied by `add`, as found.
    seen.clear();
    let mut taken = seen;
    let targets = &mut plan.targets;
    let mut take = |s: usize, targets: &mut Vec<usize>| {
        if class[s] != Class::Absent && taken.insert(s) {
            targets.push(s);
        }
    };
    if order.kind != MutationKind::Remove {
        for &s in order.called {
            take(s, targets);
        }
    }
    for &s in before.iter() {
        take(s, targets);
    }
    let mut i = 0;
    while i < targets.len() {
        for &a in &schema.resolved(targets[i]).add {
            take(a, targets);
        }
        i += 1;
    }
    for s in 0..n {
        take(s, targets);
    }
    schema.sort_states(targets);

    plan.exiting.extend(
        before
            .iter()
            .copied()
            .filter(|&s| class[s] == Class::Absent),
    );
    schema.sort_states(&mut plan.exiting);
    let reenters = |s: usize| {
        was_active(s)
            && class[s] == Class::Called
            && order.kind != MutationKind::Remove
            && schema.resolved(s).multi
    };
    for &s in plan.targets.iter() {
        if !was_active(s) {
            plan.entering.push(s);
            plan.arriving.push(s);
        } else if reenters(s) {
            plan.reentering.push(s);
            plan.arriving.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::schema::StateDef;

    struct Fixture {
        schema: Schema,
        ticks: Vec<u64>,
    }

    impl Fixture {
        fn new(states: Vec<StateDef>) -> Self {
            let schema =
                Schema::new(crate::machine::schema::SchemaDef::of_states(states)).expect("valid");
            let ticks = vec![0; schema.len()];
            Fixture { schema, ticks }
        }

        fn idx(&self, names: &[&str]) -> Vec<usize> {
            self.schema.indices(names).expect("known states")
        }

        fn activate(&mut self, names: &[&str]) {
            for s in self.idx(names) {
                self.ticks[s] = 1;
            }
        }

        fn run(&mut self, kind: MutationKind, names: &[&str]) -> Result<Plan, CancelReason> {
            let called = self.idx(names);
            let plan = resolve(&self.schema, &self.ticks, &[], kind, &called, false)?;
            plan.apply(&mut self.ticks);
            Ok(plan)
        }

        fn active(&self) -> Vec<&str> {
            (0..self.schema.len())
                .filter(|&s| is_active(self.ticks[s]))
                .map(|s| self.schema.name(s))
                .collect()
        }
    }

    fn values() -> Vec<StateDef> {
        vec![
            StateDef::new("Value1").remove(["Value2", "Value3"]),
            StateDef::new("Value2").remove(["Value1", "Value3"]),
            StateDef::new("Value3").remove(["Value1", "Value2"]),
        ]
    }

    #[test]
    fn add_activates_and_keeps_others() {
        let mut f = Fixture::new(vec![StateDef::new("A"), StateDef::new("B")]);
        f.run(MutationKind::Add, &["A"]).expect("executes");
        f.run(MutationKind::Add, &["B"]).expect("executes");
        assert_eq!(f.active(), ["A", "B"]);
    }

    #[test]
    fn set_deactivates_the_uncalled_and_remove_deactivates_the_called() {
        let mut f = Fixture::new(vec![StateDef::new("A"), StateDef::new("B")]);
        f.activate(&["A"]);
        f.run(MutationKind::Set, &["B"]).expect("executes");
        assert_eq!(f.active(), ["B"]);
        f.run(MutationKind::Remove, &["B"]).expect("executes");
        assert!(f.active().is_empty());
    }

    #[test]
    fn called_state_removes_active_mutually_exclusive_state() {
        let mut f = Fixture::new(values());
        f.activate(&["Value1"]);
        let plan = f.run(MutationKind::Add, &["Value2"]).expect("executes");
        assert_eq!(f.active(), ["Value2"]);
        assert_eq!(plan.exiting, f.idx(&["Value1"]));
        assert_eq!(plan.entering, f.idx(&["Value2"]));
    }

    #[test]
    fn called_state_blocked_by_active_state_cancels() {
        let mut f = Fixture::new(vec![
            StateDef::new("Lock").remove(["Open"]),
            StateDef::new("Open"),
        ]);
        f.activate(&["Lock"]);
        let err = f.run(MutationKind::Add, &["Open"]).expect_err("blocked");
        assert_eq!(
            err,
            CancelReason::BlockedBy {
                state: "Open".into(),
                by: "Lock".into()
            }
        );
        assert_eq!(f.active(), ["Lock"]);
    }

    #[test]
    fn two_called_states_that_remove_each_other_cancel() {
        let mut f = Fixture::new(values());
        let err = f
            .run(MutationKind::Add, &["Value1", "Value2"])
            .expect_err("conflict");
        assert!(matches!(err, CancelReason::Conflict { .. }), "{err}");
        let err = f
            .run(MutationKind::Set, &["Value3", "Value1"])
            .expect_err("conflict");
        assert!(matches!(err, CancelReason::Conflict { .. }), "{err}");
        assert!(f.active().is_empty());
    }

    #[test]
    fn require_cancels_a_called_state_without_its_requirement() {
        let mut f = Fixture::new(vec![
            StateDef::new("Start"),
            StateDef::new("Event").require(["Start"]),
        ]);
        let err = f
            .run(MutationKind::Add, &["Event"])
            .expect_err("missing require");
        assert_eq!(
            err,
            CancelReason::MissingRequire {
                state: "Event".into(),
                missing: "Start".into()
            }
        );
        f.run(MutationKind::Add, &["Event", "Start"])
            .expect("satisfied in the same transition");
        assert_eq!(f.active(), ["Start", "Event"]);
    }

    #[test]
    fn removing_a_requirement_deactivates_its_dependents_in_cascade() {
        let mut f = Fixture::new(vec![
            StateDef::new("A"),
            StateDef::new("B").require(["A"]),
            StateDef::new("C").require(["B"]),
            StateDef::new("D"),
        ]);
        f.activate(&["A", "B", "C", "D"]);
        let plan = f.run(MutationKind::Remove, &["A"]).expect("executes");
        assert_eq!(f.active(), ["D"]);
        assert_eq!(plan.exiting.len(), 3);
    }

    #[test]
    fn add_relation_pulls_states_in_transitively() {
        let mut f = Fixture::new(vec![
            StateDef::new("A").add(["B"]),
            StateDef::new("B").add(["C"]),
            StateDef::new("C"),
        ]);
        f.run(MutationKind::Add, &["A"]).expect("executes");
        assert_eq!(f.active(), ["A", "B", "C"]);
    }

    #[test]
    fn implied_state_that_is_blocked_is_dropped_and_the_rest_goes_ahead() {
        let mut f = Fixture::new(vec![
            StateDef::new("A").add(["B"]),
            StateDef::new("B"),
            StateDef::new("Guard").remove(["B"]),
        ]);
        f.activate(&["Guard"]);
        f.run(MutationKind::Add, &["A"])
            .expect("A goes ahead without B");
        assert_eq!(f.active(), ["A", "Guard"]);
    }

    #[test]
    fn implied_state_missing_a_requirement_is_dropped_with_its_removals() {
        let mut f = Fixture::new(vec![
            StateDef::new("A").add(["B"]),
            StateDef::new("B").require(["R"]).remove(["C"]),
            StateDef::new("C"),
            StateDef::new("R"),
        ]);
        f.activate(&["C"]);
        f.run(MutationKind::Add, &["A"]).expect("A goes ahead");
        assert_eq!(f.active(), ["A", "C"], "B is dropped, so C must stay");
    }

    #[test]
    fn implied_state_removes_active_states() {
        let mut f = Fixture::new(
            vec![StateDef::new("A").add(["Value2"])]
                .into_iter()
                .chain(values())
                .collect(),
        );
        f.activate(&["Value1"]);
        f.run(MutationKind::Add, &["A"]).expect("executes");
        assert_eq!(f.active(), ["A", "Value2"]);
    }

    #[test]
    fn implied_state_that_would_remove_a_called_state_is_dropped() {
        let mut f = Fixture::new(vec![
            StateDef::new("A").add(["B"]),
            StateDef::new("B").remove(["C"]),
            StateDef::new("C"),
        ]);
        f.run(MutationKind::Add, &["A", "C"]).expect("executes");
        assert_eq!(f.active(), ["A", "C"]);
    }

    #[test]
    fn multi_state_called_again_reenters() {
        let mut f = Fixture::new(vec![StateDef::new("M").multi(), StateDef::new("S")]);
        f.run(MutationKind::Add, &["M", "S"]).expect("executes");
        let plan = f.run(MutationKind::Add, &["M", "S"]).expect("executes");
        assert_eq!(plan.reentering, f.idx(&["M"]));
        assert!(
            plan.entering.is_empty(),
            "S is already active and not multi"
        );
        assert_eq!(f.ticks[..2], [3, 1]);
    }

    #[test]
    fn adding_an_active_state_changes_nothing() {
        let mut f = Fixture::new(vec![StateDef::new("A")]);
        f.activate(&["A"]);
        let plan = f.run(MutationKind::Add, &["A"]).expect("executes");
        assert!(!plan.changes_clock());
    }

    #[test]
    fn auto_mutations_accept_what_they_can() {
        let mut f = Fixture::new(vec![
            StateDef::new("Ready").auto().require(["Start"]),
            StateDef::new("Idle").auto(),
            StateDef::new("Start"),
        ]);
        let called = f.idx(&["Ready", "Idle"]);
        let plan =
            resolve(&f.schema, &f.ticks, &[], MutationKind::Add, &called, true).expect("partial");
        plan.apply(&mut f.ticks);
        assert_eq!(f.active(), ["Idle"]);
    }

    #[test]
    fn plans_are_in_handler_order() {
        let mut f = Fixture::new(vec![
            StateDef::new("A").after(["B"]),
            StateDef::new("B"),
            StateDef::new("C").after(["A"]),
        ]);
        let plan = f
            .run(MutationKind::Add, &["A", "B", "C"])
            .expect("executes");
        assert_eq!(plan.entering, f.idx(&["B", "A", "C"]));
    }

    #[test]
    fn unrelated_states_keep_mutation_order() {
        let mut f = Fixture::new(vec![
            StateDef::new("A"),
            StateDef::new("B"),
            StateDef::new("C"),
            StateDef::new("D"),
        ]);
        let plan = f.run(MutationKind::Set, &["D", "C"]).expect("executes");
        assert_eq!(plan.entering, f.idx(&["D", "C"]));
        let order = plan.targets.clone();
        let called = f.idx(&["A"]);
        let plan = resolve(
            &f.schema,
            &f.ticks,
            &order,
            MutationKind::Set,
            &called,
            false,
        )
        .expect("executes");
        assert_eq!(
            plan.exiting,
            f.idx(&["D", "C"]),
            "in the order they were active"
        );
    }
}
