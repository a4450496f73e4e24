//! The one trait for reads, waits and mutations, shared by local machines and remote mirrors.
//!
//! A server serves any [`StateSource`]; user code holding one does not care whether the clock
//! is local or replicated. Required methods work on state positions; the provided methods take
//! names. Reads treat an unknown name as a never-active state (tick 0); waits and mutations
//! report it as an error.
//!
//! The checks and dumps of asyncmachine's Api (`has`, `is_clock`, `is_time`, `time_sum`,
//! `count_active`, `summary`, `inspect`, ...) are provided methods answered from the source's own
//! schema and clock: local on a mirror too, as in Go's aRPC. `toggle` is a mutation and goes to
//! the source.
//!
//! Three parts of the Api only the machine that runs the transitions can answer, so a mirror
//! asks its source for them, through every hop of a tree: [`StateSource::when_args`] (Go's
//! `WhenArgs`: activations carry arguments, clocks do not), [`StateSource::err`] (Go's
//! `Err()`), and the mutations [`StateSource::add_err`] and [`StateSource::add_err_state`]
//! (Go's `AddErr`, `AddErrState`), built here once on [`StateSource::mutate`].
//!
//! What watches a source is the source's own, on a mirror as on a machine: final handlers
//! ([`StateSource::bind_final`]), tracers, the log, disposal. The trait's docs list the whole
//! Api, name by name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::bind::TracerId;
use super::final_handlers::{FinalBinding, FinalHandlers, FinalObserver};
use super::log::{LogArgs, LogLevel, Logger};
use super::resolve::{MutationKind, is_active};
use super::schema::{EXCEPTION, Schema, UnknownState};
use super::tracer::Tracer;
use super::value::Args;
use super::waiters::{Condition, StateCtx, WaitError, When};

/// The result of a mutation that was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// The transition ran and its clock is in place.
    Executed,
    /// Relations or a negotiation handler refused it; the clock is unchanged.
    Canceled,
    /// The machine was busy; the mutation runs after the ones before it.
    Queued,
}

/// Why a mutation was not taken in at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MutationError {
    /// A state named in the mutation is not in the schema.
    #[error("unknown state {0:?}; check the name against the schema")]
    UnknownState(String),
    /// A state position is outside the schema.
    #[error("state position {0} is outside the schema")]
    BadIndex(usize),
    /// The machine's queue holds its limit of waiting mutations.
    #[error("the mutation queue is full ({limit} waiting); the machine is overloaded, retry later")]
    QueueFull {
        /// The queue's limit ([`MachineBuilder::queue_limit`](super::MachineBuilder::queue_limit)).
        limit: usize,
    },
    /// The machine (or mirror) was disposed; it takes no more mutations.
    #[error("the machine was disposed")]
    Disposed,
    /// A mirror has no session with its source now (connecting or reconnecting); retry once it
    /// is ready, or wait for its `Ready` state.
    #[error("not connected to the source; wait for the mirror to be ready")]
    Disconnected,
    /// The source, or a node on the way, refused it (the ACL, a limit); the reason says which.
    #[error("the source refused the mutation: {0}")]
    Refused(String),
    /// No answer came within this time; the mutation may have run at the source: read the clock
    /// before retrying.
    #[error("no answer from the source within {0:?}; the mutation may or may not have run")]
    Timeout(std::time::Duration),
    /// The link to the source stayed down for the mirror's whole retry deadline: the mutation
    /// was not sent, or was sent and its answer lost; a later retry with the same key cannot run
    /// it twice, but this one gave up.
    #[error(
        "the source could not be reached within {0:?} (the link is down); the mutation did not run, or ran and its answer was lost"
    )]
    Unreachable(std::time::Duration),
    /// More mutations wait for the link than the mirror's retry policy allows.
    #[error(
        "{waiting} mutations already wait for the link to the source (the limit); slow down or raise the mirror's retry limits"
    )]
    RetryQueueFull {
        /// How many wait now (the policy's `max_waiting`).
        waiting: usize,
    },
    /// The source's schema changed while the mutation waited for the link, and its states
    /// are not where they were: the positions it holds would name other states, so it was
    /// not sent. Make it again by name.
    #[error("{}", schema_moved(*sent_before))]
    SchemaMoved {
        /// It went out once before, on a connection that ended unanswered: it may have run.
        sent_before: bool,
    },
}

impl MutationError {
    /// Whether the mutation may or may not have run: no answer came (`Timeout`), the link
    /// stayed down (`Unreachable`) or ended with it in flight (`Disconnected`). Every other
    /// error means it did not run.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            MutationError::Timeout(_) | MutationError::Unreachable(_) | MutationError::Disconnected
        )
    }
}

