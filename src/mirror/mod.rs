//! The mirror: a local replica of a remote source's clock, itself a [`StateSource`].
//!
//! Reads and waits are answered from the local clock; mutations go upstream and their replies
//! carry the diff that brings the clock up to date before the mutation's future resolves.
//! What only the source can answer, waits on arguments (`when_args`) and the last error
//! (`err`), is asked of it, and a source that is itself a mirror asks on up the tree.
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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::time::timeout;

use crate::machine::waiters::{Registration, WaiterHost, make_when};
use crate::machine::{
    Args, Condition, ErrFuture, Mutation, MutationError, MutationFuture, Observer, ObserverId,
    Schema, SchemaDef, StateSource, UpstreamInfo, WaitError, When,
};
use crate::proto::message::Payload;
use crate::proto::session::{ClientSession, Phase};
use crate::transport::Endpoint;

pub use config::{ConnState, MirrorConfig, MirrorError, MirrorStats};
use replica::{Effects, Pending, Replica};

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

    /// Says goodbye to the server and stops reconnecting; waiters end with `Disposed`.
    pub async fn close(&self) {
        let mut effects = Effects::default();
        {
            let mut replica = self.shared.replica();
            replica.session.close();
            replica.waiters.close();
            replica.drain(&self.shared.id, &self.shared.stats, &mut effects);
        }
        effects.apply(&self.shared.payloads);
        self.shared.wake.notify_one();
        self.shared.stop.send_replace(true);
    }
}

impl Shared {
    fn new(endpoint: &Endpoint, config: MirrorConfig, schema: Arc<Schema>) -> Arc<Shared> {
        let session = ClientSession::new(config.session(endpoint), config.schema.clone());
        Arc::new(Shared {
            id: config.client_id.clone(),
            endpoint: endpoint.clone(),
            replica: Mutex::new(Replica::new(session, schema)),
            config,
            conn: watch::channel(ConnState::Connecting).0,
            // Allocated up front per mirror: payloads are rare, a lagging receiver loses the
            // oldest.
            payloads: broadcast::channel(16).0,
            stop: watch::channel(false).0,
            stats: Arc::new(MirrorStats::default()),
            wake: Arc::new(Notify::new()),
            drained: Notify::new(),
        })
    }

    fn replica(&self) -> MutexGuard<'_, Replica> {
        // No code holding this lock calls out to user code or can panic on peer input.
        self.replica.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection ended: the session hears of it (requests waiting on it fail) and the
    /// mirror says it is disconnected.
    fn end_session(&self, reason: &str) {
        let mut effects = Effects::default();
        {
            let mut replica = self.replica();
            replica.session.handle_lost(reason.to_owned());
            replica.drain(&self.id, &self.stats, &mut effects);
        }
        effects.apply(&self.payloads);
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

    fn clock(&self) -> Vec<u64> {
        self.shared.replica().session.ticks().to_vec()
    }

    fn tick_at(&self, idx: usize) -> u64 {
        self.shared
            .replica()
            .session
            .ticks()
            .get(idx)
            .copied()
            .unwrap_or(0)
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
}
