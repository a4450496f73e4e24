//! One client connection: the handshake, then a reader and a writer until either ends, then a
//! last word (Bye or Error) to the peer where there is one to say.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{Instrument, debug, info, warn};

use super::hub::{Hub, Versioned, options_key};
use super::push::{Outlet, OutletState};
use super::{ClientEntry, ClientInfo, Inner};
use crate::machine::{Mutation, MutationError, Outcome, Schema};
use crate::proto::acl::{admit, admit_status, check_mutation};
use crate::proto::diff::went_back;
use crate::proto::handshake::{Offer, decide};
use crate::proto::limits::MAX_HELLO_FRAME;
use crate::proto::message::{MutateReply, MutateRequest, Payload, Refusal, RefusalKind, Snapshot};
use crate::proto::{FrameConfig, FrameReader, Message, encode_frame};
use crate::transport::{BoxStream, Handshake, PeerInfo};
use crate::wire::{self, ReadError};

/// What the reader asks the writer to send.
#[derive(Debug)]
pub(crate) enum Control {
    Reply {
        id: u64,
        result: Result<Outcome, String>,
    },
    Snapshot {
        id: u64,
    },
    Pong(u64),
    Payload(Arc<Payload>),
}

/// Replies in flight per client: bounds memory, and backs pressure up to a client that sends
/// mutations faster than it reads answers.
const CONTROL_CAPACITY: usize = 64;
/// The last word to a closing peer must not hold the task up.
const FAREWELL_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a connection ended.
#[derive(Debug)]
enum End {
    PeerBye,
    PeerClosed,
    PeerError(String),
    Protocol(String),
    Idle(Duration),
    Io(std::io::Error),
    Shutdown,
    Kicked,
    WriteStalled(Duration),
    /// The source's schema is not the one the client was given.
    SchemaChanged,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::PeerBye => f.write_str("the client said bye"),
            End::PeerClosed => f.write_str("the client closed the connection"),
            // Quoted: the peer's words must not forge log lines.
            End::PeerError(message) => write!(f, "the client reported an error: {message:?}"),
            End::Protocol(message) => write!(f, "protocol error: {message}"),
            End::Idle(after) => write!(f, "nothing received for {after:?}"),
            End::Io(e) => write!(f, "i/o error: {e}"),
            End::Shutdown => f.write_str("server shutdown"),
            End::Kicked => f.write_str("too slow to keep up"),
            End::WriteStalled(after) => write!(f, "a write stalled for {after:?}"),
            End::SchemaChanged => f.write_str("the source's schema changed"),
        }
    }
}

impl End {
    /// What to tell the peer on the way out, if anything.
    fn farewell(&self) -> Option<Message> {
        match self {
            End::Protocol(message) => Some(Message::Error {
                message: message.clone(),
            }),
            End::Idle(after) => Some(Message::Bye {
                reason: format!("idle for {after:?}"),
            }),
            End::Shutdown => Some(Message::Bye {
                reason: "server shutting down".into(),
            }),
            End::Kicked => Some(Message::Bye {
                reason: "too slow to keep up; reconnect".into(),
            }),
            End::SchemaChanged => Some(Message::Bye {
                reason: "the source's schema changed; reconnect to get the new one".into(),
            }),
            _ => None,
        }
    }
}

pub(crate) async fn serve(inner: &Arc<Inner>, conn: u64, handshake: Handshake) {
    let limit = inner.config.limits.handshake_timeout;
    let (stream, peer) = match timeout(limit, handshake).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => {
            inner.stats.transport_errors.fetch_add(1, Ordering::Relaxed);
            warn!(conn, error = %e, "transport handshake failed; closing this connection");
            return;
        }
        Err(_) => {
            inner.stats.transport_errors.fetch_add(1, Ordering::Relaxed);
            warn!(
                conn,
                ?limit,
                "transport handshake timed out; closing this connection"
            );
            return;
        }
    };
    let span =
        tracing::info_span!("conn", conn, peer = %peer.address, client = tracing::field::Empty);
    run(inner, conn, stream, peer).instrument(span).await;
}

