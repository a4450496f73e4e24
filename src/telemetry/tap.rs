//! The sans-IO half of sending telemetry: the tracer bound to each machine, which copies what
//! a record needs onto the machine's bounded buffer (a full buffer declines the transition and
//! counts it dropped), and [`Taps`], which turns what the buffers hold into record lines.
//!
//! Time is passed in (a [`Clock`]), and nothing here does I/O: a node's task (`sender`) writes
//! the lines to the collector over TCP, and a page (am-web) hands them to its glue, which
//! writes them to a WebSocket.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::warn;

use super::record::{
    MAX_LINE, MachineRecord, MachineRef, RawTransition, Record, Redaction, SentRecord,
    TransitionRecord,
};
use crate::machine::handlers::HandlerCall;
use crate::machine::{Mutation, Schema, StateSource, Tracer, TracerId, TransitionTrace};
use crate::proto::message::{NodeStatus, SourceStatus};

/// Wall time in microseconds since the Unix epoch: what records are stamped with.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Most handler errors kept for one transition's record.
const MAX_ERRORS: usize = 16;

/// The tracer bound to a machine. Per transition it copies what the record needs (the clock,
/// the mutation) and pushes it on the machine's buffer: an unbounded channel bounded by a
/// counter, so a full buffer is seen before anything is copied, and a push never wakes a
/// thread (the buffers are drained on a timer).
struct MachineTracer {
    tx: std::sync::mpsc::Sender<Item>,
    buffer: Arc<Buffer>,
    clock: Clock,
    /// Errors of the handlers of the running transition (one transition at a time runs on a
    /// machine; the lock is never held across anything but a push or a take).
    errors: Mutex<Vec<String>>,
    /// When the running transition began (µs): its record's time. Taken at the start, as
    /// mirrors may apply its clock before the machine's `transition_end` runs.
    started_us: AtomicU64,
    /// This tracer declined the running transition (its buffer was full, the drop counted):
    /// it ignores the hooks another tracer's interest still brings.
    declined: AtomicBool,
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

    fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < self.capacity
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl MachineTracer {
    fn push(&self, item: impl FnOnce(u64) -> Item) {
        if self.buffer.reserve() && self.tx.send(item(self.buffer.dropped())).is_err() {
            // The reading side is gone (telemetry stopped): nothing will read it.
            self.buffer.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }
}

impl Tracer for MachineTracer {
    fn wants_transition(&self) -> bool {
        // A full buffer would drop the record: the machine then copies nothing for it, and
        // the transition costs telemetry this load and the drop count.
        let room = self.buffer.has_room();
        if !room {
            self.buffer.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.declined.store(!room, Ordering::Relaxed);
        room
    }

    fn transition_init(&self, _trace: &TransitionTrace<'_>) {
        if !self.declined.load(Ordering::Relaxed) {
            self.started_us.store(self.now(), Ordering::Relaxed);
        }
    }

    fn handler_end(
        &self,
        _transition: &TransitionTrace<'_>,
        _handler: &HandlerCall<'_>,
        failure: Option<&str>,
    ) {
        if let Some(failure) = failure.filter(|_| !self.declined.load(Ordering::Relaxed)) {
            let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
            if errors.len() < MAX_ERRORS {
                errors.push(failure.chars().take(1024).collect());
            }
        }
    }

    fn transition_end(&self, trace: &TransitionTrace<'_>) {
        if self.declined.swap(false, Ordering::Relaxed) {
            return;
        }
        let errors =
            std::mem::take(&mut *self.errors.lock().unwrap_or_else(PoisonError::into_inner));
        let started = self.started_us.load(Ordering::Relaxed);
        self.push(|dropped| Item::Transition(RawTransition::of(trace, errors, started, dropped)));
    }

    fn wants_queued(&self) -> bool {
        // A full buffer would drop it: then the machine need not copy it.
        self.buffer.has_room()
    }

    fn mutation_queued(&self, _machine: &str, _schema: &Schema, mutation: &Mutation, tick: u64) {
        self.push(|dropped| Item::Queued(mutation.clone(), self.now(), tick, dropped));
    }

    fn mutation_sent(&self, _machine: &str, _schema: &Schema, mutation: &Mutation) {
        self.push(|dropped| Item::Sent(mutation.clone(), self.now(), dropped));
    }

    fn schema_change(&self, _source: &dyn StateSource, _old: &Schema) {
        // The reading side sends the new schema: it holds the source.
        self.push(|_| Item::SchemaChanged);
    }

    fn machine_dispose(&self, _machine: &str) {
        self.push(|_| Item::Dispose);
    }
}

/// What a machine's buffer holds: copies taken on the machine's thread; [`Taps`] makes the
/// records.
enum Item {
    Transition(RawTransition),
    /// A mutation a mirror sent, when, and the drops so far.
    Sent(Mutation, u64, u64),
    /// A mutation the machine queued, when, the queue tick it will run as, the drops so far.
    Queued(Mutation, u64, u64, u64),
    /// The schema changed: the machine's record is sent again.
    SchemaChanged,
    Dispose,
}

/// The reading end of one machine's buffer, made by [`tap`] and added to [`Taps`].
pub struct Tap {
    at: MachineRef,
    source: Arc<dyn StateSource>,
    rx: std::sync::mpsc::Receiver<Item>,
    buffer: Arc<Buffer>,
    /// The clock of the machine's last record: what the next one's `changed` is against.
    last_clock: Vec<u64>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("at", &self.at).finish()
    }
}

/// The machine's side of a [`Tap`]: its tracer's id, to detach it, and its drop count.
#[derive(Clone)]
pub struct Tapped {
    source: Arc<dyn StateSource>,
    id: TracerId,
    buffer: Arc<Buffer>,
}

impl std::fmt::Debug for Tapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tapped")
            .field("machine", &self.source.id())
            .finish()
    }
}

impl Tapped {
    /// Records of this machine dropped so far (its buffer was full).
    pub fn dropped(&self) -> u64 {
        self.buffer.dropped()
    }

    /// Unbinds the tracer: the machine copies nothing more.
    pub fn detach(&self) {
        self.source.detach_tracer(self.id);
    }
}

/// Binds a telemetry tracer to `source` (known to the collector as `at`), with a buffer of
/// `capacity` records (at least one), stamping records with `clock`.
pub fn tap(
    at: MachineRef,
    source: Arc<dyn StateSource>,
    capacity: usize,
    clock: Clock,
) -> (Tap, Tapped) {
    let (tx, rx) = std::sync::mpsc::channel();
    let buffer = Arc::new(Buffer {
        queued: AtomicUsize::new(0),
        capacity: capacity.max(1),
        dropped: AtomicU64::new(0),
    });
    let tracer = Arc::new(MachineTracer {
        tx,
        buffer: buffer.clone(),
        clock,
        errors: Mutex::new(Vec::new()),
        started_us: AtomicU64::new(0),
        declined: AtomicBool::new(false),
    });
    let id = source.bind_tracer(tracer);
    let tap = Tap {
        at,
        source: source.clone(),
        rx,
        buffer: buffer.clone(),
        last_clock: Vec::new(),
    };
    (tap, Tapped { source, id, buffer })
}

/// The reading side of a node's (or a page's) machines: makes record lines (JSON, `\n` after
/// each) from what their buffers hold.
pub struct Taps {
    taps: Vec<Tap>,
    /// The node's listeners, in its machines' records.
    listen: Vec<String>,
    redaction: Redaction,
    clock: Clock,
}

impl std::fmt::Debug for Taps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taps").field("taps", &self.taps).finish()
    }
}

impl Taps {
    /// No machines yet; `redaction` applies to every argument sent.
    pub fn new(redaction: Redaction, clock: Clock) -> Taps {
        Taps {
            taps: Vec::new(),
            listen: Vec::new(),
            redaction,
            clock,
        }
    }

