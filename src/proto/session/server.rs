//! A server's session with one client: every protocol decision about that connection.
//!
//! The handshake (admission, the source's offer, the welcome or a refusal), status requests,
//! the ACL on each mutation, replies that carry the diff up to their time, snapshots on
//! request and when the source's clock went back, ancestry updates, the end of a session whose
//! source changed its schema, keepalive pings, the idle rule, pacing by a minimum push
//! interval, and the last word to a peer that is leaving.
//!
//! Bytes come in through [`ServerSession::handle_bytes`], time through
//! [`ServerSession::handle_timeout`], the source's clock through a [`ClockFeed`]; bytes to send
//! accumulate in [`ServerSession::transmit`] and work for the driver (look up a source, run a
//! mutation) comes out of [`ServerSession::poll_event`].
//!
//! The catch-up of a client to the source's latest clock has one path, [`ServerSession::push`]
//! and [`ServerSession::catch_up`] being its two entries: the first is the pusher's, which
//! writes to many connections at once and declines anything but a plain diff (the session
//! then says [`CatchUp::Writer`]); the second is the connection's own writer's, which does
//! everything.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::cache::{DiffCache, Versioned, options_key};
use super::time::Moment;
use crate::machine::{Mutation, Outcome, Schema};
use crate::proto::acl::Acl;
use crate::proto::acl::{admit, admit_status, check_mutation};
use crate::proto::config::Limits;
use crate::proto::diff::{self, Tracked, went_back};
use crate::proto::handshake::{Accepted, Offer, decide};
use crate::proto::limits::MAX_HELLO_FRAME;
use crate::proto::message::{
    Hello, MutateReply, MutateRequest, NodeStatus, Payload, Refusal, RefusalKind, Snapshot,
};
use crate::proto::{
    Compression, FrameConfig, FrameReader, Message, encode_frame, with_foreign_hint,
};

/// What every session of one server shares: its limits and access rules, built once.
#[derive(Debug, Clone, Default)]
pub struct ServerSessionConfig {
    pub limits: Limits,
    /// Compression offered to clients that ask; `None` to never compress.
    pub compression: Option<Compression>,
    pub acl: Acl,
}

/// Counters of one server, all since it started; sessions count into them.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections: AtomicU64,
    pub clients: AtomicU64,
    pub refusals: AtomicU64,
    /// Connections whose transport handshake (TLS, WebSocket, QUIC) failed.
    pub transport_errors: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub diffs_sent: AtomicU64,
    /// Source versions folded into a later diff because the client's connection was busy.
    pub diffs_merged: AtomicU64,
    pub mutations: AtomicU64,
    /// Clients dropped because a write to them stayed blocked past the write deadline.
    pub write_stalls: AtomicU64,
    /// Clients dropped because their payloads could not be queued.
    pub payload_overflows: AtomicU64,
    /// Time from receiving a mutation to its result, at this server.
    pub mutation_latency: crate::metrics::Histogram,
}

