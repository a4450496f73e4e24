//! Async glue between [`crate::proto`] and a transport stream, for the one-shot status client:
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