fn schema_moved(sent_before: bool) -> &'static str {
    if sent_before {
        "the source's schema changed and moved its states before the answer came; the mutation may have run before the change: read the clock, then make it again by name"
    } else {
        "the source's schema changed and moved its states while the mutation waited for the link; it was not sent: make it again by name"
    }
}

/// A mutation's identity across retries and hops (its idempotency key): the mirror that first
/// sent it (its client id and the epoch of its session, new each time the mirror starts) and
/// its number there. A server that has run a key answers a repeat of it from its record
/// instead of running it again; a node forwarding a mutation upstream keeps its key, so a
/// retry at any hop of a tree cannot run it twice (PROTOCOL.md, "Retries and exactly once").
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MutationKey {
    /// The client id of the mirror that first sent it.
    #[serde(deserialize_with = "key_origin")]
    pub origin: String,
    /// Chosen when that mirror started, so its numbers after a restart are new keys.
    pub epoch: u64,
    /// Its number in that mirror's session, from 1.
    pub seq: u64,
}

fn key_origin<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    super::bounded::string(
        deserializer,
        "a mutation key's origin",
        super::bounded::MAX_NAME_LEN,
    )
}

/// A mutation: what to do with which states, and the arguments handlers see.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// Add, remove or set.
    pub kind: MutationKind,
    /// The called states, by position in the source's schema.
    pub states: Vec<usize>,
    /// The arguments handlers see (and `when_args` matches).
    pub args: Args,
    /// Set by the machine for its own auto mutations.
    pub(crate) auto: bool,
    /// Its identity across retries and hops, once a mirror sent it (or a server received it);
    /// `None` for a mutation made on a local machine.
    pub key: Option<MutationKey>,
    /// Who asked for it, when a server runs it for a client: that client's id (a node's
    /// mirrors use the node's name). Not sent on the wire: each hop of a tree sets its own,
    /// and telemetry (`crate::telemetry`) links the hops. Tracers see it.
    pub origin: Option<Arc<str>>,
}

impl Mutation {
    /// A mutation of these states (positions in the schema), not auto.
    pub fn new(kind: MutationKind, states: Vec<usize>, args: Args) -> Self {
        Mutation {
            kind,
            states,
            args,
            auto: false,
            key: None,
            origin: None,
        }
    }

    /// The same mutation with an idempotency key (a server passing on what a client sent).
    pub fn with_key(mut self, key: Option<MutationKey>) -> Self {
        self.key = key;
        self
    }

    /// The same mutation, asked for by the client `client` (see [`Mutation::origin`]).
    pub fn with_origin(mut self, client: &str) -> Self {
        self.origin = Some(Arc::from(client));
        self
    }

    /// Whether the machine made it itself for its auto states.
    pub fn is_auto(&self) -> bool {
        self.auto
    }
}

/// The transition behind a clock change, on the machine that ran it.
#[derive(Debug)]
pub struct Transition<'a> {
    /// Add, remove or set.
    pub kind: MutationKind,
    /// Positions of the called states.
    pub called: &'a [usize],
    /// The mutation's arguments.
    pub args: &'a Args,
    /// Whether it was the machine's own auto mutation.
    pub auto: bool,
}

/// A change of a source's clock, as observers see it.
pub struct ClockChange<'a> {
    /// The source whose clock changed (on a [`DurableMachine`](crate::durable::DurableMachine),
    /// its machine).
    pub source: &'a dyn StateSource,
    /// The schema the positions of the change refer to.
    pub schema: &'a Schema,
    /// The clock before and after.
    pub before: &'a [u64],
    /// The clock after the change.
    pub after: &'a [u64],
    /// The positions whose tick changed (every position when a mirror's schema changed).
    pub changed: &'a [usize],
    /// The queue tick after the change.
    pub queue_tick: u64,
    /// The transition that made the change, on a local machine. A mirror's clock changes by
    /// the diffs and snapshots its source sends: it knows what changed, not why.
    pub transition: Option<&'a Transition<'a>>,
}

impl std::fmt::Debug for ClockChange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClockChange")
            .field("source", &self.source.id())
            .field("before", &self.before)
            .field("after", &self.after)
            .field("changed", &self.changed)
            .field("queue_tick", &self.queue_tick)
            .field("transition", &self.transition)
            .finish()
    }
}

