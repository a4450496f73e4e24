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

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{BenchError, Percentiles};
use asyncmachine::machine::{Args, Machine, StateSource, Transition};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{Endpoint, Scheme, TransportConfig};

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

/// A root and its server in another process (`am-node bench fanout --split`), driven by lines
/// of commands; [`serve_remote_root`] is the other side. This process then holds only the
/// mirrors' ends of the connections (half the descriptors), and the floor's reading ends.
pub struct RemoteRoot {
    commands: Pin<Box<dyn AsyncWrite + Send>>,
    replies: Lines<Pin<Box<dyn AsyncBufRead + Send>>>,
    endpoint: Endpoint,
    /// What the mirrors need to reach the root: its CA, for the TLS-based schemes.
    transport: TransportConfig,
    /// Whatever must live as long as the root (its process, say, killed when dropped).
    _keep: Box<dyn std::any::Any + Send>,
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
/// writes `endpoint ENDPOINT` to `replies`, then `trust N` and the N lines of the CA
/// certificate (PEM) its clients must trust (none for tcp and ws), then follows `commands`
/// line by line until they end:
/// - `flip`;
/// - `rss`, answered `rss KIB` (or `rss -`);
/// - `sustain MS`, answered `sustained MUTATIONS FINAL_TICK BATCHES` and a line `WALL_US
///   TICK` per batch (see [`Sustained`]);
/// - `raw N`: ends the root's server (the floor needs its descriptors), answers `raw ADDR`,
///   accepts N bare TCP connections there and answers `raw ready`;
/// - `raw-flip`: writes one floor message to each of them;
/// - `raw-sustain MS`: the floor's sustained writers for MS, answered `raw-sustained`.
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
    let tls = super::BenchTls::for_scheme(transport)?;
    let material = tls
        .as_ref()
        .map_or_else(TransportConfig::default, |t| t.node.clone());
    let root = LocalRoot::start(transport, material, mirrors).await?;
    let ca = tls.map(|t| t.ca_pem).unwrap_or_default();
    reply(&mut replies, format!("endpoint {}\n", root.endpoint)).await?;
    let ca_lines: Vec<&str> = ca.lines().collect();
    reply(&mut replies, format!("trust {}\n", ca_lines.len())).await?;
    for line in ca_lines {
        reply(&mut replies, format!("{line}\n")).await?;
    }
    let mut lines = commands.lines();
    let mut flips = 0;
    let mut floor: Option<RawWriters> = None;
    let no_floor =
        || BenchError::Setup("`raw N` must come before the floor's other commands".into());
    while let Some(line) = lines.next_line().await.map_err(piped)? {
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<u64>)) {
            (Some("flip"), None) => {
                root.flip(flips)?;
                flips += 1;
            }
            (Some("rss"), None) => {
                let answer = rss_kib().map_or("rss -\n".into(), |kib| format!("rss {kib}\n"));
                reply(&mut replies, answer).await?;
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
                reply(&mut replies, answer).await?;
            }
            (Some("raw"), Some(Ok(n))) => {
                root.server.shutdown(Duration::from_secs(5)).await;
                let listener = TcpListener::bind("127.0.0.1:0").await.map_err(floor_io)?;
                let addr = listener.local_addr().map_err(floor_io)?;
                reply(&mut replies, format!("raw {addr}\n")).await?;
                floor = Some(RawWriters::accept(&listener, n as usize).await?);
                reply(&mut replies, "raw ready\n".into()).await?;
            }
            (Some("raw-flip"), None) => floor.as_mut().ok_or_else(no_floor)?.flip().await?,
            (Some("raw-sustain"), Some(Ok(ms))) => {
                let writers = floor.as_mut().ok_or_else(no_floor)?;
                writers.sustain(Duration::from_millis(ms)).await?;
                reply(&mut replies, "raw-sustained\n".into()).await?;
            }
            _ => {
                return Err(BenchError::Setup(format!(
                    "unknown command {line:?} from the bench (expected flip, rss, sustain MS, \
                     raw N, raw-flip or raw-sustain MS)"
                )));
            }
        }
    }
    root.server.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// An error on the pipe between the bench and the root's process.
