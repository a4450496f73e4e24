//! What the relay costs: a small WebSocket echo round trip through the relay against the same
//! round trip over bare TCP (the added latency, and the process CPU per round trip), and the
//! bulk rate of large messages bridged each way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
pub(crate) fn cpu_time_of(path: &str) -> Option<Duration> {
    stat_fields(&std::fs::read_to_string(path).ok()?)
        .map(|f| Duration::from_millis((f.utime + f.stime) * 10))
}

/// The fields of a /proc stat line the benchmarks read: parent, own and reaped children's CPU
/// ticks.
pub(crate) struct StatFields {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
}

pub(crate) fn stat_fields(stat: &str) -> Option<StatFields> {
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let at = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(StatFields {
        ppid: u32::try_from(at(1)?).ok()?,
        utime: at(11)?,
        stime: at(12)?,
        cutime: at(13)?,
        cstime: at(14)?,
    })
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

/// The TCP targets every bridge leads to: an echo server, a sink that counts what it reads,
/// and a source that writes the bulk bytes to each connection.
pub(crate) struct Targets {
    pub echo: SocketAddr,
    pub sink: SocketAddr,
    pub source: SocketAddr,
    /// Bytes the sink has read, over all its connections.
    pub received: Arc<AtomicU64>,
}

impl Targets {
    pub(crate) async fn start(options: &RelayOptions) -> Result<Targets, BenchError> {
        let setup =
            |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
        let received = Arc::new(AtomicU64::new(0));
        Ok(Targets {
            echo: echo_server().await.map_err(|e| setup("echo server", &e))?,
            sink: bulk_server(None, received.clone())
                .await
                .map_err(|e| setup("sink", &e))?,
            source: bulk_server(
                Some((options.bulk_message, options.bulk_bytes)),
                received.clone(),
            )
            .await
            .map_err(|e| setup("source", &e))?,
            received,
        })
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
/// to each connection (`source`).
async fn bulk_server(
    source: Option<(usize, u64)>,
    received: Arc<AtomicU64>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let mut buf = vec![7u8; 64 * 1024];
                match source {
                    None => {
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                return;
                            }
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    Some((chunk, total)) => {
                        let chunk = chunk.min(buf.len());
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
        }
    });
    Ok(addr)
}

fn at(i: u64) -> impl Fn(&dyn std::fmt::Display) -> BenchError {
    move |e| BenchError::Scenario {
        at: i,
        reason: e.to_string(),
    }
}

/// CPU per round trip, in microseconds (NaN when it could not be read).
fn per_round_trip(cpu: Option<Duration>, round_trips: u64) -> f64 {
    cpu.map_or(f64::NAN, |c| {
        c.as_secs_f64() * 1e6 / round_trips.max(1) as f64
    })
}

/// Round trips over bare TCP to the echo server, and this process's CPU per round trip.
/// `progress(done)` every tenth.
pub(crate) async fn direct_round_trips(
    echo: SocketAddr,
    options: &RelayOptions,
    progress: &dyn Fn(u64),
) -> Result<(Percentiles, f64), BenchError> {
    let mut direct = TcpStream::connect(echo)
        .await
        .map_err(|e| BenchError::Setup(format!("direct connect: {e}")))?;
    direct
        .set_nodelay(true)
        .map_err(|e| BenchError::Setup(format!("nodelay: {e}")))?;
    let payload = vec![5u8; options.message];
    let mut back = vec![0u8; options.message];
    let every = (options.round_trips / 10).max(1);
    let mut samples = Vec::with_capacity(options.round_trips as usize);
    let cpu0 = cpu_time();
    for i in 0..options.round_trips {
        let t = Instant::now();
        direct.write_all(&payload).await.map_err(|e| at(i)(&e))?;
        direct.read_exact(&mut back).await.map_err(|e| at(i)(&e))?;
        samples.push(t.elapsed());
        if (i + 1) % every == 0 {
            progress(i + 1);
        }
    }
    let cpu = cpu0.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));
    Ok((
        Percentiles::of(&mut samples),
        per_round_trip(cpu, options.round_trips),
    ))
}

/// Connects a WebSocket client to `url`, offering `protocol` when given.
pub(crate) async fn ws_connect(
    url: &str,
    protocol: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    BenchError,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = url
        .into_client_request()
        .map_err(|e| BenchError::Setup(format!("{url}: {e}")))?;
    if let Some(protocol) = protocol {
        let value = protocol
            .parse()
            .map_err(|e| BenchError::Setup(format!("subprotocol {protocol:?}: {e}")))?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", value);
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| BenchError::Setup(format!("connecting to {url}: {e}")))?;
    Ok(ws)
}

/// Round trips of `options.message` bytes through the bridge at `url` (whose target is the
/// echo server), and the bridge's CPU per round trip as `bridge_cpu` reads it.
pub(crate) async fn ws_round_trips(
    url: &str,
    protocol: Option<&str>,
    options: &RelayOptions,
    bridge_cpu: &dyn Fn() -> Option<Duration>,
    progress: &dyn Fn(u64),
) -> Result<(Percentiles, f64), BenchError> {
    let mut ws = ws_connect(url, protocol).await?;
    let payload = vec![5u8; options.message];
    let every = (options.round_trips / 10).max(1);
    let mut samples = Vec::with_capacity(options.round_trips as usize);
    let cpu0 = bridge_cpu();
    for i in 0..options.round_trips {
        let t = Instant::now();
        ws.send(Message::binary(payload.clone()))
            .await
            .map_err(|e| at(i)(&e))?;
        let mut got = 0;
        while got < options.message {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => got += data.len(),
                Some(Ok(_)) => {}
                other => return Err(at(i)(&format!("bridge: {other:?}"))),
            }
        }
        samples.push(t.elapsed());
        if (i + 1) % every == 0 {
            progress(i + 1);
        }
    }
    let cpu = cpu0.zip(bridge_cpu()).map(|(a, b)| b.saturating_sub(a));
    let _ = ws.close(None).await;
    Ok((
        Percentiles::of(&mut samples),
        per_round_trip(cpu, options.round_trips),
    ))
}

