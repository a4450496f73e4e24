//! A server's limits ([`Limits`]): how many clients it takes, how long a handshake and a
//! silence may last, how often it pings, how large a frame may be, how often it pushes. The one
//! type a topology plans, the server runs with and its sessions read; every limit has the
//! default a person would expect.

use std::time::Duration;

use super::frame::DEFAULT_MAX_FRAME;

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
        }
    }
}
