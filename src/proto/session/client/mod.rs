//! A mirror's session with its source: the protocol decisions of the client side.
//!
//! One `ClientSession` lives as long as its mirror, across connections: it keeps the replica
//! clock (and the schema it is of) while disconnected, and each connection starts with
//! [`ClientSession::connect`]. It writes the hello, checks the welcome (the schema the mirror
//! expects, a schema that is not valid), applies diffs and checks their checksums (a mismatch
//! asks for a snapshot), gives out request ids, answers pings and pings a quiet server, and
//! notices a server that went silent. Remote waits and last-error requests (`remote.rs`) are
//! the parts of the Api only the source can answer. Whatever the driver or the mirror's owner
//! must act on comes out of [`ClientSession::poll_event`].

mod clock;
mod handshake;
mod remote;
mod retry;

pub use retry::{RetryPolicy, RetryStats};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use super::requests::Requests;
use super::time::Moment;
use crate::machine::{MutationError, Outcome, Schema, SchemaError, WaitError};
use crate::printable::printable;
use crate::proto::diff::Tracked;
use crate::proto::message::{Hello, Payload, RefusalKind, WantedOptions};
use crate::proto::{
    Compression, FrameConfig, FrameReader, Message, PROTOCOL_VERSION, encode_frame,
    foreign_protocol,
};

/// Who the mirror is and what it asks of the source.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Who this mirror is to the server (for a node, its node id).
    pub client_id: String,
    /// The source wanted; empty for the server's only source.
    pub source: String,
    /// Ask for zstd compression of large frames (the server may refuse).
    pub compression: bool,
    /// Track only these states; `None` for all.
    pub track: Option<Vec<String>>,
    /// The server's shared secret, if it requires one.
    pub token: Option<String>,
    /// The largest frame body accepted and sent, in bytes; must match the server's.
    pub max_frame: usize,
    /// How long the hello may wait for its answer before the attempt fails.
    pub handshake_timeout: Duration,
    /// How often the mirror pings the server.
    pub keepalive: Duration,
    /// A server silent for this long is taken as gone.
    pub idle_timeout: Duration,
    /// How mutations outlive a broken link ([`RetryPolicy`]).
    pub retry: RetryPolicy,
    /// Chosen when the mirror starts (from the time and the process): the epoch of its
    /// mutations' keys, so its numbers after a restart are new keys.
    pub key_epoch: u64,
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No connection (not yet, or it ended): the clock is the last one known.
    Idle,
    /// The hello is out, the welcome not in yet.
    Handshake,
    /// Welcomed: the clock is the source's and mutations can go up.
    Ready,
    /// Closed by its owner: no more connections.
    Closed,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The server refused the hello.
    #[error("refused ({kind:?}): {reason}")]
    Refused {
        /// The refusal's kind (retrying can help for `Loop`, `Full` and `Timeout`).
        kind: RefusalKind,
        /// The server's reason, escaped.
        reason: String,
    },
    /// No answer to the hello within the handshake timeout.
    #[error("no handshake answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with something other than a welcome or a refusal (or not aRPC).
    #[error("{0}")]
    Failed(String),
    /// The schema in the welcome does not validate.
    #[error("the server sent a schema that is not valid: {0}")]
    BadSchema(SchemaError),
    /// The source's schema is not the one this mirror was configured with.
    #[error(
        "the source serves a different schema (states: {found}) than this mirror expects (states: {expected}); update one side or leave the mirror's schema unset to take the server's"
    )]
    SchemaMismatch {
        /// The states this mirror expects.
        expected: String,
        /// The states the source serves.
        found: String,
    },
}