/// A hook that sees every change of a source's clock, after a transition's final handlers.
///
/// Called on the thread that made the change: keep it short and non-blocking (servers only
/// note the change and wake a task).
pub trait Observer: Send + Sync {
    /// The clock changed; `change` holds the clocks before and after and what changed.
    fn clock_changed(&self, change: &ClockChange<'_>);

    /// The source's ancestry changed (a mirror reached, or changed, its upstream).
    fn ancestry_changed(&self, _ancestry: &[String]) {}
}

impl<F: Fn(&ClockChange<'_>) + Send + Sync> Observer for F {
    fn clock_changed(&self, change: &ClockChange<'_>) {
        self(change)
    }
}

/// The upstream of a replicated source, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamInfo {
    /// The upstream's endpoint (`tcp://host:port/name` and the like).
    pub endpoint: String,
    /// `connecting`, `ready` or `disconnected`.
    pub state: &'static str,
    /// Why the last session ended or failed, escaped; `None` if none did.
    pub last_error: Option<String>,
    /// Sessions established after the first.
    pub reconnects: u64,
    /// Mutations sent again after their connection ended unanswered (same key).
    pub mutations_retried: u64,
    /// Mutations that failed at the retry deadline with the link down.
    pub mutations_expired: u64,
    /// Mutations waiting for the link now.
    pub mutations_waiting: u64,
}

/// Identifies an observer registration, for [`StateSource::unobserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObserverId(pub(crate) u64);

/// What a mutation returns: a future, so that a remote source fits the same trait.
pub type MutationFuture =
    Pin<Box<dyn Future<Output = Result<Outcome, MutationError>> + Send + 'static>>;

/// What [`StateSource::err`] returns: the source's last error (`None` when it has had none),
/// or why it could not be asked (a mirror's source out of reach, a refusal on the way).
pub type ErrFuture =
    Pin<Box<dyn Future<Output = Result<Option<String>, MutationError>> + Send + 'static>>;

/// A hook run with a source's id when it is disposed ([`StateSource::on_dispose`]).
pub type DisposeHook = Box<dyn FnOnce(&str) + Send>;

/// The argument that carries the error of an `Exception` activation, as a failing handler and
/// [`StateSource::add_err`] give it.
pub const ERROR_ARG: &str = "error";

/// The mutation of Go's `AddErrState`: activates `state` and `Exception` (only `Exception` when
/// `state` is `Exception`), with `message` as the [`ERROR_ARG`] argument merged into `args`.
pub(crate) fn err_mutation(
    schema: &Schema,
    state: &str,
    message: String,
    mut args: Args,
) -> Result<Mutation, MutationError> {
    let states: &[&str] = if state == EXCEPTION {
        &[EXCEPTION]
    } else {
        &[state, EXCEPTION]
    };
    let idx = schema
        .indices(states)
        .map_err(|name| MutationError::UnknownState(name.to_owned()))?;
    args.insert(ERROR_ARG, message);
    Ok(Mutation::new(MutationKind::Add, idx, args))
}

