//! From the file as written to a [`Topology`], one named step at a time: schemas, nodes and
//! their listeners, machines, upstreams, upstream chains, then each node's plan. Each step
//! refuses what cannot work with the line it is written on and a hint.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::machine::{Schema, SchemaDef, SchemaError, StateDef};
use crate::transport::{Endpoint, Scheme};

use super::ports::{Bind, Protocol};
use super::spec::{FileSpec, LimitsSpec, MachineSpec, NodeSpec, SchemaFileSpec, TlsFileSpec};
use super::{Cx, MachineKind, MachinePlan, NodeLines, NodePlan, TlsSpec, Topology, TopologyError};

const NAME_HINT: &str = "use letters, digits, `-` and `_`";

pub(super) fn resolve(cx: &Cx<'_>, path: &Path, spec: FileSpec) -> Result<Topology, TopologyError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let schemas = schemas(cx, base, &spec)?;
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
        .map(|node| plan_node(cx, base, node, &nodes, &schema_of, &ups))
        .collect::<Result<_, _>>()?;
    Ok(Topology {
        path: path.to_path_buf(),
        nodes: plans,
    })
}

// ----- schemas -----

fn schemas(
    cx: &Cx<'_>,
    base: &Path,
    spec: &FileSpec,
) -> Result<HashMap<String, Arc<Schema>>, TopologyError> {
    let mut schemas = HashMap::new();
    for (name, schema) in &spec.schemas {
        let span = schema.span();
        let written = schema.get_ref();
        let schema = match (&written.file, written.states.is_empty()) {
            (Some(file), true) => {
                let full = base.join(file.get_ref());
                let text = std::fs::read_to_string(&full).map_err(|e| {
                    cx.err(
                        file.span(),
                        format!("cannot read schema file {}: {e}", full.display()),
                        "the path is relative to the topology file",
                    )
                })?;
                // Errors in a schema file point into that file.
                let file_cx = Cx {
                    file: full.display().to_string(),
                    text: &text,
                };
                let states: SchemaFileSpec = file_cx.toml(&text)?;
                if states.states.is_empty() {
                    return Err(file_cx.err(
                        0..0,
                        format!("schema file for {name:?} has no states"),
                        "list them as [[states]] tables with a `name` each",
                    ));
                }
                build_schema(&file_cx, name, &states.states, 0..0)?
            }
            (None, false) => build_schema(cx, name, &written.states, span)?,
            (Some(_), false) => {
                return Err(cx.err(
                    span,
                    format!("schema {name:?} has both `states` and `file`"),
                    "keep one of them",
                ));
            }
            (None, true) => {
                return Err(cx.err(
                    span,
                    format!("schema {name:?} has no states"),
                    "list its states, or point `file` at a schema file",
                ));
            }
        };
        schemas.insert(name.clone(), Arc::new(schema));
    }
    Ok(schemas)
}

/// A schema from its states, with an error at the line of the state it is about.
fn build_schema(
    cx: &Cx<'_>,
    name: &str,
    states: &[Spanned<StateDef>],
    whole: std::ops::Range<usize>,
) -> Result<Schema, TopologyError> {
    let def = SchemaDef {
        states: states.iter().map(|s| s.get_ref().clone()).collect(),
    };
    Schema::new(def).map_err(|e| {
        let span = state_of_error(&e, states).unwrap_or(whole);
        cx.err(span, format!("schema {name:?}: {e}"), schema_hint(&e))
    })
}

fn state_of_error(e: &SchemaError, states: &[Spanned<StateDef>]) -> Option<std::ops::Range<usize>> {
    let named =
        |name: &str, nth: usize| states.iter().filter(|s| s.get_ref().name == name).nth(nth);
    let span = match e {
        SchemaError::EmptyName => states.iter().find(|s| s.get_ref().name.is_empty()),
        // The second definition is the one to look at.
        SchemaError::DuplicateState(n) => named(n, 1),
        SchemaError::UnknownState { state, .. } | SchemaError::SelfRelation { state, .. } => {
            named(state, 0)
        }
        SchemaError::AfterCycle(cycle) => cycle.first().and_then(|n| named(n, 0)),
        _ => None,
    };
    span.map(Spanned::span)
}

fn schema_hint(e: &SchemaError) -> &'static str {
    match e {
        SchemaError::EmptyName => "give every state a `name`",
        SchemaError::DuplicateState(_) => "rename or remove one of the two",
        SchemaError::UnknownState { .. } => {
            "add that state to the schema, or fix its name in the relation"
        }
        SchemaError::SelfRelation { .. } => "remove the state from its own relation list",
        SchemaError::AfterCycle(_) => "drop one `after` entry of the cycle",
        _ => "split the machine's states over two machines",
    }
}

// ----- nodes and listeners -----

/// Each node's listeners, by node name.
struct Nodes<'a> {
    listeners: HashMap<&'a str, Vec<Endpoint>>,
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
type Machines<'a> = HashMap<String, (&'a str, &'a Spanned<MachineSpec>)>;

