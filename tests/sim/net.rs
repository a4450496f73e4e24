//! The simulated network: connections as two byte pipes with a latency each, the knobs that
//! shape new connections, and the seeded randomness that makes a run repeatable.
//!
//! Bytes are never split, merged or lost inside a connection: a pipe delivers what was sent,
//! in order. Faults act on whole connections (a break, a partition that swallows them) and on
//! the order in which different connections deliver.

use std::collections::VecDeque;
use std::time::Duration;

use asyncmachine::mirror::backoff::Jitter;
use asyncmachine::proto::session::{Moment, ServerSession};

/// The simulator's only source of randomness: the mirrors' own xorshift jitter generator,
/// seeded.
#[derive(Debug, Clone)]
pub struct Rng(Jitter);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Spread small seeds over the bits: nearby seeds would start alike.
        Rng(Jitter::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.draw()
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn percent(&mut self, percent: u32) -> bool {
        self.below(100) < u64::from(percent)
    }

    /// A duration in `lo..=hi`, in whole microseconds.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(self.below(span + 1))
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// What the network does to connections. Changing a knob affects connections made after.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// Each new connection's one-way latency is drawn from this range.
    pub latency: (Duration, Duration),
    /// Connections that deliver at the same moment do so in random order (bytes within one
    /// connection stay in order).
    pub reorder: bool,
    /// How often (in percent) a server catches a client up through its connection's writer
    /// rather than through the source's pusher: both entries must agree.
    pub writer_share: u32,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            latency: (Duration::from_millis(1), Duration::from_millis(1)),
            reorder: false,
            writer_share: 30,
        }
    }
}

/// Bytes on their way in one direction of a connection, each chunk with its arrival.
#[derive(Debug, Default)]
pub struct Pipe {
    chunks: VecDeque<(Moment, Vec<u8>)>,
    /// The arrival of the last chunk sent: a later chunk never overtakes it.
    last: Moment,
}

impl Pipe {
    pub fn send(&mut self, bytes: Vec<u8>, arrives: Moment) {
        let arrives = arrives.max(self.last);
        self.last = arrives;
        self.chunks.push_back((arrives, bytes));
    }

    /// When the next chunk arrives.
    pub fn due(&self) -> Option<Moment> {
        self.chunks.front().map(|(at, _)| *at)
    }

    /// The next chunk, if it has arrived by `now`.
    pub fn take_due(&mut self, now: Moment) -> Option<Vec<u8>> {
        if self.due()? > now {
            return None;
        }
        self.chunks.pop_front().map(|(_, bytes)| bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
    }
}

/// Where a source lives: its node and its place among the node's sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceAt {
    pub node: usize,
    pub source: usize,
}

/// One connection from a mirror to a server node, with the server's session for it.
#[derive(Debug)]
pub struct Link {
    /// The mirror that dialed.
    pub client: SourceAt,
    /// The node that answered.
    pub server: usize,
    /// The source the hello named, once it was welcomed.
    pub served: Option<usize>,
    pub session: ServerSession,
    /// Client to server.
    pub up: Pipe,
    /// Server to client.
    pub down: Pipe,
    pub latency: Duration,
    /// The server ended its session; its last words travel down, then the client hears the
    /// connection close.
    pub server_closed: bool,
    /// The client dropped the connection; what it sent before travels up, then the server
    /// hears the connection close.
    pub client_gone: bool,
}

impl Link {
    /// Whether nothing more happens on this connection: it can be forgotten.
    pub fn finished(&self) -> bool {
        (self.server_closed && self.down.is_empty()) || (self.client_gone && self.up.is_empty())
    }
}
