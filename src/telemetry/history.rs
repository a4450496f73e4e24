//! A collector's history, without I/O: every record from every node in the order it arrived
//! (numbered), bounded; each machine's latest schema and clock; each node's latest status;
//! and the questions a debugger asks of it: which entries match a filter, what every
//! machine's clock was at an entry (time travel), the next or previous transition from an
//! entry, and through which hops a forwarded mutation came. Export and import as lines (the
//! dump format of TELEMETRY.md; the driver compresses them).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::record::{MachineRecord, Record, RecordError, StatusRecord};

/// Most entries kept by default; the oldest go first.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Most nodes whose latest status is kept by default ([`History::with_bounds`]).
pub const DEFAULT_MAX_NODES: usize = 4096;
/// Most machines (`node/machine`) the history knows by default ([`History::with_bounds`]).
pub const DEFAULT_MAX_MACHINES: usize = 65_536;
/// Most hops followed back from a transition.
pub const MAX_HOPS: usize = 32;
/// How many entries around a transition are searched for the hop that sent it.
const HOP_WINDOW: usize = 1024;
/// The first line of a dump.
pub const DUMP_FORMAT: &str = "am-dbg-dump";
/// The highest `seq` a history numbers (2^53 - 1): the console reads sequences as JavaScript
/// numbers, exact up to it. A dump whose `next_seq` is past it is refused; a history that
/// reaches it takes no more entries.
pub const MAX_SEQ: u64 = (1 << 53) - 1;
/// The dump format version this build writes and reads; a dump of another version is refused
/// ([`DumpError::Version`]).
pub const DUMP_VERSION: u32 = 1;

/// One record as the collector keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the collector's order, from 1, never reused.
    pub seq: u64,
    /// Wall time at the collector, ms since the Unix epoch.
    pub received_ms: u64,
    /// The record as the sender wrote it (and the collector checked it).
    pub record: Record,
}

/// What the collector knows of a machine now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineView {
    /// `node/machine`.
    pub key: String,
    /// The latest `Machine` record (schema, upstream, listeners); `None` until one came.
    pub info: Option<MachineRecord>,
    /// Its latest clock: one tick per state, in schema order (odd = active); empty until a
    /// `Machine` or `Transition` record came.
    pub clock: Vec<u64>,
    /// Its latest queue tick (how many mutations it had processed), as last reported.
    pub queue_tick: u64,
    /// The sequence of its latest entry.
    pub last_seq: u64,
    /// Records its node dropped (its buffer was full), as last reported.
    pub dropped: u64,
    /// Whether its node reported it disposed (a later `Machine` record clears it).
    pub disposed: bool,
}

/// Which entries a console wants to see; every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// `node/machine`.
    pub machine: Option<String>,
    /// A state called, or whose tick changed.
    pub state: Option<String>,
    /// `add`, `remove`, `set`, `update` (a mirror's), `sent`, `machine`, `dispose`.
    pub kind: Option<String>,
    /// `executed`, `canceled`, `queued`, `update`.
    pub outcome: Option<String>,
}

/// A line of a dump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "d", rename_all = "snake_case")]
enum DumpLine {
    Header {
        format: String,
        version: u32,
        next_seq: u64,
        evicted: u64,
    },
    /// A machine's clock before the oldest entry kept.
    Base {
        key: String,
        clock: Vec<u64>,
    },
    Entry(Entry),
    Machine(MachineView),
    Status(StatusRecord),
}

/// Why a dump could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DumpError {
    /// A line could not be read: not JSON of a dump line, too long, too many ticks, or entries
    /// out of `seq` order. The dump is damaged or was edited; export it again.
    #[error("line {line}: {error}")]
    Line {
        /// The line's number, from 1.
        line: usize,
        /// What was wrong with it.
        error: String,
    },
    /// The file is not a dump of this format: its first line is not the header (or a second
    /// header follows). Import only files written by `am-node dbg --export`.
    #[error(
        "not an am-dbg dump (its first line is not the header); export one with `am-node dbg --export`"
    )]
    NoHeader,
    /// The dump is of another format version (the one given); this build reads only
    /// [`DUMP_VERSION`]. Import it with the `am-node` that wrote it.
    #[error("dump version {0} is not supported; this build reads version {DUMP_VERSION}")]
    Version(u32),
    /// A record in the dump is past the bounds a collector holds a sender to
    /// ([`RecordError`]). The dump was edited or written by another program.
    #[error("line {line}: {error}")]
    Record {
        /// The line's number, from 1.
        line: usize,
        /// Which bound the record broke.
        error: RecordError,
    },
}

