//! The mirror: a local replica of a remote source's clock, itself a [`StateSource`].
//!
//! Reads and waits are answered from the local clock; mutations go upstream and their replies
//! carry the diff that brings the clock up to date before the mutation's future resolves. A
//! background task keeps the connection: it applies pushes, answers pings, and when the
//! connection drops it marks the mirror disconnected (keeping the last clock), fails pending
//! mutations, and reconnects with exponential backoff and jitter, resyncing from the welcome.
//! The task holds only a weak reference: dropping the last `Mirror` handle ends it.

pub mod backoff;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::machine::waiters::{WaiterHost, WaiterSet, make_when};
use crate::machine::{
    Args, Condition, Mutation, MutationError, MutationFuture, MutationKind, Observer, ObserverId,
    Outcome, Schema, StateSource, Transition, UpstreamInfo, When,
};
use crate::printable::printable;
use crate::proto::diff::{ApplyError, apply as apply_diff};
use crate::proto::frame::DEFAULT_MAX_FRAME;
use crate::proto::message::{
    ClockDiff, Hello, MutateRequest, Payload, Refusal, Snapshot, WantedOptions, Welcome,
};
use crate::proto::{
    Compression, FrameConfig, FrameReader, Message, PROTOCOL_VERSION, Tracked, encode_frame,
};
use crate::transport::{self, BoxStream, Endpoint, TransportConfig, TransportError};
use crate::wire::{self, ReadError};

/// How a mirror connects and behaves.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Who this mirror is to the server (for a node, its node id).
    pub client_id: String,
    pub compression: bool,
    /// Track only these states; `None` for all.
    pub track: Option<Vec<String>>,
    pub token: Option<String>,
    /// The schema the mirror expects, if known: the server then skips sending it.
    pub schema: Option<Arc<Schema>>,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// How often the mirror pings the server.
    pub keepalive: Duration,
    /// A server silent for this long is taken as gone.
    pub idle_timeout: Duration,
    /// How long a mutation waits for its reply.
    pub mutation_timeout: Duration,
    pub max_frame: usize,
    /// First reconnect delay; it doubles up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// TLS material for tls://, quic:// and wss:// upstreams.
    pub transport: TransportConfig,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            client_id: format!("mirror-{}", std::process::id()),
            compression: false,
            track: None,
            token: None,
            schema: None,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            mutation_timeout: Duration::from_secs(30),
            max_frame: DEFAULT_MAX_FRAME,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            transport: TransportConfig::default(),
        }
    }
}

/// The state of a mirror's connection, for a person or a program to wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Connecting,
    Ready,
    Disconnected,
}

/// Why a mirror could not (first) connect.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{endpoint} refused the mirror ({kind:?}): {reason}")]
    Refused {
        endpoint: Endpoint,
        kind: crate::proto::message::RefusalKind,
        reason: String,
    },
    #[error("no handshake answer from {endpoint} within {after:?}")]
    HandshakeTimeout { endpoint: Endpoint, after: Duration },
    #[error("handshake with {endpoint} failed: {reason}")]
    Handshake { endpoint: Endpoint, reason: String },
    #[error("the server sent a schema that is not valid: {0}")]
    BadSchema(#[from] crate::machine::SchemaError),
    #[error(
        "{endpoint} serves a different schema (states: {found}) than this mirror expects (states: {expected}); update one side or leave the mirror's schema unset to take the server's"
    )]
    SchemaMismatch {
        endpoint: Endpoint,
        expected: String,
        found: String,
    },
}

/// Counters of one mirror.
#[derive(Debug, Default)]
pub struct MirrorStats {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub diffs: AtomicU64,
    pub resyncs: AtomicU64,
    pub reconnects: AtomicU64,
}

/// A replica of a remote source. Cheap to clone: clones share one mirror.
#[derive(Clone)]
pub struct Mirror {
    shared: Arc<Shared>,
}

struct Shared {
    id: String,
    endpoint: Endpoint,
    config: MirrorConfig,
    core: Mutex<Core>,
    conn: watch::Sender<ConnState>,
    payloads: broadcast::Sender<Payload>,
    /// Dropped with the last handle, which ends the connection task.
    stop: watch::Sender<bool>,
    /// Shared apart from the rest so a live session can count without keeping the mirror alive.
    stats: Arc<MirrorStats>,
}

type ObserverList = Arc<Vec<(u64, Arc<dyn Observer>)>>;
type Pending = oneshot::Sender<Result<Outcome, MutationError>>;

struct Core {
    schema: Arc<Schema>,
    ticks: Vec<u64>,
    queue_tick: u64,
    tracked: Tracked,
    waiters: WaiterSet,
    observers: ObserverList,
    next_observer: u64,
    /// The upstream source's ancestry, from the last welcome.
    upstream: Vec<String>,
    /// Messages to the server while connected.
    outbox: Option<mpsc::Sender<Message>>,
    pending: Requests,
    closed: bool,
    /// Why the last connection attempt failed (cleared on success).
    last_error: Option<String>,
}

