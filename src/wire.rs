//! Async glue between [`crate::proto`] and a transport stream, shared by server and mirror:
//! read the next whole message, counting bytes as they arrive.

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

/// Notices a silent peer with one long-lived timer instead of a timer armed and disarmed
/// around every read (which, at thousands of messages a second per process, showed up in
/// profiles as timer-wheel inserts and removals). Reads call [`IdleDeadline::touch`]; the
/// timer, when it fires, moves itself to the last touch plus the limit, and only ends
/// [`IdleDeadline::expired`] when nothing touched it for the whole limit.
pub(crate) struct IdleDeadline {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    last: tokio::time::Instant,
    limit: std::time::Duration,
}

impl IdleDeadline {
    pub(crate) fn new(limit: std::time::Duration) -> Self {
        let now = tokio::time::Instant::now();
        IdleDeadline {
            sleep: Box::pin(tokio::time::sleep_until(now + limit)),
            last: now,
            limit,
        }
    }

    /// The peer was heard from.
    pub(crate) fn touch(&mut self) {
        self.last = tokio::time::Instant::now();
    }

    /// Resolves once the peer has been silent for the limit. Cancel-safe.
    pub(crate) async fn expired(&mut self) {
        loop {
            self.sleep.as_mut().await;
            let due = self.last + self.limit;
            if due <= tokio::time::Instant::now() {
                return;
            }
            self.sleep.as_mut().reset(due);
        }
    }
}
