//! A server's counters, which its sessions and drivers count into.

use std::sync::atomic::AtomicU64;

/// Counters of one server, all since it started; sessions count into them.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted (before any handshake).
    pub connections: AtomicU64,
    /// Clients welcomed (handshakes that succeeded).
    pub clients: AtomicU64,
    /// Handshakes refused, and mutations or waits the ACL refused.
    pub refusals: AtomicU64,
    /// Connections whose transport handshake (TLS, WebSocket, QUIC) failed.
    pub transport_errors: AtomicU64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: AtomicU64,
    /// Frames read from clients.
    pub frames_in: AtomicU64,
    /// Frames written to clients.
    pub frames_out: AtomicU64,
    /// Bytes read from clients (on the wire, compressed).
    pub bytes_in: AtomicU64,
    /// Bytes written to clients (on the wire, compressed).
    pub bytes_out: AtomicU64,
    /// `Diff` messages sent.
    pub diffs_sent: AtomicU64,
    /// Source versions folded into a later diff because the client's connection was busy.
    pub diffs_merged: AtomicU64,
    /// Mutations received from clients.
    pub mutations: AtomicU64,
    /// Keyed mutations answered from the record of their first run instead of running again
    /// (a client's retry).
    pub mutations_deduplicated: AtomicU64,
    /// Keyed mutations run without a record because the record was full of running ones.
    pub mutations_unrecorded: AtomicU64,
    /// Clients dropped because a write to them stayed blocked past the write deadline.
    pub write_stalls: AtomicU64,
    /// Clients dropped because their payloads could not be queued.
    pub payload_overflows: AtomicU64,
    /// Time from receiving a mutation to its result, at this server.
    pub mutation_latency: crate::metrics::Histogram,
}
