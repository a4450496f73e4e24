//! Each node's plan: its machines, TLS material, ACL and limits, checked against what the node
//! does (a TLS listener needs a certificate, a TLS upstream a CA, a limit of 0 stops it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::machine::Schema;
use crate::proto::config::Limits;
use crate::proto::session::RetryPolicy;
use crate::transport::{Endpoint, Scheme};

use super::resolve::{Nodes, machine_key};
use super::spec::{LimitsSpec, MachineSpec, NodeSpec, TlsFileSpec};
use super::upstreams::Up;
use super::{Cx, MachineKind, MachinePlan, NodeLines, NodePlan, StatePlan, TlsSpec, TopologyError};

/// Plans: each node's plan, in the file's order; no two durable machines share a state file.
pub(super) fn plans(
    cx: &Cx<'_>,
    base: &Path,
    written: &[Spanned<NodeSpec>],
    nodes: &Nodes<'_>,
    schema_of: &HashMap<String, Arc<Schema>>,
    ups: &HashMap<String, Up>,
) -> Result<Vec<NodePlan>, TopologyError> {
    let plans = written
        .iter()
        .map(|node| plan_node(cx, base, node, nodes, schema_of, ups))
        .collect::<Result<Vec<_>, _>>()?;
    let mut files: HashMap<&Path, String> = HashMap::new();
    for (node, plan) in written.iter().zip(&plans) {
        for (machine, planned) in node.get_ref().machines.iter().zip(&plan.machines) {
            let Some(state) = &planned.state else {
                continue;
            };
            let key = machine_key(&plan.name, &planned.name);
            if let Some(other) = files.insert(&state.file, key.clone()) {
                let span = state_dir_span(node.get_ref(), machine.get_ref())
                    .unwrap_or_else(|| machine.span());
                return Err(cx.err(
                    span,
                    format!(
                        "{key} would keep its state in {}, as {other} does",
                        state.file.display()
                    ),
                    "each durable machine needs a file of its own (STATE_DIR/MACHINE.json): give                      one of them another state_dir",
                ));
            }
        }
    }
    Ok(plans)
}

/// Where a root machine's `state_dir` is written: its own, else its node's.
fn state_dir_span(node: &NodeSpec, machine: &MachineSpec) -> Option<std::ops::Range<usize>> {
    machine
        .state_dir
        .as_ref()
        .or(node.state_dir.as_ref())
        .map(Spanned::span)
}

/// One node's plan: its machines, TLS material, ACL and limits.
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
        .map(|machine| plan_machine(cx, base, n, machine, nodes, schema_of, ups))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(dir) = &n.state_dir
        && !machines.iter().any(|m| m.kind == MachineKind::Root)
    {
        return Err(cx.err(
            dir.span(),
            format!("node {node_name:?} has a state_dir but no root machine"),
            "only root machines keep a state; a mirror takes its clock from its upstream: \
             remove state_dir, or set it on the node of the root",
        ));
    }
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
    let limits = limits(cx, n.limits.as_ref(), n.push_interval_ms)?;
    let downstream = downstream_of(&node_name, ups);
    if let Some(debug) = &n.debug
        && let Err(e) = crate::telemetry::TelemetryConfig::new(debug.get_ref())
    {
        return Err(cx.err(
            debug.span(),
            format!("node {node_name:?}: {e}"),
            "debug is the address `am-node dbg` listens on for telemetry, e.g. \
             debug = \"tcp://127.0.0.1:6831\"",
        ));
    }
    Ok(NodePlan {
        listen: nodes.listeners[node_name.as_str()].clone(),
        machines,
        downstream,
        compression: n.compression.unwrap_or(true),
        limits,
        tls,
        acl,
        admin: n.admin.as_ref().map(|a| a.get_ref().clone()),
        debug: n.debug.as_ref().map(|d| d.get_ref().clone()),
        lines: NodeLines {
            file: cx.file().to_owned(),
            node: cx.line(&n.name.span()),
            tls: n.tls.as_ref().map(|t| cx.line(&t.span())),
            admin: n.admin.as_ref().map(|a| cx.line(&a.span())),
            listen: n.listen.iter().map(|l| cx.line(&l.span())).collect(),
        },
        name: node_name,
    })
}

