//! [`DrivenServer`]: a source served to clients whose connections an outside event loop
//! drives, one [`ServerSession`] per connection. A page that hosts a machine nodes mirror
//! (through the relay's listen route) runs this.
//!
//! The loop opens a connection ([`DrivenServer::open`]), hands in its bytes, its timeouts and
//! its end, and sends what [`DrivenServer::take_transmit`] gives. The source's clock changes
//! and the answers of mutations and waits that resolve later come outside those calls: the
//! `outbound` hook tells the loop to call [`DrivenServer::pump`], which runs what is due and
//! brings every client up to the source's clock, then to take every connection's bytes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use crate::machine::{MutationError, ObserverId, Outcome, Schema, StateSource, WaitError};
use crate::proto::handshake::Offer;
use crate::proto::message::{Hello, Refusal, RefusalKind, Snapshot};
use crate::proto::session::{
    CatchUp, ClockFeed, DiffCache, Moment, ServerEvent, ServerSession, ServerSessionConfig,
    ServerStats, Versioned,
};

type Hook = Arc<dyn Fn() + Send + Sync>;

/// What the loop is told after an input or a pump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerDrive {
    /// The session ended: send what is left, then close the connection.
    Closed {
        /// The connection, as the loop numbered it when it opened it.
        conn: u32,
        /// Why the session ended, for logs and the peer's close reason.
        reason: String,
    },
}

/// Work a session handed out whose answer comes later.
enum Running {
    Mutation(
        u64,
        Pin<Box<dyn Future<Output = Result<Outcome, MutationError>> + Send>>,
    ),
    Err(
        u64,
        Pin<Box<dyn Future<Output = Result<Option<String>, MutationError>> + Send>>,
    ),
    Wait {
        id: u64,
        wait: u64,
        future: Pin<Box<dyn Future<Output = Result<(), WaitError>> + Send>>,
    },
}

struct Conn {
    session: ServerSession,
    running: Vec<Running>,
    /// Events taken from the session, for the next round.
    queued: Vec<ServerEvent>,
    /// The end was reported to the loop.
    told_closed: bool,
}

/// A served source and its connections.
pub struct DrivenServer {
    shared: Arc<Shared>,
    observer: ObserverId,
}

struct Shared {
    /// The names a hello may ask for, the first the one told (an empty name asks for the only
    /// source).
    names: Vec<String>,
    source: Arc<dyn StateSource>,
    config: Arc<ServerSessionConfig>,
    stats: Arc<ServerStats>,
    published: Mutex<Versioned>,
    cache: DiffCache,
    conns: Mutex<HashMap<u32, Conn>>,
    outbound: Hook,
}

impl std::fmt::Debug for DrivenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenServer")
            .field("names", &self.shared.names)
            .field("connections", &lock(&self.shared.conns).len())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The source as a session reads it.
struct Feed<'a>(&'a Shared);

impl ClockFeed for Feed<'_> {
    fn latest(&self) -> Versioned {
        lock(&self.0.published).clone()
    }

    fn schema_hash(&self) -> u64 {
        self.0.source.schema().hash()
    }

    fn schema(&self) -> Option<Arc<Schema>> {
        Some(self.0.source.schema())
    }

    fn ancestry(&self) -> Vec<String> {
        self.0.source.ancestry()
    }
}

/// Wakes the loop when a running mutation or wait can go on.
struct LoopWaker(Hook);

impl Wake for LoopWaker {
    fn wake(self: Arc<Self>) {
        (self.0)();
    }
}