fn machine_key(node: &str, machine: &str) -> String {
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
enum Up {
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

// ----- each node's plan -----

fn plan_node(
    cx: &Cx<'_>,
    base: &Path,
    node: &Spanned<NodeSpec>,
    nodes: &Nodes<'_>,
    schema_of: &HashMap<String, Arc<Schema>>,
    ups: &HashMap<String, Up>,
) -> Result<NodePlan, TopologyError> {
    let n = node.get_ref();
    let node_name = n.name.get_ref().clone();
    let machines = n
        .machines
        .iter()
        .map(|machine| plan_machine(cx, &node_name, machine, nodes, schema_of, ups))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = plan_tls(cx, base, n, &machines)?;
    let acl = n
        .acl
        .as_ref()
        .map(|a| a.get_ref().clone())
        .unwrap_or_default();
    // ACL state names must exist in one of the node's machines.
    if let Some(bad) = acl
        .see
        .values()
        .chain(acl.mutate.values())
        .flatten()
        .find(|state| !machines.iter().any(|m| m.schema.index(state).is_some()))
    {
        let span = n.acl.as_ref().map_or(n.name.span(), Spanned::span);
        return Err(cx.err(
            span,
            format!("node {node_name:?}: acl names unknown state {bad:?}"),
            "acl see/mutate list states of the node's machines",
        ));
    }
    let limits = limits(cx, n.limits.as_ref())?;
    let ms = |v: Option<u64>| v.map(Duration::from_millis);
    Ok(NodePlan {
        listen: nodes.listeners[node_name.as_str()].clone(),
        machines,
        compression: n.compression.unwrap_or(true),
        push_interval: ms(n.push_interval_ms).filter(|d| !d.is_zero()),
        max_clients: limits.max_clients,
        max_frame: limits.max_frame,
        handshake_timeout: ms(limits.handshake_timeout_ms),
        idle_timeout: ms(limits.idle_timeout_ms),
        keepalive: ms(limits.keepalive_ms),
        tls,
        token: acl.token,
        allow: acl.allow,
        see: acl.see,
        mutate: acl.mutate,
        admin: n.admin.as_ref().map(|a| a.get_ref().clone()),
        lines: NodeLines {
            file: cx.file.clone(),
            node: cx.line(&n.name.span()),
            tls: n.tls.as_ref().map(|t| cx.line(&t.span())),
            admin: n.admin.as_ref().map(|a| cx.line(&a.span())),
            listen: n.listen.iter().map(|l| cx.line(&l.span())).collect(),
        },
        name: node_name,
    })
}

fn plan_machine(
    cx: &Cx<'_>,
    node_name: &str,
    machine: &Spanned<MachineSpec>,
    nodes: &Nodes<'_>,
    schema_of: &HashMap<String, Arc<Schema>>,
    ups: &HashMap<String, Up>,
) -> Result<MachinePlan, TopologyError> {
    let m = machine.get_ref();
    let key = machine_key(node_name, m.name.get_ref());
    let schema = schema_of[&key].clone();
    let states_hint = || format!("states: {}", schema.names().collect::<Vec<_>>().join(", "));
    if let Some(driver) = &m.driver {
        let d = driver.get_ref();
        if d.every_ms == 0 {
            return Err(cx.err(
                driver.span(),
                "driver every_ms must be above 0",
                "set how many milliseconds apart its mutations run, e.g. every_ms = 500",
            ));
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
                states_hint(),
            ));
        }
    }
    if let Some(bad) = m.start.iter().find(|s| schema.index(s).is_none()) {
        return Err(cx.err(
            machine.span(),
            format!("{key} starts unknown state {bad:?}"),
            states_hint(),
        ));
    }
    if !m.start.is_empty() && m.upstream.is_some() {
        return Err(cx.err(
            machine.span(),
            format!("{key} is a mirror; `start` is for root machines"),
            "set the states at the root",
        ));
    }
    if let Some(bad) = m.track.iter().flatten().find(|s| schema.index(s).is_none()) {
        return Err(cx.err(
            machine.span(),
            format!("{key} tracks unknown state {bad:?}"),
            states_hint(),
        ));
    }
    let kind = match ups.get(&key) {
        None => MachineKind::Root,
        Some(up) => {
            let upstream = match up {
                Up::Outside(endpoint) => endpoint.clone(),
                Up::Local(target) => {
                    let (up_node, up_machine) = target.split_once('/').unwrap_or((target, ""));
                    connectable(&nodes.listeners[up_node][0]).with_machine(up_machine)
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
    Ok(MachinePlan {
        name: m.name.get_ref().clone(),
        schema,
        kind,
        start: m.start.clone(),
        driver: m.driver.as_ref().map(|d| d.get_ref().clone()),
    })
}

/// The node's TLS material, checked against what its listeners and mirrors need.
fn plan_tls(
    cx: &Cx<'_>,
    base: &Path,
    node: &NodeSpec,
    machines: &[MachinePlan],
) -> Result<Option<TlsSpec>, TopologyError> {
    let tls = node.tls.as_ref();
    let written = tls.map(Spanned::get_ref);
    let path = |p: &Option<Spanned<String>>| -> Result<Option<String>, TopologyError> {
        match p {
            None => Ok(None),
            Some(p) if p.get_ref().is_empty() => Err(cx.err(
                p.span(),
                "an empty path in the tls table",
                "name a PEM file, relative to the topology file; `am-node certs DIR NAME` writes development ones",
            )),
            // Certificate paths are relative to the topology file.
            Some(p) => Ok(Some(base.join(p.get_ref()).to_string_lossy().into_owned())),
        }
    };
    let spec = match (tls, written) {
        (
            Some(tls),
            Some(TlsFileSpec {
                cert,
                key,
                ca,
                client_auth,
            }),
        ) => {
            if cert.is_some() != key.is_some() {
                return Err(cx.err(
                    tls.span(),
                    "tls has one of `cert` and `key` without the other",
                    "give both (this node's certificate and its key), or neither for a node that only connects and verifies with `ca`",
                ));
            }
            if *client_auth && ca.is_none() {
                return Err(cx.err(
                    tls.span(),
                    "tls requires client certificates (client_auth) but names no `ca` to verify them with",
                    "add `ca = \"ca.pem\"`, the CA that signs the clients' certificates",
                ));
            }
            Some(TlsSpec {
                cert: path(cert)?,
                key: path(key)?,
                ca: path(ca)?,
                client_auth: *client_auth,
            })
        }
        _ => None,
    };
    let tls_schemes = [Scheme::Tls, Scheme::Quic, Scheme::Wss];
    let can_listen = spec.as_ref().is_some_and(|t| t.cert.is_some());
    if let Some(listen) = node.listen.iter().find(|l| {
        !can_listen
            && l.get_ref()
                .parse::<Endpoint>()
                .is_ok_and(|e| tls_schemes.contains(&e.scheme))
    }) {
        return Err(cx.err(
            listen.span(),
            format!("listener {:?} needs this node's certificate and key", listen.get_ref()),
            "add them to the node: tls = { cert = \"NAME.pem\", key = \"NAME.key\", ca = \"ca.pem\" } (am-node certs DIR NAME writes them)",
        ));
    }
    let can_verify = spec.as_ref().is_some_and(|t| t.ca.is_some());
    for (machine, written) in machines.iter().zip(&node.machines) {
        if let MachineKind::Mirror { upstream, .. } = &machine.kind
            && tls_schemes.contains(&upstream.scheme)
            && !can_verify
        {
            let span = written
                .get_ref()
                .upstream
                .as_ref()
                .map_or(written.span(), Spanned::span);
            return Err(cx.err(
                span,
                format!(
                    "machine {} connects over {}:// but its node has no CA to verify the upstream with",
                    machine.name,
                    upstream.scheme.as_str()
                ),
                "add the CA that signed the upstream's certificate: tls = { ca = \"ca.pem\" }",
            ));
        }
    }
    Ok(spec)
}

/// Limits as written, with values that would stop every connection refused.
struct Limits {
    max_clients: Option<usize>,
    max_frame: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    keepalive_ms: Option<u64>,
}

fn limits(cx: &Cx<'_>, limits: Option<&Spanned<LimitsSpec>>) -> Result<Limits, TopologyError> {
    let default = LimitsSpec::default();
    let l = limits.map_or(&default, Spanned::get_ref);
    fn positive<T: Copy + PartialEq + Default>(
        cx: &Cx<'_>,
        value: &Option<Spanned<T>>,
        key: &str,
        why: &str,
        default: &str,
    ) -> Result<Option<T>, TopologyError> {
        match value {
            Some(v) if *v.get_ref() == T::default() => Err(cx.err(
                v.span(),
                format!("limits.{key} = 0 {why}"),
                format!("remove it for the default ({default}), or set a number above 0"),
            )),
            v => Ok(v.as_ref().map(|v| *v.get_ref())),
        }
    }
    Ok(Limits {
        max_clients: positive(
            cx,
            &l.max_clients,
            "max_clients",
            "lets no client in",
            "10000",
        )?,
        max_frame: positive(
            cx,
            &l.max_frame,
            "max_frame",
            "fits no frame, not even a hello",
            "1048576 bytes",
        )?,
        handshake_timeout_ms: positive(
            cx,
            &l.handshake_timeout_ms,
            "handshake_timeout_ms",
            "ends every handshake before it starts",
            "5000",
        )?,
        idle_timeout_ms: positive(
            cx,
            &l.idle_timeout_ms,
            "idle_timeout_ms",
            "closes every connection at once",
            "30000",
        )?,
        keepalive_ms: positive(
            cx,
            &l.keepalive_ms,
            "keepalive_ms",
            "sends keepalives without pause",
            "10000",
        )?,
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
