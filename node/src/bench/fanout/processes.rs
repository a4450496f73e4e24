//! The fanout's root as a user deploys it (`am-node bench fanout --processes`): an `am-node run
//! FILE --node root` child process, from a topology file written for the run (with the TLS
//! material its listener needs), mutated as a client would: through one more connection to it,
//! the mutator. And, for the floor, the writing ends in a child process too (`am-node bench
//! fanout-root`, the `--split` root, whose server ends before the floor).
//!
//! The bench has no machine in the root's process, so a flip is the mutator's `add` (sent and
//! answered over the network), and the sustained run keeps [`WINDOW`] of the mutator's `add`s
//! in flight (the protocol takes many requests from one client before their answers).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;

use super::remote::RemoteRoot;
use super::root::{Sustained, rss_kib_of, wall_us};
use crate::bench::children::{Children, free_port, free_udp_port, node_args, retry_until};
use crate::bench::{BenchError, Percentiles};
use asyncmachine::machine::{Args, Outcome, StateSource as _};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::transport::{Endpoint, Scheme, TransportConfig};

/// The node's name in the topology file, and its child's.
const NODE: &str = "root";
/// The machine the node serves.
const MACHINE: &str = "fan";
/// The floor's writers' child.
const FLOOR: &str = "floor";
/// The sustained run's `add`s in flight at once.
pub const WINDOW: usize = 64;

/// How to run the root's process.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The program the root (and the floor's writers) run as: this am-node
    /// (`std::env::current_exe()`).
    pub exe: PathBuf,
    /// The node's `am-node run --threads`; `None`: run's default (1). The floor's writers get
    /// as many (1 without it).
    pub node_threads: Option<usize>,
    /// How long the node may take to start, and the floor's writers to say where they are.
    pub ready_timeout: Duration,
}

/// The root: an `am-node run` child process, and the mutator, a client of it.
pub(super) struct NodeRoot {
    children: Children,
    pub(super) endpoint: Endpoint,
    /// What a client needs to reach the node (its CA, for the TLS-based schemes).
    pub(super) transport: TransportConfig,
    mutator: Mirror,
    /// The position of `Tick`.
    tick: usize,
    options: NodeOptions,
}

/// The topology the root runs: one node serving a root machine with a multi state `Tick` at
/// `endpoint`, taking `max_clients`; `tls`: its certificate and key are `node.pem` and
/// `node.key` beside the file.
fn topology(listen: &Endpoint, max_clients: usize, tls: bool) -> String {
    let tls = if tls {
        "tls = { cert = \"node.pem\", key = \"node.key\" }\n"
    } else {
        ""
    };
    format!(
        "# Written by `am-node bench fanout --processes`; removed when it ends.\n\
         [schemas.tick]\n\
         states = [{{ name = \"Tick\", multi = true }}]\n\
         \n\
         [[nodes]]\n\
         name = \"{NODE}\"\n\
         listen = [\"{listen}\"]\n\
         limits = {{ max_clients = {max_clients} }}\n\
         {tls}\
         machines = [{{ name = \"{MACHINE}\", schema = \"tick\" }}]\n"
    )
}

impl NodeRoot {
    /// Writes the topology (and TLS material) for `scheme`, starts the node for `mirrors`
    /// mirrors, connects the mutator and activates `Tick` once (every flip after is then +2).
    pub(super) async fn start(
        scheme: Scheme,
        mirrors: usize,
        options: &NodeOptions,
    ) -> Result<NodeRoot, BenchError> {
        let setup =
            |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
        let mut children = Children::new(options.exe.clone(), "fanout")?;
        let write = |name: &str, text: &str| {
            let file = children.dir().join(name);
            std::fs::write(&file, text)
                .map_err(|e| setup(&format!("writing {}", file.display()), &e))
                .map(|()| file)
        };
        let port = match scheme {
            Scheme::Quic => free_udp_port()?,
            _ => free_port()?,
        };
        let listen = Endpoint::new(scheme, format!("127.0.0.1:{port}"));
        let tls = crate::bench::BenchTls::for_scheme(scheme)?;
        let transport = match &tls {
            Some(tls) => {
                write("node.pem", &tls.node_pem.cert)?;
                write("node.key", &tls.node_pem.key)?;
                crate::bench::trusting(&tls.ca_pem)?
            }
            None => TransportConfig::default(),
        };
        // The mirrors, the mutator, and room for a stray client.
        let file = write(
            "fanout.toml",
            &topology(&listen, mirrors + 16, tls.is_some()),
        )?;

        let args = node_args(&file, NODE, options.node_threads);
        children.spawn(NODE, &args, false)?;
        let endpoint = listen.with_machine(MACHINE);
        let config = MirrorConfig {
            client_id: "bench-mutator".into(),
            connect_timeout: Duration::from_secs(1),
            transport: transport.clone(),
            ..MirrorConfig::default()
        };
        let mutator = retry_until(
            &mut children,
            options.ready_timeout,
            &format!("node {NODE}"),
            || Mirror::connect(&endpoint, config.clone()),
        )
        .await?;
        let tick = mutator
            .schema()
            .index("Tick")
            .ok_or_else(|| setup("the root's schema", &"no Tick"))?;
        let mut root = NodeRoot {
            children,
            endpoint,
            transport,
            mutator,
            tick,
            options: options.clone(),
        };
        root.flip(0).await?;
        Ok(root)
    }

    /// An error naming the root's process when it has died (with its last words), else `Ok`.
    pub(super) fn check(&mut self) -> Result<(), BenchError> {
        self.children.check()
    }

