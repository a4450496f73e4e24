//! From the file as written to a [`Topology`], one named step at a time: schemas
//! (`schemas`), nodes and their listeners, machines, upstreams and upstream chains (here), then
//! each node's plan (`plan`). Each step refuses what cannot work with the line it is written
//! on and a hint.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use crate::machine::Schema;
use crate::transport::{Endpoint, Scheme};

use super::ports::{Bind, Protocol};
use super::spec::{FileSpec, MachineSpec, NodeSpec};
use super::{Cx, Topology, TopologyError};

const NAME_HINT: &str = "use letters, digits, `-` and `_`";

pub(super) fn resolve(cx: &Cx<'_>, path: &Path, spec: FileSpec) -> Result<Topology, TopologyError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let schemas = super::schemas::schemas(cx, base, &spec.schemas)?;
    if spec.nodes.is_empty() {
        return Err(cx.err(0..0, "the topology has no nodes", "add a [[nodes]] table"));
    }
    let nodes = nodes(cx, &spec.nodes)?;
    let machines = machines(cx, &spec.nodes, &schemas)?;
    let ups = upstreams(cx, &nodes, &machines)?;
    let schema_of = chains(cx, &schemas, &machines, &ups)?;
    let plans = spec
        .nodes
        .iter()
        .map(|node| super::plan::plan_node(cx, base, node, &nodes, &schema_of, &ups))
        .collect::<Result<_, _>>()?;
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

fn nodes<'a>(cx: &Cx<'_>, nodes: &'a [Spanned<NodeSpec>]) -> Result<Nodes<'a>, TopologyError> {
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

// ----- upstreams -----

/// Where a mirror connects.
pub(super) enum Up {
    /// A machine of this file, `node/machine`.
    Local(String),
    /// An endpoint outside the file.
    Outside(Endpoint),
}

fn upstreams(
    cx: &Cx<'_>,
    nodes: &Nodes<'_>,
    machines: &Machines<'_>,
) -> Result<HashMap<String, Up>, TopologyError> {
    let mut ups = HashMap::new();
    for (key, (node_name, machine)) in machines {
        let Some(upstream) = &machine.get_ref().upstream else {
            continue;
        };
        let text = upstream.get_ref();
        let up = if text.contains("://") {
            let endpoint: Endpoint = text.parse().map_err(|e| {
                cx.err(
                    upstream.span(),
                    format!("upstream {text:?}: {e}"),
                    "write an outside upstream as scheme://host:port/machine",
                )
            })?;
            if machine.get_ref().schema.is_none() {
                return Err(cx.err(
                    upstream.span(),
                    format!("upstream {text:?} is outside this file, so its schema is unknown"),
                    "name the schema it serves with `schema = \"...\"`",
                ));
            }
            Up::Outside(endpoint)
        } else {
            let (up_node, up_machine) = text
                .split_once('/')
                .unwrap_or((text.as_str(), machine.get_ref().name.get_ref().as_str()));
            let Some(up_listeners) = nodes.listeners.get(up_node) else {
                let mut known: Vec<&str> = nodes.listeners.keys().copied().collect();
                known.sort_unstable();
                return Err(cx.err(
                    upstream.span(),
                    format!("upstream node {up_node:?} is not in this file"),
                    format!("nodes: {}", known.join(", ")),
                ));
            };
            let target = machine_key(up_node, up_machine);
            if !machines.contains_key(&target) {
                return Err(cx.err(
                    upstream.span(),
                    format!("node {up_node:?} has no machine {up_machine:?}"),
                    "write the upstream as node/machine",
                ));
            }
            if target == *key {
                return Err(cx.err(
                    upstream.span(),
                    format!("machine {key} mirrors itself"),
                    "name another node's machine, or make this one a root with `schema`",
                ));
            }
            if up_node == *node_name {
                // Its server would refuse the handshake as a loop, again and again.
                return Err(cx.err(
                    upstream.span(),
                    format!("machine {key} mirrors {target}, a machine of its own node"),
                    "a node serves its machines to others; mirror a machine of another node",
                ));
            }
            match up_listeners.first() {
                None => {
                    return Err(cx.err(
                        upstream.span(),
                        format!("upstream node {up_node:?} has no listener to connect to"),
                        format!("add `listen = [\"tcp://127.0.0.1:PORT\"]` to node {up_node:?}"),
                    ));
                }
                Some(first) if first.scheme != Scheme::Mem && first.address.ends_with(":0") => {
                    return Err(cx.err(
                        upstream.span(),
                        format!(
                            "upstream node {up_node:?} listens on port 0, so its port is not known in advance"
                        ),
                        format!("give node {up_node:?} a fixed port"),
                    ));
                }
                Some(_) => {}
            }
            Up::Local(target)
        };
        ups.insert(key.clone(), up);
    }
    Ok(ups)
}

/// Follows every chain to its root: finds each mirror's schema, and any loop.
fn chains(
    cx: &Cx<'_>,
    schemas: &HashMap<String, Arc<Schema>>,
    machines: &Machines<'_>,
    ups: &HashMap<String, Up>,
) -> Result<HashMap<String, Arc<Schema>>, TopologyError> {
    let mut schema_of = HashMap::new();
    for key in machines.keys() {
        let mut chain = vec![key.clone()];
        let mut at = key.clone();
        let schema = loop {
            let (_, machine) = &machines[&at];
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
                    let looped = chain.contains(next);
                    chain.push(next.clone());
                    if looped {
                        let (_, first) = &machines[key];
                        let span = first
                            .get_ref()
                            .upstream
                            .as_ref()
                            .map_or(first.span(), |u| u.span());
                        return Err(cx.err(
                            span,
                            format!("upstream chain loops: {}", chain.join(" -> ")),
                            "a node never mirrors itself or one of its descendants",
                        ));
                    }
                    at = next.clone();
                }
            }
        };
        let (_, machine) = &machines[key];
        if let Some(expected) = &machine.get_ref().schema
            && schemas[expected.get_ref()].hash() != schema.hash()
        {
            return Err(cx.err(
                expected.span(),
                format!(
                    "machine {key} expects schema {:?}, but its upstream chain serves another",
                    expected.get_ref()
                ),
                "drop `schema` from the mirror or make it match the root's",
            ));
        }
        schema_of.insert(key.clone(), schema);
    }
    Ok(schema_of)
}
