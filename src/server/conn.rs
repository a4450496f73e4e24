//! One client connection, pumped: bytes from the socket into its [`ServerSession`], bytes
//! from the session to the socket, time to the session when it asks; the session decides
//! everything else. A reader and a writer run until the session ends; the last word it queued
//! (a bye or an error) then goes out within a short deadline. The reader runs what the session
//! hands out on the served source: mutations and last-error requests one at a time, remote
//! waits as tasks of their own (`waits.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, sleep_until, timeout};

use crate::wire::SessionTimer;
use tracing::{Instrument, debug, warn};

use super::hub::Hub;
use super::push::{Outlet, OutletState};
use super::waits::Waits;
use super::{ClientEntry, ClientInfo, Inner};
use crate::machine::MutationError;
use crate::proto::dedup::Begin;
use crate::proto::handshake::Offer;
use crate::proto::message::Hello;
use crate::proto::session::{
    CloseReason, DiffCache, Moment, NoSource, ServerEvent, ServerSession, server_full,
};
use crate::transport::{BoxStream, Handshake, PeerInfo};

/// The last word to a closing peer must not hold the task up.
const FAREWELL_TIMEOUT: Duration = Duration::from_millis(500);
/// Reads ask for at least this much room. Small, because the buffer lives as long as the
/// connection and most connections are idle.
const READ_CHUNK: usize = 1024;

pub(crate) async fn serve(inner: &Arc<Inner>, conn: u64, handshake: Handshake) {
    let limit = inner.session_config.limits.handshake_timeout;
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

/// The session's clock: moments since the connection began.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> Moment {
        Moment::since_epoch(self.0.elapsed())
    }

    fn instant(self, at: Moment) -> Instant {
        crate::wire::instant_at(self.0, at)
    }
}

async fn run(inner: &Arc<Inner>, conn: u64, stream: BoxStream, peer: PeerInfo) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let clock = Clock(Instant::now());
    let mut session = ServerSession::new(
        inner.session_config.clone(),
        inner.stats.clone(),
        peer.identity.clone(),
        clock.now(),
    );
    let Some((hub, permit)) = handshake(inner, &mut session, &mut rd, clock).await else {
        farewell(&mut session, &mut wr, inner).await;
        return;
    };
    let Some(client) = session.client_id().map(str::to_owned) else {
        return;
    };
    // Every later event of this connection carries the client's id.
    tracing::Span::current().record("client", client.as_str());
    // A node below this one is pushed to before the other clients (`ServerConfig::push_first`).
    let first = inner.push_first.contains(&client);

    // The welcome waits in the session: the writer sends it first.
    let outlet = Arc::new(Outlet::new(wr, session));
    // Listed before the welcome goes out (a client that is ready is a client the server lists
    // and can send payloads to), unlisted when the guard drops.
    let slot = ClientSlot::register(
        inner,
        conn,
        permit,
        ClientEntry {
            info: ClientInfo {
                id: client,
                source: hub.name.clone(),
                peer: peer.address.clone(),
            },
            outlet: outlet.clone(),
        },
    );
    let attached = hub.attach(outlet.clone(), inner, first);
    outlet.nudge.notify_one();
    tokio::select! {
        () = read_loop(inner, &hub, &outlet, &mut rd, clock) => {}
        () = write_loop(inner, &hub, &outlet, clock) => {}
    }
    drop(attached);
    // Unlisted before the last word: a client that got it is a client the server no longer
    // lists.
    drop(slot);
    // The write half is not there when the connection ended in the middle of a write: a last
    // word after half a frame would not parse anyway.
    let (wr, last_word) = {
        let mut state = outlet.lock();
        let state = &mut *state;
        if state.session.closed().is_none() {
            state.session.close(CloseReason::PeerClosed);
        }
        let mut last_word = Vec::new();
        state.session.take_transmit(&mut last_word);
        (state.wr.take(), last_word)
    };
    if let Some(mut wr) = wr {
        if !last_word.is_empty() {
            let _ = timeout(FAREWELL_TIMEOUT, write(inner, &mut wr, &last_word)).await;
        }
        let _ = timeout(FAREWELL_TIMEOUT, wr.shutdown()).await;
    }
}

