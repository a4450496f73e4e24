//! The local machine: a clock, a mutation queue, handlers, waiters and observers.
//!
//! There is no thread or task of its own. A mutation runs on the thread that makes it; a
//! mutation made while a transition is running (from a handler, or from another thread) is
//! queued and run by the thread that is already processing, before that thread returns. As in
//! asyncmachine, a mutation that duplicates one already waiting in the queue (same kind and
//! states, no arguments, no multi state) is skipped; its caller gets the waiting one's outcome.
//! Handlers run without the machine's lock held, so they can read the machine; the lock guards
//! only the clock, the queue, the waiters and the observer list.
//!
//! The queue tick counts the mutations the machine has taken from its callers and processed;
//! as in asyncmachine, the ones it prepends itself (auto mutations, the `Exception` of a failed
//! handler) take none. So a queued mutation knows its queue tick in advance:
//! [`Machine::mutate_tracked`] returns it in a [`Receipt`] and [`Machine::when_queue`] waits
//! for it. Go's `Result` is that tick for a queued mutation; our [`Outcome`] stays a plain
//! enum, because it is part of the wire format (`MutateResult`), hence the separate method.
//!
//! Errors: [`Machine::add_err`] and [`Machine::add_err_state`] activate `Exception` with the
//! error as the `error` argument, as a failed handler does; [`Machine::last_error`] is the last
//! one (Go's `Err()`), and [`StateSource::is_err`] whether `Exception` is active.
//!
//! Dry runs ([`Machine::can_add`], [`Machine::can_remove`]) resolve the relations against the
//! current clock without applying anything. Go's also run the negotiation handlers (through
//! the queue, so from inside a handler they only come back `Queued`); ours run no handler, so
//! a dry run has no side effect and answers at once, from anywhere.

mod eval;
mod handlers;
mod import;
mod queries;
mod schema_change;
mod transition;

pub use eval::EvalFuture;
pub use schema_change::SchemaChangeError;

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use tracing::{debug, error, warn};

use super::bind::{Binding, HandlerTable, Handlers, TracerId};
use super::handlers::{Completion, Event, HandlerKind, Verdict, panic_message};
use super::log::{LogArgs, LogLevel, Logger, MachineLog};
use super::observers::Observers;
use super::resolve::{
    CancelReason, MutationKind, Order, Plan, Scratch, is_active, resolve, resolve_in,
};
use super::schema::EXCEPTION;
use super::schema::Schema;
use super::source::{
    ClockChange, DisposeHook, ErrFuture, Mutation, MutationError, MutationFuture, Observer,
    ObserverId, Outcome, StateSource, Transition,
};
use super::tracer::Tracer;
use super::value::Args;
use super::waiters::{Condition, WaitError, WaiterHost, WaiterSet, When, make_when};
use eval::EvalJob;
use queries::note_error;
use transition::Turn;

/// Default bound of the mutation queue.
pub const DEFAULT_QUEUE_LIMIT: usize = 1024;

/// A handler was registered for a state the schema does not have (defined with the schema,
/// whose lookups report it too).
pub use super::schema::UnknownState;