/// Reads, waits, mutations and observation of a state machine, local or remote.
///
/// Code written against `StateSource` works on a [`Machine`](super::Machine), a network
/// [`Mirror`](crate::mirror::Mirror), a driven mirror or a durable machine alike:
///
/// ```
/// use asyncmachine::prelude::*;
///
/// /// Waits until the source is Ready, whichever kind of source it is.
/// async fn ready(source: &dyn StateSource) -> Result<Vec<String>, Box<dyn std::error::Error>> {
///     if source.not(&["Ready"]) {
///         source.add(&["Ready"], Args::new().with("by", "demo")).await?;
///     }
///     source.when(&["Ready"]).await?;
///     Ok(source.active_states())
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::builder()
///     .state(StateDef::new("Ready"))
///     .state(StateDef::new("Busy").remove(["Ready"]))
///     .build()?;
/// let machine = Machine::new(schema);
/// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
/// let active = runtime.block_on(ready(&machine))?;
/// assert_eq!(active, ["Ready"]);
/// assert_eq!(machine.tick("Ready"), 1); // odd: active
/// # Ok(())
/// # }
/// ```
///
/// # asyncmachine's Api, method by method
///
/// Every method of asyncmachine's `Api` (the interface its aRPC network machine implements),
/// what it is here, and where it is answered: *local* from the source's own schema and clock
/// (on a mirror: its replica), *remote* by the machine that runs the transitions (a mirror
/// asks its source, which asks on up a tree to the root). A [`Machine`](super::Machine)
/// answers everything locally; so does a [`DurableMachine`](crate::durable::DurableMachine),
/// whose mutations resolve once saved.
///
/// | Go | here | on a Mirror |
/// |---|---|---|
/// | `Add1`, `Add` | [`add`](Self::add) (`Machine::add` runs at once) | remote |
/// | `Remove1`, `Remove` | [`remove`](Self::remove) | remote |
/// | `Set` | [`set`](Self::set) | remote |
/// | `AddErr` | [`add_err`](Self::add_err) | remote |
/// | `AddErrState` | [`add_err_state`](Self::add_err_state) | remote |
/// | `WhenArgs` | [`when_args`](Self::when_args) | remote |
/// | `Err` | [`err`](Self::err) | remote |
/// | `IsErr` | [`is_err`](Self::is_err) | local |
/// | `Is`, `Is1` | [`is`](Self::is), [`is1`](Self::is1) | local |
/// | `Not`, `Not1` | [`not`](Self::not), [`not1`](Self::not1) | local |
/// | `Any`, `Any1` | [`any_of`](Self::any_of), [`any`](Self::any) | local |
/// | `Has`, `Has1` | [`has`](Self::has), [`has1`](Self::has1) | local |
/// | `IsTime` | [`is_time`](Self::is_time) | local |
/// | `IsClock` | [`is_clock`](Self::is_clock) | local |
/// | `When`, `When1` | [`when`](Self::when) | local |
/// | `WhenNot`, `WhenNot1` | [`when_not`](Self::when_not) | local |
/// | `WhenTime` | [`when_time`](Self::when_time) | local |
/// | `WhenTicks` | [`when_ticks`](Self::when_ticks) | local |
/// | `WhenTicksEq` | [`when_tick_reaches`](Self::when_tick_reaches) | local |
/// | `WhenErr` | [`when_err`](Self::when_err) | local |
/// | `StateNames` | [`schema`](Self::schema)`().names()` | local |
/// | `ActiveStates` | [`active_states`](Self::active_states) | local |
/// | `Tick` | [`tick`](Self::tick) | local |
/// | `Clock`, `Time` | [`time`](Self::time) (ticks of the states given), [`clock`](Self::clock) (all) | local |
/// | `TimeSum` | [`time_sum`](Self::time_sum) | local |
/// | `NewStateCtx` | [`state_ctx`](Self::state_ctx) | local |
/// | `Export` | [`export`](Self::export) | local (a mirror exports its replica) |
/// | `GetStruct` | [`schema`](Self::schema) | local |
/// | `Switch` | [`switch`](Self::switch), [`switch_group`](Self::switch_group) | local |
/// | `Log` | [`log`](Self::log) | local: the mirror's own log |
/// | `Id` | [`id`](Self::id) | local: the mirror's id |
/// | `ParentId` | [`parent_id`](Self::parent_id) | local (a mirror has none) |
/// | `SetLogger`, `SetLoggerSimple`, `SetLoggerEmpty` | [`set_logger`](Self::set_logger) (`None`: back to `tracing`; a function that drops lines: empty), with [`set_log_level`](Self::set_log_level) | local |
/// | `SetLogLevel` | [`set_log_level`](Self::set_log_level), [`log_level`](Self::log_level) | local |
/// | (log-args mapper) | [`set_log_args`](Self::set_log_args) | local |
/// | `SetLogId`, `GetLogId` | none: the id goes with each line (the `machine` field of `tracing`) | |
/// | `Ctx` | [`when_disposed`](Self::when_disposed), the end a context would signal | local |
/// | `String`, `StringAll` | [`summary`](Self::summary), [`summary_all`](Self::summary_all) | local |
/// | `Inspect` | [`inspect`](Self::inspect) | local |
/// | `Index` | [`index`](Self::index) | local |
/// | `BindHandlers` | [`bind_final`](Self::bind_final) (final handlers, after each change); negotiation and in-transition handlers: `Machine::bind` | local: final handlers only |
/// | `DetachHandlers` | [`unbind_final`](Self::unbind_final); `Machine::unbind` | local |
/// | `StatesVerified` | none: a [`Schema`] is checked when built, and a mirror takes its source's | |
/// | `BindTracer`, `DetachTracer`, `Tracers` | [`bind_tracer`](Self::bind_tracer), [`detach_tracer`](Self::detach_tracer), [`tracers`](Self::tracers) | local: each update is a transition without a mutation |
/// | `Dispose` | [`dispose`](Self::dispose) | local, and the mirror's connection ends |
/// | `WhenDisposed` | [`when_disposed`](Self::when_disposed) | local |
/// | `IsDisposed` | [`is_disposed`](Self::is_disposed) | local |
/// | (`OnDispose`) | [`on_dispose`](Self::on_dispose) | local |
pub trait StateSource: Send + Sync {
    /// The machine's id, unique within its tree.
    fn id(&self) -> &str;

    /// The schema the clock's positions refer to; a mirror's may grow when its source's does.
    fn schema(&self) -> Arc<Schema>;

    /// The whole clock: one tick per state, in schema order; empty for a disposed machine.
    fn clock(&self) -> Vec<u64>;

    /// The tick of the state at a position (0 outside the schema).
    fn tick_at(&self, idx: usize) -> u64;

    /// How many mutations the machine has processed.
    fn queue_tick(&self) -> u64;

