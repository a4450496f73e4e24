//! The sgp scenario over a real transport: a worker machine served by a server, a mirror
//! connected through a byte-counting proxy, and the consumer loop of [`crate::sgp`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::proxy::{CountingProxy, UdpCountingProxy};
use super::{BenchError, Percentiles};
use crate::sgp::{Consumer, start_worker};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{Endpoint, Scheme};

/// What to run.
#[derive(Debug, Clone)]
pub struct SgpOptions {
    pub loops: u64,
    /// Loops run before measuring (connection warm-up, allocator, caches).
    pub warmup: u64,
    pub compression: bool,
    pub transport: Scheme,
    /// Mirror -> relay (ws) -> node (tcp), instead of mirror -> node.
    pub via_relay: bool,
}

impl Default for SgpOptions {
    fn default() -> Self {
        SgpOptions {
            loops: 10_000,
            warmup: 500,
            compression: false,
            transport: Scheme::Tcp,
            via_relay: false,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SgpReport {
    pub scenario: &'static str,
    pub transport: &'static str,
    pub loops: u64,
    pub us_per_loop: f64,
    pub latency: Percentiles,
    /// Both directions through the proxy, per measured loop: wire bytes, TLS records and
    /// WebSocket framing included (QUIC: UDP payloads).
    pub bytes_per_loop: f64,
    pub bytes_up_per_loop: f64,
    pub bytes_down_per_loop: f64,
    /// Bytes of the connection and handshake, before the first loop.
    pub handshake_bytes: u64,
    pub errors: u64,
    /// The same message pattern (request and reply of the measured sizes, through the same
    /// kind of proxy) over raw TCP sockets with no protocol and no state machine: the limit.
    pub floor_us_per_loop: f64,
}

/// The table `am-node bench sgp` prints: a header and one row.
/// What an sgp run measured, before it is reported per loop.
pub(super) struct Measured {
    pub loops: u64,
    pub elapsed: Duration,
    pub samples: Vec<Duration>,
    /// Bytes the mirror sent and received in the measured loops.
    pub up: u64,
    pub down: u64,
    pub handshake_bytes: u64,
    pub errors: u64,
    /// The raw floor's time for as many loops.
    pub floor: Duration,
}

impl SgpReport {
    /// The report of a run: its times and bytes per loop.
    pub(super) fn of(scenario: &'static str, transport: &'static str, mut m: Measured) -> Self {
        let loops = m.loops.max(1) as f64;
        SgpReport {
            scenario,
            transport,
            loops: m.loops,
            us_per_loop: m.elapsed.as_secs_f64() * 1e6 / loops,
            latency: Percentiles::of(&mut m.samples),
            bytes_per_loop: (m.up + m.down) as f64 / loops,
            bytes_up_per_loop: m.up as f64 / loops,
            bytes_down_per_loop: m.down as f64 / loops,
            handshake_bytes: m.handshake_bytes,
            errors: m.errors,
            floor_us_per_loop: m.floor.as_secs_f64() * 1e6 / loops,
        }
    }
}

impl std::fmt::Display for SgpReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<9} {:<9} {:>7} {:>9} {:>8} {:>8} {:>10} {:>7} {:>9}",
            "scenario",
            "transport",
            "loops",
            "us/loop",
            "p50 us",
            "p99 us",
            "bytes/loop",
            "errors",
            "floor us"
        )?;
        writeln!(
            f,
            "{:<9} {:<9} {:>7} {:>9.2} {:>8.2} {:>8.2} {:>10.1} {:>7} {:>9.2}",
            self.scenario,
            self.transport,
            self.loops,
            self.us_per_loop,
            self.latency.p50_us,
            self.latency.p99_us,
            self.bytes_per_loop,
            self.errors,
            self.floor_us_per_loop
        )
    }
}

