//! [`DrivenMirror`]: a mirror whose connection an outside event loop drives.
//!
//! The loop opens a transport and calls [`DrivenMirror::connected`], hands in what it reads
//! ([`DrivenMirror::handle_bytes`]), the time when [`DrivenMirror::poll_timeout`] is due
//! ([`DrivenMirror::handle_timeout`]) and the end of the transport
//! ([`DrivenMirror::handle_lost`]), and sends what [`DrivenMirror::take_transmit`] gives. A
//! mutation made through the [`StateSource`] queues bytes outside those calls: the `outbound`
//! hook tells the loop to take them. Reconnecting is the loop's: after a
//! [`MirrorEvent::Closed`] or a failed handshake it connects again when it likes, and the clock
//! stays the last one known meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::machine::{
    ErrFuture, Mutation, MutationError, MutationFuture, Schema, StateSource, UpstreamInfo,
};
use crate::proto::session::{ClientConfig, ClientSession, Moment, Phase};
use crate::replica::{Pending, ReplicaCore};

/// What the event loop (or the page) is told after an input.
pub use crate::replica::ReplicaEvent as MirrorEvent;

/// A mirror of a remote source over a connection driven from outside.
#[derive(Clone)]
pub struct DrivenMirror {
    shared: Arc<Shared>,
}

struct Shared {
    endpoint: String,
    /// The session, the clock and what watches it (`crate::replica`, as in a network mirror).
    core: Arc<ReplicaCore>,
    reconnects: AtomicU64,
    /// The latest time the loop handed in (nanoseconds of its `Moment`s): the clock a mutation
    /// is made at, for its retry deadline.
    last_now: Arc<AtomicU64>,
}

impl std::fmt::Debug for DrivenMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenMirror")
            .field("id", &self.shared.core.id)
            .field("endpoint", &self.shared.endpoint)
            .finish()
    }
}

impl DrivenMirror {
    /// A mirror named `id` of the source `config` asks for at `endpoint` (for status displays).
    /// `schema`, when set, is the one the source must serve (else the welcome brings it).
    /// `outbound` is called whenever bytes wait to be sent after a call that was not an input.
    pub fn new(
        id: impl Into<String>,
        endpoint: impl Into<String>,
        config: ClientConfig,
        schema: Option<Arc<Schema>>,
        outbound: impl Fn() + Send + Sync + 'static,
    ) -> DrivenMirror {
        let clock_schema = schema.clone().unwrap_or_else(placeholder);
        let last_now = Arc::new(AtomicU64::new(0));
        let seen = last_now.clone();
        DrivenMirror {
            shared: Arc::new(Shared {
                endpoint: endpoint.into(),
                core: ReplicaCore::new(
                    id.into(),
                    ClientSession::new(config, schema),
                    clock_schema,
                    Box::new(outbound),
                    Box::new(move || {
                        Moment::since_epoch(std::time::Duration::from_nanos(
                            seen.load(Ordering::Relaxed),
                        ))
                    }),
                ),
                reconnects: AtomicU64::new(0),
                last_now,
            }),
        }
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.shared.core.lock().session.phase()
    }

    /// Why the last connection failed or ended, until the next one is ready.
    pub fn last_error(&self) -> Option<String> {
        self.shared.core.last_error()
    }

    /// The source's ACL as the last welcome granted it: the names of the states hidden from
    /// this mirror (their ticks stay 0 here) and of those it may see but not mutate. Both
    /// empty before the first welcome.
    pub fn acl(&self) -> (Vec<String>, Vec<String>) {
        let replica = self.shared.core.lock();
        let schema = &replica.schema;
        let session = &replica.session;
        let named = |keep: &dyn Fn(usize) -> bool| -> Vec<String> {
            (0..schema.len())
                .filter(|&i| keep(i))
                .map(|i| schema.name(i).to_owned())
                .collect()
        };
        let hidden = named(&|i| !session.sees(i));
        let read_only = named(&|i| session.sees(i) && !session.may_mutate(i));
        (hidden, read_only)
    }

