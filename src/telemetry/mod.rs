//! Telemetry: machines anywhere in a tree (roots, mirrors at any depth) stream what they do to
//! a collector (`am-node dbg`), which keeps the history and serves a web console.
//!
//! - `record`: the record (one JSON line), built from a tracer's view of a transition, with
//!   the redaction rule for arguments and the bounds a collector checks; no I/O;
//! - `history`: the collector's history and the questions asked of it (filters, every
//!   machine's clock at an entry, stepping, the hops of a forwarded mutation, export and
//!   import as lines); no I/O;
//! - `reorder`: records of different nodes put back in the order they happened (held for a
//!   short window, sorted by the sender's time); no I/O;
//! - `tap`: the tracer bound to each machine (a bounded buffer, drops counted) and the record
//!   lines made from what the buffers hold; time passed in, no I/O (a page uses it too);
//! - `sender` (`net`): the node's task that writes its machines' lines to the collector;
//! - `collector` (`net`): the listener for senders, the dump files and the console (an HTTP
//!   page and a WebSocket).
//!
//! TELEMETRY.md documents the record, the dump format and the console.

#[cfg(feature = "net")]
pub mod collector;
pub mod history;
pub mod record;
pub mod reorder;
#[cfg(feature = "net")]
pub mod sender;
pub mod tap;

pub use history::{Entry, Filter, History, MachineView};
pub use record::{MachineRef, Record, Redaction};
#[cfg(feature = "net")]
pub use sender::{Telemetry, TelemetryConfig, TelemetryError};
