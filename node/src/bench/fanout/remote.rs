//! The line protocol between the fanout bench and a root in another process
//! (`am-node bench fanout --split` and its child `am-node bench fanout-root`): [`RemoteRoot`]
//! drives the root from the bench's side, [`serve_remote_root`] follows its commands in the
//! root's process. The commands and their answers are documented on [`serve_remote_root`].

use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, Lines};
use tokio::net::TcpListener;

use super::floor::{RawWriters, floor_io};
use super::root::{LocalRoot, Sustained, rss_kib};
use crate::bench::BenchError;
use asyncmachine::transport::{Endpoint, Scheme, TransportConfig};

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
            crate::bench::trusting(&ca)?
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
    pub(super) async fn flip(&mut self) -> Result<(), BenchError> {
        self.send("flip\n".into()).await
    }

    /// Has the root mutate as fast as it can for `duration`.
    pub(super) async fn sustain(&mut self, duration: Duration) -> Result<Sustained, BenchError> {
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
            answer_p99_us: None,
            answered: None,
        })
    }

    /// The resident memory of the root's process, KiB, when it can tell.
    pub(super) async fn rss_kib(&mut self) -> Result<Option<u64>, BenchError> {
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
    pub(super) async fn raw_open<F, T>(&mut self, n: usize, connect: F) -> Result<T, BenchError>
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

    /// One floor message to each bare connection, written in the root's process.
    pub(super) async fn raw_flip(&mut self) -> Result<(), BenchError> {
        self.send("raw-flip\n".into()).await
    }

    /// The floor's sustained writers in the root's process for `duration`.
    pub(super) async fn raw_sustain(&mut self, duration: Duration) -> Result<(), BenchError> {
        self.send(format!("raw-sustain {}\n", duration.as_millis()))
            .await?;
        let line = reply_line(&mut self.replies).await?;
        if line != "raw-sustained" {
            return Err(bad_reply(&line, "raw-sustained"));
        }
        Ok(())
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
    let tls = crate::bench::BenchTls::for_scheme(transport)?;
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

async fn reply<W: AsyncWrite + Unpin>(replies: &mut W, answer: String) -> Result<(), BenchError> {
    replies.write_all(answer.as_bytes()).await.map_err(piped)?;
    replies.flush().await.map_err(piped)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::fanout::{FanoutOptions, run_with};

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
}
