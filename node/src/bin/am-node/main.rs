//! am-node: runs the nodes of a state-source tree, and the client tools around it.
//!
//! A thin layer over library functions (which tests call in-process): parse the command line,
//! run the function, print its result for a person (and with `--json`, for a program).
//!
//! - `args`: the arguments of each command;
//! - `tools`: run, watch, add/remove/set, status, certs, fault-proxy;
//! - `bench`: the benchmark scenarios' commands;
//! - `pin`: `--pin CPUS`, the CPUs a benchmark and its child processes run on.

mod args;
mod bench;
mod pin;
mod tools;

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use asyncmachine::machine::MutationKind;
use asyncmachine::printable::printable;
use clap::{Parser, Subcommand};

use args::*;
use bench::*;
use tools::*;

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
    /// The debugger: collects telemetry from nodes (their `debug` address, or `run --debug`)
    /// and serves a web console of the whole tree, live, with time travel.
    Dbg(DbgArgs),
    /// Mirrors a machine and prints its active states whenever they change.
    Watch(WatchArgs),
    /// Activates states of a machine. Exit code 3 when canceled, 1 on errors.
    Add(MutateArgs),
    /// Deactivates states of a machine. Exit code 3 when canceled, 1 on errors.
    Remove(MutateArgs),
    /// Activates exactly these states of a machine. Exit code 3 when canceled, 1 on errors.
    Set(MutateArgs),
    /// Draws a topology file: each schema's states and relations (require, add, remove, after;
    /// multi and auto states marked) and the tree (nodes, machines, who mirrors whom over
    /// which transport). SVG by default; --format mermaid or dot for text.
    Diagram(DiagramArgs),
    /// A prompt over mirrors of running machines: add, remove, set (with typed arguments),
    /// when, when-not, when-time, inspect, list, status, watch; line editing, history, Tab
    /// completion of commands, machines and states. With `-- COMMAND` runs one command and
    /// exits with its status.
    Repl(ReplArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_tracing(&cli.log) {
        let _ = writeln!(std::io::stderr(), "error: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Run(args) => runtime(args.threads.into()).and_then(|rt| rt.block_on(run(&args))),
        Command::Dbg(args) => runtime(2).and_then(|rt| rt.block_on(dbg_command(&args))),
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
        Command::Diagram(args) => diagram(&args),
        Command::Repl(args) => repl(&args),
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
        Command::Bench {
            scenario: Scenario::ChainHop(args),
        } => bench_chain_hop(&args),
        Command::Bench {
            scenario: Scenario::SgpWorker(args),
        } => bench_sgp_worker(&args),
        Command::Bench {
            scenario: Scenario::RedisChain(args),
        } => bench_redis_chain(&args),
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

pub(crate) fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
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