impl WaiterHost for Shared {
    fn cancel_waiter(&self, id: u64) {
        lock(&self.core).waiters.remove(id);
    }
}

/// A mutation the source refused, with its reason made printable (servers pass a refusal from
/// further up on as its reason alone, so it is wrapped once here).
fn refusal(reason: String) -> MutationError {
    MutationError::Refused(printable(&reason).into_owned())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code holding this lock calls out to user code or can panic on peer input.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connected session, after a successful handshake.
struct Session {
    rd: ReadHalf<BoxStream>,
    wr: WriteHalf<BoxStream>,
    reader: FrameReader,
    frame: FrameConfig,
    welcome: Welcome,
}

impl Mirror {
    /// Connects to a source and returns once the mirror holds its clock. Afterwards the mirror
    /// reconnects by itself.
    pub async fn connect(endpoint: &Endpoint, config: MirrorConfig) -> Result<Mirror, MirrorError> {
        let known = config.schema.clone();
        let session = establish(endpoint, &config, known.as_ref().map_or(0, |s| s.hash())).await?;
        let schema = match (&session.welcome.schema, known) {
            (_, Some(known)) => known,
            (Some(def), None) => Arc::new(Schema::new(def.clone())?),
            (None, None) => {
                return Err(MirrorError::Handshake {
                    endpoint: endpoint.clone(),
                    reason: "the server sent no schema although the mirror has none".into(),
                });
            }
        };
        let shared = Shared::new(endpoint, config, schema);
        // `adopt` checks the welcome's schema against the one the mirror expects.
        let (outbox, session) = shared.adopt(session, false)?;
        Ok(Mirror::spawn(shared, Some((session, outbox))))
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

    fn spawn(shared: Arc<Shared>, session: Option<(Session, mpsc::Receiver<Message>)>) -> Mirror {
        let stop = shared.stop.subscribe();
        tokio::spawn(drive(Arc::downgrade(&shared), session, stop));
        Mirror { shared }
    }

    /// Why the last connection attempt failed, while the mirror is not connected.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.core).last_error.clone()
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

    /// Sends a mutation without waiting for its result; `sync` fetches the clock after.
    pub async fn mutate_no_reply(&self, mutation: Mutation) -> Result<(), MutationError> {
        let outbox = self.shared.outbox_for(&mutation)?;
        let request = request(0, mutation);
        outbox
            .send(Message::Mutate(request))
            .await
            .map_err(|_| MutationError::Disconnected)
    }

    /// Asks the source for its whole clock and waits until it is applied.
    pub async fn sync(&self) -> Result<(), MutationError> {
        let (outbox, ticket, rx) = {
            let mut core = lock(&self.shared.core);
            let outbox = core.outbox.clone().ok_or(MutationError::Disconnected)?;
            let (ticket, rx) = core.register_pending()?;
            (outbox, ticket, rx)
        };
        if outbox.send(Message::Sync { id: ticket.id }).await.is_err() {
            lock(&self.shared.core).pending.withdraw(ticket);
            return Err(MutationError::Disconnected);
        }
        self.shared.await_reply(rx).await.map(drop)
    }

    /// Says goodbye to the server and stops reconnecting; waiters end with `Disposed`.
    pub async fn close(&self) {
        let outbox = {
            let mut core = lock(&self.shared.core);
            core.closed = true;
            core.waiters.close();
            core.outbox.take()
        };
        if let Some(outbox) = outbox {
            let _ = outbox
                .send(Message::Bye {
                    reason: "mirror closed".into(),
                })
                .await;
        }
        self.shared.stop.send_replace(true);
    }
}

/// A mutation as sent; id 0 asks for no reply.
fn request(id: u64, mutation: Mutation) -> MutateRequest {
    MutateRequest {
        id,
        kind: mutation.kind,
        states: mutation.states.iter().map(|&s| s as u32).collect(),
        args: mutation.args,
    }
}

/// Requests waiting for the server's answer (mutation replies, snapshots), by id.
///
/// Ids are reused once answered, so they stay as small as the number of requests in flight:
/// one byte on the wire each way, where a counter would take three bytes after 250 requests
/// and five after 65 535. An id stays taken until its answer comes or the connection ends,
/// even when its caller gave up (timeout, dropped future): a late answer must not resolve
/// another request. Id 0 is never taken: it means "no reply" and "unsolicited".
#[derive(Default)]
struct Requests {
    /// Slot `i` holds id `i + 1`, with the ticket it was issued under.
    slots: Vec<Option<(u64, Pending)>>,
    free: Vec<usize>,
    tickets: u64,
}

/// Proof of which request took an id, so that only its own caller can withdraw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    id: u64,
    issued: u64,
}

/// Most requests waiting for answers at once. An id is held until its answer comes (see
/// [`Requests`]), so a source that keeps the connection alive but never answers would
/// otherwise make every later mutation cost memory for as long as the connection lasts.
const MAX_IN_FLIGHT: usize = 65_536;

impl Requests {
    /// Requests holding an id now.
    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn insert(&mut self, reply: Pending) -> Ticket {
        self.tickets += 1;
        let entry = Some((self.tickets, reply));
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = entry;
                slot
            }
            None => {
                self.slots.push(entry);
                self.slots.len() - 1
            }
        };
        Ticket {
            id: slot as u64 + 1,
            issued: self.tickets,
        }
    }

    /// Takes the request with this id, if one waits (the server's answer to it).
    fn take(&mut self, id: u64) -> Option<Pending> {
        let slot = usize::try_from(id.checked_sub(1)?).ok()?;
        let (_, reply) = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(reply)
    }

    /// Frees the id if `ticket`'s request still holds it (it was never sent).
    fn withdraw(&mut self, ticket: Ticket) {
        let slot = (ticket.id - 1) as usize;
        if let Some(Some((issued, _))) = self.slots.get(slot)
            && *issued == ticket.issued
        {
            self.slots[slot] = None;
            self.free.push(slot);
        }
    }

    /// Takes every waiting request: the connection that would answer them ended.
    fn take_all(&mut self) -> Vec<Pending> {
        self.free.clear();
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .map(|(_, reply)| reply)
            .collect()
    }
}

