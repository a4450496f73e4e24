//! The command line's arguments, per command.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use asyncmachine::transport::{Endpoint, Scheme, TlsConfig, TransportConfig};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub(crate) struct FaultProxyArgs {
    /// Where to forward: host:port.
    pub(crate) target: std::net::SocketAddr,
}

#[derive(Debug, Args)]
pub(crate) struct DiagramArgs {
    /// The topology file (TOML), e.g. topologies/demo.toml.
    pub(crate) file: PathBuf,
    /// Output format: svg (laid out, to open in a browser), mermaid or dot (text for other
    /// tools: a Markdown page, Graphviz).
    #[arg(long, value_enum, default_value = "svg")]
    pub(crate) format: DiagramFormat,
    /// Only this machine's schema (MACHINE or NODE/MACHINE), without the tree.
    #[arg(long, conflicts_with = "tree")]
    pub(crate) machine: Option<String>,
    /// Only the tree (nodes, machines, who mirrors whom), without the schemas.
    #[arg(long)]
    pub(crate) tree: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum DiagramFormat {
    Svg,
    Mermaid,
    Dot,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The topology file (TOML), e.g. topologies/demo.toml.
    pub(crate) file: PathBuf,
    /// Run only this node (repeatable): one file deploys a tree across hosts.
    #[arg(long = "node")]
    pub(crate) nodes: Vec<String>,
    /// Print what the nodes hold this often (milliseconds); 0 for never.
    #[arg(long, default_value_t = 1000)]
    pub(crate) report_ms: u64,
    /// Send telemetry of every machine of every node to this collector (`am-node dbg`), e.g.
    /// tcp://127.0.0.1:6831; overrides the file's `debug` and AM_DEBUG.
    #[arg(long, value_name = "ADDR")]
    pub(crate) debug: Option<String>,
    /// Runtime threads. 1 (the default) runs every node of this process on one thread: a
    /// change crosses no thread on its way through a node, which measured fastest (a chain of
    /// processes: about half the root's latency of 2 threads; BENCHMARKS.md, "Runtime shape").
    /// More spread the connections of many clients over that many threads.
    #[arg(long, default_value_t = RUN_THREADS, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) threads: u16,
}

/// `am-node run`'s runtime threads unless `--threads` says otherwise.
pub(crate) const RUN_THREADS: u16 = 1;

#[derive(Debug, Args)]
pub(crate) struct DbgArgs {
    /// Where nodes send telemetry (host:port; a node's `debug` is tcp://THIS).
    #[arg(long, default_value = "127.0.0.1:6831")]
    pub(crate) listen: String,
    /// Where the web console is served (host:port).
    #[arg(long, default_value = "127.0.0.1:6832")]
    pub(crate) console: String,
    /// Most entries kept in memory; the oldest go first.
    #[arg(long, default_value_t = asyncmachine::telemetry::history::DEFAULT_MAX_ENTRIES)]
    pub(crate) max_entries: usize,
    /// Start from a dump written by --export (TELEMETRY.md describes the format).
    #[arg(long, value_name = "FILE")]
    pub(crate) import: Option<PathBuf>,
    /// Write the history to FILE (zstd-compressed JSON lines) every --export-every seconds
    /// and when stopped.
    #[arg(long, value_name = "FILE")]
    pub(crate) export: Option<PathBuf>,
    /// How often --export writes, in seconds.
    #[arg(long, default_value_t = 30)]
    pub(crate) export_every: u64,
}

/// TLS material for tls://, quic:// and wss:// endpoints.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// PEM CA to verify the server with.
    #[arg(long, global = true)]
    pub(crate) ca: Option<PathBuf>,
    /// PEM certificate to present (mutual TLS); with --key.
    #[arg(long, global = true, requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
}

impl TlsArgs {
    /// The transport for `endpoint`: TLS-based schemes need --ca to verify the server.
    pub(crate) fn transport(&self, endpoint: &Endpoint) -> anyhow::Result<TransportConfig> {
        if self.ca.is_none() && matches!(endpoint.scheme, Scheme::Tls | Scheme::Quic | Scheme::Wss)
        {
            bail!(
                "{}:// needs the CA that signed the server's certificate: pass --ca FILE (ca.pem from `am-node certs`), and --cert and --key if the server requires a client certificate",
                endpoint.scheme.as_str()
            );
        }
        if self.ca.is_none() && self.cert.is_none() {
            return Ok(TransportConfig::default());
        }
        let tls = TlsConfig::from_pem_files(
            self.cert.as_deref(),
            self.key.as_deref(),
            self.ca.as_deref(),
            false,
        )
        .context("cannot load the TLS files")?;
        Ok(TransportConfig::with_tls(tls))
    }
}

