//! The wire protocol (aRPC), sans-IO: bytes in, bytes out, no sockets, no runtime.
//!
//! - [`frame`]: varints and length-delimited frames, negotiated zstd (its codec in `compress`:
//!   the C library with the `net` feature, a pure-Rust one without).
//! - [`message`]: the messages and their bincode body encoding.
//! - [`diff`]: clock diffs, merging, checksums, tracked subsets.
//! - [`handshake`]: the server's decision on a client's hello.
//! - [`acl`]: the server's access rules ([`acl::Acl`]) and its decisions on admission, status
//!   and a client's mutation (its `mutate` list).
//! - [`limits`]: the bounds on counts, names and nesting a peer's message may hold.
//! - [`config`]: a server's limits (clients, timeouts, frame size, push interval).
//! - [`session`]: the server's and the client's sessions: every decision of a connection.
//! - [`dedup`]: the keys of the mutations a source ran and their results, so a retried
//!   mutation runs once.
//!
//! [`FrameReader`] turns a byte stream into messages; [`encode_frame`] turns a message into
//! bytes. PROTOCOL.md at the repository root documents the format byte by byte.

pub mod acl;
mod compress;
pub mod config;
pub mod dedup;
pub mod diff;
pub mod frame;
pub mod handshake;
pub mod limits;
pub mod message;
pub mod session;

#[doc(hidden)]
pub mod checks;

pub use diff::{ApplyError, Tracked};
pub use frame::{Compression, DecodedFrame, FrameConfig, FrameError};
pub use message::{DecodeError, Message, PROTOCOL_VERSION};

/// Why a connection's bytes are not protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The framing is broken (length, compression).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame's body is not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Appends one message as one frame.
pub fn encode_frame(config: &FrameConfig, message: &Message, out: &mut Vec<u8>) {
    let body = message::encode_to_vec(message);
    config.encode(&body, out);
}

/// Accumulates bytes from a stream and yields whole messages.
#[derive(Debug)]
pub struct FrameReader {
    config: FrameConfig,
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    start: usize,
    /// The stream's first bytes (up to 4), kept to name another protocol a peer spoke.
    opening: [u8; 4],
    opening_len: usize,
    /// Whether a whole frame was read (the opening is complete then).
    framed: bool,
}

impl FrameReader {
    /// A reader with these frame settings and an empty buffer.
    pub fn new(config: FrameConfig) -> Self {
        FrameReader {
            config,
            // Allocated on the first read, sized by it.
            buf: Vec::new(),
            start: 0,
            opening: [0; 4],
            opening_len: 0,
            framed: false,
        }
    }

    /// Changes the frame settings (after the handshake agreed on compression).
    pub fn set_config(&mut self, config: FrameConfig) {
        self.config = config;
    }

    /// The frame settings in force.
    pub fn config(&self) -> &FrameConfig {
        &self.config
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into directly (e.g. with `read_buf`), with at least `min_free` bytes
    /// of spare capacity; what is appended is taken as received.
    pub fn read_target(&mut self, min_free: usize) -> &mut Vec<u8> {
        self.compact();
        self.buf.reserve(min_free);
        &mut self.buf
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtoError> {
        if !self.framed {
            // Nothing was taken yet, so the buffer starts with the stream's first bytes.
            self.opening_len = self.buf.len().min(self.opening.len());
            self.opening[..self.opening_len].copy_from_slice(&self.buf[..self.opening_len]);
        }
        let Some(frame) = self.config.decode(&self.buf[self.start..])? else {
            return Ok(None);
        };
        self.framed = true;
        let message = message::decode(&frame.body)?;
        self.start += frame.len;
        Ok(Some(message))
    }

    /// The first bytes the peer sent (up to 4): pass them to [`foreign_protocol`] when its
    /// first message is not what was expected.
    pub fn opening(&self) -> &[u8] {
        &self.opening[..self.opening_len]
    }

    /// Bytes received but not yet taken as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// Names the protocol a peer spoke instead of aRPC, from its first bytes, with what to do:
/// the most common mistakes are a TLS or WebSocket peer on a plain listener and the reverse.
pub fn foreign_protocol(first: &[u8]) -> Option<&'static str> {
    match first {
        [0x16, 0x03, ..] => Some(
            "the peer started a TLS handshake: this side is plain; use tls:// (or wss://) on both sides",
        ),
        [0x15, 0x03, ..] => {
            Some("the peer sent a TLS alert: it expects TLS; use tls:// (or wss://) on both sides")
        }
        [b'G', b'E', b'T', b' ', ..] | [b'P', b'O', b'S', b'T', ..] => Some(
            "the peer sent an HTTP request (a WebSocket client?) to a raw aRPC listener; use ws:// on both sides",
        ),
        [b'H', b'T', b'T', b'P', ..] => {
            Some("the peer answered with HTTP: it is a web server, not an aRPC one")
        }
        _ => None,
    }
}

/// `message`, plus what to do when the peer's first bytes (`opening`, see
/// [`FrameReader::opening`]) are another protocol's.
pub fn with_foreign_hint(message: String, opening: &[u8]) -> String {
    match foreign_protocol(opening) {
        Some(hint) => format!("{message}; {hint}"),
        None => message,
    }
}

#[cfg(test)]
mod tests;
