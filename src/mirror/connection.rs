//! The mirror's connection task, a pump around its session: connect the transport, feed the
//! session what arrives and the time it asks for, write what it queues, and reconnect with
//! backoff and jitter when a connection ends. The task holds the mirror weakly: dropping the
//! last `Mirror` handle ends it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::config::{ConnState, MirrorError};
use super::{Shared, backoff};
use crate::proto::session::{Moment, Phase};
use crate::replica::ReplicaEvent;
use crate::transport::{self, BoxStream, TransportError};
use crate::wire::SessionTimer;

/// Reads ask for at least this much room; the buffer grows when frames need more.
const READ_CHUNK: usize = 4096;
/// Most bytes the mirror keeps queued for the server before it stops reading from it: what it
/// reads can queue more (a pong per ping, a resync request), so a server that sends without
/// reading would otherwise grow the queue for ever. Reading resumes as the writer drains it.
const BACKLOG: usize = 1 << 20;
/// The last word to a server must not hold the task up.
const FAREWELL_TIMEOUT: Duration = Duration::from_millis(500);

/// How a connection ended.
enum Ended {
    /// The mirror was closed or dropped.
    Stopped,
    /// The handshake failed.
    Handshake(MirrorError),
    /// An established session ended, for this reason.
    Lost(String),
}

/// Runs connections until the mirror is closed or dropped. `first`, for `Mirror::connect`,
/// hears how the first attempt went; when it failed, the task ends there.
pub(super) async fn drive(
    weak: Weak<Shared>,
    mut stop: watch::Receiver<bool>,
    mut first: Option<oneshot::Sender<Result<(), MirrorError>>>,
) {
    let mut jitter = backoff::Jitter::new(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (weak.as_ptr() as u64),
    );
    // The first attempt goes at once; `Some(n)` waits the n-th backoff first.
    let mut attempt: Option<u32> = None;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let (endpoint, config) = (shared.endpoint.clone(), shared.config.clone());
        drop(shared);
        if let Some(n) = attempt {
            let wait = backoff::delay(n, config.backoff_initial, config.backoff_max, jitter.draw());
            let slept = with_session_timers(&weak, async {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => true,
                    _ = stop.wait_for(|s| *s) => false,
                }
            })
            .await;
            if slept != Some(true) {
                return;
            }
        }
        let Some(shared) = weak.upgrade() else { return };
        if shared.core.lock().session.phase() == Phase::Closed {
            return;
        }
        shared.conn.send_replace(ConnState::Connecting);
        drop(shared);
        let connected = with_session_timers(&weak, async {
            tokio::select! {
                connected = connect(&endpoint, &config) => Some(connected),
                _ = stop.wait_for(|s| *s) => None,
            }
        })
        .await;
        let Some(Some(connected)) = connected else {
            return;
        };
        let ended = match connected {
            Ok(stream) => run(&weak, stream, &mut stop, &mut first).await,
            Err(e) => Ended::Handshake(MirrorError::Transport(e)),
        };
        let Some(shared) = weak.upgrade() else { return };
        shared.end_session("the connection ended");
        match ended {
            Ended::Stopped => {
                debug!(mirror = %shared.id(), "mirror stopped");
                return;
            }
            Ended::Handshake(e) => {
                if let Some(first) = first.take() {
                    let _ = first.send(Err(e));
                    return;
                }
                let n = attempt.map_or(0, |n| n.saturating_add(1));
                if n == 0
                    || matches!(
                        e,
                        MirrorError::Refused { .. } | MirrorError::SchemaMismatch { .. }
                    )
                {
                    warn!(mirror = %shared.id(), %endpoint, error = %e, "cannot connect; retrying with backoff");
                } else {
                    debug!(mirror = %shared.id(), %endpoint, error = %e, attempt = n, "reconnect failed");
                }
                shared.core.lock().last_error = Some(e.to_string());
                attempt = Some(n);
            }
            Ended::Lost(reason) => {
                if *stop.borrow() || shared.core.lock().session.phase() == Phase::Closed {
                    debug!(mirror = %shared.id(), "mirror stopped");
                    return;
                }
                warn!(mirror = %shared.id(), endpoint = %shared.endpoint, %reason, "disconnected; reconnecting");
                shared.core.lock().last_error = Some(reason);
                attempt = Some(0);
            }
        }
    }
}

