//! The mirror: a local replica of a remote source's clock, itself a [`StateSource`].
//!
//! Reads and waits are answered from the local clock; mutations go upstream and their replies
//! carry the diff that brings the clock up to date before the mutation's future resolves.
//! What only the source can answer, waits on arguments (`when_args`) and the last error
//! (`err`), is asked of it, and a source that is itself a mirror asks on up the tree.
//!
//! What watches a mirror is its own, as on a local machine: final handlers
//! ([`StateSource::bind_final`]) run after each update of its clock, tracers see each update as
//! a transition without a mutation ([`crate::machine::tracer`]), its log writes the changes it
//! applies and the mutations it sends, and `dispose` ends it (goodbye to the server, waiters
//! ended, reads empty, dispose hooks, tracers told).
//!
//! The protocol is the session's ([`ClientSession`]); this module is its owner's side:
//!
//! - [`config`](MirrorConfig): configuration, connection states, errors, counters;
//! - `replica`: the session with the waiters and observers around its clock;
//! - `connection`: the task that pumps the session over a transport and reconnects with
//!   backoff and jitter (while disconnected the mirror keeps its last clock);
//! - this file: the `Mirror` handle and its [`StateSource`] face.

pub mod backoff;
mod config;
mod connection;
mod replica;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::time::timeout;

use crate::machine::handlers::panic_message;
use crate::machine::log::MachineLog;
use crate::machine::waiters::{Registration, WaiterHost, make_when};
use crate::machine::{
    Args, Condition, DisposeHook, ErrFuture, LogArgs, LogLevel, Logger, Mutation, MutationError,
    MutationFuture, Observer, ObserverId, Schema, SchemaDef, StateSource, Tracer, TracerId,
    UpstreamInfo, WaitError, When,
};
use crate::proto::message::Payload;
use crate::proto::session::{ClientSession, Phase};
use crate::transport::Endpoint;

pub use config::{ConnState, MirrorConfig, MirrorError, MirrorStats};
use replica::{Effects, Pending, Replica};

#[cfg(test)]
mod tests;

/// How many bytes of mutations without replies may wait to be sent before `mutate_no_reply`
/// waits for the connection to take them.
const OUTBOX_BYTES: usize = 256 << 10;

/// A replica of a remote source. Cheap to clone: clones share one mirror.
#[derive(Clone)]
pub struct Mirror {
    shared: Arc<Shared>,
}

struct Shared {
    id: String,
    endpoint: Endpoint,
    config: MirrorConfig,
    replica: Mutex<Replica>,
    conn: watch::Sender<ConnState>,
    payloads: broadcast::Sender<Payload>,
    /// Set when closed, and dropped with the last handle: either ends the connection task.
    stop: watch::Sender<bool>,
    /// Shared apart from the rest so a live session can count without keeping the mirror alive.
    stats: Arc<MirrorStats>,
    /// Wakes the connection's writer: the session queued bytes.
    wake: Arc<Notify>,
    /// Told when the writer took the queued bytes.
    drained: Notify,
    /// The mirror's own log; the replica shares it to know when changes are logged.
    log: Arc<MachineLog>,
    dispose_hooks: Mutex<Vec<DisposeHook>>,
}

impl WaiterHost for Shared {
    /// A waiter was dropped before it ended; a remote one is withdrawn at the source too.
    fn cancel_waiter(&self, id: u64) {
        let withdrawn = {
            let mut replica = self.replica();
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
            self.wake.notify_one();
        }
    }
}

impl Mirror {
    /// Connects to a source and returns once the mirror holds its clock. Afterwards the mirror
    /// reconnects by itself.
    pub async fn connect(endpoint: &Endpoint, config: MirrorConfig) -> Result<Mirror, MirrorError> {
        // Until the welcome brings the source's schema, a mirror without one has an empty
        // schema; nobody sees it, the mirror is handed out once the welcome is in.
        let schema = match &config.schema {
            Some(schema) => schema.clone(),
            None => Arc::new(Schema::new(SchemaDef::of_states(Vec::new()))?),
        };
        let shared = Shared::new(endpoint, config, schema);
        let (first, outcome) = oneshot::channel();
        let mirror = Mirror::spawn(shared, Some(first));
        match outcome.await {
            Ok(Ok(())) => Ok(mirror),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(MirrorError::Handshake {
                endpoint: endpoint.clone(),
                reason: "the connection task ended before the handshake".into(),
            }),
        }
    }