/// A local state machine. Cheap to clone: clones share one machine.
///
/// Handlers should reach the machine through [`Event::machine`] rather than capture a clone:
/// a captured clone keeps the machine alive for as long as the handler is registered.
///
/// Mutations called from outside a handler run at once and return their [`Outcome`]; called
/// from a handler they are queued and run after the current transition. Reads, waits and
/// observation come from [`StateSource`], which a `Machine` implements.
///
/// ```
/// use asyncmachine::prelude::*;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let schema = Schema::builder()
///     .state(StateDef::new("Connected"))
///     .state(StateDef::new("Downloading").require(["Connected"]))
///     .state(StateDef::new("Done").remove(["Downloading"]))
///     .build()?;
/// let machine = Machine::builder(schema).id("download").build();
///
/// // A negotiation handler may refuse the transition: no download without a URL.
/// machine.on_enter("Downloading", |e| e.arg("url").is_some())?;
/// // A final handler runs once the state is active; its mutation is queued.
/// machine.on_state("Downloading", |e| e.machine().add(&["Done"], Args::new()).map(drop))?;
///
/// // Refused by the relations: Downloading requires Connected.
/// assert_eq!(machine.add(&["Downloading"], Args::new())?, Outcome::Canceled);
/// machine.add(&["Connected"], Args::new())?;
/// // Refused by the handler: no `url` argument.
/// assert_eq!(machine.add(&["Downloading"], Args::new())?, Outcome::Canceled);
/// let args = Args::new().with("url", "https://example.invalid/a");
/// assert_eq!(machine.add(&["Downloading"], args)?, Outcome::Executed);
/// // Done ran right after and removed Downloading.
/// assert!(machine.is(&["Connected", "Done"]) && machine.not(&["Downloading"]));
/// // Ticks count activations and deactivations: odd is active.
/// assert_eq!(machine.tick("Downloading"), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Machine {
    shared: Arc<Shared>,
}

struct Shared {
    id: String,
    core: Mutex<Core>,
    next_binding: AtomicU64,
    queue_limit: usize,
    parent_id: Option<String>,
    tags: Mutex<Vec<String>>,
    /// The handler timeout and the clock it is measured with, when set.
    timing: Option<HandlerTiming>,
    log: MachineLog,
    dispose_hooks: Mutex<Vec<DisposeHook>>,
}

/// A monotonic clock for handler timeouts: the time since any fixed start.
pub type TimeSource = Arc<dyn Fn() -> std::time::Duration + Send + Sync>;

struct HandlerTiming {
    limit: std::time::Duration,
    now: TimeSource,
}

/// What waits in the queue: a mutation, or a closure to run in the machine's turn.
enum Item {
    Mutation(Mutation),
    Eval(EvalJob),
}

/// A mutation waiting in the queue, with the slots of callers who wait for its outcome (more
/// than one when duplicates of it were skipped).
struct Queued {
    item: Item,
    done: Vec<Arc<OutcomeSlot>>,
    /// The queue tick it takes when processed; `None` for the machine's own prepended
    /// mutations, which take none.
    tick: Option<u64>,
}

impl From<Mutation> for Queued {
    /// A mutation the machine prepends itself (no queue tick).
    fn from(mutation: Mutation) -> Self {
        Queued {
            item: Item::Mutation(mutation),
            done: Vec::new(),
            tick: None,
        }
    }
}

/// What a mutation returned, with its queue tick; see [`Machine::mutate_tracked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Whether the mutation was executed, canceled or queued.
    pub outcome: Outcome,
    /// The queue tick the mutation took (it ran) or will take (it is queued): once
    /// [`StateSource::queue_tick`] reaches it, the mutation has been processed. A skipped
    /// duplicate has the tick of the queued mutation it duplicates.
    pub queue_tick: u64,
}

impl Queued {
    fn mutation(&self) -> Option<&Mutation> {
        match &self.item {
            Item::Mutation(mutation) => Some(mutation),
            Item::Eval(_) => None,
        }
    }

    /// Whether `other` would do what this queued mutation does, as asyncmachine decides it
    /// for skipping: same kind, the same states, and neither has arguments. Mutations of
    /// multi states are never duplicates (each call is a new activation), nor are the
    /// machine's own auto mutations.
    fn duplicates(&self, other: &Mutation, schema: &Schema) -> bool {
        let Some(queued) = self.mutation() else {
            return false;
        };
        !queued.auto
            && !other.auto
            && queued.kind == other.kind
            && queued.args.is_empty()
            && other.args.is_empty()
            && queued.states.len() == other.states.len()
            && other.states.iter().all(|s| queued.states.contains(s))
            && !other.states.iter().any(|&s| schema.resolved(s).multi)
    }
}

/// Where the processing thread leaves a queued mutation's outcome for its waiting caller.
#[derive(Default)]
struct OutcomeSlot {
    result: Mutex<Option<Result<Outcome, MutationError>>>,
    waker: Mutex<Option<Waker>>,
}

