//! Topology files: the nodes of a tree, their machines, schemas, listeners, upstreams and
//! settings, in TOML; parsed, validated and resolved into a [`Topology`] that `am-node run`
//! starts. Every error names the file and line and says what to do. topologies/README.md
//! documents the format.
//!
//! Owns parsing and validation only: starting nodes is `crate::node`'s job.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::machine::{Schema, SchemaDef, StateDef};
use crate::transport::{Endpoint, Scheme};

/// A problem in a topology file, located (line 0: the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}{}", location(file, *line), hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
pub struct TopologyError {
    pub file: String,
    pub line: usize,
    pub message: String,
    pub hint: Option<String>,
}

fn location(file: &str, line: usize) -> String {
    if line == 0 {
        format!("{file}: ")
    } else {
        format!("{file}:{line}: ")
    }
}

// ----- the file as written -----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    schemas: BTreeMap<String, Spanned<SchemaSpec>>,
    #[serde(default)]
    nodes: Vec<Spanned<NodeSpec>>,
    /// The relay in front of these nodes: read by am-relay (relay::config), not here.
    #[serde(default, rename = "relay")]
    _relay: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaSpec {
    #[serde(default)]
    states: Vec<StateDef>,
    /// A schema file (a `[[states]]` list), relative to the topology file.
    file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    name: Spanned<String>,
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    #[serde(default)]
    machines: Vec<Spanned<MachineSpec>>,
    /// Offer zstd to clients that ask (default true).
    compression: Option<bool>,
    /// At most one push per interval per client (default: push at once).
    push_interval_ms: Option<u64>,
    #[serde(default)]
    limits: LimitsSpec,
    tls: Option<Spanned<TlsSpec>>,
    acl: Option<AclSpec>,
    /// A plain HTTP listener for /metrics (Prometheus text) and /healthz, e.g. "127.0.0.1:9100".
    admin: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    max_clients: Option<usize>,
    max_frame: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    keepalive_ms: Option<u64>,
}

/// TLS material of a node's listeners and upstream connections.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// PEM certificate chain and private key of this node.
    pub cert: String,
    pub key: String,
    /// PEM CA to verify peers with.
    pub ca: Option<String>,
    /// Require client certificates (mutual TLS).
    #[serde(default)]
    pub client_auth: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclSpec {
    /// Clients must present this token.
    token: Option<String>,
    /// Only these client ids may connect.
    allow: Option<Vec<String>>,
    /// Per client id (`"*"` for the others): the only states it sees.
    #[serde(default)]
    see: BTreeMap<String, Vec<String>>,
    /// Per client id (`"*"` for the others): the only states it may mutate.
    #[serde(default)]
    mutate: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineSpec {
    name: Spanned<String>,
    /// A root machine's schema (a name under `[schemas]`); for a mirror, the schema it expects.
    schema: Option<Spanned<String>>,
    /// What a mirror mirrors: `node`, `node/machine`, or an endpoint `tcp://host:port/machine`.
    upstream: Option<Spanned<String>>,
    /// A mirror tracks only these states.
    track: Option<Vec<String>>,
    /// A mirror asks its upstream for compression (default true).
    compression: Option<bool>,
    /// The upstream's token, when it needs one.
    token: Option<String>,
    /// A root machine activates these states when its node starts.
    #[serde(default)]
    start: Vec<String>,
    driver: Option<Spanned<DriverSpec>>,
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
    pub compression: bool,
    pub push_interval: Option<Duration>,
    pub max_clients: Option<usize>,
    pub max_frame: Option<usize>,
    pub handshake_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub keepalive: Option<Duration>,
    pub tls: Option<TlsSpec>,
    pub token: Option<String>,
    pub allow: Option<Vec<String>>,
    /// Per client id (`"*"` for the others): the only states it sees / may mutate.
    pub see: BTreeMap<String, Vec<String>>,
    pub mutate: BTreeMap<String, Vec<String>>,
    /// Address of the admin listener (/metrics, /healthz), if any.
    pub admin: Option<String>,
}

/// One machine of a node.
#[derive(Debug, Clone)]
pub struct MachinePlan {
    pub name: String,
    pub schema: Arc<Schema>,
    pub kind: MachineKind,
    /// States a root machine activates at start.
    pub start: Vec<String>,
    pub driver: Option<DriverSpec>,
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
    let text = std::fs::read_to_string(path).map_err(|e| TopologyError {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read the topology file: {e}"),
        hint: Some("check the path; topology files live in topologies/".into()),
    })?;
    parse(path, &text)
}

/// Parses and validates topology text; `path` names it in errors and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Topology, TopologyError> {
    let cx = Cx {
        file: path.display().to_string(),
        text,
    };
    let spec: FileSpec = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| cx.line(&s));
        let hint = e
            .message()
            .contains("unknown field")
            .then(|| "remove or rename the key; topologies/README.md lists every key".to_owned());
        TopologyError {
            file: cx.file.clone(),
            line,
            message: e.message().trim().to_owned(),
            hint,
        }
    })?;
    resolve(&cx, path, spec)
}

