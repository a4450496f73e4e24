//! The chain scenario as deployed (`bench chain --processes`): every node its own `am-node run
//! FILE --node NAME` process (root -> n1 -> ... -> nN, from a topology file written for the
//! run), and this process only a client. It mutates at the root through one connection and
//! observes through a mirror of every depth: depth 0 is a second client of the root (the
//! reference), depth k a client of node k. With `--clients-per-node N` every node also serves
//! N idle clients of this process, as a node of a tree serves its leaf clients. The floor:
//! fixed-size messages relayed over bare TCP through as many relay processes
//! ([`super::hop`]), timed the same way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::chain::Arrival;
use super::children::{Children, first_line, free_port, node_args, retry_until};
use super::hop::{MESSAGE, READER, WRITER};
use super::{BenchError, Percentiles};
use asyncmachine::machine::{Args, Outcome, StateSource as _};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::transport::{Endpoint, Scheme};

/// The most nodes after the root.
pub const MAX_HOPS: usize = 16;
/// The machine every node serves.
const MACHINE: &str = "chain";
/// How long one change may take to reach every depth before the run fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessChainOptions {
    /// Nodes after the root (1..=[`MAX_HOPS`]).
    pub hops: usize,
    pub iterations: u64,
    pub warmup: u64,
    /// The program the nodes and relays run as: this am-node (`std::env::current_exe()`).
    pub exe: PathBuf,
    /// How long the nodes may take to start and link up.
    pub ready_timeout: Duration,
    /// Each node's runtime threads (`am-node run --threads`); `None`: run's default.
    pub node_threads: Option<usize>,
    /// Idle clients of every node (mirrors of this process that only read its changes), each
    /// node's connected before the next node starts: a tree with leaf clients at every node.
    /// At most [`MAX_CLIENTS_PER_NODE`].
    pub clients_per_node: usize,
}

/// The most idle clients per node (every one is a descriptor here and at its node).
pub const MAX_CLIENTS_PER_NODE: usize = 2000;

/// Latency to one depth: from the mutation sent at the root to the change seen by a client of
/// that depth's node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessDepth {
    /// 0: the root itself (a second client of it); k: node k of the chain.
    pub depth: usize,
    pub latency: Percentiles,
    /// What each hop adds: (p50 here - p50 at depth 0) / depth; `None` at depth 0.
    pub per_hop_p50_us: Option<f64>,
    /// The floor to the same depth: bare TCP through as many relay processes.
    pub floor: Percentiles,
    pub floor_per_hop_p50_us: Option<f64>,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessChainReport {
    pub scenario: &'static str,
    pub transport: &'static str,
    /// Node processes (the root and `hops` mirrors).
    pub processes: usize,
    pub iterations: u64,
    pub propagation: Vec<ProcessDepth>,
    /// The mutation at the root: sent to its `Executed` reply.
    pub ack: Percentiles,
    /// A mutation from a client of the deepest node to the root and its reply back.
    pub round_trip: Percentiles,
    /// Links one way of the round trip (the client's and the chain's).
    pub round_trip_hops: usize,
    /// Idle clients at every node besides the bench's observer.
    pub clients_per_node: usize,
}

/// The table `am-node bench chain --processes` prints: a row per depth, then the root's
/// acknowledgement and the round trip from the deepest node.
impl std::fmt::Display for ProcessChainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        writeln!(
            f,
            "{:<11} {:>5} {:>9} {:>9} {:>9} {:>12} {:>10} {:>10} {:>10}",
            "scenario",
            "depth",
            "p50 us",
            "p99 us",
            "max us",
            "per-hop p50",
            "floor p50",
            "floor p99",
            "floor/hop"
        )?;
        for d in &self.propagation {
            writeln!(
                f,
                "{:<11} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>12} {:>10.1} {:>10.1} {:>10}",
                "chain-procs",
                d.depth,
                d.latency.p50_us,
                d.latency.p99_us,
                d.latency.max_us,
                opt(d.per_hop_p50_us),
                d.floor.p50_us,
                d.floor.p99_us,
                opt(d.floor_per_hop_p50_us)
            )?;
        }
        writeln!(
            f,
            "{:<11} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>12} {:>10} {:>10} {:>10}",
            "ack", 0, self.ack.p50_us, self.ack.p99_us, self.ack.max_us, "-", "-", "-", "-"
        )?;
        writeln!(
            f,
            "{:<11} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>12.1} {:>10} {:>10} {:>10}",
            "roundtrip",
            self.round_trip_hops,
            self.round_trip.p50_us,
            self.round_trip.p99_us,
            self.round_trip.max_us,
            self.round_trip.p50_us / (2 * self.round_trip_hops) as f64,
            "-",
            "-",
            "-"
        )?;
        writeln!(
            f,
            "({} node processes, {} idle clients at each; depth 0 is a client of the root; per-hop = (p50 - depth 0's p50) / depth; roundtrip per-hop = p50 / links both ways)",
            self.processes, self.clients_per_node
        )
    }
}

