//! The fanout scenario: one server, N mirrors of one root machine, in one process, or with
//! the root and its server in a second process ([`RemoteRoot`]) when one process may not hold
//! both ends of every connection, or with the root as deployed: an `am-node run` process that
//! the bench mutates as a client ([`run_processes`]).
//!
//! - Convergence: flip a state at the root; the time until the last mirror has it, over many
//!   flips (p50, p99).
//! - Sustained: the root mutates as fast as it can for a while; root mutations per second,
//!   diff frames delivered to mirrors per second, and how far behind mirrors run (lag p99).
//! - The floor: the same pattern over bare TCP: one 12-byte message written to N sockets, the
//!   time until every reader has it.
//!
//! This file owns the scenario (the mirrors' side, its figures and its report); `root.rs` the
//! root in this process, `remote.rs` the line protocol to a root in another process,
//! `processes.rs` the root as an `am-node run` node, `floor.rs` the bare-socket floor.

mod floor;
mod processes;
mod remote;
mod root;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{BenchError, Percentiles};
use asyncmachine::machine::{ClockChange, StateSource};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::transport::Scheme;
use floor::{RawFloor, raw_floor};
use processes::NodeRoot;
pub use processes::{NodeOptions, WINDOW};
pub use remote::{RemoteRoot, serve_remote_root};
use root::{LocalRoot, rss_kib};
pub use root::{Sustained, wall_us};

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    pub mirrors: usize,
    pub flips: u64,
    pub sustained: Duration,
    pub transport: Scheme,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        FanoutOptions {
            mirrors: 100,
            flips: 200,
            sustained: Duration::from_secs(2),
            transport: Scheme::Tcp,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    /// Where the root ran: `one process` (with the mirrors), `split` (its server in a child
    /// process driven over a pipe, `--split`) or `processes` (an `am-node run` node mutated
    /// through a client connection, `--processes`).
    pub mode: &'static str,
    pub transport: &'static str,
    pub mirrors: usize,
    /// From a flip at the root to the last mirror having it.
    pub convergence: Percentiles,
    /// The same pattern over bare TCP; `None` when the process may not open the 2N sockets
    /// it needs (the open-file limit).
    pub convergence_floor: Option<Percentiles>,
    /// The sustained pattern over the same bare sockets: one task writes a 12-byte message to
    /// every socket that has room, round after round, for the same time; messages read per
    /// second. `None` as for `convergence_floor`.
    pub frames_per_s_floor: Option<f64>,
    pub root_mutations_per_s: f64,
    pub frames_per_s: f64,
    /// How long after the root reached a tick a mirror saw it, p99 over all arrivals. The root
    /// mutates in batches of 64 and the time of a tick is taken as its batch's start: this
    /// over-estimates by at most one batch (tens of microseconds). With `processes` the root is
    /// mutated by a client, [`WINDOW`] `add`s in flight, and a tick is timed from when its
    /// `add` was queued: this also counts the way to the root and the `add`s ahead of it there,
    /// up to `mutation_answer_p99_ms`: an upper bound (`lag_p99_low_ms` is the lower). Times
    /// are the system clock in microseconds, so a root in another process of the same machine
    /// is timed alike.
    pub lag_p99_ms: f64,
    /// With `processes`: the same p99 with each tick timed from the mutator's answer to its
    /// `add` instead (the root ran it before): a lower bound of the lag.
    pub lag_p99_low_ms: Option<f64>,
    /// With `processes`: the mutator's `add`, from queued to answered, p99 over the sustained
    /// run (the root ran it in between): about what `lag_p99_ms` may over-estimate by.
    pub mutation_answer_p99_ms: Option<f64>,
    /// After the sustained run: the time until the last mirror had the final clock.
    pub settle_ms: f64,
    /// Process memory (RSS) growth per connected mirror, client and server side together
    /// (with a remote root: the mirrors' side only).
    pub rss_kib_per_mirror: f64,
    /// Whether the root and its server ran in another process (`split` or `processes`).
    pub remote_root: bool,
    /// With a remote root: its process's memory (RSS) growth per connected, idle mirror, i.e.
    /// what the server spends on a client.
    pub server_kib_per_mirror: Option<f64>,
}

/// The table `am-node bench fanout` prints: a header and a row per run (mirror count).
/// Figures a run could not take (the floor, a remote root's memory, a lower bound of the lag
/// outside `processes`) print as `NaN`.
#[derive(Debug, Clone, Copy)]
pub struct FanoutTable<'a>(pub &'a [FanoutReport]);

