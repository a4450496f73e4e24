//! The child processes of a benchmark run across processes: each started from this same
//! program, its standard error kept in a file of the run's temporary directory (quoted when it
//! dies), and every one killed when the set is dropped, so a benchmark that fails or is
//! interrupted leaves no node running.

use std::ffi::OsStr;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::BenchError;

/// How much of a dead child's standard error its error quotes.
const LOG_TAIL: u64 = 2_000;
/// The longest first line read from a child (its address).
const MAX_LINE: usize = 256;

/// Child processes of this program, killed (SIGKILL) when dropped, and their temporary
/// directory, removed then.
#[derive(Debug)]
pub struct Children {
    exe: PathBuf,
    dir: PathBuf,
    running: Vec<Running>,
}

/// A child's standard input and output.
#[derive(Debug)]
pub struct Pipes {
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
}

#[derive(Debug)]
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Children {
    /// A set of children of `exe` (usually `std::env::current_exe()`), with a fresh temporary
    /// directory named after `label` and this process.
    pub fn new(exe: PathBuf, label: &str) -> Result<Children, BenchError> {
        let dir = std::env::temp_dir().join(format!("am-bench-{label}-{}", std::process::id()));
        // A directory left by a process of the same id that was killed is ours to reuse.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| {
            BenchError::Setup(format!(
                "cannot create the temporary directory {}: {e}",
                dir.display()
            ))
        })?;
        Ok(Children {
            exe,
            dir,
            running: Vec::new(),
        })
    }

    /// The run's temporary directory (for the files the children read).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `exe ARGS` as the child `name`, its standard error to `DIR/NAME.log`; with
    /// `piped`, its standard input and output are returned (to command it and read its
    /// answers), otherwise they are closed and discarded.
    pub fn spawn<I, S>(
        &mut self,
        name: &str,
        args: I,
        piped: bool,
    ) -> Result<Option<Pipes>, BenchError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = self.dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log)
            .map_err(|e| BenchError::Setup(format!("cannot create {}: {e}", log.display())))?;
        let mut child = Command::new(&self.exe)
            .args(args)
            .stdin(if piped { Stdio::piped() } else { Stdio::null() })
            .stdout(if piped { Stdio::piped() } else { Stdio::null() })
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                BenchError::Setup(format!(
                    "cannot start {} for {name}: {e}",
                    self.exe.display()
                ))
            })?;
        let pipes = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => Some(Pipes { stdin, stdout }),
            _ => None,
        };
        self.running.push(Running {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(pipes)
    }

    /// An error naming the first child that has exited, with the end of its standard error.
    pub fn check(&mut self) -> Result<(), BenchError> {
        for r in &mut self.running {
            if let Ok(Some(status)) = r.child.try_wait() {
                return Err(BenchError::Setup(format!(
                    "{} exited ({status}); its standard error ends with:\n{}",
                    r.name,
                    tail(&r.log)
                )));
            }
        }
        Ok(())
    }

    /// The process id of the running child `name` (to read its memory, say).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.running
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.child.id())
    }

    /// Kills every child and waits for it to end.
    pub async fn stop(&mut self) {
        for r in &mut self.running {
            let _ = r.child.kill().await;
        }
        self.running.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for r in &mut self.running {
            let _ = r.child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last bytes of a log file, as text.
fn tail(log: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(log) else {
        return "(no log)".into();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(std::io::SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut bytes = Vec::new();
    let _ = file.take(LOG_TAIL).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).trim_end().to_owned();
    if text.is_empty() {
        "(nothing)".into()
    } else {
        text
    }
}

/// Reads the next line a child prints (at most `MAX_LINE`, 256 bytes), within `timeout`.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    timeout: Duration,
    what: &str,
) -> Result<String, BenchError> {
    let mut line = String::new();
    let mut limited = reader.take(MAX_LINE as u64);
    match tokio::time::timeout(timeout, limited.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 && line.ends_with('\n') => Ok(line.trim_end().to_owned()),
        Ok(Ok(_)) => Err(BenchError::Setup(format!(
            "{what} printed no complete line (it may have exited)"
        ))),
        Ok(Err(e)) => Err(BenchError::Setup(format!("reading {what}'s output: {e}"))),
        Err(_) => Err(BenchError::Setup(format!(
            "{what} printed nothing within {timeout:?}"
        ))),
    }
}

/// Reads the first line a child prints, within `timeout`.
pub async fn first_line(
    stdout: ChildStdout,
    timeout: Duration,
    what: &str,
) -> Result<String, BenchError> {
    read_line(&mut BufReader::new(stdout), timeout, what).await
}

/// The arguments that start node `node` of the topology `file` quietly, as a bench runs it:
/// `am-node run FILE --node NODE`, no reports, warnings only, `--threads` when given.
pub fn node_args(file: &Path, node: &str, threads: Option<usize>) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        file.to_string_lossy().into_owned(),
        "--node".into(),
        node.into(),
        "--report-ms".into(),
        "0".into(),
        "--log".into(),
        "warn".into(),
    ];
    if let Some(threads) = threads {
        args.extend(["--threads".into(), threads.to_string()]);
    }
    args
}

/// A TCP port of 127.0.0.1 that was free a moment ago: a topology file needs fixed ports
/// (another program may take it before the child binds it; the child then exits saying so).
pub fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(format!("no free port on 127.0.0.1: {e}")))
}

/// A UDP port of 127.0.0.1 that was free a moment ago, for a QUIC listener in a topology file
/// (as [`free_port`]).
pub fn free_udp_port() -> Result<u16, BenchError> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(format!("no free UDP port on 127.0.0.1: {e}")))
}

/// Retries `attempt` until it succeeds, a child dies, or `timeout` passes; the retries are
/// `pause` apart. For waiting on a child that is starting.
pub async fn retry_until<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    children: &mut Children,
    timeout: Duration,
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> Result<T, BenchError> {
    const PAUSE: Duration = Duration::from_millis(20);
    let deadline = Instant::now() + timeout;
    loop {
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) => e.to_string(),
        };
        children.check()?;
        if Instant::now() >= deadline {
            return Err(BenchError::Setup(format!(
                "{what} not ready within {timeout:?}: {error}"
            )));
        }
        tokio::time::sleep(PAUSE).await;
    }
}
