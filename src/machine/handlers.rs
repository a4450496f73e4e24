//! Handlers: the functions a machine runs during a transition, and the [`Event`] they receive.
//!
//! Negotiation handlers run before the clock changes and may cancel by returning `false`:
//! `exit` of leaving states, `enter` of arriving states, then `any_enter`. Final handlers run
//! after: `end` of left states, `state` of arrived states, then `any_state`. In an auto
//! mutation, an auto state whose `enter` refuses is dropped, with what only it implied, and the
//! other auto states go ahead (as in asyncmachine).
//!
//! A handler that returns an error or panics activates `Exception` with the error as argument
//! (queued first). A failing negotiation handler cancels the transition. A failing final
//! handler stops it where it is, as in asyncmachine: later final handlers and the auto
//! mutation do not run, the mutation's outcome is `Canceled`, and if it was the `state`
//! handler of an arriving state, that state and those arriving after it are deactivated again
//! (`add(A, B, C)` with B's `state` handler failing ends with A and `Exception` active). Rust
//! handlers report failure with `Err` as Go's do with a panic, so both stop alike.
//!
//! Handlers are plain functions bounded in time; long work is spawned and bound to a state
//! context.

use std::fmt::Display;
use std::sync::Arc;

use super::local::Machine;
use super::resolve::{MutationKind, Plan};
use super::schema::Schema;
use super::source::Mutation;
use super::value::{Args, Value};

/// What a handler sees of the transition it runs in.
#[derive(Debug)]
pub struct Event<'a> {
    pub(crate) machine: &'a Machine,
    /// The schema the transition runs under.
    pub(crate) schema: &'a Schema,
    pub(crate) mutation: &'a Mutation,
    pub(crate) plan: &'a Plan,
    pub(crate) before: &'a [u64],
    pub(crate) state: Option<usize>,
}

impl<'a> Event<'a> {
    /// The machine; mutations issued through it from a handler are queued.
    pub fn machine(&self) -> &'a Machine {
        self.machine
    }

    pub fn kind(&self) -> MutationKind {
        self.mutation.kind
    }

    pub fn args(&self) -> &'a Args {
        &self.mutation.args
    }

    pub fn arg(&self, key: &str) -> Option<&'a Value> {
        self.mutation.args.get(key)
    }

    /// Whether this is an auto mutation.
    pub fn is_auto(&self) -> bool {
        self.mutation.auto
    }

    /// The state whose handler runs, or `None` in an any-state handler.
    pub fn state(&self) -> Option<&'a str> {
        let schema: &'a Schema = self.schema;
        self.state.map(|s| schema.name(s))
    }

    pub fn called(&self) -> impl Iterator<Item = &'a str> + 'a {
        let schema: &'a Schema = self.schema;
        self.mutation.states.iter().map(move |&s| schema.name(s))
    }

    pub fn entering(&self) -> impl Iterator<Item = &'a str> + 'a {
        let schema: &'a Schema = self.schema;
        self.plan.arriving().map(move |s| schema.name(s))
    }

    pub fn exiting(&self) -> impl Iterator<Item = &'a str> + 'a {
        let schema: &'a Schema = self.schema;
        self.plan.exiting.iter().map(move |&s| schema.name(s))
    }

    /// The clock before this transition.
    pub fn before(&self) -> &'a [u64] {
        self.before
    }
}

/// What a negotiation handler may return: `bool`, or `Result<bool, E>`.
pub trait Verdict {
    fn into_verdict(self) -> Result<bool, String>;
}

impl Verdict for bool {
    fn into_verdict(self) -> Result<bool, String> {
        Ok(self)
    }
}

impl<E: Display> Verdict for Result<bool, E> {
    fn into_verdict(self) -> Result<bool, String> {
        self.map_err(|e| e.to_string())
    }
}

/// What a final handler may return: `()`, or `Result<(), E>`.
pub trait Completion {
    fn into_completion(self) -> Result<(), String>;
}

impl Completion for () {
    fn into_completion(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> Completion for Result<(), E> {
    fn into_completion(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

pub(crate) type NegotiationFn = Arc<dyn Fn(&Event<'_>) -> Result<bool, String> + Send + Sync>;
pub(crate) type FinalFn = Arc<dyn Fn(&Event<'_>) -> Result<(), String> + Send + Sync>;

/// Which handler of a state (or of any state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerKind {
    Enter,
    Exit,
    State,
    End,
    AnyEnter,
    AnyState,
}

impl HandlerKind {
    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::Enter => "enter",
            HandlerKind::Exit => "exit",
            HandlerKind::State => "state",
            HandlerKind::End => "end",
            HandlerKind::AnyEnter => "any_enter",
            HandlerKind::AnyState => "any_state",
        }
    }
}

/// All handlers of one machine. Copied on write: a transition works on a snapshot, so
/// registering a handler never waits for a transition.
#[derive(Clone, Default)]
pub(crate) struct HandlerTable {
    pub enter: Vec<Vec<NegotiationFn>>,
    pub exit: Vec<Vec<NegotiationFn>>,
    pub state: Vec<Vec<FinalFn>>,
    pub end: Vec<Vec<FinalFn>>,
    pub any_enter: Vec<NegotiationFn>,
    pub any_state: Vec<FinalFn>,
}

impl HandlerTable {
    pub fn new(states: usize) -> Self {
        HandlerTable {
            enter: vec![Vec::new(); states],
            exit: vec![Vec::new(); states],
            state: vec![Vec::new(); states],
            end: vec![Vec::new(); states],
            any_enter: Vec::new(),
            any_state: Vec::new(),
        }
    }

    /// Room for the states of a schema enlarged at its end.
    pub fn grow(&mut self, states: usize) {
        for per_state in [&mut self.enter, &mut self.exit] {
            per_state.resize(states, Vec::new());
        }
        for per_state in [&mut self.state, &mut self.end] {
            per_state.resize(states, Vec::new());
        }
    }

    pub fn negotiation(&self, kind: HandlerKind, state: Option<usize>) -> &[NegotiationFn] {
        match (kind, state) {
            (HandlerKind::Enter, Some(s)) => &self.enter[s],
            (HandlerKind::Exit, Some(s)) => &self.exit[s],
            (HandlerKind::AnyEnter, None) => &self.any_enter,
            _ => &[],
        }
    }

    pub fn finals(&self, kind: HandlerKind, state: Option<usize>) -> &[FinalFn] {
        match (kind, state) {
            (HandlerKind::State, Some(s)) => &self.state[s],
            (HandlerKind::End, Some(s)) => &self.end[s],
            (HandlerKind::AnyState, None) => &self.any_state,
            _ => &[],
        }
    }
}

impl std::fmt::Debug for HandlerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |v: &Vec<Vec<_>>| v.iter().map(Vec::len).sum::<usize>();
        f.debug_struct("HandlerTable")
            .field("enter", &count(&self.enter))
            .field("exit", &count(&self.exit))
            .field("state", &self.state.iter().map(Vec::len).sum::<usize>())
            .field("end", &self.end.iter().map(Vec::len).sum::<usize>())
            .field("any_enter", &self.any_enter.len())
            .field("any_state", &self.any_state.len())
            .finish()
    }
}

/// Turns a panic payload into the message it carried.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic with a non-string payload".to_owned()
    }
}
