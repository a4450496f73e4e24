//! From the file as written to a [`Topology`], one named pass at a time: schemas (`schemas`),
//! nodes and their listeners, machines (here), upstreams and loop detection (`upstreams`), then
//! each node's plan (`plan`). Each pass takes what the passes before it found, and refuses what
//! cannot work with the line it is written on and a hint.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use crate::machine::Schema;
use crate::transport::Endpoint;

use super::plan::plans;
use super::ports::{Bind, Protocol};
use super::schemas::schemas;
use super::spec::{FileSpec, MachineSpec, NodeSpec};
use super::upstreams::{loop_detection, upstreams};
use super::{Cx, Topology, TopologyError};

const NAME_HINT: &str = "use letters, digits, `-` and `_`";

/// Resolves a file's spec, pass by pass; relative paths are relative to `path`'s directory.
pub(super) fn resolve(cx: &Cx<'_>, path: &Path, spec: FileSpec) -> Result<Topology, TopologyError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let schemas = schemas(cx, base, &spec.schemas)?;
    let nodes = nodes_and_listeners(cx, &spec.nodes)?;
    let machines = machines(cx, &spec.nodes, &schemas)?;
    let upstreams = upstreams(cx, &nodes, &machines)?;
    let schema_of = loop_detection(cx, &schemas, &machines, &upstreams)?;
    let plans = plans(cx, base, &spec.nodes, &nodes, &schema_of, &upstreams)?;
    Ok(Topology {
        path: path.to_path_buf(),
        nodes: plans,
    })
}

/// Each node's listeners, by node name.
pub(super) struct Nodes<'a> {
    pub(super) listeners: HashMap<&'a str, Vec<Endpoint>>,
}

/// One address something binds, for collision checks.
struct Bound<'a> {
    bind: Bind,
    what: String,
    node: &'a str,
    line: usize,
}

/// Nodes and listeners: the file has nodes, each named once and validly, each listener an
/// endpoint with a port of its own (admin addresses included).
fn nodes_and_listeners<'a>(
    cx: &Cx<'_>,
    nodes: &'a [Spanned<NodeSpec>],
) -> Result<Nodes<'a>, TopologyError> {
    if nodes.is_empty() {
        return Err(cx.err(0..0, "the topology has no nodes", "add a [[nodes]] table"));
    }
    let mut listeners: HashMap<&str, Vec<Endpoint>> = HashMap::new();
    let mut bound: Vec<Bound<'a>> = Vec::new();
    for node in nodes {
        let n = node.get_ref();
        let name = n.name.get_ref().as_str();
        if name.is_empty() || name.contains('/') {
            return Err(cx.err(
                n.name.span(),
                format!("invalid node name {name:?}"),
                NAME_HINT,
            ));
        }
        if listeners.contains_key(name) {
            return Err(cx.err(
                n.name.span(),
                format!("node {name:?} is defined twice"),
                "node names must be unique",
            ));
        }
        let mut endpoints = Vec::new();
        for listen in &n.listen {
            let text = listen.get_ref();
            let endpoint: Endpoint = text.parse().map_err(|e| {
                cx.err(
                    listen.span(),
                    format!("listener {text:?}: {e}"),
                    "write a listener as scheme://host:port, e.g. tcp://127.0.0.1:7400",
                )
            })?;
            if endpoint.machine.is_some() || endpoint.upgrade_token.is_some() {
                return Err(cx.err(
                    listen.span(),
                    format!("listener {text:?} names a machine or a token"),
                    "a listener serves all the node's machines: drop the /machine part (tokens go in `acl`)",
                ));
            }
            if let Some(bind) = Bind::of_endpoint(&endpoint) {
                claim(cx, &mut bound, bind, text.clone(), name, listen.span())?;
            }
            endpoints.push(endpoint);
        }
        if let Some(admin) = &n.admin {
            let text = admin.get_ref();
            let bind = Bind::parse(Protocol::Tcp, text).ok_or_else(|| {
                cx.err(
                    admin.span(),
                    format!("admin address {text:?} is not host:port"),
                    "write it as an address to bind, e.g. admin = \"127.0.0.1:9100\" (no scheme)",
                )
            })?;
            claim(
                cx,
                &mut bound,
                bind,
                format!("admin {text}"),
                name,
                admin.span(),
            )?;
        }
        listeners.insert(name, endpoints);
    }
    Ok(Nodes { listeners })
}

/// Records an address, or refuses it when it collides with one recorded before.
fn claim<'a>(
    cx: &Cx<'_>,
    bound: &mut Vec<Bound<'a>>,
    bind: Bind,
    what: String,
    node: &'a str,
    span: std::ops::Range<usize>,
) -> Result<(), TopologyError> {
    if let Some(other) = bound.iter().find(|b| b.bind.collides(&bind)) {
        return Err(cx.err(
            span,
            format!(
                "{what} takes the same port as {} of node {:?} (line {})",
                other.what, other.node, other.line
            ),
            "give each listener and admin address its own port (`localhost` is 127.0.0.1, and \
             0.0.0.0 takes the port on every address)",
        ));
    }
    bound.push(Bound {
        bind,
        what,
        node,
        line: cx.line(&span),
    });
    Ok(())
}

// ----- machines -----

/// Every machine of the file, by `node/machine`, with its node's name.
pub(super) type Machines<'a> = HashMap<String, (&'a str, &'a Spanned<MachineSpec>)>;

pub(super) fn machine_key(node: &str, machine: &str) -> String {
    format!("{node}/{machine}")
}

/// Machines: every node runs some, each named once in its node, each a root with a schema of
/// this file or a mirror with an upstream.
fn machines<'a>(
    cx: &Cx<'_>,
    nodes: &'a [Spanned<NodeSpec>],
    schemas: &HashMap<String, Arc<Schema>>,
) -> Result<Machines<'a>, TopologyError> {
    let mut all = HashMap::new();
    for node in nodes {
        let node_name = node.get_ref().name.get_ref().as_str();
        if node.get_ref().machines.is_empty() {
            return Err(cx.err(
                node.get_ref().name.span(),
                format!("node {node_name:?} runs no machines"),
                "add a [[nodes.machines]] table",
            ));
        }
        let mut seen = HashSet::new();
        for machine in &node.get_ref().machines {
            let m = machine.get_ref();
            let name = m.name.get_ref();
            if name.is_empty() || name.contains('/') {
                return Err(cx.err(
                    m.name.span(),
                    format!("invalid machine name {name:?}"),
                    NAME_HINT,
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(cx.err(
                    m.name.span(),
                    format!("node {node_name:?} has two machines named {name:?}"),
                    "machine names are unique within a node: rename one",
                ));
            }
            match (&m.schema, &m.upstream) {
                (None, None) => {
                    return Err(cx.err(
                        machine.span(),
                        format!("machine {name:?} has neither `schema` nor `upstream`"),
                        "a root machine names its schema; a mirror names its upstream",
                    ));
                }
                (Some(schema), _) if !schemas.contains_key(schema.get_ref()) => {
                    let mut known: Vec<&str> = schemas.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err(cx.err(
                        schema.span(),
                        format!("unknown schema {:?}", schema.get_ref()),
                        format!("schemas in this file: {}", known.join(", ")),
                    ));
                }
                _ => {}
            }
            all.insert(machine_key(node_name, name), (node_name, machine));
        }
    }
    Ok(all)
}
