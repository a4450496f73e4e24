//! The fanout scenario: one server, N mirrors of one root machine, in one process.
//!
//! - Convergence: flip a state at the root; the time until the last mirror has it, over many
//!   flips (p50, p99).
//! - Sustained: the root mutates as fast as it can for a while; root mutations per second,
//!   diff frames delivered to mirrors per second, and how far behind mirrors run (lag p99).
//! - The floor: the same pattern over bare TCP: one 12-byte message written to N sockets, the
//!   time until every reader has it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{BenchError, Percentiles};
use crate::machine::{Args, Machine, StateSource, Transition};
use crate::mirror::{Mirror, MirrorConfig};
use crate::server::{Server, ServerConfig};
use crate::transport::{Endpoint, Scheme};

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
    pub root_mutations_per_s: f64,
    pub frames_per_s: f64,
    /// How long after the root reached a tick a mirror saw it, p99 over all arrivals (1 ms
    /// resolution).
    pub lag_p99_ms: f64,
    /// After the sustained run: the time until the last mirror had the final clock.
    pub settle_ms: f64,
    /// Process memory (RSS) growth per connected mirror, client and server side together.
    pub rss_kib_per_mirror: f64,
}

/// Resident memory of this process, from /proc/self/statm (pages of 4 KiB).
fn rss_kib() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    statm
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|pages| pages * 4)
}

/// Counts mirrors that reached a target tick and remembers when the last did.
struct Arrivals {
    target: AtomicU64,
    arrived: AtomicUsize,
    last: Mutex<Option<Instant>>,
    all: Notify,
    mirrors: usize,
}

/// The root's tick per elapsed millisecond of the sustained run, for lag lookups.
struct Timeline {
    start: Instant,
    ticks: Mutex<Vec<u64>>,
}

impl Timeline {
    /// The first millisecond at which the root had reached `tick`.
    fn reached(&self, tick: u64) -> Option<usize> {
        let ticks = self.ticks.lock().unwrap_or_else(PoisonError::into_inner);
        let i = ticks.partition_point(|&t| t < tick);
        (i < ticks.len()).then_some(i)
    }
}

