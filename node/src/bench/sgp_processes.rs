//! The sgp scenario across processes (`bench sgp --processes`): the worker machine and its
//! server in a child process of this program (`am-node bench sgp-worker`, it has handlers, so
//! not a topology's `am-node run`), the consumer's mirror here, connected to it directly (no
//! proxy: the bytes are the mirror's own counts). The floor: request/reply of the measured
//! sizes over bare TCP to an echo in the worker's process.
//!
//! The worker's process says `endpoint ENDPOINT` on its standard output, then follows lines on
//! its standard input until they end (see [`serve_worker`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWrite};
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

use super::BenchError;
use super::children::{Children, read_line};
use super::sgp::{Measured, SgpOptions, SgpReport, step};
use crate::sgp::{Consumer, start_worker};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{Endpoint, Scheme};

/// The largest floor message either way (the measured sizes are tens of bytes).
const MAX_FLOOR_MESSAGE: usize = 1 << 16;

/// Where the worker's process is and how the bench reaches it.
#[derive(Debug, Clone)]
pub struct ProcessSgpOptions {
    pub sgp: SgpOptions,
    /// The program the worker runs as: this am-node (`std::env::current_exe()`).
    pub exe: std::path::PathBuf,
    /// The worker process's tokio worker threads.
    pub threads: usize,
    pub ready_timeout: Duration,
}

/// Whether `--processes` can run over `scheme`: the worker's process makes no TLS material.
pub fn supported(scheme: Scheme) -> bool {
    matches!(scheme, Scheme::Tcp | Scheme::Ws)
}