/// Why the history did not take a record: it would add a node or a machine past the bounds
/// ([`History::with_bounds`]). What the history knows is kept, rather than the oldest names
/// evicted: a sender inventing names would otherwise push out real nodes' machines (and the
/// schemas their entries are read with). Records of the nodes and machines it knows are still
/// taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    /// The status of a node past the bound of nodes (the bound, the node).
    #[error(
        "the collector keeps the status of at most {0} nodes; node {1:?} is refused. Give nodes stable names (a sender inventing names fills the bound), or restart the collector to clear it"
    )]
    TooManyNodes(usize, String),
    /// A record of a machine past the bound of machines (the bound, `node/machine`).
    #[error(
        "the collector knows at most {0} machines; {1:?} is refused. Give machines stable names (a sender inventing names fills the bound), or restart the collector to clear it"
    )]
    TooManyMachines(usize, String),
}

/// The history of a collector.
#[derive(Debug, Clone)]
pub struct History {
    max_entries: usize,
    max_nodes: usize,
    max_machines: usize,
    /// Records not taken: past the bounds of nodes or machines, or past [`MAX_SEQ`].
    refused: u64,
    entries: VecDeque<Entry>,
    next_seq: u64,
    evicted: u64,
    machines: BTreeMap<String, MachineView>,
    /// Each machine's clock before the oldest entry kept.
    base: BTreeMap<String, Vec<u64>>,
    nodes: BTreeMap<String, StatusRecord>,
}

impl Default for History {
    fn default() -> Self {
        History::new(DEFAULT_MAX_ENTRIES)
    }
}

fn entry_clock(record: &Record) -> Option<(&[u64], u64)> {
    match record {
        Record::Machine(m) => Some((&m.clock, m.queue_tick)),
        Record::Transition(t) => Some((&t.clock, t.queue_tick)),
        _ => None,
    }
}

impl History {
    /// An empty history keeping at most `max_entries` entries (at least 1; the oldest go
    /// first). `am-node dbg` uses [`DEFAULT_MAX_ENTRIES`] unless `--max-entries` says.
    pub fn new(max_entries: usize) -> Self {
        History {
            max_entries: max_entries.max(1),
            max_nodes: DEFAULT_MAX_NODES,
            max_machines: DEFAULT_MAX_MACHINES,
            refused: 0,
            entries: VecDeque::new(),
            next_seq: 1,
            evicted: 0,
            machines: BTreeMap::new(),
            base: BTreeMap::new(),
            nodes: BTreeMap::new(),
        }
    }

    /// The same history keeping the status of at most `max_nodes` nodes and knowing at most
    /// `max_machines` machines (each at least 1); by default [`DEFAULT_MAX_NODES`] and
    /// [`DEFAULT_MAX_MACHINES`]. A record that would add one past them is refused
    /// ([`History::admits`]). An imported dump past them is refused.
    pub fn with_bounds(mut self, max_nodes: usize, max_machines: usize) -> Self {
        self.max_nodes = max_nodes.max(1);
        self.max_machines = max_machines.max(1);
        self
    }

    /// Whether [`History::ingest`] takes `record`: it does unless it would add a node's status
    /// or a machine past the bounds ([`History::with_bounds`]).
    pub fn admits(&self, record: &Record) -> Result<(), HistoryError> {
        match record {
            Record::Status(s) => {
                if self.nodes.len() >= self.max_nodes && !self.nodes.contains_key(&s.node) {
                    return Err(HistoryError::TooManyNodes(self.max_nodes, s.node.clone()));
                }
            }
            other => {
                if let Some(at) = other.machine()
                    && self.machines.len() >= self.max_machines
                {
                    let key = at.key();
                    if !self.machines.contains_key(&key) {
                        return Err(HistoryError::TooManyMachines(self.max_machines, key));
                    }
                }
            }
        }
        Ok(())
    }

