//! Final handlers on any source: `state`, `end` and `any_state` handlers that run after a
//! change of the clock is applied, on a local machine and on a mirror alike (Go's network
//! machine runs a handler struct's `State`, `End` and `AnyState` methods on each clock update).
//!
//! A [`FinalHandlers`] set is bound with [`StateSource::bind_final`] and runs as an observer of
//! the source: on a [`Machine`](super::Machine) after each transition that changed a tick
//! (after its own handlers, with the [`Transition`] that made the change), on a mirror after
//! each update from its source (a diff, a mutation's reply, a snapshot; with no transition:
//! the mirror knows what changed, not why). For each change:
//!
//! - `end` of each state that was active and is not any more;
//! - `state` of each state that is active and whose tick changed (it became active, or a multi
//!   state was activated again);
//! - `any_state` once;
//!
//! states in schema order; nothing for a change that moved no tick (a schema that grew). A
//! mirror's clock moves by merged diffs: a state activated and deactivated again between two
//! updates it received runs neither handler (its tick moved; the event's clocks show it). When
//! a mirror's source changes its schema other than by growing, positions mean other states:
//! that change runs `any_state` only, and names are resolved against the new schema after it.
//!
//! Only final handlers can run here: negotiation (`enter`, `exit`, `self`, `from_to`,
//! `any_enter`) decides a transition, and only the machine that runs it can. The set has no
//! such methods, so a mirror cannot be given one; bind them on the root with
//! [`Handlers`](super::Handlers).
//!
//! These handlers observe: a failing one (an `Err` or a panic) is logged and the others still
//! run, and nothing is undone. A handler runs on the thread or task that applied the change
//! (the machine's processing thread; the mirror's connection task): keep it short and never
//! block on a mutation there. [`FinalEvent::source`] mutates: on a machine the mutation is
//! queued behind the running transition; on a mirror the returned future does nothing until it
//! is polled, so spawn it (`tokio::spawn(e.source().add(...))`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use super::handlers::{Completion, HandlerCall, HandlerKind, panic_message};
use super::resolve::is_active;
use super::schema::{Schema, UnknownState};
use super::source::{ClockChange, Observer, ObserverId, StateSource, Transition};
use super::value::Args;

type FinalFn = Arc<dyn Fn(&FinalEvent<'_>) -> Result<(), String> + Send + Sync>;

/// A final handler by state name.
#[derive(Clone)]
struct Named {
    kind: HandlerKind,
    state: Option<String>,
    f: FinalFn,
}

/// A set of final handlers to bind to any source at once; see the module docs. Handlers return
/// `()` or `Result<(), E>`.
#[derive(Default)]
pub struct FinalHandlers {
    handlers: Vec<Named>,
}

impl std::fmt::Debug for FinalHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalHandlers")
            .field("handlers", &self.handlers.len())
            .finish()
    }
}

impl FinalHandlers {
    /// An empty set; add handlers with the `on_*` methods, then bind it with
    /// [`StateSource::bind_final`].
    pub fn new() -> Self {
        Self::default()
    }

    fn with<F, R>(mut self, kind: HandlerKind, state: Option<&str>, f: F) -> Self
    where
        F: Fn(&FinalEvent<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.handlers.push(Named {
            kind,
            state: state.map(str::to_owned),
            f: Arc::new(move |e| f(e).into_completion()),
        });
        self
    }

    /// The state became active, or (a multi state) was activated again: Go's `AState`.
    pub fn on_state<F, R>(self, state: &str, f: F) -> Self
    where
        F: Fn(&FinalEvent<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.with(HandlerKind::State, Some(state), f)
    }

    /// The state became inactive: Go's `AEnd`.
    pub fn on_end<F, R>(self, state: &str, f: F) -> Self
    where
        F: Fn(&FinalEvent<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.with(HandlerKind::End, Some(state), f)
    }

