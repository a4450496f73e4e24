//! What a mirror is configured with, the states of its connection, its errors and counters.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::machine::Schema;
use crate::proto::frame::DEFAULT_MAX_FRAME;
use crate::proto::session::{ClientConfig, HandshakeError, RetryPolicy};
use crate::transport::{Endpoint, TransportConfig, TransportError};

/// How a mirror connects and behaves.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// Who this mirror is to the server (for a node, its node id).
    pub client_id: String,
    /// Ask for zstd compression of frames above the server's threshold (default off).
    pub compression: bool,
    /// Track only these states; `None` for all.
    pub track: Option<Vec<String>>,
    /// The server's shared secret, if it requires one.
    pub token: Option<String>,
    /// The schema the mirror expects, if known: the server then skips sending it.
    pub schema: Option<Arc<Schema>>,
    /// How long one connection attempt may take, TLS included (default 5 s).
    pub connect_timeout: Duration,
    /// How long the hello may wait for its answer (default 5 s).
    pub handshake_timeout: Duration,
    /// How often the mirror pings the server.
    pub keepalive: Duration,
    /// A server silent for this long is taken as gone.
    pub idle_timeout: Duration,
    /// How long a mutation waits for its reply.
    pub mutation_timeout: Duration,
    /// The largest frame body in bytes (default 1 MiB); must allow what the server sends.
    pub max_frame: usize,
    /// First reconnect delay; it doubles up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    /// The longest reconnect delay (default 5 s; the first is `backoff_initial`, 50 ms).
    pub backoff_max: Duration,
    /// TLS material for tls://, quic:// and wss:// upstreams.
    pub transport: TransportConfig,
    /// How mutations outlive a broken link: they wait for it up to a deadline and run once
    /// (PROTOCOL.md, "Retries and exactly once"). [`RetryPolicy::NONE`] fails them at once
    /// while disconnected.
    pub retry: RetryPolicy,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            client_id: format!("mirror-{}", std::process::id()),
            compression: false,
            track: None,
            token: None,
            schema: None,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            mutation_timeout: Duration::from_secs(30),
            max_frame: DEFAULT_MAX_FRAME,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            transport: TransportConfig::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// The state of a mirror's connection, for a person or a program to wait on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Connecting, or waiting for the handshake's answer.
    Connecting,
    /// Welcomed: the clock is the source's and mutations go up.
    Ready,
    /// The connection ended or an attempt failed (the reason:
    /// [`Mirror::last_error`](super::Mirror::last_error)); the mirror retries with backoff
    /// until it is disposed or dropped, keeping its last clock.
    Disconnected,
}

/// Why a mirror could not (first) connect.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Connecting failed (address, TLS, WebSocket); see its message.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The server refused the hello.
    #[error("{endpoint} refused the mirror ({kind:?}): {reason}")]
    Refused {
        /// The server.
        endpoint: Endpoint,
        /// The refusal's kind (retrying can help for `Loop`, `Full` and `Timeout`).
        kind: crate::proto::message::RefusalKind,
        /// The server's reason, escaped.
        reason: String,
    },
    /// The server did not answer the hello in time.
    #[error("no handshake answer from {endpoint} within {after:?}")]
    HandshakeTimeout {
        /// The server.
        endpoint: Endpoint,
        /// The handshake timeout.
        after: Duration,
    },
    /// The server's answer to the hello was not a welcome or a refusal.
    #[error("handshake with {endpoint} failed: {reason}")]
    Handshake {
        /// The server.
        endpoint: Endpoint,
        /// What was wrong with it.
        reason: String,
    },
    /// The welcome's schema does not validate.
    #[error("the server sent a schema that is not valid: {0}")]
    BadSchema(#[from] crate::machine::SchemaError),
    /// The source's schema is not the one set in [`MirrorConfig::schema`].
    #[error(
        "{endpoint} serves a different schema (states: {found}) than this mirror expects (states: {expected}); update one side or leave the mirror's schema unset to take the server's"
    )]
    SchemaMismatch {
        /// The server.
        endpoint: Endpoint,
        /// The states the mirror expects.
        expected: String,
        /// The states the source serves.
        found: String,
    },
}

/// Counters of one mirror.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Bytes read from the upstream, on the wire.
    pub bytes_in: AtomicU64,
    /// Bytes written to the upstream, on the wire.
    pub bytes_out: AtomicU64,
    /// Diffs applied.
    pub diffs: AtomicU64,
    /// Snapshots asked for after a checksum mismatch.
    pub resyncs: AtomicU64,
    /// Sessions established after the first.
    pub reconnects: AtomicU64,
}

impl MirrorConfig {
    /// The session's part of the configuration, for a source at `endpoint`.
    pub(super) fn session(&self, endpoint: &Endpoint) -> ClientConfig {
        ClientConfig {
            client_id: self.client_id.clone(),
            source: endpoint.machine.clone().unwrap_or_default(),
            compression: self.compression,
            track: self.track.clone(),
            token: self.token.clone(),
            max_frame: self.max_frame,
            handshake_timeout: self.handshake_timeout,
            keepalive: self.keepalive,
            idle_timeout: self.idle_timeout,
            retry: self.retry,
            key_epoch: key_epoch(),
        }
    }
}

impl MirrorError {
    /// A session's handshake failure, at `endpoint`.
    pub(super) fn handshake(endpoint: &Endpoint, error: HandshakeError) -> MirrorError {
        let endpoint = endpoint.clone();
        match error {
            HandshakeError::Refused { kind, reason } => MirrorError::Refused {
                endpoint,
                kind,
                reason,
            },
            HandshakeError::Timeout(after) => MirrorError::HandshakeTimeout { endpoint, after },
            HandshakeError::Failed(reason) => MirrorError::Handshake {
                endpoint,
                reason: crate::printable::printable(&reason).into_owned(),
            },
            HandshakeError::BadSchema(e) => MirrorError::BadSchema(e),
            HandshakeError::SchemaMismatch { expected, found } => MirrorError::SchemaMismatch {
                endpoint,
                expected,
                found,
            },
        }
    }
}

/// An epoch for a new session's mutation keys: the wall clock in nanoseconds mixed with the
/// process id and a per-process counter, so two mirrors (or one restarted) never share one.
fn key_epoch() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let made = MADE.fetch_add(1, Ordering::Relaxed);
    nanos ^ (u64::from(std::process::id()) << 32) ^ made.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}