impl OutcomeSlot {
    fn complete(&self, result: Result<Outcome, MutationError>) {
        *lock(&self.result) = Some(result);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }
}

/// Resolves with a queued mutation's outcome once the processing thread has run it.
struct QueuedOutcome(Arc<OutcomeSlot>);

impl Future for QueuedOutcome {
    type Output = Result<Outcome, MutationError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = lock(&self.0.result).take() {
            return Poll::Ready(result);
        }
        *lock(&self.0.waker) = Some(cx.waker().clone());
        // Re-check: the outcome may have landed between the first look and the waker.
        match lock(&self.0.result).take() {
            Some(result) => Poll::Ready(result),
            None => Poll::Pending,
        }
    }
}

/// What became of a submitted mutation.
enum Submitted {
    /// Ran now, taking this queue tick.
    Done(Outcome, u64),
    /// Queued behind a running transition, to take this queue tick; with a slot when the
    /// caller waits for the outcome.
    Queued(Option<Arc<OutcomeSlot>>, u64),
}

/// Fails the waiting callers of mutations that will never run.
fn abandon(queue: VecDeque<Queued>) {
    for queued in queue {
        for done in queued.done {
            done.complete(Err(MutationError::Disposed));
        }
        if let Item::Eval(job) = queued.item {
            job.abandon();
        }
    }
}

struct Core {
    /// Replaced whole by [`Machine::set_schema`]; a transition works on the one it started with.
    schema: Arc<Schema>,
    /// Handlers and tracers, copied on write (see [`crate::machine::bind`]); a transition works
    /// on the table it started with.
    handlers: Arc<HandlerTable>,
    ticks: Vec<u64>,
    /// Buffers a transition works in, kept between transitions so that the hot path
    /// allocates little: resolution's, the last plan's and the last clock copy's.
    scratch: Scratch,
    spare_plan: Option<Plan>,
    spare_ticks: Vec<u64>,
    /// The active states in the order the last transition listed them (its plan's targets):
    /// asyncmachine orders the handlers of unrelated states by it.
    order: Vec<usize>,
    queue: VecDeque<Queued>,
    queue_tick: u64,
    /// Queued mutations that will take a queue tick (the ones callers queued).
    pending_ticks: u64,
    /// Whether some thread is running transitions (and will drain the queue), and which.
    processing: bool,
    processing_thread: Option<std::thread::ThreadId>,
    /// Whether the processing thread is running an eval (not a handler).
    in_eval: bool,
    /// The last error a handler failed with or [`Machine::add_err`] added.
    last_error: Option<String>,
    waiters: WaiterSet,
    observers: Observers,
    disposed: bool,
}

impl Core {
    /// Whether a mutation may be taken: its states exist and the machine is not disposed.
    fn admit(&self, mutation: &Mutation) -> Result<(), MutationError> {
        let n = self.schema.len();
        if let Some(&bad) = mutation.states.iter().find(|&&s| s >= n) {
            return Err(MutationError::BadIndex(bad));
        }
        if self.disposed {
            return Err(MutationError::Disposed);
        }
        Ok(())
    }

    /// The calling thread becomes the one that runs transitions and drains the queue.
    fn start_processing(&mut self) {
        self.processing = true;
        self.processing_thread = Some(std::thread::current().id());
    }
}

