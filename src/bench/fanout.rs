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

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{BenchError, Percentiles};
use crate::machine::{Args, Machine, StateSource, Transition};
use crate::mirror::{Mirror, MirrorConfig};
use crate::server::{Server, ServerConfig};
use crate::transport::{Endpoint, Scheme, TransportConfig};

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

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A root and its server in another process (`am-node bench fanout --split`), driven by
/// commands: this process then holds only the mirrors' ends of the connections, half the
/// descriptors. [`serve_remote_root`] is the other side.
pub trait RemoteRoot: Send {
    /// Where the root is served, machine name included.
    fn endpoint(&self) -> Endpoint;
    /// Flips the root once (returns when the command is sent).
    fn flip(&mut self) -> BoxFuture<'_, Result<(), BenchError>>;
    /// Has the root mutate as fast as it can for `duration`.
    fn sustain(&mut self, duration: Duration) -> BoxFuture<'_, Result<Sustained, BenchError>>;
    /// The resident memory of the root's process, KiB, when it can tell.
    fn rss_kib(&mut self) -> BoxFuture<'_, Result<Option<u64>, BenchError>>;
}

/// What a sustained run of the root did.
#[derive(Debug, Clone, Default)]
pub struct Sustained {
    pub mutations: u64,
    /// The root's `Tick` at the end: the clock every mirror must reach.
    pub final_tick: u64,
    /// Each batch of mutations: when it started ([`wall_us`]) and the tick before it.
    pub batches: Vec<(u64, u64)>,
}

/// Microseconds of the system clock: comparable between processes of one machine.
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The machine every mirror follows and its server, in this process.
struct LocalRoot {
    machine: Machine,
    server: Server,
    endpoint: Endpoint,
    /// The position of `Tick`.
    tick: usize,
}

impl LocalRoot {
    /// Serves the root over `scheme` with `transport`'s material (the mirrors must trust it).
    async fn start(
        scheme: Scheme,
        transport: TransportConfig,
        mirrors: usize,
    ) -> Result<LocalRoot, BenchError> {
        let setup =
            |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
        let (schema, tick) = super::tick_schema()?;
        let machine = Machine::builder(schema).id("root").build();
        machine
            .add(&["Tick"], Args::new())
            .map_err(|e| setup("first tick", &e))?;
        let server = Server::new(ServerConfig {
            transport,
            max_clients: mirrors + 16,
            ..ServerConfig::default()
        });
        server
            .add_source("fan", Arc::new(machine.clone()))
            .map_err(|e| setup("serving", &e))?;
        let endpoint = server
            .listen(&Endpoint::new(scheme, "127.0.0.1:0"))
            .await
            .map_err(|e| setup("binding", &e))?
            .with_machine("fan");
        Ok(LocalRoot {
            machine,
            server,
            endpoint,
            tick,
        })
    }

    fn flip(&self, at: u64) -> Result<(), BenchError> {
        self.machine
            .add(&["Tick"], Args::new())
            .map(drop)
            .map_err(|e| BenchError::Scenario {
                at,
                reason: e.to_string(),
            })
    }

    /// Mutates as fast as it can for `duration`, in batches of 64 with a yield between them so
    /// that, on a one-thread runtime, pushes go out. Each batch is logged before it runs.
    async fn sustain(&self, duration: Duration) -> Result<Sustained, BenchError> {
        let started = Instant::now();
        let mut done = Sustained::default();
        while started.elapsed() < duration {
            done.batches
                .push((wall_us(), self.machine.tick_at(self.tick)));
            for _ in 0..64 {
                self.flip(done.mutations)?;
                done.mutations += 1;
            }
            tokio::task::yield_now().await;
        }
        done.final_tick = self.machine.tick_at(self.tick);
        Ok(done)
    }
}

