//! Binding handlers and tracers to a machine, and unbinding them (Go's `BindHandlers`,
//! `DetachHandlers`, `BindTracer`, `DetachTracer`).
//!
//! A [`Handlers`] set is built by state name and bound whole: every name is checked first, so
//! a set with an unknown state binds nothing. Binding returns a [`Binding`] that unbinds the
//! set again. [`Machine::on_enter`](super::Machine::on_enter) and its kin bind a set of one.
//!
//! The machine keeps what is bound in one `HandlerTable`, copied on write: a transition works
//! on the snapshot it started with, so binding never waits for a transition, and a handler
//! unbound during a transition still finishes that transition.

use std::sync::Arc;

use super::handlers::{Completion, Event, FinalFn, HandlerKind, NegotiationFn, Verdict};
use super::schema::{Schema, UnknownState};
use super::tracer::Tracer;

/// A bound set of handlers, for [`Machine::unbind`](super::Machine::unbind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding(pub(crate) u64);

/// A bound tracer, for [`Machine::detach_tracer`](super::Machine::detach_tracer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TracerId(pub(crate) u64);

enum Pending {
    Negotiation {
        kind: HandlerKind,
        state: Option<String>,
        to: Option<String>,
        f: NegotiationFn,
    },
    Final {
        kind: HandlerKind,
        state: Option<String>,
        f: FinalFn,
    },
}

/// A set of handlers to bind to a machine at once (Go's handler struct). Negotiation handlers
/// return `bool` or `Result<bool, E>` (`false` or an error cancels); final handlers `()` or
/// `Result<(), E>`.
#[derive(Default)]
pub struct Handlers {
    pending: Vec<Pending>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("handlers", &self.pending.len())
            .finish()
    }
}

impl Handlers {
    /// An empty set; add handlers with the `on_*` methods, then bind it with
    /// [`Machine::bind`](super::Machine::bind).
    pub fn new() -> Self {
        Self::default()
    }

    fn negotiation<F, R>(
        mut self,
        kind: HandlerKind,
        state: Option<&str>,
        to: Option<&str>,
        f: F,
    ) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.pending.push(Pending::Negotiation {
            kind,
            state: state.map(str::to_owned),
            to: to.map(str::to_owned),
            f: Arc::new(move |e| f(e).into_verdict()),
        });
        self
    }

    fn final_handler<F, R>(mut self, kind: HandlerKind, state: Option<&str>, f: F) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.pending.push(Pending::Final {
            kind,
            state: state.map(str::to_owned),
            f: Arc::new(move |e| f(e).into_completion()),
        });
        self
    }

    /// A state is about to become active (or, for a multi state, active again): Go's `AEnter`.
    pub fn on_enter<F, R>(self, state: &str, f: F) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.negotiation(HandlerKind::Enter, Some(state), None, f)
    }

    /// A state is about to become inactive: Go's `AExit`.
    pub fn on_exit<F, R>(self, state: &str, f: F) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.negotiation(HandlerKind::Exit, Some(state), None, f)
    }

    /// A state that is active is a target again (added or set while active): Go's `AA`. Not
    /// called in a remove.
    pub fn on_self<F, R>(self, state: &str, f: F) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.negotiation(HandlerKind::SelfEnter, Some(state), None, f)
    }

    /// `from` was active before a transition whose targets include `to` (Go's `AB`, named
    /// after the pair): it runs whether or not `from` stays active and `to` was active.
    pub fn on_from_to<F, R>(self, from: &str, to: &str, f: F) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.negotiation(HandlerKind::FromTo, Some(from), Some(to), f)
    }

    /// Every transition, after the per-state negotiation handlers: Go's `AnyEnter`.
    pub fn on_any_enter<F, R>(self, f: F) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Verdict,
    {
        self.negotiation(HandlerKind::AnyEnter, None, None, f)
    }

    /// A state became active: Go's `AState`.
    pub fn on_state<F, R>(self, state: &str, f: F) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.final_handler(HandlerKind::State, Some(state), f)
    }

    /// A state became inactive: Go's `AEnd`.
    pub fn on_end<F, R>(self, state: &str, f: F) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.final_handler(HandlerKind::End, Some(state), f)
    }

    /// Every accepted transition, after the per-state final handlers: Go's `AnyState`.
    pub fn on_any_state<F, R>(self, f: F) -> Self
    where
        F: Fn(&Event<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.final_handler(HandlerKind::AnyState, None, f)
    }

    /// How many handlers the set holds.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether the set holds no handler (binding it does nothing).
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// One bound handler.
#[derive(Clone)]
pub(crate) struct Bound<F> {
    pub binding: u64,
    /// The target state of a from-to handler (`usize::MAX` for the others).
    pub to: usize,
    pub f: F,
}