/// The source a session serves, as the session reads it.
pub trait ClockFeed {
    /// The source's clock as of now.
    fn latest(&self) -> Versioned;
    /// The hash of the source's schema now (the latest version's may lag behind it).
    fn schema_hash(&self) -> u64;
    /// The source's id and its upstream sources' ids, nearest first.
    fn ancestry(&self) -> Vec<String>;
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A hello from a client that is let in: find the source it names and answer with
    /// [`ServerSession::accept`] or [`ServerSession::refuse`].
    Hello(Hello),
    /// A status request: answer with [`ServerSession::answer_status`].
    StatusRequest { token: Option<String> },
    /// Run this mutation on the source and hand its result to
    /// [`ServerSession::handle_mutation_result`].
    Mutate { id: u64, mutation: Mutation },
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// The client is up to date (or nothing it tracks changed, or its next push is paced).
    Nothing,
    /// A diff frame is in the transmit buffer; `merged` versions were folded into it.
    Sent { merged: u64 },
    /// More than a plain diff is due: the connection's writer must call
    /// [`ServerSession::catch_up`].
    Writer,
    /// The session ended (its farewell, if any, is in the transmit buffer).
    Closed,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    PeerBye,
    PeerClosed,
    PeerError(String),
    Protocol(String),
    Idle(Duration),
    Io(String),
    Shutdown,
    /// Too slow for its payloads.
    Kicked,
    WriteStalled(Duration),
    /// The source's schema is not the one the client was given.
    SchemaChanged,
    /// The handshake ended in a refusal or a status answer.
    Handshake,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::PeerBye => f.write_str("the client said bye"),
            CloseReason::PeerClosed => f.write_str("the client closed the connection"),
            // Quoted: the peer's words must not forge log lines.
            CloseReason::PeerError(message) => {
                write!(f, "the client reported an error: {message:?}")
            }
            CloseReason::Protocol(message) => write!(f, "protocol error: {message}"),
            CloseReason::Idle(after) => write!(f, "nothing received for {after:?}"),
            CloseReason::Io(e) => write!(f, "i/o error: {e}"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
            CloseReason::Kicked => f.write_str("too slow to keep up"),
            CloseReason::WriteStalled(after) => write!(f, "a write stalled for {after:?}"),
            CloseReason::SchemaChanged => f.write_str("the source's schema changed"),
            CloseReason::Handshake => f.write_str("the handshake was answered"),
        }
    }
}

impl CloseReason {
    /// What to tell the peer on the way out, if anything.
    fn farewell(&self) -> Option<Message> {
        let bye = |reason: &str| {
            Some(Message::Bye {
                reason: reason.to_owned(),
            })
        };
        match self {
            CloseReason::Protocol(message) => Some(Message::Error {
                message: message.clone(),
            }),
            CloseReason::Idle(after) => bye(&format!("idle for {after:?}")),
            CloseReason::Shutdown => bye("server shutting down"),
            CloseReason::Kicked => bye("too slow to keep up; reconnect"),
            CloseReason::SchemaChanged => {
                bye("the source's schema changed; reconnect to get the new one")
            }
            _ => None,
        }
    }
}

/// How many bytes may wait to be sent before the session reads no more requests
/// ([`ServerSession::backlogged`]): a client that sends faster than it reads its answers is
/// held back instead of growing the buffer.
const BACKLOG_BYTES: usize = 64 << 10;

/// Where a session is.
#[derive(Debug)]
enum Phase {
    /// Waiting for the first message, since this moment.
    Handshake {
        since: Moment,
    },
    /// A hello or status request was handed to the driver; its answer is awaited.
    Answering {
        since: Moment,
        hello: Option<Box<Hello>>,
    },
    Ready(Box<Client>),
    Closed(CloseReason),
}

/// An accepted client.
#[derive(Debug)]
struct Client {
    id: String,
    /// The schema the client was given: its tracked and mutable positions are of this one.
    schema: Arc<Schema>,
    tracked: Tracked,
    mutable: Option<Vec<u32>>,
    /// Sessions with equal keys get the same diff bytes.
    options: u64,
    /// The clock the client has, as a version of the source.
    last: Versioned,
    /// The source's ancestry count as of the ancestry the client has.
    ancestry: u64,
    /// Mutations handed to the driver whose reply is still to be sent: a reply carries the
    /// diff up to its time, so the pusher leaves such a client to its writer.
    replies_pending: usize,
    last_push: Moment,
    push_due: Option<Moment>,
}

/// A server's session with one client.
#[derive(Debug)]
pub struct ServerSession {
    config: Arc<ServerSessionConfig>,
    stats: Arc<ServerStats>,
    /// Under mutual TLS, who the certificate says the client is, whatever its hello claims.
    identity: Option<String>,
    reader: FrameReader,
    frame: FrameConfig,
    phase: Phase,
    transmit: Vec<u8>,
    events: VecDeque<ServerEvent>,
    last_heard: Moment,
    next_ping: Moment,
    nonce: u64,
    /// Mutations handed to the driver whose result has not come back. Reading stops
    /// meanwhile: what a client sends after a mutation (a sync, another mutation) is answered
    /// after it, in order.
    running: usize,
}