/// What the mirror (or its driver) must act on.
#[derive(Debug)]
pub enum ClientEvent<P> {
    /// The handshake succeeded; the clock is the source's. `reconnect` after the first.
    Ready {
        /// Whether this is a session after the first (the mirror reconnected).
        reconnect: bool,
    },
    /// The handshake failed; the connection is to be dropped.
    HandshakeFailed(HandshakeError),
    /// The clock changed: the states whose tick changed (every state, with a new schema),
    /// and the clock before. `diffs` counts the diffs applied in this change.
    ClockChanged {
        /// The clock before the change.
        before: Vec<u64>,
        /// Positions whose tick changed.
        changed: Vec<usize>,
        /// Whether the source's schema changed (the replica's schema is the new one).
        schema_changed: bool,
        /// How many diffs were applied in this change.
        diffs: usize,
    },
    /// A request's answer (or its end with the connection).
    Answered {
        /// The caller's handle given when the mutation was sent.
        pending: P,
        /// Its outcome, or why it has none (refused, disconnected).
        result: Result<Outcome, MutationError>,
    },
    /// A remote wait ended (see [`ClientSession::when_args`]).
    WaitEnded {
        /// The caller's handle given when the wait was sent.
        pending: P,
        /// `Ok` when the state was activated with the arguments, else why the wait ended.
        result: Result<(), WaitError>,
    },
    /// The answer to [`ClientSession::err`] (or its end with the connection).
    ErrAnswered {
        /// The caller's handle given when the request was sent.
        pending: P,
        /// The source's last error (`None`: none), or why it could not be asked.
        result: Result<Option<String>, MutationError>,
    },
    /// Named data the source sent.
    Payload(Payload),
    /// The source's ancestry changed.
    Ancestry(Vec<String>),
    /// A checksum mismatch: a snapshot was asked for.
    Resync,
    /// The server ended the session (or broke the protocol); the connection is to be
    /// dropped. The reason quotes the server printably.
    Closed(String),
}

/// A request waiting for its answer, by what answers it.
#[derive(Debug)]
enum Request<P> {
    /// A mutation's reply, kept to be sent again if its connection ends unanswered.
    Mutation(retry::InFlight<P>),
    /// A snapshot (`Sync`).
    Answer(P),
    /// An `ErrReply`.
    Err(P),
}

/// A mirror's session with its source.
#[derive(Debug)]
pub struct ClientSession<P> {
    config: ClientConfig,
    /// The schema the mirror must have, if its owner set one.
    expected: Option<Arc<Schema>>,
    schema: Option<Arc<Schema>>,
    ticks: Vec<u64>,
    queue_tick: u64,
    tracked: Tracked,
    /// The states the client may mutate (`Tracked::All` for every one), from the last welcome.
    mutable: Tracked,
    /// The source's ancestry, from the last welcome or update.
    upstream: Vec<String>,
    /// The source's parent id and tags, from the last welcome.
    parent_id: Option<String>,
    tags: Vec<String>,
    requests: Requests<Request<P>>,
    /// Remote waits, kept across connections.
    waits: Requests<remote::RemoteWait<P>>,
    phase: Phase,
    since: Moment,
    /// Sessions established so far.
    sessions: u64,
    reader: FrameReader,
    frame: FrameConfig,
    transmit: Vec<u8>,
    events: VecDeque<ClientEvent<P>>,
    last_heard: Moment,
    next_ping: Moment,
    nonce: u64,
    /// The hello could not be written; reported if no answer comes either.
    hello_failed: Option<String>,
    retries: retry::Retries<P>,
}

impl<P> ClientSession<P> {
    /// A session for a mirror; `schema`, when set, is the one the source must serve.
    pub fn new(config: ClientConfig, schema: Option<Arc<Schema>>) -> ClientSession<P> {
        let frame = FrameConfig {
            max_frame: config.max_frame,
            compression: None,
        };
        let ticks = vec![0; schema.as_ref().map_or(0, |s| s.len())];
        ClientSession {
            expected: schema.clone(),
            schema,
            ticks,
            queue_tick: 0,
            tracked: Tracked::All,
            mutable: Tracked::All,
            upstream: Vec::new(),
            parent_id: None,
            tags: Vec::new(),
            requests: Requests::default(),
            waits: Requests::default(),
            phase: Phase::Idle,
            since: Moment::ZERO,
            sessions: 0,
            reader: FrameReader::new(frame),
            frame,
            transmit: Vec::new(),
            events: VecDeque::new(),
            last_heard: Moment::ZERO,
            next_ping: Moment::ZERO,
            nonce: 0,
            hello_failed: None,
            retries: retry::Retries::new(config.retry, config.key_epoch),
            config,
        }
    }