impl WaiterHost for Shared {
    fn cancel_waiter(&self, id: u64) {
        lock(&self.core).waiters.remove(id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Handlers run outside the lock and their panics are caught, so a poisoned lock can only
    // come from a bug in this module; the data is still consistent between statements.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Configures a [`Machine`].
pub struct MachineBuilder {
    schema: Arc<Schema>,
    id: Option<String>,
    queue_limit: usize,
    parent_id: Option<String>,
    tags: Vec<String>,
    handler_timeout: Option<std::time::Duration>,
    time_source: Option<TimeSource>,
    log_level: LogLevel,
    tracers: Vec<Arc<dyn Tracer>>,
}

impl std::fmt::Debug for MachineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineBuilder")
            .field("states", &self.schema.len())
            .field("id", &self.id)
            .field("queue_limit", &self.queue_limit)
            .field("handler_timeout", &self.handler_timeout)
            .field("log_level", &self.log_level)
            .finish()
    }
}

/// Time since a fixed start, from the system's monotonic clock.
fn monotonic() -> TimeSource {
    let start = std::time::Instant::now();
    Arc::new(move || start.elapsed())
}

impl MachineBuilder {
    /// The machine's id, as mirrors, logs and exported states name it; `machine-N` (a number
    /// unique in this process) when not set.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// How many mutations may wait in the queue; more are refused with
    /// [`MutationError::QueueFull`].
    pub fn queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = limit.max(1);
        self
    }

    /// The id of the machine this one belongs to (Go's `Opts.Parent`), answered by
    /// [`StateSource::parent_id`].
    pub fn parent(mut self, parent_id: impl Into<String>) -> Self {
        self.parent_id = Some(parent_id.into());
        self
    }