impl DrivenServer {
    /// Serves `source` under `names` (a hello may name any; the first is the one quoted);
    /// `outbound` is called when [`DrivenServer::pump`] is due.
    pub fn new(
        names: Vec<String>,
        source: Arc<dyn StateSource>,
        config: ServerSessionConfig,
        outbound: impl Fn() + Send + Sync + 'static,
    ) -> DrivenServer {
        let outbound: Hook = Arc::new(outbound);
        let published = Versioned {
            version: 0,
            ticks: Arc::from(Vec::new()),
            queue_tick: 0,
            ancestry: 0,
            schema: source.schema().hash(),
        };
        let shared = Arc::new(Shared {
            names,
            config: Arc::new(config),
            stats: Arc::default(),
            published: Mutex::new(published),
            cache: DiffCache::default(),
            conns: Mutex::default(),
            outbound,
            source: source.clone(),
        });
        // Each change is a new version; the loop is woken to push it.
        let weak = Arc::downgrade(&shared);
        let (observer, start) =
            source.observe(Arc::new(move |change: &crate::machine::ClockChange<'_>| {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                {
                    let mut v = lock(&shared.published);
                    v.version += 1;
                    v.ticks = Arc::from(change.after);
                    v.queue_tick = change.queue_tick;
                    v.schema = shared.source.schema().hash();
                }
                (shared.outbound)();
            }));
        {
            let mut v = lock(&shared.published);
            v.ticks = Arc::from(start);
            v.queue_tick = source.queue_tick();
        }
        DrivenServer { shared, observer }
    }

    /// Counters of every session.
    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// A new connection `conn`, its transport up.
    pub fn open(&self, conn: u32, now: Moment) {
        let session = ServerSession::new(
            self.shared.config.clone(),
            self.shared.stats.clone(),
            None,
            now,
        );
        lock(&self.shared.conns).insert(
            conn,
            Conn {
                session,
                running: Vec::new(),
                queued: Vec::new(),
                told_closed: false,
            },
        );
    }

    /// Bytes from connection `conn`.
    pub fn handle_bytes(&self, conn: u32, bytes: &[u8], now: Moment) -> Vec<ServerDrive> {
        self.input(conn, now, |session, feed| {
            session.handle_bytes(bytes, now, feed)
        })
    }

    /// The time, when connection `conn`'s [`DrivenServer::poll_timeout`] was due.
    pub fn handle_timeout(&self, conn: u32, now: Moment) -> Vec<ServerDrive> {
        let cache = &self.shared.cache;
        self.input(conn, now, |session, feed| {
            session.handle_timeout(now, feed, cache)
        })
    }

    /// The connection ended; its session and what it ran are dropped.
    pub fn handle_lost(&self, conn: u32) {
        lock(&self.shared.conns).remove(&conn);
    }

    /// When connection `conn`'s timeout is next due.
    pub fn poll_timeout(&self, conn: u32) -> Option<Moment> {
        lock(&self.shared.conns)
            .get(&conn)
            .and_then(|c| c.session.poll_timeout())
    }

    /// Takes the bytes to send on connection `conn` (appended to `out`).
    pub fn take_transmit(&self, conn: u32, out: &mut Vec<u8>) {
        if let Some(c) = lock(&self.shared.conns).get_mut(&conn) {
            let mut taken = Vec::new();
            c.session.take_transmit(&mut taken);
            out.extend_from_slice(&taken);
        }
    }

    /// The connections open now.
    pub fn conns(&self) -> Vec<u32> {
        let mut conns: Vec<u32> = lock(&self.shared.conns).keys().copied().collect();
        conns.sort_unstable();
        conns
    }

    /// The connections with bytes to send.
    pub fn pending(&self) -> Vec<u32> {
        lock(&self.shared.conns)
            .iter()
            .filter(|(_, c)| !c.session.transmit().is_empty())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Runs what came due (mutations and waits that were not done at once) and brings every
    /// client up to the source's clock.
    pub fn pump(&self, now: Moment) -> Vec<ServerDrive> {
        let ids: Vec<u32> = lock(&self.shared.conns).keys().copied().collect();
        let mut drives = Vec::new();
        for conn in ids {
            drives.extend(self.input(conn, now, |_, _| {}));
        }
        drives
    }

    /// Runs `f` on a connection's session, then its events, its running work and its
    /// catch-up, until the session hands out nothing more. The source runs outside the
    /// connections' lock: its handlers may call back in.
    fn input(
        &self,
        conn: u32,
        now: Moment,
        f: impl FnOnce(&mut ServerSession, &Feed<'_>),
    ) -> Vec<ServerDrive> {
        let shared = &*self.shared;
        let feed = Feed(shared);
        match lock(&shared.conns).get_mut(&conn) {
            Some(c) => f(&mut c.session, &feed),
            None => return Vec::new(),
        }
        // An answer lets the session read on: what it read then is handled in the next round.
        while self.step(conn, now) {}
        let mut conns = lock(&shared.conns);
        let Some(c) = conns.get_mut(&conn) else {
            return Vec::new();
        };
        if c.session.is_ready() {
            let latest = feed.latest();
            if c.session.push(&latest, &shared.cache) == CatchUp::Writer {
                c.session.catch_up(now, &feed, &shared.cache);
            }
        }
        match c.session.closed() {
            Some(reason) if !c.told_closed => {
                c.told_closed = true;
                vec![ServerDrive::Closed {
                    conn,
                    reason: reason.to_string(),
                }]
            }
            _ => Vec::new(),
        }
    }

    /// One round: the session's events become work, work that is done is answered. Whether
    /// another round is due (something was answered, or the session handed out more).
    fn step(&self, conn: u32, now: Moment) -> bool {
        let shared = &*self.shared;
        let feed = Feed(shared);
        let (events, mut running) = {
            let mut conns = lock(&shared.conns);
            let Some(c) = conns.get_mut(&conn) else {
                return false;
            };
            // What the last round's answers let the session read comes first.
            let mut events = std::mem::take(&mut c.queued);
            events.extend(std::iter::from_fn(|| c.session.poll_event()));
            (events, std::mem::take(&mut c.running))
        };
        for event in events {
            match event {
                ServerEvent::Hello(hello) => self.answer_hello(conn, &hello, now),
                ServerEvent::StatusRequest { .. } => {
                    if let Some(c) = lock(&shared.conns).get_mut(&conn) {
                        c.session.refuse(Refusal {
                            kind: RefusalKind::BadHello,
                            reason: "a page serves no status; ask a node".into(),
                        });
                    }
                }
                ServerEvent::Mutate { id, mutation } => {
                    running.push(Running::Mutation(id, shared.source.mutate(mutation)));
                }
                ServerEvent::WhenArgs {
                    id,
                    wait,
                    state,
                    args,
                } => running.push(Running::Wait {
                    id,
                    wait,
                    future: Box::pin(shared.source.when_args(&state, args)),
                }),
                ServerEvent::CancelWait { wait } => {
                    running.retain(|r| !matches!(r, Running::Wait { wait: w, .. } if *w == wait));
                }
                ServerEvent::Err { id } => running.push(Running::Err(id, shared.source.err())),
            }
        }
        // Polled outside the lock: a local machine runs its transition (and handlers) here.
        let waker = Waker::from(Arc::new(LoopWaker(shared.outbound.clone())));
        let mut cx = Context::from_waker(&waker);
        let mut answers = Vec::new();
        running.retain_mut(|r| {
            let answer = match r {
                Running::Mutation(id, future) => future
                    .as_mut()
                    .poll(&mut cx)
                    .map(|result| Answer::Mutation(*id, result)),
                Running::Err(id, future) => future
                    .as_mut()
                    .poll(&mut cx)
                    .map(|result| Answer::Err(*id, result)),
                Running::Wait { id, wait, future } => future
                    .as_mut()
                    .poll(&mut cx)
                    .map(|result| Answer::Wait(*id, *wait, result)),
            };
            match answer {
                Poll::Ready(answer) => {
                    answers.push(answer);
                    false
                }
                Poll::Pending => true,
            }
        });
        let mut conns = lock(&shared.conns);
        let Some(c) = conns.get_mut(&conn) else {
            return false;
        };
        c.running.extend(running);
        let mut more = !answers.is_empty();
        for answer in answers {
            match answer {
                Answer::Mutation(id, result) => {
                    c.session
                        .handle_mutation_result(id, as_reply(result), now, &feed)
                }
                Answer::Err(id, result) => {
                    c.session
                        .handle_err_result(id, result.map_err(|e| e.to_string()), now, &feed)
                }
                Answer::Wait(id, wait, result) => c.session.handle_wait_result(id, wait, result),
            }
        }
        // What a welcome or an answer let the session read.
        c.queued
            .extend(std::iter::from_fn(|| c.session.poll_event()));
        more |= !c.queued.is_empty();
        more
    }

    /// Welcomes a hello that names this source (or no source), else refuses it.
    fn answer_hello(&self, conn: u32, hello: &Hello, now: Moment) {
        let shared = &*self.shared;
        let mut conns = lock(&shared.conns);
        let Some(c) = conns.get_mut(&conn) else {
            return;
        };
        if !hello.source.is_empty() && !shared.names.contains(&hello.source) {
            c.session.refuse(Refusal {
                kind: RefusalKind::UnknownSource,
                reason: format!(
                    "this page serves {:?}, not {:?}",
                    shared.names.first().map_or("", String::as_str),
                    hello.source
                ),
            });
            return;
        }
        let schema = shared.source.schema();
        let feed = Feed(shared);
        let start = feed.latest();
        let ancestry = shared.source.ancestry();
        let offer = Offer {
            schema: &schema,
            ancestry: &ancestry,
            snapshot: Snapshot {
                ticks: start.ticks.to_vec(),
                queue_tick: start.queue_tick,
            },
            parent_id: shared.source.parent_id(),
            tags: shared.source.tags(),
        };
        if let Some(accepted) = c.session.accept(offer) {
            c.session.welcome(accepted, schema, start, now, &feed);
        }
    }
}

enum Answer {
    Mutation(u64, Result<Outcome, MutationError>),
    Err(u64, Result<Option<String>, MutationError>),
    Wait(u64, u64, Result<(), WaitError>),
}

impl Drop for DrivenServer {
    fn drop(&mut self) {
        self.shared.source.unobserve(self.observer);
    }
}

/// A mutation's result as a session takes it: a refusal from further up passes down as its
/// reason alone.
fn as_reply(result: Result<Outcome, MutationError>) -> Result<Outcome, String> {
    result.map_err(|e| match e {
        MutationError::Refused(reason) => reason,
        other => other.to_string(),
    })
}