/// Runs the handshake: reads until the session has a hello or a status request to answer,
/// and answers it. Returns the source and the client's slot when the client was welcomed (the
/// welcome is queued in the session).
async fn handshake(
    inner: &Arc<Inner>,
    session: &mut ServerSession,
    rd: &mut ReadHalf<BoxStream>,
    clock: Clock,
) -> Option<(Arc<Hub>, OwnedSemaphorePermit)> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                ServerEvent::Hello(hello) => {
                    // Refused: the refusal goes out as the farewell.
                    if let Some(ready) = answer_hello(inner, session, &hello, clock) {
                        return Some(ready);
                    }
                }
                ServerEvent::StatusRequest { token } => {
                    let hubs = inner.hubs();
                    let schemas: Vec<_> = hubs.iter().map(|hub| hub.source.schema()).collect();
                    session.answer_status(
                        token.as_deref(),
                        schemas.iter().map(|schema| &**schema),
                        || inner.status(),
                    );
                }
                // Only an accepted client's requests hand these out.
                ServerEvent::Mutate { .. }
                | ServerEvent::WhenArgs { .. }
                | ServerEvent::CancelWait { .. }
                | ServerEvent::Err { .. } => {}
            }
        }
        if session.closed().is_some() {
            return None;
        }
        let deadline = session.poll_timeout().map(|at| clock.instant(at));
        buf.clear();
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => {
                    debug!("connection ended before its hello");
                    session.close(CloseReason::PeerClosed);
                }
                Ok(_) => session.handle_bytes(&buf, clock.now(), &NoSource),
                Err(e) => {
                    debug!(error = %e, "connection failed before its hello");
                    session.close(CloseReason::Io(e.to_string()));
                }
            },
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                session.handle_timeout(clock.now(), &NoSource, &DiffCache::default());
            }
        }
    }
}

/// Answers a hello with the source it names: the welcome, with a slot for the client, or a
/// refusal (queued in the session either way).
fn answer_hello(
    inner: &Arc<Inner>,
    session: &mut ServerSession,
    hello: &Hello,
    clock: Clock,
) -> Option<(Arc<Hub>, OwnedSemaphorePermit)> {
    let hub = match inner.hub(&hello.source) {
        Ok(hub) => hub,
        Err(reason) => {
            session.refuse(crate::proto::message::Refusal {
                kind: crate::proto::message::RefusalKind::UnknownSource,
                reason,
            });
            return None;
        }
    };
    // The positions granted are positions of this schema: the session ends when the source's
    // schema changes (a served mirror's can).
    let schema = hub.source.schema();
    let start = hub.start_clock(schema.hash());
    let ancestry = hub.source.ancestry();
    let offer = Offer {
        schema: &schema,
        ancestry: &ancestry,
        snapshot: crate::proto::message::Snapshot {
            ticks: start.ticks.to_vec(),
            queue_tick: start.queue_tick,
        },
        parent_id: hub.source.parent_id(),
        tags: hub.source.tags(),
    };
    let accepted = session.accept(offer)?;
    // A slot is taken only by an accepted client: refused handshakes never crowd others out
    // (they are bounded by the handshake timeout instead).
    let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
        session.refuse(server_full(inner.session_config.limits.max_clients));
        return None;
    };
    session.welcome(accepted, schema, start, clock.now(), &*hub);
    Some((hub, permit))
}

/// A listed client: its entry and its slot among the server's clients, both given back when
/// the connection ends, however it ends.
struct ClientSlot<'a> {
    inner: &'a Inner,
    conn: u64,
    _permit: OwnedSemaphorePermit,
}