    /// Free-form labels of the machine (Go's `Opts.Tags`), answered by [`StateSource::tags`].
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Fails a handler that runs longer than `limit` (Go's `HandlerTimeout`): a negotiation
    /// handler cancels its transition, a final one stops it, and `Exception` is activated with
    /// a "handler timeout" error. Checked when the handler returns, since a synchronous
    /// handler cannot be preempted. Off by default.
    pub fn handler_timeout(mut self, limit: std::time::Duration) -> Self {
        self.handler_timeout = Some(limit);
        self
    }

    /// The clock handler timeouts are measured with: any monotonic time since a fixed start.
    /// By default the system's (`std::time::Instant`); give one where that has none (in
    /// WebAssembly, `performance.now()`), or a manual one in tests.
    pub fn time_source(mut self, now: TimeSource) -> Self {
        self.time_source = Some(now);
        self
    }

    /// How much the machine logs (see [`crate::machine::log`]); by default the level of the
    /// `AM_LOG` environment variable, or nothing.
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// A tracer bound from the start (Go's `Opts.Tracers`), so it sees the first transition.
    pub fn tracer(mut self, tracer: Arc<dyn Tracer>) -> Self {
        self.tracers.push(tracer);
        self
    }

    /// The machine, with the tracers given bound.
    pub fn build(self) -> Machine {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = self
            .id
            .unwrap_or_else(|| format!("machine-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)));
        let n = self.schema.len();
        let tracers = self.tracers;
        let machine = Machine {
            shared: Arc::new(Shared {
                id,
                core: Mutex::new(Core {
                    schema: self.schema,
                    handlers: Arc::new(HandlerTable::new(n)),
                    ticks: vec![0; n],
                    scratch: Scratch::default(),
                    spare_plan: None,
                    spare_ticks: Vec::new(),
                    order: Vec::new(),
                    queue: VecDeque::new(),
                    queue_tick: 0,
                    pending_ticks: 0,
                    processing: false,
                    processing_thread: None,
                    in_eval: false,
                    last_error: None,
                    waiters: WaiterSet::new(n),
                    observers: Observers::default(),
                    disposed: false,
                }),
                next_binding: AtomicU64::new(1),
                queue_limit: self.queue_limit,
                parent_id: self.parent_id,
                tags: Mutex::new(self.tags),
                timing: self.handler_timeout.map(|limit| HandlerTiming {
                    limit,
                    now: self.time_source.unwrap_or_else(monotonic),
                }),
                log: MachineLog::new(self.log_level),
                dispose_hooks: Mutex::new(Vec::new()),
            }),
        };
        for tracer in tracers {
            machine.bind_tracer(tracer);
        }
        machine
    }
}

impl Machine {
    /// A machine of this schema with every state inactive and the default options (see
    /// [`Machine::builder`]).
    pub fn new(schema: impl Into<Arc<Schema>>) -> Self {
        Self::builder(schema).build()
    }

    /// A builder for a machine of this schema, to set its id, queue limit (default
    /// [`DEFAULT_QUEUE_LIMIT`]), handler timeout, log level (default from `AM_LOG`) and tracers.
    pub fn builder(schema: impl Into<Arc<Schema>>) -> MachineBuilder {
        MachineBuilder {
            schema: schema.into(),
            id: None,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            parent_id: None,
            tags: Vec::new(),
            handler_timeout: None,
            time_source: None,
            log_level: LogLevel::from_env(""),
            tracers: Vec::new(),
        }
    }

    /// Replaces the machine's tags (Go's `SetTags`).
    pub fn set_tags<I: IntoIterator<Item = S>, S: Into<String>>(&self, tags: I) {
        *lock(&self.shared.tags) = tags.into_iter().map(Into::into).collect();
    }

    /// The schema now (shared: [`Machine::set_schema`] replaces it, never edits it).
    pub(crate) fn schema_ref(&self) -> Arc<Schema> {
        self.core().schema.clone()
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.shared.core)
    }

    // ----- synchronous mutations -----

    /// Activates the states. From inside a handler, or while another thread is running a
    /// transition, the mutation is queued and the result is [`Outcome::Queued`].
    pub fn add(&self, states: &[&str], args: Args) -> Result<Outcome, MutationError> {
        self.mutate_named(MutationKind::Add, states, args)
    }

    /// Deactivates the states.
    pub fn remove(&self, states: &[&str], args: Args) -> Result<Outcome, MutationError> {
        self.mutate_named(MutationKind::Remove, states, args)
    }

    /// Activates exactly the states, deactivating all others.
    pub fn set(&self, states: &[&str], args: Args) -> Result<Outcome, MutationError> {
        self.mutate_named(MutationKind::Set, states, args)
    }

    /// A mutation of named states, its names resolved under the same lock that takes it.
    fn mutate_named(
        &self,
        kind: MutationKind,
        states: &[&str],
        args: Args,
    ) -> Result<Outcome, MutationError> {
        let make = |schema: &Schema| {
            let idx = schema
                .indices(states)
                .map_err(|name| MutationError::UnknownState(name.to_owned()))?;
            Ok(Mutation::new(kind, idx, args))
        };
        Ok(match self.submit(false, make)? {
            Submitted::Done(outcome, _) => outcome,
            Submitted::Queued(..) => Outcome::Queued,
        })
    }

    fn named(
        &self,
        kind: MutationKind,
        states: &[&str],
        args: Args,
    ) -> Result<Mutation, MutationError> {
        let idx = self
            .schema_ref()
            .indices(states)
            .map_err(|name| MutationError::UnknownState(name.to_owned()))?;
        Ok(Mutation::new(kind, idx, args))
    }

    /// Runs a mutation now, or queues it when a transition is in progress (then the result is
    /// [`Outcome::Queued`]). The async [`StateSource::mutate`] instead waits for a queued
    /// mutation to run and returns its real outcome.
    pub fn mutate_now(&self, mutation: Mutation) -> Result<Outcome, MutationError> {
        self.mutate_tracked(mutation).map(|receipt| receipt.outcome)
    }

    /// [`Machine::mutate_now`] with the queue tick the mutation takes (Go's `Result` of a
    /// queued mutation): wait for it to be processed with [`Machine::when_queue`].
    pub fn mutate_tracked(&self, mutation: Mutation) -> Result<Receipt, MutationError> {
        Ok(match self.submit(false, |_| Ok(mutation))? {
            Submitted::Done(outcome, queue_tick) => Receipt {
                outcome,
                queue_tick,
            },
            Submitted::Queued(_, queue_tick) => Receipt {
                outcome: Outcome::Queued,
                queue_tick,
            },
        })
    }

    /// A mutation of the named states, for [`Machine::mutate_tracked`] and
    /// [`StateSource::mutate`].
    pub fn mutation(
        &self,
        kind: MutationKind,
        states: &[&str],
        args: Args,
    ) -> Result<Mutation, MutationError> {
        self.named(kind, states, args)
    }

    /// Runs a mutation now, or puts it at the head of the queue when a transition is in
    /// progress (Go's `PrependMut`): it runs before everything queued, and, like the machine's
    /// own prepended mutations, takes no queue tick. For a mutation that must not wait behind
    /// others, such as an error report; use sparingly, since it reorders what callers queued.
    pub fn prepend(&self, mutation: Mutation) -> Result<Outcome, MutationError> {
        {
            let mut core = self.core();
            core.admit(&mutation)?;
            note_error(&mut core, &mutation);
            if core.processing {
                core.queue.push_front(mutation.into());
                return Ok(Outcome::Queued);
            }
            core.start_processing();
        }
        Ok(self.process(|turn| self.transition(turn, &mutation, false, None).0))
    }

    /// Runs `first` as the processing thread (the caller has taken the role), then everything
    /// queued meanwhile, then gives the role up.
    fn process<T>(&self, first: impl FnOnce(&mut Option<Turn>) -> T) -> T {
        let mut guard = ProcessingGuard {
            machine: self,
            armed: true,
        };
        // The schema and handlers this processing turn works with, kept across its
        // transitions (see `Turn`).
        let mut turn = None;
        let out = first(&mut turn);
        self.drain(&mut turn);
        guard.armed = false;
        out
    }

    /// Takes a mutation in (`make` builds it from the schema, under the core's lock): runs it
    /// now, or queues it behind a running transition.
    fn submit(
        &self,
        track: bool,
        make: impl FnOnce(&Schema) -> Result<Mutation, MutationError>,
    ) -> Result<Submitted, MutationError> {
        let mutation;
        let mut guard = self.core();
        {
            let core = &mut *guard;
            mutation = make(&core.schema)?;
            core.admit(&mutation)?;
            note_error(core, &mutation);
            if core.processing {
                let schema = &core.schema;
                if let Some(queued) = core
                    .queue
                    .iter_mut()
                    .find(|q| q.duplicates(&mutation, schema))
                {
                    // As in asyncmachine, a duplicate of a queued mutation is skipped; a caller
                    // who waits gets the queued one's outcome.
                    debug!(machine = %self.shared.id, kind = %mutation.kind, "duplicate of a queued mutation; skipped");
                    let done = track.then(|| Arc::new(OutcomeSlot::default()));
                    queued.done.extend(done.clone());
                    // A duplicate is never the machine's own (those are not compared).
                    let tick = queued.tick.unwrap_or(core.queue_tick);
                    return Ok(Submitted::Queued(done, tick));
                }
                let limit = self.shared.queue_limit;
                if core.queue.len() >= limit {
                    warn!(machine = %self.shared.id, limit, "mutation queue full; refusing mutation");
                    return Err(MutationError::QueueFull { limit });
                }
                let done = track.then(|| Arc::new(OutcomeSlot::default()));
                core.pending_ticks += 1;
                let tick = core.queue_tick + core.pending_ticks;
                // Tracers hear of it outside the lock (a copy only when someone traces).
                let traced = core
                    .handlers
                    .tracers()
                    .iter()
                    .any(|(_, t)| t.wants_queued())
                    .then(|| (core.handlers.clone(), core.schema.clone(), mutation.clone()));
                core.queue.push_back(Queued {
                    item: Item::Mutation(mutation),
                    done: done.iter().cloned().collect(),
                    tick: Some(tick),
                });
                drop(guard);
                if let Some((handlers, schema, mutation)) = traced {
                    for (_, tracer) in handlers.tracers().iter().filter(|(_, t)| t.wants_queued()) {
                        tracer.mutation_queued(&self.shared.id, &schema, &mutation, tick);
                    }
                }
                return Ok(Submitted::Queued(done, tick));
            }
            core.start_processing();
        }
        // The transition starts in this turn of the lock.
        let (outcome, tick) =
            self.process(|turn| self.transition(turn, &mutation, true, Some(guard)));
        Ok(Submitted::Done(outcome, tick))
    }

    /// Runs queued mutations until the queue is empty, then gives up the processing role.
    fn drain(&self, turn: &mut Option<Turn>) {
        loop {
            let (next, core) = {
                let mut core = self.core();
                match core.queue.pop_front() {
                    Some(next) if !core.disposed => {
                        if next.tick.is_some() {
                            core.pending_ticks -= 1;
                        }
                        (next, core)
                    }
                    popped => {
                        let mut rest = std::mem::take(&mut core.queue);
                        rest.extend(popped);
                        core.processing = false;
                        core.processing_thread = None;
                        core.pending_ticks = 0;
                        core.waiters.queue_ended();
                        let handlers = core.handlers.clone();
                        drop(core);
                        abandon(rest);
                        for (_, tracer) in handlers.tracers() {
                            tracer.queue_end(self);
                        }
                        return;
                    }
                }
            };
            match next.item {
                Item::Mutation(mutation) => {
                    // The transition starts in the turn of the lock that took it out.
                    let ticked = next.tick.is_some();
                    let (outcome, _) = self.transition(turn, &mutation, ticked, Some(core));
                    for done in next.done {
                        done.complete(Ok(outcome));
                    }
                }
                Item::Eval(job) => {
                    drop(core);
                    self.run_eval(job)
                }
            }
        }
    }

    // ----- lifecycle and introspection -----

    /// Ends the machine: waiters end with [`WaitError::Disposed`], queued mutations are dropped
    /// and new ones are refused, and reads answer empty (no clock, every tick 0, no active
    /// state), as asyncmachine's do. Go answers mutations of a disposed machine `Canceled`;
    /// here they are [`MutationError::Disposed`], an error the caller can tell apart.
    ///
    /// The first call runs the dispose hooks ([`Machine::on_dispose`]) and tells the tracers;
    /// later calls do nothing.
    pub fn dispose(&self) {
        let queued = {
            let mut core = self.core();
            if core.disposed {
                return;
            }
            core.disposed = true;
            core.waiters.close();
            core.observers.clear();
            core.pending_ticks = 0;
            std::mem::take(&mut core.queue)
        };
        abandon(queued);
        let hooks = std::mem::take(&mut *lock(&self.shared.dispose_hooks));
        for hook in hooks {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| hook(&self.shared.id))) {
                error!(machine = %self.shared.id, error = %panic_message(panic.as_ref()), "dispose hook failed");
            }
        }
        let handlers = self.core().handlers.clone();
        for (_, tracer) in handlers.tracers() {
            tracer.machine_dispose(&self.shared.id);
        }
    }