/// The other side of a [`RemoteRoot`]: serves a root for `mirrors` mirrors over `transport`,
/// writes `endpoint ENDPOINT` to `replies`, then follows `commands` line by line until they
/// end: `flip`; `rss`, answered `rss KIB` (or `rss -`); and `sustain MS`, answered `sustained
/// MUTATIONS FINAL_TICK BATCHES` and a line `WALL_US TICK` per batch (see [`Sustained`]).
pub async fn serve_remote_root<R, W>(
    transport: Scheme,
    mirrors: usize,
    commands: R,
    mut replies: W,
) -> Result<(), BenchError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| BenchError::Setup(format!("talking to the bench: {e}"));
    let root = LocalRoot::start(transport, super::transport_for(transport)?, mirrors).await?;
    replies
        .write_all(format!("endpoint {}\n", root.endpoint).as_bytes())
        .await
        .map_err(io)?;
    replies.flush().await.map_err(io)?;
    let mut lines = commands.lines();
    let mut flips = 0;
    while let Some(line) = lines.next_line().await.map_err(io)? {
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<u64>)) {
            (Some("flip"), None) => {
                root.flip(flips)?;
                flips += 1;
            }
            (Some("rss"), None) => {
                let answer = rss_kib().map_or("rss -\n".into(), |kib| format!("rss {kib}\n"));
                replies.write_all(answer.as_bytes()).await.map_err(io)?;
                replies.flush().await.map_err(io)?;
            }
            (Some("sustain"), Some(Ok(ms))) => {
                let done = root.sustain(Duration::from_millis(ms)).await?;
                let mut answer = format!(
                    "sustained {} {} {}\n",
                    done.mutations,
                    done.final_tick,
                    done.batches.len()
                );
                for (at, before) in &done.batches {
                    answer.push_str(&format!("{at} {before}\n"));
                }
                replies.write_all(answer.as_bytes()).await.map_err(io)?;
                replies.flush().await.map_err(io)?;
            }
            _ => {
                return Err(BenchError::Setup(format!(
                    "unknown command {line:?} from the bench (expected flip, rss or sustain MS)"
                )));
            }
        }
    }
    root.server.shutdown(Duration::from_secs(5)).await;
    Ok(())
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

/// The next line the root's process wrote.
async fn reply_line<R: AsyncBufRead + Unpin>(
    replies: &mut tokio::io::Lines<R>,
) -> Result<String, BenchError> {
    match replies.next_line().await {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(BenchError::Setup("the root's process ended".into())),
        Err(e) => Err(BenchError::Setup(format!("the root's process: {e}"))),
    }
}

fn bad_reply(line: &str, expected: &str) -> BenchError {
    BenchError::Setup(format!(
        "the root's process answered {line:?}, not `{expected}`"
    ))
}

/// Reads the answer to `rss` that [`serve_remote_root`] writes.
pub async fn read_rss<R: AsyncBufRead + Unpin>(
    replies: &mut tokio::io::Lines<R>,
) -> Result<Option<u64>, BenchError> {
    let line = reply_line(replies).await?;
    match line.strip_prefix("rss ") {
        Some("-") => Ok(None),
        Some(kib) => kib
            .parse()
            .map(Some)
            .map_err(|_| bad_reply(&line, "rss KIB")),
        None => Err(bad_reply(&line, "rss KIB")),
    }
}

/// Reads the answer to `sustain MS` that [`serve_remote_root`] writes.
pub async fn read_sustained<R: AsyncBufRead + Unpin>(
    replies: &mut tokio::io::Lines<R>,
) -> Result<Sustained, BenchError> {
    let numbers = |line: &str| -> Vec<u64> {
        line.split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    let head = reply_line(replies).await?;
    let [mutations, final_tick, count] = numbers(head.strip_prefix("sustained ").unwrap_or(""))[..]
    else {
        return Err(bad_reply(&head, "sustained MUTATIONS FINAL_TICK BATCHES"));
    };
    let mut batches = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let line = reply_line(replies).await?;
        let [at, before] = numbers(&line)[..] else {
            return Err(bad_reply(&line, "WALL_US TICK"));
        };
        batches.push((at, before));
    }
    Ok(Sustained {
        mutations,
        final_tick,
        batches,
    })
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
    Remote(Box<dyn RemoteRoot>),
}

