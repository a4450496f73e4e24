//! Handlers: the functions a machine runs during a transition, and the [`Event`] they receive.
//!
//! Negotiation handlers run before the clock changes and may cancel by returning `false`, in
//! asyncmachine's order: `exit` of leaving states, `enter` of arriving states, `self` of the
//! target states that are active already (Go's `AA`; not in a remove), `from_to` of each pair
//! of a state active before and a target state (Go's `AB`), then `any_enter`. Final handlers
//! run after: `end` of left states, `state` of arrived states, then `any_state`. In an auto
//! mutation, an auto state whose `enter`, `self` or `from_to` refuses is dropped, with what
//! only it implied, and the other auto states go ahead (as in asyncmachine).
//!
//! As in asyncmachine, a mutation that changes no tick (adding an active state) still runs the
//! handlers that concern it: `self`, `from_to`, `any_enter` and `any_state`.
//!
//! A handler that returns an error or panics activates `Exception` with the error as argument
//! (queued first). A failing negotiation handler cancels the transition. A failing final
//! handler stops it where it is, as in asyncmachine: later final handlers and the auto
//! mutation do not run, the mutation's outcome is `Canceled`, and if it was the `state`
//! handler of an arriving state, that state and those arriving after it are deactivated again
//! (`add(A, B, C)` with B's `state` handler failing ends with A and `Exception` active). Rust
//! handlers report failure with `Err` as Go's do with a panic, so both stop alike.
//!
//! These handlers run inside the transition, on the machine that runs it. Final handlers that
//! run after a change, on a mirror as on a machine, are [`super::FinalHandlers`].
//!
//! Handlers are plain functions bounded in time; long work is spawned and bound to a state
//! context. A machine built with a handler timeout fails a handler that ran longer (after it
//! returns: a synchronous handler cannot be preempted), as Go's `HandlerTimeout` does.

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
    /// Which handler runs.
    pub(crate) handler: HandlerKind,
    /// The state whose handler runs (the `from` state of a `from_to` handler).
    pub(crate) state: Option<usize>,
    /// The target state of a `from_to` handler.
    pub(crate) to: Option<usize>,
}

impl<'a> Event<'a> {
    /// The machine; mutations issued through it from a handler are queued.
    pub fn machine(&self) -> &'a Machine {
        self.machine
    }

    /// Whether the mutation is an add, a remove or a set.
    pub fn kind(&self) -> MutationKind {
        self.mutation.kind
    }

    /// The mutation's arguments (empty when it was made without any).
    pub fn args(&self) -> &'a Args {
        &self.mutation.args
    }

    /// One argument of the mutation, or `None` when it was not passed.
    pub fn arg(&self, key: &str) -> Option<&'a Value> {
        self.mutation.args.get(key)
    }

    /// Whether this is an auto mutation.
    pub fn is_auto(&self) -> bool {
        self.mutation.auto
    }

    /// The state whose handler runs (for a `from_to` handler, the state it leaves from), or
    /// `None` in an any-state handler.
    pub fn state(&self) -> Option<&'a str> {
        let schema: &'a Schema = self.schema;
        self.state.map(|s| schema.name(s))
    }

    /// The target state of a `from_to` handler.
    pub fn to_state(&self) -> Option<&'a str> {
        let schema: &'a Schema = self.schema;
        self.to.map(|s| schema.name(s))
    }

    /// Which handler runs.
    pub fn handler(&self) -> HandlerKind {
        self.handler
    }

    /// The handler's name as asyncmachine spells it (`AEnter`, `AB`, `AnyState`).
    pub fn handler_name(&self) -> String {
        HandlerCall::new(self.schema, self.handler, self.state, self.to).to_string()
    }

    /// The states the mutation named, in the order given.
    pub fn called(&self) -> impl Iterator<Item = &'a str> + 'a {
        let schema: &'a Schema = self.schema;
        self.mutation.states.iter().map(move |&s| schema.name(s))
    }

    /// The states this transition activates (inactive before, active after).
    pub fn entering(&self) -> impl Iterator<Item = &'a str> + 'a {
        let schema: &'a Schema = self.schema;
        self.plan.arriving().map(move |s| schema.name(s))
    }

    /// The states this transition deactivates.
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
    /// `Ok(true)` lets the transition go on; `Ok(false)` or `Err` (its message noted as the
    /// machine's error) cancels it.
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
    /// `Ok(())`, or `Err` with a message the machine records as its error.
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
    /// A state being activated (Go's `AEnter`); may cancel the transition.
    Enter,
    /// A state being deactivated (Go's `AExit`); may cancel the transition.
    Exit,
    /// A target state that is active already (Go's `AA`).
    SelfEnter,
    /// A state active before to a target state (Go's `AB`).
    FromTo,
    /// A state that became active, or was activated again (Go's `AState`); runs after the
    /// clock changed.
    State,
    /// A state that became inactive (Go's `AEnd`); runs after the clock changed.
    End,
    /// Every transition, after the per-state negotiation handlers (Go's `AnyEnter`); may cancel.
    AnyEnter,
    /// Every transition that changed the clock, after the per-state final handlers (Go's
    /// `AnyState`).
    AnyState,
}

impl HandlerKind {
    /// The kind's name in snake case (`enter`, `from_to`, `any_state`), as the log writes it.
    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::Enter => "enter",
            HandlerKind::Exit => "exit",
            HandlerKind::SelfEnter => "self",
            HandlerKind::FromTo => "from_to",
            HandlerKind::State => "state",
            HandlerKind::End => "end",
            HandlerKind::AnyEnter => "any_enter",
            HandlerKind::AnyState => "any_state",
        }
    }
}

/// A handler of a transition as asyncmachine names it: `AEnter`, `AExit`, `AA` (self), `AB`
/// (from A to B), `AState`, `AEnd`, `AnyEnter`, `AnyState`. What tracers and logs show.
#[derive(Debug, Clone, Copy)]
pub struct HandlerCall<'a> {
    /// Which handler.
    pub kind: HandlerKind,
    /// The state whose handler it is (the `from` state of `AB`), `None` for the any-state ones.
    pub state: Option<&'a str>,
    /// The target state of an `AB` handler.
    pub to: Option<&'a str>,
}

impl<'a> HandlerCall<'a> {
    pub(crate) fn new(
        schema: &'a Schema,
        kind: HandlerKind,
        state: Option<usize>,
        to: Option<usize>,
    ) -> Self {
        HandlerCall {
            kind,
            state: state.map(|s| schema.name(s)),
            to: to.map(|s| schema.name(s)),
        }
    }
}

impl std::fmt::Display for HandlerCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.unwrap_or("Any");
        match self.kind {
            HandlerKind::Enter | HandlerKind::AnyEnter => write!(f, "{state}Enter"),
            HandlerKind::Exit => write!(f, "{state}Exit"),
            HandlerKind::SelfEnter => write!(f, "{state}{state}"),
            HandlerKind::FromTo => write!(f, "{state}{}", self.to.unwrap_or("Any")),
            HandlerKind::State | HandlerKind::AnyState => write!(f, "{state}State"),
            HandlerKind::End => write!(f, "{state}End"),
        }
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
