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
    /// The file's path as given (or the name passed to [`parse`]).
    pub file: String,
    /// The line (1-based) of the problem; 0 when it is about the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
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
    /// PEM private key of this node's certificate (unencrypted).
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
    /// The topology file's path.
    pub file: String,
    /// The node's `name`.
    pub node: usize,
    /// The node's `tls` table.
    pub tls: Option<usize>,
    /// The node's `admin` address.
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
    /// How often the driver mutates, in milliseconds.
    pub every_ms: u64,
    /// States flipped one per tick, round robin (added when inactive, removed when active).
    #[serde(default)]
    pub toggle: Vec<String>,
    /// States added every tick (multi states tick each time).
    #[serde(default)]
    pub add: Vec<String>,
}

// ----- the resolved topology -----

/// A validated topology, ready to start: made by [`load`] from a file or [`parse`] from text
/// (see [`parse`] for an example), started by [`crate::node::start_topology`].
#[derive(Debug, Clone)]
pub struct Topology {
    /// The topology file's path; relative paths in it (schemas, TLS, state) are resolved
    /// against its directory.
    pub path: PathBuf,
    /// The nodes, in file order (a node's upstreams come from nodes of the same file).
    pub nodes: Vec<NodePlan>,
}

impl Topology {
    /// The plan of a node by name (what `am-node run --node NAME` starts).
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// One node: what it runs and how it serves it.
#[derive(Debug, Clone)]
pub struct NodePlan {
    /// The node's name; also its client id in handshakes (loop detection).
    pub name: String,
    /// Where it serves all its machines (`tcp://`, `tls://`, `quic://`, `ws://`, `wss://`,
    /// `mem://`).
    pub listen: Vec<Endpoint>,
    /// Its machines, in file order.
    pub machines: Vec<MachinePlan>,
    /// The nodes of the file that mirror one of its machines (sorted): the server pushes to
    /// them before its other clients, so a change goes down the tree first.
    pub downstream: Vec<String>,
    /// Offer compression to clients that ask.
    pub compression: bool,
    /// The file's `limits` and `push_interval_ms` over the defaults.
    pub limits: Limits,
    /// TLS material for TLS listeners and upstreams; `None` when the node uses none.
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
    /// The name it is served under; mirrors in other nodes name it in their endpoint.
    pub name: String,
    /// Its schema: the file's for a root, the upstream's for a mirror.
    pub schema: Arc<Schema>,
    /// A root of its own, or a mirror of an upstream.
    pub kind: MachineKind,
    /// States a root machine activates at start (when it has no saved state to restore).
    pub start: Vec<String>,
    /// Mutations it makes on a schedule, if any (roots only).
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

/// Whether a machine of a node is its own source or a replica of another's.
#[derive(Debug, Clone, PartialEq)]
pub enum MachineKind {
    /// A source of its own.
    Root,
    /// A replica of another node's machine.
    Mirror {
        /// The endpoint of the machine it mirrors.
        upstream: Endpoint,
        /// Only these states are tracked; `None`: all.
        track: Option<Vec<String>>,
        /// Ask the upstream for compression.
        compression: bool,
        /// The upstream's token, if it requires one.
        token: Option<String>,
        /// How its mutations outlive a broken link (`retry_deadline_ms`, `retry_max_waiting`).
        retry: crate::proto::session::RetryPolicy,
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
/// Nothing is bound or read here but the schema files it names; a node that others mirror
/// needs a fixed port (they must know where to connect), the others may listen on port 0.
///
/// ```
/// use std::path::Path;
///
/// use asyncmachine::topology::{self, MachineKind};
///
/// let text = r#"
/// [schemas.demo]
/// states = [
///   { name = "Start" },
///   { name = "Flag", require = ["Start"] },
/// ]
///
/// [[nodes]]
/// name = "root"
/// listen = ["tcp://127.0.0.1:7400"]
/// machines = [{ name = "demo", schema = "demo", start = ["Start"] }]
///
/// [[nodes]]
/// name = "leaf"
/// listen = ["tcp://127.0.0.1:0"]
/// machines = [{ name = "demo", upstream = "root" }]
/// "#;
/// let plan = topology::parse(Path::new("inline.toml"), text)?;
/// let leaf = plan.node("leaf").expect("the file names it");
/// assert!(matches!(leaf.machines[0].kind, MachineKind::Mirror { .. }));
/// assert_eq!(leaf.machines[0].schema.index("Flag"), Some(1));
///
/// // Errors name the file and line, and say what to do.
/// let err = topology::parse(Path::new("bad.toml"), "[[nodes]]\nname = \"x\"\nlisten = 7\n")
///     .unwrap_err();
/// assert_eq!((err.file.as_str(), err.line), ("bad.toml", 3));
/// # Ok::<(), topology::TopologyError>(())
/// ```
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