/// How long the bulk runs wait for a byte to move before they call the bridge stuck.
const STALL: Duration = Duration::from_secs(20);

/// MB/s of `options.bulk_bytes` sent in `options.bulk_message` messages to the bridge at
/// `url`, whose target is the sink counting into `received`.
pub(crate) async fn bulk_to_target(
    url: &str,
    protocol: Option<&str>,
    options: &RelayOptions,
    received: &AtomicU64,
) -> Result<f64, BenchError> {
    let mut ws = ws_connect(url, protocol).await?;
    let base = received.load(Ordering::Relaxed);
    let chunk = tokio_tungstenite::tungstenite::Bytes::from(vec![9u8; options.bulk_message]);
    let messages = options.bulk_bytes / options.bulk_message.max(1) as u64;
    let started = Instant::now();
    for i in 0..messages {
        tokio::time::timeout(STALL, ws.feed(Message::Binary(chunk.clone())))
            .await
            .map_err(|_| at(i)(&"the bridge took nothing for 20 s"))?
            .map_err(|e| at(i)(&e))?;
    }
    tokio::time::timeout(STALL, ws.flush())
        .await
        .map_err(|_| at(messages)(&"the bridge took nothing for 20 s"))?
        .map_err(|e| at(messages)(&e))?;
    // Everything is through once the bridge has forwarded it all.
    let want = messages * options.bulk_message as u64;
    let mut last = (0, Instant::now());
    loop {
        let got = received.load(Ordering::Relaxed) - base;
        if got >= want {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > STALL {
            return Err(at(got)(&format!(
                "the target got {got} of {want} bytes and nothing more for 20 s"
            )));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let rate = want as f64 / started.elapsed().as_secs_f64() / 1e6;
    let _ = ws.close(None).await;
    Ok(rate)
}

/// MB/s of `options.bulk_bytes` read through the bridge at `url`, whose target is the source.
pub(crate) async fn bulk_to_browser(
    url: &str,
    protocol: Option<&str>,
    options: &RelayOptions,
) -> Result<f64, BenchError> {
    let mut ws = ws_connect(url, protocol).await?;
    let started = Instant::now();
    let mut got = 0u64;
    while got < options.bulk_bytes {
        match tokio::time::timeout(STALL, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => got += data.len() as u64,
            Ok(Some(Ok(_))) => {}
            Ok(other) => return Err(at(got)(&format!("bridge: {other:?}"))),
            Err(_) => return Err(at(got)(&"nothing from the bridge for 20 s")),
        }
    }
    let rate = got as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(ws);
    Ok(rate)
}

/// The in-process relay's configuration: the three targets as `echo`, `sink` and `source`.
pub(crate) fn relay_config(targets: &Targets, options: &RelayOptions) -> RelayConfig {
    let target = |name: &str, addr: SocketAddr| Target {
        name: name.into(),
        endpoint: Endpoint::new(Scheme::Tcp, addr.to_string()),
    };
    RelayConfig {
        listen: Endpoint::new(Scheme::Ws, "127.0.0.1:0"),
        targets: vec![
            target("echo", targets.echo),
            target("sink", targets.sink),
            target("source", targets.source),
        ],
        max_message: options.bulk_message.max(options.message) * 2,
        ..RelayConfig::default()
    }
}

/// What the in-process relay (on a thread of its own) measured.
pub(crate) struct InProcess {
    pub via_relay: Percentiles,
    pub relay_cpu_us: f64,
    pub to_target: f64,
    pub to_browser: f64,
}

/// The harness through the relay on a thread of its own in this process.
pub(crate) async fn in_process(
    targets: &Targets,
    options: &RelayOptions,
    progress: &dyn Fn(u64),
) -> Result<InProcess, BenchError> {
    let relay = RelayThread::start(relay_config(targets, options))?;
    let base = format!("ws://{}/arpc", relay.local.address);
    let (via_relay, relay_cpu_us) = ws_round_trips(
        &format!("{base}/echo"),
        None,
        options,
        &|| relay.cpu(),
        progress,
    )
    .await?;
    let to_target =
        bulk_to_target(&format!("{base}/sink"), None, options, &targets.received).await?;
    let to_browser = bulk_to_browser(&format!("{base}/source"), None, options).await?;
    drop(relay);
    Ok(InProcess {
        via_relay,
        relay_cpu_us,
        to_target,
        to_browser,
    })
}

/// Runs the scenario; `progress(done, total)` now and then.
pub async fn run(
    options: &RelayOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<RelayReport, BenchError> {
    let targets = Targets::start(options).await?;
    let total = options.round_trips * 2;
    let (direct_tcp, cpu_us_direct) =
        direct_round_trips(targets.echo, options, &|done| progress(done, total)).await?;
    let relayed = in_process(&targets, options, &|done| {
        progress(options.round_trips + done, total)
    })
    .await?;
    Ok(RelayReport {
        scenario: "relay",
        round_trips: options.round_trips,
        message_bytes: options.message,
        added_us: relayed.via_relay.p50_us - direct_tcp.p50_us,
        direct_tcp,
        via_relay: relayed.via_relay,
        cpu_us_direct,
        relay_cpu_us: relayed.relay_cpu_us,
        bulk_message_bytes: options.bulk_message,
        bulk_to_target_mb_s: relayed.to_target,
        bulk_to_browser_mb_s: relayed.to_browser,
    })
}
