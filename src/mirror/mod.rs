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
//! The protocol is the session's ([`ClientSession`]), and what the session's events mean to
//! waiters and watchers is the replica's (`crate::replica`, shared with the driven mirror a
//! page runs); this module is the pump around them over a network:
//!
//! - [`config`](MirrorConfig): configuration, connection states, errors, counters;
//! - `connection`: the task that pumps the session over a transport and reconnects with
//!   backoff and jitter (while disconnected the mirror keeps its last clock);
//! - this file: the `Mirror` handle and its [`StateSource`] face.

pub mod backoff;
mod config;
mod connection;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Notify, broadcast, oneshot, watch};
use tokio::time::{Instant, timeout};

use crate::machine::{
    ErrFuture, Mutation, MutationError, MutationFuture, Schema, SchemaDef, StateSource,
    UpstreamInfo,
};
use crate::proto::message::Payload;
use crate::proto::session::{ClientSession, Moment, Phase};
use crate::replica::{Drained, ReplicaCore, ReplicaEvent};
use crate::transport::Endpoint;

pub use config::{ConnState, MirrorConfig, MirrorError, MirrorStats};

#[cfg(test)]
mod tests;

/// How many bytes of mutations without replies may wait to be sent before `mutate_no_reply`
/// waits for the connection to take them.
const OUTBOX_BYTES: usize = 256 << 10;

