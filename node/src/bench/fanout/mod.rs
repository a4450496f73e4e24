//! The fanout scenario: one server, N mirrors of one root machine, in one process, or with
//! the root and its server in a second process ([`RemoteRoot`]) when one process may not hold
//! both ends of every connection.
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
//! `floor.rs` the bare-socket floor.

mod floor;
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
    /// over-estimates by at most one batch (tens of microseconds). Times are the system clock
    /// in microseconds, so a root in another process of the same machine is timed alike.
    pub lag_p99_ms: f64,
    /// After the sustained run: the time until the last mirror had the final clock.
    pub settle_ms: f64,
    /// Process memory (RSS) growth per connected mirror, client and server side together
    /// (with a remote root: the mirrors' side only).
    pub rss_kib_per_mirror: f64,
    /// Whether the root and its server ran in another process.
    pub remote_root: bool,
    /// With a remote root: its process's memory (RSS) growth per connected, idle mirror, i.e.
    /// what the server spends on a client.
    pub server_kib_per_mirror: Option<f64>,
}

/// The table `am-node bench fanout` prints: a header and a row per run (mirror count).
/// Figures a run could not take (the floor, a remote root's memory) print as `NaN`.
#[derive(Debug, Clone, Copy)]
pub struct FanoutTable<'a>(pub &'a [FanoutReport]);

impl std::fmt::Display for FanoutTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<9} {:>7} {:>10} {:>10} {:>10} {:>12} {:>12} {:>12} {:>9} {:>9} {:>10} {:>10}",
            "transport",
            "mirrors",
            "conv p50ms",
            "conv p99ms",
            "floor p50",
            "root mut/s",
            "frames/s",
            "floor f/s",
            "lag p99",
            "settle ms",
            "KiB/mirror",
            "srv KiB/m"
        )?;
        for r in self.0 {
            writeln!(
                f,
                "{:<9} {:>7} {:>10.2} {:>10.2} {:>10.2} {:>12.0} {:>12.0} {:>12.0} {:>9.1} {:>9.1} {:>10.1} {:>10.1}",
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

/// The root: here, or in another process.
enum Root {
    Local(LocalRoot),
    Remote(RemoteRoot),
}

/// Runs the scenario, with the root in another process when `remote` is given (it must serve
/// the tick schema over `options.transport`).
pub async fn run_with(
    options: &FanoutOptions,
    remote: Option<RemoteRoot>,
    progress: &dyn Fn(u64, u64),
) -> Result<FanoutReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    let (schema, tick) = crate::bench::tick_schema()?;
    // The mirrors trust the root's TLS material: one set for both ends in one process, the
    // root's CA from its process.
    let (mut root, transport) = match remote {
        Some(remote) => {
            let transport = remote.transport().clone();
            (Root::Remote(remote), transport)
        }
        None => {
            let transport = crate::bench::transport_for(options.transport)?;
            let local = LocalRoot::start(options.transport, transport.clone(), options.mirrors);
            (Root::Local(local.await?), transport)
        }
    };
    let endpoint = match &root {
        Root::Local(local) => local.endpoint.clone(),
        Root::Remote(remote) => remote.endpoint().clone(),
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
        let mirror = Mirror::connect(&endpoint, config)
            .await
            .map_err(|e| setup("connecting mirrors", &e))?;
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
        }
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .map_err(|_| BenchError::Scenario {
                at: i,
                reason: format!(
                    "only {} of {} mirrors converged",
                    arrivals.arrived.load(Ordering::Relaxed),
                    options.mirrors
                ),
            })?;
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
    };
    let elapsed = started.elapsed();
    let settle_started = Instant::now();
    for mirror in &mirrors {
        tokio::time::timeout(
            Duration::from_secs(60),
            mirror.when_time(&["Tick"], &[done.final_tick]),
        )
        .await
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

    for mirror in &mirrors {
        mirror.close().await;
    }
    // The floor runs where the scenario ran: its writing ends with the root, its reading ends
    // here. The root's server ends first: the floor needs its descriptors.
    let remote_root = matches!(root, Root::Remote(_));
    let floor_root = match &mut root {
        Root::Local(local) => {
            local.server.shutdown(Duration::from_secs(5)).await;
            None
        }
        Root::Remote(remote) => Some(remote),
    };
    let (floor, frames_per_s_floor) = match raw_floor(
        options.mirrors,
        options.flips,
        options.sustained,
        floor_root,
    )
    .await
    {
        Ok(RawFloor {
            convergence,
            frames_per_s,
        }) => (Some(convergence), Some(frames_per_s)),
        Err(e) => {
            tracing::warn!(error = %e, mirrors = options.mirrors, "no bare-socket floor for this run");
            (None, None)
        }
    };
    // Dropping a remote root ends its process's commands, and with them its server.
    drop(root);
    Ok(FanoutReport {
        scenario: "fanout",
        transport: options.transport.as_str(),
        mirrors: options.mirrors,
        convergence: Percentiles::of(&mut samples),
        convergence_floor: floor,
        frames_per_s_floor,
        root_mutations_per_s: done.mutations as f64 / elapsed.as_secs_f64(),
        frames_per_s: frames as f64 / elapsed.as_secs_f64(),
        lag_p99_ms,
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
