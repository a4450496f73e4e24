//! Running nodes: a node's machines (its own sources and mirrors of other nodes' sources), the
//! server that serves all of them under their names on the node's listeners, and the drivers
//! that mutate machines on a schedule. `am-node run` is [`start_topology`] plus a report loop
//! and a signal handler; tests call the same functions in-process.
//!
//! A root machine with a state file (`state_dir`) is a [`DurableMachine`]: restored from its
//! file before the node serves it (its `start` states are then not applied again: it continues
//! where it was), served in its place so that mutations are acknowledged once saved, and
//! closed, after the server, when the node stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::durable::{DurableError, DurableMachine};
use crate::machine::{Args, Machine, StateSource};
use crate::mirror::{Mirror, MirrorConfig, MirrorError};
use crate::printable::printable;
use crate::proto::Compression;
use crate::server::{Server, ServerConfig, ServerError};
use crate::telemetry::{Telemetry, TelemetryConfig, TelemetryError};
use crate::topology::{DriverSpec, MachineKind, MachinePlan, NodePlan, Topology};
use crate::transport::{Endpoint, TlsConfig, TlsError, TransportConfig};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node's TLS settings (certificate, key, CA) could not be loaded.
    #[error(
        "{at}: node {node}: {error}\n  hint: the tls table's paths are relative to the topology file; `am-node certs DIR NAME` writes development certificates"
    )]
    Tls {
        /// `file:line` of the node's tls table.
        at: String,
        /// The node's name.
        node: String,
        /// What is wrong with the files.
        error: TlsError,
    },
    /// `--node` named a node the topology does not have (the name, and the nodes it has).
    #[error("node {0:?} is not in the topology; nodes: {1}")]
    UnknownNode(String, String),
    /// The node's server could not be built.
    #[error("node {node}: {error}")]
    Server {
        /// The node's name.
        node: String,
        /// The server's error.
        error: ServerError,
    },
    /// A listener could not bind its address.
    #[error(
        "{at}: node {node}: {error}\n  hint: another process (or another node of this file) may hold the port; pick a free one, or 0 for any"
    )]
    Listen {
        /// `file:line` of the listener.
        at: String,
        /// The node's name.
        node: String,
        /// The bind error.
        error: ServerError,
    },
    /// A mirror could not be built from its plan (a bad endpoint or TLS setting).
    #[error("node {node}: {error}")]
    Mirror {
        /// The node's name.
        node: String,
        /// The mirror's error.
        error: MirrorError,
    },
    /// The admin (metrics and health) listener could not bind.
    #[error(
        "{at}: node {node}: cannot serve metrics on {address}: {error}\n  hint: `admin` is an address of this host that is free, e.g. 127.0.0.1:9100"
    )]
    Admin {
        /// `file:line` of the node's `admin`.
        at: String,
        /// The node's name.
        node: String,
        /// The address it tried.
        address: String,
        /// The bind error.
        error: std::io::Error,
    },
    /// A root machine's state file could not be opened or restored.
    #[error(
        "{at}: node {node}: machine {machine}: {error}\n  hint: state_dir is relative to the topology file; each root machine keeps STATE_DIR/MACHINE.json"
    )]
    State {
        /// `file:line` of the `state_dir`.
        at: String,
        /// The node's name.
        node: String,
        /// The machine's name.
        machine: String,
        /// What went wrong with its file.
        error: DurableError,
    },
    /// Telemetry could not be turned on for the node (its `debug` address).
    #[error("node {node}: {error}")]
    Telemetry {
        /// The node's name.
        node: String,
        /// What went wrong.
        error: TelemetryError,
    },
    /// A root machine's `start` states could not be activated (unknown, or its relations
    /// refused them).
    #[error("node {node}: machine {machine} cannot start: {reason}")]
    Start {
        /// The node's name.
        node: String,
        /// The machine's name.
        machine: String,
        /// Why, for a person.
        reason: String,
    },
}

