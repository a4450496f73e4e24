//! The sending side of telemetry: a tracer per machine that turns each transition into a
//! record and puts it in the machine's bounded buffer without waiting (a full buffer drops the
//! record and counts it), and one task per node that drains the buffers to a collector over
//! TCP, one JSON line per record, reconnecting with backoff. The machine's thread only builds
//! the record and calls `try_send`: no lock is held across I/O and nothing waits on the
//! network.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::record::{
    MachineRecord, MachineRef, RawTransition, Record, Redaction, SentRecord, StatusRecord,
    TransitionRecord,
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

/// A machine's side: the tracer bound to it. Per transition it copies what the record needs
/// (the clock, the mutation) and pushes it on the machine's buffer: an unbounded channel
/// bounded by a counter, so a full buffer is seen before anything is copied, and a push never
/// wakes a thread (the task drains on a timer).
struct MachineTracer {
    tx: std::sync::mpsc::Sender<Item>,
    buffer: Arc<Buffer>,
    /// Errors of the handlers of the running transition (one transition at a time runs on a
    /// machine; the lock is never held across anything but a push or a take).
    errors: Mutex<Vec<String>>,
    /// When the running transition began (µs): its record's time. Taken at the start, as
    /// mirrors may apply its clock before the machine's `transition_end` runs.
    started_us: AtomicU64,
}

/// A machine's buffer: how much it holds, its bound, what it dropped.
#[derive(Debug)]
struct Buffer {
    queued: AtomicUsize,
    capacity: usize,
    dropped: AtomicU64,
}