/// The topology the nodes run: `n0` serves a root machine with a multi state `Tick`, each
/// `nK` mirrors `n(K-1)`'s machine and serves it again.
fn topology(ports: &[u16], clients_per_node: usize) -> String {
    // The observer, the next node, the mutator and the round trip's client, and room.
    let max_clients = clients_per_node + 16;
    let mut text = String::from(
        "# Written by `am-node bench chain --processes`; removed when it ends.\n\
         [schemas.tick]\n\
         states = [{ name = \"Tick\", multi = true }]\n",
    );
    for (k, port) in ports.iter().enumerate() {
        let machine = if k == 0 {
            format!("{{ name = \"{MACHINE}\", schema = \"tick\" }}")
        } else {
            format!("{{ name = \"{MACHINE}\", upstream = \"n{}\" }}", k - 1)
        };
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"n{k}\"\nlisten = [\"tcp://127.0.0.1:{port}\"]\nlimits = {{ max_clients = {max_clients} }}\nmachines = [{machine}]\n"
        ));
    }
    text
}

/// A client of the bench: no schema of its own (it takes the node's), quick to give up a
/// connection attempt while the node starts.
fn client(id: &str) -> MirrorConfig {
    MirrorConfig {
        client_id: id.to_owned(),
        connect_timeout: Duration::from_secs(1),
        keepalive: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(7200),
        ..MirrorConfig::default()
    }
}

