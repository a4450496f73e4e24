//! The sending side of telemetry over the network: one task per node that drains its
//! machines' buffers ([`super::tap`]) to a collector over TCP, one JSON line per record,
//! reconnecting with backoff. The machine's thread only copies what a record needs onto its
//! buffer, and nothing while the buffer is full (the tracer then declines the transition,
//! [`crate::machine::Tracer::wants_transition`]): no lock is held across I/O, nothing waits on
//! the network, and no thread is woken.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info};

use super::record::{MachineRef, Record, Redaction, StatusRecord};
use super::tap::{Tap, Tapped, Taps, push_line, tap};
use crate::machine::StateSource;
use crate::proto::message::NodeStatus;
use crate::transport::{Endpoint, Scheme};

/// Records a machine's buffer holds by default while the collector is slow or away.
pub const DEFAULT_CAPACITY: usize = 4096;
/// How often a node's status is sent.
const STATUS_EVERY: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a connection must have lived for the backoff to start again from
/// [`BACKOFF_MIN`] when it ends: one the collector ends sooner (it refused a line, or has too
/// many senders) is retried as a failed connect is, later each time.
const STABLE: Duration = Duration::from_secs(5);
/// Most records taken from the buffers per drain (every [`DRAIN_EVERY`]): at most 20 000
/// records a second per node, so a machine running millions of transitions a second costs
/// the node a bounded share of a CPU; the rest are dropped at the source and counted.
const BATCH: usize = 100;
/// How often the task takes what the buffers hold: a push never wakes it, so the machine's
/// thread makes no system call for telemetry.
const DRAIN_EVERY: Duration = Duration::from_millis(5);

/// Where and how a node sends telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The collector, `tcp://host:port` (`am-node dbg` listens there).
    pub address: String,
    /// Records each machine's buffer holds.
    pub capacity: usize,
    /// Which arguments are sent as `<redacted>`; by default the words of
    /// [`Redaction::default`], or `AM_DEBUG_REDACT` with [`TelemetryConfig::from_env`].
    pub redaction: Redaction,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The collector's address (the one given) is not `tcp://host:port`: another scheme, or
    /// not an endpoint. Use the address `am-node dbg` prints, `tcp://127.0.0.1:6831` by
    /// default.
    #[error(
        "telemetry address {0:?} is not tcp://host:port; `am-node dbg` listens on tcp://127.0.0.1:6831 by default"
    )]
    Address(String),
}

impl TelemetryConfig {
    /// Sends to the collector at `address` (`tcp://host:port`), with buffers of
    /// [`DEFAULT_CAPACITY`] records and the default redaction. Fails with
    /// [`TelemetryError::Address`] for any other form.
    pub fn new(address: &str) -> Result<Self, TelemetryError> {
        let endpoint: Endpoint = address
            .parse()
            .map_err(|_| TelemetryError::Address(address.to_owned()))?;
        if endpoint.scheme != Scheme::Tcp {
            return Err(TelemetryError::Address(address.to_owned()));
        }
        Ok(TelemetryConfig {
            address: endpoint.address,
            capacity: DEFAULT_CAPACITY,
            redaction: Redaction::default(),
        })
    }

    /// From `AM_DEBUG` (the collector's address) and `AM_DEBUG_REDACT` (a comma-separated list
    /// of words: arguments whose names contain one are redacted); `None` when `AM_DEBUG` is
    /// unset or empty.
    pub fn from_env() -> Option<Result<Self, TelemetryError>> {
        let address = std::env::var("AM_DEBUG").ok().filter(|a| !a.is_empty())?;
        Some(Self::new(&address).map(|mut config| {
            if let Ok(list) = std::env::var("AM_DEBUG_REDACT") {
                config.redaction = Redaction::from_list(&list);
            }
            config
        }))
    }
}

pub(crate) fn now_ms() -> u64 {
    now_us() / 1000
}

/// Wall time in microseconds: records of one host sort in the order they happened.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the node's status is, asked every half second.
pub type StatusFn = Arc<dyn Fn() -> NodeStatus + Send + Sync>;

enum Control {
    Attach(Tap),
    Status(StatusFn, Vec<String>),
    Flush(oneshot::Sender<()>),
}

/// A node's telemetry: attach its machines, and a task sends what they do to the collector.
#[derive(Clone)]
pub struct Telemetry {
    node: String,
    config: Arc<TelemetryConfig>,
    control: mpsc::UnboundedSender<Control>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    tapped: Arc<Mutex<Vec<Tapped>>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("node", &self.node)
            .field("address", &self.config.address)
            .finish()
    }
}

impl Telemetry {
    /// Starts the node's sending task (on the current tokio runtime).
    pub fn start(node: &str, config: TelemetryConfig) -> Telemetry {
        let (control, rx) = mpsc::unbounded_channel();
        let config = Arc::new(config);
        let task = tokio::spawn(run(node.to_owned(), config.clone(), rx));
        Telemetry {
            node: node.to_owned(),
            config,
            control,
            task: Arc::new(Mutex::new(Some(task))),
            tapped: Arc::default(),
        }
    }