    // Getters.

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The configuration the session was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The schema of the replica: the expected one, else the source's once a welcome came.
    pub fn schema(&self) -> Option<&Arc<Schema>> {
        self.schema.as_ref()
    }

    /// The replica's clock: one tick per state of [`schema`](Self::schema).
    pub fn ticks(&self) -> &[u64] {
        &self.ticks
    }

    /// How many mutations the source had processed, as last heard.
    pub fn queue_tick(&self) -> u64 {
        self.queue_tick
    }

    /// The source's id and its upstreams' ids, nearest first.
    pub fn upstream(&self) -> &[String] {
        &self.upstream
    }

    /// The source's parent id (Go's `ParentId`), as the last welcome carried it.
    pub fn parent_id(&self) -> Option<&str> {
        self.parent_id.as_deref()
    }

    /// The source's tags (Go's `Tags`), as the last welcome carried them.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Whether the source's ACL lets this client see the state at `idx` (a hidden state's
    /// tick stays 0 here), as the last welcome granted.
    pub fn sees(&self, idx: usize) -> bool {
        self.tracked.contains(idx)
    }

    /// Whether the source's ACL lets this client mutate the state at `idx`, as the last
    /// welcome granted (the source checks again; this is for showing it).
    pub fn may_mutate(&self, idx: usize) -> bool {
        self.mutable.contains(idx)
    }

    /// Requests waiting for answers.
    pub fn in_flight(&self) -> usize {
        self.requests.in_flight()
    }

    /// Bytes to send, in order.
    pub fn transmit(&self) -> &[u8] {
        &self.transmit
    }

    /// When [`ClientSession::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Moment> {
        let connection = match self.phase {
            Phase::Handshake => Some(self.since + self.config.handshake_timeout),
            Phase::Ready => Some((self.last_heard + self.config.idle_timeout).min(self.next_ping)),
            Phase::Idle | Phase::Closed => None,
        };
        // Mutations waiting for the link fail at their deadline, connected or not.
        match (connection, self.retries.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // Inputs.

    /// Starts a connection whose transport is up: queues the hello.
    pub fn connect(&mut self, now: Moment) {
        if self.phase == Phase::Closed {
            return;
        }
        self.requeue_or_fail(MutationError::Disconnected);
        self.reset_waits();
        self.phase = Phase::Handshake;
        self.since = now;
        self.hello_failed = None;
        self.transmit.clear();
        self.frame.compression = None;
        // Asking for compression means being able to decode it, from the welcome on.
        self.reader = FrameReader::new(FrameConfig {
            compression: self.config.compression.then(Compression::default),
            ..self.frame
        });
        let hello = Hello {
            version: PROTOCOL_VERSION,
            client_id: self.config.client_id.clone(),
            source: self.config.source.clone(),
            schema_hash: self.schema.as_ref().map_or(0, |s| s.hash()),
            options: WantedOptions {
                compression: self.config.compression,
                track: self.config.track.clone(),
            },
            token: self.config.token.clone(),
        };
        self.send(&Message::Hello(hello));
    }

    /// Takes bytes from the server.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Moment) {
        if !matches!(self.phase, Phase::Handshake | Phase::Ready) {
            return;
        }
        self.reader.push(bytes);
        self.last_heard = now;
        let mut diffs = Vec::new();
        loop {
            let next = match self.reader.next_message() {
                // Diffs read together are applied together: a mirror that fell behind catches
                // up in one step instead of replaying every stale clock.
                Ok(Some(Message::Diff(diff))) if self.phase == Phase::Ready => {
                    diffs.push(diff);
                    continue;
                }
                next => next,
            };
            if !diffs.is_empty() {
                self.apply_diffs(&diffs);
                diffs.clear();
                if self.phase != Phase::Ready {
                    return;
                }
            }
            match next {
                Ok(Some(message)) if self.phase == Phase::Handshake => {
                    self.handle_answer(message, now)
                }
                Ok(Some(message)) => self.handle_message(message),
                Ok(None) => return,
                Err(e) if self.phase == Phase::Handshake => {
                    let reason = match foreign_protocol(self.reader.opening()) {
                        Some(hint) => format!("not an aRPC server: {hint}"),
                        None => format!("not an aRPC server: {e}"),
                    };
                    self.handshake_failed(HandshakeError::Failed(reason));
                }
                Err(e) => self.end(format!("protocol error: {e}")),
            }
            if !matches!(self.phase, Phase::Handshake | Phase::Ready) {
                return;
            }
        }
    }