    /// Flips the root once through the mutator; returns with the root's answer.
    pub(super) async fn flip(&mut self, at: u64) -> Result<(), BenchError> {
        let outcome = self.mutator.add(&["Tick"], Args::new()).await;
        if outcome == Ok(Outcome::Executed) {
            return Ok(());
        }
        self.check()?;
        Err(BenchError::Scenario {
            at,
            reason: format!("the root answered the mutator's flip with {outcome:?}"),
        })
    }

    /// The mutator sends `add`s for `duration`, [`WINDOW`] in flight (a new one as each answer
    /// comes), and then waits for the last answers. Each `add` is a batch of its own, stamped
    /// when it is queued with the root's tick before it: the tick before the run plus 2 per
    /// `add` queued before (each `add` of the active multi state `Tick` is +2, and nobody else
    /// mutates the root; checked against the mutator's clock at the end). The root ran it
    /// between that stamp and its answer: the answers come back too (`answered`), and how long
    /// each took (`answer_p99_us`).
    pub(super) async fn sustain(&mut self, duration: Duration) -> Result<Sustained, BenchError> {
        let first = self.mutator.tick_at(self.tick);
        let mut done = Sustained::default();
        let mut answers = Vec::new();
        let mut answered = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut sent: u64 = 0;
        let started = Instant::now();
        loop {
            while in_flight.len() < WINDOW && started.elapsed() < duration {
                done.batches.push((wall_us(), first + 2 * sent));
                answered.push((0, first + 2 * sent));
                let add = self.mutator.add(&["Tick"], Args::new());
                let (queued, i) = (Instant::now(), answered.len() - 1);
                in_flight.push(async move { (add.await, queued.elapsed(), i) });
                sent += 1;
            }
            match in_flight.next().await {
                None => break,
                Some((Ok(Outcome::Executed), took, i)) => {
                    done.mutations += 1;
                    answers.push(took);
                    if let Some((at, _)) = answered.get_mut(i) {
                        *at = wall_us();
                    }
                }
                Some((outcome, _, _)) => {
                    self.check()?;
                    return Err(BenchError::Scenario {
                        at: done.mutations,
                        reason: format!("the root answered a sustained mutation with {outcome:?}"),
                    });
                }
            }
        }
        // Every answer carried the clock up to its mutation: the mutator now holds the root's.
        done.final_tick = self.mutator.tick_at(self.tick);
        if done.final_tick != first + 2 * sent {
            return Err(BenchError::Setup(format!(
                "the root's Tick went from {first} to {} over {sent} adds, not +2 each: the \
                 lag stamps would be wrong",
                done.final_tick
            )));
        }
        done.answer_p99_us = Some(Percentiles::of(&mut answers).p99_us);
        done.answered = Some(answered);
        Ok(done)
    }

    /// The resident memory of the root's process, KiB, when it can tell.
    pub(super) fn rss_kib(&self) -> Option<u64> {
        rss_kib_of(self.children.pid(NODE)?)
    }

    /// Ends the mutator and the root's process, and starts the floor's writers in a process of
    /// their own (as the root's writers were): `am-node bench fanout-root` for `mirrors`
    /// bare connections.
    pub(super) async fn floor_writers(&mut self, mirrors: usize) -> Result<RemoteRoot, BenchError> {
        self.mutator.close().await;
        self.children.stop().await;
        let threads = self.options.node_threads.unwrap_or(1).to_string();
        let mirrors = mirrors.to_string();
        let args = [
            "bench",
            "fanout-root",
            "--transport",
            "tcp",
            "--mirrors",
            &mirrors,
            "--threads",
            &threads,
        ];
        let pipes = self.children.spawn(FLOOR, args, true)?.ok_or_else(|| {
            BenchError::Setup("the floor's writers have no standard input or output".into())
        })?;
        let replies = tokio::io::BufReader::new(pipes.stdout);
        let started = tokio::time::timeout(
            self.options.ready_timeout,
            RemoteRoot::start(pipes.stdin, replies, ()),
        )
        .await;
        match started {
            Ok(Ok(writers)) => Ok(writers),
            Ok(Err(e)) => {
                self.check()?;
                Err(e)
            }
            Err(_) => {
                self.check()?;
                Err(BenchError::Setup(format!(
                    "the floor's writers said nothing within {:?}",
                    self.options.ready_timeout
                )))
            }
        }
    }

    /// Ends every child process (the root's, the floor's writers).
    pub(super) async fn stop(&mut self) {
        self.mutator.close().await;
        self.children.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topology_loads_for_every_scheme() {
        let dir = std::env::temp_dir().join(format!("am-fanout-topology-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for scheme in [
            Scheme::Tcp,
            Scheme::Tls,
            Scheme::Quic,
            Scheme::Ws,
            Scheme::Wss,
        ] {
            let tls = !matches!(scheme, Scheme::Tcp | Scheme::Ws);
            let listen = Endpoint::new(scheme, "127.0.0.1:7000");
            let file = dir.join("fanout.toml");
            std::fs::write(&file, topology(&listen, 42, tls)).expect("write");
            let topology = asyncmachine::topology::load(&file)
                .unwrap_or_else(|e| panic!("{scheme:?}: the written topology loads: {e}"));
            let node = &topology.nodes[0];
            assert_eq!(node.name, NODE);
            assert_eq!(node.listen, [listen]);
            assert_eq!(node.limits.max_clients, 42);
            assert_eq!(node.tls.is_some(), tls, "{scheme:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