impl Core {
    fn register_pending(
        &mut self,
    ) -> Result<(Ticket, oneshot::Receiver<Result<Outcome, MutationError>>), MutationError> {
        if self.pending.in_flight() >= MAX_IN_FLIGHT {
            return Err(MutationError::QueueFull {
                limit: MAX_IN_FLIGHT,
            });
        }
        let (tx, rx) = oneshot::channel();
        Ok((self.pending.insert(tx), rx))
    }

    /// Replaces the clock (and the schema, when it changed) and returns what observers need.
    fn replace(&mut self, schema: Option<Arc<Schema>>, snapshot: &Snapshot) -> Notice {
        let mut new_schema = false;
        if let Some(schema) = schema.filter(|s| s.hash() != self.schema.hash()) {
            new_schema = true;
            // State positions mean other states now: waiters on the old schema cannot be
            // answered, so they end.
            self.waiters.close();
            self.waiters = WaiterSet::new(schema.len());
            self.ticks = vec![0; schema.len()];
            self.schema = schema;
        }
        let before = self.ticks.clone();
        let len = self.ticks.len();
        for (s, tick) in self.ticks.iter_mut().enumerate() {
            *tick = snapshot.ticks.get(s).copied().unwrap_or(0);
        }
        self.queue_tick = snapshot.queue_tick;
        // A new schema is news to observers (a server serving this mirror) even when no tick
        // differs: their clock is of the old one.
        let changed: Vec<usize> = (0..len)
            .filter(|&s| new_schema || before[s] != self.ticks[s])
            .collect();
        self.waiters
            .clock_changed(&self.ticks, changed.iter().copied());
        Notice {
            before,
            after: self.ticks.clone(),
            changed,
            queue_tick: self.queue_tick,
            observers: self.observers.clone(),
        }
    }

    /// Applies diffs in order, as one change: diffs that arrived together reach waiters and
    /// observers once, with the latest clock (the latest wins, as on the server). `Err` asks
    /// for a resync (the diffs after a mismatch are dropped: the snapshot supersedes them) or,
    /// for a state outside the schema, ends the session.
    fn apply(&mut self, diffs: &[ClockDiff]) -> Result<Notice, ApplyError> {
        let before = self.ticks.clone();
        let mut changed = Vec::new();
        let mut result = Ok(());
        for diff in diffs {
            match apply_diff(&mut self.ticks, diff, &self.tracked) {
                Ok(states) => changed.extend(states),
                Err(ApplyError::Checksum) => {
                    changed.extend(diff.changes.iter().map(|&(s, _)| s as usize));
                    result = Err(ApplyError::Checksum);
                }
                // Nothing of this diff was applied.
                Err(e @ ApplyError::BadState { .. }) => {
                    result = Err(e);
                    break;
                }
            }
            self.queue_tick = self.queue_tick.saturating_add(diff.queue_delta);
            if result.is_err() {
                break;
            }
        }
        if diffs.len() > 1 {
            changed.sort_unstable();
            changed.dedup();
        }
        self.waiters
            .clock_changed(&self.ticks, changed.iter().copied());
        let notice = Notice {
            before,
            after: self.ticks.clone(),
            changed,
            queue_tick: self.queue_tick,
            observers: self.observers.clone(),
        };
        result.map(|()| notice)
    }
}

/// A clock change to tell observers about, outside the lock.
struct Notice {
    before: Vec<u64>,
    after: Vec<u64>,
    changed: Vec<usize>,
    queue_tick: u64,
    observers: ObserverList,
}

impl Notice {
    fn tell(self) {
        if self.changed.is_empty() || self.observers.is_empty() {
            return;
        }
        let args = Args::new();
        let transition = Transition {
            kind: MutationKind::Set,
            called: &self.changed,
            args: &args,
            auto: false,
            before: &self.before,
            after: &self.after,
            queue_tick: self.queue_tick,
        };
        for (_, observer) in self.observers.iter() {
            observer.transition(&transition);
        }
    }
}