async fn run(inner: &Arc<Inner>, conn: u64, stream: BoxStream, peer: PeerInfo) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let plain = inner.frame_config();
    // Until the hello is accepted, a frame may be at most MAX_HELLO_FRAME: every connection
    // still in its handshake may hold that much, and their number is only bounded by the
    // handshake timeout.
    let mut reader = FrameReader::new(FrameConfig {
        max_frame: plain.max_frame.min(MAX_HELLO_FRAME),
        ..plain
    });

    let limit = inner.config.limits.handshake_timeout;
    let hello = match timeout(limit, read_message(&mut rd, &mut reader, inner)).await {
        Ok(Ok(Message::Hello(hello))) => hello,
        Ok(Ok(Message::StatusRequest { token })) => {
            let identity = peer.identity.as_deref();
            let hubs = inner.hubs();
            let schemas: Vec<_> = hubs.iter().map(|hub| hub.source.schema()).collect();
            let schemas = schemas.iter().map(|schema| &**schema);
            if let Err(refusal) =
                admit_status(&inner.config.acl, schemas, identity, token.as_deref())
            {
                refuse(inner, &mut wr, refusal.kind, refusal.reason).await;
                return;
            }
            let mut out = Vec::new();
            encode_frame(&plain, &Message::Status(inner.status()), &mut out);
            inner.stats.frames_out.fetch_add(1, Ordering::Relaxed);
            let _ = timeout(FAREWELL_TIMEOUT, write(inner, &mut wr, &out)).await;
            let _ = timeout(FAREWELL_TIMEOUT, wr.shutdown()).await;
            return;
        }
        Ok(Ok(other)) => {
            let reason = crate::proto::with_foreign_hint(
                format!("expected Hello as the first message, got {}", other.name()),
                reader.opening(),
            );
            refuse(inner, &mut wr, RefusalKind::BadHello, reason).await;
            return;
        }
        Ok(Err(End::Protocol(message))) => {
            inner.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            let message = crate::proto::with_foreign_hint(message, reader.opening());
            warn!(%message, "bad handshake bytes; closing");
            let reason = format!("not an aRPC hello: {message}");
            refuse(inner, &mut wr, RefusalKind::BadHello, reason).await;
            return;
        }
        Ok(Err(end)) => {
            debug!(%end, "connection ended before its hello");
            return;
        }
        Err(_) => {
            let reason = format!("no hello within {limit:?}");
            refuse(inner, &mut wr, RefusalKind::Timeout, reason).await;
            return;
        }
    };

    // Under mutual TLS the certificate says who the client is, whatever its hello claims.
    let mut hello = hello;
    if let Some(identity) = &peer.identity
        && *identity != hello.client_id
    {
        info!(claimed = ?hello.client_id, %identity, "client id taken from its certificate");
        hello.client_id = identity.clone();
    }
    // A peer that is not let in learns nothing of what is served here, not even the names.
    let acl = &inner.config.acl;
    if let Err(refusal) = admit(acl, &hello.client_id, hello.token.as_deref()) {
        refuse(inner, &mut wr, refusal.kind, refusal.reason).await;
        return;
    }
    let hub = match inner.hub(&hello.source) {
        Ok(hub) => hub,
        Err(reason) => {
            refuse(inner, &mut wr, RefusalKind::UnknownSource, reason).await;
            return;
        }
    };
    // A change after this snapshot reaches the client: the writer is nudged once it is
    // attached to the pushers, and pushes what it finds newer.
    let start = hub.latest();
    // The positions granted below are positions of this schema: the connection ends when the
    // source's schema changes (a served mirror's can).
    let schema = hub.source.schema();
    // The hub's clock is of an older schema when the schema changed after its last transition
    // (or is changing now): the source's own clock is then the one that goes with it.
    let snapshot = if start.schema == schema.hash() {
        Snapshot {
            ticks: start.ticks.to_vec(),
            queue_tick: start.queue_tick,
        }
    } else {
        Snapshot {
            ticks: hub.source.clock(),
            queue_tick: hub.source.queue_tick(),
        }
    };
    let ancestry = hub.source.ancestry();
    let offer = Offer {
        schema: &schema,
        ancestry: &ancestry,
        snapshot,
    };
    let accepted = match decide(&hello, offer, acl, inner.config.compression.is_some()) {
        Ok(accepted) => accepted,
        Err(refusal) => {
            refuse(inner, &mut wr, refusal.kind, refusal.reason).await;
            return;
        }
    };
    // A slot is taken only by an accepted client: refused handshakes never crowd others out
    // (they are bounded by the handshake timeout instead).
    let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
        let reason = format!(
            "server is full ({} clients); try again later or use another server",
            inner.config.limits.max_clients
        );
        refuse(inner, &mut wr, RefusalKind::Full, reason).await;
        return;
    };
    let frame = FrameConfig {
        compression: if accepted.compression {
            inner.config.compression
        } else {
            None
        },
        ..plain
    };
    reader.set_config(frame);

    // Registered before the welcome goes out: a client that is ready is a client the server
    // lists (and can send payloads to).
    let (control_tx, control_rx) = mpsc::channel(CONTROL_CAPACITY);
    let kick = Arc::new(Notify::new());
    let info = ClientInfo {
        id: hello.client_id.clone(),
        source: hub.name.clone(),
        peer: peer.address.clone(),
    };
    inner
        .clients
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            conn,
            ClientEntry {
                info,
                control: control_tx.clone(),
                kick: kick.clone(),
            },
        );
    inner.stats.clients.fetch_add(1, Ordering::Relaxed);
    let unregister = || {
        inner
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&conn);
        inner.stats.clients.fetch_sub(1, Ordering::Relaxed);
    };

    let mut out = Vec::with_capacity(256);
    // A client that asked for compression can decode it: the welcome (schema and snapshot, the
    // largest message of a session) is the first frame to benefit.
    encode_frame(&frame, &Message::Welcome(accepted.welcome), &mut out);
    inner.stats.frames_out.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = write(inner, &mut wr, &out).await {
        debug!(error = %e, "could not send welcome");
        unregister();
        return;
    }
    // Every later event of this connection carries the client's id.
    tracing::Span::current().record("client", hello.client_id.as_str());
    info!(client = %hello.client_id, source = %hub.name, compression = accepted.compression, "client ready");

    let mutable = accepted.mutable.clone();
    let outlet = Arc::new(Outlet::new(
        wr,
        start,
        accepted.tracked.clone(),
        frame,
        options_key(&accepted.tracked, &frame),
        inner.config.limits.min_push_interval.is_some(),
        schema.hash(),
    ));
    let attached = hub.attach(outlet.clone(), inner);
    outlet.nudge.notify_one();
    let mut writer = Writer {
        inner,
        hub: &hub,
        outlet: &outlet,
        nonce: 0,
    };
    let to_writer = ToWriter {
        control: control_tx,
        outlet: &outlet,
    };
    let end = tokio::select! {
        end = read_loop(inner, &hub, &schema, &mut rd, &mut reader, to_writer, &hello.client_id, mutable.as_deref()) => end,
        end = writer.run(control_rx, &kick) => end,
    };

    drop(attached);
    unregister();
    drop(permit);
    if let End::Protocol(message) = &end {
        inner.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
        warn!(client = %hello.client_id, %message, "protocol error; closing this connection");
    } else {
        info!(client = %hello.client_id, reason = %end, "client gone");
    }
    // The write half is not there when the connection ended in the middle of a write: a last
    // word after half a frame would not parse anyway.
    let Some(mut wr) = outlet.lock().wr.take() else {
        return;
    };
    if let Some(last_word) = end.farewell() {
        out.clear();
        encode_frame(&frame, &last_word, &mut out);
        inner.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        let _ = timeout(FAREWELL_TIMEOUT, write(inner, &mut wr, &out)).await;
    }
    let _ = timeout(FAREWELL_TIMEOUT, wr.shutdown()).await;
}