    /// Runs `hook` with the machine's id when the machine is disposed (Go's `OnDispose`); at
    /// once when it already is.
    pub fn on_dispose(&self, hook: impl FnOnce(&str) + Send + 'static) {
        // Checked under the hooks' lock: a dispose that starts now takes the hooks after.
        let mut hooks = lock(&self.shared.dispose_hooks);
        if !self.is_disposed() {
            hooks.push(Box::new(hook));
            return;
        }
        drop(hooks);
        hook(&self.shared.id);
    }

    /// Whether [`dispose`](StateSource::dispose) was called: a disposed machine answers reads
    /// empty and refuses mutations with `Disposed`.
    pub fn is_disposed(&self) -> bool {
        self.core().disposed
    }

    /// Mutations waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.core().queue.len()
    }

    /// Registered waiters (pending ones only).
    pub fn waiter_count(&self) -> usize {
        self.core().waiters.len()
    }
}

/// Gives up the processing role if a transition unwinds (a bug in this module, since handler
/// panics are caught), so that the machine does not stay busy forever.
struct ProcessingGuard<'a> {
    machine: &'a Machine,
    armed: bool,
}

impl Drop for ProcessingGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let queued = {
            let mut core = self.machine.core();
            core.processing = false;
            core.processing_thread = None;
            core.in_eval = false;
            core.pending_ticks = 0;
            core.waiters.queue_ended();
            std::mem::take(&mut core.queue)
        };
        abandon(queued);
    }
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let core = self.core();
        f.debug_struct("Machine")
            .field("id", &self.shared.id)
            .field("states", &self.schema_ref().len())
            .field("ticks", &core.ticks)
            .field("queue_tick", &core.queue_tick)
            .finish()
    }
}