impl Buffer {
    /// Takes a place in the buffer, or counts a drop.
    fn reserve(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl MachineTracer {
    fn push(&self, item: impl FnOnce(u64) -> Item) {
        if self.buffer.reserve() && self.tx.send(item(self.buffer.dropped())).is_err() {
            // The task is gone (telemetry shut down): nothing will read it.
            self.buffer.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Tracer for MachineTracer {
    fn transition_init(&self, _trace: &TransitionTrace<'_>) {
        self.started_us.store(now_us(), Ordering::Relaxed);
    }

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
        self.push(|dropped| Item::Transition(RawTransition::of(trace, errors, now_us(), dropped)));
    }

    fn wants_queued(&self) -> bool {
        // A full buffer would drop it: then the machine need not copy it.
        self.buffer.queued.load(Ordering::Relaxed) < self.buffer.capacity
    }

    fn mutation_queued(&self, _machine: &str, _schema: &Schema, mutation: &Mutation, tick: u64) {
        self.push(|dropped| Item::Queued(mutation.clone(), now_us(), tick, dropped));
    }

    fn mutation_sent(&self, _machine: &str, _schema: &Schema, mutation: &Mutation) {
        self.push(|dropped| Item::Sent(mutation.clone(), now_us(), dropped));
    }

    fn schema_change(&self, _source: &dyn StateSource, _old: &Schema) {
        // The task sends the new schema: it holds the source.
        self.push(|_| Item::SchemaChanged);
    }

    fn machine_dispose(&self, _machine: &str) {
        self.push(|_| Item::Dispose);
    }
}

/// What a machine's buffer holds: copies taken on the machine's thread; the task makes the
/// records.
enum Item {
    Transition(RawTransition),
    /// A mutation a mirror sent, when, and the drops so far.
    Sent(Mutation, u64, u64),
    /// A mutation the machine queued, when, the queue tick it will run as, the drops so far.
    Queued(Mutation, u64, u64, u64),
    /// The schema changed: the task sends the machine's record again.
    SchemaChanged,
    Dispose,
}

/// What the node's status is, asked every half second.
pub type StatusFn = Arc<dyn Fn() -> NodeStatus + Send + Sync>;

struct Attached {
    at: MachineRef,
    source: Arc<dyn StateSource>,
    rx: std::sync::mpsc::Receiver<Item>,
    buffer: Arc<Buffer>,
    /// The clock of the machine's last record: what the next one's `changed` is against.
    last_clock: Vec<u64>,
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
    control: mpsc::UnboundedSender<Control>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    tracers: Arc<Mutex<Vec<Bound>>>,
    buffers: Arc<Mutex<Vec<Arc<Buffer>>>>,
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
            tracers: Arc::default(),
            buffers: Arc::default(),
        }
    }

    /// Traces `source`, served under `name`: its transitions (or, for a mirror, its updates
    /// and the mutations it sends up) go to the collector.
    pub fn attach(&self, name: &str, source: Arc<dyn StateSource>) {
        let at = MachineRef {
            node: self.node.clone(),
            machine: name.to_owned(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let buffer = Arc::new(Buffer {
            queued: AtomicUsize::new(0),
            capacity: self.config.capacity.max(1),
            dropped: AtomicU64::new(0),
        });
        let tracer = Arc::new(MachineTracer {
            tx,
            buffer: buffer.clone(),
            errors: Mutex::new(Vec::new()),
            started_us: AtomicU64::new(0),
        });
        self.buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buffer.clone());
        let id = source.bind_tracer(tracer);
        self.tracers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((source.clone(), id));
        let _ = self.control.send(Control::Attach(Attached {
            at,
            source,
            rx,
            buffer,
            last_clock: Vec::new(),
        }));
    }

    /// Sends the node's status (sources, links, clients) every half second, with its
    /// listeners.
    pub fn set_status(&self, status: StatusFn, listen: Vec<String>) {
        let _ = self.control.send(Control::Status(status, listen));
    }

    /// Records dropped so far over all machines (their buffers were full).
    pub fn dropped(&self) -> u64 {
        self.buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|b| b.dropped())
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

/// The machine's record (schema, clock, listeners); its clock is what the next transition's
/// `changed` is against.
fn machine_record(m: &mut Attached, listen: &[String]) -> Record {
    let schema = m.source.schema();
    let clock = m.source.clock();
    m.last_clock.clone_from(&clock);
    Record::Machine(MachineRecord {
        at: m.at.clone(),
        id: m.source.id().to_owned(),
        parent_id: m.source.parent_id(),
        upstream: m.source.upstream().map(|u| u.endpoint),
        listen: listen.to_vec(),
        states: schema.def().states.clone(),
        clock,
        queue_tick: m.source.queue_tick(),
        time_us: now_us(),
        dropped: m.buffer.dropped(),
    })
}

/// The node's task: connects, says what each machine is, then every few milliseconds writes
/// what the buffers hold, and the status every half second; reconnects with backoff when the
/// collector goes away (meanwhile the buffers fill and then drop).
async fn run(
    node: String,
    config: Arc<TelemetryConfig>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let redaction = config.redaction.clone();
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
        for m in &mut machines {
            push_line(&mut out, &machine_record(m, &listen));
        }
        let mut every = tokio::time::interval(STATUS_EVERY);
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    Some(Control::Attach(mut a)) => {
                        push_line(&mut out, &machine_record(&mut a, &listen));
                        machines.push(a);
                    }
                    Some(Control::Status(s, l)) => { status = Some(s); listen = l; }
                    Some(Control::Flush(done)) => {
                        while drain_ready(&mut machines, &listen, &redaction, &mut out) == BATCH {}
                        flushes.push(done);
                    }
                    None => {
                        while drain_ready(&mut machines, &listen, &redaction, &mut out) == BATCH {}
                        closed = true;
                    }
                },
                _ = drain.tick() => {
                    drain_ready(&mut machines, &listen, &redaction, &mut out);
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
fn push_record(
    out: &mut String,
    m: &mut Attached,
    item: Item,
    listen: &[String],
    redaction: &Redaction,
) {
    let record = match item {
        Item::SchemaChanged => machine_record(m, listen),
        Item::Dispose => Record::Dispose(m.at.clone()),
        Item::Sent(mutation, time_us, dropped) => Record::Sent(SentRecord::from_raw(
            m.at.clone(),
            &mutation,
            &m.source.schema(),
            redaction,
            time_us,
            dropped,
        )),
        Item::Queued(mutation, time_us, tick, dropped) => {
            Record::Transition(TransitionRecord::queued(
                m.at.clone(),
                &mutation,
                &m.source.schema(),
                m.last_clock.clone(),
                redaction,
                time_us,
                tick,
                dropped,
            ))
        }
        Item::Transition(raw) => {
            let record = TransitionRecord::from_raw(
                m.at.clone(),
                raw,
                &m.source.schema(),
                &m.last_clock,
                redaction,
            );
            m.last_clock.clone_from(&record.clock);
            Record::Transition(record)
        }
    };
    push_line(out, &record);
}

/// Takes what the buffers hold now, up to a batch, round robin; returns how many.
fn drain_ready(
    machines: &mut [Attached],
    listen: &[String],
    redaction: &Redaction,
    out: &mut String,
) -> usize {
    let mut taken = 0;
    let mut pending: VecDeque<usize> = (0..machines.len()).collect();
    while let Some(i) = pending.pop_front() {
        if taken >= BATCH {
            break;
        }
        let m = &mut machines[i];
        if let Ok(item) = m.rx.try_recv() {
            m.buffer.queued.fetch_sub(1, Ordering::AcqRel);
            push_record(out, m, item, listen, redaction);
            taken += 1;
            pending.push_back(i);
        }
    }
    taken
}