/// Runs the scenario, with the root in another process when `remote` is given (it must serve
/// the tick schema over `options.transport`).
pub async fn run_with(
    options: &FanoutOptions,
    remote: Option<Box<dyn RemoteRoot>>,
    progress: &dyn Fn(u64, u64),
) -> Result<FanoutReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    let (schema, tick) = super::tick_schema()?;
    // One set of TLS material for both ends.
    let transport = super::transport_for(options.transport)?;
    let mut root = match remote {
        Some(remote) => Root::Remote(remote),
        None => Root::Local(
            LocalRoot::start(options.transport, transport.clone(), options.mirrors).await?,
        ),
    };
    let endpoint = match &root {
        Root::Local(local) => local.endpoint.clone(),
        Root::Remote(remote) => remote.endpoint(),
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
    let remote_root = match root {
        Root::Local(local) => {
            local.server.shutdown(Duration::from_secs(5)).await;
            false
        }
        // Dropping it ends the other process's commands, and with them its server.
        Root::Remote(remote) => {
            drop(remote);
            true
        }
    };
    let (floor, frames_per_s_floor) = match raw_floor(
        options.mirrors,
        options.flips,
        options.sustained,
    )
    .await
    {
        Ok(RawFloor {
            convergence,
            frames_per_s,
        }) => (Some(convergence), Some(frames_per_s)),
        Err(e) => {
            tracing::warn!(error = %e, mirrors = options.mirrors, "no raw floor: the open-file limit is too low for it");
            (None, None)
        }
    };
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

/// What the bare sockets managed.
struct RawFloor {
    convergence: Percentiles,
    frames_per_s: f64,
}

/// The scenario's pattern over N bare TCP connections, no protocol and no state machine.
/// Convergence: one 12-byte message to each socket per flip, the time until every reader has
/// it. Sustained: for `sustained`, one task per CPU writes a message to every socket of its
/// share that has room, round after round (a full socket is skipped, as a busy client gets no
/// frame of its own), while the readers count what arrives.
async fn raw_floor(n: usize, flips: u64, sustained: Duration) -> std::io::Result<RawFloor> {
    const MESSAGE: usize = 12;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let arrived = Arc::new(AtomicUsize::new(0));
    let bytes_read = Arc::new(AtomicU64::new(0));
    let all = Arc::new(Notify::new());
    let last = Arc::new(Mutex::new(None::<Instant>));
    let mut writers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut reader = TcpStream::connect(addr).await?;
        reader.set_nodelay(true)?;
        let (writer, _) = listener.accept().await?;
        writer.set_nodelay(true)?;
        writers.push(writer);
        let (arrived, all, last, bytes_read) = (
            arrived.clone(),
            all.clone(),
            last.clone(),
            bytes_read.clone(),
        );
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let mut pending = 0;
            while let Ok(read @ 1..) = reader.read(&mut buf).await {
                bytes_read.fetch_add(read as u64, Ordering::Relaxed);
                pending += read;
                if pending >= MESSAGE {
                    pending %= MESSAGE;
                    *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    if arrived.fetch_add(1, Ordering::AcqRel) + 1 == n {
                        all.notify_one();
                    }
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
    let before = bytes_read.load(Ordering::Relaxed);
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let share = n.div_ceil(cpus).max(1);
    let mut tasks = Vec::with_capacity(cpus);
    while !writers.is_empty() {
        let mine: Vec<TcpStream> = writers.drain(..share.min(writers.len())).collect();
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < sustained {
                for w in &mine {
                    match w.try_write(&[2u8; MESSAGE]) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                tokio::task::yield_now().await;
            }
            Ok(mine)
        }));
    }
    // The sockets stay open until the count is taken.
    let mut open = Vec::with_capacity(tasks.len());
    for task in tasks {
        open.push(task.await.map_err(std::io::Error::other)??);
    }
    let elapsed = started.elapsed();
    let frames = (bytes_read.load(Ordering::Relaxed) - before) / MESSAGE as u64;
    Ok(RawFloor {
        convergence: Percentiles::of(&mut samples),
        frames_per_s: frames as f64 / elapsed.as_secs_f64(),
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