impl StateSource for Machine {
    fn id(&self) -> &str {
        &self.shared.id
    }

    fn schema(&self) -> Arc<Schema> {
        self.schema_ref()
    }

    fn parent_id(&self) -> Option<String> {
        self.shared.parent_id.clone()
    }

    fn tags(&self) -> Vec<String> {
        lock(&self.shared.tags).clone()
    }

    /// Empty once disposed, as asyncmachine answers reads of a disposed machine.
    fn clock(&self) -> Vec<u64> {
        let core = self.core();
        if core.disposed {
            return Vec::new();
        }
        core.ticks.clone()
    }

    /// One turn of the lock for the name and the tick (the provided method takes two).
    fn tick(&self, state: &str) -> u64 {
        let core = self.core();
        if core.disposed {
            return 0;
        }
        core.schema.index(state).map_or(0, |i| core.ticks[i])
    }

    /// 0 once disposed.
    fn tick_at(&self, idx: usize) -> u64 {
        let core = self.core();
        if core.disposed {
            return 0;
        }
        core.ticks.get(idx).copied().unwrap_or(0)
    }

    fn queue_tick(&self) -> u64 {
        self.core().queue_tick
    }

    fn wait(&self, condition: Condition) -> When {
        let mut core = self.core();
        let core = &mut *core;
        make_when(
            self.waiter_host(),
            core.waiters.register(&core.ticks, condition),
        )
    }