/// Runs `work` (a backoff, a connect) while firing the session's timers as they come due:
/// mutations waiting for the link fail at their deadline even while no connection is up.
/// `None` when the mirror is gone.
async fn with_session_timers<F: std::future::Future>(
    weak: &Weak<Shared>,
    work: F,
) -> Option<F::Output> {
    tokio::pin!(work);
    let mut timer = SessionTimer::new();
    let wake = weak.upgrade()?.wake.clone();
    loop {
        // Made before the deadline is read: a mutation made after this (it wakes `wake`) may
        // bring the first deadline closer, and is seen on the next turn.
        let woken = wake.notified();
        let deadline = {
            let shared = weak.upgrade()?;
            let at = shared.core.lock().session.poll_timeout();
            at.map(|at| crate::wire::instant_at(shared.epoch, at))
        };
        timer.arm(deadline);
        tokio::select! {
            out = &mut work => return Some(out),
            () = timer.fired() => {
                let shared = weak.upgrade()?;
                let now = shared.now();
                shared.input(|session| session.handle_timeout(now));
            }
            // No writer runs now; the connection that follows wakes its own at its start.
            () = woken => {}
        }
    }
}

/// Connects the transport within the connect timeout.
async fn connect(
    endpoint: &crate::transport::Endpoint,
    config: &super::MirrorConfig,
) -> Result<BoxStream, TransportError> {
    match timeout(
        config.connect_timeout,
        transport::connect(endpoint, &config.transport),
    )
    .await
    {
        Ok(connected) => connected,
        Err(_) => Err(TransportError::Connect {
            endpoint: endpoint.without_machine(),
            error: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        }),
    }
}