/// The nodes whose mirrors' upstream is a machine of `node`, sorted, each once.
fn downstream_of(node: &str, ups: &HashMap<String, Up>) -> Vec<String> {
    let below: std::collections::BTreeSet<&str> = ups
        .iter()
        .filter_map(|(key, up)| match up {
            Up::Local(target) if target.split('/').next() == Some(node) => key.split('/').next(),
            _ => None,
        })
        .collect();
    below.into_iter().map(str::to_owned).collect()
}

fn plan_machine(
    cx: &Cx<'_>,
    base: &Path,
    node: &NodeSpec,
    machine: &Spanned<MachineSpec>,
    nodes: &Nodes<'_>,
    schema_of: &HashMap<String, Arc<Schema>>,
    ups: &HashMap<String, Up>,
) -> Result<MachinePlan, TopologyError> {
    let m = machine.get_ref();
    let node_name = node.name.get_ref().as_str();
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
    let retry = plan_retry(cx, machine, &key)?;
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
                retry,
            }
        }
    };
    let state = plan_state(cx, base, node, machine, &kind)?;
    Ok(MachinePlan {
        name: m.name.get_ref().clone(),
        schema,
        kind,
        start: m.start.clone(),
        driver: m.driver.as_ref().map(|d| d.get_ref().clone()),
        state,
    })
}