    /// A future that resolves when `condition` holds.
    fn wait(&self, condition: Condition) -> When;

    /// Resolves when `state` is activated (or, for a multi state, activated again) by a
    /// mutation whose arguments include all of `args`, compared by value (Go's `WhenArgs`).
    /// Meant for multi states, to pick out one call among many. Only the machine that runs
    /// the transition sees its arguments: a mirror asks its source, which waits (through
    /// every hop up to the root) and answers; dropping the future, or a cancellation bound
    /// with [`When::until`], withdraws the wait up there too.
    ///
    /// A mirror's wait sees the activations that come after it reached the root. A mutation
    /// the same mirror sends after it goes up the same way, behind it, and is seen; one made
    /// elsewhere (at the root, through another mirror) right after the call can get there
    /// first and is not. The root's
    /// [`waiter_count`](crate::machine::Machine::waiter_count) tells when it arrived.
    fn when_args(&self, state: &str, args: Args) -> When;

    /// The last error of the machine (Go's `Err()`): of a failed handler or an
    /// [`add_err`](Self::add_err), kept after `Exception` is removed, until the next one.
    /// A mirror asks its source, through every hop up to the root.
    fn err(&self) -> ErrFuture;

    /// A context canceled when the state at `idx` changes its tick. As in asyncmachine, that
    /// holds for an inactive state too: its context lives until the state is activated.
    fn state_ctx_at(&self, idx: usize) -> StateCtx {
        let tick = self.tick_at(idx);
        // The tick may move between the read and the registration; then the condition already
        // holds and the context starts canceled, which is what it should be.
        StateCtx::new(self.wait(Condition::TickChanged(idx, tick)))
    }

    /// Runs (or queues, or on a mirror sends) a mutation of state positions; the future
    /// resolves with its outcome. Most code uses [`add`](Self::add), [`remove`](Self::remove)
    /// or [`set`](Self::set) by name.
    fn mutate(&self, mutation: Mutation) -> MutationFuture;

    /// Registers an observer and returns the clock it starts from, atomically: the observer
    /// sees every transition after that clock and none before.
    fn observe(&self, observer: Arc<dyn Observer>) -> (ObserverId, Vec<u64>);

    /// Ends an observer's registration; whether it was registered.
    fn unobserve(&self, id: ObserverId) -> bool;

    /// This source's id followed by the ids of the sources it mirrors, nearest first. Servers
    /// send it in the handshake so that a node never mirrors itself or its descendants.
    fn ancestry(&self) -> Vec<String> {
        vec![self.id().to_owned()]
    }

    /// Where a replicated source gets its clock from; `None` for a local machine.
    fn upstream(&self) -> Option<UpstreamInfo> {
        None
    }

    /// This source's state as a file keeps it (Go's `Export`): its id, the schema's names and
    /// hash, the clock and the queue tick; [`super::export`] documents the format. A mirror
    /// exports its replica. The clock and the queue tick are read one after the other, so a
    /// mutation between the two reads shows in the queue tick only; a disposed machine exports
    /// an empty clock, which no machine imports.
    fn export(&self) -> super::export::ExportedState {
        super::export::ExportedState::new(
            self.id(),
            &self.schema(),
            self.clock(),
            self.queue_tick(),
        )
    }

    // ----- what watches the source: tracers, its log, its end (local on a mirror too) -----

    /// Binds a tracer (Go's `BindTracer`); its `machine_init` runs now. A mirror calls its
    /// tracers around each update of its clock ([`super::tracer`] says which hooks).
    fn bind_tracer(&self, tracer: Arc<dyn Tracer>) -> TracerId;

    /// Detaches a tracer (Go's `DetachTracer`); whether it was bound.
    fn detach_tracer(&self, id: TracerId) -> bool;

    /// The tracers bound (Go's `Tracers`).
    fn tracers(&self) -> Vec<Arc<dyn Tracer>>;

    /// How much the source logs ([`super::log`]).
    fn log_level(&self) -> LogLevel;

    /// How much the source logs from now on (Go's `SetLogLevel`).
    fn set_log_level(&self, level: LogLevel);

    /// Where the log goes: a function of the level and the line (Go's `SetLogger`); `None`
    /// goes back to `tracing`.
    fn set_logger(&self, logger: Option<Logger>);

    /// Which arguments mutation lines show (Go's log-args mapper); `None` shows none.
    fn set_log_args(&self, log_args: Option<LogArgs>);

    /// A line of the user's in the source's log, at [`LogLevel::External`] (Go's `Log`).
    /// Lines are single: line breaks become spaces. Nothing once disposed.
    fn log(&self, message: &str);

