//! Topology files: the nodes of a tree, their machines, schemas, listeners, upstreams and
//! settings, in TOML; parsed, validated and resolved into a [`Topology`] that `am-node run`
//! starts. Every error names the file and line and says what to do. topologies/README.md
//! documents the format.
//!
//! Owns parsing and validation only: starting nodes is `crate::node`'s job. The file as
//! written is `spec`; `resolve` checks it pass by pass, with `schemas` building the schemas,
//! `upstreams` connecting mirrors and detecting loops, and `plan` making each node's plan;
//! `ports` decides which addresses collide. `toml_file` reads a TOML file and locates its
//! errors, for topology files and the relay's configuration alike.

mod plan;
mod ports;
mod resolve;
mod schemas;
mod spec;
pub(crate) mod toml_file;
mod upstreams;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::machine::Schema;
use crate::proto::acl::Acl;
use crate::proto::config::Limits;
use crate::transport::Endpoint;

use toml_file::TomlFile;

/// A problem in a topology file, located (line 0: the file as a whole), with what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}\n  hint: {hint}", location(file, *line))]
pub struct TopologyError {
    pub file: String,
    pub line: usize,
    pub message: String,
    pub hint: String,
}

fn location(file: &str, line: usize) -> String {
    if line == 0 {
        format!("{file}: ")
    } else {
        format!("{file}:{line}: ")
    }
}

/// TLS material of a node's listeners and upstream connections (paths relative to the
/// topology file's directory once resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// PEM certificate chain and private key of this node: needed to listen, and presented
    /// upstream (mutual TLS). A node that only connects may leave them out.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// PEM CA to verify peers with.
    pub ca: Option<String>,
    /// Require client certificates (mutual TLS).
    pub client_auth: bool,
}

/// Where a node's settings are written, for errors only starting it can find (a file that is
/// missing on this host, an address that is taken).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLines {
    pub file: String,
    /// The node's `name`.
    pub node: usize,
    pub tls: Option<usize>,
    pub admin: Option<usize>,
    /// Each listener's line, in `NodePlan::listen` order.
    pub listen: Vec<usize>,
}

impl NodeLines {
    /// `file:line` of a setting (the node's line when the setting has none).
    pub fn at(&self, line: Option<usize>) -> String {
        format!("{}:{}", self.file, line.unwrap_or(self.node))
    }
}

/// Mutations a machine makes on its own, for demos and load.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverSpec {
    pub every_ms: u64,
    /// States flipped one per tick, round robin (added when inactive, removed when active).
    #[serde(default)]
    pub toggle: Vec<String>,
    /// States added every tick (multi states tick each time).
    #[serde(default)]
    pub add: Vec<String>,
}

// ----- the resolved topology -----

/// A validated topology, ready to start.
#[derive(Debug, Clone)]
pub struct Topology {
    pub path: PathBuf,
    pub nodes: Vec<NodePlan>,
}

impl Topology {
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// One node: what it runs and how it serves it.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub name: String,
    pub listen: Vec<Endpoint>,
    pub machines: Vec<MachinePlan>,
    /// Offer compression to clients that ask.
    pub compression: bool,
    /// The file's `limits` and `push_interval_ms` over the defaults.
    pub limits: Limits,
    pub tls: Option<TlsSpec>,
    /// Who is let in, what each client sees and may mutate (the file's `acl`).
    pub acl: Acl,
    /// Address of the admin listener (/metrics, /healthz), if any.
    pub admin: Option<String>,
    /// The collector the node sends telemetry to (`debug`; else `AM_DEBUG`), if any.
    pub debug: Option<String>,
    /// Where the node is written, for errors found when it starts.
    pub lines: NodeLines,
}

/// One machine of a node.
#[derive(Debug, Clone)]
pub struct MachinePlan {
    pub name: String,
    pub schema: Arc<Schema>,
    pub kind: MachineKind,
    /// States a root machine activates at start (when it has no saved state to restore).
    pub start: Vec<String>,
    pub driver: Option<DriverSpec>,
    /// Where a durable root machine keeps its state; `None`: it starts from zero each time.
    pub state: Option<StatePlan>,
}

/// Where a durable root machine keeps its state (`crate::durable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePlan {
    /// `STATE_DIR/MACHINE.json`, the directory relative to the topology file.
    pub file: PathBuf,
    /// `file:line` of the `state_dir` that made it durable, for errors found when it starts.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MachineKind {
    /// A source of its own.
    Root,
    /// A replica of another node's machine.
    Mirror {
        upstream: Endpoint,
        track: Option<Vec<String>>,
        compression: bool,
        token: Option<String>,
    },
}

// ----- loading -----

/// Reads, parses and validates a topology file.
pub fn load(path: &Path) -> Result<Topology, TopologyError> {
    let source = TomlFile::read(path).map_err(|e| TopologyError {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read the topology file: {e}"),
        hint: "check the path; topology files live in topologies/".into(),
    })?;
    resolve_file(path, source)
}

/// Parses and validates topology text; `path` names it in errors and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Topology, TopologyError> {
    resolve_file(path, TomlFile::new(path.display().to_string(), text))
}

fn resolve_file(path: &Path, source: TomlFile<'_>) -> Result<Topology, TopologyError> {
    let cx = Cx { source };
    let spec: spec::FileSpec = cx.toml()?;
    resolve::resolve(&cx, path, spec)
}

/// One file being read, to locate its errors.
struct Cx<'a> {
    source: TomlFile<'a>,
}

impl Cx<'_> {
    fn file(&self) -> &str {
        self.source.name()
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.source.position(span.start).line
    }

    fn err(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> TopologyError {
        TopologyError {
            file: self.file().to_owned(),
            line: self.line(&span),
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// Deserializes this file's text, with TOML's own errors located and given a hint.
    fn toml<T: serde::de::DeserializeOwned>(&self) -> Result<T, TopologyError> {
        self.source.parse().map_err(|e| TopologyError {
            file: e.file,
            line: e.at.map_or(0, |at| at.line),
            hint: toml_hint(&e.message).to_owned(),
            message: e.message,
        })
    }
}

/// What to do about an error TOML itself found.
fn toml_hint(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove or rename the key; topologies/README.md lists every key"
    } else if message.contains("missing field") {
        "add the key; topologies/README.md says what each table needs"
    } else if message.contains("duplicate key") {
        "write each key once per table"
    } else if message.contains("invalid type") || message.contains("invalid value") {
        "give the key a value of the type topologies/README.md lists: strings in quotes, \
         numbers and true/false bare, lists in [ ]"
    } else {
        "this is not valid TOML here: check quotes, brackets, commas and `=` on this line"
    }
}

#[cfg(test)]
mod tests;