pub async fn run(
    options: &FanoutOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<FanoutReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    let (schema, tick) = super::tick_schema()?;
    let root = Machine::builder(schema.clone()).id("root").build();
    root.add(&["Tick"], Args::new())
        .map_err(|e| setup("first tick", &e))?;
    let transport = super::transport_for(options.transport)?;
    let server = Server::new(ServerConfig {
        transport: transport.clone(),
        max_clients: options.mirrors + 16,
        ..ServerConfig::default()
    });
    server
        .add_source("fan", Arc::new(root.clone()))
        .map_err(|e| setup("serving", &e))?;
    let endpoint = server
        .listen(&Endpoint::new(options.transport, "127.0.0.1:0"))
        .await
        .map_err(|e| setup("binding", &e))?
        .with_machine("fan");

    let arrivals = Arc::new(Arrivals {
        target: AtomicU64::new(u64::MAX),
        arrived: AtomicUsize::new(0),
        last: Mutex::new(None),
        all: Notify::new(),
        mirrors: options.mirrors,
    });
    let timeline = Arc::new(Timeline {
        start: Instant::now(),
        ticks: Mutex::new(Vec::new()),
    });
    let measuring_lag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lags = Arc::new(Mutex::new(Vec::<u32>::new()));
    let rss_before = rss_kib();
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
        let (a, t, on, l) = (
            arrivals.clone(),
            timeline.clone(),
            measuring_lag.clone(),
            lags.clone(),
        );
        mirror.observe(Arc::new(move |tr: &Transition<'_>| {
            let now = tr.after[tick];
            let before = tr.before[tick];
            let target = a.target.load(Ordering::Acquire);
            if before < target && now >= target {
                *a.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                if a.arrived.fetch_add(1, Ordering::AcqRel) + 1 == a.mirrors {
                    a.all.notify_one();
                }
            }
            if on.load(Ordering::Relaxed)
                && let Some(ms) = t.reached(now)
            {
                let lag = (t.start.elapsed().as_millis() as usize).saturating_sub(ms) as u32;
                l.lock().unwrap_or_else(PoisonError::into_inner).push(lag);
            }
        }));
        mirrors.push(mirror);
        if (i as u64 + 1).is_multiple_of(every) {
            progress(i as u64 + 1, options.mirrors as u64);
        }
    }
    let rss_kib_per_mirror = match (rss_before, rss_kib()) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / options.mirrors.max(1) as f64,
        _ => f64::NAN,
    };

    // Convergence: one flip at a time, until the last mirror has it.
    let mut samples = Vec::with_capacity(options.flips as usize);
    for i in 0..options.flips {
        let target = root.tick("Tick") + 2;
        arrivals.arrived.store(0, Ordering::Release);
        *arrivals.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
        arrivals.target.store(target, Ordering::Release);
        let waiting = arrivals.all.notified();
        let started = Instant::now();
        root.add(&["Tick"], Args::new())
            .map_err(|e| BenchError::Scenario {
                at: i,
                reason: e.to_string(),
            })?;
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

    // Sustained: mutate as fast as possible, yielding now and then so pushes go out.
    let frames_before: u64 = mirrors
        .iter()
        .map(|m| m.stats().diffs.load(Ordering::Relaxed))
        .sum();
    measuring_lag.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut mutations = 0u64;
    while started.elapsed() < options.sustained {
        for _ in 0..64 {
            root.add(&["Tick"], Args::new())
                .map_err(|e| BenchError::Scenario {
                    at: mutations,
                    reason: e.to_string(),
                })?;
            mutations += 1;
        }
        {
            let ms = timeline.start.elapsed().as_millis() as usize;
            let mut ticks = timeline
                .ticks
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = root.tick_at(tick);
            while ticks.len() <= ms {
                ticks.push(now);
            }
        }
        tokio::task::yield_now().await;
    }
    let elapsed = started.elapsed();
    let final_clock = root.clock();
    let settle_started = Instant::now();
    for mirror in &mirrors {
        tokio::time::timeout(
            Duration::from_secs(60),
            mirror.when_time(&["Tick"], &[final_clock[tick]]),
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
    let mut lag = std::mem::take(&mut *lags.lock().unwrap_or_else(PoisonError::into_inner));
    lag.sort_unstable();
    let lag_p99_ms = lag
        .get(((lag.len() as f64 - 1.0) * 0.99).round() as usize)
        .copied()
        .unwrap_or(0) as f64;

    for mirror in &mirrors {
        mirror.close().await;
    }
    server.shutdown(Duration::from_secs(5)).await;
    let floor = match raw_floor(options.mirrors, options.flips).await {
        Ok(floor) => Some(floor),
        Err(e) => {
            tracing::warn!(error = %e, mirrors = options.mirrors, "no raw floor: the open-file limit is too low for it");
            None
        }
    };
    Ok(FanoutReport {
        scenario: "fanout",
        transport: options.transport.as_str(),
        mirrors: options.mirrors,
        convergence: Percentiles::of(&mut samples),
        convergence_floor: floor,
        root_mutations_per_s: mutations as f64 / elapsed.as_secs_f64(),
        frames_per_s: frames as f64 / elapsed.as_secs_f64(),
        lag_p99_ms,
        settle_ms: settle.as_secs_f64() * 1e3,
        rss_kib_per_mirror,
    })
}

/// One 12-byte message to each of N bare TCP sockets per flip; the time until every reader
/// has it.
async fn raw_floor(n: usize, flips: u64) -> std::io::Result<Percentiles> {
    const MESSAGE: usize = 12;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let arrived = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    let last = Arc::new(Mutex::new(None::<Instant>));
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut reader = TcpStream::connect(addr).await?;
        reader.set_nodelay(true)?;
        let (writer, _) = listener.accept().await?;
        writer.set_nodelay(true)?;
        writers.push(writer);
        let (arrived, all, last) = (arrived.clone(), all.clone(), last.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; MESSAGE];
            while reader.read_exact(&mut buf).await.is_ok() {
                *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                if arrived.fetch_add(1, Ordering::AcqRel) + 1 == n {
                    all.notify_one();
                }
            }
        });
    }
    let mut samples = Vec::with_capacity(flips as usize);
    for _ in 0..flips {
        arrived.store(0, Ordering::Release);
        let waiting = all.notified();
        let started = Instant::now();
        for w in &mut writers {
            w.write_all(&[1u8; MESSAGE]).await?;
        }
        waiting.await;
        if let Some(t) = *last.lock().unwrap_or_else(PoisonError::into_inner) {
            samples.push(t - started);
        }
    }
    Ok(Percentiles::of(&mut samples))
}