impl std::fmt::Display for FanoutTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<11} {:<9} {:>7} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "mode",
            "transport",
            "mirrors",
            "conv p50ms",
            "conv p99ms",
            "floor p50",
            "root mut/s",
            "frames/s",
            "floor f/s",
            "lag p99",
            "lag low",
            "settle ms",
            "KiB/mirror",
            "srv KiB/m"
        )?;
        for r in self.0 {
            writeln!(
                f,
                "{:<11} {:<9} {:>7} {:>10.2} {:>10.2} {:>10.2} {:>12.0} {:>12.0} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>10.1}",
                r.mode,
                r.transport,
                r.mirrors,
                r.convergence.p50_us / 1e3,
                r.convergence.p99_us / 1e3,
                r.convergence_floor
                    .as_ref()
                    .map_or(f64::NAN, |floor| floor.p50_us / 1e3),
                r.root_mutations_per_s,
                r.frames_per_s,
                r.frames_per_s_floor.unwrap_or(f64::NAN),
                r.lag_p99_ms,
                r.lag_p99_low_ms.unwrap_or(f64::NAN),
                r.settle_ms,
                r.rss_kib_per_mirror,
                r.server_kib_per_mirror.unwrap_or(f64::NAN)
            )?;
        }
        Ok(())
    }
}

/// Counts mirrors that reached a target tick and remembers when the last did.
struct Arrivals {
    target: AtomicU64,
    arrived: AtomicUsize,
    last: Mutex<Option<Instant>>,
    all: Notify,
    mirrors: usize,
}

/// The p99 of how long after the root's batch that reached a tick each arrival of it came
/// (µs), from the batches (`(start, tick before)`, in order) and the arrivals (`(when,
/// tick)`). A tick's time is its batch's start. (An earlier version stamped whole
/// milliseconds with the tick reached by the end of a batch, charging mirrors with every
/// millisecond the root's thread was descheduled before the batch.)
fn lag_p99_us(batches: &[(u64, u64)], arrivals: &[(u64, u64)]) -> u64 {
    let mut lags: Vec<u64> = arrivals
        .iter()
        .filter_map(|&(when, tick)| {
            let after = batches.partition_point(|&(_, before)| before < tick);
            let (start, _) = batches.get(after.checked_sub(1)?)?;
            Some(when.saturating_sub(*start))
        })
        .collect();
    lags.sort_unstable();
    lags.get(((lags.len() as f64 - 1.0) * 0.99).round() as usize)
        .copied()
        .unwrap_or(0)
}