impl Shared {
    fn new(endpoint: &Endpoint, config: MirrorConfig, schema: Arc<Schema>) -> Arc<Shared> {
        let n = schema.len();
        Arc::new(Shared {
            id: config.client_id.clone(),
            endpoint: endpoint.clone(),
            core: Mutex::new(Core {
                schema,
                ticks: vec![0; n],
                queue_tick: 0,
                tracked: Tracked::All,
                waiters: WaiterSet::new(n),
                observers: Arc::new(Vec::new()),
                next_observer: 0,
                upstream: Vec::new(),
                outbox: None,
                pending: Requests::default(),
                closed: false,
                last_error: None,
            }),
            config,
            conn: watch::channel(ConnState::Connecting).0,
            // Allocated up front per mirror: payloads are rare, a lagging receiver loses the oldest.
            payloads: broadcast::channel(16).0,
            stop: watch::channel(false).0,
            stats: Arc::new(MirrorStats::default()),
        })
    }

    /// Takes a fresh session in: applies its welcome, opens the outbox, marks the mirror ready.
    /// A mirror created with a schema refuses a session whose source has another one.
    fn adopt(
        &self,
        session: Session,
        reconnect: bool,
    ) -> Result<(mpsc::Receiver<Message>, Session), MirrorError> {
        let schema = match &session.welcome.schema {
            Some(def) => Some(Arc::new(Schema::new(def.clone())?)),
            None => None,
        };
        if let (Some(expected), Some(found)) = (&self.config.schema, &schema)
            && expected.hash() != found.hash()
        {
            return Err(MirrorError::SchemaMismatch {
                endpoint: self.endpoint.clone(),
                expected: expected.names().collect::<Vec<_>>().join(", "),
                found: printable(&found.names().collect::<Vec<_>>().join(", ")).into_owned(),
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let notice = {
            let mut core = lock(&self.core);
            core.tracked = Tracked::from_granted(session.welcome.granted.tracked.as_deref());
            core.outbox = Some(tx);
            core.last_error = None;
            core.replace(schema, &session.welcome.snapshot)
        };
        notice.tell();
        self.set_upstream(session.welcome.ancestry.clone());
        // Counted before Ready is announced, so whoever sees Ready sees the count.
        self.stats
            .reconnects
            .fetch_add(u64::from(reconnect), Ordering::Relaxed);
        self.conn.send_replace(ConnState::Ready);
        Ok((rx, session))
    }

    /// Takes a new upstream ancestry; observers (a server serving this mirror) hear of it, so
    /// the change travels down the tree.
    fn set_upstream(&self, ancestry: Vec<String>) {
        let (observers, mine) = {
            let mut core = lock(&self.core);
            if core.upstream == ancestry {
                return;
            }
            core.upstream = ancestry;
            let mine: Vec<String> = std::iter::once(self.id.clone())
                .chain(core.upstream.iter().cloned())
                .collect();
            (core.observers.clone(), mine)
        };
        for (_, observer) in observers.iter() {
            observer.ancestry_changed(&mine);
        }
    }

    /// Marks the mirror disconnected and fails what waits on the server.
    fn lost(&self) {
        let pending = {
            let mut core = lock(&self.core);
            core.outbox = None;
            core.pending.take_all()
        };
        for reply in pending {
            let _ = reply.send(Err(MutationError::Disconnected));
        }
        self.conn.send_replace(ConnState::Disconnected);
    }

    fn outbox_for(&self, mutation: &Mutation) -> Result<mpsc::Sender<Message>, MutationError> {
        let core = lock(&self.core);
        if core.closed {
            return Err(MutationError::Disposed);
        }
        if let Some(&bad) = mutation.states.iter().find(|&&s| s >= core.schema.len()) {
            return Err(MutationError::BadIndex(bad));
        }
        core.outbox.clone().ok_or(MutationError::Disconnected)
    }

    /// Waits for the answer; on a timeout the id stays taken until the answer comes or the
    /// connection ends (see [`Requests`]).
    async fn await_reply(
        &self,
        rx: oneshot::Receiver<Result<Outcome, MutationError>>,
    ) -> Result<Outcome, MutationError> {
        let limit = self.config.mutation_timeout;
        match timeout(limit, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(MutationError::Disconnected),
            Err(_) => Err(MutationError::Timeout(limit)),
        }
    }

    fn resolve(&self, id: u64, result: Result<Outcome, MutationError>) {
        if let Some(reply) = lock(&self.core).pending.take(id) {
            let _ = reply.send(result);
        }
    }

    /// Handles one message from the server; `Err` ends the session with a reason.
    fn handle(&self, message: Message, outbox: &mpsc::Sender<Message>) -> Result<(), String> {
        match message {
            Message::Diff(diff) => self.handle_diffs(std::slice::from_ref(&diff), outbox),
            Message::MutateReply(reply) => {
                self.apply_or_resync(std::slice::from_ref(&reply.diff), outbox)?;
                let result: Result<Outcome, String> = reply.result.into();
                self.resolve(reply.id, result.map_err(refusal));
                Ok(())
            }
            Message::Snapshot { id, snapshot } => {
                let notice = lock(&self.core).replace(None, &snapshot);
                notice.tell();
                self.resolve(id, Ok(Outcome::Executed));
                Ok(())
            }
            Message::SchemaChanged { schema, snapshot } => {
                let schema = Schema::new(schema)
                    .map_err(|e| format!("the server sent an invalid schema: {e}"))?;
                info!(states = schema.len(), "the source's schema changed");
                let notice = lock(&self.core).replace(Some(Arc::new(schema)), &snapshot);
                notice.tell();
                Ok(())
            }
            Message::Payload(payload) => {
                // No receivers is fine: nobody asked for payloads.
                let _ = self.payloads.send(payload);
                Ok(())
            }
            Message::Ping(nonce) => {
                // A full outbox means pongs are the least of our problems; skipping one is safe.
                let _ = outbox.try_send(Message::Pong(nonce));
                Ok(())
            }
            Message::Pong(_) => Ok(()),
            Message::Ancestry(ancestry) => {
                self.set_upstream(ancestry);
                Ok(())
            }
            Message::Bye { reason } => Err(format!("the server said bye: {}", printable(&reason))),
            Message::Error { message } => Err(format!(
                "the server reported a protocol error: {}",
                printable(&message)
            )),
            other => Err(format!("unexpected {} from a server", other.name())),
        }
    }

    /// Diffs that were read together: one change for waiters and observers.
    fn handle_diffs(
        &self,
        diffs: &[ClockDiff],
        outbox: &mpsc::Sender<Message>,
    ) -> Result<(), String> {
        self.stats
            .diffs
            .fetch_add(diffs.len() as u64, Ordering::Relaxed);
        self.apply_or_resync(diffs, outbox)
    }

    fn apply_or_resync(
        &self,
        diffs: &[ClockDiff],
        outbox: &mpsc::Sender<Message>,
    ) -> Result<(), String> {
        let applied = lock(&self.core).apply(diffs);
        match applied {
            Ok(notice) => {
                notice.tell();
                Ok(())
            }
            Err(ApplyError::Checksum) => {
                warn!(mirror = %self.id, "clock checksum mismatch; asking for a full sync");
                self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                // Id 0: no caller waits; the snapshot replaces the clock when it comes.
                let _ = outbox.try_send(Message::Sync { id: 0 });
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Connects and shakes hands.
async fn establish(
    endpoint: &Endpoint,
    config: &MirrorConfig,
    schema_hash: u64,
) -> Result<Session, MirrorError> {
    let stream = match timeout(
        config.connect_timeout,
        transport::connect(endpoint, &config.transport),
    )
    .await
    {
        Ok(connected) => connected?,
        Err(_) => {
            return Err(MirrorError::Transport(TransportError::Connect {
                endpoint: endpoint.without_machine(),
                error: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            }));
        }
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let plain = FrameConfig {
        max_frame: config.max_frame,
        compression: None,
    };
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client_id: config.client_id.clone(),
        source: endpoint.machine.clone().unwrap_or_default(),
        schema_hash,
        options: WantedOptions {
            compression: config.compression,
            track: config.track.clone(),
        },
        token: config.token.clone(),
    };
    let mut out = Vec::new();
    encode_frame(&plain, &Message::Hello(hello), &mut out);
    // Handshake failures quote the peer (its bye, its error, a transport's close reason).
    let handshake_failed = |reason: String| MirrorError::Handshake {
        endpoint: endpoint.clone(),
        reason: printable(&reason).into_owned(),
    };
    // Asking for compression means being able to decode it, from the welcome on.
    let mut reader = FrameReader::new(FrameConfig {
        compression: config.compression.then(Compression::default),
        ..plain
    });
    let exchange = async {
        // A server that refuses may close before it has read the hello: its refusal is still
        // the answer to report, so read even when the write failed.
        let wrote = match wr.write_all(&out).await {
            Ok(()) => wr.flush().await,
            Err(e) => Err(e),
        };
        let ignored = AtomicU64::new(0);
        let read = wire::read_message(&mut rd, &mut reader, &ignored).await;
        // Another protocol's answer may be shorter than the frame its first bytes announce,
        // ending in a close rather than a bad frame: name it whichever way the read ended.
        if read.is_err()
            && let Some(hint) = crate::proto::foreign_protocol(reader.opening())
        {
            return Err(handshake_failed(format!("not an aRPC server: {hint}")));
        }
        match (read, wrote) {
            (Ok(message), _) => Ok(message),
            (Err(_), Err(e)) => Err(handshake_failed(format!("sending the hello failed: {e}"))),
            (Err(ReadError::Closed), Ok(())) => {
                Err(handshake_failed("the server closed the connection".into()))
            }
            (Err(ReadError::Io(e)), Ok(())) => Err(handshake_failed(
                crate::transport::tls::explain(e).to_string(),
            )),
            (Err(ReadError::Protocol(e)), Ok(())) => {
                Err(handshake_failed(format!("not an aRPC server: {e}")))
            }
        }
    };
    let answer = match timeout(config.handshake_timeout, exchange).await {
        Ok(answer) => answer?,
        Err(_) => {
            return Err(MirrorError::HandshakeTimeout {
                endpoint: endpoint.clone(),
                after: config.handshake_timeout,
            });
        }
    };
    let welcome = match answer {
        Message::Welcome(welcome) => welcome,
        Message::Refused(Refusal { kind, reason }) => {
            return Err(MirrorError::Refused {
                endpoint: endpoint.clone(),
                kind,
                reason: printable(&reason).into_owned(),
            });
        }
        other => {
            return Err(handshake_failed(crate::proto::with_foreign_hint(
                format!("expected Welcome, got {}", other.name()),
                reader.opening(),
            )));
        }
    };
    let frame = FrameConfig {
        compression: welcome.granted.compression.then(Compression::default),
        ..plain
    };
    reader.set_config(frame);
    Ok(Session {
        rd,
        wr,
        reader,
        frame,
        welcome,
    })
}

/// The connection task: run sessions, connect between them, until stopped or unreferenced.
async fn drive(
    weak: Weak<Shared>,
    mut current: Option<(Session, mpsc::Receiver<Message>)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut jitter = backoff::Jitter::new(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (weak.as_ptr() as u64),
    );
    // The first attempt of a mirror that starts without a session goes at once.
    let mut attempt: Option<u32> = None;
    loop {
        if let Some((session, mut outbox)) = current.take() {
            let end = run_session(&weak, session, &mut outbox, &mut stop).await;
            let Some(shared) = weak.upgrade() else { return };
            shared.lost();
            if *stop.borrow() || lock(&shared.core).closed {
                debug!(mirror = %shared.id, "mirror stopped");
                return;
            }
            warn!(mirror = %shared.id, endpoint = %shared.endpoint, reason = %end, "disconnected; reconnecting");
            lock(&shared.core).last_error = Some(end);
            attempt = Some(0);
        }
        let Some(shared) = weak.upgrade() else { return };
        let (endpoint, config) = (shared.endpoint.clone(), shared.config.clone());
        drop(shared);
        if let Some(n) = attempt {
            let wait = backoff::delay(n, config.backoff_initial, config.backoff_max, jitter.draw());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
        let Some(shared) = weak.upgrade() else { return };
        shared.conn.send_replace(ConnState::Connecting);
        let hash = lock(&shared.core).schema.hash();
        drop(shared);
        let established = tokio::select! {
            established = establish(&endpoint, &config, hash) => established,
            _ = stop.changed() => return,
        };
        let Some(shared) = weak.upgrade() else { return };
        let adopted = established.and_then(|session| shared.adopt(session, attempt.is_some()));
        match adopted {
            Ok((outbox, session)) => {
                info!(mirror = %shared.id, %endpoint, "connected; clock synced");
                current = Some((session, outbox));
            }
            Err(e) => {
                let n = attempt.map_or(0, |n| n.saturating_add(1));
                if n == 0
                    || matches!(
                        e,
                        MirrorError::Refused { .. } | MirrorError::SchemaMismatch { .. }
                    )
                {
                    warn!(mirror = %shared.id, %endpoint, error = %e, "cannot connect; retrying with backoff");
                } else {
                    debug!(mirror = %shared.id, %endpoint, error = %e, attempt = n, "reconnect failed");
                }
                lock(&shared.core).last_error = Some(e.to_string());
                shared.conn.send_replace(ConnState::Disconnected);
                attempt = Some(n);
            }
        }
    }
}

/// One connected session: reader and writer until either ends. Returns why it ended.
async fn run_session(
    weak: &Weak<Shared>,
    session: Session,
    outbox: &mut mpsc::Receiver<Message>,
    stop: &mut watch::Receiver<bool>,
) -> String {
    let Session {
        mut rd,
        mut wr,
        mut reader,
        frame,
        ..
    } = session;
    let Some((idle, keepalive, sender, stats)) = weak.upgrade().and_then(|s| {
        let sender = lock(&s.core).outbox.clone()?;
        Some((
            s.config.idle_timeout,
            s.config.keepalive,
            sender,
            s.stats.clone(),
        ))
    }) else {
        return "mirror dropped".into();
    };

    let read = async {
        let mut diffs = Vec::new();
        let mut silence = wire::IdleDeadline::new(idle);
        loop {
            let read = tokio::select! {
                biased;
                read = wire::read_message(&mut rd, &mut reader, &stats.bytes_in) => read,
                () = silence.expired() => return format!("the server was silent for {idle:?}"),
            };
            let message = match read {
                Err(ReadError::Closed) => return "the server closed the connection".to_owned(),
                Err(ReadError::Io(e)) => return format!("i/o error: {e}"),
                Err(ReadError::Protocol(e)) => return format!("protocol error: {e}"),
                Ok(message) => message,
            };
            silence.touch();
            let Some(shared) = weak.upgrade() else {
                return "mirror dropped".into();
            };
            // Diffs already read behind this one are applied with it: a mirror that fell
            // behind catches up in one step instead of replaying every stale clock.
            let message = if let Message::Diff(first) = message {
                diffs.push(first);
                let next = loop {
                    match reader.next_message() {
                        Ok(Some(Message::Diff(more))) => diffs.push(more),
                        Ok(next) => break next,
                        Err(e) => return format!("protocol error: {e}"),
                    }
                };
                let applied = shared.handle_diffs(&diffs, &sender);
                diffs.clear();
                if let Err(reason) = applied {
                    return reason;
                }
                match next {
                    Some(message) => message,
                    None => continue,
                }
            } else {
                message
            };
            if let Err(reason) = shared.handle(message, &sender) {
                return reason;
            }
        }
    };

    let write = async {
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let mut nonce = 0u64;
        let mut out = Vec::with_capacity(256);
        loop {
            out.clear();
            tokio::select! {
                next = outbox.recv() => {
                    let Some(first) = next else { return "outbox closed".to_owned() };
                    let bye = matches!(first, Message::Bye { .. });
                    encode_frame(&frame, &first, &mut out);
                    while let Ok(more) = outbox.try_recv() {
                        encode_frame(&frame, &more, &mut out);
                    }
                    if bye {
                        let _ = wr.write_all(&out).await;
                        let _ = wr.flush().await;
                        let _ = wr.shutdown().await;
                        return "mirror closed".to_owned();
                    }
                }
                _ = ping.tick() => {
                    nonce += 1;
                    encode_frame(&frame, &Message::Ping(nonce), &mut out);
                }
            }
            if let Err(e) = wr.write_all(&out).await {
                return format!("i/o error: {e}");
            }
            if let Err(e) = wr.flush().await {
                return format!("i/o error: {e}");
            }
            stats
                .bytes_out
                .fetch_add(out.len() as u64, Ordering::Relaxed);
        }
    };

    tokio::select! {
        end = read => end,
        end = write => end,
        _ = stop.wait_for(|s| *s) => "mirror closed".to_owned(),
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
        lock(&self.shared.core).schema.clone()
    }

    fn clock(&self) -> Vec<u64> {
        lock(&self.shared.core).ticks.clone()
    }

    fn tick_at(&self, idx: usize) -> u64 {
        lock(&self.shared.core).ticks.get(idx).copied().unwrap_or(0)
    }

    fn queue_tick(&self) -> u64 {
        lock(&self.shared.core).queue_tick
    }

    fn wait(&self, condition: Condition) -> When {
        let host: Weak<dyn WaiterHost> = Arc::downgrade(&self.shared) as Weak<dyn WaiterHost>;
        let mut core = lock(&self.shared.core);
        let core = &mut *core;
        make_when(host, core.waiters.register(&core.ticks, condition))
    }

    fn mutate(&self, mutation: Mutation) -> MutationFuture {
        let shared = self.shared.clone();
        Box::pin(async move {
            let outbox = shared.outbox_for(&mutation)?;
            let (ticket, rx) = lock(&shared.core).register_pending()?;
            if outbox
                .send(Message::Mutate(request(ticket.id, mutation)))
                .await
                .is_err()
            {
                lock(&shared.core).pending.withdraw(ticket);
                return Err(MutationError::Disconnected);
            }
            shared.await_reply(rx).await
        })
    }

    fn observe(&self, observer: Arc<dyn Observer>) -> (ObserverId, Vec<u64>) {
        let mut core = lock(&self.shared.core);
        let id = core.next_observer;
        core.next_observer += 1;
        Arc::make_mut(&mut core.observers).push((id, observer));
        (ObserverId(id), core.ticks.clone())
    }

    fn unobserve(&self, id: ObserverId) -> bool {
        let mut core = lock(&self.shared.core);
        let before = core.observers.len();
        Arc::make_mut(&mut core.observers).retain(|(i, _)| *i != id.0);
        core.observers.len() != before
    }

    fn ancestry(&self) -> Vec<String> {
        let core = lock(&self.shared.core);
        std::iter::once(self.shared.id.clone())
            .chain(core.upstream.iter().cloned())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        requests: &mut Requests,
    ) -> (Ticket, oneshot::Receiver<Result<Outcome, MutationError>>) {
        let (tx, rx) = oneshot::channel();
        (requests.insert(tx), rx)
    }

    fn core_of(ticks: &[u64]) -> Arc<Shared> {
        let schema = crate::machine::Schema::builder()
            .state(crate::machine::StateDef::new("A").multi())
            .state(crate::machine::StateDef::new("B").multi())
            .build()
            .expect("schema");
        let endpoint: Endpoint = "tcp://127.0.0.1:1".parse().expect("endpoint");
        let shared = Shared::new(&endpoint, MirrorConfig::default(), Arc::new(schema));
        lock(&shared.core).ticks = ticks.to_vec();
        shared
    }

    fn diff_to(from: &[u64], to: &[u64], queue: (u64, u64)) -> ClockDiff {
        let clock = |ticks, queue_tick| crate::proto::diff::ClockRef { ticks, queue_tick };
        crate::proto::diff::diff(clock(from, queue.0), clock(to, queue.1), &Tracked::All)
    }

    #[test]
    fn diffs_read_together_are_one_change() {
        let shared = core_of(&[0, 0, 0]);
        let diffs = [
            diff_to(&[0, 0, 0], &[2, 0, 0], (0, 1)),
            diff_to(&[2, 0, 0], &[2, 2, 0], (1, 2)),
            diff_to(&[2, 2, 0], &[4, 2, 0], (2, 5)),
        ];
        let notice = lock(&shared.core).apply(&diffs).expect("applies");
        assert_eq!(
            (notice.before, notice.after),
            (vec![0, 0, 0], vec![4, 2, 0])
        );
        assert_eq!(notice.changed, [0, 1], "each changed state once");
        assert_eq!(lock(&shared.core).queue_tick, 5);
    }

    #[test]
    fn a_bad_diff_in_a_batch_stops_it() {
        // A checksum mismatch: the rest is dropped (a snapshot will supersede it).
        let shared = core_of(&[0, 0, 0]);
        let mut wrong = diff_to(&[0, 0, 0], &[2, 0, 0], (0, 1));
        wrong.checksum ^= 1;
        let after = diff_to(&[2, 0, 0], &[2, 2, 0], (1, 2));
        let result = lock(&shared.core).apply(&[wrong, after]);
        assert!(matches!(result, Err(ApplyError::Checksum)));
        assert_eq!(lock(&shared.core).ticks, [2, 0, 0]);
        // A state outside the schema: what came before it stays applied.
        let shared = core_of(&[0, 0, 0]);
        let good = diff_to(&[0, 0, 0], &[0, 2, 0], (0, 1));
        let bad = ClockDiff {
            changes: vec![(7, 1)],
            ..ClockDiff::default()
        };
        let result = lock(&shared.core).apply(&[good, bad]);
        assert!(matches!(result, Err(ApplyError::BadState { state: 7, .. })));
        let core = lock(&shared.core);
        assert_eq!(
            (core.ticks.as_slice(), core.queue_tick),
            (&[0, 2, 0][..], 1)
        );
    }

    #[test]
    fn request_ids_stay_as_small_as_the_requests_in_flight() {
        let mut requests = Requests::default();
        for _ in 0..1000 {
            let (ticket, _rx) = request(&mut requests);
            assert_eq!(ticket.id, 1, "one at a time: always id 1");
            assert!(requests.take(ticket.id).is_some());
        }
        let held: Vec<_> = (0..3).map(|_| request(&mut requests)).collect();
        let ids: Vec<u64> = held.iter().map(|(t, _)| t.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(requests.take(2).is_some());
        assert_eq!(request(&mut requests).0.id, 2, "a freed id is reused");
        assert!(requests.take(0).is_none(), "0 is never a request");
        assert!(requests.take(99).is_none());
    }

    #[test]
    fn an_abandoned_id_stays_taken_until_its_answer_comes() {
        let mut requests = Requests::default();
        let (first, rx) = request(&mut requests);
        drop(rx); // the caller timed out
        let (second, _rx) = request(&mut requests);
        assert_ne!(first.id, second.id);
        // The late answer frees the id and resolves nobody else.
        assert!(requests.take(first.id).is_some());
        assert_eq!(request(&mut requests).0.id, first.id);
    }

    #[test]
    fn a_source_that_never_answers_costs_at_most_the_in_flight_limit() {
        let shared = core_of(&[0, 0, 0]);
        let mut core = lock(&shared.core);
        let mut held = Vec::with_capacity(MAX_IN_FLIGHT);
        for _ in 0..MAX_IN_FLIGHT {
            held.push(core.register_pending().expect("below the limit"));
        }
        assert_eq!(
            core.register_pending().map(|(ticket, _)| ticket.id),
            Err(MutationError::QueueFull {
                limit: MAX_IN_FLIGHT
            })
        );
        // An answer frees its id for the next request.
        assert!(core.pending.take(held[7].0.id).is_some());
        assert_eq!(
            core.register_pending().expect("one is free").0.id,
            held[7].0.id
        );
    }

    #[test]
    fn only_its_own_request_withdraws_an_id() {
        let mut requests = Requests::default();
        let (stale, _rx) = request(&mut requests);
        let _ = requests.take_all(); // the connection ended
        let (fresh, mut rx) = request(&mut requests);
        assert_eq!(stale.id, fresh.id, "the id was reused");
        requests.withdraw(stale); // the old caller noticing its send failed
        let reply = requests
            .take(fresh.id)
            .expect("the new request still waits");
        let _ = reply.send(Ok(Outcome::Executed));
        assert!(matches!(rx.try_recv(), Ok(Ok(Outcome::Executed))));
        requests.withdraw(fresh);
        assert!(requests.take(fresh.id).is_none());
    }
}