/// A started node.
pub struct RunningNode {
    name: String,
    server: Server,
    endpoints: Vec<Endpoint>,
    machines: Vec<(String, Arc<dyn StateSource>)>,
    mirrors: Vec<Mirror>,
    /// The durable root machines, by name, to close after the server.
    durables: Vec<(String, Arc<DurableMachine>)>,
    drivers: Vec<JoinHandle<()>>,
    admin: Option<std::net::SocketAddr>,
    admin_stop: tokio::sync::watch::Sender<bool>,
    telemetry: Option<Telemetry>,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// Starts one node: its machines are served (mirrors with their last clock, zero at first)
/// as soon as this returns; mirrors connect to their upstreams in the background.
pub async fn start_node(plan: &NodePlan) -> Result<RunningNode, NodeError> {
    let transport = match &plan.tls {
        None => TransportConfig::default(),
        Some(tls) => {
            let config = TlsConfig::from_pem_files(
                tls.cert.as_deref().map(std::path::Path::new),
                tls.key.as_deref().map(std::path::Path::new),
                tls.ca.as_deref().map(std::path::Path::new),
                tls.client_auth,
            )
            .map_err(|source| NodeError::Tls {
                at: plan.lines.at(plan.lines.tls),
                node: plan.name.clone(),
                error: source,
            })?;
            TransportConfig::with_tls(config)
        }
    };
    let config = ServerConfig {
        name: plan.name.clone(),
        limits: plan.limits.clone(),
        compression: plan.compression.then(Compression::default),
        acl: plan.acl.clone(),
        transport: transport.clone(),
        push_first: plan.downstream.clone(),
    };
    let server = Server::new(config);
    let admin_stop = tokio::sync::watch::channel(false).0;
    let mut machines = Vec::new();
    let mut mirrors = Vec::new();
    let mut durables = Vec::new();
    let mut drivers = Vec::new();
    for machine in &plan.machines {
        let source: Arc<dyn StateSource> = match &machine.kind {
            MachineKind::Root => {
                let (root, durable) = start_root(plan, machine).await?;
                if let Some(durable) = durable {
                    durables.push((machine.name.clone(), durable));
                }
                root
            }
            MachineKind::Mirror {
                upstream,
                track,
                compression,
                token,
                retry,
            } => {
                let config = MirrorConfig {
                    client_id: plan.name.clone(),
                    schema: Some(machine.schema.clone()),
                    compression: *compression,
                    track: track.clone(),
                    token: token.clone(),
                    transport: transport.clone(),
                    retry: *retry,
                    ..MirrorConfig::default()
                };
                let mirror =
                    Mirror::start(upstream, config).map_err(|source| NodeError::Mirror {
                        node: plan.name.clone(),
                        error: source,
                    })?;
                mirrors.push(mirror.clone());
                Arc::new(mirror)
            }
        };
        server
            .add_source(&machine.name, source.clone())
            .map_err(|source| NodeError::Server {
                node: plan.name.clone(),
                error: source,
            })?;
        if let Some(spec) = &machine.driver {
            drivers.push(tokio::spawn(drive(source.clone(), spec.clone())));
        }
        machines.push((machine.name.clone(), source));
    }
    let admin = match &plan.admin {
        None => None,
        Some(address) => {
            let metrics_server = server.clone();
            let (node, saved) = (plan.name.clone(), durables.clone());
            let render: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
                let stats: Vec<_> = saved.iter().map(|(n, d)| (n.clone(), d.stats())).collect();
                metrics_server.metrics() + &crate::metrics::render_saves(&node, &stats)
            });
            let addr = crate::metrics::serve_admin(address, render, admin_stop.subscribe())
                .await
                .map_err(|error| NodeError::Admin {
                    at: plan.lines.at(plan.lines.admin),
                    node: plan.name.clone(),
                    address: address.clone(),
                    error,
                })?;
            Some(addr)
        }
    };
    let mut endpoints = Vec::new();
    for (i, listen) in plan.listen.iter().enumerate() {
        let endpoint = server
            .listen(listen)
            .await
            .map_err(|source| NodeError::Listen {
                at: plan.lines.at(plan.lines.listen.get(i).copied()),
                node: plan.name.clone(),
                error: source,
            })?;
        endpoints.push(endpoint);
    }
    let telemetry = start_telemetry(plan, &server, &machines, &endpoints).map_err(|error| {
        NodeError::Telemetry {
            node: plan.name.clone(),
            error,
        }
    })?;
    info!(node = %plan.name, machines = machines.len(), listeners = ?endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(), "node started");
    Ok(RunningNode {
        name: plan.name.clone(),
        server,
        endpoints,
        machines,
        mirrors,
        durables,
        drivers,
        admin,
        admin_stop,
        telemetry,
    })
}