    /// Ends the source (Go's `Dispose`): waiters end with [`WaitError::Disposed`], observers
    /// (and final handlers) are dropped, mutations are refused with
    /// [`MutationError::Disposed`], reads answer empty (no clock, every tick 0). The first call
    /// runs the dispose hooks, then tells the tracers; later calls do nothing. A mirror also
    /// says goodbye to its server and stops reconnecting.
    fn dispose(&self);

    /// Runs `hook` with the source's id when it is disposed (Go's `OnDispose`); at once when it
    /// already is.
    fn on_dispose(&self, hook: DisposeHook);

    /// Whether the source was disposed (Go's `IsDisposed`).
    fn is_disposed(&self) -> bool;

    // ----- provided: final handlers on any source -----

    /// Binds a set of final handlers, run after each change of the clock is applied, on a
    /// machine and on a mirror alike ([`super::final_handlers`]); nothing is bound when a state
    /// name is unknown. Go's `BindHandlers` as a network machine takes it: final handlers
    /// only, since negotiation happens where the transition runs.
    fn bind_final(&self, handlers: FinalHandlers) -> Result<FinalBinding, UnknownState> {
        let observer = FinalObserver::new(&self.schema(), handlers)?;
        let (id, _) = self.observe(Arc::new(observer));
        Ok(FinalBinding(id))
    }

    /// Unbinds a set bound with [`bind_final`](Self::bind_final) (Go's `DetachHandlers`);
    /// whether it was bound.
    fn unbind_final(&self, binding: FinalBinding) -> bool {
        self.unobserve(binding.0)
    }

    // ----- provided: reads -----

    /// The tick of a state by name (0 for an unknown state).
    fn tick(&self, state: &str) -> u64 {
        self.schema().index(state).map_or(0, |i| self.tick_at(i))
    }

    /// Whether all the states are active.
    fn is(&self, states: &[&str]) -> bool {
        states.iter().all(|s| is_active(self.tick(s)))
    }

    /// Whether the state is active (false for an unknown state).
    fn is1(&self, state: &str) -> bool {
        is_active(self.tick(state))
    }

    /// Whether none of the states is active.
    fn not(&self, states: &[&str]) -> bool {
        states.iter().all(|s| !is_active(self.tick(s)))
    }

    /// Whether at least one of the states is active.
    fn any(&self, states: &[&str]) -> bool {
        states.iter().any(|s| is_active(self.tick(s)))
    }

    /// The ticks of the states, in the order given.
    fn time(&self, states: &[&str]) -> Vec<u64> {
        states.iter().map(|s| self.tick(s)).collect()
    }

    /// The names of the active states, in schema order.
    fn active_states(&self) -> Vec<String> {
        let schema = self.schema();
        // A clock may be shorter than the schema: a disposed machine's is empty.
        let clock = self.clock();
        (0..schema.len().min(clock.len()))
            .filter(|&i| is_active(clock[i]))
            .map(|i| schema.name(i).to_owned())
            .collect()
    }