    /// Time passed: the handshake deadline, a silent server, keepalive pings, and the
    /// deadlines of mutations waiting for the link.
    pub fn handle_timeout(&mut self, now: Moment) {
        self.expire_waiting(now);
        match self.phase {
            Phase::Handshake if now >= self.since + self.config.handshake_timeout => {
                self.handshake_failed(HandshakeError::Timeout(self.config.handshake_timeout));
            }
            Phase::Ready if now >= self.last_heard + self.config.idle_timeout => {
                let idle = self.config.idle_timeout;
                self.end(format!("the server was silent for {idle:?}"));
            }
            Phase::Ready if now >= self.next_ping => {
                self.nonce += 1;
                self.next_ping = now + self.config.keepalive;
                self.send(&Message::Ping(self.nonce));
            }
            _ => {}
        }
    }

    /// The hello could not be written. The server may have refused and closed before
    /// reading it, so its answer is still awaited; this is the reason when none comes.
    pub fn handle_write_error(&mut self, error: String) {
        match self.phase {
            Phase::Handshake => self.hello_failed = Some(error),
            Phase::Ready => self.end(format!("i/o error: {error}")),
            Phase::Idle | Phase::Closed => {}
        }
    }

    /// The connection ended under the session (`reason` from the transport: a close, an
    /// i/o error). Requests end with [`MutationError::Disconnected`].
    pub fn handle_lost(&mut self, reason: String) {
        match self.phase {
            Phase::Handshake => {
                let reason = match (foreign_protocol(self.reader.opening()), &self.hello_failed) {
                    // Another protocol's answer may be shorter than the frame its first bytes
                    // announce, ending in a close rather than a bad frame.
                    (Some(hint), _) => format!("not an aRPC server: {hint}"),
                    (None, Some(e)) => format!("sending the hello failed: {e}"),
                    (None, None) => reason,
                };
                self.handshake_failed(HandshakeError::Failed(reason));
            }
            Phase::Ready => self.end(reason),
            Phase::Idle | Phase::Closed => {}
        }
    }

    // Mutators.

    /// Asks the source for its whole clock; the answer comes back with `pending`.
    pub fn sync(&mut self, pending: P) -> Result<(), MutationError> {
        self.check_ready()?;
        let id = self.take_id(Request::Answer(pending))?;
        self.send(&Message::Sync { id });
        Ok(())
    }

    /// Says goodbye (when connected) and ends the session for good.
    pub fn close(&mut self) {
        if self.phase == Phase::Ready {
            self.send(&Message::Bye {
                reason: "mirror closed".into(),
            });
        }
        self.phase = Phase::Closed;
        self.fail_requests();
        self.fail_waiting(MutationError::Disposed);
        self.dispose_waits();
    }