async fn refuse(inner: &Inner, wr: &mut WriteHalf<BoxStream>, kind: RefusalKind, reason: String) {
    inner.stats.refusals.fetch_add(1, Ordering::Relaxed);
    info!(?kind, %reason, "refusing client");
    let mut out = Vec::new();
    encode_frame(
        &inner.frame_config(),
        &Message::Refused(Refusal { kind, reason }),
        &mut out,
    );
    inner.stats.frames_out.fetch_add(1, Ordering::Relaxed);
    let _ = timeout(FAREWELL_TIMEOUT, write(inner, wr, &out)).await;
    let _ = timeout(FAREWELL_TIMEOUT, wr.shutdown()).await;
}

async fn write(inner: &Inner, wr: &mut WriteHalf<BoxStream>, bytes: &[u8]) -> std::io::Result<()> {
    wr.write_all(bytes).await?;
    // TLS and WebSocket streams buffer; a frame must leave now, not with the next one.
    wr.flush().await?;
    inner
        .stats
        .bytes_out
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Reads the next message, counting what arrives.
async fn read_message(
    rd: &mut ReadHalf<BoxStream>,
    reader: &mut FrameReader,
    inner: &Inner,
) -> Result<Message, End> {
    match wire::read_message(rd, reader, &inner.stats.bytes_in).await {
        Ok(message) => {
            inner.stats.frames_in.fetch_add(1, Ordering::Relaxed);
            Ok(message)
        }
        Err(ReadError::Closed) => Err(End::PeerClosed),
        Err(ReadError::Io(e)) => Err(End::Io(e)),
        Err(ReadError::Protocol(e)) => Err(End::Protocol(e.to_string())),
    }
}

/// What a connection's reader hands its writer.
struct ToWriter<'a> {
    control: mpsc::Sender<Control>,
    outlet: &'a Outlet,
}

