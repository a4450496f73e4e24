//! Sources and servers driven from outside Rust: an event loop that is not a Rust runtime
//! (a browser's, in `web/`) owns the socket and the timers, and hands bytes and time in.
//!
//! - [`DrivenMirror`]: a mirror as a [`StateSource`](crate::machine::StateSource) around a
//!   [`ClientSession`](crate::proto::session::ClientSession): reads and waits answered from
//!   its clock, mutations sent to the source, the session's events turned into waiter wake-ups,
//!   observer calls and answers to callers.
//! - [`DrivenServer`]: a served source, one
//!   [`ServerSession`](crate::proto::session::ServerSession) per connection the loop drives: a
//!   page that hosts a machine nodes mirror (the relay's listen route).
//!
//! Nothing here reads a socket or a clock or spawns: every input is a call with the time, and
//! what must be sent is taken with `take_transmit`. The futures these types hand out use plain
//! `std::task` wakers, so any executor (or the web crate's few lines of one) polls them.

mod mirror;
mod server;

pub use mirror::{DrivenMirror, MirrorEvent};
pub use server::{DrivenServer, ServerDrive};

#[cfg(test)]
mod tests;
