//! The replica: a mirror without its pump. It holds a client session (which holds the clock)
//! and the machine side around it: waiters, remote waits, observers (final handlers among
//! them), tracers, the log, disposal, and the answers callers wait for. It does no I/O and
//! needs no runtime; a pump hands it what arrives and the time, and sends what it queues.
//!
//! Two pumps use it: the network mirror ([`crate::mirror::Mirror`], a tokio task over a
//! transport, with reconnects, timeouts and counters) and the driven mirror
//! ([`crate::driven::DrivenMirror`], an outside event loop such as a browser's). What a
//! mirror answers and how it tells its watchers is written once, here; each pump's
//! `StateSource` face delegates to [`ReplicaCore`].
//!
//! - `state`: the state behind the lock and what the session's events mean to it;
//! - `effects`: what an input calls for once the lock is released;
//! - this file: [`ReplicaCore`], the shared handle.

mod effects;
mod state;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use futures_channel::oneshot;

use crate::machine::handlers::panic_message;
use crate::machine::log::MachineLog;
use crate::machine::waiters::{Registration, WaiterHost, make_when};
use crate::machine::{
    Args, Condition, DisposeHook, LogArgs, LogLevel, Logger, Mutation, MutationError, Observer,
    ObserverId, Schema, StateSource, Tracer, TracerId, WaitError, When,
};
use crate::proto::session::{ClientSession, Moment};

pub(crate) use effects::Effects;
pub use effects::ReplicaEvent;
pub(crate) use state::{ErrAnswer, MutationAnswer, Pending, Replica};

/// Called when the session queued bytes outside an input (a mutation, a withdrawn wait): the
/// pump should take them.
pub(crate) type Wake = Box<dyn Fn() + Send + Sync>;

/// The pump's clock, the one it hands the session's inputs: when a mutation is made, for its
/// retry deadline.
pub(crate) type Clock = Box<dyn Fn() -> Moment + Send + Sync>;

/// The replica shared by a mirror's handles: its state behind one lock, its log and dispose
/// hooks, and how to wake its pump.
pub(crate) struct ReplicaCore {
    pub id: String,
    replica: Mutex<Replica>,
    /// The replica's log; its state shares it to know when changes are logged.
    pub log: Arc<MachineLog>,
    dispose_hooks: Mutex<Vec<DisposeHook>>,
    wake: Wake,
    clock: Clock,
}

/// What one input to the session did, once its effects were applied.
#[derive(Debug, Default)]
// The counters and `wants_write` are the network mirror's (a page's loop takes bytes after
// every input and keeps no counters).
#[cfg_attr(not(feature = "net"), allow(dead_code))]
pub struct Drained {
    /// Events for the pump, in order.
    pub events: Vec<ReplicaEvent>,
    /// Diffs applied and resyncs asked for.
    pub diffs: u64,
    pub resyncs: u64,
    /// The session queued bytes to send.
    pub wants_write: bool,
}

