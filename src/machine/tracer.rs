//! Tracers: hooks that see a machine's life and each transition step by step (Go's `Tracer`),
//! for debuggers, telemetry and tests.
//!
//! A tracer is bound with [`StateSource::bind_tracer`] and called on the thread that runs the
//! transition, outside the machine's lock (it may read the machine). Every hook has an empty
//! default, so a tracer implements only what it needs. The order, for one mutation:
//! `mutation_queued` when the machine was busy and the mutation waits in its queue, then
//! `wants_transition` (when no tracer follows it, its `transition_*` and `handler_*` hooks are
//! not called),
//! `transition_init` (resolved, before any handler), `transition_start` (the handlers are about
//! to run; not when the relations refused it), `handler_start` and `handler_end` around each
//! handler, `transition_end` (with the outcome and the clock after), and `queue_end` when the
//! machine has no more mutations to run.
//!
//! A mirror runs no transition: its source does. As asyncmachine's network machine does, it
//! calls `transition_init`, `transition_start` and `transition_end` around each update of its
//! clock that changed a tick (a diff, a mutation's reply, a snapshot), on the task that applied
//! it, with no mutation ([`TransitionTrace::mutation`] is `None`: the mirror knows what changed,
//! not why) and the states that became active or inactive as its steps; its final handlers
//! ([`super::FinalHandlers`]) run between start and end. `machine_init` runs when the tracer is
//! bound, `schema_change` when its source's schema changes, `machine_dispose` when the mirror
//! is disposed; `handler_*` and `queue_end` never run on a mirror. A mirror calls
//! `mutation_sent` for each mutation it sends up (a machine never does).
//!
//! The steps of a transition are what the resolution decided and what the handlers did, in
//! order: the states requested, those that become active or inactive and which handler ran.
//! They do not say which relation implied or removed a state (asyncmachine's relation steps):
//! the resolver does not record its reasons, to stay cheap when nobody traces.

use std::sync::Arc;

use super::handlers::{HandlerCall, HandlerKind};
use super::local::Machine;
use super::resolve::is_active;
use super::schema::Schema;
use super::source::{Mutation, Outcome, StateSource};

/// What happened in a transition, one step each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// A state the mutation called.
    Requested,
    /// A state that becomes active (or, for a multi state, active again).
    Set,
    /// A state that becomes inactive.
    Remove,
    /// A state a remove called that was not active.
    RemoveNotActive,
    /// A handler ran (`from` is its state, `to` the target of a `from_to` handler).
    Handler(HandlerKind),
    /// The transition was canceled: by the relations (no state), or by a handler of `from`.
    Cancel,
}

impl StepKind {
    /// asyncmachine's name for the step.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Requested => "called",
            StepKind::Set => "activate",
            StepKind::Remove => "deactivate",
            StepKind::RemoveNotActive => "deactivate-passive",
            StepKind::Handler(_) => "handler",
            StepKind::Cancel => "cancel",
        }
    }
}

/// One step of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// What the step is.
    pub kind: StepKind,
    /// The state it concerns (position in the schema); for a handler, the handler's state.
    pub from: Option<usize>,
    /// The target state of a `from_to` handler step.
    pub to: Option<usize>,
}

/// A transition as a tracer sees it.
#[derive(Debug)]
pub struct TransitionTrace<'a> {
    /// The machine's id.
    pub machine: &'a str,
    /// The schema the positions in `before`, `after` and `steps` refer to.
    pub schema: &'a Schema,
    /// The mutation of a local transition; `None` for a mirror's update.
    pub mutation: Option<&'a Mutation>,
    /// The machine's queue tick while the transition runs.
    pub queue_tick: u64,
    /// The clock before the transition.
    pub before: &'a [u64],
    /// The clock after it: the same as `before` until the transition ends.
    pub after: &'a [u64],
    /// The steps so far (all of them in `transition_end`).
    pub steps: &'a [Step],
    /// In `transition_end`: what the transition returned.
    pub outcome: Option<Outcome>,
}

impl TransitionTrace<'_> {
    /// The names of the states the mutation called (none for a mirror's update).
    pub fn called(&self) -> impl Iterator<Item = &str> {
        let states = self.mutation.map_or(&[][..], |m| &m.states[..]);
        states.iter().map(|&s| self.schema.name(s))
    }

    /// Whether the transition was accepted (in `transition_end`).
    pub fn accepted(&self) -> bool {
        matches!(self.outcome, Some(Outcome::Executed))
    }
}

