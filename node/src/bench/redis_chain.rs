//! Times a chain of redis-server processes (started by scripts/compare-redis.py) the way
//! `chain --processes` times am-node's: from this same program, on the same one-thread
//! runtime, so the two tables differ only in what they time. A writer SETs a key at the root;
//! a client subscribed to the key's keyspace channel at each depth (depth 0: a second client
//! of the root) stamps the notification when it is read.
//!
//! RESP is spoken only as far as this needs: commands as arrays of bulk strings, `+OK` for a
//! SET, and the fixed bytes of a keyspace notification for the one key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::{BenchError, Percentiles};

const KEY: &str = "flip";
const CHANNEL: &str = "__keyspace@0__:flip";
/// How long one write may take to reach every depth before the run fails.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most servers a run times (the script's bound on hops, plus the root).
pub const MAX_SERVERS: usize = 17;

/// What to run.
#[derive(Debug, Clone)]
pub struct RedisChainOptions {
    /// The servers' ports on 127.0.0.1: the root first, then each replica in chain order.
    pub ports: Vec<u16>,
    pub iterations: u64,
    pub warmup: u64,
}

/// What a run measured: a row per depth, and the SET's reply.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RedisChainReport {
    pub scenario: &'static str,
    pub processes: usize,
    pub iterations: u64,
    pub propagation: Vec<Percentiles>,
    pub ack: Percentiles,
}

impl std::fmt::Display for RedisChainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<11} {:>5} {:>9} {:>9} {:>9} {:>12}",
            "scenario", "depth", "p50 us", "p99 us", "max us", "per-hop p50"
        )?;
        let reference = self.propagation.first().map_or(0.0, |p| p.p50_us);
        for (depth, p) in self.propagation.iter().enumerate() {
            let per_hop = if depth == 0 {
                "-".to_owned()
            } else {
                format!("{:.1}", (p.p50_us - reference) / depth as f64)
            };
            writeln!(
                f,
                "{:<11} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>12}",
                "redis", depth, p.p50_us, p.p99_us, p.max_us, per_hop
            )?;
        }
        writeln!(
            f,
            "{:<11} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>12}",
            "ack", 0, self.ack.p50_us, self.ack.p99_us, self.ack.max_us, "-"
        )?;
        writeln!(
            f,
            "({} redis-server processes, timed by am-node; depth 0 is a client of the root; per-hop = (p50 - depth 0's p50) / depth)",
            self.processes
        )
    }
}

/// A RESP command: an array of bulk strings.
fn command(parts: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        out.extend_from_slice(format!("${}\r\n{p}\r\n", p.len()).as_bytes());
    }
    out
}

fn failed(what: &str, e: &dyn std::fmt::Display) -> BenchError {
    BenchError::Setup(format!("{what}: {e}"))
}

/// Reads until `buf` holds `expected` (and nothing else), or fails with what came.
async fn expect(stream: &mut TcpStream, expected: &[u8], what: &str) -> Result<(), BenchError> {
    let mut buf = vec![0u8; expected.len()];
    tokio::time::timeout(CHANGE_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .map_err(|_| failed(what, &"no answer in time"))?
        .map_err(|e| failed(what, &e))?;
    if buf != expected {
        return Err(failed(
            what,
            &format!("answered {:?}", String::from_utf8_lossy(&buf)),
        ));
    }
    Ok(())
}

/// A subscriber at one depth: sends the instant each notification was read.
async fn subscribe(
    port: u16,
    depth: usize,
) -> Result<mpsc::UnboundedReceiver<Instant>, BenchError> {
    let what = format!("redis at depth {depth} (port {port})");
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| failed(&what, &e))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(&command(&["SUBSCRIBE", CHANNEL]))
        .await
        .map_err(|e| failed(&what, &e))?;
    let confirmed = format!(
        "*3\r\n$9\r\nsubscribe\r\n${}\r\n{CHANNEL}\r\n:1\r\n",
        CHANNEL.len()
    );
    expect(&mut stream, confirmed.as_bytes(), &what).await?;
    let message: Arc<[u8]> = format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{CHANNEL}\r\n$3\r\nset\r\n",
        CHANNEL.len()
    )
    .into_bytes()
    .into();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut held = 0;
        loop {
            let n = match stream.read(&mut buf[held..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let now = Instant::now();
            held += n;
            let whole = held / message.len();
            for i in 0..whole {
                if buf[i * message.len()..(i + 1) * message.len()] != message[..] {
                    // Not a notification of the key: the run times out and says so.
                    return;
                }
                if tx.send(now).is_err() {
                    return;
                }
            }
            buf.copy_within(whole * message.len()..held, 0);
            held -= whole * message.len();
        }
    });
    Ok(rx)
}

