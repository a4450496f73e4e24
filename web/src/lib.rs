//! asyncmachine in a browser: the machine core and the mirror's session, built for
//! `wasm32-unknown-unknown` and driven by a small JavaScript layer (`relay/web/am.js`) that owns
//! only the WebSocket and the event loop.
//!
//! - [`page`]: the machines and mirrors of a page, by handle, and the JSON commands the glue
//!   sends them; tasks for waits and mutations that resolve later.
//! - [`values`]: mutation arguments between JS values and [`Value`](asyncmachine::machine::Value).
//! - [`error`]: the errors commands answer with, by code.
//! - `abi` (wasm32 only): the exported functions and the imports from the glue: two byte
//!   buffers (an inbox the glue writes, an outbox it reads) and a call per kind of input.
//!
//! Everything but `abi` is plain Rust and tested natively (`cargo test -p am-web`); the glue and
//! the built module are tested in Node (`relay/web/test/`) and in Chromium (`tests/browser.rs`).

pub mod error;
pub mod page;
pub mod values;

#[cfg(target_arch = "wasm32")]
mod abi;