    /// Every change of a tick, after the per-state handlers: Go's `AnyState`.
    pub fn on_any_state<F, R>(self, f: F) -> Self
    where
        F: Fn(&FinalEvent<'_>) -> R + Send + Sync + 'static,
        R: Completion,
    {
        self.with(HandlerKind::AnyState, None, f)
    }

    /// How many handlers the set holds.
    pub fn len(&self) -> usize {
        self.handlers.len()
    }

    /// Whether the set holds no handler.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

/// A bound [`FinalHandlers`] set, for [`StateSource::unbind_final`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FinalBinding(pub(crate) ObserverId);

/// What a final handler sees: the change, and which handler runs.
pub struct FinalEvent<'a> {
    change: &'a ClockChange<'a>,
    handler: HandlerKind,
    state: Option<usize>,
}

impl std::fmt::Debug for FinalEvent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FinalEvent")
            .field("source", &self.change.source.id())
            .field("handler", &self.handler_name())
            .field("before", &self.change.before)
            .field("after", &self.change.after)
            .finish()
    }
}

impl<'a> FinalEvent<'a> {
    /// The source whose clock changed: read it, or mutate it (see the module docs).
    pub fn source(&self) -> &'a dyn StateSource {
        self.change.source
    }

    /// The schema the change's positions refer to.
    pub fn schema(&self) -> &'a Schema {
        self.change.schema
    }

    /// The state whose handler runs, or `None` in `any_state`.
    pub fn state(&self) -> Option<&'a str> {
        let schema: &'a Schema = self.change.schema;
        self.state.map(|s| schema.name(s))
    }

    /// Which kind of handler runs (`State`, `End` or `AnyState`).
    pub fn handler(&self) -> HandlerKind {
        self.handler
    }

    /// The handler's name as asyncmachine spells it (`AState`, `AEnd`, `AnyState`).
    pub fn handler_name(&self) -> String {
        HandlerCall::new(self.change.schema, self.handler, self.state, None).to_string()
    }

    /// The clock before the change.
    pub fn before(&self) -> &'a [u64] {
        self.change.before
    }

    /// The clock after it.
    pub fn after(&self) -> &'a [u64] {
        self.change.after
    }

    /// The tick of a state after the change (0 for an unknown name).
    pub fn tick(&self, state: &str) -> u64 {
        let after = self.change.after;
        self.change
            .schema
            .index(state)
            .and_then(|s| after.get(s).copied())
            .unwrap_or(0)
    }

    /// Whether a state is active after the change.
    pub fn is_active(&self, state: &str) -> bool {
        is_active(self.tick(state))
    }

    /// The states whose `state` handlers run for this change, in schema order.
    pub fn activated(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.of_kind(HandlerKind::State)
    }

    /// The states whose `end` handlers run for this change, in schema order.
    pub fn deactivated(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.of_kind(HandlerKind::End)
    }

    fn of_kind(&self, kind: HandlerKind) -> impl Iterator<Item = &'a str> + 'a {
        let change: &'a ClockChange<'a> = self.change;
        let schema: &'a Schema = change.schema;
        let mut states: Vec<usize> = change
            .changed
            .iter()
            .copied()
            .filter(|&s| handler_of(change, s) == Some(kind))
            .collect();
        states.sort_unstable();
        states.into_iter().map(move |s| schema.name(s))
    }

    /// The source's queue tick after the change.
    pub fn queue_tick(&self) -> u64 {
        self.change.queue_tick
    }

    /// The transition that made the change: on a local machine, its kind, called states and
    /// arguments; `None` on a mirror, and for an import or a schema change.
    pub fn transition(&self) -> Option<&'a Transition<'a>> {
        self.change.transition
    }

    /// The arguments of the transition, when there was one.
    pub fn args(&self) -> Option<&'a Args> {
        self.change.transition.map(|t| t.args)
    }
}

/// Which per-state handler a changed position runs: `end` when it was active and is not,
/// `state` when it is active (its tick changed, so it arrived or was activated again).
fn handler_of(change: &ClockChange<'_>, s: usize) -> Option<HandlerKind> {
    if s >= change.schema.len() {
        return None;
    }
    let tick = |clock: &[u64]| clock.get(s).copied().unwrap_or(0);
    let (before, after) = (tick(change.before), tick(change.after));
    if before == after {
        None
    } else if is_active(after) {
        Some(HandlerKind::State)
    } else if is_active(before) {
        Some(HandlerKind::End)
    } else {
        None
    }
}

/// The handlers by position, for one schema.
#[derive(Default)]
struct Table {
    schema: u64,
    /// The schema's state names, to tell a schema that grew from one that moved states.
    names: Vec<String>,
    state: Vec<Vec<FinalFn>>,
    end: Vec<Vec<FinalFn>>,
    any: Vec<FinalFn>,
}

