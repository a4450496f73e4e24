//! am-node: runs the nodes of a state-source tree, and the client tools around it.
//!
//! A thin layer over library functions (which tests call in-process): parse the command line,
//! run the function, print its result for a person (and with `--json`, for a program).

use std::io::Write as _;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// Runs the nodes of an asyncmachine state-source tree: sources, mirrors and the listeners
/// that serve them over QUIC, TCP/TLS or WebSocket.
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
    /// Runs benchmark scenarios over real sockets and prints a table.
    Bench {
        #[command(subcommand)]
        scenario: Scenario,
    },
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// subscribe-get-process: a mirror waits for Event, reads ValueN locally, calls CallOp
    /// synchronously; bytes counted by a TCP proxy between mirror and server.
    Sgp(SgpArgs),
}

#[derive(Debug, Args)]
struct SgpArgs {
    /// Measured loops.
    #[arg(long, default_value_t = 10_000)]
    loops: u64,
    /// Loops before measuring.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Transport between mirror and server (tcp; more come with their transports).
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Ask for zstd compression.
    #[arg(long)]
    compression: bool,
    /// Tokio worker threads; 1 runs mirror, proxy and server on one thread (no cross-CPU
    /// wake-ups: the protocol's own cost).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also print the result as one JSON object on the last line.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log)?;
    match cli.command {
        Command::Bench {
            scenario: Scenario::Sgp(args),
        } => bench_sgp(&args),
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

fn bench_sgp(args: &SgpArgs) -> anyhow::Result<()> {
    use asyncmachine::bench::sgp::{SgpOptions, run};
    anyhow::ensure!(
        args.transport == "tcp",
        "transport {:?} is not available for bench sgp yet; use --transport tcp",
        args.transport
    );
    let options = SgpOptions {
        loops: args.loops,
        warmup: args.warmup,
        compression: args.compression,
    };
    let progress = |done: u64, total: u64| {
        // Progress goes to stderr so that stdout stays the table (and the JSON line).
        let end = if done == total { "\n" } else { "" };
        let _ = write!(std::io::stderr(), "\rsgp: {done}/{total} loops{end}");
    };
    let report = runtime(args.threads)?
        .block_on(run(&options, &progress))
        .context("bench sgp failed")?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<9} {:<9} {:>7} {:>9} {:>8} {:>8} {:>10} {:>7} {:>9}",
        "scenario",
        "transport",
        "loops",
        "us/loop",
        "p50 us",
        "p99 us",
        "bytes/loop",
        "errors",
        "floor us"
    )?;
    writeln!(
        out,
        "{:<9} {:<9} {:>7} {:>9.2} {:>8.2} {:>8.2} {:>10.1} {:>7} {:>9.2}",
        report.scenario,
        report.transport,
        report.loops,
        report.us_per_loop,
        report.latency.p50_us,
        report.latency.p99_us,
        report.bytes_per_loop,
        report.errors,
        report.floor_us_per_loop
    )?;
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        )?;
    }
    anyhow::ensure!(
        report.errors == 0,
        "the worker counted {} errors",
        report.errors
    );
    Ok(())
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
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
