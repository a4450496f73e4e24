//! The sending side of telemetry: a tracer per machine that turns each transition into a
//! record and puts it in the machine's bounded buffer without waiting (a full buffer drops the
//! record and counts it), and one task per node that drains the buffers to a collector over
//! TCP, one JSON line per record, reconnecting with backoff. The machine's thread only builds
//! the record and calls `try_send`: no lock is held across I/O and nothing waits on the
//! network.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::record::{
    MachineRecord, MachineRef, Record, Redaction, SentRecord, StatusRecord, TransitionRecord,
    kind_name,
};
use crate::machine::handlers::HandlerCall;
use crate::machine::{Mutation, Schema, StateSource, Tracer, TracerId, TransitionTrace};
use crate::proto::message::NodeStatus;
use crate::transport::{Endpoint, Scheme};

/// Records a machine's buffer holds by default while the collector is slow or away.
pub const DEFAULT_CAPACITY: usize = 4096;
/// Most handler errors kept for one transition's record.
const MAX_ERRORS: usize = 16;
/// How often a node's status is sent.
const STATUS_EVERY: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Most records written in one go before the socket is flushed.
const BATCH: usize = 512;

/// Where and how a node sends telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The collector, `tcp://host:port` (`am-node dbg` listens there).
    pub address: String,
    /// Records each machine's buffer holds.
    pub capacity: usize,
    pub redaction: Redaction,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "telemetry address {0:?} is not tcp://host:port; `am-node dbg` listens on tcp://127.0.0.1:6831 by default"
    )]
    Address(String),
}