/// Runs the scenario with the root in this process.
pub async fn run(
    options: &FanoutOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<FanoutReport, BenchError> {
    run_with(options, None, progress).await
}

/// The root: here, in another process driven over a pipe, or an `am-node run` node.
enum Root {
    Local(LocalRoot),
    Remote(RemoteRoot),
    Node(Box<NodeRoot>),
}

impl Root {
    /// When the root's process has died, an error that says so (with its last words).
    fn check(&mut self) -> Result<(), BenchError> {
        match self {
            Root::Node(node) => node.check(),
            Root::Local(_) | Root::Remote(_) => Ok(()),
        }
    }
}

/// Runs the scenario, with the root in another process when `remote` is given (it must serve
/// the tick schema over `options.transport`).
pub async fn run_with(
    options: &FanoutOptions,
    remote: Option<RemoteRoot>,
    progress: &dyn Fn(u64, u64),
) -> Result<FanoutReport, BenchError> {
    // The mirrors trust the root's TLS material: one set for both ends in one process, the
    // root's CA from its process.
    let root = match remote {
        Some(remote) => Root::Remote(remote),
        None => {
            let transport = crate::bench::transport_for(options.transport)?;
            let local = LocalRoot::start(options.transport, transport, options.mirrors);
            Root::Local(local.await?)
        }
    };
    run_root(options, root, progress).await
}

/// Runs the scenario with the root as deployed: an `am-node run` child process serving it over
/// `options.transport` (a topology file and TLS material written for the run), mutated by a
/// client of it here; the mirrors here too; the floor's writing ends in another child process.
/// The children end with the run, however it ends.
pub async fn run_processes(
    options: &FanoutOptions,
    node: &NodeOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<FanoutReport, BenchError> {
    let root = NodeRoot::start(options.transport, options.mirrors, node).await?;
    run_root(options, Root::Node(Box::new(root)), progress).await
}

async fn run_root(
    options: &FanoutOptions,
    mut root: Root,
    progress: &dyn Fn(u64, u64),
) -> Result<FanoutReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    let (schema, tick) = crate::bench::tick_schema()?;
    let (endpoint, transport) = match &root {
        Root::Local(local) => (local.endpoint.clone(), local.transport.clone()),
        Root::Remote(remote) => (remote.endpoint().clone(), remote.transport().clone()),
        Root::Node(node) => (node.endpoint.clone(), node.transport.clone()),
    };

    let arrivals = Arc::new(Arrivals {
        target: AtomicU64::new(u64::MAX),
        arrived: AtomicUsize::new(0),
        last: Mutex::new(None),
        all: Notify::new(),
        mirrors: options.mirrors,
    });
    let measuring_lag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // (wall_us, tick) of every change a mirror saw while measuring.
    let seen = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let rss_before = rss_kib();
    let server_before = match &mut root {
        Root::Remote(remote) => remote.rss_kib().await?,
        Root::Node(node) => node.rss_kib(),
        Root::Local(_) => None,
    };
    let mut mirrors = Vec::with_capacity(options.mirrors);
    let every = (options.mirrors as u64 / 10).max(1);
    for i in 0..options.mirrors {
        let config = MirrorConfig {
            client_id: format!("fan-{i}"),
            schema: Some(Arc::new(schema.clone())),
            // Connecting thousands of mirrors takes longer than the server's idle timeout:
            // keep the default pings (every 10 s, a handful during the measurement).
            transport: transport.clone(),
            ..MirrorConfig::default()
        };
        let mirror = match Mirror::connect(&endpoint, config).await {
            Ok(mirror) => mirror,
            Err(e) => {
                root.check()?;
                return Err(setup("connecting mirrors", &e));
            }
        };
        let (a, on, l) = (arrivals.clone(), measuring_lag.clone(), seen.clone());
        mirror.observe(Arc::new(move |tr: &ClockChange<'_>| {
            let now = tr.after[tick];
            let before = tr.before[tick];
            let target = a.target.load(Ordering::Acquire);
            if before < target && now >= target {
                *a.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                if a.arrived.fetch_add(1, Ordering::AcqRel) + 1 == a.mirrors {
                    a.all.notify_one();
                }
            }
            if on.load(Ordering::Relaxed) {
                let at = wall_us();
                l.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((at, now));
            }
        }));
        mirrors.push(mirror);
        if (i as u64 + 1).is_multiple_of(every) {
            progress(i as u64 + 1, options.mirrors as u64);
        }
    }
    let per_mirror = |before: u64, after: u64| {
        after.saturating_sub(before) as f64 / options.mirrors.max(1) as f64
    };
    let rss_kib_per_mirror = match (rss_before, rss_kib()) {
        (Some(a), Some(b)) => per_mirror(a, b),
        _ => f64::NAN,
    };
    let server_kib_per_mirror = match (&mut root, server_before) {
        (Root::Remote(remote), Some(before)) => remote
            .rss_kib()
            .await?
            .map(|after| per_mirror(before, after)),
        (Root::Node(node), Some(before)) => node.rss_kib().map(|after| per_mirror(before, after)),
        _ => None,
    };

    // Convergence: one flip at a time, until the last mirror has it. Every mirror holds the
    // root's tick between flips, so any of them tells the next target.
    let current = |mirrors: &[Mirror]| mirrors.first().map_or(0, |m| m.tick_at(tick));
    let mut samples = Vec::with_capacity(options.flips as usize);
    for i in 0..options.flips {
        let target = current(&mirrors) + 2;
        arrivals.arrived.store(0, Ordering::Release);
        *arrivals.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
        arrivals.target.store(target, Ordering::Release);
        let waiting = arrivals.all.notified();
        let started = Instant::now();
        match &mut root {
            Root::Local(local) => local.flip(i)?,
            Root::Remote(remote) => remote.flip().await?,
            // Returns with the root's answer; the last arrival is timed apart from it.
            Root::Node(node) => node.flip(i).await?,
        }
        if tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .is_err()
        {
            root.check()?;
            return Err(BenchError::Scenario {
                at: i,
                reason: format!(
                    "only {} of {} mirrors converged",
                    arrivals.arrived.load(Ordering::Relaxed),
                    options.mirrors
                ),
            });
        }
        if let Some(last) = *arrivals.last.lock().unwrap_or_else(PoisonError::into_inner) {
            samples.push(last - started);
        }
    }
    arrivals.target.store(u64::MAX, Ordering::Release);

    // Sustained: the root mutates as fast as it can.
    let frames_before: u64 = mirrors
        .iter()
        .map(|m| m.stats().diffs.load(Ordering::Relaxed))
        .sum();
    let started = Instant::now();
    measuring_lag.store(true, Ordering::Relaxed);
    let done = match &mut root {
        Root::Local(local) => local.sustain(options.sustained).await?,
        Root::Remote(remote) => remote.sustain(options.sustained).await?,
        Root::Node(node) => node.sustain(options.sustained).await?,
    };
    let elapsed = started.elapsed();
    let settle_started = Instant::now();
    for mirror in &mirrors {
        let settled = tokio::time::timeout(
            Duration::from_secs(60),
            mirror.when_time(&["Tick"], &[done.final_tick]),
        )
        .await;
        if !matches!(settled, Ok(Ok(_))) {
            root.check()?;
        }
        settled
            .map_err(|_| setup("settling", &"a mirror never caught up"))?
            .map_err(|e| setup("settling", &e))?;
    }
    let settle = settle_started.elapsed();
    measuring_lag.store(false, Ordering::Relaxed);
    let frames: u64 = mirrors
        .iter()
        .map(|m| m.stats().diffs.load(Ordering::Relaxed))
        .sum::<u64>()
        - frames_before;
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner));
    let lag_p99_ms = lag_p99_us(&done.batches, &seen) as f64 / 1e3;
    let lag_p99_low_ms = done
        .answered
        .as_ref()
        .map(|answered| lag_p99_us(answered, &seen) as f64 / 1e3);

    for mirror in &mirrors {
        mirror.close().await;
    }
    // The floor runs where the scenario ran: its writing ends with the root (for a node, in a
    // process of their own), its reading ends here. The root's server ends first: the floor
    // needs its descriptors.
    let (mode, remote_root) = match root {
        Root::Local(_) => ("one process", false),
        Root::Remote(_) => ("split", true),
        Root::Node(_) => ("processes", true),
    };
    let (n, flips, sustained) = (options.mirrors, options.flips, options.sustained);
    let floor = match &mut root {
        Root::Local(local) => {
            local.server.shutdown(Duration::from_secs(5)).await;
            raw_floor(n, flips, sustained, None).await
        }
        Root::Remote(remote) => raw_floor(n, flips, sustained, Some(remote)).await,
        Root::Node(node) => match node.floor_writers(n).await {
            Ok(mut writers) => raw_floor(n, flips, sustained, Some(&mut writers)).await,
            Err(e) => Err(e),
        },
    };
    let (floor, frames_per_s_floor) = match floor {
        Ok(RawFloor {
            convergence,
            frames_per_s,
        }) => (Some(convergence), Some(frames_per_s)),
        Err(e) => {
            tracing::warn!(error = %e, mirrors = options.mirrors, "no bare-socket floor for this run");
            (None, None)
        }
    };
    // Dropping a remote root ends its process's commands, and with them its server; a node's
    // processes are killed.
    if let Root::Node(node) = &mut root {
        node.stop().await;
    }
    drop(root);
    Ok(FanoutReport {
        scenario: "fanout",
        mode,
        transport: options.transport.as_str(),
        mirrors: options.mirrors,
        convergence: Percentiles::of(&mut samples),
        convergence_floor: floor,
        frames_per_s_floor,
        root_mutations_per_s: done.mutations as f64 / elapsed.as_secs_f64(),
        frames_per_s: frames as f64 / elapsed.as_secs_f64(),
        lag_p99_ms,
        lag_p99_low_ms,
        mutation_answer_p99_ms: done.answer_p99_us.map(|us| us / 1e3),
        settle_ms: settle.as_secs_f64() * 1e3,
        rss_kib_per_mirror,
        remote_root,
        server_kib_per_mirror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_taken_from_the_batch_that_reached_the_tick() {
        // Batches started at 100 µs (tick 0 before it) and 200 µs (tick 128 before it).
        let batches = [(100, 0), (200, 128)];
        // Tick 64 came from the first batch, 129 and 256 from the second; tick 0 predates the run.
        assert_eq!(lag_p99_us(&batches, &[(150, 64)]), 50);
        assert_eq!(lag_p99_us(&batches, &[(1200, 129)]), 1000);
        assert_eq!(lag_p99_us(&batches, &[(300, 256)]), 100);
        assert_eq!(lag_p99_us(&batches, &[(300, 0)]), 0, "not counted");
        let many: Vec<(u64, u64)> = (0..100).map(|i| (100 + i, 64)).collect();
        assert_eq!(lag_p99_us(&batches, &many), 98);
    }
}
