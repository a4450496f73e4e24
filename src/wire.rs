//! Async glue between [`crate::proto`] and the runtime, shared by the drivers: reading a whole
//! message from a stream (the one-shot status client), and a session's timer.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proto::{FrameReader, Message, ProtoError};

/// Reads ask for at least this much room. Small, because the buffer lives as long as the
/// connection and most connections are idle: it grows (doubling) only when frames need more.
const READ_CHUNK: usize = 1024;

/// Why no message came.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the stream.
    Closed,
    Io(std::io::Error),
    /// The bytes are not protocol: close the connection.
    Protocol(ProtoError),
}

/// Reads until `reader` holds a whole message, adding what arrives to `bytes_in`.
pub(crate) async fn read_message<R: AsyncRead + Unpin>(
    rd: &mut R,
    reader: &mut FrameReader,
    bytes_in: &AtomicU64,
) -> Result<Message, ReadError> {
    loop {
        match reader.next_message() {
            Ok(Some(message)) => return Ok(message),
            Ok(None) => {}
            Err(e) => return Err(ReadError::Protocol(e)),
        }
        let n = rd
            .read_buf(reader.read_target(READ_CHUNK))
            .await
            .map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The instant a session's moment `at` falls on, for a session that began at `epoch`. A moment
/// too far off for the clock (a timeout configured as `Duration::MAX`) is a far future, as
/// tokio's own is, instead of an overflow.
pub(crate) fn instant_at(
    epoch: tokio::time::Instant,
    at: crate::proto::session::Moment,
) -> tokio::time::Instant {
    const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(86_400 * 365 * 30);
    epoch
        .checked_add(at.elapsed().min(FAR_FUTURE))
        .unwrap_or(epoch)
}

/// A session's next timeout as one long-lived timer, for the drivers.
///
/// A session's deadline moves with nearly every message (the idle rule counts from the last
/// one heard); arming a new timer for each would insert into and remove from the runtime's
/// timer wheel per message, which showed up in profiles. This one is re-armed only when the
/// session wants an earlier moment than the armed one; when it fires early (the deadline moved
/// later meanwhile), the session finds nothing due and the driver arms it again.
pub(crate) struct SessionTimer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<tokio::time::Instant>,
}

impl SessionTimer {
    pub(crate) fn new() -> Self {
        SessionTimer {
            // Never polled before it is armed.
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::ZERO)),
            armed: None,
        }
    }

    /// Makes sure the timer fires by `at` (it may fire earlier).
    pub(crate) fn arm(&mut self, at: Option<tokio::time::Instant>) {
        match (at, self.armed) {
            (Some(at), Some(armed)) if armed <= at => {}
            (Some(at), _) => {
                self.sleep.as_mut().reset(at);
                self.armed = Some(at);
            }
            (None, _) => {}
        }
    }

    /// Resolves when the armed moment passes; never, when nothing is armed. Cancel-safe.
    pub(crate) async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}