impl Table {
    /// The handlers whose states `schema` has; the others are left out.
    fn build(schema: &Schema, handlers: &[Named]) -> Table {
        let mut table = Table {
            schema: schema.hash(),
            names: schema.names().map(str::to_owned).collect(),
            state: vec![Vec::new(); schema.len()],
            end: vec![Vec::new(); schema.len()],
            any: Vec::new(),
        };
        for named in handlers {
            let position = named.state.as_deref().and_then(|s| schema.index(s));
            match (named.kind, position) {
                (HandlerKind::State, Some(s)) => table.state[s].push(named.f.clone()),
                (HandlerKind::End, Some(s)) => table.end[s].push(named.f.clone()),
                (HandlerKind::AnyState, _) => table.any.push(named.f.clone()),
                _ => {}
            }
        }
        table
    }
}

/// The observer a bound [`FinalHandlers`] set runs as.
pub(crate) struct FinalObserver {
    handlers: Vec<Named>,
    /// Resolved for the schema of the last change: built anew when a change comes in another
    /// one (a mirror's source changed its schema), so names keep their meaning.
    table: Mutex<Arc<Table>>,
}

impl FinalObserver {
    /// The set resolved against `schema`; an unknown state name refuses the whole set.
    pub fn new(schema: &Schema, handlers: FinalHandlers) -> Result<Self, UnknownState> {
        for named in &handlers.handlers {
            if let Some(state) = &named.state
                && schema.index(state).is_none()
            {
                return Err(UnknownState(state.clone()));
            }
        }
        let table = Table::build(schema, &handlers.handlers);
        Ok(FinalObserver {
            handlers: handlers.handlers,
            table: Mutex::new(Arc::new(table)),
        })
    }

    /// The table for `schema`, and whether the change's clocks compare position by position
    /// (false when its schema moved states: its `before` is of the old one).
    fn table(&self, schema: &Schema) -> (Arc<Table>, bool) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.schema == schema.hash() {
            return (table.clone(), true);
        }
        let grew = table
            .names
            .iter()
            .map(String::as_str)
            .eq(schema.names().take(table.names.len()))
            && table.names.len() <= schema.len();
        *table = Arc::new(Table::build(schema, &self.handlers));
        (table.clone(), grew)
    }

    fn run(&self, change: &ClockChange<'_>, kind: HandlerKind, state: Option<usize>, f: &FinalFn) {
        let event = FinalEvent {
            change,
            handler: kind,
            state,
        };
        let failure = match catch_unwind(AssertUnwindSafe(|| f(&event))) {
            Ok(Ok(())) => return,
            Ok(Err(message)) => message,
            Err(panic) => panic_message(panic.as_ref()),
        };
        tracing::error!(
            source = %change.source.id(),
            handler = %event.handler_name(),
            error = %failure,
            "final handler failed"
        );
    }
}

impl Observer for FinalObserver {
    fn clock_changed(&self, change: &ClockChange<'_>) {
        let tick = |clock: &[u64], s: usize| clock.get(s).copied().unwrap_or(0);
        let (table, comparable) = self.table(change.schema);
        // A schema that grew lists its new positions as changed, with no tick moved.
        let ticked = change
            .changed
            .iter()
            .any(|&s| tick(change.before, s) != tick(change.after, s));
        if !ticked {
            return;
        }
        // A mirror lists the changed positions in the order its diffs named them. After a
        // schema that moved states (a mirror's source became another machine), no state can
        // be said to have arrived or left: only `any_state` runs.
        let mut changed = if comparable {
            change.changed.to_vec()
        } else {
            Vec::new()
        };
        changed.sort_unstable();
        changed.dedup();
        let per_state = |kind: HandlerKind, lists: &[Vec<FinalFn>]| {
            for &s in &changed {
                if handler_of(change, s) != Some(kind) {
                    continue;
                }
                for f in lists.get(s).into_iter().flatten() {
                    self.run(change, kind, Some(s), f);
                }
            }
        };
        per_state(HandlerKind::End, &table.end);
        per_state(HandlerKind::State, &table.state);
        for f in &table.any {
            self.run(change, HandlerKind::AnyState, None, f);
        }
    }
}

#[cfg(test)]
mod tests;