type NegotiationList = Vec<Bound<NegotiationFn>>;
type FinalList = Vec<Bound<FinalFn>>;

/// Everything bound to one machine.
#[derive(Clone, Default)]
pub(crate) struct HandlerTable {
    enter: Vec<NegotiationList>,
    exit: Vec<NegotiationList>,
    self_enter: Vec<NegotiationList>,
    /// By the `from` state; each knows its `to` state.
    from_to: Vec<NegotiationList>,
    state: Vec<FinalList>,
    end: Vec<FinalList>,
    any_enter: NegotiationList,
    any_state: FinalList,
    /// Handlers that run even when a transition changes no tick (self, from-to, any).
    unchanged: usize,
    self_count: usize,
    from_to_count: usize,
    tracers: Vec<(u64, Arc<dyn Tracer>)>,
}

impl HandlerTable {
    pub fn new(states: usize) -> Self {
        let mut table = HandlerTable::default();
        table.grow(states);
        table
    }

    /// Room for the states of a schema enlarged at its end.
    pub fn grow(&mut self, states: usize) {
        for lists in [
            &mut self.enter,
            &mut self.exit,
            &mut self.self_enter,
            &mut self.from_to,
        ] {
            lists.resize(states, Vec::new());
        }
        self.state.resize(states, Vec::new());
        self.end.resize(states, Vec::new());
    }

    /// Binds a whole set, or nothing when a state is unknown.
    pub fn bind(
        &mut self,
        schema: &Schema,
        binding: u64,
        handlers: Handlers,
    ) -> Result<(), UnknownState> {
        let index = |name: &Option<String>| -> Result<Option<usize>, UnknownState> {
            match name {
                None => Ok(None),
                Some(name) => schema
                    .index(name)
                    .map(Some)
                    .ok_or_else(|| UnknownState(name.clone())),
            }
        };
        let mut resolved = Vec::with_capacity(handlers.pending.len());
        for pending in handlers.pending {
            let (state, to) = match &pending {
                Pending::Negotiation { state, to, .. } => (index(state)?, index(to)?),
                Pending::Final { state, .. } => (index(state)?, None),
            };
            resolved.push((pending, state, to.unwrap_or(usize::MAX)));
        }
        for (pending, state, to) in resolved {
            match pending {
                Pending::Negotiation { kind, f, .. } => {
                    let bound = Bound { binding, to, f };
                    match (kind, state) {
                        (HandlerKind::Enter, Some(s)) => self.enter[s].push(bound),
                        (HandlerKind::Exit, Some(s)) => self.exit[s].push(bound),
                        (HandlerKind::SelfEnter, Some(s)) => self.self_enter[s].push(bound),
                        (HandlerKind::FromTo, Some(s)) => self.from_to[s].push(bound),
                        _ => self.any_enter.push(bound),
                    }
                }
                Pending::Final { kind, f, .. } => {
                    let bound = Bound { binding, to, f };
                    match (kind, state) {
                        (HandlerKind::State, Some(s)) => self.state[s].push(bound),
                        (HandlerKind::End, Some(s)) => self.end[s].push(bound),
                        _ => self.any_state.push(bound),
                    }
                }
            }
        }
        self.recount();
        Ok(())
    }