    /// Traces `source`, served under `name`: its transitions (or, for a mirror, its updates
    /// and the mutations it sends up) go to the collector.
    pub fn attach(&self, name: &str, source: Arc<dyn StateSource>) {
        let at = MachineRef {
            node: self.node.clone(),
            machine: name.to_owned(),
        };
        let (tap, tapped) = tap(at, source, self.config.capacity, Arc::new(now_us));
        self.tapped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tapped);
        let _ = self.control.send(Control::Attach(tap));
    }

    /// Sends the node's status (sources, links, clients) every half second, with its
    /// listeners.
    pub fn set_status(&self, status: StatusFn, listen: Vec<String>) {
        let _ = self.control.send(Control::Status(status, listen));
    }

    /// Records dropped so far over all machines (their buffers were full).
    pub fn dropped(&self) -> u64 {
        self.tapped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(Tapped::dropped)
            .sum()
    }

    /// Resolves once what the buffers held when called is written to the collector's socket
    /// (at once while there is no collector).
    pub fn flush(&self) -> impl Future<Output = ()> + use<> {
        let (tx, rx) = oneshot::channel();
        let sent = self.control.send(Control::Flush(tx)).is_ok();
        async move {
            if sent {
                let _ = rx.await;
            }
        }
    }

    /// Detaches the tracers, sends what is buffered (within a second), and stops the task.
    pub async fn shutdown(&self) {
        for tapped in self
            .tapped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            tapped.detach();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.abort();
        }
    }
}

/// The node's task: connects, says what each machine is, then every few milliseconds writes
/// what the buffers hold, and the status every half second; reconnects with backoff when the
/// collector goes away (meanwhile the buffers fill and then drop).
async fn run(
    node: String,
    config: Arc<TelemetryConfig>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut taps = Taps::new(config.redaction.clone(), Arc::new(now_us));
    let mut status: Option<StatusFn> = None;
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut backoff = BACKOFF_MIN;
    let mut retry_at = Instant::now();
    let mut closed = false;
    let mut probe = [0u8; 64];
    loop {
        let connect = async {
            tokio::time::sleep_until(retry_at).await;
            TcpStream::connect(&config.address).await
        };
        let stream = tokio::select! {
            stream = connect => stream,
            ctl = control.recv() => {
                match ctl {
                    // Its record goes with the others' on connection.
                    Some(Control::Attach(tap)) => taps.add(tap, &mut String::new()),
                    Some(Control::Status(s, l)) => { status = Some(s); taps.set_listen(l); }
                    Some(Control::Flush(done)) => { let _ = done.send(()); }
                    None => return,
                }
                continue;
            }
        };
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                debug!(%node, address = %config.address, error = %e, "telemetry: collector not reachable; retrying");
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        info!(%node, address = %config.address, "telemetry: connected to the collector");
        let connected = Instant::now();
        let mut out = String::new();
        taps.hello(&mut out);
        let mut every = tokio::time::interval(STATUS_EVERY);
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            if !out.is_empty() {
                if let Err(e) = stream.write_all(out.as_bytes()).await {
                    break e;
                }
                out.clear();
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            if closed {
                return;
            }
            tokio::select! {
                ctl = control.recv() => match ctl {
                    Some(Control::Attach(tap)) => taps.add(tap, &mut out),
                    Some(Control::Status(s, l)) => { status = Some(s); taps.set_listen(l); }
                    Some(Control::Flush(done)) => {
                        while taps.drain(BATCH, &mut out) == BATCH {}
                        flushes.push(done);
                    }
                    None => {
                        while taps.drain(BATCH, &mut out) == BATCH {}
                        closed = true;
                    }
                },
                // A collector writes nothing to a sender: a read that ends is the collector
                // closing the connection (it refused a line, or has too many senders), seen
                // at once rather than at the next failed write.
                read = stream.read(&mut probe) => match read {
                    Ok(0) => break std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the collector closed the connection",
                    ),
                    Ok(_) => {}
                    Err(e) => break e,
                },
                _ = drain.tick() => {
                    taps.drain(BATCH, &mut out);
                }
                _ = every.tick() => {
                    match &status {
                        Some(status) => push_line(&mut out, &Record::Status(StatusRecord {
                            node: node.clone(),
                            time_ms: now_ms(),
                            listen: taps.listen().to_vec(),
                            status: status(),
                        })),
                        // An empty line (the collector skips it): the connection is alive,
                        // within the collector's idle timeout.
                        None => out.push('\n'),
                    }
                }
            }
        };
        info!(%node, error = %ended, "telemetry: lost the collector; reconnecting");
        // A connection the collector ends at once (it refused a line, or has too many
        // senders) is retried with a growing backoff, as a failed connect is; only one that
        // lived a while starts again from the shortest.
        if connected.elapsed() >= STABLE {
            backoff = BACKOFF_MIN;
        }
        retry_at = Instant::now() + backoff;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A collector that ends every connection at once (as one does that refuses the first
    /// line): the sender sees it, and waits longer before each new connection, not 50 ms
    /// every time.
    #[tokio::test]
    async fn a_connection_the_collector_ends_at_once_grows_the_backoff() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("tcp://{}", listener.local_addr().expect("address"));
        let telemetry = Telemetry::start("n", TelemetryConfig::new(&address).expect("address"));
        let accepts = tokio::time::timeout(Duration::from_secs(20), async {
            let mut at = Vec::new();
            while at.len() < 6 {
                let (stream, _) = listener.accept().await.expect("accept");
                at.push(Instant::now());
                drop(stream);
            }
            at
        })
        .await
        .expect("the sender reconnects after each end");
        // Backoffs 50, 100, 200, 400, 800 ms: the last gap is at least the 800 ms wait.
        let last = accepts[5] - accepts[4];
        assert!(
            last >= Duration::from_millis(800),
            "the sender reconnected after {last:?}"
        );
        telemetry.shutdown().await;
    }
}