/// Hooks into a machine's life; see the module docs for when each is called.
pub trait Tracer: Send + Sync {
    /// Bound to a machine or a mirror (Go calls it when the machine starts with the tracer).
    fn machine_init(&self, _source: &dyn StateSource) {}
    /// The machine (or the mirror) was disposed.
    fn machine_dispose(&self, _machine: &str) {}
    /// The mutation was resolved, before any handler runs.
    fn transition_init(&self, _transition: &TransitionTrace<'_>) {}
    /// The negotiation handlers are about to run (not called when the relations refused it).
    fn transition_start(&self, _transition: &TransitionTrace<'_>) {}
    /// The transition ended; `outcome` and `after` are set.
    fn transition_end(&self, _transition: &TransitionTrace<'_>) {}
    /// A handler is about to run.
    fn handler_start(&self, _transition: &TransitionTrace<'_>, _handler: &HandlerCall<'_>) {}
    /// `failure` is the error (or panic, or timeout) the handler failed with, if any.
    fn handler_end(
        &self,
        _transition: &TransitionTrace<'_>,
        _handler: &HandlerCall<'_>,
        _failure: Option<&str>,
    ) {
    }
    /// The queue ran empty.
    fn queue_end(&self, _machine: &Machine) {}
    /// Whether this tracer follows the transition about to start: asked once per transition,
    /// on the thread that runs it, before anything is copied for tracers (so: an atomic read,
    /// nothing more). When every bound tracer declines, the transition runs as if none were
    /// bound: no steps recorded, no clock copied, no `transition_*` or `handler_*` hook. A
    /// tracer that declines while another accepts still sees the hooks and must ignore them
    /// (telemetry declines when its buffer is full, and counts the transition as dropped).
    fn wants_transition(&self) -> bool {
        true
    }
    /// Whether [`Tracer::mutation_queued`] is wanted now: asked under the machine's lock (so:
    /// an atomic read, nothing more), before the machine copies the mutation for it.
    fn wants_queued(&self) -> bool {
        false
    }
    /// The machine was busy: `mutation` waits in its queue and will run as the transition of
    /// queue tick `tick` (its `transition_*` hooks come then). Never on a mirror.
    fn mutation_queued(&self, _machine: &str, _schema: &Schema, _mutation: &Mutation, _tick: u64) {}
    /// A mirror sent `mutation` to its source (its [`Mutation::origin`] says which client of
    /// the mirror's node asked for it, when one did); called before the answer, on the
    /// caller's thread. Never on a machine: its mutations are transitions.
    fn mutation_sent(&self, _machine: &str, _schema: &Schema, _mutation: &Mutation) {}
    /// The schema was enlarged (on a mirror: its source's schema changed); `old` is the one
    /// before.
    fn schema_change(&self, _source: &dyn StateSource, _old: &Schema) {}
}

/// The tracers bound to a mirror, by id: copied on write, so a snapshot is told outside the
/// lock that guards the list.
#[derive(Clone, Default)]
pub(crate) struct Tracers {
    list: Arc<Vec<(u64, Arc<dyn Tracer>)>>,
    next: u64,
}

impl Tracers {
    pub fn add(&mut self, tracer: Arc<dyn Tracer>) -> u64 {
        self.next += 1;
        Arc::make_mut(&mut self.list).push((self.next, tracer));
        self.next
    }

    /// Whether the tracer was bound.
    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.list.len();
        Arc::make_mut(&mut self.list).retain(|(i, _)| *i != id);
        before != self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn snapshot(&self) -> Arc<Vec<(u64, Arc<dyn Tracer>)>> {
        self.list.clone()
    }

    pub fn tracers(&self) -> Vec<Arc<dyn Tracer>> {
        self.list.iter().map(|(_, t)| t.clone()).collect()
    }
}

/// Whether any of `tracers` follows the next transition. Every tracer is asked (none is
/// skipped because an earlier one accepted), so each knows whether it declined this one.
pub(crate) fn wanted(tracers: &[(u64, Arc<dyn Tracer>)]) -> bool {
    tracers
        .iter()
        .fold(false, |any, (_, t)| t.wants_transition() | any)
}

/// The steps of a clock change made elsewhere (a mirror's update): `Remove` for each state
/// that became inactive, then `Set` for each that became active or was activated again.
pub(crate) fn change_steps(before: &[u64], after: &[u64], changed: &[usize]) -> Vec<Step> {
    let tick = |clock: &[u64], s: usize| clock.get(s).copied().unwrap_or(0);
    let step = |kind, s| Step {
        kind,
        from: None,
        to: Some(s),
    };
    let removed = changed
        .iter()
        .filter(|&&s| is_active(tick(before, s)) && !is_active(tick(after, s)))
        .map(|&s| step(StepKind::Remove, s));
    let set = changed
        .iter()
        .filter(|&&s| is_active(tick(after, s)))
        .map(|&s| step(StepKind::Set, s));
    removed.chain(set).collect()
}