    /// Adds a machine's tap and writes its machine record to `out`.
    pub fn add(&mut self, mut tap: Tap, out: &mut String) {
        let record = self.machine_record(&mut tap);
        push_line(out, &record);
        self.taps.push(tap);
    }

    /// The node's listeners, named in its machines' records from now on.
    pub fn set_listen(&mut self, listen: Vec<String>) {
        self.listen = listen;
    }

    /// The node's listeners.
    pub fn listen(&self) -> &[String] {
        &self.listen
    }

    /// Writes every machine's record (schema and current clock) to `out`: what a collector
    /// needs first on every (re)connection.
    pub fn hello(&mut self, out: &mut String) {
        for i in 0..self.taps.len() {
            let record = self.machine_record_at(i);
            push_line(out, &record);
        }
    }

    /// Takes up to `max` items from the buffers, round robin, and writes their records to
    /// `out`; returns how many it took.
    pub fn drain(&mut self, max: usize, out: &mut String) -> usize {
        let mut taken = 0;
        let mut pending: VecDeque<usize> = (0..self.taps.len()).collect();
        while let Some(i) = pending.pop_front() {
            if taken >= max {
                break;
            }
            let Ok(item) = self.taps[i].rx.try_recv() else {
                continue;
            };
            self.taps[i].buffer.queued.fetch_sub(1, Ordering::AcqRel);
            let record = self.record(i, item);
            push_line(out, &record);
            taken += 1;
            pending.push_back(i);
        }
        taken
    }

    /// The status of `node` as its machines show it, for a sender with no server (a page):
    /// each machine as a source (a mirror with its link), no clients, no counters.
    pub fn status(&self, node: &str) -> NodeStatus {
        NodeStatus {
            node: node.to_owned(),
            sources: self
                .taps
                .iter()
                .map(|t| SourceStatus::of(&t.at.machine, t.source.as_ref(), 0))
                .collect(),
            clients: Vec::new(),
            counters: Vec::new(),
        }
    }

    fn machine_record_at(&mut self, i: usize) -> Record {
        machine_record(&mut self.taps[i], &self.listen, (self.clock)())
    }

    fn machine_record(&self, tap: &mut Tap) -> Record {
        machine_record(tap, &self.listen, (self.clock)())
    }

    /// The record of what a machine's tracer buffered.
    fn record(&mut self, i: usize, item: Item) -> Record {
        let redaction = &self.redaction;
        let m = &mut self.taps[i];
        match item {
            Item::SchemaChanged => self.machine_record_at(i),
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
        }
    }
}

/// The machine's record (schema, clock, listeners); its clock is what the next transition's
/// `changed` is against.
fn machine_record(m: &mut Tap, listen: &[String], time_us: u64) -> Record {
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
        time_us,
        dropped: m.buffer.dropped(),
    })
}

/// Writes `record` as a line, within the bounds a collector holds a sender to: a record past
/// them is cut to them first ([`Record::fit`]: a node's status lists at most
/// [`MAX_CLIENTS`](super::record::MAX_CLIENTS) clients, and the rest are counted), and one
/// that still is not within them is left out, with a warning (a collector would end the
/// connection for it, and the buffered lines after it would be lost with it).
pub fn push_line(out: &mut String, record: &Record) {
    let line = record.to_line();
    if line.len() <= MAX_LINE && record.check().is_ok() {
        out.push_str(&line);
        out.push('\n');
        return;
    }
    let mut record = record.clone();
    record.fit();
    let line = record.to_line();
    if line.len() <= MAX_LINE && record.check().is_ok() {
        out.push_str(&line);
        out.push('\n');
    } else {
        warn!(
            node = record.node(),
            machine = record.machine().map(|m| m.machine.as_str()),
            bytes = line.len(),
            "telemetry: a record is over the collector's bounds even cut; not sent"
        );
    }
}