impl<'a> ClientSlot<'a> {
    fn register(
        inner: &'a Inner,
        conn: u64,
        permit: OwnedSemaphorePermit,
        entry: ClientEntry,
    ) -> Self {
        inner.clients().insert(conn, entry);
        inner.stats.clients.fetch_add(1, Ordering::Relaxed);
        ClientSlot {
            inner,
            conn,
            _permit: permit,
        }
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.inner.clients().remove(&self.conn);
        self.inner.stats.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes the answer the session just made if the socket takes it now (else the writer is
/// nudged), and counts what went out.
fn answer_now(inner: &Inner, outlet: &Outlet, state: &mut OutletState) {
    let sent = outlet.send_now(state);
    inner
        .stats
        .bytes_out
        .fetch_add(sent as u64, Ordering::Relaxed);
}

/// Reads bytes into the session and runs the mutations, waits and requests it hands out,
/// until it ends (the waits end with it).
async fn read_loop(
    inner: &Inner,
    shared_hub: &Arc<Hub>,
    outlet: &Arc<Outlet>,
    rd: &mut ReadHalf<BoxStream>,
    clock: Clock,
) {
    let hub: &Hub = shared_hub;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut events = Vec::new();
    let mut waits = Waits::default();
    loop {
        // What the session hands out: from the bytes just read, or (the first time) from
        // those that came with the hello; a result lets it read on, which may hand out more.
        loop {
            events.extend(std::iter::from_fn(|| outlet.lock().session.poll_event()));
            if events.is_empty() {
                break;
            }
            for event in events.drain(..) {
                match event {
                    ServerEvent::Mutate { id, mutation } => {
                        // Who asked, for the source's tracers (telemetry links the hops).
                        let client = outlet.lock().session.client_id().map(str::to_owned);
                        let mutation = match &client {
                            Some(client) => mutation.with_origin(client),
                            None => mutation,
                        };
                        let started = std::time::Instant::now();
                        let result = run_once(inner, shared_hub, client.as_deref(), mutation).await;
                        inner.stats.mutation_latency.record(started.elapsed());
                        let mut state = outlet.lock();
                        state
                            .session
                            .handle_mutation_result(id, result, clock.now(), hub);
                        // The answer goes out from here when the socket takes it: waking the
                        // writer for it would add a turn of the scheduler to every mutation.
                        answer_now(inner, outlet, &mut state);
                        continue;
                    }
                    ServerEvent::Err { id } => {
                        let result = hub.source.err().await;
                        let mut state = outlet.lock();
                        state.session.handle_err_result(
                            id,
                            result.map_err(reason),
                            clock.now(),
                            hub,
                        );
                        answer_now(inner, outlet, &mut state);
                        continue;
                    }
                    ServerEvent::WhenArgs {
                        id,
                        wait,
                        state,
                        args,
                    } => waits.start(hub, outlet, (id, wait), &state, args),
                    ServerEvent::CancelWait { wait } => waits.cancel(wait),
                    ServerEvent::Hello(_) | ServerEvent::StatusRequest { .. } => {}
                }
                outlet.nudge.notify_one();
            }
        }
        // A client that sends faster than it reads its answers waits for its writer.
        loop {
            let drained = outlet.drained.notified();
            {
                let state = outlet.lock();
                if state.session.closed().is_some() {
                    return;
                }
                if !state.session.backlogged() {
                    break;
                }
            }
            drained.await;
        }
        buf.clear();
        let read = rd.read_buf(&mut buf).await;
        let for_writer = {
            let mut state = outlet.lock();
            let session = &mut state.session;
            match read {
                Ok(0) => session.close(CloseReason::PeerClosed),
                Ok(_) => session.handle_bytes(&buf, clock.now(), hub),
                Err(e) => session.close(CloseReason::Io(e.to_string())),
            }
            !session.transmit().is_empty() || session.closed().is_some()
        };
        // The writer re-reads the session's deadline when woken; a message that only moved
        // it later (most do: the idle rule counts from the last one) needs no wake-up.
        if for_writer {
            outlet.nudge.notify_one();
        }
    }
}

/// Runs a client's mutation on the source, once per key: a key this source ran already is
/// answered from its record, and one whose first copy is running waits for that result
/// (PROTOCOL.md, "Retries and exactly once"). A mutation without a key just runs.
async fn run_once(
    inner: &Inner,
    hub: &Arc<Hub>,
    client: Option<&str>,
    mutation: crate::machine::Mutation,
) -> Result<crate::machine::Outcome, String> {
    let (Some(client), Some(key)) = (client, mutation.key.clone()) else {
        return hub.source.mutate(mutation).await.map_err(reason);
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let begun = lock_dedup(hub).begin(client, key.clone(), hub.now(), tx);
    match begun {
        Begin::Done(answer) => {
            inner
                .stats
                .mutations_deduplicated
                .fetch_add(1, Ordering::Relaxed);
            debug!(client, origin = %key.origin, seq = key.seq, "a repeated mutation answered from the record");
            answer
        }
        Begin::Joined => {
            inner
                .stats
                .mutations_deduplicated
                .fetch_add(1, Ordering::Relaxed);
            rx.await.unwrap_or_else(|_| {
                Err("the first copy of this mutation ended without a result; retry".to_owned())
            })
        }
        Begin::Unrecorded(_) => {
            inner
                .stats
                .mutations_unrecorded
                .fetch_add(1, Ordering::Relaxed);
            hub.source.mutate(mutation).await.map_err(reason)
        }
        Begin::Run => {
            let run = {
                let (hub, client, key) = (hub.clone(), client.to_owned(), key.clone());
                async move {
                    // A run that panics (an observer of the source, a source's own future) is
                    // recorded as failed, on whichever task it panics: its repeats get that
                    // answer instead of waiting for one that never comes, and it does not run
                    // twice.
                    // The call inside the caught future: a local source runs the mutation in
                    // the call itself.
                    let ran =
                        std::panic::AssertUnwindSafe(async { hub.source.mutate(mutation).await })
                            .catch_unwind()
                            .await;
                    let answer = match ran {
                        // A hop that lost its way up does not know whether the mutation ran:
                        // nothing is recorded, so a repeat goes up again and the source's
                        // own record answers it.
                        Ok(Err(e)) if e.outcome_unknown() => {
                            return abandon(&hub, &client, key, reason(e));
                        }
                        Ok(answer) => answer.map_err(reason),
                        Err(_) => Err(
                            "the mutation's run panicked at the source (its log says where)"
                                .to_owned(),
                        ),
                    };
                    settle(&hub, &client, key, answer)
                }
            };
            let mut run = Box::pin(run);
            // A local source answers at once: tried here first, a run costs no task. One that
            // waits (forwarded upstream) goes on a task of its own: the connection's reader
            // (this future) is dropped when the connection ends, and a run dropped half-way
            // would leave its key running for ever and its repeats waiting on it. The task
            // records the answer however the connection ends. Nothing awaits in between, so
            // the reader cannot be dropped between the try and the spawn.
            let tried = run
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
            if let std::task::Poll::Ready(answer) = tried {
                return answer;
            }
            tokio::spawn(run).await.unwrap_or_else(|e| {
                // Only a runtime shutting down cancels the task; a panic was caught in it.
                Err(format!(
                    "the mutation's run ended without an answer: {e}; retry"
                ))
            })
        }
    }
}

/// Leaves a keyed mutation whose outcome is unknown unrecorded, and tells the repeats that
/// waited for it why (they retry on their own).
fn abandon(
    hub: &Hub,
    client: &str,
    key: crate::machine::MutationKey,
    why: String,
) -> Result<crate::machine::Outcome, String> {
    let answer = Err(why);
    for waiter in lock_dedup(hub).abandon(client, key) {
        let _ = waiter.send(answer.clone());
    }
    answer
}

/// Records a keyed mutation's answer and hands it to the repeats that waited for it.
fn settle(
    hub: &Hub,
    client: &str,
    key: crate::machine::MutationKey,
    answer: Result<crate::machine::Outcome, String>,
) -> Result<crate::machine::Outcome, String> {
    let waiters = lock_dedup(hub).finish(client, key, &answer, hub.now());
    for waiter in waiters {
        // A duplicate whose connection ended is not waiting any more.
        let _ = waiter.send(answer.clone());
    }
    answer
}

fn lock_dedup(
    hub: &Hub,
) -> std::sync::MutexGuard<'_, crate::proto::dedup::Dedup<super::hub::DedupWaiter>> {
    // Nothing that holds the record's lock runs user code or can panic on peer input.
    hub.dedup
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why the source did not answer, for the client. A refusal from further up (this source is a
/// mirror) is passed on as its reason alone: the client wraps it once, however many hops up
/// it was refused.
fn reason(error: MutationError) -> String {
    match error {
        MutationError::Refused(reason) => reason,
        other => other.to_string(),
    }
}

/// Sends what the session queues, catches it up when nudged, keeps its time, until it ends.
async fn write_loop(inner: &Inner, hub: &Hub, outlet: &Outlet, clock: Clock) {
    // Waited for by a future that lives as long as the connection: made anew on every turn,
    // it would join and leave a shared waiter list per write.
    let mut shutdown = inner.shutdown.subscribe();
    let shutdown = shutdown.wait_for(|stop| *stop);
    tokio::pin!(shutdown);
    let write_limit = inner.session_config.limits.idle_timeout;
    let mut timer = SessionTimer::new();
    // Grows on first use and keeps its size; an idle client never needs more than a ping.
    let mut out = Vec::new();
    loop {
        let deadline = outlet.lock().session.poll_timeout();
        timer.arm(deadline.map(|at| clock.instant(at)));
        let mut ended = None;
        let mut timed_out = false;
        tokio::select! {
            biased;
            _ = &mut shutdown => ended = Some(CloseReason::Shutdown),
            () = outlet.nudge.notified() => {}
            () = timer.fired() => timed_out = true,
        }
        // What to send and the write half to send it with, under one lock: no push of the
        // pusher's comes between bytes taken here and their write.
        let mut wr = {
            let mut state = outlet.lock();
            let state = &mut *state;
            let session = &mut state.session;
            let now = clock.now();
            match ended {
                Some(reason) => session.close(reason),
                None if timed_out => session.handle_timeout(now, hub, hub.frames()),
                None => {}
            }
            session.catch_up(now, hub, hub.frames());
            if session.closed().is_some() {
                // The last word goes out after the loops end.
                return;
            }
            // Bytes a write that did not wait left in the stream's buffer are flushed here
            // even when nothing new is due: the socket's "writable" went to nobody.
            if session.transmit().is_empty() && !state.unflushed {
                continue;
            }
            session.take_transmit(&mut out);
            state.unflushed = false;
            let Some(wr) = state.wr.take() else {
                state
                    .session
                    .close(CloseReason::Io("the write half is gone".into()));
                return;
            };
            wr
        };
        let written = timeout(write_limit, write(inner, &mut wr, &out)).await;
        out.clear();
        let mut state = outlet.lock();
        let failed = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(CloseReason::Io(e.to_string())),
            Err(_) => {
                // A client already dropped for its payloads is not dropped twice.
                if state.session.closed().is_none() {
                    inner.stats.write_stalls.fetch_add(1, Ordering::Relaxed);
                }
                Some(CloseReason::WriteStalled(write_limit))
            }
        };
        state.wr = Some(wr);
        outlet.drained.notify_waiters();
        if let Some(reason) = failed {
            // Half a frame may be out: no last word after it.
            state.wr = None;
            state.session.close(reason);
            return;
        }
    }
}

/// Sends a refused or answered handshake's last bytes and closes.
async fn farewell(session: &mut ServerSession, wr: &mut WriteHalf<BoxStream>, inner: &Inner) {
    let mut out = Vec::new();
    session.take_transmit(&mut out);
    if !out.is_empty() {
        let _ = timeout(FAREWELL_TIMEOUT, write(inner, wr, &out)).await;
    }
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