#[derive(Debug, Args)]
pub(crate) struct Connect {
    /// Where the machine is served: tcp://host:port/MACHINE (the machine may be left out when
    /// the node serves only one). Through am-relay: ws://relay:port/TARGET, with the relay's
    /// token as ?token=T when it differs from --token.
    pub(crate) endpoint: String,
    /// The server's token, if it needs one. Over ws:// and wss:// it also goes in the
    /// WebSocket upgrade (?token=), which is where am-relay looks for its token.
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// The client id to present: what the node's `acl.allow`, `see` and `mutate` lists name
    /// (default: am-node-COMMAND-PID). Under mutual TLS the certificate's name wins.
    #[arg(long)]
    pub(crate) id: Option<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(crate) connect: Connect,
    /// Print the current states once and exit.
    #[arg(long)]
    pub(crate) once: bool,
    /// Exit (code 0) once this state is active.
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// Give up (exit code 1) after this long: seconds, or e.g. 2.5s, 500ms, 2m.
    #[arg(long, value_parser = parse_timeout)]
    pub(crate) timeout: Option<std::time::Duration>,
    /// Print every tick, not just the active states.
    #[arg(long)]
    pub(crate) ticks: bool,
}

#[derive(Debug, Args)]
pub(crate) struct MutateArgs {
    #[command(flatten)]
    pub(crate) connect: Connect,
    /// The states to mutate.
    #[arg(required = true)]
    pub(crate) states: Vec<String>,
    /// An argument for the handlers, key=value (repeatable); numbers and true/false are typed.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    pub(crate) args: Vec<String>,
    /// How long to wait for the machine to be reachable (connecting, and the mutation waiting
    /// for a link that is down): seconds (5, 2.5) or with a unit (500ms, 3s, 1m). The mutation
    /// runs once however often it is retried.
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    pub(crate) timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub(crate) struct ReplArgs {
    /// Machines to mirror: tcp://host:port/MACHINE (or tls://, quic://, ws://, wss://). Each
    /// is named after its MACHINE part (demo, demo-2, ...); the first is selected.
    #[arg(required = true)]
    pub(crate) endpoints: Vec<String>,
    /// The servers' token, if they need one (also the WebSocket upgrade's, as for `watch`).
    #[arg(long)]
    pub(crate) token: Option<String>,
    /// The client id to present (default: am-node-repl-PID).
    #[arg(long)]
    pub(crate) id: Option<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// How long `when`, `when-not`, `when-time` and `watch --until` wait without their own
    /// --timeout: seconds (5, 2.5) or with a unit (500ms, 3s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_timeout)]
    pub(crate) timeout: std::time::Duration,
    /// The history file (default: $XDG_DATA_HOME/am-node/repl_history or
    /// ~/.local/share/am-node/repl_history); the last 1000 lines are kept.
    #[arg(long)]
    pub(crate) history: Option<PathBuf>,
    /// One command to run instead of a prompt, after `--`: prints its result and exits 0 on
    /// success, 3 when a mutation was canceled, 1 on errors (a timeout among them). E.g.
    /// `am-node repl tcp://127.0.0.1:7400/demo -- when Ready --timeout 5`.
    #[arg(last = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    am_node::repl::command::parse_duration(text)
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The node: tcp://host:port (or tls://, quic://, ws://, wss://).
    pub(crate) endpoint: String,
    /// The node's token (`acl.token` in its topology), if it needs one.
    #[arg(long)]
    pub(crate) token: Option<String>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CertsArgs {
    /// Where to write the files.
    pub(crate) dir: PathBuf,
    /// Names to issue certificates for (each name is the identity its certificate proves).
    #[arg(required = true)]
    pub(crate) names: Vec<String>,
    /// Replace the CA in DIR with a new one. Without it, a CA already in DIR (ca.pem, ca.key)
    /// signs the new certificates, so those it signed before keep verifying.
    #[arg(long)]
    pub(crate) new_ca: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
    /// subscribe-get-process: a mirror waits for Event, reads ValueN locally, calls CallOp
    /// synchronously; bytes counted by a TCP proxy between mirror and server.
    Sgp(SgpArgs),
    /// Propagation from a root through a chain of mirrors (1..N hops), and the round trip of a
    /// mutation from the deepest mirror to the root and back.
    Chain(ChainArgs),
    /// What am-relay costs: a small WebSocket echo through the relay against bare TCP, and the
    /// bulk rate of large messages bridged each way.
    Relay(RelayArgs),
    /// One server, N mirrors: convergence after a flip at the root, sustained throughput, lag.
    Fanout(FanoutArgs),
    /// Wire bytes of a large schema's handshake and of each single-state change, with and
    /// without zstd.
    Bytes(BytesArgs),
    /// The root side of `fanout --split`, run by it as a child process: serves the root,
    /// prints its endpoint, then follows commands on stdin.
    #[command(hide = true)]
    FanoutRoot(FanoutRootArgs),
    /// A relay of `chain --processes`'s floor, run by it as a child process: passes
    /// fixed-size messages on over bare TCP; prints `listening ADDR`.
    #[command(hide = true)]
    ChainHop(ChainHopArgs),
    /// The worker side of `sgp --processes`, run by it as a child process: serves the sgp
    /// worker, prints its endpoint, then follows commands on stdin.
    #[command(hide = true)]
    SgpWorker(SgpWorkerArgs),
    /// The timer of scripts/compare-redis.sh: times a chain of redis-server processes (the
    /// root's port first) as `chain --processes` times am-node's, from this program.
    RedisChain(RedisChainArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RedisChainArgs {
    /// The servers' ports on 127.0.0.1, the root's first, then each replica in chain order;
    /// keyspace notifications on (`notify-keyspace-events K$`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) ports: Vec<u16>,
    /// Measured writes.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) iterations: u64,
    /// Writes before measuring.
    #[arg(long, default_value_t = 200)]
    pub(crate) warmup: u64,
    #[command(flatten)]
    pub(crate) pin: PinArgs,
    /// Also print the result as one JSON object on the last line.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct SgpWorkerArgs {
    #[arg(long, default_value = "tcp")]
    pub(crate) transport: String,
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
}

#[derive(Debug, Args)]
pub(crate) struct ChainHopArgs {
    /// The relay to read from (none: the root relay, written to by the bench).
    #[arg(long)]
    pub(crate) upstream: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub(crate) struct FanoutRootArgs {
    #[arg(long)]
    pub(crate) mirrors: usize,
    #[arg(long, default_value = "tcp")]
    pub(crate) transport: String,
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
}

#[derive(Debug, Args)]
pub(crate) struct BytesArgs {
    /// States in the schema.
    #[arg(long, default_value_t = 200)]
    pub(crate) states: usize,
    /// Single-state changes to count.
    #[arg(long, default_value_t = 1000)]
    pub(crate) changes: u64,
    /// Transport between mirror and server: tcp, tls, quic, ws or wss.
    #[arg(long, default_value = "tcp")]
    pub(crate) transport: String,
    /// Also print the result as one JSON line at the end.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct FanoutArgs {
    /// Mirror counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100, 1000])]
    pub(crate) mirrors: Vec<usize>,
    /// Flips for the convergence figures.
    #[arg(long, default_value_t = 200)]
    pub(crate) flips: u64,
    /// Milliseconds of sustained mutation.
    #[arg(long, default_value_t = 2000)]
    pub(crate) sustained_ms: u64,
    /// Transport between mirrors and server: tcp, tls, quic, ws or wss.
    #[arg(long, default_value = "tcp")]
    pub(crate) transport: String,
    /// Tokio worker threads: with --split, of each process; with --processes, of this one (the
    /// mirrors and the mutating client; see --node-threads).
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
    /// Run the root and its server in a child process (it hands its CA to this one for the
    /// TLS-based transports): this process then needs one descriptor per mirror instead of
    /// two, which 10 000 TCP, TLS or WebSocket mirrors need here, and the root's writers and
    /// the mirrors' readers no longer share one scheduler.
    #[arg(long, conflicts_with = "processes")]
    pub(crate) split: bool,
    /// The root as deployed: an `am-node run FILE --node root` child process (from a topology
    /// file, and TLS material, written for the run), mutated through one more client
    /// connection to it (flips: one `add` at a time; sustained: 64 `add`s in flight); the
    /// mirrors here; the floor's writing ends in a child process. Every transport.
    #[arg(long)]
    pub(crate) processes: bool,
    /// With --processes: the root node's `am-node run --threads` (default: run's own default,
    /// 1).
    #[arg(long, value_name = "N", requires = "processes")]
    pub(crate) node_threads: Option<u16>,
    #[command(flatten)]
    pub(crate) pin: PinArgs,
    /// Also print the result as one JSON line at the end.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Echo round trips measured each way (direct and through the relay).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) round_trips: u64,
    /// Bytes per echo message.
    #[arg(long, default_value_t = 32)]
    pub(crate) message: usize,
    /// Bytes per bulk message.
    #[arg(long, default_value_t = 16 * 1024)]
    pub(crate) bulk_message: usize,
    /// MiB moved each way in the bulk runs.
    #[arg(long, default_value_t = 512)]
    pub(crate) bulk_mib: u64,
    /// Tokio worker threads; 1 runs client, relay and target on one thread.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Also print the result as one JSON line at the end.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also run the same harness through bridges in processes of their own: am-relay's
    /// binary, websocat 1.x and websockify, one table row each (a missing one is skipped,
    /// with how to install it: scripts/install-bench-tools.sh).
    #[arg(long)]
    pub(crate) compare: bool,
    /// am-relay's binary for --compare (default: $AM_BENCH_RELAY_BIN, then am-relay beside
    /// this program, then on PATH); `none` to skip it.
    #[arg(long, value_name = "PATH", requires = "compare")]
    pub(crate) relay_bin: Option<PathBuf>,
    /// websocat for --compare (default: $AM_BENCH_WEBSOCAT, then on PATH); `none` to skip it.
    #[arg(long, value_name = "PATH", requires = "compare")]
    pub(crate) websocat: Option<PathBuf>,
    /// websockify for --compare (default: $AM_BENCH_WEBSOCKIFY, then on PATH, then the venv
    /// scripts/install-bench-tools.sh makes); `none` to skip it.
    #[arg(long, value_name = "PATH", requires = "compare")]
    pub(crate) websockify: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) pin: PinArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ChainArgs {
    /// Mirrors in the chain.
    #[arg(long, default_value_t = 3)]
    pub(crate) hops: usize,
    /// Measured changes (and as many round trips).
    #[arg(long, default_value_t = 5_000)]
    pub(crate) iterations: u64,
    /// Changes before measuring.
    #[arg(long, default_value_t = 200)]
    pub(crate) warmup: u64,
    /// Transport between the nodes: tcp, tls, quic, ws or wss.
    #[arg(long, default_value = "tcp")]
    pub(crate) transport: String,
    /// Tokio worker threads; 1 runs every node on one thread. With --processes, the bench
    /// process's own (the nodes run as `am-node run` does).
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Every node its own `am-node run FILE --node NAME` process (from a topology file written
    /// for the run), this one a client: mutates at the root, observes a client of each node;
    /// the floor through as many bare-TCP relay processes. TCP only.
    #[arg(long)]
    pub(crate) processes: bool,
    /// With --processes: each node's `am-node run --threads` (default: run's own default).
    #[arg(long, value_name = "N", requires = "processes")]
    pub(crate) node_threads: Option<u16>,
    /// With --processes: N idle clients at every node besides the observer (mirrors here that
    /// only read), each node's connected before the next node starts: a tree whose nodes also
    /// serve leaf clients. Up to 2000.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "processes",
          value_parser = clap::value_parser!(u16).range(0..=2000))]
    pub(crate) clients_per_node: u16,
    #[command(flatten)]
    pub(crate) pin: PinArgs,
    /// Also print the result as one JSON object on the last line.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Where the benchmark runs.
#[derive(Debug, Args)]
pub(crate) struct PinArgs {
    /// Run on these CPUs only: a list like 0, 0,1 or 0-3. Set for this process before it starts
    /// any thread, so its threads and every child process it starts (nodes, relays) inherit it.
    #[arg(long, value_name = "CPUS")]
    pub(crate) pin: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SgpArgs {
    /// Measured loops.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) loops: u64,
    /// Loops before measuring.
    #[arg(long, default_value_t = 500)]
    pub(crate) warmup: u64,
    /// Transport between mirror and server: tcp, tls, quic, ws or wss.
    #[arg(long, default_value = "tcp")]
    pub(crate) transport: String,
    /// Ask for zstd compression.
    #[arg(long)]
    pub(crate) compression: bool,
    /// Mirror -> am-relay (ws) -> node (tcp) instead of mirror -> node.
    #[arg(long)]
    pub(crate) via_relay: bool,
    /// Tokio worker threads; 1 runs mirror, proxy and server on one thread (no cross-CPU
    /// wake-ups: the protocol's own cost). With --processes, each process's.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// The worker and its server in a child process of this program, the mirror here,
    /// connected directly (bytes: the mirror's counts, no proxy); the floor's echo in the
    /// worker's process. tcp or ws.
    #[arg(long, conflicts_with = "via_relay")]
    pub(crate) processes: bool,
    #[command(flatten)]
    pub(crate) pin: PinArgs,
    /// Also print the result as one JSON object on the last line.
    #[arg(long)]
    pub(crate) json: bool,
}
