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
    /// A file with a [relay] table (its own, or a topology file such as topologies/browser.toml).
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
    #[arg(long = "origin")]
    origins: Vec<String>,
    /// Browsers must present this token (?token=...).
    #[arg(long)]
    token: Option<String>,
    #[arg(long)]
    max_connections: Option<usize>,
    /// Largest WebSocket message from a browser, in bytes.
    #[arg(long)]
    max_message: Option<usize>,
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// PEM certificate and key for wss:// (with --key), CA for tls:// and quic:// targets.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Log filter, as RUST_LOG.
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
        !config.targets.is_empty(),
        "no targets: give --target NAME=ENDPOINT or a --config with [relay] targets"
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
