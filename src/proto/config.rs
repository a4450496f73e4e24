//! A server's limits ([`Limits`]): how many clients it takes, how long a handshake and a
//! silence may last, how often it pings, how large a frame may be, how often it pushes, how
//! many remote waits a client may have pending. The one type a topology plans, the server runs
//! with and its sessions read; every limit has the default a person would expect.

use std::time::Duration;

use super::frame::DEFAULT_MAX_FRAME;

/// Default of [`Limits::max_remote_waits`]: a wait costs the server a waiter on its source
/// and a task, so ten thousand clients at the limit are ten million waiters at most.
pub const DEFAULT_MAX_REMOTE_WAITS: usize = 1024;

/// The bounds a server keeps to, for every client alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most clients at once over all listeners; more are refused with a reason.
    pub max_clients: usize,
    /// Transport and protocol handshake must finish within this.
    pub handshake_timeout: Duration,
    /// A client that sends nothing (not even a pong) for this long is dropped.
    pub idle_timeout: Duration,
    /// How often the server pings a client.
    pub keepalive: Duration,
    /// Largest frame taken from or sent to a client, in bytes.
    pub max_frame: usize,
    /// Fewer, larger diffs: at most one push per interval per client.
    pub min_push_interval: Option<Duration>,
    /// Most remote waits (`WhenArgs`) one client may have pending; more are refused with a
    /// reason, and a client that goes on asking as many times again is disconnected.
    pub max_remote_waits: usize,
    /// Keyed mutations each source keeps the result of, so a retry of one is answered from
    /// the record instead of running again (PROTOCOL.md, "Retries and exactly once").
    pub dedup_window: usize,
    /// How long a recorded result is kept at least (unless the window is full).
    pub dedup_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: 10_000,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(10),
            max_frame: DEFAULT_MAX_FRAME,
            min_push_interval: None,
            max_remote_waits: DEFAULT_MAX_REMOTE_WAITS,
            dedup_window: crate::proto::dedup::DEFAULT_DEDUP_WINDOW,
            dedup_ttl: crate::proto::dedup::DEFAULT_DEDUP_TTL,
        }
    }
}