/// Runs the scenario with the worker in a child process.
pub async fn run(
    options: &ProcessSgpOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<SgpReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    let sgp = &options.sgp;
    if !supported(sgp.transport) || sgp.via_relay {
        return Err(BenchError::Setup(
            "sgp --processes runs over tcp or ws, without --via-relay".into(),
        ));
    }
    let mut children = Children::new(options.exe.clone(), "sgp")?;
    let threads = options.threads.to_string();
    let pipes = children
        .spawn(
            "worker",
            [
                "bench",
                "sgp-worker",
                "--transport",
                sgp.transport.as_str(),
                "--threads",
                &threads,
            ],
            true,
        )?
        .ok_or_else(|| setup("the worker's process", &"no pipes"))?;
    let mut commands = pipes.stdin;
    let mut replies = BufReader::new(pipes.stdout);
    let mut ask = async |command: String, children: &mut Children| {
        if !command.is_empty() {
            commands
                .write_all(command.as_bytes())
                .await
                .map_err(|e| setup("commanding the worker's process", &e))?;
            commands
                .flush()
                .await
                .map_err(|e| setup("commanding the worker's process", &e))?;
        }
        let line = read_line(&mut replies, options.ready_timeout, "the worker's process").await;
        children.check()?;
        line
    };

    let line = ask(String::new(), &mut children).await?;
    let endpoint: Endpoint = line
        .strip_prefix("endpoint ")
        .and_then(|e| e.parse().ok())
        .ok_or_else(|| setup("the worker's process", &format!("answered {line:?}")))?;
    let config = MirrorConfig {
        client_id: "sgp-mirror".into(),
        compression: sgp.compression,
        schema: Some(Arc::new(crate::sgp::schema())),
        keepalive: Duration::from_secs(3600),
        ..MirrorConfig::default()
    };
    let mirror = Mirror::connect(&endpoint, config)
        .await
        .map_err(|e| setup("connecting the mirror", &e))?;
    let stats = mirror.stats();
    let bytes = || {
        (
            stats.bytes_out.load(Ordering::Relaxed),
            stats.bytes_in.load(Ordering::Relaxed),
        )
    };
    let handshake_bytes = bytes().0 + bytes().1;

    let mut consumer = Consumer::new();
    for at in 0..sgp.warmup {
        step(&mut consumer, &mirror, at).await?;
    }
    let errors0 = worker_errors(&ask(String::from("stats\n"), &mut children).await?)?;
    let (up0, down0) = bytes();
    let mut samples = Vec::with_capacity(sgp.loops as usize);
    let every = (sgp.loops / 10).max(1);
    let started = Instant::now();
    for at in 0..sgp.loops {
        let t = Instant::now();
        if let Err(e) = step(&mut consumer, &mirror, at).await {
            children.check()?;
            return Err(e);
        }
        samples.push(t.elapsed());
        if (at + 1) % every == 0 {
            progress(at + 1, sgp.loops);
        }
    }
    let elapsed = started.elapsed();
    let (up, down) = bytes();
    let (up, down) = (up - up0, down - down0);
    let errors = worker_errors(&ask(String::from("stats\n"), &mut children).await?)? - errors0;
    mirror.close().await;

    let loops = sgp.loops.max(1) as f64;
    let request = ((up as f64 / loops).round() as usize).clamp(1, MAX_FLOOR_MESSAGE);
    let reply = ((down as f64 / loops).round() as usize).clamp(1, MAX_FLOOR_MESSAGE);
    let line = ask(format!("raw {request} {reply}\n"), &mut children).await?;
    let addr: std::net::SocketAddr = line
        .strip_prefix("raw ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| setup("the worker's process", &format!("answered {line:?}")))?;
    let floor = super::sgp::raw_exchanges(addr, sgp.loops, request, reply)
        .await
        .map_err(|e| setup("measuring the raw floor", &e))?;
    children.stop().await;

    Ok(SgpReport::of(
        "sgp-procs",
        sgp.transport.as_str(),
        Measured {
            loops: sgp.loops,
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

/// The errors in a `stats CALLS ERRORS` answer.
fn worker_errors(line: &str) -> Result<u64, BenchError> {
    line.strip_prefix("stats ")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            BenchError::Setup(format!(
                "the worker's process answered {line:?}, not `stats CALLS ERRORS`"
            ))
        })
}

/// The worker's process (`am-node bench sgp-worker`): serves the sgp worker on 127.0.0.1:0
/// over `transport`, writes `endpoint ENDPOINT` to `replies`, then follows `commands` line by
/// line until they end:
/// - `stats`, answered `stats CALLS ERRORS` (the worker's counts so far);
/// - `raw REQUEST REPLY`: the floor's echo, answered `raw ADDR`; it accepts one bare TCP
///   connection there and answers every REQUEST bytes with REPLY bytes.
pub async fn serve_worker<R, W>(
    transport: Scheme,
    commands: R,
    mut replies: W,
) -> Result<(), BenchError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    if !supported(transport) {
        return Err(setup("sgp-worker", &"serves over tcp or ws only"));
    }
    let (worker, stats) = start_worker("sgp-worker", 0x5eed);
    let server = Server::new(ServerConfig::default());
    server
        .add_source("sgp", Arc::new(worker))
        .map_err(|e| setup("serving the worker", &e))?;
    let bound = server
        .listen(&Endpoint::new(transport, "127.0.0.1:0"))
        .await
        .map_err(|e| setup("binding the server", &e))?;
    let mut answer = async |line: String| {
        replies.write_all(line.as_bytes()).await?;
        replies.flush().await
    };
    let piped = |e: std::io::Error| setup("answering the bench", &e);
    answer(format!("endpoint {}\n", bound.with_machine("sgp")))
        .await
        .map_err(piped)?;
    let mut lines = commands.lines();
    while let Some(line) = lines.next_line().await.map_err(piped)? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["stats"] => {
                let (calls, errors) = (
                    stats.calls.load(Ordering::Relaxed),
                    stats.errors.load(Ordering::Relaxed),
                );
                answer(format!("stats {calls} {errors}\n"))
                    .await
                    .map_err(piped)?;
            }
            ["raw", request, reply] => {
                let size = |s: &str| {
                    s.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_FLOOR_MESSAGE).contains(n))
                };
                let (Some(request), Some(reply)) = (size(request), size(reply)) else {
                    return Err(setup(
                        "`raw REQUEST REPLY`",
                        &format!("sizes 1 to {MAX_FLOOR_MESSAGE}, not {line:?}"),
                    ));
                };
                let listener = TcpListener::bind("127.0.0.1:0").await.map_err(piped)?;
                let addr = listener.local_addr().map_err(piped)?;
                tokio::spawn(async move {
                    let (mut s, _) = listener.accept().await?;
                    s.set_nodelay(true)?;
                    let (mut inbuf, outbuf) = (vec![0u8; request], vec![1u8; reply]);
                    while s.read_exact(&mut inbuf).await.is_ok() {
                        s.write_all(&outbuf).await?;
                    }
                    Ok::<_, std::io::Error>(())
                });
                answer(format!("raw {addr}\n")).await.map_err(piped)?;
            }
            _ => {
                return Err(setup(
                    "sgp-worker",
                    &format!("unknown command {line:?} (expected stats or raw REQUEST REPLY)"),
                ));
            }
        }
    }
    server.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
