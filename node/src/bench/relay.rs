//! What the relay costs: a small WebSocket echo round trip through the relay against the same
//! round trip over bare TCP (the added latency, and the process CPU per round trip), and the
//! bulk rate of large messages bridged each way.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::{BenchError, Percentiles};
use asyncmachine::relay::{Relay, RelayConfig, Target};
use asyncmachine::transport::{Endpoint, Scheme};

/// What to run.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub round_trips: u64,
    /// Bytes per echo message.
    pub message: usize,
    /// Bytes per bulk message, and how many bytes to move each way.
    pub bulk_message: usize,
    pub bulk_bytes: u64,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            round_trips: 20_000,
            message: 32,
            bulk_message: 16 * 1024,
            bulk_bytes: 512 << 20,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayReport {
    pub scenario: &'static str,
    pub round_trips: u64,
    pub message_bytes: usize,
    /// Round trip over bare TCP to the echo server: the floor.
    pub direct_tcp: Percentiles,
    /// The same through the relay (WebSocket client -> relay -> TCP echo).
    pub via_relay: Percentiles,
    /// p50 through the relay minus p50 direct.
    pub added_us: f64,
    /// Process CPU (client and echo server) per round trip over bare TCP.
    pub cpu_us_direct: f64,
    /// CPU of the relay's own thread per round trip through it.
    pub relay_cpu_us: f64,
    pub bulk_message_bytes: usize,
    /// MB/s (10^6 bytes) bridged browser -> target and target -> browser.
    pub bulk_to_target_mb_s: f64,
    pub bulk_to_browser_mb_s: f64,
}

/// What `am-node bench relay` prints: the round trips as a table, then the summary lines.
impl std::fmt::Display for RelayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<22} {:>9} {:>9} {:>12}",
            "round trip", "p50 us", "p99 us", "cpu us/rt"
        )?;
        writeln!(
            f,
            "{:<22} {:>9.1} {:>9.1} {:>12.1}",
            "direct tcp", self.direct_tcp.p50_us, self.direct_tcp.p99_us, self.cpu_us_direct
        )?;
        writeln!(
            f,
            "{:<22} {:>9.1} {:>9.1} {:>12.1}",
            "ws -> relay -> tcp", self.via_relay.p50_us, self.via_relay.p99_us, self.relay_cpu_us
        )?;
        writeln!(
            f,
            "(cpu: the client and echo process for direct; the relay's own thread through it)"
        )?;
        writeln!(
            f,
            "relay adds {:.1} us per {}-byte round trip (p50)",
            self.added_us, self.message_bytes
        )?;
        writeln!(
            f,
            "bulk, {} KiB messages: {:.0} MB/s browser -> target, {:.0} MB/s target -> browser",
            self.bulk_message_bytes / 1024,
            self.bulk_to_target_mb_s,
            self.bulk_to_browser_mb_s
        )
    }
}