/// Times `options.iterations` SETs at the root (after `warmup`) to every depth.
pub async fn run(options: &RedisChainOptions) -> Result<RedisChainReport, BenchError> {
    if options.ports.is_empty() || options.ports.len() > MAX_SERVERS {
        return Err(BenchError::Setup(format!(
            "give 1 to {MAX_SERVERS} ports, the root's first"
        )));
    }
    let mut subscribers = Vec::with_capacity(options.ports.len());
    for (depth, &port) in options.ports.iter().enumerate() {
        subscribers.push(subscribe(port, depth).await?);
    }
    let mut writer = TcpStream::connect(("127.0.0.1", options.ports[0]))
        .await
        .map_err(|e| failed("the root", &e))?;
    let _ = writer.set_nodelay(true);
    let total = options.warmup + options.iterations;
    let mut samples = vec![Vec::with_capacity(options.iterations as usize); subscribers.len()];
    let mut acks = Vec::with_capacity(options.iterations as usize);
    // One write first: the chain is linked when it reached every depth.
    for i in 0..=total {
        let set = command(&["SET", KEY, if i % 2 == 0 { "0" } else { "1" }]);
        let started = Instant::now();
        writer
            .write_all(&set)
            .await
            .map_err(|e| failed("SET at the root", &e))?;
        expect(&mut writer, b"+OK\r\n", "SET at the root").await?;
        let acked = started.elapsed();
        let mut arrived = Vec::with_capacity(subscribers.len());
        for (depth, rx) in subscribers.iter_mut().enumerate() {
            let at = tokio::time::timeout(CHANGE_TIMEOUT, rx.recv())
                .await
                .ok()
                .flatten()
                .ok_or_else(|| BenchError::Scenario {
                    at: i,
                    reason: format!("depth {depth} never saw the write (or got something else)"),
                })?;
            arrived.push(at.saturating_duration_since(started));
        }
        if i > options.warmup {
            acks.push(acked);
            for (s, at) in samples.iter_mut().zip(arrived) {
                s.push(at);
            }
        }
    }
    Ok(RedisChainReport {
        scenario: "redis-chain",
        processes: options.ports.len(),
        iterations: options.iterations,
        propagation: samples.iter_mut().map(|s| Percentiles::of(s)).collect(),
        ack: Percentiles::of(&mut acks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::Mutex;

    /// Just enough of a redis-server: SUBSCRIBE is confirmed, SET answered `+OK` and told to
    /// every subscriber as a keyspace notification.
    async fn fake_redis() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let port = listener.local_addr().expect("bound").port();
        let subscribers: Arc<Mutex<Vec<tokio::net::tcp::OwnedWriteHalf>>> = Arc::default();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let subscribers = subscribers.clone();
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = read.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if text.contains("SUBSCRIBE") {
                            let ok = format!("*3\r\n$9\r\nsubscribe\r\n$19\r\n{CHANNEL}\r\n:1\r\n");
                            write.write_all(ok.as_bytes()).await.expect("written");
                            subscribers.lock().await.push(write);
                            return;
                        }
                        for _ in 0..text.matches("SET").count() {
                            write.write_all(b"+OK\r\n").await.expect("written");
                            let note =
                                format!("*3\r\n$7\r\nmessage\r\n$19\r\n{CHANNEL}\r\n$3\r\nset\r\n");
                            for s in subscribers.lock().await.iter_mut() {
                                s.write_all(note.as_bytes()).await.expect("written");
                            }
                        }
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn a_write_is_timed_at_every_depth() {
        let port = fake_redis().await;
        let report = run(&RedisChainOptions {
            ports: vec![port, port, port],
            iterations: 50,
            warmup: 5,
        })
        .await
        .expect("runs");
        assert_eq!(report.propagation.len(), 3);
        for p in report.propagation.iter().chain([&report.ack]) {
            assert!(
                0.0 < p.p50_us && p.p50_us <= p.p99_us && p.p99_us <= p.max_us,
                "{p:?}"
            );
        }
        assert!(report.to_string().contains("redis           2"));
    }

    #[tokio::test]
    async fn no_ports_or_too_many_are_refused() {
        for ports in [vec![], vec![1; MAX_SERVERS + 1]] {
            let options = RedisChainOptions {
                ports,
                iterations: 1,
                warmup: 0,
            };
            assert!(matches!(run(&options).await, Err(BenchError::Setup(_))));
        }
    }
}
