//! A server's session with one client: every protocol decision about that connection.
//!
//! The handshake (admission, the source's offer, the welcome or a refusal), status requests,
//! the ACL on each mutation, remote waits and last-error requests (`remote.rs`), replies that
//! carry the diff up to their time, snapshots on
//! request and when the source's clock went back, ancestry updates, a source's schema change
//! passed on when it enlarges the client's schema and the end of the session otherwise,
//! keepalive pings, the idle rule, pacing by a minimum push
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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{debug, info, warn};

mod catch_up;
mod close;
mod handshake;
mod remote;
mod stats;

pub use handshake::server_full;

pub use close::CloseReason;
pub use stats::ServerStats;

use super::cache::{DiffCache, Versioned};
use super::time::Moment;
use crate::machine::{Args, Mutation, Outcome, Schema};
use crate::proto::acl::Acl;
use crate::proto::acl::check_mutation;
use crate::proto::config::Limits;
use crate::proto::diff::{self, Tracked};
use crate::proto::limits::MAX_HELLO_FRAME;
use crate::proto::message::{
    Hello, MutateReply, MutateRequest, Payload, Refusal, RefusalKind, Snapshot,
};
use crate::proto::{
    Compression, FrameConfig, FrameReader, Message, encode_frame, with_foreign_hint,
};

/// What every session of one server shares: its limits and access rules, built once.
#[derive(Debug, Clone, Default)]
pub struct ServerSessionConfig {
    /// Bounds of clients, frames, timeouts and pending requests.
    pub limits: Limits,
    /// Compression offered to clients that ask; `None` to never compress.
    pub compression: Option<Compression>,
    /// Who may connect, see which states and mutate which.
    pub acl: Acl,
}

/// The source a session serves, as the session reads it.
pub trait ClockFeed {
    /// The source's clock as of now.
    fn latest(&self) -> Versioned;
    /// The hash of the source's schema now (the latest version's may lag behind it).
    fn schema_hash(&self) -> u64;
    /// The source's schema now, for a client whose schema it enlarged; `None` when there is
    /// no source (yet).
    fn schema(&self) -> Option<Arc<Schema>>;
    /// The source's id and its upstream sources' ids, nearest first.
    fn ancestry(&self) -> Vec<String>;
}

/// The feed of a session whose hello has not named a source yet: before it, a session only
/// decodes and admits, and reads no clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSource;

impl ClockFeed for NoSource {
    fn latest(&self) -> Versioned {
        Versioned {
            version: 0,
            ticks: Arc::from(Vec::new()),
            queue_tick: 0,
            ancestry: 0,
            schema: 0,
        }
    }

    fn schema_hash(&self) -> u64 {
        0
    }

    fn schema(&self) -> Option<Arc<Schema>> {
        None
    }

    fn ancestry(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Whether positions of `schema` (a client's) still name the same states in the source's
/// schema now: it is the same one, or an enlargement of it.
fn schema_fits(schema: &Schema, feed: &dyn ClockFeed) -> bool {
    feed.schema_hash() == schema.hash() || feed.schema().is_some_and(|now| now.extends(schema))
}

/// Work for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A hello from a client that is let in: find the source it names and answer with
    /// [`ServerSession::accept`] or [`ServerSession::refuse`].
    Hello(Hello),
    /// A status request: answer with [`ServerSession::answer_status`].
    StatusRequest {
        /// The token the request carried.
        token: Option<String>,
    },
    /// Run this mutation on the source and hand its result to
    /// [`ServerSession::handle_mutation_result`].
    Mutate {
        /// The client's request id (0: it wants no reply).
        id: u64,
        /// The mutation, checked against the ACL and the schema.
        mutation: Mutation,
    },
    /// Wait on the source for an activation of `state` with `args` (its `when_args`), and hand
    /// how the wait ended to [`ServerSession::handle_wait_result`] with `id` and `wait`;
    /// unless [`ServerEvent::CancelWait`] with the same `wait` comes first.
    WhenArgs {
        /// The client's request id.
        id: u64,
        /// The session's key of this wait.
        wait: u64,
        /// The state to wait for.
        state: String,
        /// What the activation's arguments must include.
        args: Args,
    },
    /// The client withdrew the wait with this key: drop it (its result is not wanted).
    CancelWait {
        /// The session's key of the wait.
        wait: u64,
    },
    /// Read the source's last error (its `err`) and hand it to
    /// [`ServerSession::handle_err_result`].
    Err {
        /// The client's request id.
        id: u64,
    },
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// The client is up to date (or nothing it tracks changed, or its next push is paced).
    Nothing,
    /// A diff frame is in the transmit buffer; `merged` versions were folded into it.
    Sent {
        /// How many source versions the diff covers beyond one.
        merged: u64,
    },
    /// More than a plain diff is due: the connection's writer must call
    /// [`ServerSession::catch_up`].
    Writer,
    /// The session ended (its farewell, if any, is in the transmit buffer).
    Closed,
}

/// A client's backlog has no room for a payload: it does not read fast enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client's backlog is full: it does not read what it is sent")]
pub struct Backlogged;

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
    /// Remote waits handed to the driver and not answered yet: the client's id to the
    /// session's key.
    waits: HashMap<u64, u64>,
    /// Waits refused for the limit since one of the client's waits last ended.
    waits_refused: usize,
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
    /// Mutations (and last-error requests) handed to the driver whose result has not come
    /// back. Reading stops meanwhile: what a client sends after a mutation (a sync, another
    /// mutation) is answered after it, in order.
    running: usize,
    /// The key of the next remote wait.
    next_wait: u64,
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
            next_wait: 1,
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

    /// Whether the handshake is done and the client is being served.
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
            Message::WhenArgs(request) => self.handle_when_args(request, feed),
            Message::WhenArgsCancel { id } => self.handle_cancel_wait(id),
            Message::ErrRequest { id } => self.handle_err_request(id),
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
        // Positions of another schema would name other states (an enlarged one keeps them).
        if !schema_fits(&client.schema, feed) {
            self.close(CloseReason::SchemaChanged);
            return;
        }
        let MutateRequest {
            id,
            kind,
            states,
            args,
            key,
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
                    mutation: Mutation::new(kind, states, args).with_key(key),
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

    /// Queues named data for the client; `Err` when its backlog has no room for it (the
    /// client is too slow: close it with [`CloseReason::Kicked`]).
    pub fn send_payload(&mut self, payload: &Payload) -> Result<(), Backlogged> {
        if !self.is_ready() || self.transmit.len() + payload.data.len() > self.backlog_limit() {
            return Err(Backlogged);
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

    /// Queues one message.
    fn send(&mut self, message: &Message) {
        encode_frame(&self.frame, message, &mut self.transmit);
        self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
    }
}