impl ToWriter<'_> {
    /// A reply is coming: it will carry the diff up to its time, so until the writer has sent
    /// it, pushes to this client go through the writer too (one frame, not two).
    fn expect_reply(&self) {
        self.outlet.replies_queued.fetch_add(1, Ordering::AcqRel);
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "the connection's parts, borrowed for its lifetime; a struct would only rename them"
)]
async fn read_loop(
    inner: &Inner,
    hub: &Hub,
    schema: &Schema,
    rd: &mut ReadHalf<BoxStream>,
    reader: &mut FrameReader,
    to_writer: ToWriter<'_>,
    client: &str,
    mutable: Option<&[u32]>,
) -> End {
    let idle = inner.config.limits.idle_timeout;
    // A timeout around each read: a client sends rarely, and a long-lived timer would cost
    // every idle connection its memory.
    loop {
        let message = match timeout(idle, read_message(rd, reader, inner)).await {
            Err(_) => return End::Idle(idle),
            Ok(Err(end)) => return end,
            Ok(Ok(message)) => message,
        };
        let answer = match message {
            Message::Mutate(request) => {
                inner.stats.mutations.fetch_add(1, Ordering::Relaxed);
                let MutateRequest {
                    id,
                    kind,
                    states: called,
                    args,
                } = request;
                // Positions of another schema would name other states.
                if hub.source.schema().hash() != schema.hash() {
                    return End::SchemaChanged;
                }
                let checked = check_mutation(schema, client, mutable, kind, &called);
                if id != 0 {
                    to_writer.expect_reply();
                }
                let result = match checked {
                    Err(denied) => {
                        if denied.by_acl() {
                            inner.stats.refusals.fetch_add(1, Ordering::Relaxed);
                            info!(reason = %denied, "mutation refused by the ACL");
                        }
                        Err(denied.to_string())
                    }
                    Ok(()) => {
                        let called = called.into_iter().map(|s| s as usize).collect();
                        let started = std::time::Instant::now();
                        let result = hub.source.mutate(Mutation::new(kind, called, args)).await;
                        inner.stats.mutation_latency.record(started.elapsed());
                        // A refusal from further up (this source is a mirror) is passed on
                        // as its reason alone: the client wraps it once, however many hops up
                        // it was refused.
                        result.map_err(|e| match e {
                            MutationError::Refused(reason) => reason,
                            other => other.to_string(),
                        })
                    }
                };
                // Id 0 asks for no reply.
                if id == 0 {
                    if let Err(error) = result {
                        debug!(%error, "no-reply mutation failed");
                    }
                    continue;
                }
                Control::Reply { id, result }
            }
            Message::Sync { id } => Control::Snapshot { id },
            Message::Ping(nonce) => Control::Pong(nonce),
            Message::Pong(_) => continue,
            Message::Bye { reason } => {
                debug!(?reason, "client said bye");
                return End::PeerBye;
            }
            Message::Error { message } => return End::PeerError(message),
            other => return End::Protocol(format!("unexpected {} from a client", other.name())),
        };
        if to_writer.control.send(answer).await.is_err() {
            return End::PeerClosed;
        }
    }
}