struct Cx<'a> {
    file: String,
    text: &'a str,
}

impl Cx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn err(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> TopologyError {
        TopologyError {
            file: self.file.clone(),
            line: self.line(&span),
            message: message.into(),
            hint,
        }
    }
}

fn ms(v: Option<u64>) -> Option<Duration> {
    v.map(Duration::from_millis)
}

fn resolve(cx: &Cx<'_>, path: &Path, spec: FileSpec) -> Result<Topology, TopologyError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let mut schemas: HashMap<String, Arc<Schema>> = HashMap::new();
    for (name, schema) in &spec.schemas {
        let span = schema.span();
        let schema = schema.get_ref();
        let def = match (&schema.file, schema.states.is_empty()) {
            (Some(file), true) => {
                let full = base.join(file.get_ref());
                let text = std::fs::read_to_string(&full).map_err(|e| {
                    cx.err(
                        file.span(),
                        format!("cannot read schema file {}: {e}", full.display()),
                        None,
                    )
                })?;
                toml::from_str::<SchemaDef>(&text).map_err(|e| {
                    cx.err(
                        file.span(),
                        format!("schema file {}: {}", full.display(), e.message().trim()),
                        None,
                    )
                })?
            }
            (None, false) => SchemaDef {
                states: schema.states.clone(),
            },
            (Some(_), false) => {
                return Err(cx.err(
                    span,
                    format!("schema {name:?} has both `states` and `file`"),
                    Some("keep one of them".into()),
                ));
            }
            (None, true) => {
                return Err(cx.err(
                    span,
                    format!("schema {name:?} has no states"),
                    Some("list its states, or point `file` at a schema file".into()),
                ));
            }
        };
        let schema = Schema::new(def)
            .map_err(|e| cx.err(span.clone(), format!("schema {name:?}: {e}"), None))?;
        schemas.insert(name.clone(), Arc::new(schema));
    }

    if spec.nodes.is_empty() {
        return Err(cx.err(
            0..0,
            "the topology has no nodes",
            Some("add a [[nodes]] table".into()),
        ));
    }
    // Names and listeners first: upstreams refer to them.
    let mut nodes_by_name: HashMap<&str, &Spanned<NodeSpec>> = HashMap::new();
    let mut listeners: HashMap<&str, Vec<Endpoint>> = HashMap::new();
    let mut bound: HashMap<String, String> = HashMap::new();
    for node in &spec.nodes {
        let name = node.get_ref().name.get_ref().as_str();
        if name.is_empty() || name.contains('/') {
            return Err(cx.err(
                node.get_ref().name.span(),
                format!("invalid node name {name:?}"),
                Some("use letters, digits, `-` and `_`".into()),
            ));
        }
        if nodes_by_name.insert(name, node).is_some() {
            return Err(cx.err(
                node.get_ref().name.span(),
                format!("node {name:?} is defined twice"),
                Some("node names must be unique".into()),
            ));
        }
        let mut endpoints = Vec::new();
        for listen in &node.get_ref().listen {
            let endpoint: Endpoint = listen.get_ref().parse().map_err(|e| {
                cx.err(
                    listen.span(),
                    format!("listener {:?}: {e}", listen.get_ref()),
                    None,
                )
            })?;
            if endpoint.machine.is_some() {
                return Err(cx.err(
                    listen.span(),
                    format!("listener {:?} names a machine", listen.get_ref()),
                    Some(
                        "a listener serves all the node's machines: drop the /machine part".into(),
                    ),
                ));
            }
            if let Some(other) = bound.insert(endpoint.to_string(), name.to_owned()) {
                return Err(cx.err(
                    listen.span(),
                    format!("{endpoint} is also a listener of node {other:?}"),
                    Some("give each listener its own port".into()),
                ));
            }
            endpoints.push(endpoint);
        }
        listeners.insert(name, endpoints);
    }

    // Resolve each machine's upstream to (node, machine) or an outside endpoint.
    let machine_key = |node: &str, machine: &str| format!("{node}/{machine}");
    let mut specs: HashMap<String, (&str, &Spanned<MachineSpec>)> = HashMap::new();
    for node in &spec.nodes {
        let node_name = node.get_ref().name.get_ref().as_str();
        let mut seen = HashSet::new();
        for machine in &node.get_ref().machines {
            let m = machine.get_ref();
            let name = m.name.get_ref();
            if name.is_empty() || name.contains('/') {
                return Err(cx.err(
                    m.name.span(),
                    format!("invalid machine name {name:?}"),
                    Some("use letters, digits, `-` and `_`".into()),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(cx.err(
                    m.name.span(),
                    format!("node {node_name:?} has two machines named {name:?}"),
                    None,
                ));
            }
            match (&m.schema, &m.upstream) {
                (None, None) => {
                    return Err(cx.err(
                        machine.span(),
                        format!("machine {name:?} has neither `schema` nor `upstream`"),
                        Some("a root machine names its schema; a mirror names its upstream".into()),
                    ));
                }
                (Some(schema), _) if !schemas.contains_key(schema.get_ref()) => {
                    let known: Vec<&str> = schemas.keys().map(String::as_str).collect();
                    return Err(cx.err(
                        schema.span(),
                        format!("unknown schema {:?}", schema.get_ref()),
                        Some(format!("schemas in this file: {}", known.join(", "))),
                    ));
                }
                _ => {}
            }
            specs.insert(machine_key(node_name, name), (node_name, machine));
        }
        if node.get_ref().machines.is_empty() {
            return Err(cx.err(
                node.get_ref().name.span(),
                format!("node {node_name:?} runs no machines"),
                Some("add a [[nodes.machines]] table".into()),
            ));
        }
    }

    enum Up {
        Local(String),
        Outside(Endpoint),
    }
    let mut ups: HashMap<String, Up> = HashMap::new();
    for (key, (node_name, machine)) in &specs {
        let Some(upstream) = &machine.get_ref().upstream else {
            continue;
        };
        let text = upstream.get_ref();
        let up = if text.contains("://") {
            let endpoint: Endpoint = text
                .parse()
                .map_err(|e| cx.err(upstream.span(), format!("upstream {text:?}: {e}"), None))?;
            if machine.get_ref().schema.is_none() {
                return Err(cx.err(
                    upstream.span(),
                    format!("upstream {text:?} is outside this file, so its schema is unknown"),
                    Some("name the schema it serves with `schema = \"...\"`".into()),
                ));
            }
            Up::Outside(endpoint)
        } else {
            let (up_node, up_machine) = text
                .split_once('/')
                .unwrap_or((text.as_str(), machine.get_ref().name.get_ref().as_str()));
            if !nodes_by_name.contains_key(up_node) {
                let known: Vec<&str> = nodes_by_name.keys().copied().collect();
                return Err(cx.err(
                    upstream.span(),
                    format!("upstream node {up_node:?} is not in this file"),
                    Some(format!("nodes: {}", known.join(", "))),
                ));
            }
            let target = machine_key(up_node, up_machine);
            if !specs.contains_key(&target) {
                return Err(cx.err(
                    upstream.span(),
                    format!("node {up_node:?} has no machine {up_machine:?}"),
                    Some("write the upstream as node/machine".into()),
                ));
            }
            if target == *key {
                return Err(cx.err(
                    upstream.span(),
                    format!("machine {key} mirrors itself"),
                    None,
                ));
            }
            match listeners[up_node].first() {
                None => {
                    return Err(cx.err(
                        upstream.span(),
                        format!("upstream node {up_node:?} has no listener to connect to"),
                        Some(format!(
                            "add `listen = [\"tcp://127.0.0.1:PORT\"]` to node {up_node:?}"
                        )),
                    ));
                }
                Some(first) if first.scheme != Scheme::Mem && first.address.ends_with(":0") => {
                    return Err(cx.err(upstream.span(), format!("upstream node {up_node:?} listens on port 0, so its port is not known in advance"), Some(format!("give node {up_node:?} a fixed port"))));
                }
                Some(_) => {}
            }
            Up::Local(target)
        };
        let _ = node_name;
        ups.insert(key.clone(), up);
    }

    // Follow every chain to its root: finds each mirror's schema and any loop.
    let mut schema_of: HashMap<String, Arc<Schema>> = HashMap::new();
    for key in specs.keys() {
        let mut chain = vec![key.clone()];
        let mut at = key.clone();
        let schema = loop {
            let (_, machine) = &specs[&at];
            match ups.get(&at) {
                None | Some(Up::Outside(_)) => {
                    let name = machine
                        .get_ref()
                        .schema
                        .as_ref()
                        .map(|s| s.get_ref().clone())
                        .unwrap_or_default();
                    break schemas[&name].clone();
                }
                Some(Up::Local(next)) => {
                    if chain.contains(next) {
                        chain.push(next.clone());
                        let (_, first) = &specs[key];
                        let span = first
                            .get_ref()
                            .upstream
                            .as_ref()
                            .map_or(first.span(), |u| u.span());
                        return Err(cx.err(
                            span,
                            format!("upstream chain loops: {}", chain.join(" -> ")),
                            Some("a node never mirrors itself or one of its descendants".into()),
                        ));
                    }
                    chain.push(next.clone());
                    at = next.clone();
                }
            }
        };
        let (_, machine) = &specs[key];
        if let Some(expected) = &machine.get_ref().schema
            && schemas[expected.get_ref()].hash() != schema.hash()
        {
            return Err(cx.err(
                expected.span(),
                format!(
                    "machine {key} expects schema {:?}, but its upstream chain serves another",
                    expected.get_ref()
                ),
                Some("drop `schema` from the mirror or make it match the root's".into()),
            ));
        }
        schema_of.insert(key.clone(), schema);
    }

    let mut nodes = Vec::new();
    for node in &spec.nodes {
        let n = node.get_ref();
        let node_name = n.name.get_ref().clone();
        let mut machines = Vec::new();
        for machine in &n.machines {
            let m = machine.get_ref();
            let key = machine_key(&node_name, m.name.get_ref());
            let schema = schema_of[&key].clone();
            if let Some(driver) = &m.driver {
                let d = driver.get_ref();
                if d.every_ms == 0 {
                    return Err(cx.err(driver.span(), "driver every_ms must be above 0", None));
                }
                if let Some(bad) = d
                    .toggle
                    .iter()
                    .chain(&d.add)
                    .find(|s| schema.index(s).is_none())
                {
                    return Err(cx.err(
                        driver.span(),
                        format!("driver of {key} names unknown state {bad:?}"),
                        Some(format!(
                            "states: {}",
                            schema.names().collect::<Vec<_>>().join(", ")
                        )),
                    ));
                }
            }
            if let Some(bad) = m.start.iter().find(|s| schema.index(s).is_none()) {
                return Err(cx.err(
                    machine.span(),
                    format!("{key} starts unknown state {bad:?}"),
                    None,
                ));
            }
            if !m.start.is_empty() && m.upstream.is_some() {
                return Err(cx.err(
                    machine.span(),
                    format!("{key} is a mirror; `start` is for root machines"),
                    Some("set the states at the root".into()),
                ));
            }
            if let Some(bad) = m.track.iter().flatten().find(|s| schema.index(s).is_none()) {
                return Err(cx.err(
                    machine.span(),
                    format!("{key} tracks unknown state {bad:?}"),
                    None,
                ));
            }
            let kind = match ups.get(&key) {
                None => MachineKind::Root,
                Some(up) => {
                    let upstream = match up {
                        Up::Outside(endpoint) => endpoint.clone(),
                        Up::Local(target) => {
                            let (up_node, up_machine) =
                                target.split_once('/').unwrap_or((target, ""));
                            let first = &listeners[up_node][0];
                            connectable(first).with_machine(up_machine)
                        }
                    };
                    MachineKind::Mirror {
                        upstream,
                        track: m.track.clone(),
                        compression: m.compression.unwrap_or(true),
                        token: m.token.clone(),
                    }
                }
            };
            machines.push(MachinePlan {
                name: m.name.get_ref().clone(),
                schema,
                kind,
                start: m.start.clone(),
                driver: m.driver.as_ref().map(|d| d.get_ref().clone()),
            });
        }
        if let Some(tls) = &n.tls
            && (tls.get_ref().cert.is_empty() || tls.get_ref().key.is_empty())
        {
            return Err(cx.err(
                tls.span(),
                "tls needs both `cert` and `key`",
                Some("am-node certs DIR writes development certificates".into()),
            ));
        }
        let acl = n.acl.clone().unwrap_or_default();
        // ACL state names must exist in one of the node's machines.
        if let Some(bad) = acl
            .see
            .values()
            .chain(acl.mutate.values())
            .flatten()
            .find(|state| {
                !machines
                    .iter()
                    .any(|m: &MachinePlan| m.schema.index(state).is_some())
            })
        {
            return Err(cx.err(
                n.name.span(),
                format!("node {node_name:?}: acl names unknown state {bad:?}"),
                Some("acl see/mutate list states of the node's machines".into()),
            ));
        }
        nodes.push(NodePlan {
            name: node_name.clone(),
            listen: listeners[node_name.as_str()].clone(),
            machines,
            compression: n.compression.unwrap_or(true),
            push_interval: ms(n.push_interval_ms).filter(|d| !d.is_zero()),
            max_clients: n.limits.max_clients,
            max_frame: n.limits.max_frame,
            handshake_timeout: ms(n.limits.handshake_timeout_ms),
            idle_timeout: ms(n.limits.idle_timeout_ms),
            keepalive: ms(n.limits.keepalive_ms),
            // Certificate paths are relative to the topology file.
            tls: n.tls.as_ref().map(|t| {
                let t = t.get_ref();
                let at = |p: &str| base.join(p).to_string_lossy().into_owned();
                TlsSpec {
                    cert: at(&t.cert),
                    key: at(&t.key),
                    ca: t.ca.as_deref().map(at),
                    client_auth: t.client_auth,
                }
            }),
            token: acl.token,
            allow: acl.allow,
            see: acl.see,
            mutate: acl.mutate,
            admin: n.admin.as_ref().map(|a| a.get_ref().clone()),
        });
    }
    Ok(Topology {
        path: path.to_path_buf(),
        nodes,
    })
}

/// Where to connect to reach a listener: a wildcard bind address is reached on loopback.
fn connectable(listener: &Endpoint) -> Endpoint {
    let address = match listener.scheme {
        Scheme::Mem => listener.address.clone(),
        _ => listener
            .address
            .replacen("0.0.0.0:", "127.0.0.1:", 1)
            .replacen("[::]:", "[::1]:", 1),
    };
    Endpoint {
        address,
        ..listener.clone()
    }
}

#[cfg(test)]
mod tests;
