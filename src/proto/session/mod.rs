//! The protocol's sessions, sans-IO: every decision of a connection, with bytes and time
//! passed in and bytes and events taken out.
//!
//! - [`ServerSession`]: one client of a server: its handshake, the catch-up that brings it
//!   to the source's latest clock, the ACL on its mutations, its remote waits and last-error
//!   requests, resyncs, keepalive and idle rules.
//! - [`ClientSession`]: a mirror's side: its hello, the replica clock it keeps across
//!   connections, diffs and checksums, request ids, remote waits kept across connections,
//!   keepalive and idle rules.
//! - [`Versioned`] and [`DiffCache`]: a source's clock as numbered versions, and the diff
//!   frames encoded once for every client with the same options.
//! - [`Moment`]: the time sessions are given (drivers measure it; simulators step it).
//!
//! Sessions never read a socket, a runtime or the system clock: `src/server` and `src/mirror`
//! pump them over transports, and `tests/sim` wires them together in memory. Their methods
//! follow quinn's kinds: getters, `handle_*` inputs, mutators, `poll_*` outputs.

mod cache;
pub mod client;
mod requests;
pub mod server;
mod time;

pub use cache::{DiffCache, Versioned};
pub use client::{
    ClientConfig, ClientEvent, ClientSession, HandshakeError, Phase, RetryPolicy, RetryStats,
};
pub use requests::MAX_IN_FLIGHT;
pub use server::{
    Backlogged, CatchUp, ClockFeed, CloseReason, NoSource, ServerEvent, ServerSession,
    ServerSessionConfig, ServerStats, server_full,
};
pub use time::Moment;

#[cfg(test)]
mod tests;