/// Telemetry of every machine of the node, when the plan's `debug` or `AM_DEBUG` names a
/// collector (`AM_DEBUG_REDACT` replaces the words of the redaction rule).
fn start_telemetry(
    plan: &NodePlan,
    server: &Server,
    machines: &[(String, Arc<dyn StateSource>)],
    endpoints: &[Endpoint],
) -> Result<Option<Telemetry>, TelemetryError> {
    let config = match &plan.debug {
        Some(address) => Some(TelemetryConfig::new(address).map(|mut config| {
            if let Ok(list) = std::env::var("AM_DEBUG_REDACT") {
                config.redaction = crate::telemetry::Redaction::from_list(&list);
            }
            config
        })),
        None => TelemetryConfig::from_env(),
    };
    let Some(config) = config else {
        return Ok(None);
    };
    let config = config?;
    info!(node = %plan.name, collector = %config.address, "sending telemetry");
    let telemetry = Telemetry::start(&plan.name, config);
    // The listeners first: each machine's first record names them.
    let status_of = server.clone();
    telemetry.set_status(
        Arc::new(move || status_of.status()),
        endpoints.iter().map(ToString::to_string).collect(),
    );
    for (name, source) in machines {
        telemetry.attach(name, source.clone());
    }
    Ok(Some(telemetry))
}

/// A root machine; with a state file, a [`DurableMachine`] restored from it when the file
/// exists (its `start` states are then not applied: it continues where it was). Without a
/// file, the `start` states are its first change, saved like any other: killed before that
/// save, it starts from zero again.
async fn start_root(
    plan: &NodePlan,
    machine: &MachinePlan,
) -> Result<(Arc<dyn StateSource>, Option<Arc<DurableMachine>>), NodeError> {
    let root = Machine::builder(machine.schema.clone())
        .id(&plan.name)
        .build();
    let durable = match &machine.state {
        None => None,
        Some(state) => {
            let durable = DurableMachine::open(root.clone(), &state.file)
                .await
                .map_err(|error| NodeError::State {
                    at: state.at.clone(),
                    node: plan.name.clone(),
                    machine: machine.name.clone(),
                    error,
                })?;
            if durable.restored() {
                info!(node = %plan.name, machine = %machine.name, path = %state.file.display(), clock = %durable.summary(), "state restored");
            }
            Some(Arc::new(durable))
        }
    };
    let restored = durable.as_ref().is_some_and(|d| d.restored());
    if !machine.start.is_empty() && !restored {
        let states: Vec<&str> = machine.start.iter().map(String::as_str).collect();
        let outcome = root
            .add(&states, Args::new())
            .map_err(|e| NodeError::Start {
                node: plan.name.clone(),
                machine: machine.name.clone(),
                reason: e.to_string(),
            })?;
        if outcome == crate::machine::Outcome::Canceled {
            return Err(NodeError::Start {
                node: plan.name.clone(),
                machine: machine.name.clone(),
                reason: format!(
                    "activating {} was canceled by the schema's relations",
                    states.join(", ")
                ),
            });
        }
    }
    Ok(match durable {
        Some(durable) => (durable.clone(), Some(durable)),
        None => (Arc::new(root), None),
    })
}

impl RunningNode {
    /// The node's name in the topology.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The endpoints the node listens on (real ports).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The server that serves the node's machines: its stats, clients and shutdown.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The admin listener's address (/metrics, /healthz), if configured.
    pub fn admin(&self) -> Option<std::net::SocketAddr> {
        self.admin
    }

