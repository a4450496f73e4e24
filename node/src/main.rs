//! am-node: runs the nodes of a state-source tree, and the client tools around it.
//!
//! A thin layer over library functions (which tests call in-process): parse the command line,
//! run the function, print its result for a person (and with `--json`, for a program).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use asyncmachine::machine::{
    Args as MutationArgs, ClockChange, MutationKind, Outcome, StateSource,
};
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig};
use asyncmachine::printable::printable;
use asyncmachine::transport::{Endpoint, Scheme, TlsConfig, TransportConfig};
use clap::{Args, Parser, Subcommand};

/// Runs the nodes of an asyncmachine state-source tree: sources, mirrors and the listeners
/// that serve them; and watches, mutates and inspects them from the outside.
#[derive(Debug, Parser)]
#[command(name = "am-node", version, about, long_about = None)]
struct Cli {
    /// Log filter, as RUST_LOG (e.g. `info`, `asyncmachine=debug`).
    #[arg(long, global = true, default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the nodes of a topology file (all of them, or those named with --node) until
    /// Ctrl-C or SIGTERM.
    Run(RunArgs),
    /// Mirrors a machine and prints its active states whenever they change.
    Watch(WatchArgs),
    /// Activates states of a machine. Exit code 3 when canceled, 1 on errors.
    Add(MutateArgs),
    /// Deactivates states of a machine. Exit code 3 when canceled, 1 on errors.
    Remove(MutateArgs),
    /// Activates exactly these states of a machine. Exit code 3 when canceled, 1 on errors.
    Set(MutateArgs),
    /// Shows a node's machines, clients, upstreams and counters.
    Status(StatusArgs),
    /// Writes a development CA and certificates for the named nodes (or clients) into DIR:
    /// ca.pem, NAME.pem, NAME.key. For development and tests only.
    Certs(CertsArgs),
    /// Forwards TCP from a local port to TARGET and injects faults on command: prints the
    /// address it listens on, then reads lines on stdin: `pass`, `cut`, `stall`, `delay MS`,
    /// `reset`. For soak and fault tests (scripts/soak.py).
    FaultProxy(FaultProxyArgs),
    /// Runs benchmark scenarios over real sockets and prints a table.
    Bench {
        #[command(subcommand)]
        scenario: Scenario,
    },
}

#[derive(Debug, Args)]
struct FaultProxyArgs {
    /// Where to forward: host:port.
    target: std::net::SocketAddr,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The topology file (TOML), e.g. topologies/demo.toml.
    file: PathBuf,
    /// Run only this node (repeatable): one file deploys a tree across hosts.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Print what the nodes hold this often (milliseconds); 0 for never.
    #[arg(long, default_value_t = 1000)]
    report_ms: u64,
}

/// TLS material for tls://, quic:// and wss:// endpoints.
#[derive(Debug, Args)]
struct TlsArgs {
    /// PEM CA to verify the server with.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// PEM certificate to present (mutual TLS); with --key.
    #[arg(long, global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, requires = "cert")]
    key: Option<PathBuf>,
}