/// A replica of a remote source. Cheap to clone: clones share one mirror.
///
/// A mirror is a [`StateSource`]: reads and waits are answered from its own copy of the
/// source's clock, mutations run on the source (and resolve once the mirror's clock holds
/// their result), and it can be served again by a [`Server`](crate::server::Server), which is
/// how trees are built. It reconnects by itself with backoff; while disconnected it keeps its
/// last clock.
///
/// ```
/// use std::sync::Arc;
///
/// use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig};
/// use asyncmachine::prelude::*;
/// use asyncmachine::server::{Server, ServerConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// let schema = Schema::builder()
///     .state(StateDef::new("Connected"))
///     .state(StateDef::new("Downloading").require(["Connected"]))
///     .build()?;
/// let source = Machine::builder(schema).id("download").build();
/// let server = Server::new(ServerConfig::default());
/// server.add_source("download", Arc::new(source.clone()))?;
/// let endpoint = server.listen(&"tcp://127.0.0.1:0".parse()?).await?;
///
/// // Returns once the mirror holds the source's schema and clock.
/// let config = MirrorConfig { client_id: "doc".into(), ..MirrorConfig::default() };
/// let mirror = Mirror::connect(&endpoint.with_machine("download"), config).await?;
/// assert_eq!(mirror.connection(), ConnState::Ready);
///
/// // Runs on the source; its relations refuse it there: Downloading requires Connected.
/// assert_eq!(mirror.add(&["Downloading"], Args::new()).await?, Outcome::Canceled);
/// mirror.add(&["Connected"], Args::new()).await?;
/// assert_eq!(mirror.add(&["Downloading"], Args::new()).await?, Outcome::Executed);
/// // The reply brought the clock along: the mirror reads it locally.
/// assert!(mirror.is(&["Connected", "Downloading"]));
/// assert!(source.is(&["Downloading"]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })
/// # }
/// ```
#[derive(Clone)]
pub struct Mirror {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: Endpoint,
    config: MirrorConfig,
    /// The session, the clock and what watches it (`crate::replica`).
    core: Arc<ReplicaCore>,
    conn: watch::Sender<ConnState>,
    payloads: broadcast::Sender<Payload>,
    /// Set when closed, and dropped with the last handle: either ends the connection task.
    stop: watch::Sender<bool>,
    /// Shared apart from the rest so a live session can count without keeping the mirror alive.
    stats: Arc<MirrorStats>,
    /// Wakes the connection's writer: the session queued bytes.
    wake: Arc<Notify>,
    /// Told when the writer took the queued bytes.
    drained: Arc<Notify>,
    /// The origin of the session's time (`Moment`s), for the mirror's whole life: a mutation
    /// made while disconnected has its deadline on the same clock as the connections after.
    epoch: Instant,
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
        self.shared.core.last_error()
    }

    /// The source's endpoint this mirror connects to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// The connection's state now.
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

    /// The mirror's counters (bytes, diffs, resyncs, reconnects).
    pub fn stats(&self) -> &MirrorStats {
        &self.shared.stats
    }

    /// Sends a mutation without waiting for its result; `sync` fetches the clock after. Waits
    /// while much is queued already (the connection is slower than the caller).
    pub async fn mutate_no_reply(&self, mutation: Mutation) -> Result<(), MutationError> {
        self.shared.core.log_mutation(&mutation);
        loop {
            let drained = self.shared.drained.notified();
            {
                let mut replica = self.shared.core.lock();
                if replica.session.transmit().len() < OUTBOX_BYTES
                    || replica.session.phase() != Phase::Ready
                {
                    replica.session.mutate(mutation, None, self.shared.now())?;
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
        let answer = self.shared.core.sync()?;
        self.shared.await_reply(answer).await.map(drop)
    }

    /// Disposes the mirror ([`StateSource::dispose`]): says goodbye to the server, stops
    /// reconnecting, ends waiters with `Disposed`. Kept as the name of a shutdown step.
    pub async fn close(&self) {
        StateSource::dispose(self);
    }

    /// Runs `hook` with the mirror's id when it is disposed (Go's `OnDispose`); at once when it
    /// already is.
    pub fn on_dispose(&self, hook: impl FnOnce(&str) + Send + 'static) {
        self.shared.core.on_dispose(Box::new(hook));
    }

    /// Whether the mirror was disposed (Go's `IsDisposed`).
    pub fn is_disposed(&self) -> bool {
        self.shared.core.is_disposed()
    }
}

impl Shared {
    fn new(endpoint: &Endpoint, config: MirrorConfig, schema: Arc<Schema>) -> Arc<Shared> {
        let session = ClientSession::new(config.session(endpoint), config.schema.clone());
        let wake = Arc::new(Notify::new());
        let waker = wake.clone();
        let epoch = Instant::now();
        Arc::new(Shared {
            core: ReplicaCore::new(
                config.client_id.clone(),
                session,
                schema,
                Box::new(move || waker.notify_one()),
                Box::new(move || Moment::since_epoch(epoch.elapsed())),
            ),
            epoch,
            endpoint: endpoint.clone(),
            config,
            conn: watch::channel(ConnState::Connecting).0,
            // Allocated up front per mirror: payloads are rare, a lagging receiver loses the
            // oldest.
            payloads: broadcast::channel(16).0,
            stop: watch::channel(false).0,
            stats: Arc::new(MirrorStats::default()),
            wake,
            drained: Arc::new(Notify::new()),
        })
    }

    fn id(&self) -> &str {
        &self.core.id
    }

    /// The session's time now (see `epoch`).
    fn now(&self) -> Moment {
        Moment::since_epoch(self.epoch.elapsed())
    }

    /// The mirror's handle, for what needs one (observers hear of the mirror as their source).
    fn handle(self: &Arc<Self>) -> Mirror {
        Mirror {
            shared: self.clone(),
        }
    }

    /// Runs `input` on the session and applies what it calls for: observers, tracers and the
    /// log told, callers answered, payloads to the mirror's receivers, counters counted.
    /// Connection events are the caller's.
    fn input(
        self: &Arc<Self>,
        input: impl FnOnce(&mut ClientSession<crate::replica::Pending>),
    ) -> Drained {
        let mut drained = self.core.input(&self.handle(), input);
        self.stats.diffs.fetch_add(drained.diffs, Ordering::Relaxed);
        self.stats
            .resyncs
            .fetch_add(drained.resyncs, Ordering::Relaxed);
        for event in std::mem::take(&mut drained.events) {
            match event {
                // No receivers is fine: nobody asked for payloads.
                ReplicaEvent::Payload(payload) => drop(self.payloads.send(payload)),
                event => drained.events.push(event),
            }
        }
        drained
    }

    /// A connection ended: the session hears of it (requests waiting on it fail) and the
    /// mirror says it is disconnected.
    fn end_session(self: &Arc<Self>, reason: &str) {
        self.input(|session| session.handle_lost(reason.to_owned()));
        self.conn.send_replace(ConnState::Disconnected);
        // A no-reply mutation held by a full outbox hears that there is no session now.
        self.drained.notify_waiters();
    }

    /// Waits for the answer; on a timeout the id stays taken until the answer comes or the
    /// connection ends (see [`crate::proto::session::Requests`]).
    async fn await_reply<T>(
        &self,
        answer: futures_channel::oneshot::Receiver<Result<T, MutationError>>,
    ) -> Result<T, MutationError> {
        let limit = self.config.mutation_timeout;
        match timeout(limit, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(MutationError::Disconnected),
            Err(_) => Err(MutationError::Timeout(limit)),
        }
    }
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("id", &self.shared.id())
            .field("endpoint", &self.shared.endpoint.to_string())
            .field("connection", &self.connection())
            .finish()
    }
}

/// Reads, waits, watchers and disposal are the replica's (`crate::replica`); requests to the
/// source are bounded by the mutation timeout; `upstream` is the connection's.
impl StateSource for Mirror {
    fn id(&self) -> &str {
        self.shared.id()
    }

    crate::replica::replica_source_methods!(shared.core);

    /// Sent (or queued for the link) in the call, as a local machine runs it in the call: the
    /// order of calls is the order the source sees, and a future dropped unpolled still sent
    /// its mutation. The future waits for the answer.
    fn mutate(&self, mutation: Mutation) -> MutationFuture {
        let answer = self.shared.core.mutate(mutation);
        let shared = self.shared.clone();
        Box::pin(async move { shared.await_reply(answer?).await })
    }

    /// Asked of the source in the call, as a request bounded by the mutation timeout; fails
    /// with `Disconnected` while the mirror is not connected.
    fn err(&self) -> ErrFuture {
        let answer = self.shared.core.err();
        let shared = self.shared.clone();
        Box::pin(async move { shared.await_reply(answer?).await })
    }

    fn upstream(&self) -> Option<UpstreamInfo> {
        let (retried, expired, waiting) = self.shared.core.retry_counts();
        Some(UpstreamInfo {
            endpoint: self.shared.endpoint.to_string(),
            state: match self.connection() {
                ConnState::Connecting => "connecting",
                ConnState::Ready => "ready",
                ConnState::Disconnected => "disconnected",
            },
            last_error: self.last_error(),
            reconnects: self.shared.stats.reconnects.load(Ordering::Relaxed),
            mutations_retried: retried,
            mutations_expired: expired,
            mutations_waiting: waiting,
        })
    }

    /// As a disposed machine (the replica's disposal), and the connection ends: a goodbye
    /// to the server (when connected), no reconnecting. asyncmachine's network machine leaves
    /// the connection to its client; a mirror owns its own.
    fn dispose(&self) {
        // The connection task ends the connection; the session's last events are its no more.
        if self.shared.core.dispose(self).is_some() {
            self.shared.stop.send_replace(true);
            self.shared.drained.notify_waiters();
        }
    }
}