    /// Unbinds a set; whether it was bound.
    pub fn unbind(&mut self, binding: u64) -> bool {
        let before = self.len();
        let lists = self.enter.iter_mut().chain(&mut self.exit);
        let lists = lists.chain(&mut self.self_enter).chain(&mut self.from_to);
        for list in lists.chain(std::iter::once(&mut self.any_enter)) {
            list.retain(|b| b.binding != binding);
        }
        let finals = self.state.iter_mut().chain(&mut self.end);
        for list in finals.chain(std::iter::once(&mut self.any_state)) {
            list.retain(|b| b.binding != binding);
        }
        self.recount();
        self.len() != before
    }

    fn recount(&mut self) {
        self.from_to_count = self.from_to.iter().map(Vec::len).sum();
        self.self_count = self.self_enter.iter().map(Vec::len).sum();
        self.unchanged =
            self.self_count + self.from_to_count + self.any_enter.len() + self.any_state.len();
    }

    /// Whether some handler runs on a transition that changes no tick.
    pub fn runs_unchanged(&self) -> bool {
        self.unchanged > 0
    }

    pub fn has_from_to(&self) -> bool {
        self.from_to_count > 0
    }

    pub fn has_self(&self) -> bool {
        self.self_count > 0
    }

    /// Whether `from` has any from-to handler.
    pub fn has_from(&self, from: usize) -> bool {
        !self.from_to[from].is_empty()
    }

    /// The negotiation handlers of a step: of `state` (the `from` state of a from-to handler,
    /// whose target is `to`), or of any state.
    pub fn negotiation(
        &self,
        kind: HandlerKind,
        state: Option<usize>,
        to: Option<usize>,
    ) -> impl Iterator<Item = &NegotiationFn> {
        let list: &[Bound<NegotiationFn>] = match (kind, state) {
            (HandlerKind::Enter, Some(s)) => &self.enter[s],
            (HandlerKind::Exit, Some(s)) => &self.exit[s],
            (HandlerKind::SelfEnter, Some(s)) => &self.self_enter[s],
            (HandlerKind::FromTo, Some(s)) => &self.from_to[s],
            (HandlerKind::AnyEnter, None) => &self.any_enter,
            _ => &[],
        };
        let to = to.unwrap_or(usize::MAX);
        list.iter().filter(move |b| b.to == to).map(|b| &b.f)
    }

    pub fn finals(
        &self,
        kind: HandlerKind,
        state: Option<usize>,
    ) -> impl Iterator<Item = &FinalFn> {
        let list: &[Bound<FinalFn>] = match (kind, state) {
            (HandlerKind::State, Some(s)) => &self.state[s],
            (HandlerKind::End, Some(s)) => &self.end[s],
            (HandlerKind::AnyState, None) => &self.any_state,
            _ => &[],
        };
        list.iter().map(|b| &b.f)
    }

    /// Handlers bound, of every kind.
    pub fn len(&self) -> usize {
        let count = |lists: &Vec<NegotiationList>| lists.iter().map(Vec::len).sum::<usize>();
        let finals = |lists: &Vec<FinalList>| lists.iter().map(Vec::len).sum::<usize>();
        count(&self.enter)
            + count(&self.exit)
            + count(&self.self_enter)
            + count(&self.from_to)
            + finals(&self.state)
            + finals(&self.end)
            + self.any_enter.len()
            + self.any_state.len()
    }

    pub fn bind_tracer(&mut self, id: u64, tracer: Arc<dyn Tracer>) {
        self.tracers.push((id, tracer));
    }

    pub fn detach_tracer(&mut self, id: u64) -> bool {
        let before = self.tracers.len();
        self.tracers.retain(|(t, _)| *t != id);
        before != self.tracers.len()
    }

    pub fn tracers(&self) -> &[(u64, Arc<dyn Tracer>)] {
        &self.tracers
    }
}

impl std::fmt::Debug for HandlerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerTable")
            .field("handlers", &self.len())
            .field("tracers", &self.tracers.len())
            .finish()
    }
}