    /// Records not taken so far: past the bounds of nodes or machines
    /// ([`History::with_bounds`]), or numbered past [`MAX_SEQ`].
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Takes a record in; returns its entry's sequence (`None` for a node's status, which is
    /// kept as the node's latest, not as an entry, and for a record refused: one
    /// [`History::admits`] refuses, or one past [`MAX_SEQ`]; counted in [`History::refused`]).
    pub fn ingest(&mut self, record: Record, now_ms: u64) -> Option<u64> {
        if self.admits(&record).is_err() {
            self.refused = self.refused.saturating_add(1);
            return None;
        }
        if let Record::Status(status) = record {
            self.nodes.insert(status.node.clone(), status);
            return None;
        }
        let seq = self.next_seq;
        if seq > MAX_SEQ {
            self.refused = self.refused.saturating_add(1);
            return None;
        }
        self.next_seq += 1;
        self.apply(&record, seq);
        self.entries.push_back(Entry {
            seq,
            received_ms: now_ms,
            record,
        });
        while self.entries.len() > self.max_entries {
            if let Some(old) = self.entries.pop_front() {
                self.evicted = self.evicted.saturating_add(1);
                if let (Some(at), Some((clock, _))) =
                    (old.record.machine(), entry_clock(&old.record))
                {
                    self.base.insert(at.key(), clock.to_vec());
                }
            }
        }
        Some(seq)
    }

    fn apply(&mut self, record: &Record, seq: u64) {
        let Some(at) = record.machine() else {
            return;
        };
        let key = at.key();
        let view = self
            .machines
            .entry(key.clone())
            .or_insert_with(|| MachineView {
                key,
                info: None,
                clock: Vec::new(),
                queue_tick: 0,
                last_seq: 0,
                dropped: 0,
                disposed: false,
            });
        view.last_seq = seq;
        match record {
            Record::Machine(m) => {
                view.info = Some(m.clone());
                view.clock = m.clock.clone();
                view.queue_tick = m.queue_tick;
                view.dropped = m.dropped;
                view.disposed = false;
            }
            Record::Transition(t) => {
                view.clock = t.clock.clone();
                view.queue_tick = t.queue_tick;
                view.dropped = t.dropped;
            }
            Record::Sent(s) => view.dropped = s.dropped,
            Record::Dispose(_) => view.disposed = true,
            Record::Status(_) => {}
        }
    }

    /// The entries kept, oldest first (ascending `seq`).
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> + ExactSizeIterator {
        self.entries.iter()
    }

    /// The entry with this sequence, if still kept.
    pub fn entry(&self, seq: u64) -> Option<&Entry> {
        let first = self.entries.front()?.seq;
        let at = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.entries.get(at)
    }

    /// The sequence the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Entries dropped to stay within the bound.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Every machine the collector has heard of, disposed ones included, by `node/machine`.
    pub fn machines(&self) -> impl Iterator<Item = &MachineView> {
        self.machines.values()
    }

    /// The machine named `key` (`node/machine`), if the collector has heard of it.
    pub fn machine(&self, key: &str) -> Option<&MachineView> {
        self.machines.get(key)
    }

    /// Each node's latest status, by node name.
    pub fn nodes(&self) -> impl Iterator<Item = &StatusRecord> {
        self.nodes.values()
    }

    /// Entries after `seq` that match, the newest `limit` of them, oldest first.
    pub fn query(&self, after: u64, filter: &Filter, limit: usize) -> Vec<&Entry> {
        let mut found: Vec<&Entry> = self
            .entries
            .iter()
            .rev()
            .take_while(|e| e.seq > after)
            .filter(|e| filter.matches(e, self))
            .take(limit)
            .collect();
        found.reverse();
        found
    }

    /// Every machine's clock right after entry `seq` (time travel): each machine's latest
    /// clock at or before it. Machines that had not appeared yet are left out.
    pub fn clocks_at(&self, seq: u64) -> BTreeMap<String, Vec<u64>> {
        let mut clocks = self.base.clone();
        for entry in self.entries.iter().take_while(|e| e.seq <= seq) {
            if let (Some(at), Some((clock, _))) =
                (entry.record.machine(), entry_clock(&entry.record))
            {
                clocks.insert(at.key(), clock.to_vec());
            }
        }
        clocks
    }

    /// The next (`forward`) or previous transition from `seq` that matches `filter` (of any
    /// machine, or one: step across machines or along one).
    pub fn step(&self, seq: u64, forward: bool, filter: &Filter) -> Option<u64> {
        let is_step =
            |e: &&Entry| matches!(e.record, Record::Transition(_)) && filter.matches(e, self);
        if forward {
            self.entries
                .iter()
                .filter(|e| e.seq > seq)
                .find(is_step)
                .map(|e| e.seq)
        } else {
            self.entries
                .iter()
                .rev()
                .filter(|e| e.seq < seq)
                .find(is_step)
                .map(|e| e.seq)
        }
    }