/// CPU time (user + system) from a /proc stat file, in 1/100 s ticks: of this process
/// (`/proc/self/stat`) or of one thread (`/proc/self/task/TID/stat`).
fn cpu_time_of(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

fn cpu_time() -> Option<Duration> {
    cpu_time_of("/proc/self/stat")
}

/// The relay on a thread of its own (one-thread runtime), so its CPU can be read apart.
struct RelayThread {
    local: Endpoint,
    stat: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RelayThread {
    fn start(config: RelayConfig) -> Result<RelayThread, BenchError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                match Relay::start(config).await {
                    Ok(relay) => {
                        let _ = ready_tx.send(Ok((relay.local_endpoint().clone(), tid)));
                        let _ = stopped.await;
                        drop(relay);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        let (local, tid) = ready_rx
            .recv()
            .map_err(|e| BenchError::Setup(format!("relay thread: {e}")))?
            .map_err(|e| BenchError::Setup(format!("relay: {e}")))?;
        Ok(RelayThread {
            local,
            stat: format!("/proc/self/task/{tid}/stat"),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn cpu(&self) -> Option<Duration> {
        cpu_time_of(&self.stat)
    }
}

impl Drop for RelayThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn echo_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A TCP target that discards what it reads, counting it (`sink`), or writes `total` bytes
/// (`source`).
async fn bulk_server(
    source: Option<(usize, u64)>,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![7u8; 64 * 1024];
        match source {
            None => {
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Some((chunk, total)) => {
                let mut sent = 0u64;
                while sent < total {
                    if s.write_all(&buf[..chunk]).await.is_err() {
                        return;
                    }
                    sent += chunk as u64;
                }
                // Keep the connection until the reader is done.
                let _ = s.read(&mut buf).await;
            }
        }
    });
    Ok(addr)
}

/// Runs the scenario; `progress(done, total)` now and then.
pub async fn run(
    options: &RelayOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<RelayReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    let echo = echo_server().await.map_err(|e| setup("echo server", &e))?;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = bulk_server(None, received.clone())
        .await
        .map_err(|e| setup("sink", &e))?;
    let source = bulk_server(
        Some((options.bulk_message, options.bulk_bytes)),
        received.clone(),
    )
    .await
    .map_err(|e| setup("source", &e))?;
    let target = |name: &str, addr: SocketAddr| Target {
        name: name.into(),
        endpoint: Endpoint::new(Scheme::Tcp, addr.to_string()),
    };
    let relay = RelayThread::start(RelayConfig {
        listen: Endpoint::new(Scheme::Ws, "127.0.0.1:0"),
        targets: vec![
            target("echo", echo),
            target("sink", sink),
            target("source", source),
        ],
        max_message: options.bulk_message.max(options.message) * 2,
        ..RelayConfig::default()
    })?;
    let relay_addr = relay.local.address.clone();
    let total = options.round_trips * 2;
    let every = (total / 10).max(1);
    let payload = vec![5u8; options.message];

    // Direct TCP round trips: the floor.
    let mut direct = TcpStream::connect(echo)
        .await
        .map_err(|e| setup("direct connect", &e))?;
    direct.set_nodelay(true).map_err(|e| setup("nodelay", &e))?;
    let mut back = vec![0u8; options.message];
    let mut direct_samples = Vec::with_capacity(options.round_trips as usize);
    let cpu0 = cpu_time();
    for i in 0..options.round_trips {
        let t = Instant::now();
        direct
            .write_all(&payload)
            .await
            .map_err(|e| BenchError::Scenario {
                at: i,
                reason: e.to_string(),
            })?;
        direct
            .read_exact(&mut back)
            .await
            .map_err(|e| BenchError::Scenario {
                at: i,
                reason: e.to_string(),
            })?;
        direct_samples.push(t.elapsed());
        if (i + 1) % every == 0 {
            progress(i + 1, total);
        }
    }
    let cpu_direct = cpu0.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));

    // The same through the relay.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{relay_addr}/arpc/echo"))
        .await
        .map_err(|e| setup("relay connect", &e))?;
    let mut relay_samples = Vec::with_capacity(options.round_trips as usize);
    let cpu1 = relay.cpu();
    for i in 0..options.round_trips {
        let t = Instant::now();
        ws.send(Message::binary(payload.clone()))
            .await
            .map_err(|e| BenchError::Scenario {
                at: i,
                reason: e.to_string(),
            })?;
        let mut got = 0;
        while got < options.message {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => got += data.len(),
                Some(Ok(_)) => {}
                other => {
                    return Err(BenchError::Scenario {
                        at: i,
                        reason: format!("relay: {other:?}"),
                    });
                }
            }
        }
        relay_samples.push(t.elapsed());
        if (i + 1) % every == 0 {
            progress(options.round_trips + i + 1, total);
        }
    }
    let cpu_relay = cpu1.zip(relay.cpu()).map(|(a, b)| b.saturating_sub(a));

    // Bulk, browser -> target.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{relay_addr}/arpc/sink"))
        .await
        .map_err(|e| setup("relay connect", &e))?;
    let chunk = vec![9u8; options.bulk_message];
    let messages = options.bulk_bytes / options.bulk_message as u64;
    let started = Instant::now();
    for i in 0..messages {
        ws.feed(Message::binary(chunk.clone()))
            .await
            .map_err(|e| BenchError::Scenario {
                at: i,
                reason: e.to_string(),
            })?;
    }
    ws.flush().await.map_err(|e| setup("flush", &e))?;
    // Everything is through once the relay has forwarded it all.
    let want = messages * options.bulk_message as u64;
    while received.load(std::sync::atomic::Ordering::Relaxed) < want {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let to_target = want as f64 / started.elapsed().as_secs_f64() / 1e6;

    // Bulk, target -> browser.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{relay_addr}/arpc/source"))
        .await
        .map_err(|e| setup("relay connect", &e))?;
    let started = Instant::now();
    let mut got = 0u64;
    while got < options.bulk_bytes {
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => got += data.len() as u64,
            Some(Ok(_)) => {}
            other => {
                return Err(BenchError::Scenario {
                    at: got,
                    reason: format!("relay: {other:?}"),
                });
            }
        }
    }
    let to_browser = got as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(relay);

    let direct_p = Percentiles::of(&mut direct_samples);
    let relay_p = Percentiles::of(&mut relay_samples);
    let per = |cpu: Option<Duration>| {
        cpu.map_or(f64::NAN, |c| {
            c.as_secs_f64() * 1e6 / options.round_trips as f64
        })
    };
    Ok(RelayReport {
        scenario: "relay",
        round_trips: options.round_trips,
        message_bytes: options.message,
        added_us: relay_p.p50_us - direct_p.p50_us,
        direct_tcp: direct_p,
        via_relay: relay_p,
        cpu_us_direct: per(cpu_direct),
        relay_cpu_us: per(cpu_relay),
        bulk_message_bytes: options.bulk_message,
        bulk_to_target_mb_s: to_target,
        bulk_to_browser_mb_s: to_browser,
    })
}
