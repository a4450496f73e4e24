//! am-node: runs the nodes of a state-source tree.
//!
//! The subcommands (run, watch, add/remove/set, status, bench, certs) land with their issues;
//! this binary stays a thin layer over library functions that tests call in-process.

use clap::Parser;

/// Runs the nodes of an asyncmachine state-source tree: sources, mirrors and the listeners
/// that serve them over QUIC, TCP/TLS or WebSocket.
#[derive(Debug, Parser)]
#[command(name = "am-node", version, about, long_about = None)]
struct Cli {
    /// Log filter, as RUST_LOG (e.g. `info`, `asyncmachine=debug`).
    #[arg(long, global = true, default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log)?;
    tracing::info!("am-node has no subcommands yet; see --help");
    Ok(())
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .with_context(|| {
            format!("invalid --log filter {filter:?}; try `info` or `asyncmachine=debug`")
        })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