    /// Through which clients a transition's mutation came, nearest first: the client that
    /// asked this machine's server, then the client that asked that node's mirror, and so on
    /// to the one that started it. Each hop is a `Sent` record of the node the previous hop
    /// names, with the same kind and states, nearest in the history (records of different
    /// nodes arrive on different connections, so it may come just after).
    pub fn hops(&self, seq: u64) -> Vec<String> {
        let Some(entry) = self.entry(seq) else {
            return Vec::new();
        };
        let Record::Transition(t) = &entry.record else {
            return Vec::new();
        };
        let (Some(kind), Some(first)) = (&t.kind, &t.origin) else {
            return Vec::new();
        };
        let Some(front) = self.entries.front() else {
            return Vec::new();
        };
        let mut pos = (seq - front.seq) as usize;
        let mut hops = vec![first.clone()];
        let mut next = first.clone();
        while hops.len() < MAX_HOPS {
            let lo = pos.saturating_sub(HOP_WINDOW);
            let hi = (pos + HOP_WINDOW).min(self.entries.len());
            let is_hop = |i: &usize| match &self.entries[*i].record {
                Record::Sent(s) => s.at.node == next && &s.kind == kind && s.called == t.called,
                _ => false,
            };
            let found = (lo..pos)
                .rev()
                .find(is_hop)
                .or_else(|| (pos + 1..hi).find(is_hop));
            let Some(at) = found else {
                break;
            };
            let Record::Sent(sent) = &self.entries[at].record else {
                break;
            };
            match &sent.origin {
                Some(origin) if !hops.contains(origin) => {
                    hops.push(origin.clone());
                    next = origin.clone();
                    pos = at;
                }
                _ => break,
            }
        }
        hops
    }

