//! Tracers: hooks that see a machine's life and each transition step by step (Go's `Tracer`),
//! for debuggers, telemetry and tests.
//!
//! A tracer is bound with [`Machine::bind_tracer`](super::Machine::bind_tracer) and called on
//! the thread that runs the transition, outside the machine's lock (it may read the machine).
//! Every hook has an empty default, so a tracer implements only what it needs. The order, for
//! one mutation: `transition_init` (resolved, before any handler), `transition_start` (the
//! handlers are about to run; not when the relations refused it), `handler_start` and
//! `handler_end` around each handler, `transition_end` (with the outcome and the clock after),
//! and `queue_end` when the machine has no more mutations to run.
//!
//! The steps of a transition are what the resolution decided and what the handlers did, in
//! order: the states requested, those that become active or inactive and which handler ran.
//! They do not say which relation implied or removed a state (asyncmachine's relation steps):
//! the resolver does not record its reasons, to stay cheap when nobody traces.

use super::handlers::{HandlerCall, HandlerKind};
use super::local::Machine;
use super::schema::Schema;
use super::source::{Mutation, Outcome};

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

/// One step of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub kind: StepKind,
    pub from: Option<usize>,
    pub to: Option<usize>,
}

/// A transition as a tracer sees it.
#[derive(Debug)]
pub struct TransitionTrace<'a> {
    /// The machine's id.
    pub machine: &'a str,
    pub schema: &'a Schema,
    pub mutation: &'a Mutation,
    /// The machine's queue tick while the transition runs.
    pub queue_tick: u64,
    /// The clock before the transition.
    pub before: &'a [u64],
    /// The clock after it: the same as `before` until the transition ends.
    pub after: &'a [u64],
    pub steps: &'a [Step],
    /// In `transition_end`: what the transition returned.
    pub outcome: Option<Outcome>,
}

impl TransitionTrace<'_> {
    /// The names of the states the mutation called.
    pub fn called(&self) -> impl Iterator<Item = &str> {
        self.mutation.states.iter().map(|&s| self.schema.name(s))
    }

    /// Whether the transition was accepted (in `transition_end`).
    pub fn accepted(&self) -> bool {
        matches!(self.outcome, Some(Outcome::Executed))
    }
}

/// Hooks into a machine's life; see the module docs for when each is called.
pub trait Tracer: Send + Sync {
    /// Bound to a machine (Go calls it when the machine starts with the tracer).
    fn machine_init(&self, _machine: &Machine) {}
    /// The machine was disposed.
    fn machine_dispose(&self, _machine: &str) {}
    fn transition_init(&self, _transition: &TransitionTrace<'_>) {}
    fn transition_start(&self, _transition: &TransitionTrace<'_>) {}
    fn transition_end(&self, _transition: &TransitionTrace<'_>) {}
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
    /// The schema was enlarged; `old` is the one before.
    fn schema_change(&self, _machine: &Machine, _old: &Schema) {}
}
