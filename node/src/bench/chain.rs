//! The chain scenario: a root machine, and a chain of mirrors each served again (root -> m1 ->
//! m2 -> m3), over real sockets in one process. Measures how long a change at the root takes to
//! reach each depth, and the round trip of a mutation from the deepest mirror to the root and
//! back. The floor: the same message size relayed hop by hop over bare sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{BenchError, Percentiles};
use asyncmachine::machine::{Args, ClockChange, Machine, StateSource};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{Endpoint, Scheme};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    pub hops: usize,
    pub iterations: u64,
    pub warmup: u64,
    pub transport: Scheme,
}

impl Default for ChainOptions {
    fn default() -> Self {
        ChainOptions {
            hops: 3,
            iterations: 5_000,
            warmup: 200,
            transport: Scheme::Tcp,
        }
    }
}

/// Latency to one depth of the chain.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Depth {
    pub hops: usize,
    pub latency: Percentiles,
    /// The floor's latency to the same depth (raw TCP, whatever the transport).
    pub floor: Percentiles,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainReport {
    pub scenario: &'static str,
    pub transport: &'static str,
    pub iterations: u64,
    pub propagation: Vec<Depth>,
    /// A mutation from the deepest mirror to the root and its result back.
    pub round_trip: Percentiles,
    pub round_trip_hops: usize,
}

/// The table `am-node bench chain` prints: a row per depth, then the round trip.
impl std::fmt::Display for ChainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<10} {:<9} {:>4} {:>9} {:>9} {:>13} {:>13}",
            "scenario", "transport", "hops", "p50 us", "p99 us", "per-hop p50", "floor p50 us"
        )?;
        for d in &self.propagation {
            writeln!(
                f,
                "{:<10} {:<9} {:>4} {:>9.1} {:>9.1} {:>13.1} {:>13.1}",
                "chain",
                self.transport,
                d.hops,
                d.latency.p50_us,
                d.latency.p99_us,
                d.latency.p50_us / d.hops as f64,
                d.floor.p50_us
            )?;
        }
        writeln!(
            f,
            "{:<10} {:<9} {:>4} {:>9.1} {:>9.1} {:>13.1} {:>13}",
            "roundtrip",
            self.transport,
            self.round_trip_hops,
            self.round_trip.p50_us,
            self.round_trip.p99_us,
            self.round_trip.p50_us / (2 * self.round_trip_hops) as f64,
            "-"
        )
    }
}

/// Records when a mirror's tick of the state reaches a target.
pub(super) struct Arrival {
    target: AtomicU64,
    at: Mutex<Option<Instant>>,
    notify: Notify,
}

impl Arrival {
    /// Watches `mirror`'s tick of the state at position `tick`; armed by [`Arrival::arm`].
    pub(super) fn watch(mirror: &Mirror, tick: usize) -> Arc<Arrival> {
        let arrival = Arc::new(Arrival {
            target: AtomicU64::new(u64::MAX),
            at: Mutex::new(None),
            notify: Notify::new(),
        });
        let a = arrival.clone();
        mirror.observe(Arc::new(move |t: &ClockChange<'_>| {
            if t.after
                .get(tick)
                .is_some_and(|&now| now >= a.target.load(Ordering::Acquire))
            {
                let mut at = a.at.lock().unwrap_or_else(PoisonError::into_inner);
                if at.is_none() {
                    *at = Some(Instant::now());
                    a.notify.notify_waiters();
                }
            }
        }));
        arrival
    }

    /// Forgets the last arrival and waits for the tick to reach `target` (`u64::MAX`: never).
    pub(super) fn arm(&self, target: u64) {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.target.store(target, Ordering::Release);
    }

    /// When the tick reached the target.
    pub(super) async fn wait(&self) -> Instant {
        loop {
            let notified = self.notify.notified();
            if let Some(at) = *self.at.lock().unwrap_or_else(PoisonError::into_inner) {
                return at;
            }
            notified.await;
        }
    }
}