fn piped(e: std::io::Error) -> BenchError {
    BenchError::Setup(format!("talking to the root's process or the bench: {e}"))
}

fn floor_io(e: std::io::Error) -> BenchError {
    BenchError::Setup(format!("the bare-socket floor: {e}"))
}

async fn reply<W: AsyncWrite + Unpin>(replies: &mut W, answer: String) -> Result<(), BenchError> {
    replies.write_all(answer.as_bytes()).await.map_err(piped)?;
    replies.flush().await.map_err(piped)
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

impl std::fmt::Debug for RemoteRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRoot")
            .field("endpoint", &self.endpoint.to_string())
            .finish_non_exhaustive()
    }
}

impl RemoteRoot {
    /// Takes over a root that follows `commands` and answers on `replies`
    /// ([`serve_remote_root`]), once it has said where it serves. `keep` lives as long as the
    /// root (e.g. its process).
    pub async fn start(
        commands: impl AsyncWrite + Send + 'static,
        replies: impl AsyncBufRead + Send + 'static,
        keep: impl std::any::Any + Send,
    ) -> Result<RemoteRoot, BenchError> {
        let replies: Pin<Box<dyn AsyncBufRead + Send>> = Box::pin(replies);
        let mut replies = replies.lines();
        let first = reply_line(&mut replies).await?;
        let endpoint = first
            .strip_prefix("endpoint ")
            .ok_or_else(|| bad_reply(&first, "endpoint ENDPOINT"))?
            .parse()
            .map_err(|e| BenchError::Setup(format!("the root's endpoint in {first:?}: {e}")))?;
        let line = reply_line(&mut replies).await?;
        let count: usize = line
            .strip_prefix("trust ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad_reply(&line, "trust N"))?;
        let mut ca = String::new();
        for _ in 0..count {
            ca.push_str(&reply_line(&mut replies).await?);
            ca.push('\n');
        }
        let transport = if count == 0 {
            TransportConfig::default()
        } else {
            super::trusting(&ca)?
        };
        Ok(RemoteRoot {
            commands: Box::pin(commands),
            replies,
            endpoint,
            transport,
            _keep: Box::new(keep),
        })
    }

    /// Where the root is served, machine name included.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// What a mirror needs to reach the root (the CA to trust, for the TLS-based schemes).
    pub fn transport(&self) -> &TransportConfig {
        &self.transport
    }

    async fn send(&mut self, line: String) -> Result<(), BenchError> {
        reply(&mut self.commands, line).await
    }

    /// Flips the root once (returns when the command is sent).
    async fn flip(&mut self) -> Result<(), BenchError> {
        self.send("flip\n".into()).await
    }

    /// Has the root mutate as fast as it can for `duration`.
    async fn sustain(&mut self, duration: Duration) -> Result<Sustained, BenchError> {
        self.send(format!("sustain {}\n", duration.as_millis()))
            .await?;
        let numbers = |line: &str| -> Vec<u64> {
            line.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        };
        let head = reply_line(&mut self.replies).await?;
        let [mutations, final_tick, count] =
            numbers(head.strip_prefix("sustained ").unwrap_or(""))[..]
        else {
            return Err(bad_reply(&head, "sustained MUTATIONS FINAL_TICK BATCHES"));
        };
        let mut batches = Vec::with_capacity(count.min(1 << 20) as usize);
        for _ in 0..count {
            let line = reply_line(&mut self.replies).await?;
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

    /// The resident memory of the root's process, KiB, when it can tell.
    async fn rss_kib(&mut self) -> Result<Option<u64>, BenchError> {
        self.send("rss\n".into()).await?;
        let line = reply_line(&mut self.replies).await?;
        match line.strip_prefix("rss ") {
            Some("-") => Ok(None),
            Some(kib) => kib
                .parse()
                .map(Some)
                .map_err(|_| bad_reply(&line, "rss KIB")),
            None => Err(bad_reply(&line, "rss KIB")),
        }
    }

    /// Opens the floor's writing ends in the root's process: `connect` makes the `n` reading
    /// ends here while the root's process accepts them.
    async fn raw_open<F, T>(&mut self, n: usize, connect: F) -> Result<T, BenchError>
    where
        F: AsyncFnOnce(std::net::SocketAddr) -> Result<T, BenchError>,
    {
        self.send(format!("raw {n}\n")).await?;
        let line = reply_line(&mut self.replies).await?;
        let addr = line
            .strip_prefix("raw ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad_reply(&line, "raw ADDR"))?;
        let readers = connect(addr).await?;
        let line = reply_line(&mut self.replies).await?;
        if line != "raw ready" {
            return Err(bad_reply(&line, "raw ready"));
        }
        Ok(readers)
    }

    async fn raw_sustain(&mut self, duration: Duration) -> Result<(), BenchError> {
        self.send(format!("raw-sustain {}\n", duration.as_millis()))
            .await?;
        let line = reply_line(&mut self.replies).await?;
        if line != "raw-sustained" {
            return Err(bad_reply(&line, "raw-sustained"));
        }
        Ok(())
    }
}

/// The next line the root's process wrote.
async fn reply_line<R: AsyncBufRead + Unpin>(replies: &mut Lines<R>) -> Result<String, BenchError> {
    match replies.next_line().await {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(BenchError::Setup(
            "the root's process ended (see its error above)".into(),
        )),
        Err(e) => Err(piped(e)),
    }
}

fn bad_reply(line: &str, expected: &str) -> BenchError {
    BenchError::Setup(format!(
        "the root's process answered {line:?}, not `{expected}`"
    ))
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
    let (schema, tick) = super::tick_schema()?;
    // The mirrors trust the root's TLS material: one set for both ends in one process, the
    // root's CA from its process.
    let (mut root, transport) = match remote {
        Some(remote) => {
            let transport = remote.transport().clone();
            (Root::Remote(remote), transport)
        }
        None => {
            let transport = super::transport_for(options.transport)?;
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

/// What the bare sockets managed.
struct RawFloor {
    convergence: Percentiles,
    frames_per_s: f64,
}

/// The floor's message: the size of a small diff frame.
const RAW_MESSAGE: usize = 12;

/// The writing ends of the floor's bare TCP connections (the server's side of the pattern).
struct RawWriters {
    sockets: Vec<TcpStream>,
}

impl RawWriters {
    async fn accept(listener: &TcpListener, n: usize) -> Result<RawWriters, BenchError> {
        let mut sockets = Vec::with_capacity(n.min(1 << 16));
        while sockets.len() < n {
            let (socket, _) = listener.accept().await.map_err(floor_io)?;
            socket.set_nodelay(true).map_err(floor_io)?;
            sockets.push(socket);
        }
        Ok(RawWriters { sockets })
    }

    /// One message to every connection, one after the other.
    async fn flip(&mut self) -> Result<(), BenchError> {
        for socket in &mut self.sockets {
            socket
                .write_all(&[1u8; RAW_MESSAGE])
                .await
                .map_err(floor_io)?;
        }
        Ok(())
    }

    /// For `duration`, one task per CPU writes a message to every connection of its share that
    /// has room, round after round (a full socket is skipped, as a busy client gets no frame of
    /// its own).
    async fn sustain(&mut self, duration: Duration) -> Result<(), BenchError> {
        let started = Instant::now();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let share = self.sockets.len().div_ceil(cpus).max(1);
        let mut tasks = Vec::with_capacity(cpus);
        while !self.sockets.is_empty() {
            let take = share.min(self.sockets.len());
            let mine: Vec<TcpStream> = self.sockets.drain(..take).collect();
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < duration {
                    for socket in &mine {
                        match socket.try_write(&[2u8; RAW_MESSAGE]) {
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
        for task in tasks {
            let mine = task.await.map_err(|e| floor_io(std::io::Error::other(e)))?;
            self.sockets.extend(mine.map_err(floor_io)?);
        }
        Ok(())
    }
}

/// The reading ends of the floor's connections (the mirrors' side), one task each, counting
/// whole messages; the tasks end when this is dropped.
struct RawReaders {
    n: usize,
    arrived: Arc<AtomicUsize>,
    bytes_read: Arc<AtomicU64>,
    all: Arc<Notify>,
    last: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RawReaders {
    async fn connect(addr: std::net::SocketAddr, n: usize) -> Result<RawReaders, BenchError> {
        let mut readers = RawReaders {
            n,
            arrived: Arc::new(AtomicUsize::new(0)),
            bytes_read: Arc::new(AtomicU64::new(0)),
            all: Arc::new(Notify::new()),
            last: Arc::new(Mutex::new(None)),
            tasks: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let mut socket = TcpStream::connect(addr).await.map_err(floor_io)?;
            socket.set_nodelay(true).map_err(floor_io)?;
            let (arrived, all, last, bytes_read) = (
                readers.arrived.clone(),
                readers.all.clone(),
                readers.last.clone(),
                readers.bytes_read.clone(),
            );
            readers.tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut pending = 0;
                while let Ok(read @ 1..) = socket.read(&mut buf).await {
                    bytes_read.fetch_add(read as u64, Ordering::Relaxed);
                    pending += read;
                    if pending >= RAW_MESSAGE {
                        pending %= RAW_MESSAGE;
                        *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                        if arrived.fetch_add(1, Ordering::AcqRel) + 1 == n {
                            all.notify_one();
                        }
                    }
                }
            }));
        }
        Ok(readers)
    }

    /// The time from `flip` starting to the last reader having its message.
    async fn time_flip(
        &self,
        flip: impl Future<Output = Result<(), BenchError>>,
    ) -> Result<Option<Duration>, BenchError> {
        self.arrived.store(0, Ordering::Release);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let waiting = self.all.notified();
        let started = Instant::now();
        flip.await?;
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .map_err(|_| {
                floor_io(std::io::Error::other(format!(
                    "only {} of {} bare sockets got the message",
                    self.arrived.load(Ordering::Relaxed),
                    self.n
                )))
            })?;
        let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(last.map(|t| t - started))
    }

    /// Whole messages read so far.
    fn messages(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed) / RAW_MESSAGE as u64
    }
}

impl Drop for RawReaders {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Where the floor's writing ends are: here, or in the root's process.
enum FloorWriters<'a> {
    Here(RawWriters),
    There(&'a mut RemoteRoot),
}

impl FloorWriters<'_> {
    async fn flip(&mut self) -> Result<(), BenchError> {
        match self {
            FloorWriters::Here(writers) => writers.flip().await,
            FloorWriters::There(root) => root.send("raw-flip\n".into()).await,
        }
    }

    async fn sustain(&mut self, duration: Duration) -> Result<(), BenchError> {
        match self {
            FloorWriters::Here(writers) => writers.sustain(duration).await,
            FloorWriters::There(root) => root.raw_sustain(duration).await,
        }
    }
}

/// The scenario's pattern over N bare TCP connections, no protocol and no state machine, with
/// the writing ends where the root is (in `remote`'s process, or here) and the reading ends
/// here. Convergence: one 12-byte message to each connection per flip, the time until every
/// reader has it. Sustained: [`RawWriters::sustain`] for `sustained`, counting what arrives.
async fn raw_floor(
    n: usize,
    flips: u64,
    sustained: Duration,
    remote: Option<&mut RemoteRoot>,
) -> Result<RawFloor, BenchError> {
    let connect = async |addr| RawReaders::connect(addr, n).await;
    let (readers, mut writers) = match remote {
        Some(root) => (root.raw_open(n, connect).await?, FloorWriters::There(root)),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await.map_err(floor_io)?;
            let addr = listener.local_addr().map_err(floor_io)?;
            let accepting = tokio::spawn(async move { RawWriters::accept(&listener, n).await });
            let connected = connect(addr).await;
            if connected.is_err() {
                accepting.abort();
            }
            let readers = connected?;
            let writers = accepting
                .await
                .map_err(|e| floor_io(std::io::Error::other(e)))??;
            (readers, FloorWriters::Here(writers))
        }
    };
    let mut samples = Vec::with_capacity(flips as usize);
    for _ in 0..flips {
        samples.extend(readers.time_flip(writers.flip()).await?);
    }
    let (before, started) = (readers.messages(), Instant::now());
    writers.sustain(sustained).await?;
    let elapsed = started.elapsed();
    Ok(RawFloor {
        convergence: Percentiles::of(&mut samples),
        frames_per_s: (readers.messages() - before) as f64 / elapsed.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split run's command pipe, over an in-memory pipe instead of a child process: every
    /// figure arrives, the bare-socket floor included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remote_root_runs_the_whole_scenario_over_its_pipe() {
        run_over_a_pipe(Scheme::Tcp).await;
        // The root's process makes its own TLS material and hands its CA over the pipe.
        run_over_a_pipe(Scheme::Wss).await;
    }

    async fn run_over_a_pipe(scheme: Scheme) {
        let (here, there) = tokio::io::duplex(1 << 16);
        let (their_commands, their_replies) = tokio::io::split(there);
        let serving = tokio::spawn(serve_remote_root(
            scheme,
            3,
            tokio::io::BufReader::new(their_commands),
            their_replies,
        ));
        let (replies, commands) = tokio::io::split(here);
        let root = RemoteRoot::start(commands, tokio::io::BufReader::new(replies), ())
            .await
            .expect("the root says where it serves");
        assert_eq!(root.endpoint().scheme, scheme);
        let options = FanoutOptions {
            mirrors: 3,
            flips: 5,
            sustained: Duration::from_millis(50),
            transport: scheme,
        };
        let report = run_with(&options, Some(root), &|_, _| {})
            .await
            .expect("the scenario runs");
        assert!(report.remote_root);
        assert!(report.convergence.p50_us > 0.0);
        assert!(report.root_mutations_per_s > 0.0 && report.frames_per_s > 0.0);
        let floor = report
            .convergence_floor
            .expect("a floor from the root's side");
        assert!(floor.p50_us > 0.0);
        assert!(report.frames_per_s_floor.is_some_and(|f| f > 0.0));
        assert!(report.server_kib_per_mirror.is_some());
        // Dropping the root ended its commands; the serving side finishes cleanly.
        serving
            .await
            .expect("no panic")
            .expect("the root's side ends without error");
    }

    #[tokio::test]
    async fn a_pipe_out_of_order_or_unknown_is_a_clear_error() {
        for (commands, expected) in [
            (&b"raw-flip\n"[..], "`raw N` must come before"),
            (&b"jump 3\n"[..], "unknown command \"jump 3\""),
        ] {
            let error = serve_remote_root(Scheme::Tcp, 1, commands, tokio::io::sink())
                .await
                .expect_err("a command the root cannot follow");
            assert!(error.to_string().contains(expected), "{error}");
        }

        let replies: &[u8] = b"hello\n";
        let error = RemoteRoot::start(tokio::io::sink(), replies, ())
            .await
            .expect_err("not an endpoint");
        assert!(
            error.to_string().contains("not `endpoint ENDPOINT`"),
            "{error}"
        );
    }

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
