//! `am-node bench`: runs a scenario of am-node's library and prints its report.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::args::*;
use crate::runtime;

pub(crate) fn bench_sgp(args: &SgpArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::sgp::{SgpOptions, run};
    if let Some(cpus) = &args.pin.pin {
        crate::pin::pin(cpus)?;
    }
    let options = SgpOptions {
        loops: args.loops,
        warmup: args.warmup,
        compression: args.compression,
        transport: am_node::bench::scheme(&args.transport)?,
        via_relay: args.via_relay,
    };
    let progress = progress("sgp loops");
    let rt = runtime(args.threads)?;
    let report = if args.processes {
        use am_node::bench::sgp_processes::{ProcessSgpOptions, run, supported};
        anyhow::ensure!(
            supported(options.transport),
            "sgp --processes runs over tcp or ws (the worker's process makes no certificates)"
        );
        let options = ProcessSgpOptions {
            sgp: options,
            exe: std::env::current_exe().context("cannot find this program to run the worker")?,
            threads: args.threads,
            ready_timeout: Duration::from_secs(30),
        };
        rt.block_on(async {
            // Interrupted, the run is dropped and the worker's process with it (killed).
            tokio::select! {
                report = run(&options, &progress) => Ok(report?),
                () = asyncmachine::node::shutdown_signal() => {
                    anyhow::bail!("interrupted; the worker's process was stopped")
                }
            }
        })
        .context("bench sgp --processes failed")?
    } else {
        rt.block_on(run(&options, &progress))
            .context("bench sgp failed")?
    };
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

pub(crate) fn bench_chain(args: &ChainArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::chain::{ChainOptions, run};
    anyhow::ensure!((1..=16).contains(&args.hops), "--hops must be 1 to 16");
    if let Some(cpus) = &args.pin.pin {
        crate::pin::pin(cpus)?;
    }
    if args.processes {
        return bench_chain_processes(args);
    }
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

/// `bench chain --processes`: the nodes as child processes of this program.
fn bench_chain_processes(args: &ChainArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::chain_processes::{ProcessChainOptions, run};
    anyhow::ensure!(
        args.transport == "tcp",
        "--processes runs over tcp only (the nodes' topology has no certificates); leave out --transport"
    );
    let options = ProcessChainOptions {
        hops: args.hops,
        iterations: args.iterations,
        warmup: args.warmup,
        exe: std::env::current_exe().context("cannot find this program to run the nodes")?,
        ready_timeout: Duration::from_secs(30),
        node_threads: args.node_threads.map(usize::from),
        clients_per_node: usize::from(args.clients_per_node),
    };
    // Each idle client is a descriptor here and one at its node (the nodes inherit the limit).
    raise_nofile((args.hops as u64 + 1) * u64::from(args.clients_per_node) + 256)?;
    let progress = progress("chain --processes");
    let report = runtime(args.threads)?.block_on(async {
        // Interrupted, the run is dropped and its children with it (killed).
        tokio::select! {
            report = run(&options, &progress) => Ok(report?),
            () = asyncmachine::node::shutdown_signal() => {
                anyhow::bail!("interrupted; the node processes were stopped")
            }
        }
    });
    let report = report.context("bench chain --processes failed")?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    json_line(&mut out, args.json, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// The worker of `bench sgp --processes` (a child process of it).
pub(crate) fn bench_sgp_worker(args: &SgpWorkerArgs) -> anyhow::Result<ExitCode> {
    let transport = am_node::bench::scheme(&args.transport)?;
    runtime(args.threads)?
        .block_on(am_node::bench::sgp_processes::serve_worker(
            transport,
            tokio::io::BufReader::new(tokio::io::stdin()),
            tokio::io::stdout(),
        ))
        .context("serving the sgp worker")?;
    Ok(ExitCode::SUCCESS)
}

/// `bench redis-chain`: the timer of scripts/compare-redis.sh.
pub(crate) fn bench_redis_chain(args: &RedisChainArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::redis_chain::{RedisChainOptions, run};
    if let Some(cpus) = &args.pin.pin {
        crate::pin::pin(cpus)?;
    }
    let options = RedisChainOptions {
        ports: args.ports.clone(),
        iterations: args.iterations,
        warmup: args.warmup,
    };
    let report = runtime(1)?
        .block_on(run(&options))
        .context("bench redis-chain failed (are the servers up, keyspace notifications on?)")?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    json_line(&mut out, args.json, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// A relay of `bench chain --processes`'s floor (a child process of it).
pub(crate) fn bench_chain_hop(args: &ChainHopArgs) -> anyhow::Result<ExitCode> {
    runtime(1)?
        .block_on(am_node::bench::hop::serve(args.upstream, |addr| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening {addr}");
            let _ = out.flush();
        }))
        .context("the chain's floor relay failed")?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn bench_relay(args: &RelayArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::relay::{RelayOptions, run};
    anyhow::ensure!(
        args.message > 0 && args.message <= 1 << 20,
        "--message must be 1 to 1048576 bytes"
    );
    anyhow::ensure!(
        args.bulk_message > 0 && args.bulk_message <= 1 << 20,
        "--bulk-message must be 1 to 1048576 bytes"
    );
    anyhow::ensure!(
        args.bulk_mib <= 1 << 20,
        "--bulk-mib must be at most 1048576"
    );
    let options = RelayOptions {
        round_trips: args.round_trips,
        message: args.message,
        bulk_message: args.bulk_message,
        bulk_bytes: args.bulk_mib << 20,
    };
    // Before the runtime starts: its threads, and the bridges it spawns, inherit the CPU.
    if let Some(cpus) = &args.pin.pin {
        crate::pin::pin(cpus)?;
    }
    if args.compare {
        return bench_relay_compare(args, options);
    }
    let progress = progress("relay");
    let report = runtime(args.threads)?
        .block_on(run(&options, &progress))
        .context("bench relay failed")?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    json_line(&mut out, args.json, &report)?;
    Ok(ExitCode::SUCCESS)
}

fn bench_relay_compare(
    args: &RelayArgs,
    relay: am_node::bench::relay::RelayOptions,
) -> anyhow::Result<ExitCode> {
    use am_node::bench::relay_compare::{BridgeKind, CompareOptions, run};
    let options = CompareOptions {
        relay,
        bridges: vec![
            find_bridge(BridgeKind::AmRelay, args.relay_bin.as_ref()),
            find_bridge(BridgeKind::Websocat, args.websocat.as_ref()),
            find_bridge(BridgeKind::Websockify, args.websockify.as_ref()),
        ],
        pinned: args.pin.pin.clone(),
    };
    let progress = |label: &str, done: u64, total: u64| {
        let end = if done == total { "\n" } else { "" };
        let _ = write!(std::io::stderr(), "\r{label}: {done}/{total}{end}");
    };
    // A signal ends the run through the drops that kill the bridges' process groups.
    let report = runtime(args.threads)?
        .block_on(async {
            tokio::select! {
                report = run(&options, &progress) => Ok(report?),
                _ = asyncmachine::node::shutdown_signal() => {
                    Err(anyhow::anyhow!("interrupted; the bridges were stopped"))
                }
            }
        })
        .context("bench relay --compare failed")?;
    let mut out = std::io::stdout().lock();
    write!(out, "{report}")?;
    json_line(&mut out, args.json, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// Where a bridge's program is: the flag, its environment variable, beside this program (for
/// am-relay), on PATH, then where scripts/install-bench-tools.sh puts it; `none` skips it.
fn find_bridge(
    kind: am_node::bench::relay_compare::BridgeKind,
    flag: Option<&std::path::PathBuf>,
) -> am_node::bench::relay_compare::BridgeProgram {
    use am_node::bench::relay_compare::{BridgeKind, BridgeProgram};
    use std::path::PathBuf;
    let (flag_name, env, file) = match kind {
        BridgeKind::AmRelay => ("--relay-bin", "AM_BENCH_RELAY_BIN", "am-relay"),
        BridgeKind::Websocat => ("--websocat", "AM_BENCH_WEBSOCAT", "websocat"),
        BridgeKind::Websockify => ("--websockify", "AM_BENCH_WEBSOCKIFY", "websockify"),
    };
    let given = flag
        .map(|p| (p.clone(), flag_name.to_owned()))
        .or_else(|| std::env::var_os(env).map(|p| (PathBuf::from(p), format!("${env}"))));
    let program = match given {
        Some((path, from)) if path.as_os_str() == "none" => Err(format!("{from} is none")),
        Some((path, _)) if path.is_file() => Ok(path),
        Some((path, from)) => Err(format!("{} (from {from}) is not a file", path.display())),
        None => {
            let mut places: Vec<PathBuf> = Vec::new();
            if kind == BridgeKind::AmRelay
                && let Ok(exe) = std::env::current_exe()
                && let Some(dir) = exe.parent()
            {
                places.push(dir.join(file));
            }
            if let Some(path) = std::env::var_os("PATH") {
                places.extend(std::env::split_paths(&path).map(|d| d.join(file)));
            }
            if kind == BridgeKind::Websockify
                && let Some(home) = std::env::var_os("HOME")
            {
                places.push(
                    PathBuf::from(home).join(".cache/am-bench/websockify-venv/bin/websockify"),
                );
            }
            places
                .into_iter()
                .find(|p| p.is_file())
                .ok_or_else(|| format!("{file} is not on PATH"))
        }
    };
    BridgeProgram { kind, program }
}

/// Raises the open-file limit to what `needed` descriptors require (root may raise the hard
/// limit too).
pub(crate) fn raise_nofile(needed: u64) -> anyhow::Result<()> {
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

pub(crate) fn bench_fanout(args: &FanoutArgs) -> anyhow::Result<ExitCode> {
    use am_node::bench::fanout::{
        FanoutOptions, FanoutTable, NodeOptions, run_processes, run_with,
    };
    use asyncmachine::transport::Scheme;
    if let Some(cpus) = &args.pin.pin {
        crate::pin::pin(cpus)?;
    }
    let transport = am_node::bench::scheme(&args.transport)?;
    let largest = args.mirrors.iter().copied().max().unwrap_or(0) as u64;
    // Both ends of every connection live in this process unless split (or the root is a node);
    // QUIC needs one socket per client and one for the server. The children inherit the
    // limit: a node needs one descriptor per mirror.
    let per_mirror = if transport == Scheme::Quic || args.split || args.processes {
        1
    } else {
        2
    };
    raise_nofile(largest * per_mirror + 256)?;
    let node = NodeOptions {
        exe: std::env::current_exe().context("cannot find this program to run the root node")?,
        node_threads: args.node_threads.map(usize::from),
        ready_timeout: Duration::from_secs(30),
    };
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
            if args.processes {
                // Interrupted, the run is dropped and its children with it (killed).
                return tokio::select! {
                    report = run_processes(&options, &node, &progress) => Ok(report?),
                    () = asyncmachine::node::shutdown_signal() => {
                        anyhow::bail!("interrupted; the root's process was stopped")
                    }
                };
            }
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
pub(crate) async fn spawn_root(
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

pub(crate) fn bench_fanout_root(args: &FanoutRootArgs) -> anyhow::Result<ExitCode> {
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

pub(crate) fn bench_bytes(args: &BytesArgs) -> anyhow::Result<ExitCode> {
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
pub(crate) fn progress(label: &'static str) -> impl Fn(u64, u64) {
    move |done, total| {
        let end = if done == total { "\n" } else { "" };
        let _ = write!(std::io::stderr(), "\r{label}: {done}/{total}{end}");
    }
}

/// Prints a report as one JSON line when asked.
pub(crate) fn json_line(
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