impl ServerSession {
    /// A session for a connection whose transport is up.
    pub fn new(
        config: Arc<ServerSessionConfig>,
        stats: Arc<ServerStats>,
        identity: Option<String>,
        now: Moment,
    ) -> ServerSession {
        let frame = FrameConfig {
            max_frame: config.limits.max_frame,
            compression: None,
        };
        // Until the hello is accepted a frame may be at most MAX_HELLO_FRAME: every connection
        // still in its handshake may hold that much, and their number is only bounded by the
        // handshake timeout.
        let reader = FrameReader::new(FrameConfig {
            max_frame: config.limits.max_frame.min(MAX_HELLO_FRAME),
            compression: None,
        });
        ServerSession {
            next_ping: now + config.limits.keepalive,
            config,
            stats,
            identity,
            reader,
            frame,
            phase: Phase::Handshake { since: now },
            transmit: Vec::new(),
            events: VecDeque::new(),
            last_heard: now,
            nonce: 0,
            running: 0,
        }
    }

    // Getters.

    /// The client's id, once its hello is in.
    pub fn client_id(&self) -> Option<&str> {
        match &self.phase {
            Phase::Ready(client) => Some(&client.id),
            Phase::Answering {
                hello: Some(hello), ..
            } => Some(&hello.client_id),
            _ => None,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready(_))
    }

    /// Why the session ended, once it has.
    pub fn closed(&self) -> Option<&CloseReason> {
        match &self.phase {
            Phase::Closed(reason) => Some(reason),
            _ => None,
        }
    }

    /// The frame settings in force (compression once agreed).
    pub fn frame_config(&self) -> &FrameConfig {
        &self.frame
    }

    /// Bytes to send, in order.
    pub fn transmit(&self) -> &[u8] {
        &self.transmit
    }

    /// Whether so much waits to be sent that the driver should read no more requests until
    /// the writer has caught up.
    pub fn backlogged(&self) -> bool {
        self.transmit.len() > BACKLOG_BYTES
    }