    fn mutate(&self, mutation: Mutation) -> MutationFuture {
        match self.submit(true, |_| Ok(mutation)) {
            Ok(Submitted::Queued(Some(done), _)) => Box::pin(QueuedOutcome(done)),
            Ok(Submitted::Queued(None, _)) => Box::pin(std::future::ready(Ok(Outcome::Queued))),
            Ok(Submitted::Done(outcome, _)) => Box::pin(std::future::ready(Ok(outcome))),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn observe(&self, observer: Arc<dyn Observer>) -> (ObserverId, Vec<u64>) {
        let mut core = self.core();
        let id = core.observers.add(observer);
        (id, core.ticks.clone())
    }

    fn unobserve(&self, id: ObserverId) -> bool {
        self.core().observers.remove(id)
    }

    fn when_args(&self, state: &str, args: Args) -> When {
        self.wait_for_args(state, args)
    }

    fn err(&self) -> ErrFuture {
        Box::pin(std::future::ready(Ok(self.last_error())))
    }

    fn bind_tracer(&self, tracer: Arc<dyn Tracer>) -> TracerId {
        Machine::bind_tracer(self, tracer)
    }

    fn detach_tracer(&self, id: TracerId) -> bool {
        Machine::detach_tracer(self, id)
    }

    fn tracers(&self) -> Vec<Arc<dyn Tracer>> {
        Machine::tracers(self)
    }

    fn log_level(&self) -> LogLevel {
        Machine::log_level(self)
    }

    fn set_log_level(&self, level: LogLevel) {
        Machine::set_log_level(self, level);
    }

    fn set_logger(&self, logger: Option<Logger>) {
        Machine::set_logger(self, logger);
    }

    fn set_log_args(&self, log_args: Option<LogArgs>) {
        Machine::set_log_args(self, log_args);
    }

    fn log(&self, message: &str) {
        Machine::log(self, message);
    }

    fn dispose(&self) {
        Machine::dispose(self);
    }

    fn on_dispose(&self, hook: DisposeHook) {
        Machine::on_dispose(self, hook);
    }

    fn is_disposed(&self) -> bool {
        Machine::is_disposed(self)
    }
}