    /// Starts a mirror of a source whose schema is known, without waiting for the source: it
    /// is usable (and servable) at once with an all-zero clock in state `Connecting`, and
    /// connects, and reconnects, in the background.
    pub fn start(endpoint: &Endpoint, config: MirrorConfig) -> Result<Mirror, MirrorError> {
        let schema = config.schema.clone().ok_or_else(|| MirrorError::Handshake {
            endpoint: endpoint.clone(),
            reason: "Mirror::start needs the source's schema in MirrorConfig::schema; use Mirror::connect to take it from the source".into(),
        })?;
        Ok(Mirror::spawn(Shared::new(endpoint, config, schema), None))
    }

    fn spawn(
        shared: Arc<Shared>,
        first: Option<oneshot::Sender<Result<(), MirrorError>>>,
    ) -> Mirror {
        let stop = shared.stop.subscribe();
        tokio::spawn(connection::drive(Arc::downgrade(&shared), stop, first));
        Mirror { shared }
    }

    /// Why the last connection attempt failed, while the mirror is not connected.
    pub fn last_error(&self) -> Option<String> {
        self.shared.replica().last_error.clone()
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    pub fn connection(&self) -> ConnState {
        *self.shared.conn.borrow()
    }

    /// Changes of the connection state, for a program to follow.
    pub fn connection_changes(&self) -> watch::Receiver<ConnState> {
        self.shared.conn.subscribe()
    }

    /// Waits until the connection is in `state`.
    pub async fn wait_connection(&self, state: ConnState) {
        let mut changes = self.shared.conn.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = changes.wait_for(|s| *s == state).await;
    }

    /// Payloads the source sends; a receiver that lags loses the oldest.
    pub fn payloads(&self) -> broadcast::Receiver<Payload> {
        self.shared.payloads.subscribe()
    }

    pub fn stats(&self) -> &MirrorStats {
        &self.shared.stats
    }

    /// Sends a mutation without waiting for its result; `sync` fetches the clock after. Waits
    /// while much is queued already (the connection is slower than the caller).
    pub async fn mutate_no_reply(&self, mutation: Mutation) -> Result<(), MutationError> {
        self.shared.log_mutation(&mutation);
        loop {
            let drained = self.shared.drained.notified();
            {
                let mut replica = self.shared.replica();
                if replica.session.transmit().len() < OUTBOX_BYTES
                    || replica.session.phase() != Phase::Ready
                {
                    replica.session.mutate(mutation, None)?;
                    break;
                }
            }
            drained.await;
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Asks the source for its whole clock and waits until it is applied.
    pub async fn sync(&self) -> Result<(), MutationError> {
        let (tx, rx) = oneshot::channel();
        self.shared.replica().session.sync(Pending::Answer(tx))?;
        self.shared.wake.notify_one();
        self.shared.await_reply(rx).await.map(drop)
    }

    /// Disposes the mirror ([`StateSource::dispose`]): says goodbye to the server, stops
    /// reconnecting, ends waiters with `Disposed`. Kept as the name of a shutdown step.
    pub async fn close(&self) {
        StateSource::dispose(self);
    }

    /// Runs `hook` with the mirror's id when it is disposed (Go's `OnDispose`); at once when it
    /// already is.
    pub fn on_dispose(&self, hook: impl FnOnce(&str) + Send + 'static) {
        // Checked under the hooks' lock: a dispose that starts now takes the hooks after.
        let mut hooks = lock(&self.shared.dispose_hooks);
        if !self.shared.replica().disposed {
            hooks.push(Box::new(hook));
            return;
        }
        drop(hooks);
        hook(&self.shared.id);
    }

    /// Whether the mirror was disposed (Go's `IsDisposed`).
    pub fn is_disposed(&self) -> bool {
        self.shared.replica().disposed
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Hooks run after their list is taken out: nothing panics while it is held.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(endpoint: &Endpoint, config: MirrorConfig, schema: Arc<Schema>) -> Arc<Shared> {
        let session = ClientSession::new(config.session(endpoint), config.schema.clone());
        // Silent until asked, as asyncmachine's network machines are.
        let log = Arc::new(MachineLog::new(LogLevel::Nothing));
        Arc::new(Shared {
            id: config.client_id.clone(),
            endpoint: endpoint.clone(),
            replica: Mutex::new(Replica::new(session, schema, log.clone())),
            config,
            conn: watch::channel(ConnState::Connecting).0,
            // Allocated up front per mirror: payloads are rare, a lagging receiver loses the
            // oldest.
            payloads: broadcast::channel(16).0,
            stop: watch::channel(false).0,
            stats: Arc::new(MirrorStats::default()),
            wake: Arc::new(Notify::new()),
            drained: Notify::new(),
            log,
            dispose_hooks: Mutex::new(Vec::new()),
        })
    }

    /// The mirror's handle, for what needs one (observers hear of the mirror as their source).
    fn handle(self: &Arc<Self>) -> Mirror {
        Mirror {
            shared: self.clone(),
        }
    }

    /// `[add] A B (args)` in the mirror's log, at `Ops`: a mutation sent to the source.
    fn log_mutation(&self, mutation: &Mutation) {
        if self.log.shows(LogLevel::Ops) {
            let schema = self.replica().schema.clone();
            if mutation.states.iter().all(|&s| s < schema.len()) {
                self.log
                    .mutation(&self.id, LogLevel::Ops, &schema, mutation);
            }
        }
    }

    fn replica(&self) -> MutexGuard<'_, Replica> {
        // No code holding this lock calls out to user code or can panic on peer input.
        self.replica.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection ended: the session hears of it (requests waiting on it fail) and the
    /// mirror says it is disconnected.
    fn end_session(self: &Arc<Self>, reason: &str) {
        let mut effects = Effects::default();
        {
            let mut replica = self.replica();
            replica.session.handle_lost(reason.to_owned());
            replica.drain(&self.id, &self.stats, &mut effects);
        }
        effects.apply(&self.handle());
        self.conn.send_replace(ConnState::Disconnected);
    }

    /// Waits for the answer; on a timeout the id stays taken until the answer comes or the
    /// connection ends (see [`crate::proto::session::Requests`]).
    async fn await_reply<T>(
        &self,
        rx: oneshot::Receiver<Result<T, MutationError>>,
    ) -> Result<T, MutationError> {
        let limit = self.config.mutation_timeout;
        match timeout(limit, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(MutationError::Disconnected),
            Err(_) => Err(MutationError::Timeout(limit)),
        }
    }
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("id", &self.shared.id)
            .field("endpoint", &self.shared.endpoint.to_string())
            .field("connection", &self.connection())
            .finish()
    }
}

impl StateSource for Mirror {
    fn id(&self) -> &str {
        &self.shared.id
    }

    fn schema(&self) -> Arc<Schema> {
        self.shared.replica().schema.clone()
    }

    /// The source's, as the last welcome carried it; `None` before the first.
    fn parent_id(&self) -> Option<String> {
        self.shared.replica().session.parent_id().map(str::to_owned)
    }

    /// The source's, as the last welcome carried them; none before the first.
    fn tags(&self) -> Vec<String> {
        self.shared.replica().session.tags().to_vec()
    }

    /// Empty once disposed, as a disposed machine answers.
    fn clock(&self) -> Vec<u64> {
        let replica = self.shared.replica();
        if replica.disposed {
            return Vec::new();
        }
        replica.session.ticks().to_vec()
    }

    /// 0 once disposed.
    fn tick_at(&self, idx: usize) -> u64 {
        let replica = self.shared.replica();
        if replica.disposed {
            return 0;
        }
        replica.session.ticks().get(idx).copied().unwrap_or(0)
    }

    fn queue_tick(&self) -> u64 {
        self.shared.replica().session.queue_tick()
    }

    fn wait(&self, condition: Condition) -> When {
        let host: Weak<dyn WaiterHost> = Arc::downgrade(&self.shared) as Weak<dyn WaiterHost>;
        let mut replica = self.shared.replica();
        let replica = &mut *replica;
        make_when(
            host,
            replica.waiters.register(replica.session.ticks(), condition),
        )
    }

    fn mutate(&self, mutation: Mutation) -> MutationFuture {
        let shared = self.shared.clone();
        Box::pin(async move {
            shared.log_mutation(&mutation);
            let (tx, rx) = oneshot::channel();
            shared
                .replica()
                .session
                .mutate(mutation, Some(Pending::Answer(tx)))?;
            shared.wake.notify_one();
            shared.await_reply(rx).await
        })
    }

    /// Asked of the source: only the machine that runs a transition sees its arguments. The
    /// wait outlives a reconnect (it is sent again on the new connection; an activation while
    /// the link was down is missed) and ends with `Disposed` when the mirror closes or the
    /// source's schema changes other than by growing.
    fn when_args(&self, state: &str, args: Args) -> When {
        let host: Weak<dyn WaiterHost> = Arc::downgrade(&self.shared) as Weak<dyn WaiterHost>;
        let when = {
            let mut replica = self.shared.replica();
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
        self.shared.wake.notify_one();
        when
    }

    /// Asked of the source, as a request bounded by the mutation timeout; fails with
    /// `Disconnected` while the mirror is not connected.
    fn err(&self) -> ErrFuture {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            shared.replica().session.err(Pending::Err(tx))?;
            shared.wake.notify_one();
            shared.await_reply(rx).await
        })
    }

    fn observe(&self, observer: Arc<dyn Observer>) -> (ObserverId, Vec<u64>) {
        let mut replica = self.shared.replica();
        let id = replica.observers.add(observer);
        (id, replica.session.ticks().to_vec())
    }

    fn unobserve(&self, id: ObserverId) -> bool {
        self.shared.replica().observers.remove(id)
    }

    fn ancestry(&self) -> Vec<String> {
        let replica = self.shared.replica();
        std::iter::once(self.shared.id.clone())
            .chain(replica.session.upstream().iter().cloned())
            .collect()
    }

    fn upstream(&self) -> Option<UpstreamInfo> {
        Some(UpstreamInfo {
            endpoint: self.shared.endpoint.to_string(),
            state: match self.connection() {
                ConnState::Connecting => "connecting",
                ConnState::Ready => "ready",
                ConnState::Disconnected => "disconnected",
            },
            last_error: self.last_error(),
            reconnects: self.shared.stats.reconnects.load(Ordering::Relaxed),
        })
    }

    fn bind_tracer(&self, tracer: Arc<dyn Tracer>) -> TracerId {
        let id = self.shared.replica().tracers.add(tracer.clone());
        tracer.machine_init(self);
        TracerId(id)
    }

    fn detach_tracer(&self, id: TracerId) -> bool {
        self.shared.replica().tracers.remove(id.0)
    }

    fn tracers(&self) -> Vec<Arc<dyn Tracer>> {
        self.shared.replica().tracers.tracers()
    }

    fn log_level(&self) -> LogLevel {
        self.shared.log.level()
    }

    fn set_log_level(&self, level: LogLevel) {
        self.shared.log.set_level(level);
    }

    fn set_logger(&self, logger: Option<Logger>) {
        self.shared.log.set_logger(logger);
    }

    fn set_log_args(&self, log_args: Option<LogArgs>) {
        self.shared.log.set_args(log_args);
    }

    fn log(&self, message: &str) {
        if !self.is_disposed() {
            self.shared.log.external(&self.shared.id, message);
        }
    }

    /// As a disposed machine: waiters (remote ones too) end with `Disposed`, requests waiting
    /// for an answer fail with it, observers and final handlers are dropped, reads answer
    /// empty; and the connection ends: a goodbye to the server (when connected), no
    /// reconnecting. Then the dispose hooks run and the tracers hear of it. asyncmachine's
    /// network machine leaves the connection to its client; a mirror owns its own.
    fn dispose(&self) {
        let mut effects = Effects::default();
        {
            let mut replica = self.shared.replica();
            if replica.disposed {
                return;
            }
            replica.disposed = true;
            replica.observers.clear();
            replica.session.close();
            replica.waiters.close();
            replica.drain(&self.shared.id, &self.shared.stats, &mut effects);
        }
        effects.apply(self);
        self.shared.wake.notify_one();
        self.shared.stop.send_replace(true);
        let hooks = std::mem::take(&mut *lock(&self.shared.dispose_hooks));
        for hook in hooks {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| hook(&self.shared.id))) {
                tracing::error!(mirror = %self.shared.id, error = %panic_message(panic.as_ref()), "dispose hook failed");
            }
        }
        for tracer in StateSource::tracers(self) {
            tracer.machine_dispose(&self.shared.id);
        }
    }

    fn on_dispose(&self, hook: DisposeHook) {
        Mirror::on_dispose(self, hook);
    }

    fn is_disposed(&self) -> bool {
        Mirror::is_disposed(self)
    }
}