/// One connection: the handshake, then the session, until either ends.
async fn run(
    weak: &Weak<Shared>,
    stream: BoxStream,
    stop: &mut watch::Receiver<bool>,
    first: &mut Option<oneshot::Sender<Result<(), MirrorError>>>,
) -> Ended {
    let (mut rd, wr) = tokio::io::split(stream);
    let Some(shared) = weak.upgrade() else {
        return Ended::Stopped;
    };
    let epoch = shared.epoch;
    let now = || Moment::since_epoch(epoch.elapsed());
    let (wake, stats, wrote) = (
        shared.wake.clone(),
        shared.stats.clone(),
        shared.drained.clone(),
    );
    shared.core.lock().session.connect(now());
    drop(shared);
    wake.notify_one();
    let writer = write_loop(weak.clone(), wake.clone(), wr);
    // Both live as long as the connection: made anew per message, each would register with
    // the runtime (a waiter list, the timer wheel) and leave it again.
    let stopped = stop.wait_for(|s| *s);
    let mut timer = SessionTimer::new();
    tokio::pin!(writer, stopped);
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let Some(shared) = weak.upgrade() else {
            return Ended::Stopped;
        };
        let (deadline, backlogged) = {
            let replica = shared.core.lock();
            let backlogged = replica.session.transmit().len() >= BACKLOG;
            (replica.session.poll_timeout(), backlogged)
        };
        // Registered before the writer can drain past the check above.
        let written = wrote.notified();
        drop(shared);
        timer.arm(deadline.map(|at| crate::wire::instant_at(epoch, at)));
        buf.clear();
        enum Input {
            Read(std::io::Result<usize>),
            Time,
            Drained,
        }
        let input = tokio::select! {
            ended = &mut writer => return ended,
            _ = &mut stopped => None,
            read = rd.read_buf(&mut buf), if !backlogged => Some(Input::Read(read)),
            () = written, if backlogged => Some(Input::Drained),
            () = timer.fired() => Some(Input::Time),
        };
        let Some(input) = input else {
            // Closed or dropped: the last word (a bye) goes out if it can.
            wake.notify_one();
            let _ = timeout(FAREWELL_TIMEOUT, &mut writer).await;
            return Ended::Stopped;
        };
        let Some(shared) = weak.upgrade() else {
            return Ended::Stopped;
        };
        if let Input::Read(Ok(n)) = input {
            stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        }
        let drained = shared.input(|session| match input {
            Input::Read(Ok(0)) => session.handle_lost("the server closed the connection".into()),
            Input::Read(Ok(_)) => session.handle_bytes(&buf, now()),
            Input::Read(Err(e)) => {
                session.handle_lost(crate::transport::tls::explain(e).to_string());
            }
            Input::Time => session.handle_timeout(now()),
            Input::Drained => {}
        });
        let (mut ready, mut failed, mut closed) = (None, None, None);
        for event in drained.events {
            match event {
                ReplicaEvent::Ready { reconnect } => ready = Some(reconnect),
                ReplicaEvent::HandshakeFailed(e) => failed = Some(e),
                ReplicaEvent::Closed(reason) => closed = Some(reason),
                // Taken by `Shared::input`.
                ReplicaEvent::Payload(_) => {}
            }
        }
        let wants_write = drained.wants_write;
        if let Some(reconnect) = ready {
            // Counted before Ready is announced, so whoever sees Ready sees the count.
            stats
                .reconnects
                .fetch_add(u64::from(reconnect), Ordering::Relaxed);
            info!(mirror = %shared.id(), endpoint = %shared.endpoint, "connected; clock synced");
            shared.conn.send_replace(ConnState::Ready);
            if let Some(first) = first.take() {
                let _ = first.send(Ok(()));
            }
        }
        if wants_write {
            wake.notify_one();
        }
        if let Some(e) = failed {
            return Ended::Handshake(MirrorError::handshake(&shared.endpoint, e));
        }
        if let Some(reason) = closed {
            return Ended::Lost(reason);
        }
        if shared.core.lock().session.phase() == Phase::Idle {
            return Ended::Lost("the connection ended".into());
        }
    }
}

/// Writes what the session queues whenever it is woken; after a closing session's last
/// bytes, shuts the stream down.
async fn write_loop(weak: Weak<Shared>, wake: Arc<Notify>, mut wr: WriteHalf<BoxStream>) -> Ended {
    let mut out = Vec::with_capacity(256);
    // After a failed write nothing more is written: the server's answer may still come.
    let mut broken = false;
    loop {
        wake.notified().await;
        let Some(shared) = weak.upgrade() else {
            return Ended::Stopped;
        };
        let phase = {
            let mut replica = shared.core.lock();
            replica.session.take_transmit(&mut out);
            replica.session.phase()
        };
        let stats = shared.stats.clone();
        drop(shared);
        if broken && phase == Phase::Ready {
            // The server welcomed a session whose writes already failed: nothing sent on it
            // would arrive. A new connection instead.
            return Ended::Lost("a write to the server failed during the handshake".into());
        }
        if !out.is_empty() && !broken {
            let written = async {
                wr.write_all(&out).await?;
                // TLS and WebSocket streams buffer; a frame must leave now.
                wr.flush().await
            }
            .await;
            match written {
                Ok(()) => {
                    stats
                        .bytes_out
                        .fetch_add(out.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    broken = true;
                    let Some(shared) = weak.upgrade() else {
                        return Ended::Stopped;
                    };
                    let mut replica = shared.core.lock();
                    if replica.session.phase() != Phase::Handshake {
                        return Ended::Lost(format!("i/o error: {e}"));
                    }
                    replica.session.handle_write_error(e.to_string());
                }
            }
        }
        out.clear();
        if let Some(shared) = weak.upgrade() {
            shared.drained.notify_waiters();
        }
        if phase == Phase::Closed {
            let _ = timeout(FAREWELL_TIMEOUT, wr.shutdown()).await;
            return Ended::Stopped;
        }
    }
}