impl TlsArgs {
    /// The transport for `endpoint`: TLS-based schemes need --ca to verify the server.
    fn transport(&self, endpoint: &Endpoint) -> anyhow::Result<TransportConfig> {
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
struct Connect {
    /// Where the machine is served: tcp://host:port/MACHINE (the machine may be left out when
    /// the node serves only one). Through am-relay: ws://relay:port/TARGET, with the relay's
    /// token as ?token=T when it differs from --token.
    endpoint: String,
    /// The server's token, if it needs one. Over ws:// and wss:// it also goes in the
    /// WebSocket upgrade (?token=), which is where am-relay looks for its token.
    #[arg(long)]
    token: Option<String>,
    /// The client id to present: what the node's `acl.allow`, `see` and `mutate` lists name
    /// (default: am-node-COMMAND-PID). Under mutual TLS the certificate's name wins.
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Debug, Args)]
struct WatchArgs {
    #[command(flatten)]
    connect: Connect,
    /// Print the current states once and exit.
    #[arg(long)]
    once: bool,
    /// Exit (code 0) once this state is active.
    #[arg(long)]
    until: Option<String>,
    /// Give up (exit code 1) after this many seconds.
    #[arg(long)]
    timeout: Option<f64>,
    /// Print every tick, not just the active states.
    #[arg(long)]
    ticks: bool,
}

#[derive(Debug, Args)]
struct MutateArgs {
    #[command(flatten)]
    connect: Connect,
    /// The states to mutate.
    #[arg(required = true)]
    states: Vec<String>,
    /// An argument for the handlers, key=value (repeatable); numbers and true/false are typed.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The node: tcp://host:port (or tls://, quic://, ws://, wss://).
    endpoint: String,
    /// The node's token (`acl.token` in its topology), if it needs one.
    #[arg(long)]
    token: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Where to write the files.
    dir: PathBuf,
    /// Names to issue certificates for (each name is the identity its certificate proves).
    #[arg(required = true)]
    names: Vec<String>,
    /// Replace the CA in DIR with a new one. Without it, a CA already in DIR (ca.pem, ca.key)
    /// signs the new certificates, so those it signed before keep verifying.
    #[arg(long)]
    new_ca: bool,
}

#[derive(Debug, Subcommand)]
enum Scenario {
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
}

#[derive(Debug, Args)]
struct FanoutRootArgs {
    #[arg(long)]
    mirrors: usize,
    #[arg(long, default_value = "tcp")]
    transport: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Debug, Args)]