impl TelemetryConfig {
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A machine's side: the tracer bound to it.
struct MachineTracer {
    at: MachineRef,
    tx: mpsc::Sender<Item>,
    dropped: Arc<AtomicU64>,
    redaction: Arc<Redaction>,
    /// Errors of the handlers of the running transition (one transition at a time runs on a
    /// machine; the lock is never held across anything but a push or a take).
    errors: Mutex<Vec<String>>,
}

impl MachineTracer {
    fn push(&self, record: Record) {
        if self.tx.try_send(Item::Record(record)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Tracer for MachineTracer {
    fn handler_end(
        &self,
        _transition: &TransitionTrace<'_>,
        _handler: &HandlerCall<'_>,
        failure: Option<&str>,
    ) {
        if let Some(failure) = failure {
            let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
            if errors.len() < MAX_ERRORS {
                errors.push(failure.chars().take(1024).collect());
            }
        }
    }

    fn transition_end(&self, trace: &TransitionTrace<'_>) {
        let errors =
            std::mem::take(&mut *self.errors.lock().unwrap_or_else(PoisonError::into_inner));
        let record = TransitionRecord::of(
            self.at.clone(),
            trace,
            errors,
            &self.redaction,
            now_ms(),
            self.dropped(),
        );
        self.push(Record::Transition(record));
    }

    fn mutation_sent(&self, _machine: &str, schema: &Schema, mutation: &Mutation) {
        let record = SentRecord {
            at: self.at.clone(),
            time_ms: now_ms(),
            kind: kind_name(mutation.kind).to_owned(),
            called: mutation
                .states
                .iter()
                .filter(|&&s| s < schema.len())
                .map(|&s| schema.name(s).to_owned())
                .collect(),
            args: self.redaction.args(mutation),
            origin: mutation.origin.as_deref().map(str::to_owned),
            dropped: self.dropped(),
        };
        self.push(Record::Sent(record));
    }

    fn schema_change(&self, _source: &dyn StateSource, _old: &Schema) {
        // The task sends the new schema: it holds the source.
        if self.tx.try_send(Item::SchemaChanged).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn machine_dispose(&self, _machine: &str) {
        self.push(Record::Dispose(self.at.clone()));
    }
}

/// What a machine's buffer holds. Records go in unboxed: a box would be one more allocation
/// on the machine's thread per transition, and the channel allocates its slots in small blocks
/// as they fill.
#[allow(clippy::large_enum_variant)]
enum Item {
    Record(Record),
    /// The schema changed: the task sends the machine's record again.
    SchemaChanged,
}

/// What the node's status is, asked every half second.
pub type StatusFn = Arc<dyn Fn() -> NodeStatus + Send + Sync>;

struct Attached {
    at: MachineRef,
    source: Arc<dyn StateSource>,
    rx: mpsc::Receiver<Item>,
    dropped: Arc<AtomicU64>,
}

enum Control {
    Attach(Attached),
    Status(StatusFn, Vec<String>),
    Flush(oneshot::Sender<()>),
}

/// A source and the id of the tracer bound to it, to detach it.
type Bound = (Arc<dyn StateSource>, TracerId);

/// A node's telemetry: attach its machines, and a task sends what they do to the collector.
#[derive(Clone)]
pub struct Telemetry {
    node: String,
    config: Arc<TelemetryConfig>,
    redaction: Arc<Redaction>,
    control: mpsc::UnboundedSender<Control>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    tracers: Arc<Mutex<Vec<Bound>>>,
    drops: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
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
            redaction: Arc::new(config.redaction.clone()),
            config,
            control,
            task: Arc::new(Mutex::new(Some(task))),
            tracers: Arc::default(),
            drops: Arc::default(),
        }
    }

    /// Traces `source`, served under `name`: its transitions (or, for a mirror, its updates
    /// and the mutations it sends up) go to the collector.
    pub fn attach(&self, name: &str, source: Arc<dyn StateSource>) {
        let at = MachineRef {
            node: self.node.clone(),
            machine: name.to_owned(),
        };
        let (tx, rx) = mpsc::channel(self.config.capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let tracer = Arc::new(MachineTracer {
            at: at.clone(),
            tx,
            dropped: dropped.clone(),
            redaction: self.redaction.clone(),
            errors: Mutex::new(Vec::new()),
        });
        self.drops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(dropped.clone());
        let id = source.bind_tracer(tracer);
        self.tracers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((source.clone(), id));
        let _ = self.control.send(Control::Attach(Attached {
            at,
            source,
            rx,
            dropped,
        }));
    }

    /// Sends the node's status (sources, links, clients) every half second, with its
    /// listeners.
    pub fn set_status(&self, status: StatusFn, listen: Vec<String>) {
        let _ = self.control.send(Control::Status(status, listen));
    }

    /// Records dropped so far over all machines (their buffers were full).
    pub fn dropped(&self) -> u64 {
        self.drops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
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
        for (source, id) in self
            .tracers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            source.detach_tracer(id);
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

fn machine_record(
    at: &MachineRef,
    source: &dyn StateSource,
    listen: &[String],
    dropped: u64,
) -> Record {
    let schema = source.schema();
    Record::Machine(MachineRecord {
        at: at.clone(),
        id: source.id().to_owned(),
        parent_id: source.parent_id(),
        upstream: source.upstream().map(|u| u.endpoint),
        listen: listen.to_vec(),
        states: schema.def().states.clone(),
        clock: source.clock(),
        queue_tick: source.queue_tick(),
        time_ms: now_ms(),
        dropped,
    })
}

/// The node's task: connects, says what each machine is, then writes records as they come
/// and the status every half second; reconnects with backoff when the collector goes away
/// (meanwhile the buffers fill and then drop).
async fn run(
    node: String,
    config: Arc<TelemetryConfig>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut machines: Vec<Attached> = Vec::new();
    let mut status: Option<StatusFn> = None;
    let mut listen: Vec<String> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut backoff = BACKOFF_MIN;
    let mut closed = false;
    loop {
        let stream = tokio::select! {
            stream = TcpStream::connect(&config.address) => stream,
            ctl = control.recv() => {
                match ctl {
                    Some(Control::Attach(a)) => machines.push(a),
                    Some(Control::Status(s, l)) => { status = Some(s); listen = l; }
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
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        info!(%node, address = %config.address, "telemetry: connected to the collector");
        backoff = BACKOFF_MIN;
        let mut out = String::new();
        for m in &machines {
            push_line(
                &mut out,
                &machine_record(
                    &m.at,
                    &*m.source,
                    &listen,
                    m.dropped.load(Ordering::Relaxed),
                ),
            );
        }
        let mut every = tokio::time::interval(STATUS_EVERY);
        let ended = loop {
            if !out.is_empty() {
                if let Err(e) = stream.write_all(out.as_bytes()).await {
                    break Some(e);
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
                    Some(Control::Attach(a)) => {
                        push_line(&mut out, &machine_record(&a.at, &*a.source, &listen, 0));
                        machines.push(a);
                    }
                    Some(Control::Status(s, l)) => { status = Some(s); listen = l; }
                    Some(Control::Flush(done)) => {
                        drain_ready(&mut machines, &listen, &mut out);
                        flushes.push(done);
                    }
                    None => { drain_ready(&mut machines, &listen, &mut out); closed = true; }
                },
                (i, item) = next_record(&mut machines) => {
                    push_record(&mut out, &machines[i], item, &listen);
                    drain_ready(&mut machines, &listen, &mut out);
                }
                _ = every.tick() => {
                    if let Some(status) = &status {
                        push_line(&mut out, &Record::Status(StatusRecord {
                            node: node.clone(),
                            time_ms: now_ms(),
                            listen: listen.clone(),
                            status: status(),
                        }));
                    }
                }
            }
        };
        if let Some(e) = ended {
            info!(%node, error = %e, "telemetry: lost the collector; reconnecting");
        }
    }
}

fn push_line(out: &mut String, record: &Record) {
    out.push_str(&record.to_line());
    out.push('\n');
}

/// What a tracer buffered, as a line.
fn push_record(out: &mut String, m: &Attached, item: Item, listen: &[String]) {
    match item {
        Item::SchemaChanged => push_line(
            out,
            &machine_record(&m.at, &*m.source, listen, m.dropped.load(Ordering::Relaxed)),
        ),
        Item::Record(record) => push_line(out, &record),
    }
}

/// Takes what the buffers hold now, up to a batch.
fn drain_ready(machines: &mut [Attached], listen: &[String], out: &mut String) {
    let mut taken = 0;
    let mut pending: VecDeque<usize> = (0..machines.len()).collect();
    while let Some(i) = pending.pop_front() {
        if taken >= BATCH {
            break;
        }
        if let Ok(item) = machines[i].rx.try_recv() {
            push_record(out, &machines[i], item, listen);
            taken += 1;
            pending.push_back(i);
        }
    }
}

/// The next item of any machine's buffer (pending while all are empty or closed).
async fn next_record(machines: &mut [Attached]) -> (usize, Item) {
    poll_fn(|cx| {
        for (i, m) in machines.iter_mut().enumerate() {
            if let Poll::Ready(Some(item)) = m.rx.poll_recv(cx) {
                return Poll::Ready((i, item));
            }
        }
        Poll::Pending
    })
    .await
}
