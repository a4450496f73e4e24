//! Where each mirror connects, and the chains of upstreams that follow: each ends at a root,
//! never loops, and gives every machine the schema its root serves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::machine::Schema;
use crate::transport::{Endpoint, Scheme};

use super::resolve::{Machines, Nodes, machine_key};
use super::{Cx, TopologyError};

/// Where a mirror connects.
pub(super) enum Up {
    /// A machine of this file, `node/machine`.
    Local(String),
    /// An endpoint outside the file.
    Outside(Endpoint),
}

/// Upstreams: each mirror's upstream is an endpoint outside the file (with the schema it
/// serves named) or another node's machine that listens on a known port.
pub(super) fn upstreams(
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

/// Loop detection: follows every machine's chain of upstreams to its root, refusing a chain
/// that loops; gives each machine (by `node/machine`) the schema its root serves, refusing a
/// mirror that expects another.
pub(super) fn loop_detection(
    cx: &Cx<'_>,
    schemas: &HashMap<String, Arc<Schema>>,
    machines: &Machines<'_>,
    ups: &HashMap<String, Up>,
) -> Result<HashMap<String, Arc<Schema>>, TopologyError> {
    // Each machine's root schema, once its chain was followed: a later chain that reaches it
    // stops there, so every machine is walked once (a long chain walked from each of its
    // machines, with a search of the chain at each step, was cubic in its length).
    let mut schema_of: HashMap<String, Arc<Schema>> = HashMap::new();
    for key in machines.keys() {
        let mut chain = vec![key.clone()];
        let mut on_chain = HashSet::from([key.clone()]);
        let mut at = key.clone();
        let schema = loop {
            if let Some(known) = schema_of.get(&at) {
                break known.clone();
            }
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
                    let looped = !on_chain.insert(next.clone());
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
        // Every machine on the chain serves its root's schema; each is still checked against
        // its own expected schema when its turn comes.
        for on in chain {
            schema_of.entry(on).or_insert_with(|| schema.clone());
        }
    }
    Ok(schema_of)
}