    /// When [`DrivenMirror::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Moment> {
        self.shared.core.lock().session.poll_timeout()
    }

    /// Takes the bytes to send, in order (appended to `out`).
    pub fn take_transmit(&self, out: &mut Vec<u8>) {
        let mut replica = self.shared.core.lock();
        if out.is_empty() {
            replica.session.take_transmit(out);
        } else {
            let mut taken = Vec::new();
            replica.session.take_transmit(&mut taken);
            out.extend_from_slice(&taken);
        }
    }

    /// The transport is up: the hello is queued.
    pub fn connected(&self, now: Moment) -> Vec<MirrorEvent> {
        self.saw(now);
        self.input(|session| session.connect(now))
    }

    /// Bytes read from the transport.
    pub fn handle_bytes(&self, bytes: &[u8], now: Moment) -> Vec<MirrorEvent> {
        self.saw(now);
        self.input(|session| session.handle_bytes(bytes, now))
    }

    /// The time, when [`DrivenMirror::poll_timeout`] was due (or later).
    pub fn handle_timeout(&self, now: Moment) -> Vec<MirrorEvent> {
        self.saw(now);
        self.input(|session| session.handle_timeout(now))
    }

    /// Keeps the latest time the loop handed in.
    fn saw(&self, now: Moment) {
        let nanos = u64::try_from(now.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.last_now.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The transport ended (`reason` from it); waiting mutations fail with `Disconnected`.
    pub fn handle_lost(&self, reason: String) -> Vec<MirrorEvent> {
        self.input(|session| session.handle_lost(reason))
    }

    /// Disposes the mirror ([`StateSource::dispose`]): says goodbye (when connected; take the
    /// bytes), waits end with `Disposed`, mutations fail, reads answer empty. The session's
    /// last events (none when it was disposed already).
    pub fn close(&self) -> Vec<MirrorEvent> {
        self.shared.core.dispose(self).unwrap_or_default()
    }

    fn input(&self, input: impl FnOnce(&mut ClientSession<Pending>)) -> Vec<MirrorEvent> {
        let drained = self.shared.core.input(self, input);
        let reconnects = drained
            .events
            .iter()
            .filter(|e| matches!(e, MirrorEvent::Ready { reconnect: true }))
            .count();
        self.shared
            .reconnects
            .fetch_add(reconnects as u64, Ordering::Relaxed);
        drained.events
    }
}

/// A canceled answer: the mirror (and its session) went away before the source answered.
fn answer<T>(
    asked: Result<futures_channel::oneshot::Receiver<Result<T, MutationError>>, MutationError>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<T, MutationError>> + Send>>
where
    T: Send + 'static,
{
    Box::pin(async move {
        match asked?.await {
            Ok(result) => result,
            Err(_) => Err(MutationError::Disconnected),
        }
    })
}

/// Reads, waits, watchers and disposal are the replica's, as on a network mirror; requests
/// to the source wait for its answer without a deadline (the page's glue sets one).
impl StateSource for DrivenMirror {
    fn id(&self) -> &str {
        &self.shared.core.id
    }

    crate::replica::replica_source_methods!(shared.core);

    /// Asked of the source; fails with `Disconnected` while the mirror is not connected.
    fn err(&self) -> ErrFuture {
        answer(self.shared.core.err())
    }

    fn mutate(&self, mutation: Mutation) -> MutationFuture {
        answer(self.shared.core.mutate(mutation))
    }

    fn upstream(&self) -> Option<UpstreamInfo> {
        let (retried, expired, waiting) = self.shared.core.retry_counts();
        Some(UpstreamInfo {
            endpoint: self.shared.endpoint.clone(),
            state: match self.phase() {
                Phase::Ready => "ready",
                Phase::Handshake => "connecting",
                Phase::Idle | Phase::Closed => "disconnected",
            },
            last_error: self.last_error(),
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
            mutations_retried: retried,
            mutations_expired: expired,
            mutations_waiting: waiting,
        })
    }

    /// Says goodbye (the loop takes the bytes and closes its transport) and ends the mirror
    /// as a disposed machine ends.
    fn dispose(&self) {
        self.close();
    }
}

/// The schema of a mirror that has not heard its source yet: `Exception` alone, no ticks.
fn placeholder() -> Arc<Schema> {
    Arc::new(
        Schema::new(crate::machine::SchemaDef::default())
            .expect("a schema of Exception alone is valid"),
    )
}