    /// A machine of the node by name (a root, a durable root or a mirror).
    pub fn machine(&self, name: &str) -> Option<Arc<dyn StateSource>> {
        self.machines
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.clone())
    }

    /// The node's machines with their names, in the topology's order.
    pub fn machines(&self) -> impl Iterator<Item = (&str, &Arc<dyn StateSource>)> {
        self.machines.iter().map(|(n, m)| (n.as_str(), m))
    }

    /// A root machine with a state file, by name.
    pub fn durable(&self, name: &str) -> Option<&Arc<DurableMachine>> {
        self.durables
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
    }

    /// Stops drivers, says goodbye upstream and to clients, and waits for connections to end.
    pub async fn shutdown(self) {
        for driver in &self.drivers {
            driver.abort();
        }
        if let Some(telemetry) = &self.telemetry {
            telemetry.shutdown().await;
        }
        self.admin_stop.send_replace(true);
        for mirror in &self.mirrors {
            mirror.close().await;
        }
        self.server.shutdown(Duration::from_secs(3)).await;
        // After the server: mutations still answering wait for their saves.
        for (_, durable) in &self.durables {
            durable.close().await;
        }
        info!(node = %self.name, "node stopped");
    }
}

/// Flips and adds states on a schedule; on a mirror the mutations travel upstream.
async fn drive(source: Arc<dyn StateSource>, spec: DriverSpec) {
    let mut every = tokio::time::interval(Duration::from_millis(spec.every_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next = 0usize;
    loop {
        every.tick().await;
        if !spec.toggle.is_empty() {
            let state = spec.toggle[next % spec.toggle.len()].as_str();
            next += 1;
            let result = if source.is1(state) {
                source.remove(&[state], Args::new()).await
            } else {
                source.add(&[state], Args::new()).await
            };
            if let Err(e) = result {
                debug!(source = %source.id(), %state, error = %e, "driver mutation failed");
            }
        }
        if !spec.add.is_empty() {
            let states: Vec<&str> = spec.add.iter().map(String::as_str).collect();
            if let Err(e) = source.add(&states, Args::new()).await {
                debug!(source = %source.id(), error = %e, "driver mutation failed");
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: what am-node and am-relay wait for before shutting down.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

/// Started nodes of one topology.
#[derive(Debug)]
pub struct RunningTopology {
    nodes: Vec<RunningNode>,
}

/// Starts every node of the topology, or only the named ones (for deploying one file across
/// hosts). Upstreams are started before the nodes that mirror them where the file allows.
pub async fn start_topology(
    topology: &Topology,
    only: &[String],
) -> Result<RunningTopology, NodeError> {
    let known = || {
        topology
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(missing) = only.iter().find(|name| topology.node(name).is_none()) {
        return Err(NodeError::UnknownNode(missing.clone(), known()));
    }
    let mut nodes = Vec::new();
    for plan in topology
        .nodes
        .iter()
        .filter(|n| only.is_empty() || only.contains(&n.name))
    {
        match start_node(plan).await {
            Ok(node) => nodes.push(node),
            Err(e) => {
                for node in nodes {
                    node.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    Ok(RunningTopology { nodes })
}

impl RunningTopology {
    /// The nodes started, in the topology's order.
    pub fn nodes(&self) -> &[RunningNode] {
        &self.nodes
    }

    /// A started node by name.
    pub fn node(&self, name: &str) -> Option<&RunningNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Stops every node, leaves first (so upstreams do not see their clients reconnect), and
    /// waits for each to close.
    pub async fn shutdown(self) {
        // Leaves first, so that upstreams do not see their clients drop and reconnect.
        for node in self.nodes.into_iter().rev() {
            node.shutdown().await;
        }
    }

    /// One line per machine: active states, clients, upstream state. For `am-node run`.
    pub fn report(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for node in &self.nodes {
            let status = node.server.status();
            for source in &status.sources {
                let upstream = match (&source.upstream, &source.connection) {
                    (Some(up), Some(state)) => format!("  <- {up} ({})", printable(state)),
                    _ => String::new(),
                };
                lines.push(format!(
                    "{:<16} [{}]  clients={}  queue={}{}",
                    format!("{}/{}", node.name, source.name),
                    printable(&source.active.join(" ")),
                    source.clients,
                    source.queue_tick,
                    upstream
                ));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests;