/// Runs the scenario: starts the nodes, measures, measures the floor, stops them all.
pub async fn run(
    options: &ProcessChainOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<ProcessChainReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    let hops = options.hops.clamp(1, MAX_HOPS);
    let total = options.warmup + options.iterations;
    let mut children = Children::new(options.exe.clone(), "chain")?;

    let ports = (0..=hops)
        .map(|_| free_port())
        .collect::<Result<Vec<_>, _>>()?;
    let file = children.dir().join("chain.toml");
    let clients_per_node = options.clients_per_node.min(MAX_CLIENTS_PER_NODE);
    std::fs::write(&file, topology(&ports, clients_per_node))
        .map_err(|e| setup(&format!("writing {}", file.display()), &e))?;

    // Root first, each node up (a client got in) before the next starts: a mirror then finds
    // its upstream at its first attempt instead of backing off.
    let mut observers = Vec::with_capacity(hops + 1);
    let mut idle_clients = Vec::with_capacity((hops + 1) * clients_per_node);
    for (k, port) in ports.iter().enumerate() {
        let name = format!("n{k}");
        let args = node_args(&file, &name, options.node_threads);
        children.spawn(&name, &args, false)?;
        let endpoint =
            Endpoint::new(Scheme::Tcp, format!("127.0.0.1:{port}")).with_machine(MACHINE);
        let config = client(&format!("bench-depth-{k}"));
        let mirror = retry_until(
            &mut children,
            options.ready_timeout,
            &format!("node {name}"),
            || Mirror::connect(&endpoint, config.clone()),
        )
        .await?;
        observers.push(mirror);
        for i in 0..clients_per_node {
            let idle = Mirror::connect(&endpoint, client(&format!("bench-client-{k}-{i}")))
                .await
                .map_err(|e| setup(&format!("connecting idle client {i} of node {name}"), &e))?;
            idle_clients.push(idle);
        }
    }
    let root_at =
        Endpoint::new(Scheme::Tcp, format!("127.0.0.1:{}", ports[0])).with_machine(MACHINE);
    let mutator = Mirror::connect(&root_at, client("bench-mutator"))
        .await
        .map_err(|e| setup("connecting to the root", &e))?;
    let tick = mutator
        .schema()
        .index("Tick")
        .ok_or_else(|| setup("the root's schema", &"no Tick"))?;

    // The chain is linked when the first Tick has reached every depth.
    let first = mutator.add(&["Tick"], Args::new()).await;
    if first != Ok(Outcome::Executed) {
        return Err(setup("the first Tick", &format!("{first:?}")));
    }
    for (depth, mirror) in observers.iter().enumerate() {
        tokio::time::timeout(options.ready_timeout, mirror.when(&["Tick"]))
            .await
            .map_err(|_| {
                setup(
                    "linking the chain",
                    &format!("depth {depth} never saw the first Tick"),
                )
            })?
            .map_err(|e| setup("linking the chain", &e))?;
        children.check()?;
    }

    let arrivals: Vec<Arc<Arrival>> = observers.iter().map(|m| Arrival::watch(m, tick)).collect();
    let mut samples = vec![Vec::with_capacity(options.iterations as usize); hops + 1];
    let mut acks = Vec::with_capacity(options.iterations as usize);
    // Tick is multi: once active, every add is a new activation, +2.
    let mut target = mutator.tick_at(tick);
    let every = (total / 10).max(1);
    let phases = 3 * total;
    for i in 0..total {
        target += 2;
        for a in &arrivals {
            a.arm(target);
        }
        let started = Instant::now();
        let acked = async {
            let outcome = mutator.add(&["Tick"], Args::new()).await;
            (outcome, Instant::now())
        };
        let seen = tokio::time::timeout(CHANGE_TIMEOUT, async {
            let mut at = Vec::with_capacity(arrivals.len());
            for a in &arrivals {
                at.push(a.wait().await);
            }
            at
        });
        let ((outcome, acked_at), seen) = tokio::join!(acked, seen);
        let fail = |reason: String| BenchError::Scenario { at: i, reason };
        if outcome != Ok(Outcome::Executed) {
            children.check()?;
            return Err(fail(format!("the root answered {outcome:?}")));
        }
        let Ok(seen) = seen else {
            children.check()?;
            return Err(fail("a depth never saw the change".into()));
        };
        if i >= options.warmup {
            acks.push(acked_at - started);
            for (depth, at) in seen.into_iter().enumerate() {
                samples[depth].push(at - started);
            }
        }
        if (i + 1) % every == 0 {
            progress(i + 1, phases);
        }
    }
    for a in &arrivals {
        a.arm(u64::MAX);
    }

    // From a client of the deepest node to the root and back.
    let deepest = observers
        .last()
        .ok_or_else(|| setup("chain", &"no nodes"))?;
    let mut round_trips = Vec::with_capacity(options.iterations as usize);
    for i in 0..total {
        let started = Instant::now();
        let outcome = tokio::time::timeout(CHANGE_TIMEOUT, deepest.add(&["Tick"], Args::new()))
            .await
            .map_err(|_| format!("no reply within {CHANGE_TIMEOUT:?}"))
            .and_then(|o| o.map_err(|e| e.to_string()));
        if outcome != Ok(Outcome::Executed) {
            children.check()?;
            return Err(BenchError::Scenario {
                at: i,
                reason: format!("the round trip returned {outcome:?}"),
            });
        }
        if i >= options.warmup {
            round_trips.push(started.elapsed());
        }
        if (i + 1) % every == 0 {
            progress(total + i + 1, phases);
        }
    }
    mutator.close().await;
    for mirror in observers.iter().chain(&idle_clients) {
        mirror.close().await;
    }
    children.stop().await;

    let floors = floor(&mut children, hops, total, options, &|done: u64| {
        progress(2 * total + done, phases)
    })
    .await?;
    children.stop().await;

    let reference = Percentiles::of(&mut samples[0]).p50_us;
    let floor_reference = floors.first().map_or(0.0, |f| f.p50_us);
    let propagation = samples
        .iter_mut()
        .zip(floors)
        .enumerate()
        .map(|(depth, (s, floor))| {
            let latency = Percentiles::of(s);
            let per_hop =
                |p50: f64, reference: f64| (depth > 0).then(|| (p50 - reference) / depth as f64);
            ProcessDepth {
                depth,
                per_hop_p50_us: per_hop(latency.p50_us, reference),
                latency,
                floor_per_hop_p50_us: per_hop(floor.p50_us, floor_reference),
                floor,
            }
        })
        .collect();
    Ok(ProcessChainReport {
        scenario: "chain-processes",
        transport: "tcp",
        processes: hops + 1,
        iterations: options.iterations,
        propagation,
        ack: Percentiles::of(&mut acks),
        round_trip: Percentiles::of(&mut round_trips),
        round_trip_hops: hops + 1,
        clients_per_node,
    })
}