/// Where a root machine keeps its state: `STATE_DIR/MACHINE.json`, from its own `state_dir`
/// or else its node's; mirrors keep none.
fn plan_state(
    cx: &Cx<'_>,
    base: &Path,
    node: &NodeSpec,
    machine: &Spanned<MachineSpec>,
    kind: &MachineKind,
) -> Result<Option<StatePlan>, TopologyError> {
    let m = machine.get_ref();
    let name = m.name.get_ref();
    if let (Some(dir), MachineKind::Mirror { .. }) = (&m.state_dir, kind) {
        return Err(cx.err(
            dir.span(),
            format!("machine {name:?} is a mirror; `state_dir` is for root machines"),
            "a mirror takes its clock from its upstream: remove state_dir here, and make the \
             root durable instead",
        ));
    }
    if *kind != MachineKind::Root {
        return Ok(None);
    }
    let Some(dir) = m.state_dir.as_ref().or(node.state_dir.as_ref()) else {
        return Ok(None);
    };
    if dir.get_ref().is_empty() {
        return Err(cx.err(
            dir.span(),
            "an empty state_dir",
            "name a directory, relative to the topology file, e.g. state_dir = \"state\"",
        ));
    }
    // Lexically normalized (`a/./b` is `a/b`), so that two ways of writing one directory
    // are found to collide.
    let file: PathBuf = base
        .join(dir.get_ref())
        .join(format!("{name}.json"))
        .components()
        .collect();
    Ok(Some(StatePlan {
        file,
        at: format!("{}:{}", cx.file(), cx.line(&dir.span())),
    }))
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

/// The limits as written over the defaults, with values that would stop every connection
/// refused; a push interval of 0 is no interval.
fn limits(
    cx: &Cx<'_>,
    written: Option<&Spanned<LimitsSpec>>,
    push_interval_ms: Option<u64>,
) -> Result<Limits, TopologyError> {
    let empty = LimitsSpec::default();
    let l = written.map_or(&empty, Spanned::get_ref);
    let default = Limits::default();
    /// The value written, unless it is 0; `default` names the value used when it is not written.
    fn positive<T: Copy + PartialEq + Default>(
        cx: &Cx<'_>,
        value: &Option<Spanned<T>>,
        key: &str,
        why: &str,
        default: String,
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
    let ms = |d: Duration| d.as_millis().to_string();
    let max_clients = positive(
        cx,
        &l.max_clients,
        "max_clients",
        "lets no client in",
        default.max_clients.to_string(),
    )?;
    let max_frame = positive(
        cx,
        &l.max_frame,
        "max_frame",
        "fits no frame, not even a hello",
        format!("{} bytes", default.max_frame),
    )?;
    if let Some(frame) = l
        .max_frame
        .as_ref()
        .filter(|f| *f.get_ref() > MAX_MAX_FRAME)
    {
        return Err(cx.err(
            frame.span(),
            format!(
                "limits.max_frame = {} is over {MAX_MAX_FRAME} bytes",
                frame.get_ref()
            ),
            "a peer's frame of that size is held in memory whole, and a compressed one is \
             unpacked to it: keep it at a few MiB (the default is 1 MiB)",
        ));
    }
    let handshake_timeout_ms = positive(
        cx,
        &l.handshake_timeout_ms,
        "handshake_timeout_ms",
        "ends every handshake before it starts",
        ms(default.handshake_timeout),
    )?;
    let idle_timeout_ms = positive(
        cx,
        &l.idle_timeout_ms,
        "idle_timeout_ms",
        "closes every connection at once",
        ms(default.idle_timeout),
    )?;
    let keepalive_ms = positive(
        cx,
        &l.keepalive_ms,
        "keepalive_ms",
        "sends keepalives without pause",
        ms(default.keepalive),
    )?;
    Ok(Limits {
        max_clients: max_clients.unwrap_or(default.max_clients),
        handshake_timeout: handshake_timeout_ms
            .map_or(default.handshake_timeout, Duration::from_millis),
        idle_timeout: idle_timeout_ms.map_or(default.idle_timeout, Duration::from_millis),
        keepalive: keepalive_ms.map_or(default.keepalive, Duration::from_millis),
        max_frame: max_frame.unwrap_or(default.max_frame),
        min_push_interval: push_interval_ms
            .map(Duration::from_millis)
            .filter(|d| !d.is_zero()),
        max_remote_waits: default.max_remote_waits,
        dedup_window: default.dedup_window,
        dedup_ttl: default.dedup_ttl,
    })
}

/// The largest `limits.max_frame` a topology may set (64 MiB).
const MAX_MAX_FRAME: usize = 64 << 20;

/// Most mutations a topology lets one mirror keep waiting for its link: each holds its
/// arguments and a caller.
const MAX_RETRY_WAITING: usize = 1 << 20;

/// A mirror's retry policy from `retry_deadline_ms` and `retry_max_waiting` (defaults:
/// [`RetryPolicy::default`]); a root machine may not set them.
fn plan_retry(
    cx: &Cx<'_>,
    machine: &Spanned<MachineSpec>,
    key: &str,
) -> Result<RetryPolicy, TopologyError> {
    let m = machine.get_ref();
    let default = RetryPolicy::default();
    if m.upstream.is_none() && (m.retry_deadline_ms.is_some() || m.retry_max_waiting.is_some()) {
        return Err(cx.err(
            machine.span(),
            format!(
                "{key} is a root machine; retry_deadline_ms and retry_max_waiting are for mirrors"
            ),
            "remove them, or set them on the mirrors of this machine",
        ));
    }
    let max_waiting = m.retry_max_waiting.unwrap_or(default.max_waiting);
    if max_waiting > MAX_RETRY_WAITING {
        return Err(cx.err(
            machine.span(),
            format!("{key}: retry_max_waiting {max_waiting} is over {MAX_RETRY_WAITING}"),
            "mutations waiting for a link hold memory each; keep the bound in the thousands",
        ));
    }
    Ok(RetryPolicy {
        deadline: m
            .retry_deadline_ms
            .map_or(default.deadline, Duration::from_millis),
        max_waiting,
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
