//! am-relay: bridges browsers (WebSocket) into a state-source tree, and serves the demo page
//! and the JavaScript client. A thin layer over `asyncmachine::relay`.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use asyncmachine::relay::{Relay, RelayConfig, Target};
use asyncmachine::transport::{TlsConfig, TransportConfig};
use clap::Parser;

/// Bridges browsers into an asyncmachine state-source tree: WebSocket clients reach named
/// targets (tcp, tls or quic endpoints of nodes), never an arbitrary host. Serves a demo page
/// that mirrors a target live.
#[derive(Debug, Parser)]
#[command(name = "am-relay", version, about, long_about = None)]
struct Cli {
    /// A file with a `relay` table (its own, or a topology file such as topologies/browser.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where browsers connect: ws://host:port or wss://host:port.
    #[arg(long)]
    listen: Option<String>,
    /// A target NAME=ENDPOINT, e.g. demo=tcp://127.0.0.1:7400/demo (repeatable).
    #[arg(long = "target", value_name = "NAME=ENDPOINT")]
    targets: Vec<String>,
    /// An origin whose pages may connect, e.g. http://localhost:8000 (repeatable); the relay's
    /// own pages always may.
    #[arg(long = "origin", value_name = "ORIGIN")]
    origins: Vec<String>,
    /// A host name the relay answers to besides its listen address, e.g. relay.example.com when
    /// DNS or a proxy gives it one (repeatable). Requests whose Host header names anything else
    /// are refused with 421 (against DNS rebinding); `localhost` is accepted when listening on
    /// loopback or all addresses.
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Browsers must present this token: ?token=... in the page's address (the page passes it
    /// on). A missing or wrong token closes the WebSocket with code 4401.
    #[arg(long)]
    token: Option<String>,
    /// Bridges open at once (default 1024); one more is closed with code 4503 (the page
    /// retries).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Largest WebSocket message (and frame) from a browser, in bytes (default 1048576); a
    /// larger one closes that bridge with code 1009.
    #[arg(long, value_name = "BYTES")]
    max_message: Option<usize>,
    /// Close a bridge when nothing (no message, no ping) has come from its browser for this
    /// long (default 120000). Traffic from the target does not count; am.js pings a live
    /// page every 10 s, or a third of this when shorter.
    #[arg(long, value_name = "MS")]
    idle_timeout_ms: Option<u64>,
    /// PEM certificate for wss:// (with --key).
    #[arg(long, requires = "key", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert", value_name = "PEM")]
    key: Option<PathBuf>,
    /// PEM CA certificate that tls:// and quic:// targets' certificates must chain to.
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// A name pages may offer a machine under (/offer/NAME), for nodes to mirror at
    /// ws://relay/listen/NAME (repeatable).
    #[arg(long = "offer", value_name = "NAME")]
    offers: Vec<String>,
    /// The WebAssembly module pages load as /am.wasm (default: target/wasm/am.wasm of this
    /// source tree, where scripts/build-wasm.sh leaves it).
    #[arg(long, value_name = "FILE")]
    wasm: Option<PathBuf>,
    /// Log filter, as RUST_LOG (e.g. debug, or asyncmachine=debug).
    #[arg(long, default_value = "info")]
    log: String,
}

fn config(cli: &Cli) -> anyhow::Result<RelayConfig> {
    let mut config = match &cli.config {
        Some(path) => asyncmachine::relay::config::load(path).map_err(anyhow::Error::msg)?,
        None => RelayConfig::default(),
    };
    if let Some(listen) = &cli.listen {
        config.listen = listen
            .parse()
            .with_context(|| format!("bad --listen {listen:?}"))?;
    }
    for target in &cli.targets {
        let (name, endpoint) = target
            .split_once('=')
            .with_context(|| format!("--target {target:?} is not NAME=ENDPOINT"))?;
        let endpoint = endpoint
            .parse()
            .with_context(|| format!("bad endpoint in --target {target:?}"))?;
        config.targets.push(Target {
            name: name.to_owned(),
            endpoint,
        });
    }
    config.origins.extend(cli.origins.iter().cloned());
    config.offers.extend(cli.offers.iter().cloned());
    config.hosts.extend(cli.hosts.iter().cloned());
    if cli.token.is_some() {
        config.token = cli.token.clone();
    }
    if let Some(n) = cli.max_connections {
        config.max_connections = n;
    }
    if let Some(n) = cli.max_message {
        config.max_message = n;
    }
    if let Some(ms) = cli.idle_timeout_ms {
        config.idle_timeout = Duration::from_millis(ms);
    }
    if let Some(wasm) = &cli.wasm {
        config.wasm = wasm.clone();
    }
    if cli.cert.is_some() || cli.ca.is_some() {
        let tls = TlsConfig::from_pem_files(
            cli.cert.as_deref(),
            cli.key.as_deref(),
            cli.ca.as_deref(),
            false,
        )
        .context("cannot load the TLS files")?;
        config.transport = TransportConfig::with_tls(tls);
    }
    anyhow::ensure!(
        config.max_connections > 0 && config.max_message > 0 && !config.idle_timeout.is_zero(),
        "--max-connections, --max-message and --idle-timeout-ms (or max_connections, \
         max_message and idle_timeout_ms) must be above 0; leave them out for the defaults"
    );
    anyhow::ensure!(
        !config.targets.is_empty() || !config.offers.is_empty(),
        "no targets and no offers: give --target NAME=ENDPOINT or --offer NAME, or a --config \
         with [relay] targets or offers"
    );
    Ok(config)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .with_context(|| format!("invalid --log filter {:?}; try `info`", cli.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let config = config(&cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async {
        let relay = Relay::start(config).await?;
        let mut out = std::io::stdout();
        writeln!(
            out,
            "relay on {}; open {} in a browser; Ctrl-C to stop",
            relay.local_endpoint(),
            relay.page_url()
        )?;
        asyncmachine::node::shutdown_signal().await;
        relay.shutdown();
        writeln!(out, "relay stopped")?;
        Ok(())
    })
}
