//! asyncmachine: state machines replicated across processes and hosts.
//!
//! Layout (ARCHITECTURE.md walks through it):
//! - [`machine`]: the state machine core (schema, clock, relations, handlers, queue, waiters,
//!   observers) and [`machine::StateSource`], the trait local machines and mirrors share.
//!   Pure logic, no I/O.
//! - [`proto`]: the aRPC wire protocol, sans-IO: frames, messages and their bounds, clock
//!   diffs, the handshake, the ACL, a server's limits, and [`proto::session`], the server's
//!   and the mirror's sessions that hold every decision of a connection (PROTOCOL.md
//!   documents the bytes).
//! - [`transport`]: byte streams by endpoint scheme (`tcp://`, `tls://`, `quic://`, `ws://`,
//!   `wss://`, and `mem://` in one process), one listener trait.
//! - [`server`]: serves named sources to any number of mirrors: a driver that pumps one
//!   session per client, and pushes each clock change to many clients at once.
//! - [`mirror`]: a replica of a remote source, itself a `StateSource`: a driver that pumps
//!   its session and reconnects.
//! - [`topology`], [`node`]: topology files (parsing, validation, resolution) and starting a
//!   node from its plan.
//! - [`durable`]: a machine whose state is saved to a file on every change and restored at
//!   start; a mutation through it is acknowledged once its state is on disk.
//! - [`relay`]: the WebSocket bridge that lets browsers into a tree.
//! - [`driven`]: a mirror whose connection an outside event loop drives (a browser's, through
//!   `web/`): bytes and time in, bytes out, a `StateSource` like the others.
//! - [`certs`]: development certificates; [`client`]: the one-shot status request;
//!   [`metrics`]: Prometheus text and latency histograms; [`printable`]: peer text made safe
//!   to print.
//!
//! Features: `net` (default) brings everything from [`transport`] down in this list, which
//! needs sockets, a runtime or files. Without it the library is [`machine`], [`proto`] (with
//! the sessions) and [`metrics`]' histogram: what the WebAssembly build (`web/`) is made of.
//!
//! The benchmark scenarios, the sgp worker and the fault-injecting proxy are not part of this
//! library: they live in the `am-node` crate (`node/`).
//!
//! ```
//! use asyncmachine::prelude::*;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let schema = Schema::builder()
//!     .state(StateDef::new("Start"))
//!     .state(StateDef::new("Event").multi().require(["Start"]))
//!     .state(StateDef::new("Value1").remove(["Value2"]))
//!     .state(StateDef::new("Value2").remove(["Value1"]))
//!     .build()?;
//! let m = Machine::new(schema);
//! m.on_state("Event", |e| {
//!     // Mutations from handlers are queued and run right after this transition.
//!     e.machine().add(&["Value2"], Args::new()).map(drop)
//! })?;
//! m.add(&["Start", "Event"], Args::new().with("n", 1))?;
//! assert!(m.is(&["Start", "Value2"]));
//! m.when(&["Value2"]).await?; // waiters are futures; any executor
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
//! ```

#![warn(missing_docs)]

pub mod driven;
pub mod machine;
pub mod metrics;
pub mod printable;
pub mod proto;
mod replica;
pub mod telemetry;

#[cfg(feature = "net")]
pub mod certs;
#[cfg(feature = "net")]
pub mod client;
#[cfg(feature = "net")]
pub mod durable;
#[cfg(feature = "net")]
mod http;
#[cfg(feature = "net")]
pub mod mirror;
#[cfg(feature = "net")]
pub mod node;
#[cfg(feature = "net")]
pub mod relay;
#[cfg(feature = "net")]
pub mod server;
#[cfg(feature = "net")]
pub mod topology;
#[cfg(feature = "net")]
pub mod transport;
#[cfg(feature = "net")]
mod wire;

/// The names most programs need: `use asyncmachine::prelude::*;`.
pub mod prelude {
    pub use crate::machine::{
        Args, Event, FinalHandlers, Machine, MutationKind, Outcome, Schema, StateDef, StateSource,
        Value,
    };
}