    /// The first active state of a group, if any: a switch over mutually exclusive states.
    fn switch<'a>(&self, group: &[&'a str]) -> Option<&'a str> {
        group.iter().copied().find(|s| self.is1(s))
    }

    // ----- provided: checks, dumps, groups and identity (Go's Api, answered locally) -----
    //
    // Answered from this source's own schema and clock, on a mirror as on a local machine.

    /// The id of the machine this one belongs to (Go's `ParentId`); `None` when it has none.
    /// A mirror answers its source's, as its last handshake carried it (at any depth of a
    /// tree: each hop passes on what it was given).
    fn parent_id(&self) -> Option<String> {
        None
    }

    /// Free-form labels of the machine (Go's `Tags`). A mirror answers its source's, as its
    /// last handshake carried them: tags set at the source later reach it when it reconnects.
    fn tags(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether the schema has all the states (Go's `Has`).
    fn has(&self, states: &[&str]) -> bool {
        let schema = self.schema();
        states.iter().all(|s| schema.index(s).is_some())
    }

    /// Whether the schema has the state (Go's `Has1`).
    fn has1(&self, state: &str) -> bool {
        self.schema().index(state).is_some()
    }

    /// The state's position in the schema and the clock (Go's `Index1`, which answers -1 for
    /// an unknown state).
    fn index(&self, state: &str) -> Option<usize> {
        self.schema().index(state)
    }

    /// Whether the state is inactive (Go's `Not1`).
    fn not1(&self, state: &str) -> bool {
        !self.is1(state)
    }

    /// Whether all the states of at least one of the sets are active (Go's `Any`; Go's `Any1`,
    /// one of several states, is [`any`](Self::any)).
    fn any_of(&self, sets: &[&[&str]]) -> bool {
        sets.iter().any(|set| self.is(set))
    }

    /// How many of the states are active (Go's `len(ActiveStates(states))`).
    fn count_active(&self, states: &[&str]) -> usize {
        states.iter().filter(|s| self.is1(s)).count()
    }

    /// Whether each named state's tick equals the tick paired with it (Go's `IsClock`): false
    /// as soon as one state changed since the clock was read. Unknown names have tick 0.
    fn is_clock(&self, clock: &[(&str, u64)]) -> bool {
        clock.iter().all(|&(state, tick)| self.tick(state) == tick)
    }

    /// Whether the states' ticks equal `ticks`, position by position (Go's `IsTime`); false
    /// when the lengths differ. For the whole clock, pass every name of the schema.
    fn is_time(&self, ticks: &[u64], states: &[&str]) -> bool {
        ticks.len() == states.len() && states.iter().zip(ticks).all(|(s, &t)| self.tick(s) == t)
    }

    /// The sum of the states' ticks (Go's `TimeSum`): it grows with every change of any of
    /// them, so two sums tell whether something changed in between.
    fn time_sum(&self, states: &[&str]) -> u64 {
        states.iter().map(|s| self.tick(s)).sum()
    }

    /// The first active state of a named group of the schema (Go's `Switch` over a group);
    /// `None` when none is active or the schema has no such group.
    fn switch_group(&self, group: &str) -> Option<String> {
        let schema = self.schema();
        let members = schema.group(group)?;
        let clock = self.clock();
        members
            .iter()
            .find(|&&i| clock.get(i).copied().is_some_and(is_active))
            .map(|&i| schema.name(i).to_owned())
    }

    /// The active states with their ticks, in schema order, on one line (Go's `String`):
    /// `(A:1 B:3)`. Empty for a disposed machine, as in Go.
    fn summary(&self) -> String {
        summarize(&self.schema(), &self.clock(), false)
    }

    /// Every state with its tick, the active ones first in parentheses, the inactive ones in
    /// brackets (Go's `StringAll`): `(A:1 B:3) [C:0 Exception:0]`. Empty for a disposed
    /// machine.
    fn summary_all(&self) -> String {
        summarize(&self.schema(), &self.clock(), true)
    }

    /// A multi-line dump of the states (all of them, in schema order, when `states` is empty):
    /// active or not, tick, flags and relations, in Go's `Inspect` layout. Unknown names are
    /// skipped; empty for a disposed machine.
    fn inspect(&self, states: &[&str]) -> String {
        let schema = self.schema();
        let clock = self.clock();
        if clock.len() < schema.len() {
            return String::new();
        }
        let positions: Vec<usize> = if states.is_empty() {
            (0..schema.len()).collect()
        } else {
            states.iter().filter_map(|s| schema.index(s)).collect()
        };
        let mut out = String::new();
        for i in positions {
            let Some(def) = schema.state(i) else { continue };
            let tick = clock[i];
            out += &format!(
                "{} {}\n    |Tick     {tick}\n",
                u8::from(is_active(tick)),
                def.name
            );
            if def.auto {
                out += "    |Auto     true\n";
            }
            if def.multi {
                out += "    |Multi    true\n";
            }
            for (label, list) in [
                ("Add", &def.add),
                ("Require", &def.require),
                ("Remove", &def.remove),
                ("After", &def.after),
            ] {
                if !list.is_empty() {
                    out += &format!("    |{label:<9}{}\n", list.join(" "));
                }
            }
        }
        out
    }

    // ----- provided: waits -----

    /// Resolves when all the states are active.
    fn when(&self, states: &[&str]) -> When {
        match self.schema().indices(states) {
            Ok(idx) => self.wait(Condition::Active(idx)),
            Err(name) => When::failed(WaitError::UnknownState(name.to_owned())),
        }
    }

    /// Resolves when none of the states is active.
    fn when_not(&self, states: &[&str]) -> When {
        match self.schema().indices(states) {
            Ok(idx) => self.wait(Condition::Inactive(idx)),
            Err(name) => When::failed(WaitError::UnknownState(name.to_owned())),
        }
    }

    /// Resolves when each state's tick has reached the tick at the same position.
    fn when_time(&self, states: &[&str], ticks: &[u64]) -> When {
        match self.schema().indices(states) {
            Ok(idx) => self.wait(Condition::TicksAtLeast(
                idx.into_iter().zip(ticks.iter().copied()).collect(),
            )),
            Err(name) => When::failed(WaitError::UnknownState(name.to_owned())),
        }
    }

    /// Resolves when the state's tick has grown by `n` from now.
    fn when_ticks(&self, state: &str, n: u64) -> When {
        match self.schema().index(state) {
            Some(i) => self.wait(Condition::TicksAtLeast(vec![(i, self.tick_at(i) + n)])),
            None => When::failed(WaitError::UnknownState(state.to_owned())),
        }
    }

    /// Resolves when `Exception` is active.
    fn when_err(&self) -> When {
        let exception = self.schema().exception();
        self.wait(Condition::Active(vec![exception]))
    }

    /// A context canceled when the state's tick changes (for an inactive state: when it is
    /// activated); canceled at once for an unknown state.
    fn state_ctx(&self, state: &str) -> StateCtx {
        match self.schema().index(state) {
            Some(i) => self.state_ctx_at(i),
            None => StateCtx::canceled_from_start(),
        }
    }

    // ----- provided: mutations -----

    /// A mutation of states by name; an unknown name fails with
    /// [`MutationError::UnknownState`] and nothing is done.
    fn mutate_named(&self, kind: MutationKind, states: &[&str], args: Args) -> MutationFuture {
        match self.schema().indices(states) {
            Ok(idx) => self.mutate(Mutation::new(kind, idx, args)),
            Err(name) => {
                let err = MutationError::UnknownState(name.to_owned());
                Box::pin(std::future::ready(Err(err)))
            }
        }
    }

    /// Activates the states (Go's `Add`), resolving with the outcome.
    fn add(&self, states: &[&str], args: Args) -> MutationFuture {
        self.mutate_named(MutationKind::Add, states, args)
    }

    /// Deactivates the states (Go's `Remove`).
    fn remove(&self, states: &[&str], args: Args) -> MutationFuture {
        self.mutate_named(MutationKind::Remove, states, args)
    }

    /// Makes these states the only active ones, besides those their relations keep (Go's `Set`).
    fn set(&self, states: &[&str], args: Args) -> MutationFuture {
        self.mutate_named(MutationKind::Set, states, args)
    }

    /// Removes the states when all are active, adds them otherwise (Go's `Toggle`; with one
    /// state, Go's `Toggle1`). Decided on this source's clock when called.
    fn toggle(&self, states: &[&str], args: Args) -> MutationFuture {
        if self.is(states) {
            self.remove(states, args)
        } else {
            self.add(states, args)
        }
    }

    /// Activates `Exception` with the error as its [`ERROR_ARG`] argument, merged into `args`
    /// (Go's `AddErr`): what a failing handler does. It becomes the machine's last error
    /// ([`err`](Self::err)). On a mirror it goes to the source like any mutation.
    fn add_err(&self, error: &dyn std::fmt::Display, args: Args) -> MutationFuture {
        self.add_err_state(EXCEPTION, error, args)
    }

    /// Activates an error state together with `Exception` (Go's `AddErrState`), the error as
    /// the [`ERROR_ARG`] argument: `state` is typically one that requires `Exception`, such
    /// as a network-error state, so that handlers can tell kinds of failure apart.
    fn add_err_state(
        &self,
        state: &str,
        error: &dyn std::fmt::Display,
        args: Args,
    ) -> MutationFuture {
        match err_mutation(&self.schema(), state, error.to_string(), args) {
            Ok(mutation) => self.mutate(mutation),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    // ----- provided: errors and waits answered from the clock (issue 14, part 3) -----

    /// Whether `Exception` is active (Go's `IsErr`).
    fn is_err(&self) -> bool {
        self.is1(super::schema::EXCEPTION)
    }

    /// Resolves when the state's tick has reached `tick` (Go's `WhenTicksEq`, now `WhenTime1`):
    /// an absolute tick, where [`StateSource::when_ticks`] counts from now.
    fn when_tick_reaches(&self, state: &str, tick: u64) -> When {
        self.when_time(&[state], &[tick])
    }

    /// Resolves when the machine is disposed (Go's `WhenDisposed`); at once when it already
    /// is. Never fails: the disposal is what it waits for.
    fn when_disposed(&self) -> When {
        self.wait(Condition::Disposed)
    }
}

/// Go's `String` and `StringAll` layouts: `(A:1 B:3)`, or with `all`, `(A:1) [B:0 C:2]`.
/// Empty when the clock is shorter than the schema (a disposed machine's).
fn summarize(schema: &Schema, clock: &[u64], all: bool) -> String {
    if clock.len() < schema.len() {
        return String::new();
    }
    let entry = |i: usize| format!("{}:{}", schema.name(i), clock[i]);
    let (active, inactive): (Vec<usize>, Vec<usize>) =
        (0..schema.len()).partition(|&i| is_active(clock[i]));
    let active: Vec<String> = active.into_iter().map(entry).collect();
    let mut out = format!("({})", active.join(" "));
    if all {
        let inactive: Vec<String> = inactive.into_iter().map(entry).collect();
        out += &format!(" [{}]", inactive.join(" "));
    }
    out
}
