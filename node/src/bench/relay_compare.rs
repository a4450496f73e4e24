//! `bench relay --compare`: the echo and bulk harness of [`super::relay`] run the same way
//! through the in-process relay and through WebSocket-to-TCP bridges that run as processes of
//! their own (am-relay's binary, websocat 1.x, websockify), each bridge's CPU read from /proc
//! (the process and its descendants). Owns starting, probing and killing those processes, and
//! the table of one row per bridge.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::relay::{self, RelayOptions, Targets};
use super::{BenchError, Percentiles};

/// A bridge run as a process of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeKind {
    /// am-relay's binary, with `--target` routes to the three targets.
    AmRelay,
    /// websocat 1.x: `websocat --binary ws-l:ADDR tcp:TARGET`, one process per target.
    Websocat,
    /// websockify (Python): `websockify ADDR TARGET`, one process per target.
    Websockify,
}

impl BridgeKind {
    pub fn name(self) -> &'static str {
        match self {
            BridgeKind::AmRelay => "am-relay",
            BridgeKind::Websocat => "websocat",
            BridgeKind::Websockify => "websockify",
        }
    }

    /// What to do to have it, shown when it is skipped.
    pub fn install_hint(self) -> &'static str {
        match self {
            BridgeKind::AmRelay => "cargo build --release -p am-relay, or give --relay-bin PATH",
            BridgeKind::Websocat => {
                "scripts/install-bench-tools.sh (cargo install websocat --version 1.14.0), \
                 or give --websocat PATH"
            }
            BridgeKind::Websockify => {
                "scripts/install-bench-tools.sh (pip install websockify into a venv), or give \
                 --websockify PATH"
            }
        }
    }
}

/// A bridge to measure: its program, or why it is skipped.
#[derive(Debug, Clone)]
pub struct BridgeProgram {
    pub kind: BridgeKind,
    pub program: Result<PathBuf, String>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub relay: RelayOptions,
    pub bridges: Vec<BridgeProgram>,
    /// The CPUs every process runs on, when pinned (the caller pins this process before its
    /// runtime starts; the bridges inherit it).
    pub pinned: Option<String>,
}

/// One bridge's figures, or why it was skipped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BridgeRow {
    pub bridge: String,
    /// Why it was not measured (not installed, failed to start), with what to do.
    pub skipped: Option<String>,
    pub round_trip: Option<Percentiles>,
    /// p50 round trip through the bridge minus p50 over bare TCP.
    pub added_us: Option<f64>,
    /// The bridge's CPU per round trip: the relay's thread in process, the process and its
    /// descendants otherwise.
    pub cpu_us: Option<f64>,
    pub to_target_mb_s: Option<f64>,
    pub to_browser_mb_s: Option<f64>,
}

impl BridgeRow {
    fn skipped(bridge: &str, why: String) -> BridgeRow {
        BridgeRow {
            bridge: bridge.into(),
            skipped: Some(why),
            round_trip: None,
            added_us: None,
            cpu_us: None,
            to_target_mb_s: None,
            to_browser_mb_s: None,
        }
    }
}

/// What a comparison measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompareReport {
    pub scenario: &'static str,
    pub round_trips: u64,
    pub message_bytes: usize,
    pub bulk_message_bytes: usize,
    pub bulk_bytes: u64,
    /// The CPUs everything ran on (`--pin`), when pinned.
    pub pinned_cpu: Option<String>,
    pub direct_tcp: Percentiles,
    /// This process's CPU (client and echo server) per bare TCP round trip.
    pub cpu_us_direct: f64,
    pub rows: Vec<BridgeRow>,
}

impl std::fmt::Display for CompareReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{}-byte echo round trips x{}, bulk {} MiB in {} KiB messages; {}",
            self.message_bytes,
            self.round_trips,
            self.bulk_bytes >> 20,
            self.bulk_message_bytes / 1024,
            match &self.pinned_cpu {
                Some(cpus) => format!("client, echo and bridges pinned to CPUs {cpus}"),
                None => "unpinned".into(),
            }
        )?;
        writeln!(
            f,
            "{:<22} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10}",
            "bridge", "p50 us", "p99 us", "added us", "cpu us/rt", "up MB/s", "down MB/s"
        )?;
        writeln!(
            f,
            "{:<22} {:>8.1} {:>8.1} {:>9} {:>10.1} {:>10} {:>10}",
            "direct tcp",
            self.direct_tcp.p50_us,
            self.direct_tcp.p99_us,
            "-",
            self.cpu_us_direct,
            "-",
            "-"
        )?;
        let num = |v: Option<f64>, places: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.places$}"))
        };
        for row in &self.rows {
            if let Some(why) = &row.skipped {
                writeln!(f, "{:<22} skipped: {why}", row.bridge)?;
                continue;
            }
            writeln!(
                f,
                "{:<22} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10}",
                row.bridge,
                num(row.round_trip.map(|p| p.p50_us), 1),
                num(row.round_trip.map(|p| p.p99_us), 1),
                num(row.added_us, 1),
                num(row.cpu_us, 1),
                num(row.to_target_mb_s, 0),
                num(row.to_browser_mb_s, 0),
            )?;
        }
        writeln!(
            f,
            "(cpu: client and echo for direct tcp; the relay's thread in process; each bridge \
             process and its children; up = browser -> target, down = target -> browser)"
        )
    }
}