/// Runs the scenario over the chosen transport; `progress(done, total)` is called now and then.
pub async fn run(
    options: &SgpOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<SgpReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    let (worker, stats) = start_worker("sgp-worker", 0x5eed);
    let transport = super::transport_for(options.transport)?;
    let server = Server::new(ServerConfig {
        transport: transport.clone(),
        ..ServerConfig::default()
    });
    server
        .add_source("sgp", Arc::new(worker))
        .map_err(|e| setup("serving the worker", &e))?;
    let bound = server
        .listen(&Endpoint::new(options.transport, "127.0.0.1:0"))
        .await
        .map_err(|e| setup("binding the server", &e))?;
    // Through the relay, the proxy sits between the mirror and the relay.
    let (relay, scheme) = if options.via_relay {
        let config = asyncmachine::relay::RelayConfig {
            listen: Endpoint::new(Scheme::Ws, "127.0.0.1:0"),
            targets: vec![asyncmachine::relay::Target {
                name: "sgp".into(),
                endpoint: bound.clone().with_machine("sgp"),
            }],
            transport: transport.clone(),
            ..asyncmachine::relay::RelayConfig::default()
        };
        let relay = asyncmachine::relay::Relay::start(config)
            .await
            .map_err(|e| setup("starting the relay", &e))?;
        (Some(relay), Scheme::Ws)
    } else {
        (None, options.transport)
    };
    let front = relay.as_ref().map_or(&bound, |r| r.local_endpoint());
    let target: SocketAddr = front
        .address
        .parse()
        .map_err(|e| setup("server address", &e))?;
    // QUIC is UDP: it needs a datagram proxy; the others are TCP underneath.
    let (proxy_addr, counts, _tcp_proxy, _udp_proxy) = if scheme == Scheme::Quic {
        let proxy = UdpCountingProxy::start(target)
            .await
            .map_err(|e| setup("starting the proxy", &e))?;
        (proxy.addr, proxy.counts.clone(), None, Some(proxy))
    } else {
        let proxy = CountingProxy::start(target)
            .await
            .map_err(|e| setup("starting the proxy", &e))?;
        (proxy.addr, proxy.counts.clone(), Some(proxy), None)
    };

    let endpoint = Endpoint::new(scheme, proxy_addr.to_string()).with_machine("sgp");
    let config = MirrorConfig {
        client_id: "sgp-mirror".into(),
        compression: options.compression,
        schema: Some(Arc::new(crate::sgp::schema())),
        // No pings in the measured window: they are not part of the scenario.
        keepalive: Duration::from_secs(3600),
        transport,
        ..MirrorConfig::default()
    };
    let mirror = Mirror::connect(&endpoint, config)
        .await
        .map_err(|e| setup("connecting the mirror", &e))?;
    let handshake_bytes = counts.total();

    let mut consumer = Consumer::new();
    for at in 0..options.warmup {
        step(&mut consumer, &mirror, at).await?;
    }
    let (up0, down0) = (
        counts.up.load(Ordering::Relaxed),
        counts.down.load(Ordering::Relaxed),
    );
    let errors0 = stats.errors.load(Ordering::Relaxed);
    let mut samples = Vec::with_capacity(options.loops as usize);
    let every = (options.loops / 10).max(1);
    let started = Instant::now();
    for at in 0..options.loops {
        let t = Instant::now();
        step(&mut consumer, &mirror, at).await?;
        samples.push(t.elapsed());
        if (at + 1) % every == 0 {
            progress(at + 1, options.loops);
        }
    }
    let elapsed = started.elapsed();
    let up = counts.up.load(Ordering::Relaxed) - up0;
    let down = counts.down.load(Ordering::Relaxed) - down0;
    let errors = stats.errors.load(Ordering::Relaxed) - errors0;
    mirror.close().await;
    server.shutdown(Duration::from_secs(2)).await;

    let loops = options.loops.max(1) as f64;
    let request = (up as f64 / loops).round().max(1.0) as usize;
    let reply = (down as f64 / loops).round().max(1.0) as usize;
    let floor = raw_floor(options.loops, request, reply)
        .await
        .map_err(|e| setup("measuring the raw floor", &e))?;
    let transport = if options.via_relay {
        "ws-relay-tcp"
    } else {
        options.transport.as_str()
    };
    Ok(SgpReport::of(
        "sgp",
        transport,
        Measured {
            loops: options.loops,
            elapsed,
            samples,
            up,
            down,
            handshake_bytes,
            errors,
            floor,
        },
    ))
}

/// One consumer loop; a failure names the loop it happened in.
pub(super) async fn step(
    consumer: &mut Consumer,
    mirror: &Mirror,
    at: u64,
) -> Result<(), BenchError> {
    consumer
        .step(mirror)
        .await
        .map_err(|e| BenchError::Scenario {
            at,
            reason: e.to_string(),
        })
}

/// Time for `loops` request/reply exchanges of the given sizes over raw TCP through a
/// counting proxy: what sgp would cost with a free protocol and a free state machine.
async fn raw_floor(loops: u64, request: usize, reply: usize) -> std::io::Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let (mut inbuf, outbuf) = (vec![0u8; request], vec![1u8; reply]);
        loop {
            if s.read_exact(&mut inbuf).await.is_err() {
                return Ok::<_, std::io::Error>(());
            }
            s.write_all(&outbuf).await?;
        }
    });
    let proxy = CountingProxy::start(server_addr).await?;
    let elapsed = raw_exchanges(proxy.addr, loops, request, reply).await?;
    let _ = echo.await;
    Ok(elapsed)
}

/// Time for `loops` request/reply exchanges of the given sizes with the echo at `addr` (after
/// a twentieth as many unmeasured): the floor of sgp in process and of `sgp --processes`.
pub(super) async fn raw_exchanges(
    addr: std::net::SocketAddr,
    loops: u64,
    request: usize,
    reply: usize,
) -> std::io::Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut client = tokio::net::TcpStream::connect(addr).await?;
    client.set_nodelay(true)?;
    let (outbuf, mut inbuf) = (vec![2u8; request], vec![0u8; reply]);
    for _ in 0..loops / 20 {
        client.write_all(&outbuf).await?;
        client.read_exact(&mut inbuf).await?;
    }
    let started = Instant::now();
    for _ in 0..loops {
        client.write_all(&outbuf).await?;
        client.read_exact(&mut inbuf).await?;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's text is what people and scripts read: pinned, column for column.
    #[test]
    fn a_report_prints_as_a_header_and_one_row() {
        let report = SgpReport {
            scenario: "sgp",
            transport: "tcp",
            loops: 10_000,
            us_per_loop: 41.256,
            latency: Percentiles {
                p50_us: 39.5,
                p99_us: 80.25,
                max_us: 900.0,
            },
            bytes_per_loop: 28.34,
            bytes_up_per_loop: 14.0,
            bytes_down_per_loop: 14.34,
            handshake_bytes: 300,
            errors: 0,
            floor_us_per_loop: 12.5,
        };
        assert_eq!(
            report.to_string(),
            "scenario  transport   loops   us/loop   p50 us   p99 us bytes/loop  errors  floor us\n\
             sgp       tcp         10000     41.26    39.50    80.25       28.3       0     12.50\n"
        );
    }
}