    /// Takes the next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent<P>> {
        self.events.pop_front()
    }

    /// Takes the bytes to send (swapped with `buf`, which should be empty).
    pub fn take_transmit(&mut self, buf: &mut Vec<u8>) {
        std::mem::swap(&mut self.transmit, buf);
    }

    fn check_ready(&self) -> Result<(), MutationError> {
        match self.phase {
            Phase::Closed => Err(MutationError::Disposed),
            Phase::Ready => Ok(()),
            Phase::Idle | Phase::Handshake => Err(MutationError::Disconnected),
        }
    }

    fn take_id(&mut self, pending: Request<P>) -> Result<u64, MutationError> {
        self.requests
            .insert(pending)
            .ok_or(MutationError::QueueFull {
                limit: super::requests::MAX_IN_FLIGHT,
            })
    }

    /// A message of an open session.
    fn handle_message(&mut self, message: Message) {
        match message {
            Message::Diff(diff) => self.apply_diffs(std::slice::from_ref(&diff)),
            Message::MutateReply(reply) => {
                self.apply_diffs(std::slice::from_ref(&reply.diff));
                let result: Result<Outcome, String> = reply.result.into();
                // A refusal from further up is passed down as its reason alone: it is wrapped
                // once here, however many hops up it was refused.
                let result = result.map_err(|r| MutationError::Refused(printable(&r).into()));
                self.answer(reply.id, result);
            }
            Message::Snapshot { id, snapshot } => {
                self.replace(None, &snapshot);
                self.answer(id, Ok(Outcome::Executed));
            }
            Message::SchemaChanged { schema, snapshot } => match Schema::new(schema) {
                Ok(schema) => {
                    info!(states = schema.len(), "the source's schema changed");
                    self.replace(Some(Arc::new(schema)), &snapshot);
                }
                Err(e) => self.end(format!("the server sent an invalid schema: {e}")),
            },
            Message::Payload(payload) => self.events.push_back(ClientEvent::Payload(payload)),
            Message::Ping(nonce) => self.send(&Message::Pong(nonce)),
            Message::Pong(_) => {}
            Message::Ancestry(ancestry) => self.set_upstream(ancestry),
            Message::WhenArgsDone { id, result } => self.wait_done(id, result),
            Message::ErrReply { id, result } => self.err_answered(id, result),
            Message::Bye { reason } => {
                self.end(format!("the server said bye: {}", printable(&reason)));
            }
            Message::Error { message } => self.end(format!(
                "the server reported a protocol error: {}",
                printable(&message)
            )),
            other => self.end(format!("unexpected {} from a server", other.name())),
        }
    }

    fn answer(&mut self, id: u64, result: Result<Outcome, MutationError>) {
        match self.requests.take(id) {
            Some(Request::Answer(pending) | Request::Mutation(retry::InFlight { pending, .. })) => {
                self.events
                    .push_back(ClientEvent::Answered { pending, result });
            }
            Some(other) => {
                // Answered wrongly, the request still ends.
                self.fail_request(other, MutationError::Disconnected);
                self.end(format!(
                    "the server answered request {id} with a mutation's reply or a snapshot"
                ));
            }
            None => {}
        }
    }

    fn handshake_failed(&mut self, error: HandshakeError) {
        self.phase = Phase::Idle;
        self.events.push_back(ClientEvent::HandshakeFailed(error));
    }

    /// The session ended from the server's side (or by its fault).
    fn end(&mut self, reason: String) {
        self.phase = Phase::Idle;
        self.requeue_or_fail(MutationError::Disconnected);
        self.events.push_back(ClientEvent::Closed(reason));
    }

    fn fail_requests(&mut self) {
        for request in self.requests.take_all() {
            self.fail_request(request, MutationError::Disconnected);
        }
    }

    fn fail_request(&mut self, request: Request<P>, error: MutationError) {
        self.events.push_back(match request {
            Request::Answer(pending) | Request::Mutation(retry::InFlight { pending, .. }) => {
                ClientEvent::Answered {
                    pending,
                    result: Err(error),
                }
            }
            Request::Err(pending) => ClientEvent::ErrAnswered {
                pending,
                result: Err(error),
            },
        });
    }

    fn send(&mut self, message: &Message) {
        encode_frame(&self.frame, message, &mut self.transmit);
    }
}