/// Runs the scenario over the chosen transport.
pub async fn run(
    options: &ChainOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<ChainReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    let hops = options.hops.max(1);
    let (schema, tick) = super::tick_schema()?;
    let root = Machine::builder(schema.clone()).id("root").build();
    let transport = super::transport_for(options.transport)?;

    // root served by s0; m1 mirrors s0 and is served by s1; and so on.
    let mut servers = Vec::new();
    let mut mirrors: Vec<Mirror> = Vec::new();
    let mut upstream: Arc<dyn StateSource> = Arc::new(root.clone());
    for depth in 0..=hops {
        let server = Server::new(ServerConfig {
            name: format!("n{depth}"),
            transport: transport.clone(),
            ..ServerConfig::default()
        });
        server
            .add_source("chain", upstream.clone())
            .map_err(|e| setup("serving", &e))?;
        let endpoint = server
            .listen(&Endpoint::new(options.transport, "127.0.0.1:0"))
            .await
            .map_err(|e| setup("binding", &e))?;
        servers.push(server);
        if depth == hops {
            break;
        }
        let config = MirrorConfig {
            client_id: format!("m{}", depth + 1),
            schema: Some(Arc::new(schema.clone())),
            keepalive: Duration::from_secs(3600),
            transport: transport.clone(),
            ..MirrorConfig::default()
        };
        let mirror = Mirror::connect(&endpoint.with_machine("chain"), config)
            .await
            .map_err(|e| setup("connecting a mirror", &e))?;
        upstream = Arc::new(mirror.clone());
        mirrors.push(mirror);
    }

    let arrivals: Vec<Arc<Arrival>> = mirrors
        .iter()
        .map(|mirror| Arrival::watch(mirror, tick))
        .collect();

    // Tick is multi: once active, every add is a new activation of +2, the step waited for.
    root.add(&["Tick"], Args::new())
        .map_err(|e| setup("first tick", &e))?;
    for mirror in &mirrors {
        tokio::time::timeout(Duration::from_secs(10), mirror.when(&["Tick"]))
            .await
            .map_err(|_| setup("first tick", &"a mirror never saw it"))?
            .map_err(|e| setup("first tick", &e))?;
    }

    let total = options.warmup + options.iterations;
    let mut samples: Vec<Vec<Duration>> =
        vec![Vec::with_capacity(options.iterations as usize); hops];
    let every = (total / 10).max(1);
    for i in 0..total {
        let target = root.tick("Tick") + 2;
        for a in &arrivals {
            a.arm(target);
        }
        let started = Instant::now();
        root.add(&["Tick"], Args::new())
            .map_err(|e| BenchError::Scenario {
                at: i,
                reason: e.to_string(),
            })?;
        for (depth, a) in arrivals.iter().enumerate() {
            let at = tokio::time::timeout(Duration::from_secs(10), a.wait())
                .await
                .map_err(|_| BenchError::Scenario {
                    at: i,
                    reason: format!("depth {} never saw the change", depth + 1),
                })?;
            if i >= options.warmup {
                samples[depth].push(at - started);
            }
        }
        if (i + 1) % every == 0 {
            progress(i + 1, total * 2);
        }
    }

    let deepest = mirrors
        .last()
        .cloned()
        .ok_or_else(|| setup("chain", &"no mirrors"))?;
    let mut round_trips = Vec::with_capacity(options.iterations as usize);
    for i in 0..total {
        let started = Instant::now();
        let outcome = deepest.add(&["Tick"], Args::new()).await;
        if outcome != Ok(asyncmachine::machine::Outcome::Executed) {
            return Err(BenchError::Scenario {
                at: i,
                reason: format!("round trip returned {outcome:?}"),
            });
        }
        if i >= options.warmup {
            round_trips.push(started.elapsed());
        }
        if (i + 1) % every == 0 {
            progress(total + i + 1, total * 2);
        }
    }

    let floors = raw_floor(hops, total, options.warmup)
        .await
        .map_err(|e| setup("measuring the raw floor", &e))?;
    for mirror in &mirrors {
        mirror.close().await;
    }
    for server in &servers {
        server.shutdown(Duration::from_secs(2)).await;
    }
    let propagation = samples
        .iter_mut()
        .zip(floors)
        .enumerate()
        .map(|(depth, (s, mut f))| Depth {
            hops: depth + 1,
            latency: Percentiles::of(s),
            floor: Percentiles::of(&mut f),
        })
        .collect();
    Ok(ChainReport {
        scenario: "chain",
        transport: options.transport.as_str(),
        iterations: options.iterations,
        propagation,
        round_trip: Percentiles::of(&mut round_trips),
        round_trip_hops: hops,
    })
}

/// A diff-sized message (12 bytes) relayed by bare sockets through `hops` relays; returns the
/// arrival times at each depth.
async fn raw_floor(hops: usize, total: u64, warmup: u64) -> std::io::Result<Vec<Vec<Duration>>> {
    const MESSAGE: usize = 12;
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    // The relays, deepest first: each accepts one connection and forwards to the next.
    let mut next: Option<std::net::SocketAddr> = None;
    let mut entry = None;
    for depth in (1..=hops).rev() {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let forward_to = next;
        let tx = arrived_tx.clone();
        tokio::spawn(async move {
            let (mut from, _) = listener.accept().await?;
            from.set_nodelay(true)?;
            let mut to = match forward_to {
                Some(addr) => {
                    let s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    Some(s)
                }
                None => None,
            };
            let mut buf = [0u8; MESSAGE];
            loop {
                if from.read_exact(&mut buf).await.is_err() {
                    return Ok::<_, std::io::Error>(());
                }
                let _ = tx.send((depth, Instant::now()));
                if let Some(to) = to.as_mut() {
                    to.write_all(&buf).await?;
                }
            }
        });
        next = Some(addr);
        entry = Some(addr);
    }
    let entry = entry.ok_or_else(|| std::io::Error::other("no hops"))?;
    let mut root = TcpStream::connect(entry).await?;
    root.set_nodelay(true)?;
    let mut samples = vec![Vec::with_capacity(total as usize); hops];
    for i in 0..total {
        let started = Instant::now();
        root.write_all(&[7u8; MESSAGE]).await?;
        for _ in 0..hops {
            let (depth, at) = arrived_rx
                .recv()
                .await
                .ok_or_else(|| std::io::Error::other("relay died"))?;
            if i >= warmup {
                samples[depth - 1].push(at - started);
            }
        }
    }
    Ok(samples)
}