/// A started bridge process, killed (its whole process group) when dropped.
struct Spawned {
    child: tokio::process::Child,
    pid: u32,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // The bridge leads its own process group: websockify forks a child per connection.
        #[cfg(target_os = "linux")]
        if let Ok(pid) = i32::try_from(self.pid) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.start_kill();
    }
}

/// A bridge started toward the three targets: where to connect for each, and whose CPU counts
/// for the round trips.
struct Started {
    echo_url: String,
    sink_url: String,
    source_url: String,
    /// The process that bridges the echo round trips.
    echo_pid: u32,
    protocol: Option<&'static str>,
    _children: Vec<Spawned>,
}

/// A port free now on 127.0.0.1, for a bridge to listen on (they cannot all say which port
/// they took when given 0).
fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Setup(format!("finding a free port: {e}")))
}

/// How long a bridge may take to listen.
const START_LIMIT: Duration = Duration::from_secs(15);

/// Starts `program args` in a process group of its own, and waits until it accepts TCP
/// connections on `port` (or exits, or [`START_LIMIT`] passes).
async fn spawn_listening(
    name: &str,
    program: &PathBuf,
    args: &[String],
    port: u16,
) -> Result<Spawned, String> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let pid = child.id().unwrap_or_default();
    let mut spawned = Spawned { child, pid };
    // Drained, or a chatty bridge would block on a full pipe; the tail explains an early exit.
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    if let Some(mut stderr) = spawned.child.stderr.take() {
        let tail = tail.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                if let Ok(mut tail) = tail.lock() {
                    tail.extend_from_slice(&buf[..n]);
                    let over = tail.len().saturating_sub(2048);
                    tail.drain(..over);
                }
            }
        });
    }
    let began = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(spawned);
        }
        if let Ok(Some(status)) = spawned.child.try_wait() {
            // Its last words may still be in the pipe.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let err = tail
                .lock()
                .map(|t| String::from_utf8_lossy(&t).trim().to_owned())
                .unwrap_or_default();
            return Err(format!("{name} exited ({status}) before listening: {err}"));
        }
        if began.elapsed() > START_LIMIT {
            return Err(format!(
                "{name} did not listen on 127.0.0.1:{port} within {} s",
                START_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start(
    kind: BridgeKind,
    program: &PathBuf,
    targets: &Targets,
    options: &RelayOptions,
) -> Result<Started, String> {
    let port = |_: ()| free_port().map_err(|e| e.to_string());
    match kind {
        BridgeKind::AmRelay => {
            let p = port(())?;
            let max_message = options.bulk_message.max(options.message) * 2;
            let args: Vec<String> = vec![
                "--listen".into(),
                format!("ws://127.0.0.1:{p}"),
                "--target".into(),
                format!("echo=tcp://{}", targets.echo),
                "--target".into(),
                format!("sink=tcp://{}", targets.sink),
                "--target".into(),
                format!("source=tcp://{}", targets.source),
                "--max-message".into(),
                max_message.to_string(),
                "--log".into(),
                "warn".into(),
            ];
            let child = spawn_listening(kind.name(), program, &args, p).await?;
            Ok(Started {
                echo_url: format!("ws://127.0.0.1:{p}/arpc/echo"),
                sink_url: format!("ws://127.0.0.1:{p}/arpc/sink"),
                source_url: format!("ws://127.0.0.1:{p}/arpc/source"),
                echo_pid: child.pid,
                protocol: None,
                _children: vec![child],
            })
        }
        BridgeKind::Websocat | BridgeKind::Websockify => {
            let mut children = Vec::new();
            let mut urls = Vec::new();
            for target in [targets.echo, targets.sink, targets.source] {
                let p = port(())?;
                let args: Vec<String> = if kind == BridgeKind::Websocat {
                    vec![
                        "--binary".into(),
                        format!("ws-l:127.0.0.1:{p}"),
                        format!("tcp:{target}"),
                    ]
                } else {
                    vec![format!("127.0.0.1:{p}"), target.to_string()]
                };
                children.push(spawn_listening(kind.name(), program, &args, p).await?);
                urls.push(format!("ws://127.0.0.1:{p}/"));
            }
            let [echo_url, sink_url, source_url] = <[String; 3]>::try_from(urls)
                .map_err(|_| "three bridges were not started".to_owned())?;
            Ok(Started {
                echo_url,
                sink_url,
                source_url,
                echo_pid: children[0].pid,
                // websockify's own clients (noVNC) ask for `binary`; it accepts none too.
                protocol: None,
                _children: children,
            })
        }
    }
}

/// CPU (user + system, with reaped children's) of `pid` and every live descendant, from /proc.
fn tree_cpu(pid: u32) -> Option<Duration> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(fields) = relay::stat_fields(&stat) {
            procs.push((id, fields));
        }
    }
    // The tree, breadth first from `pid`; bounded by the processes read.
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() && tree.len() <= procs.len() {
        let parent = tree[i];
        tree.extend(
            procs
                .iter()
                .filter(|(id, f)| f.ppid == parent && *id != parent)
                .map(|(id, _)| *id),
        );
        i += 1;
    }
    let mut found = false;
    let ticks: u64 = procs
        .iter()
        .filter(|(id, _)| tree.contains(id))
        .map(|(_, f)| {
            found = true;
            f.utime + f.stime + f.cutime + f.cstime
        })
        .sum();
    found.then(|| Duration::from_millis(ticks * 10))
}

/// Runs the comparison; `progress(label, done, total)` now and then.
pub async fn run(
    options: &CompareOptions,
    progress: &dyn Fn(&str, u64, u64),
) -> Result<CompareReport, BenchError> {
    let o = &options.relay;
    let targets = Targets::start(o).await?;
    let n = o.round_trips;
    let (direct_tcp, cpu_us_direct) =
        relay::direct_round_trips(targets.echo, o, &|d| progress("direct tcp", d, n)).await?;
    let mut rows = Vec::new();
    let relayed = relay::in_process(&targets, o, &|d| progress("in-process relay", d, n)).await?;
    rows.push(BridgeRow {
        bridge: "am-relay (in process)".into(),
        skipped: None,
        round_trip: Some(relayed.via_relay),
        added_us: Some(relayed.via_relay.p50_us - direct_tcp.p50_us),
        cpu_us: Some(relayed.relay_cpu_us),
        to_target_mb_s: Some(relayed.to_target),
        to_browser_mb_s: Some(relayed.to_browser),
    });
    for bridge in &options.bridges {
        let name = bridge.kind.name();
        let program = match &bridge.program {
            Ok(program) => program,
            Err(why) => {
                rows.push(BridgeRow::skipped(
                    name,
                    format!("{why}; to install: {}", bridge.kind.install_hint()),
                ));
                continue;
            }
        };
        let started = match start(bridge.kind, program, &targets, o).await {
            Ok(started) => started,
            Err(why) => {
                rows.push(BridgeRow::skipped(name, why));
                continue;
            }
        };
        let pid = started.echo_pid;
        let (round_trip, cpu_us) = relay::ws_round_trips(
            &started.echo_url,
            started.protocol,
            o,
            &|| tree_cpu(pid),
            &|d| progress(name, d, n),
        )
        .await?;
        let up = relay::bulk_to_target(&started.sink_url, started.protocol, o, &targets.received)
            .await?;
        let down = relay::bulk_to_browser(&started.source_url, started.protocol, o).await?;
        drop(started);
        rows.push(BridgeRow {
            bridge: name.into(),
            skipped: None,
            round_trip: Some(round_trip),
            added_us: Some(round_trip.p50_us - direct_tcp.p50_us),
            cpu_us: Some(cpu_us),
            to_target_mb_s: Some(up),
            to_browser_mb_s: Some(down),
        });
    }
    Ok(CompareReport {
        scenario: "relay-compare",
        round_trips: n,
        message_bytes: o.message,
        bulk_message_bytes: o.bulk_message,
        bulk_bytes: o.bulk_bytes,
        pinned_cpu: options.pinned.clone(),
        direct_tcp,
        cpu_us_direct,
        rows,
    })
}