    /// When [`ServerSession::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Moment> {
        match &self.phase {
            Phase::Handshake { since } | Phase::Answering { since, .. } => {
                Some(*since + self.config.limits.handshake_timeout)
            }
            Phase::Ready(client) => {
                let idle = self.last_heard + self.config.limits.idle_timeout;
                let due = idle.min(self.next_ping);
                Some(client.push_due.map_or(due, |push| due.min(push)))
            }
            Phase::Closed(_) => None,
        }
    }

    // Inputs.

    /// Takes bytes from the client.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Moment, feed: &dyn ClockFeed) {
        self.stats
            .bytes_in
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.reader.push(bytes);
        self.last_heard = now;
        self.read_messages(now, feed);
    }

    /// Reads what the client sent, message by message, as far as the phase allows.
    fn read_messages(&mut self, now: Moment, feed: &dyn ClockFeed) {
        loop {
            // An answer to a hello is awaited (what follows it is read after the welcome), or
            // a mutation's result (what follows it is read after it).
            if matches!(self.phase, Phase::Answering { .. } | Phase::Closed(_)) || self.running > 0
            {
                return;
            }
            let message = match self.reader.next_message() {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(e) => {
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    if self.is_ready() {
                        self.close(CloseReason::Protocol(e.to_string()));
                    } else {
                        let message = with_foreign_hint(e.to_string(), self.reader.opening());
                        warn!(%message, "bad handshake bytes; closing");
                        self.refuse(Refusal {
                            kind: RefusalKind::BadHello,
                            reason: format!("not an aRPC hello: {message}"),
                        });
                    }
                    return;
                }
            };
            self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
            if self.is_ready() {
                self.handle_request(message, now, feed);
            } else {
                self.handle_first(message, now);
            }
        }
    }

    /// The first message of a connection.
    fn handle_first(&mut self, message: Message, now: Moment) {
        match message {
            Message::Hello(mut hello) => {
                if let Some(identity) = &self.identity
                    && *identity != hello.client_id
                {
                    info!(claimed = ?hello.client_id, %identity, "client id taken from its certificate");
                    hello.client_id = identity.clone();
                }
                // A peer that is not let in learns nothing of what is served here, not even
                // the names.
                if let Err(refusal) =
                    admit(&self.config.acl, &hello.client_id, hello.token.as_deref())
                {
                    self.refuse(refusal);
                    return;
                }
                self.phase = Phase::Answering {
                    since: now,
                    hello: Some(Box::new(hello.clone())),
                };
                self.events.push_back(ServerEvent::Hello(hello));
            }
            Message::StatusRequest { token } => {
                self.phase = Phase::Answering {
                    since: now,
                    hello: None,
                };
                self.events.push_back(ServerEvent::StatusRequest { token });
            }
            other => {
                let reason = with_foreign_hint(
                    format!("expected Hello as the first message, got {}", other.name()),
                    self.reader.opening(),
                );
                self.refuse(Refusal {
                    kind: RefusalKind::BadHello,
                    reason,
                });
            }
        }
    }

    /// A message from an accepted client.
    fn handle_request(&mut self, message: Message, now: Moment, feed: &dyn ClockFeed) {
        match message {
            Message::Mutate(request) => self.handle_mutate(request, now, feed),
            Message::Sync { id } => {
                let latest = feed.latest();
                let Phase::Ready(client) = &mut self.phase else {
                    return;
                };
                let snapshot = Snapshot {
                    ticks: client.tracked.mask(&latest.ticks),
                    queue_tick: latest.queue_tick,
                };
                client.last = latest;
                self.send(&Message::Snapshot { id, snapshot });
            }
            Message::Ping(nonce) => self.send(&Message::Pong(nonce)),
            Message::Pong(_) => {}
            Message::Bye { reason } => {
                debug!(?reason, "client said bye");
                self.close(CloseReason::PeerBye);
            }
            Message::Error { message } => self.close(CloseReason::PeerError(message)),
            other => {
                self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                self.close(CloseReason::Protocol(format!(
                    "unexpected {} from a client",
                    other.name()
                )));
            }
        }
    }

    fn handle_mutate(&mut self, request: MutateRequest, now: Moment, feed: &dyn ClockFeed) {
        self.stats.mutations.fetch_add(1, Ordering::Relaxed);
        let Phase::Ready(client) = &mut self.phase else {
            return;
        };
        // Positions of another schema would name other states.
        if feed.schema_hash() != client.schema.hash() {
            self.close(CloseReason::SchemaChanged);
            return;
        }
        let MutateRequest {
            id,
            kind,
            states,
            args,
        } = request;
        match check_mutation(
            &client.schema,
            &client.id,
            client.mutable.as_deref(),
            kind,
            &states,
        ) {
            Ok(()) => {
                if id != 0 {
                    client.replies_pending += 1;
                }
                self.running += 1;
                let states = states.into_iter().map(|s| s as usize).collect();
                self.events.push_back(ServerEvent::Mutate {
                    id,
                    mutation: Mutation::new(kind, states, args),
                });
            }
            Err(denied) => {
                if denied.by_acl() {
                    self.stats.refusals.fetch_add(1, Ordering::Relaxed);
                    info!(reason = %denied, "mutation refused by the ACL");
                }
                if id == 0 {
                    debug!(error = %denied, "no-reply mutation refused");
                } else {
                    client.replies_pending += 1;
                    self.reply(id, Err(denied.to_string()), now, feed);
                }
            }
        }
    }

    /// The result of a mutation from [`ServerEvent::Mutate`]: the reply, with the diff that
    /// brings the client up to date with it, is queued (nothing for id 0, which asked for no
    /// reply).
    pub fn handle_mutation_result(
        &mut self,
        id: u64,
        result: Result<Outcome, String>,
        now: Moment,
        feed: &dyn ClockFeed,
    ) {
        self.reply(id, result, now, feed);
        if self.running > 0 {
            self.running -= 1;
            if self.running == 0 {
                self.read_messages(now, feed);
            }
        }
    }

    /// Queues the reply to a mutation (nothing for id 0, which asked for none).
    fn reply(
        &mut self,
        id: u64,
        result: Result<Outcome, String>,
        now: Moment,
        feed: &dyn ClockFeed,
    ) {
        if id == 0 {
            if let Err(error) = result {
                debug!(%error, "no-reply mutation failed");
            }
            return;
        }
        let Phase::Ready(client) = &mut self.phase else {
            return;
        };
        client.replies_pending = client.replies_pending.saturating_sub(1);
        // The reply carries the diff up to now, so the client needs no extra push.
        let latest = self.latest(feed);
        if self.closed().is_some() {
            return;
        }
        self.resync_if_went_back(&latest);
        let Phase::Ready(client) = &mut self.phase else {
            return;
        };
        let diff = diff::diff(client.last.clock(), latest.clock(), &client.tracked);
        client.last = latest;
        client.last_push = now;
        self.send(&Message::MutateReply(MutateReply {
            id,
            result: result.into(),
            diff,
        }));
    }

    /// Time passed: the handshake deadline, the idle rule, keepalive pings and a paced push
    /// that came due.
    pub fn handle_timeout(&mut self, now: Moment, feed: &dyn ClockFeed, cache: &DiffCache) {
        match &self.phase {
            Phase::Handshake { since } | Phase::Answering { since, .. } => {
                let limit = self.config.limits.handshake_timeout;
                if now >= *since + limit {
                    self.refuse(Refusal {
                        kind: RefusalKind::Timeout,
                        reason: format!("no hello within {limit:?}"),
                    });
                }
                return;
            }
            Phase::Closed(_) => return,
            Phase::Ready(_) => {}
        }
        let idle = self.config.limits.idle_timeout;
        if now >= self.last_heard + idle {
            self.close(CloseReason::Idle(idle));
            return;
        }
        if let Phase::Ready(client) = &mut self.phase
            && client.push_due.is_some_and(|due| now >= due)
        {
            client.push_due = None;
            client.last_push = Moment::ZERO;
            self.catch_up(now, feed, cache);
        }
        if now >= self.next_ping && self.is_ready() {
            self.nonce += 1;
            self.next_ping = now + self.config.limits.keepalive;
            self.send(&Message::Ping(self.nonce));
        }
    }

    // Mutators.

    /// Answers a hello from [`ServerEvent::Hello`] with what the source offers: decides the
    /// handshake. `Ok` is the connection's settings, to be confirmed with
    /// [`ServerSession::welcome`] once the driver has room for the client; `Err` has been
    /// sent as the refusal.
    pub fn accept(&mut self, offer: Offer<'_>) -> Result<Accepted, ()> {
        let Phase::Answering {
            hello: Some(hello), ..
        } = &self.phase
        else {
            return Err(());
        };
        match decide(
            hello,
            offer,
            &self.config.acl,
            self.config.compression.is_some(),
        ) {
            Ok(accepted) => Ok(accepted),
            Err(refusal) => {
                self.refuse(refusal);
                Err(())
            }
        }
    }

    /// Sends the welcome of an accepted handshake, then reads what the client sent after its
    /// hello: `start` is the source's clock the welcome's snapshot was taken from, `schema` the
    /// schema its positions are of.
    pub fn welcome(
        &mut self,
        accepted: Accepted,
        schema: Arc<Schema>,
        start: Versioned,
        now: Moment,
        feed: &dyn ClockFeed,
    ) {
        let Phase::Answering {
            hello: Some(hello), ..
        } = &mut self.phase
        else {
            return;
        };
        let id = std::mem::take(&mut hello.client_id);
        self.frame.compression = if accepted.compression {
            self.config.compression
        } else {
            None
        };
        self.reader.set_config(self.frame);
        // A client that asked for compression can decode it: the welcome (schema and
        // snapshot, the largest message of a session) is the first frame to benefit.
        self.send(&Message::Welcome(accepted.welcome));
        info!(client = %id, compression = accepted.compression, "client ready");
        self.phase = Phase::Ready(Box::new(Client {
            id,
            options: options_key(&accepted.tracked, &self.frame),
            tracked: accepted.tracked,
            mutable: accepted.mutable,
            schema,
            ancestry: start.ancestry,
            last: start,
            replies_pending: 0,
            last_push: Moment::ZERO,
            push_due: None,
        }));
        self.last_heard = now;
        self.next_ping = now + self.config.limits.keepalive;
        self.read_messages(now, feed);
    }

    /// Refuses the client with a reason a person can act on, and ends the session.
    pub fn refuse(&mut self, refusal: Refusal) {
        self.stats.refusals.fetch_add(1, Ordering::Relaxed);
        info!(kind = ?refusal.kind, reason = %refusal.reason, "refusing client");
        // A refusal goes out uncompressed: the client may not have asked for compression.
        self.frame.compression = None;
        self.send(&Message::Refused(refusal));
        self.phase = Phase::Closed(CloseReason::Handshake);
    }

    /// Answers a status request from [`ServerEvent::StatusRequest`]: `schemas` are those of
    /// every source the status shows.
    pub fn answer_status<'a>(
        &mut self,
        token: Option<&str>,
        schemas: impl IntoIterator<Item = &'a Schema>,
        status: impl FnOnce() -> NodeStatus,
    ) {
        match admit_status(&self.config.acl, schemas, self.identity.as_deref(), token) {
            Ok(()) => {
                self.send(&Message::Status(status()));
                self.phase = Phase::Closed(CloseReason::Handshake);
            }
            Err(refusal) => self.refuse(refusal),
        }
    }

    /// Queues named data for the client; `Err` when its backlog has no room for it (the
    /// client is too slow: close it with [`CloseReason::Kicked`]).
    pub fn send_payload(&mut self, payload: &Payload) -> Result<(), ()> {
        if !self.is_ready() || self.transmit.len() + payload.data.len() > self.backlog_limit() {
            return Err(());
        }
        self.send(&Message::Payload(payload.clone()));
        Ok(())
    }

    /// The most a backlog may hold with a payload in it: a payload may be a whole frame.
    fn backlog_limit(&self) -> usize {
        BACKLOG_BYTES.max(self.config.limits.max_frame.saturating_mul(4))
    }

    /// Ends the session, queueing the last word the reason calls for.
    pub fn close(&mut self, reason: CloseReason) {
        if matches!(self.phase, Phase::Closed(_)) {
            return;
        }
        let client = self.client_id().unwrap_or("").to_owned();
        if let CloseReason::Protocol(message) = &reason {
            warn!(%client, %message, "protocol error; closing this connection");
        } else {
            info!(%client, %reason, "client gone");
        }
        if let Some(last_word) = reason.farewell() {
            self.send(&last_word);
        }
        self.phase = Phase::Closed(reason);
    }

    /// Takes the next event for the driver.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Marks the first `n` bytes of [`ServerSession::transmit`] as written (the driver counts
    /// bytes: it may count a whole pass of writes at once).
    pub fn advance(&mut self, n: usize) {
        self.transmit.drain(..n.min(self.transmit.len()));
    }

    /// Swaps the transmit buffer with `buf` (which should be empty): the writer sends the
    /// bytes outside the session's lock.
    pub fn take_transmit(&mut self, buf: &mut Vec<u8>) {
        std::mem::swap(&mut self.transmit, buf);
    }

    /// The pusher's catch-up: appends the diff that takes the client to `latest`, when a plain
    /// diff is all it needs and nothing waits to be sent before it; anything more is the
    /// writer's ([`CatchUp::Writer`]). Counts nothing: the pusher counts a pass at once.
    pub fn push(&mut self, latest: &Versioned, cache: &DiffCache) -> CatchUp {
        let paced = self.config.limits.min_push_interval.is_some();
        let pending = !self.transmit.is_empty();
        let Phase::Ready(client) = &mut self.phase else {
            return CatchUp::Nothing;
        };
        if client.last.version == latest.version && client.ancestry == latest.ancestry {
            return CatchUp::Nothing;
        }
        // A changed schema ends the session, which is the writer's to do.
        if paced
            || pending
            || latest.schema != client.schema.hash()
            || client.ancestry != latest.ancestry
            || client.replies_pending > 0
            || went_back(client.last.clock(), latest.clock(), &client.tracked)
        {
            return CatchUp::Writer;
        }
        // With nothing tracked changed there is no frame, and the client's clock stays where
        // it was: the next diff then carries this version's queue growth too.
        let Some(bytes) = cache.diff_frame(
            &client.last,
            latest,
            &client.tracked,
            &self.frame,
            client.options,
        ) else {
            return CatchUp::Nothing;
        };
        self.transmit.extend_from_slice(&bytes);
        let merged = merged(&client.last, latest);
        client.last = latest.clone();
        CatchUp::Sent { merged }
    }

    /// The writer's catch-up: everything that takes the client to the source's latest clock
    /// (an ancestry update, a snapshot when the clock went back, a diff), unless a push
    /// interval holds it back; ends the session when the source's schema changed.
    pub fn catch_up(&mut self, now: Moment, feed: &dyn ClockFeed, cache: &DiffCache) -> CatchUp {
        let interval = self.config.limits.min_push_interval;
        let latest = self.latest(feed);
        if self.closed().is_some() {
            return CatchUp::Closed;
        }
        let Phase::Ready(client) = &mut self.phase else {
            return CatchUp::Nothing;
        };
        if client.last.version == latest.version {
            return CatchUp::Nothing;
        }
        if let Some(interval) = interval {
            if client.push_due.is_some() {
                return CatchUp::Nothing;
            }
            if client.last_push != Moment::ZERO && now < client.last_push + interval {
                client.push_due = Some(client.last_push + interval);
                return CatchUp::Nothing;
            }
        }
        client.last_push = now;
        if self.resync_if_went_back(&latest) {
            return CatchUp::Sent { merged: 0 };
        }
        let Phase::Ready(client) = &mut self.phase else {
            return CatchUp::Nothing;
        };
        let Some(bytes) = cache.diff_frame(
            &client.last,
            &latest,
            &client.tracked,
            &self.frame,
            client.options,
        ) else {
            return CatchUp::Nothing;
        };
        let merged = merged(&client.last, &latest);
        client.last = latest;
        self.transmit.extend_from_slice(&bytes);
        let stats = &self.stats;
        stats.frames_out.fetch_add(1, Ordering::Relaxed);
        stats.diffs_sent.fetch_add(1, Ordering::Relaxed);
        if merged > 0 {
            stats.diffs_merged.fetch_add(merged, Ordering::Relaxed);
        }
        CatchUp::Sent { merged }
    }

    /// The source's latest clock; first queues the source's ancestry when it changed since
    /// the client last had it, and ends the session when the source's schema is not the
    /// client's. The version's own record says when to look; the source says whether the
    /// schema really changed (it can change without a transition, and the record lags until
    /// the next one).
    fn latest(&mut self, feed: &dyn ClockFeed) -> Versioned {
        let latest = feed.latest();
        let Phase::Ready(client) = &mut self.phase else {
            return latest;
        };
        let mine = client.schema.hash();
        if latest.schema != mine && feed.schema_hash() != mine {
            self.close(CloseReason::SchemaChanged);
            return latest;
        }
        if latest.ancestry != client.ancestry {
            client.ancestry = latest.ancestry;
            self.send(&Message::Ancestry(feed.ancestry()));
        }
        latest
    }

    /// When the source's clock went back (it restarted and a mirror resynced to it), no diff
    /// can express the change: sends an unsolicited snapshot (id 0) and takes it as sent.
    fn resync_if_went_back(&mut self, latest: &Versioned) -> bool {
        let Phase::Ready(client) = &mut self.phase else {
            return false;
        };
        if !went_back(client.last.clock(), latest.clock(), &client.tracked) {
            return false;
        }
        let snapshot = Snapshot {
            ticks: client.tracked.mask(&latest.ticks),
            queue_tick: latest.queue_tick,
        };
        client.last = latest.clone();
        self.send(&Message::Snapshot { id: 0, snapshot });
        true
    }

    /// Queues one message.
    fn send(&mut self, message: &Message) {
        encode_frame(&self.frame, message, &mut self.transmit);
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
    }
}

/// Versions between the client's and the latest, folded into one diff.
fn merged(last: &Versioned, latest: &Versioned) -> u64 {
    latest
        .version
        .saturating_sub(last.version)
        .saturating_sub(1)
}

/// The refusal of a client the server has no room for.
pub fn server_full(max_clients: usize) -> Refusal {
    Refusal {
        kind: RefusalKind::Full,
        reason: format!(
            "server is full ({max_clients} clients); try again later or use another server"
        ),
    }
}