struct BytesArgs {
    /// States in the schema.
    #[arg(long, default_value_t = 200)]
    states: usize,
    /// Single-state changes to count.
    #[arg(long, default_value_t = 1000)]
    changes: u64,
    /// Transport between mirror and server: tcp, tls, quic, ws or wss.
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Also print the result as one JSON line at the end.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct FanoutArgs {
    /// Mirror counts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100, 1000])]
    mirrors: Vec<usize>,
    /// Flips for the convergence figures.
    #[arg(long, default_value_t = 200)]
    flips: u64,
    /// Milliseconds of sustained mutation.
    #[arg(long, default_value_t = 2000)]
    sustained_ms: u64,
    /// Transport between mirrors and server: tcp, tls, quic, ws or wss.
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Run the root and its server in a child process (it hands its CA to this one for the
    /// TLS-based transports): this process then needs one descriptor per mirror instead of
    /// two, which 10 000 TCP, TLS or WebSocket mirrors need here, and the root's writers and
    /// the mirrors' readers no longer share one scheduler.
    #[arg(long)]
    split: bool,
    /// Also print the result as one JSON line at the end.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// Echo round trips measured each way (direct and through the relay).
    #[arg(long, default_value_t = 20_000)]
    round_trips: u64,
    /// Bytes per echo message.
    #[arg(long, default_value_t = 32)]
    message: usize,
    /// Bytes per bulk message.
    #[arg(long, default_value_t = 16 * 1024)]
    bulk_message: usize,
    /// MiB moved each way in the bulk runs.
    #[arg(long, default_value_t = 512)]
    bulk_mib: u64,
    /// Tokio worker threads; 1 runs client, relay and target on one thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also print the result as one JSON line at the end.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ChainArgs {
    /// Mirrors in the chain.
    #[arg(long, default_value_t = 3)]
    hops: usize,
    /// Measured changes (and as many round trips).
    #[arg(long, default_value_t = 5_000)]
    iterations: u64,
    /// Changes before measuring.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Transport between the nodes: tcp, tls, quic, ws or wss.
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Tokio worker threads; 1 runs every node on one thread.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SgpArgs {
    /// Measured loops.
    #[arg(long, default_value_t = 10_000)]
    loops: u64,
    /// Loops before measuring.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Transport between mirror and server: tcp, tls, quic, ws or wss.
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Ask for zstd compression.
    #[arg(long)]
    compression: bool,
    /// Mirror -> am-relay (ws) -> node (tcp) instead of mirror -> node.
    #[arg(long)]
    via_relay: bool,
    /// Tokio worker threads; 1 runs mirror, proxy and server on one thread (no cross-CPU
    /// wake-ups: the protocol's own cost).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

/// Exit code of a mutation that was canceled.
const EXIT_CANCELED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_tracing(&cli.log) {
        let _ = writeln!(std::io::stderr(), "error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Run(args) => runtime(2).and_then(|rt| rt.block_on(run(&args))),
        Command::Watch(args) => runtime(1).and_then(|rt| rt.block_on(watch(&args))),
        Command::Add(args) => {
            runtime(1).and_then(|rt| rt.block_on(mutate(MutationKind::Add, &args)))
        }
        Command::Remove(args) => {
            runtime(1).and_then(|rt| rt.block_on(mutate(MutationKind::Remove, &args)))
        }
        Command::Set(args) => {
            runtime(1).and_then(|rt| rt.block_on(mutate(MutationKind::Set, &args)))
        }
        Command::Status(args) => runtime(1).and_then(|rt| rt.block_on(status(&args))),
        Command::Certs(args) => certs(&args),
        Command::FaultProxy(args) => runtime(1).and_then(|rt| rt.block_on(fault_proxy(&args))),
        Command::Bench {
            scenario: Scenario::Sgp(args),
        } => bench_sgp(&args),
        Command::Bench {
            scenario: Scenario::Chain(args),
        } => bench_chain(&args),
        Command::Bench {
            scenario: Scenario::Relay(args),
        } => bench_relay(&args),
        Command::Bench {
            scenario: Scenario::Fanout(args),
        } => bench_fanout(&args),
        Command::Bench {
            scenario: Scenario::Bytes(args),
        } => bench_bytes(&args),
        Command::Bench {
            scenario: Scenario::FanoutRoot(args),
        } => bench_fanout_root(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Errors quote what peers said (refusal reasons): no control character of theirs
            // reaches the terminal; the line breaks are ours (hints) and stay.
            let text = format!("{e:#}");
            let lines: Vec<_> = text.split('\n').map(printable).collect();
            let _ = writeln!(std::io::stderr(), "error: {}", lines.join("\n"));
            ExitCode::FAILURE
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let topology = asyncmachine::topology::load(&args.file)?;
    let running = asyncmachine::node::start_topology(&topology, &args.nodes).await?;
    let mut out = std::io::stdout();
    for node in running.nodes() {
        let listeners: Vec<String> = node.endpoints().iter().map(ToString::to_string).collect();
        let machines: Vec<&str> = node.machines().map(|(name, _)| name).collect();
        writeln!(
            out,
            "node {:<10} machines: {:<20} listening: {}",
            node.name(),
            machines.join(", "),
            if listeners.is_empty() {
                "-".into()
            } else {
                listeners.join(", ")
            }
        )?;
    }
    writeln!(
        out,
        "running {} node(s) from {}; Ctrl-C to stop",
        running.nodes().len(),
        args.file.display()
    )?;
    let report = async {
        if args.report_ms == 0 {
            return std::future::pending().await;
        }
        let mut every = tokio::time::interval(Duration::from_millis(args.report_ms));
        let mut last = Vec::new();
        loop {
            every.tick().await;
            let lines = running.report();
            if lines != last {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "--- {}", clock_time());
                for line in &lines {
                    let _ = writeln!(out, "{line}");
                }
                last = lines;
            }
        }
    };
    tokio::select! {
        _ = asyncmachine::node::shutdown_signal() => {}
        () = report => {}
    }
    writeln!(out, "shutting down")?;
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn clock_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

fn endpoint(text: &str) -> anyhow::Result<Endpoint> {
    text.parse()
        .with_context(|| format!("bad endpoint {text:?}"))
}

async fn connect_mirror(connect: &Connect, role: &str) -> anyhow::Result<Mirror> {
    let mut endpoint = endpoint(&connect.endpoint)?;
    if endpoint.upgrade_token.is_none() && matches!(endpoint.scheme, Scheme::Ws | Scheme::Wss) {
        // A relay checks its token at the upgrade, before any hello.
        endpoint.upgrade_token = connect.token.as_deref().map(Into::into);
    }
    let config = MirrorConfig {
        client_id: connect
            .id
            .clone()
            .unwrap_or_else(|| format!("am-node-{role}-{}", std::process::id())),
        token: connect.token.clone(),
        transport: connect.tls.transport(&endpoint)?,
        ..MirrorConfig::default()
    };
    let mirror = Mirror::connect(&endpoint, config).await;
    mirror.map_err(|e| {
        // am-relay refuses a missing or wrong token at the WebSocket upgrade, before any hello:
        // with close code 4401 (or, from an older relay, an HTTP 401).
        let text = e.to_string();
        let refused_upgrade = text.contains("(4401)") || text.contains("401 Unauthorized");
        let e = anyhow::Error::new(e).context(format!("cannot mirror {endpoint}"));
        if refused_upgrade {
            e.context(
                "the WebSocket upgrade was refused for its token (am-relay checks one): pass \
                 --token T, or write the relay's token in the endpoint as ?token=T",
            )
        } else {
            e
        }
    })
}

fn states_line(source: &dyn StateSource, ticks: bool) -> String {
    if ticks {
        let schema = source.schema();
        let clock = source.clock();
        schema
            .names()
            .zip(clock)
            .map(|(n, t)| format!("{}={t}", printable(n)))
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        let active = source.active_states();
        if active.is_empty() {
            "(none active)".to_owned()
        } else {
            printable(&active.join(" ")).into_owned()
        }
    }
}

async fn watch(args: &WatchArgs) -> anyhow::Result<ExitCode> {
    let mirror = connect_mirror(&args.connect, "watch").await?;
    if let Some(until) = &args.until
        && mirror.schema().index(until).is_none()
    {
        bail!(
            "unknown state {until:?}; the machine has: {}",
            printable(&mirror.schema().names().collect::<Vec<_>>().join(", "))
        );
    }
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{}  {}",
        clock_time(),
        states_line(&mirror, args.ticks)
    )?;
    if args.once {
        mirror.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    mirror.observe(Arc::new(move |_: &ClockChange<'_>| notify.notify_one()));
    let mut connection = mirror.connection_changes();
    let mut last_line = states_line(&mirror, args.ticks);
    let follow = async {
        loop {
            if let Some(until) = &args.until
                && mirror.is1(until)
            {
                return;
            }
            tokio::select! {
                () = changed.notified() => {
                    // A change of ticks alone (a multi state again) shows with --ticks.
                    let line = states_line(&mirror, args.ticks);
                    if line != last_line {
                        let _ = writeln!(std::io::stdout(), "{}  {line}", clock_time());
                        last_line = line;
                    }
                }
                Ok(()) = connection.changed() => {
                    let state = *connection.borrow_and_update();
                    let note = match state {
                        ConnState::Ready => "connected".to_owned(),
                        ConnState::Connecting => "connecting".to_owned(),
                        ConnState::Disconnected => format!("disconnected: {}", printable(&mirror.last_error().unwrap_or_default())),
                    };
                    let _ = writeln!(std::io::stdout(), "{}  ({note})", clock_time());
                }
            }
        }
    };
    let limit = args.timeout.map(Duration::from_secs_f64);
    let code = tokio::select! {
        () = follow => ExitCode::SUCCESS,
        _ = asyncmachine::node::shutdown_signal() => ExitCode::SUCCESS,
        () = async { match limit { Some(l) => tokio::time::sleep(l).await, None => std::future::pending().await } } => {
            let _ = writeln!(std::io::stderr(), "error: gave up after {:?}", limit.unwrap_or_default());
            ExitCode::FAILURE
        }
    };
    mirror.close().await;
    Ok(code)
}

async fn mutate(kind: MutationKind, args: &MutateArgs) -> anyhow::Result<ExitCode> {
    let mut mutation_args = MutationArgs::new();
    for arg in &args.args {
        let (key, value) = asyncmachine::machine::value::parse_arg(arg)?;
        mutation_args.insert(key, value);
    }
    let mirror = connect_mirror(&args.connect, "mutate").await?;
    let states: Vec<&str> = args.states.iter().map(String::as_str).collect();
    let result = mirror.mutate_named(kind, &states, mutation_args).await;
    let line = states_line(&mirror, false);
    mirror.close().await;
    let outcome = result.with_context(|| format!("{kind} {} failed", states.join(" ")))?;
    let mut out = std::io::stdout();
    writeln!(out, "{outcome:?}  now: {line}")?;
    Ok(match outcome {
        Outcome::Executed | Outcome::Queued => ExitCode::SUCCESS,
        Outcome::Canceled => ExitCode::from(EXIT_CANCELED),
    })
}

async fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let endpoint = endpoint(&args.endpoint)?;
    let status = asyncmachine::client::fetch_status(
        &endpoint,
        &args.tls.transport(&endpoint)?,
        args.token.clone(),
        Duration::from_secs(5),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&status).context("encoding the status")?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    // Every string here came from the node, and the client ids from its clients.
    writeln!(out, "node {}", printable(&status.node))?;
    writeln!(out, "machines:")?;
    for s in &status.sources {
        writeln!(
            out,
            "  {:<12} clients={:<4} queue={:<8} [{}]",
            printable(&s.name),
            s.clients,
            s.queue_tick,
            printable(&s.active.join(" "))
        )?;
        if let (Some(up), Some(state)) = (&s.upstream, &s.connection) {
            writeln!(
                out,
                "  {:<12} upstream {} ({}){}",
                "",
                printable(up),
                printable(state),
                s.last_error
                    .as_ref()
                    .map(|e| format!(": {}", printable(e)))
                    .unwrap_or_default()
            )?;
        }
    }
    writeln!(out, "clients:")?;
    if status.clients.is_empty() {
        writeln!(out, "  (none)")?;
    }
    for c in &status.clients {
        writeln!(
            out,
            "  {:<24} {:<12} {}",
            printable(&c.id),
            printable(&c.source),
            printable(&c.peer)
        )?;
    }
    writeln!(out, "counters:")?;
    for (name, value) in &status.counters {
        writeln!(out, "  {:<16} {value}", printable(name))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn fault_proxy(args: &FaultProxyArgs) -> anyhow::Result<ExitCode> {
    use am_node::fault::{Fault, FaultProxy};
    use tokio::io::AsyncBufReadExt as _;

    let proxy = FaultProxy::start(args.target)
        .await
        .context("starting the proxy on 127.0.0.1")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", proxy.addr)?;
    out.flush()?;
    drop(out);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading commands")? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["pass"] => proxy.set(Fault::Pass),
            ["cut"] => proxy.set(Fault::Cut),
            ["stall"] => proxy.set(Fault::Stall),
            ["reset"] => proxy.reset_all(),
            ["delay", ms] => {
                let ms: u64 = ms
                    .parse()
                    .with_context(|| format!("delay {ms:?}: not milliseconds"))?;
                proxy.set(Fault::Delay(Duration::from_millis(ms)));
            }
            [] => {}
            _ => bail!("unknown command {line:?}; use pass, cut, stall, delay MS or reset"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn certs(args: &CertsArgs) -> anyhow::Result<ExitCode> {
    use asyncmachine::certs::{CaOrigin, CaPolicy};
    let policy = if args.new_ca {
        CaPolicy::Replace
    } else {
        CaPolicy::Reuse
    };
    let certs = asyncmachine::certs::write_dev_certs(&args.dir, &args.names, policy).map_err(
        |e| match e.hint() {
            Some(hint) => anyhow::anyhow!("{e}\n  hint: {hint}"),
            None => anyhow::Error::new(e),
        },
    )?;
    let ca = args.dir.join("ca.pem");
    let note = match certs.ca {
        CaOrigin::Created => format!("made a new CA: {}", ca.display()),
        CaOrigin::Reused => format!(
            "signed with the CA already in {} (pass --new-ca to replace it)",
            ca.display()
        ),
        CaOrigin::Replaced => format!(
            "replaced the CA {}: certificates it signed before no longer verify",
            ca.display()
        ),
    };
    writeln!(std::io::stderr(), "{note}")?;
    let mut out = std::io::stdout().lock();
    for path in certs.written {
        writeln!(out, "wrote {}", path.display())?;
    }
    writeln!(
        out,
        "use them in a topology: tls = {{ cert = \"NAME.pem\", key = \"NAME.key\", ca = \"ca.pem\" }}"
    )?;
    Ok(ExitCode::SUCCESS)
}

fn bench_sgp(args: &SgpArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::sgp::{SgpOptions, run};
    let options = SgpOptions {
        loops: args.loops,
        warmup: args.warmup,
        compression: args.compression,
        transport: am_node::bench::scheme(&args.transport)?,
        via_relay: args.via_relay,
    };
    let progress = progress("sgp loops");
    let report = runtime(args.threads)?
        .block_on(run(&options, &progress))
        .context("bench sgp failed")?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    json_line(&mut out, args.json, &report)?;
    anyhow::ensure!(
        report.errors == 0,
        "the worker counted {} errors",
        report.errors
    );
    Ok(ExitCode::SUCCESS)
}

fn bench_chain(args: &ChainArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::chain::{ChainOptions, run};
    anyhow::ensure!((1..=16).contains(&args.hops), "--hops must be 1 to 16");
    let options = ChainOptions {
        hops: args.hops,
        iterations: args.iterations,
        warmup: args.warmup,
        transport: am_node::bench::scheme(&args.transport)?,
    };
    let progress = progress("chain");
    let report = runtime(args.threads)?
        .block_on(run(&options, &progress))
        .context("bench chain failed")?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    json_line(&mut out, args.json, &report)?;
    Ok(ExitCode::SUCCESS)
}

fn bench_relay(args: &RelayArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::relay::{RelayOptions, run};
    let options = RelayOptions {
        round_trips: args.round_trips,
        message: args.message,
        bulk_message: args.bulk_message,
        bulk_bytes: args.bulk_mib << 20,
    };
    let progress = progress("relay");
    let report = runtime(args.threads)?
        .block_on(run(&options, &progress))
        .context("bench relay failed")?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    json_line(&mut out, args.json, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the open-file limit to what `needed` descriptors require (root may raise the hard
/// limit too).
fn raise_nofile(needed: u64) -> anyhow::Result<()> {
    let (soft, hard) = rlimit::Resource::NOFILE
        .get()
        .context("cannot read the open-file limit")?;
    if soft >= needed {
        return Ok(());
    }
    let target = needed.max(soft);
    let result = if target <= hard {
        rlimit::Resource::NOFILE.set(target, hard)
    } else {
        rlimit::Resource::NOFILE.set(target, target)
    };
    result.with_context(|| {
        format!("{needed} file descriptors needed, the limit is {soft} (hard {hard}) and cannot be raised; run as root or raise `ulimit -n`")
    })
}

fn bench_fanout(args: &FanoutArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::fanout::{FanoutOptions, FanoutTable, run_with};
    use asyncmachine::transport::Scheme;
    let transport = am_node::bench::scheme(&args.transport)?;
    let largest = args.mirrors.iter().copied().max().unwrap_or(0) as u64;
    // Both ends of every connection live in this process unless split; QUIC needs one socket
    // per client and one for the server.
    let per_mirror = if transport == Scheme::Quic || args.split {
        1
    } else {
        2
    };
    raise_nofile(largest * per_mirror + 256)?;
    let rt = runtime(args.threads)?;
    let mut reports = Vec::new();
    for &mirrors in &args.mirrors {
        let options = FanoutOptions {
            mirrors,
            flips: args.flips,
            sustained: Duration::from_millis(args.sustained_ms),
            transport,
        };
        let progress = |done: u64, total: u64| {
            let end = if done == total { "\n" } else { "" };
            let _ = write!(
                std::io::stderr(),
                "\rfanout {mirrors}: {done}/{total} mirrors connected{end}"
            );
        };
        let report = rt.block_on(async {
            let remote = if args.split {
                Some(spawn_root(&args.transport, mirrors, args.threads).await?)
            } else {
                None
            };
            anyhow::Ok(run_with(&options, remote, &progress).await?)
        });
        reports
            .push(report.with_context(|| format!("bench fanout with {mirrors} mirrors failed"))?);
    }
    let mut out = std::io::stdout().lock();
    write!(out, "{}", FanoutTable(&reports))?;
    json_line(&mut out, args.json, &reports)?;
    Ok(ExitCode::SUCCESS)
}

/// The root of `bench fanout --split`: this same program, `bench fanout-root`, as a child
/// process driven over its stdin and stdout; killed when the root is dropped.
async fn spawn_root(
    transport: &str,
    mirrors: usize,
    threads: usize,
) -> anyhow::Result<am_node::bench::fanout::RemoteRoot> {
    let exe = std::env::current_exe().context("cannot find this program to run the root")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["bench", "fanout-root", "--transport", transport])
        .args(["--mirrors", &mirrors.to_string()])
        .args(["--threads", &threads.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the root's process")?;
    let (Some(commands), Some(replies)) = (child.stdin.take(), child.stdout.take()) else {
        anyhow::bail!("the root's process has no stdin or stdout");
    };
    let replies = tokio::io::BufReader::new(replies);
    am_node::bench::fanout::RemoteRoot::start(commands, replies, child)
        .await
        .context("starting the root's process")
}

fn bench_fanout_root(args: &FanoutRootArgs) -> anyhow::Result<ExitCode> {
    let transport = am_node::bench::scheme(&args.transport)?;
    raise_nofile(args.mirrors as u64 + 256)?;
    runtime(args.threads)?
        .block_on(am_node::bench::fanout::serve_remote_root(
            transport,
            args.mirrors,
            tokio::io::BufReader::new(tokio::io::stdin()),
            tokio::io::stdout(),
        ))
        .context("serving the fanout root")?;
    Ok(ExitCode::SUCCESS)
}

fn bench_bytes(args: &BytesArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.states > 0, "--states must be at least 1");
    let reports = runtime(1)?
        .block_on(am_node::bench::bytes::run(
            args.states,
            args.changes,
            am_node::bench::scheme(&args.transport)?,
        ))
        .context("bench bytes failed")?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", am_node::bench::bytes::BytesTable(&reports))?;
    json_line(&mut out, args.json, &reports)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints `label: done/total` on one stderr line (stdout stays the table and the JSON line).
fn progress(label: &'static str) -> impl Fn(u64, u64) {
    move |done, total| {
        let end = if done == total { "\n" } else { "" };
        let _ = write!(std::io::stderr(), "\r{label}: {done}/{total}{end}");
    }
}

/// Prints a report as one JSON line when asked.
fn json_line(
    out: &mut impl std::io::Write,
    json: bool,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(report).context("encoding the report")?
        )?;
    }
    Ok(())
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .with_context(|| {
            format!("invalid --log filter {filter:?}; try `info` or `asyncmachine=debug`")
        })?;
    use std::io::IsTerminal as _;
    // Colour codes only for a person at a terminal: a log file or a pipe gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Every visible argument of every visible command, with its help text, as `command --arg`.
    fn undocumented(command: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                out.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            if !sub.is_hide_set() {
                undocumented(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
    }

    #[test]
    fn every_argument_has_help_text() {
        let mut missing = Vec::new();
        undocumented(&Cli::command(), "am-node", &mut missing);
        assert!(missing.is_empty(), "no --help text: {missing:#?}");
    }
}
