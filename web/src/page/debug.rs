//! The page's telemetry: its machines and mirrors stream what they do to a collector
//! (`am-node dbg`), as a node's do. The tracers and record lines are the library's
//! (`telemetry::tap`); the glue takes the lines every few milliseconds and writes them to a
//! WebSocket that the relay bridges to the collector's TCP port.
//!
//! Commands: `debug` (start, with the page's node name, buffer size and redaction words),
//! `debugAttach` (a machine or mirror, by handle, under a name), `debugTake` (the lines ready,
//! every machine's record first when `hello`: a new connection; the page's status, its
//! mirrors' links, after them when `status`), `debugStop`.

use std::sync::Arc;

use asyncmachine::machine::StateSource;
use asyncmachine::telemetry::record::StatusRecord;
use asyncmachine::telemetry::tap::{Clock, Tapped, Taps, push_line, tap};
use asyncmachine::telemetry::{MachineRef, Record, Redaction};
use serde_json::{Value as Json, json};

use super::string;
use crate::error::WebError;

/// Records a machine's buffer holds unless the page says otherwise.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The most a page may ask a buffer to hold.
const MAX_CAPACITY: usize = 65_536;
/// Records a take returns unless the page says otherwise, and the most it may ask.
const DEFAULT_TAKE: usize = 200;
const MAX_TAKE: usize = 5_000;
/// The longest node name a page may give (the collector's bound on text).
const MAX_NODE: usize = 256;

/// A page's telemetry, once started.
pub(super) struct PageTelemetry {
    node: String,
    capacity: usize,
    clock: Clock,
    taps: Taps,
    tapped: Vec<Tapped>,
    /// Machine records of machines attached since the last take.
    pending: String,
}

impl std::fmt::Debug for PageTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTelemetry")
            .field("node", &self.node)
            .field("machines", &self.tapped.len())
            .finish()
    }
}

fn count(command: &Json, name: &str, default: usize, max: usize) -> Result<usize, WebError> {
    match command.get(name) {
        None | Some(Json::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|&n| n >= 1 && n <= max as u64)
            .map(|n| n as usize)
            .ok_or_else(|| {
                WebError::bad_request(format!("\"{name}\" must be a whole number from 1 to {max}"))
            }),
    }
}

impl PageTelemetry {
    /// From a `debug` command: `node` (default "page"), `capacity`, `redact` (comma-separated
    /// words; the library's default list without it).
    pub fn start(command: &Json, clock: Clock) -> Result<PageTelemetry, WebError> {
        let node = match command.get("node") {
            None | Some(Json::Null) => "page".to_owned(),
            Some(_) => string(command, "node")?.to_owned(),
        };
        if node.is_empty() || node.len() > MAX_NODE || node.chars().any(char::is_control) {
            return Err(WebError::bad_request(format!(
                "\"node\" must be 1 to {MAX_NODE} bytes of printable text"
            )));
        }
        let redaction = match command.get("redact") {
            None | Some(Json::Null) => Redaction::default(),
            Some(_) => Redaction::from_list(string(command, "redact")?),
        };
        Ok(PageTelemetry {
            node,
            capacity: count(command, "capacity", DEFAULT_CAPACITY, MAX_CAPACITY)?,
            taps: Taps::new(redaction, clock.clone()),
            clock,
            tapped: Vec::new(),
            pending: String::new(),
        })
    }

    /// Traces `source` under `name`; its machine record goes with the next take.
    pub fn attach(&mut self, name: &str, source: Arc<dyn StateSource>) -> Result<(), WebError> {
        if name.is_empty() || name.len() > MAX_NODE {
            return Err(WebError::bad_request(format!(
                "\"name\" must be 1 to {MAX_NODE} bytes"
            )));
        }
        let at = MachineRef {
            node: self.node.clone(),
            machine: name.to_owned(),
        };
        let (tap, tapped) = tap(at, source, self.capacity, self.clock.clone());
        self.taps.add(tap, &mut self.pending);
        self.tapped.push(tapped);
        Ok(())
    }

    /// The lines ready, from a `debugTake` command (`max`, `hello`, `status`), with the drops
    /// so far.
    pub fn take(&mut self, command: &Json) -> Result<Json, WebError> {
        let max = count(command, "max", DEFAULT_TAKE, MAX_TAKE)?;
        let mut lines = String::new();
        if command.get("hello").and_then(Json::as_bool) == Some(true) {
            self.pending.clear();
            self.taps.hello(&mut lines);
        } else {
            lines = std::mem::take(&mut self.pending);
        }
        let records = self.taps.drain(max, &mut lines);
        if command.get("status").and_then(Json::as_bool) == Some(true) {
            let status = Record::Status(StatusRecord {
                node: self.node.clone(),
                time_ms: (self.clock)() / 1000,
                listen: Vec::new(),
                status: self.taps.status(&self.node),
            });
            push_line(&mut lines, &status);
        }
        let dropped: u64 = self.tapped.iter().map(Tapped::dropped).sum();
        Ok(json!({ "lines": lines, "records": records, "dropped": dropped }))
    }

    /// Unbinds every tracer.
    pub fn stop(&mut self) {
        for tapped in self.tapped.drain(..) {
            tapped.detach();
        }
    }
}

impl Drop for PageTelemetry {
    fn drop(&mut self) {
        self.stop();
    }
}
