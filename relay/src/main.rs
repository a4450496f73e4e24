//! am-relay: bridges browsers (WebSocket) into a state-source tree.
//!
//! The bridge itself lands with its issue; this binary stays a thin layer over library
//! functions that tests call in-process.

use clap::Parser;

/// Bridges browsers into an asyncmachine state-source tree: WebSocket clients reach named
/// targets (TCP, TLS or QUIC endpoints of nodes), never an arbitrary host.
#[derive(Debug, Parser)]
#[command(name = "am-relay", version, about, long_about = None)]
struct Cli {
    /// Log filter, as RUST_LOG (e.g. `info`, `asyncmachine=debug`).
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    use anyhow::Context as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log))
        .with_context(|| format!("invalid --log filter {:?}; try `info`", cli.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    tracing::info!("am-relay has no bridge yet; see --help");
    Ok(())
}