/// The writing half of a connection: replies, pings, and the pushes its hub's pusher left to
/// it ([`Outlet`]).
struct Writer<'a> {
    inner: &'a Inner,
    hub: &'a Hub,
    outlet: &'a Outlet,
    nonce: u64,
}

impl Writer<'_> {
    async fn run(&mut self, mut control: mpsc::Receiver<Control>, kick: &Notify) -> End {
        let config = &self.inner.config.limits;
        // The one-shot events are waited for by futures that live as long as the connection:
        // made anew on every turn, each would join and leave a shared waiter list per write.
        let mut shutdown = self.inner.shutdown.subscribe();
        let shutdown = shutdown.wait_for(|stop| *stop);
        let kicked = kick.notified();
        tokio::pin!(shutdown, kicked);
        let mut keepalive =
            tokio::time::interval_at(Instant::now() + config.keepalive, config.keepalive);
        let write_limit = config.idle_timeout;
        let mut push_due: Option<Instant> = None;
        let mut last_push = Instant::now();
        // Grows on first use and keeps its size; an idle client never needs more than a ping.
        let mut out = Vec::new();
        let mut controls = Vec::new();
        loop {
            out.clear();
            let (mut push, mut ping, mut nudged) = (false, false, false);
            tokio::select! {
                biased;
                _ = &mut shutdown => return End::Shutdown,
                () = &mut kicked => return End::Kicked,
                next = control.recv() => {
                    let Some(first) = next else { return End::PeerClosed };
                    controls.push(first);
                    // Whatever else is ready goes out in the same write.
                    while let Ok(more) = control.try_recv() {
                        controls.push(more);
                    }
                }
                () = self.outlet.nudge.notified(), if push_due.is_none() => {
                    nudged = true;
                    match config.min_push_interval {
                        Some(interval) if last_push.elapsed() < interval => push_due = Some(last_push + interval),
                        _ => {
                            push = true;
                            last_push = Instant::now();
                        }
                    }
                }
                _ = sleep_until(push_due.unwrap_or_else(Instant::now)), if push_due.is_some() => {
                    push_due = None;
                    push = true;
                    last_push = Instant::now();
                }
                _ = keepalive.tick() => ping = true,
            }
            // What to send and the write half to send it with, under one lock: no push of the
            // pusher's comes between a frame made here and its write.
            // Whatever is sent now is in positions of the client's schema. The clock's own
            // record says when to look; the source says whether it really changed (a schema
            // can change without a transition, and the record lags until the next one).
            if self.hub.schema_hash() != self.outlet.schema
                && self.hub.source.schema().hash() != self.outlet.schema
            {
                return End::SchemaChanged;
            }
            let (mut wr, unsent) = {
                let mut state = self.outlet.lock();
                for c in controls.drain(..) {
                    self.control(&mut state, c, &mut out);
                }
                if push {
                    self.push(&mut state, &mut out);
                }
                if ping {
                    self.nonce += 1;
                    encode_frame(&self.outlet.frame, &Message::Ping(self.nonce), &mut out);
                    self.inner.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                }
                // A nudge with nothing new may still mean bytes the pusher left in a buffer.
                if out.is_empty() && state.unsent.is_empty() && !nudged {
                    continue;
                }
                let Some(wr) = state.wr.take() else {
                    return End::Io(std::io::Error::other("the write half is gone"));
                };
                (wr, std::mem::take(&mut state.unsent))
            };
            let written = timeout(write_limit, async {
                for bytes in [&unsent, &out] {
                    if !bytes.is_empty() {
                        wr.write_all(bytes).await?;
                    }
                }
                // TLS and WebSocket streams buffer; a frame must leave now, not with the next.
                wr.flush().await
            })
            .await;
            self.outlet.lock().wr = Some(wr);
            match written {
                Ok(Ok(())) => {
                    let bytes = (unsent.len() + out.len()) as u64;
                    self.inner
                        .stats
                        .bytes_out
                        .fetch_add(bytes, Ordering::Relaxed);
                }
                Ok(Err(e)) => return End::Io(e),
                Err(_) => {
                    self.inner
                        .stats
                        .write_stalls
                        .fetch_add(1, Ordering::Relaxed);
                    return End::WriteStalled(write_limit);
                }
            }
        }
    }

    /// The hub's latest clock; first appends the source's ancestry when it changed since the
    /// client last had it.
    fn latest(&self, state: &mut OutletState, out: &mut Vec<u8>) -> Versioned {
        let latest = self.hub.latest();
        if latest.ancestry != state.ancestry {
            state.ancestry = latest.ancestry;
            let message = Message::Ancestry(self.hub.source.ancestry());
            encode_frame(&self.outlet.frame, &message, out);
            self.inner.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        }
        latest
    }

    /// Appends the diff from the client's clock to the latest, if anything tracked changed.
    fn push(&self, state: &mut OutletState, out: &mut Vec<u8>) {
        let latest = self.latest(state, out);
        if latest.version == state.last.version || self.resync_if_went_back(state, &latest, out) {
            return;
        }
        let outlet = self.outlet;
        // With nothing tracked changed there is no frame, and the client's clock stays where
        // it was: the next diff then carries this version's queue growth too.
        let Some(bytes) = self.hub.frames().diff_frame(
            &state.last,
            &latest,
            &outlet.tracked,
            &outlet.frame,
            outlet.options,
        ) else {
            return;
        };
        out.extend_from_slice(&bytes);
        let stats = &self.inner.stats;
        stats.frames_out.fetch_add(1, Ordering::Relaxed);
        stats.diffs_sent.fetch_add(1, Ordering::Relaxed);
        // Versions between the client's and the latest were merged into this one diff.
        let merged = latest
            .version
            .saturating_sub(state.last.version)
            .saturating_sub(1);
        if merged > 0 {
            stats.diffs_merged.fetch_add(merged, Ordering::Relaxed);
        }
        state.last = latest;
    }

    /// When the source's clock went back (it restarted and a mirror resynced to it), no diff
    /// can express the change: sends an unsolicited snapshot (id 0) and takes it as sent.
    fn resync_if_went_back(
        &self,
        state: &mut OutletState,
        latest: &Versioned,
        out: &mut Vec<u8>,
    ) -> bool {
        let tracked = &self.outlet.tracked;
        if !went_back(state.last.clock(), latest.clock(), tracked) {
            return false;
        }
        let snapshot = Snapshot {
            ticks: tracked.mask(&latest.ticks),
            queue_tick: latest.queue_tick,
        };
        encode_frame(
            &self.outlet.frame,
            &Message::Snapshot { id: 0, snapshot },
            out,
        );
        self.inner.stats.frames_out.fetch_add(1, Ordering::Relaxed);
        state.last = latest.clone();
        true
    }

    fn control(&self, state: &mut OutletState, control: Control, out: &mut Vec<u8>) {
        let message = match control {
            Control::Reply { id, result } => {
                self.outlet.replies_queued.fetch_sub(1, Ordering::AcqRel);
                // The reply carries the diff up to now, so the client needs no extra push.
                let latest = self.latest(state, out);
                self.resync_if_went_back(state, &latest, out);
                let diff = Hub::diff(&state.last, &latest, &self.outlet.tracked);
                state.last = latest;
                Message::MutateReply(MutateReply {
                    id,
                    result: result.into(),
                    diff,
                })
            }
            Control::Snapshot { id } => {
                let latest = self.latest(state, out);
                let snapshot = Snapshot {
                    ticks: self.outlet.tracked.mask(&latest.ticks),
                    queue_tick: latest.queue_tick,
                };
                state.last = latest;
                Message::Snapshot { id, snapshot }
            }
            Control::Pong(nonce) => Message::Pong(nonce),
            Control::Payload(payload) => Message::Payload((*payload).clone()),
        };
        encode_frame(&self.outlet.frame, &message, out);
        self.inner.stats.frames_out.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::End;

    #[test]
    fn a_peers_words_cannot_forge_a_log_line() {
        let end = End::PeerError("oops\n2026-12-02T04:00:00Z INFO forged\u{1b}[0m".into());
        let shown = end.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("oops"), "{shown}");
    }
}