    /// The history as dump lines (JSON, one a line, without line feeds).
    pub fn export_lines(&self) -> impl Iterator<Item = String> + '_ {
        let header = DumpLine::Header {
            format: DUMP_FORMAT.into(),
            version: DUMP_VERSION,
            next_seq: self.next_seq,
            evicted: self.evicted,
        };
        let base = self.base.iter().map(|(key, clock)| DumpLine::Base {
            key: key.clone(),
            clock: clock.clone(),
        });
        let entries = self.entries.iter().cloned().map(DumpLine::Entry);
        let machines = self.machines.values().cloned().map(DumpLine::Machine);
        let nodes = self.nodes.values().cloned().map(DumpLine::Status);
        std::iter::once(header)
            .chain(base)
            .chain(entries)
            .chain(machines)
            .chain(nodes)
            .map(|line| serde_json::to_string(&line).unwrap_or_default())
    }

    /// A history from dump lines, kept within `max_entries` (the oldest dropped). Each line is
    /// bounded and every record checked as one from a sender is.
    pub fn import_lines<'a>(
        lines: impl IntoIterator<Item = &'a [u8]>,
        max_entries: usize,
    ) -> Result<History, DumpError> {
        Self::import_lines_into(lines, History::new(max_entries))
    }

    /// [`History::import_lines`] into `history` (empty, with its bounds:
    /// [`History::with_bounds`]); a dump past its bounds of nodes or machines is refused.
    pub fn import_lines_into<'a>(
        lines: impl IntoIterator<Item = &'a [u8]>,
        mut history: History,
    ) -> Result<History, DumpError> {
        let mut seen_header = false;
        for (i, line) in lines.into_iter().enumerate() {
            let n = i + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if line.len() > super::record::MAX_LINE * 4 {
                return Err(DumpError::Line {
                    line: n,
                    error: "line too long".into(),
                });
            }
            let parsed: DumpLine = serde_json::from_slice(line).map_err(|e| DumpError::Line {
                line: n,
                error: e.to_string(),
            })?;
            match parsed {
                DumpLine::Header {
                    format,
                    version,
                    next_seq,
                    evicted,
                } => {
                    if format != DUMP_FORMAT || seen_header {
                        return Err(DumpError::NoHeader);
                    }
                    if version != DUMP_VERSION {
                        return Err(DumpError::Version(version));
                    }
                    if next_seq > MAX_SEQ.saturating_add(1) {
                        return Err(DumpError::Line {
                            line: n,
                            error: format!(
                                "next_seq {next_seq} is past {MAX_SEQ}, the highest sequence a history numbers"
                            ),
                        });
                    }
                    seen_header = true;
                    history.next_seq = next_seq.max(1);
                    history.evicted = evicted;
                }
                _ if !seen_header => return Err(DumpError::NoHeader),
                DumpLine::Base { key, clock } => {
                    if clock.len() > super::record::MAX_STATES {
                        return Err(DumpError::Line {
                            line: n,
                            error: "too many ticks".into(),
                        });
                    }
                    if key.len() > 2 * super::record::MAX_TEXT + 1 {
                        return Err(DumpError::Line {
                            line: n,
                            error: "too long a machine name".into(),
                        });
                    }
                    history.base.insert(key, clock);
                    history.check_bounds(n)?;
                }
                DumpLine::Entry(entry) => {
                    entry
                        .record
                        .check()
                        .map_err(|error| DumpError::Record { line: n, error })?;
                    if history.entries.back().is_some_and(|e| e.seq >= entry.seq)
                        || entry.seq >= history.next_seq
                    {
                        return Err(DumpError::Line {
                            line: n,
                            error: "entries out of order".into(),
                        });
                    }
                    history.entries.push_back(entry);
                    if history.entries.len() > history.max_entries {
                        history.entries.pop_front();
                        history.evicted = history.evicted.saturating_add(1);
                    }
                }
                DumpLine::Machine(view) => {
                    if let Some(info) = &view.info {
                        Record::Machine(info.clone())
                            .check()
                            .map_err(|error| DumpError::Record { line: n, error })?;
                    }
                    if view.key.len() > 2 * super::record::MAX_TEXT + 1
                        || view.clock.len() > super::record::MAX_STATES
                    {
                        return Err(DumpError::Line {
                            line: n,
                            error: "too long a machine name, or too many ticks".into(),
                        });
                    }
                    history.machines.insert(view.key.clone(), view);
                    history.check_bounds(n)?;
                }
                DumpLine::Status(status) => {
                    Record::Status(status.clone())
                        .check()
                        .map_err(|error| DumpError::Record { line: n, error })?;
                    history.nodes.insert(status.node.clone(), status);
                    history.check_bounds(n)?;
                }
            }
        }
        if !seen_header {
            return Err(DumpError::NoHeader);
        }
        Ok(history)
    }

    /// Checks an imported dump against the bounds of nodes and machines.
    fn check_bounds(&self, line: usize) -> Result<(), DumpError> {
        let over = |what: &str, bound: usize| DumpError::Line {
            line,
            error: format!("more than {bound} {what}, the collector's bound"),
        };
        if self.nodes.len() > self.max_nodes {
            return Err(over("nodes", self.max_nodes));
        }
        if self.machines.len() > self.max_machines || self.base.len() > self.max_machines {
            return Err(over("machines", self.max_machines));
        }
        Ok(())
    }
}

impl Filter {
    /// Whether no field is given (the filter lets every entry through).
    pub fn is_empty(&self) -> bool {
        self == &Filter::default()
    }

    /// Whether the entry is one the filter lets through (`history` names the states of a
    /// change).
    pub fn matches(&self, entry: &Entry, history: &History) -> bool {
        let record = &entry.record;
        if let Some(machine) = &self.machine
            && record.machine().is_none_or(|m| &m.key() != machine)
        {
            return false;
        }
        let (kind, outcome, called): (&str, Option<&str>, &[String]) = match record {
            Record::Transition(t) => (
                t.kind.as_deref().unwrap_or("update"),
                Some(t.outcome.as_str()),
                &t.called,
            ),
            Record::Sent(s) => ("sent", None, &s.called),
            Record::Machine(_) => ("machine", None, &[]),
            Record::Dispose(_) => ("dispose", None, &[]),
            Record::Status(_) => ("status", None, &[]),
        };
        if self.kind.as_deref().is_some_and(|k| k != kind) {
            return false;
        }
        if let Some(want) = &self.outcome
            && outcome != Some(want.as_str())
        {
            return false;
        }
        if let Some(state) = &self.state {
            let changed = match record {
                Record::Transition(t) => history
                    .machines
                    .get(&t.at.key())
                    .and_then(|m| m.info.as_ref())
                    .is_some_and(|info| {
                        t.changed.iter().any(|&i| {
                            info.states
                                .get(i as usize)
                                .is_some_and(|s| &s.name == state)
                        })
                    }),
                _ => false,
            };
            if !changed && !called.iter().any(|c| c == state) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests;