/// The floor: relay processes `hop0 -> hop1 -> ... -> hopN`, this process writing at hop0 and
/// reading at every one; per depth, the percentiles of a message's arrival.
async fn floor(
    children: &mut Children,
    hops: usize,
    total: u64,
    options: &ProcessChainOptions,
    progress: &dyn Fn(u64),
) -> Result<Vec<Percentiles>, BenchError> {
    let io = |what: &str, e: std::io::Error| BenchError::Setup(format!("floor, {what}: {e}"));
    let mut relays: Vec<SocketAddr> = Vec::with_capacity(hops + 1);
    for k in 0..=hops {
        let name = format!("hop{k}");
        let mut args = vec!["bench".to_owned(), "chain-hop".to_owned()];
        if let Some(up) = relays.last() {
            args.extend(["--upstream".to_owned(), up.to_string()]);
        }
        let pipes = children
            .spawn(&name, &args, true)?
            .ok_or_else(|| BenchError::Setup(format!("{name} has no standard output")))?;
        let line = first_line(pipes.stdout, options.ready_timeout, &name).await;
        children.check()?;
        let addr = line?
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::Setup(format!("{name} printed no `listening ADDR`")))?;
        relays.push(addr);
    }

    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut readers = Vec::with_capacity(hops + 1);
    for (depth, addr) in relays.iter().enumerate() {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| io("connecting", e))?;
        stream.set_nodelay(true).map_err(|e| io("nodelay", e))?;
        stream
            .write_all(&[READER])
            .await
            .map_err(|e| io("registering", e))?;
        let mut ack = [0u8; 1];
        stream
            .read_exact(&mut ack)
            .await
            .map_err(|e| io("registering", e))?;
        let tx = arrived_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut message = [0u8; MESSAGE];
            while stream.read_exact(&mut message).await.is_ok() {
                if tx.send((depth, Instant::now())).is_err() {
                    break;
                }
            }
        }));
    }
    let mut writer = TcpStream::connect(relays[0])
        .await
        .map_err(|e| io("connecting", e))?;
    writer.set_nodelay(true).map_err(|e| io("nodelay", e))?;
    writer
        .write_all(&[WRITER])
        .await
        .map_err(|e| io("registering", e))?;

    let mut samples = vec![Vec::with_capacity(options.iterations as usize); hops + 1];
    let every = (total / 10).max(1);
    for i in 0..total {
        let started = Instant::now();
        writer
            .write_all(&[7u8; MESSAGE])
            .await
            .map_err(|e| io("writing", e))?;
        for _ in 0..=hops {
            let arrived = tokio::time::timeout(CHANGE_TIMEOUT, arrived_rx.recv()).await;
            let Ok(Some((depth, at))) = arrived else {
                children.check()?;
                return Err(BenchError::Scenario {
                    at: i,
                    reason: "a floor message never arrived".into(),
                });
            };
            if i >= options.warmup {
                samples[depth].push(at - started);
            }
        }
        if (i + 1) % every == 0 {
            progress(i + 1);
        }
    }
    for reader in readers {
        reader.abort();
    }
    Ok(samples.iter_mut().map(|s| Percentiles::of(s)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_is_a_chain_that_loads() {
        let text = topology(&[7000, 7001, 7002], 100);
        let dir = std::env::temp_dir().join(format!("am-chain-topology-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("chain.toml");
        std::fs::write(&file, &text).expect("write");
        let loaded = asyncmachine::topology::load(&file);
        let _ = std::fs::remove_dir_all(&dir);
        let topology = loaded.expect("the written topology loads");
        let names: Vec<_> = topology.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n0", "n1", "n2"]);
        for node in &topology.nodes {
            assert_eq!(node.limits.max_clients, 116, "room for the idle clients");
        }
        assert_eq!(topology.nodes[0].downstream, ["n1"], "pushed to first");
    }
}