impl WaiterHost for ReplicaCore {
    /// A waiter was dropped before it ended; a remote one is withdrawn at the source too.
    fn cancel_waiter(&self, id: u64) {
        let withdrawn = {
            let mut replica = self.lock();
            replica.waiters.remove(id);
            match replica.remote_waits.remove(&id) {
                Some(wait) => {
                    replica.session.cancel_wait(wait);
                    true
                }
                None => false,
            }
        };
        if withdrawn {
            (self.wake)();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code holding these locks calls out to user code or can panic on peer input.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ReplicaCore {
    /// A replica named `id` around `session`, its clock of `schema` until a welcome brings the
    /// source's, silent until asked (as asyncmachine's network machines are).
    pub fn new(
        id: String,
        session: ClientSession<Pending>,
        schema: Arc<Schema>,
        wake: Wake,
        clock: Clock,
    ) -> Arc<ReplicaCore> {
        let log = Arc::new(MachineLog::new(LogLevel::Nothing));
        Arc::new(ReplicaCore {
            id,
            replica: Mutex::new(Replica::new(session, schema, log.clone())),
            log,
            dispose_hooks: Mutex::new(Vec::new()),
            wake,
            clock,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Replica> {
        lock(&self.replica)
    }

    pub fn wake(&self) {
        (self.wake)();
    }

    /// Runs `input` on the session, applies what it calls for (observers, tracers and the log
    /// told as `source`, callers answered) and returns the rest to the pump.
    pub fn input(
        &self,
        source: &dyn StateSource,
        input: impl FnOnce(&mut ClientSession<Pending>),
    ) -> Drained {
        let mut effects = Effects::default();
        let wants_write = {
            let mut replica = self.lock();
            input(&mut replica.session);
            replica.drain(&self.id, &mut effects);
            !replica.session.transmit().is_empty()
        };
        effects.apply(source, &self.log);
        Drained {
            events: effects.events,
            diffs: effects.diffs,
            resyncs: effects.resyncs,
            wants_write,
        }
    }

    /// `[add] A B (args)` in the log, at `Ops`: a mutation sent to the source.
    /// Tracers hear of it too (`Tracer::mutation_sent`).
    pub fn log_mutation(&self, mutation: &Mutation) {
        let (tracers, schema) = {
            let replica = self.lock();
            (replica.tracers.snapshot(), replica.schema.clone())
        };
        if !tracers.is_empty() {
            for (_, tracer) in tracers.iter() {
                tracer.mutation_sent(&self.id, &schema, mutation);
            }
        }
        if self.log.shows(LogLevel::Ops) {
            let schema = self.lock().schema.clone();
            if mutation.states.iter().all(|&s| s < schema.len()) {
                self.log
                    .mutation(&self.id, LogLevel::Ops, &schema, mutation);
            }
        }
    }

    /// Sends `mutation` to the source (or keeps it until the link is back, as the retry policy
    /// allows); the receiver gets its answer (a canceled receiver means the replica is gone).
    pub fn mutate(
        &self,
        mutation: Mutation,
    ) -> Result<oneshot::Receiver<MutationAnswer>, MutationError> {
        self.log_mutation(&mutation);
        let (tx, rx) = oneshot::channel();
        let now = (self.clock)();
        self.lock()
            .session
            .mutate(mutation, Some(Pending::Answer(tx)), now)?;
        self.wake();
        Ok(rx)
    }

    /// Asks the source for its whole clock; the receiver hears once it is applied.
    #[cfg_attr(not(feature = "net"), allow(dead_code))]
    pub fn sync(&self) -> Result<oneshot::Receiver<MutationAnswer>, MutationError> {
        let (tx, rx) = oneshot::channel();
        self.lock().session.sync(Pending::Answer(tx))?;
        self.wake();
        Ok(rx)
    }

    /// Asks the source for its last error.
    pub fn err(&self) -> Result<oneshot::Receiver<ErrAnswer>, MutationError> {
        let (tx, rx) = oneshot::channel();
        self.lock().session.err(Pending::Err(tx))?;
        self.wake();
        Ok(rx)
    }

    pub fn schema(&self) -> Arc<Schema> {
        self.lock().schema.clone()
    }

    pub fn parent_id(&self) -> Option<String> {
        self.lock().session.parent_id().map(str::to_owned)
    }

    pub fn tags(&self) -> Vec<String> {
        self.lock().session.tags().to_vec()
    }

    /// Empty once disposed, as a disposed machine answers.
    pub fn clock(&self) -> Vec<u64> {
        let replica = self.lock();
        if replica.disposed {
            return Vec::new();
        }
        replica.session.ticks().to_vec()
    }

    /// 0 once disposed.
    pub fn tick_at(&self, idx: usize) -> u64 {
        let replica = self.lock();
        if replica.disposed {
            return 0;
        }
        replica.session.ticks().get(idx).copied().unwrap_or(0)
    }

    pub fn queue_tick(&self) -> u64 {
        self.lock().session.queue_tick()
    }

    pub fn wait(self: &Arc<Self>, condition: Condition) -> When {
        let host = Arc::downgrade(self) as Weak<dyn WaiterHost>;
        let mut replica = self.lock();
        let replica = &mut *replica;
        make_when(
            host,
            replica.waiters.register(replica.session.ticks(), condition),
        )
    }

    /// Asked of the source: only the machine that runs a transition sees its arguments. The
    /// wait outlives a reconnect (it is sent again on the new connection; an activation while
    /// the link was down is missed) and ends with `Disposed` when the replica is disposed or
    /// the source's schema changes other than by growing.
    pub fn when_args(self: &Arc<Self>, state: &str, args: Args) -> When {
        let host = Arc::downgrade(self) as Weak<dyn WaiterHost>;
        let when = {
            let mut replica = self.lock();
            let replica = &mut *replica;
            let Some(idx) = replica.schema.index(state) else {
                return When::failed(WaitError::UnknownState(state.to_owned()));
            };
            let registration = replica.waiters.register_remote();
            if let Registration::Pending(waiter, _) = &registration {
                match replica.session.when_args(idx, args, Pending::Wait(*waiter)) {
                    Ok(wait) => {
                        replica.remote_waits.insert(*waiter, wait);
                    }
                    Err(e) => replica.waiters.finish(*waiter, Err(e)),
                }
            }
            make_when(host, registration)
        };
        self.wake();
        when
    }

    pub fn observe(&self, observer: Arc<dyn Observer>) -> (ObserverId, Vec<u64>) {
        let mut replica = self.lock();
        let id = replica.observers.add(observer);
        (id, replica.session.ticks().to_vec())
    }

    pub fn unobserve(&self, id: ObserverId) -> bool {
        self.lock().observers.remove(id)
    }

    /// The replica's id, then its source's ancestry.
    pub fn ancestry(&self) -> Vec<String> {
        let replica = self.lock();
        std::iter::once(self.id.clone())
            .chain(replica.session.upstream().iter().cloned())
            .collect()
    }

    /// Mutations sent again after a lost connection, failed at the retry deadline, and
    /// waiting for the link now (for `UpstreamInfo`).
    pub fn retry_counts(&self) -> (u64, u64, u64) {
        let replica = self.lock();
        let stats = replica.session.retry_stats();
        let waiting = replica.session.waiting_mutations() as u64;
        (stats.retried, stats.expired, waiting)
    }

    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// Binds `tracer`, which hears of `source` (the replica's handle) at once.
    pub fn bind_tracer(&self, source: &dyn StateSource, tracer: Arc<dyn Tracer>) -> TracerId {
        let id = self.lock().tracers.add(tracer.clone());
        tracer.machine_init(source);
        TracerId(id)
    }

    pub fn detach_tracer(&self, id: TracerId) -> bool {
        self.lock().tracers.remove(id.0)
    }

    pub fn tracers(&self) -> Vec<Arc<dyn Tracer>> {
        self.lock().tracers.tracers()
    }

    pub fn log_level(&self) -> LogLevel {
        self.log.level()
    }

    pub fn set_log_level(&self, level: LogLevel) {
        self.log.set_level(level);
    }

    pub fn set_logger(&self, logger: Option<Logger>) {
        self.log.set_logger(logger);
    }

    pub fn set_log_args(&self, log_args: Option<LogArgs>) {
        self.log.set_args(log_args);
    }

    /// An `[extern]` line in the log, unless disposed.
    pub fn log(&self, message: &str) {
        if !self.is_disposed() {
            self.log.external(&self.id, message);
        }
    }

    /// As a disposed machine: waiters (remote ones too) end with `Disposed`, requests waiting
    /// for an answer fail with it, observers and final handlers are dropped, reads answer
    /// empty; the session says goodbye (the pump sends it when connected). Then the dispose
    /// hooks run and the tracers hear of it. The session's last events for the pump; `None`
    /// when it was disposed already.
    pub fn dispose(&self, source: &dyn StateSource) -> Option<Vec<ReplicaEvent>> {
        let mut effects = Effects::default();
        {
            let mut replica = self.lock();
            if replica.disposed {
                return None;
            }
            replica.disposed = true;
            replica.observers.clear();
            replica.session.close();
            replica.waiters.close();
            replica.drain(&self.id, &mut effects);
        }
        effects.apply(source, &self.log);
        self.wake();
        let hooks = std::mem::take(&mut *lock(&self.dispose_hooks));
        for hook in hooks {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| hook(&self.id))) {
                tracing::error!(mirror = %self.id, error = %panic_message(panic.as_ref()), "dispose hook failed");
            }
        }
        for tracer in self.tracers() {
            tracer.machine_dispose(&self.id);
        }
        Some(effects.events)
    }

    /// Runs `hook` with the replica's id when it is disposed (Go's `OnDispose`); at once when
    /// it already is.
    pub fn on_dispose(&self, hook: DisposeHook) {
        // Checked under the hooks' lock: a dispose that starts now takes the hooks after.
        let mut hooks = lock(&self.dispose_hooks);
        if !self.lock().disposed {
            hooks.push(hook);
            return;
        }
        drop(hooks);
        hook(&self.id);
    }

    pub fn is_disposed(&self) -> bool {
        self.lock().disposed
    }
}

/// The [`StateSource`] methods a pump answers from its replica as they are (reads, waits,
/// observers, tracers, the log, dispose hooks): `self.PATH` reaches the pump's
/// [`ReplicaCore`]. Written once, so the network mirror and the page's mirror cannot drift
/// apart; each pump writes its own `id`, `mutate`, `err`, `upstream` and `dispose`.
macro_rules! replica_source_methods {
    ($($path:ident).+) => {
        fn schema(&self) -> std::sync::Arc<$crate::machine::Schema> {
            self.$($path).+.schema()
        }

        /// The source's, as the last welcome carried it; `None` before the first.
        fn parent_id(&self) -> Option<String> {
            self.$($path).+.parent_id()
        }

        /// The source's, as the last welcome carried them; none before the first.
        fn tags(&self) -> Vec<String> {
            self.$($path).+.tags()
        }

        /// Empty once disposed, as a disposed machine answers.
        fn clock(&self) -> Vec<u64> {
            self.$($path).+.clock()
        }

        /// 0 once disposed.
        fn tick_at(&self, idx: usize) -> u64 {
            self.$($path).+.tick_at(idx)
        }

        fn queue_tick(&self) -> u64 {
            self.$($path).+.queue_tick()
        }

        fn wait(&self, condition: $crate::machine::Condition) -> $crate::machine::When {
            self.$($path).+.wait(condition)
        }

        /// Asked of the source: only the machine that runs a transition sees its arguments.
        /// The wait outlives a reconnect (it is sent again on the new connection; an
        /// activation while the link was down is missed) and ends with `Disposed` when the
        /// mirror closes or the source's schema changes other than by growing.
        fn when_args(&self, state: &str, args: $crate::machine::Args) -> $crate::machine::When {
            self.$($path).+.when_args(state, args)
        }

        fn observe(
            &self,
            observer: std::sync::Arc<dyn $crate::machine::Observer>,
        ) -> ($crate::machine::ObserverId, Vec<u64>) {
            self.$($path).+.observe(observer)
        }

        fn unobserve(&self, id: $crate::machine::ObserverId) -> bool {
            self.$($path).+.unobserve(id)
        }

        fn ancestry(&self) -> Vec<String> {
            self.$($path).+.ancestry()
        }

        fn bind_tracer(
            &self,
            tracer: std::sync::Arc<dyn $crate::machine::Tracer>,
        ) -> $crate::machine::TracerId {
            self.$($path).+.bind_tracer(self, tracer)
        }

        fn detach_tracer(&self, id: $crate::machine::TracerId) -> bool {
            self.$($path).+.detach_tracer(id)
        }

        fn tracers(&self) -> Vec<std::sync::Arc<dyn $crate::machine::Tracer>> {
            self.$($path).+.tracers()
        }

        fn log_level(&self) -> $crate::machine::LogLevel {
            self.$($path).+.log_level()
        }

        fn set_log_level(&self, level: $crate::machine::LogLevel) {
            self.$($path).+.set_log_level(level);
        }

        fn set_logger(&self, logger: Option<$crate::machine::Logger>) {
            self.$($path).+.set_logger(logger);
        }

        fn set_log_args(&self, log_args: Option<$crate::machine::LogArgs>) {
            self.$($path).+.set_log_args(log_args);
        }

        fn log(&self, message: &str) {
            self.$($path).+.log(message);
        }

        fn on_dispose(&self, hook: $crate::machine::DisposeHook) {
            self.$($path).+.on_dispose(hook);
        }

        fn is_disposed(&self) -> bool {
            self.$($path).+.is_disposed()
        }
    };
}
pub(crate) use replica_source_methods;
