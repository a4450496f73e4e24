//! The telemetry record: what a node tells a collector about its machines, one JSON object a
//! line (TELEMETRY.md documents every field), and the bounds a collector holds a sender to.
//!
//! Building a record from a tracer's view of a transition (with the redaction rule for
//! arguments) and checking one a peer sent are here, without I/O.

use serde::{Deserialize, Serialize};

use crate::machine::{Mutation, MutationKind, Outcome, Schema, StateDef, TransitionTrace};
use crate::proto::message::NodeStatus;

/// Longest line a collector reads; a longer one ends the sender's connection.
pub const MAX_LINE: usize = 256 * 1024;
/// Most states in a machine's record (the largest schema).
pub const MAX_STATES: usize = crate::machine::schema::MAX_STATES;
/// Most arguments, handler errors, clients or sources in one record.
pub const MAX_ITEMS: usize = 256;
/// Longest name or text in a record, in bytes.
pub const MAX_TEXT: usize = 4096;
/// Most clients listed in a `status` record. A server takes 10 000 clients by default: a
/// node lists the first of them in its server's order (by source, then id) and counts the
/// rest ([`CLIENTS_TOTAL`], [`CLIENTS_UNLISTED`]).
pub const MAX_CLIENTS: usize = 4 * MAX_ITEMS;
/// The counter a node adds to a status whose client list it cut: how many clients it has.
pub const CLIENTS_TOTAL: &str = "telemetry_clients_total";
/// The counter a node adds to a status whose client list it cut: how many it left out.
pub const CLIENTS_UNLISTED: &str = "telemetry_clients_unlisted";
/// The counter a node adds to a status whose source list it cut (over [`MAX_ITEMS`] sources,
/// or sources too large for a line): how many it left out.
pub const SOURCES_UNLISTED: &str = "telemetry_sources_unlisted";
/// An argument's name and value are each cut to this many bytes (at a character boundary,
/// `…` added) before they are sent.
pub const MAX_ARG_BYTES: usize = 256;
/// Most bytes a record's arguments take as JSON; the arguments past it (in name order) are
/// left out and counted (`args_dropped`), so every record a node sends fits [`MAX_LINE`].
pub const MAX_ARGS_JSON: usize = 32 * 1024;
/// The value sent in place of a redacted argument.
pub const REDACTED: &str = "<redacted>";

/// One line of telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// A machine: its schema and clock. Sent first for each machine on a connection, again
    /// when its schema changes.
    Machine(MachineRecord),
    /// A transition of a machine, or an update of a mirror's clock.
    Transition(TransitionRecord),
    /// A mirror sent a mutation to its source.
    Sent(SentRecord),
    /// What a node serves and who is connected; sent every half second.
    Status(StatusRecord),
    /// A machine was disposed.
    Dispose(MachineRef),
}

/// Which machine: the node and the name it serves the machine under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MachineRef {
    /// The node's name (its topology table, or what `Telemetry::start` was given); never
    /// empty in a record a collector accepts.
    pub node: String,
    /// The name the node serves the machine under (a mirror's: the name it is served as on
    /// this node, not its source's).
    pub machine: String,
}

impl MachineRef {
    /// `node/machine`, as the console and deep links name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.node, self.machine)
    }
}

/// A machine as a collector first meets it (record `machine`): its schema, clock and place in
/// the tree. Sent for each machine on every (re)connection of its node, so a collector can
/// name the positions of later transitions and draw the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// Which machine (serialized flat: `node` and `machine` fields).
    #[serde(flatten)]
    pub at: MachineRef,
    /// The machine's own id (`StateSource::id`).
    pub id: String,
    /// The id of the machine this one belongs to (`StateSource::parent_id`); `None` when it
    /// has none.
    pub parent_id: Option<String>,
    /// For a mirror: the endpoint it mirrors (`tcp://host:port/name`).
    pub upstream: Option<String>,
    /// The node's listeners (real ports), so a collector can tell which node a mirror's
    /// upstream is.
    pub listen: Vec<String>,
    /// The schema: each state's name and relations (`require`, `add`, `remove`, `after`) and
    /// flags (`auto`, `multi`), in position order. At most [`MAX_STATES`].
    pub states: Vec<StateDef>,
    /// The clock when the record was made: one tick per state, in schema order (a state is
    /// active when its tick is odd). Later transitions' `changed` is against it.
    pub clock: Vec<u64>,
    /// How many mutations the machine has processed (`StateSource::queue_tick`).
    pub queue_tick: u64,
    /// Wall time on the sender when the record was made, microseconds since the Unix epoch.
    pub time_us: u64,
    /// Records of this machine dropped so far because its buffer was full.
    pub dropped: u64,
}

/// A transition of a machine, a mutation it queued, or an update of a mirror's clock (record
/// `transition`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// Which machine (serialized flat: `node` and `machine` fields).
    #[serde(flatten)]
    pub at: MachineRef,
    /// Wall time on the sender, microseconds since the Unix epoch.
    pub time_us: u64,
    /// `add`, `remove` or `set`; `None` for a mirror's update (it knows what changed, not
    /// why).
    pub kind: Option<String>,
    /// The names of the states the mutation called, in its order; empty for a mirror's
    /// update (see `changed`).
    pub called: Vec<String>,
    /// Argument name and its value as text (redacted or cut: see [`Redaction`]).
    pub args: Vec<(String, String)>,
    /// Arguments of the mutation left out of `args`: past [`MAX_ITEMS`], or past
    /// [`MAX_ARGS_JSON`] bytes. Absent when none were.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub args_dropped: u64,
    /// `executed` or `canceled`; `queued` for a mutation the busy machine queued (it is
    /// reported again when it runs); `update` for a mirror's update.
    pub outcome: String,
    /// Whether the machine made the mutation itself, for its auto states.
    pub auto: bool,
    /// The machine's queue tick while the transition ran; for a queued mutation, the tick it
    /// will run as.
    pub queue_tick: u64,
    /// The clock after the transition.
    pub clock: Vec<u64>,
    /// Schema positions whose tick changed since the machine's previous record (so the changes
    /// of dropped records are included); empty for a queued mutation.
    pub changed: Vec<u32>,
    /// Errors of the handlers that failed in this transition.
    pub errors: Vec<String>,
    /// For a mutation a server ran for a client: the client's id (a node's mirrors use the
    /// node's name).
    pub origin: Option<String>,
    /// Records of this machine dropped so far because its buffer was full.
    pub dropped: u64,
}

/// A mutation a mirror sent up to its source (record `sent`). The source reports the
/// transition it led to; a collector links the two by node, kind and states
/// (`History::hops`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentRecord {
    /// Which mirror (serialized flat: `node` and `machine` fields).
    #[serde(flatten)]
    pub at: MachineRef,
    /// Wall time on the sender, microseconds since the Unix epoch.
    pub time_us: u64,
    /// `add`, `remove` or `set`.
    pub kind: String,
    /// The names of the states the mutation called, in its order.
    pub called: Vec<String>,
    /// Argument name and its value as text (redacted or cut: see [`Redaction`]).
    pub args: Vec<(String, String)>,
    /// Arguments of the mutation left out of `args` (see [`TransitionRecord::args_dropped`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub args_dropped: u64,
    /// The client of this node that asked for it; `None` when the node itself did.
    pub origin: Option<String>,
    /// Records of this machine dropped so far because its buffer was full.
    pub dropped: u64,
}

/// What a node serves and who is connected to it (record `status`), sent every 500 ms. A
/// collector keeps only each node's latest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// The node's name; never empty in a record a collector accepts.
    pub node: String,
    /// Wall time on the sender, milliseconds (not µs) since the Unix epoch.
    pub time_ms: u64,
    /// The node's listeners (real ports, e.g. `tcp://127.0.0.1:7001`).
    pub listen: Vec<String>,
    /// The node's `Server::status`: its sources with their upstream, connection state and
    /// clients count, the clients with their ids, the counters.
    pub status: NodeStatus,
}

impl StatusRecord {
    /// Cuts the status to what a collector takes, so that its line fits [`MAX_LINE`]: at most
    /// [`MAX_ITEMS`] listeners, sources and counters and [`MAX_CLIENTS`] clients (the first in
    /// the server's order: by source, then id, so the same ones are listed from one status to
    /// the next), then as many of those sources and clients as the line has room for. What is
    /// left out is counted: [`CLIENTS_TOTAL`] and [`CLIENTS_UNLISTED`] when clients were cut,
    /// [`SOURCES_UNLISTED`] when sources were (each source still counts its clients).
    pub fn fit(&mut self) {
        // Room kept for the counters added below and the line feed.
        const SLACK: usize = 256;
        let budget = MAX_LINE - SLACK;
        self.listen.truncate(MAX_ITEMS);
        for l in &mut self.listen {
            cut_bytes_in_place(l, MAX_TEXT);
        }
        let status = &mut self.status;
        status.counters.truncate(MAX_ITEMS - 3);
        let clients_total = status.clients.len();
        let sources_total = status.sources.len();
        let mut sources = std::mem::take(&mut status.sources);
        let mut clients = std::mem::take(&mut status.clients);
        sources.truncate(MAX_ITEMS);
        clients.truncate(MAX_CLIENTS);
        for source in &mut sources {
            source.ticks.truncate(MAX_STATES);
        }
        // The line without sources and clients, then each as long as it has room: a
        // separator and the item's JSON.
        let mut size = json_len(self);
        let fit_sources = fitting(sources.len(), &mut size, budget, |i| json_len(&sources[i]));
        sources.truncate(fit_sources);
        let fit_clients = fitting(clients.len(), &mut size, budget, |i| json_len(&clients[i]));
        clients.truncate(fit_clients);
        let status = &mut self.status;
        status.sources = sources;
        status.clients = clients;
        if status.clients.len() < clients_total {
            status
                .counters
                .push((CLIENTS_TOTAL.to_owned(), clients_total as u64));
            status.counters.push((
                CLIENTS_UNLISTED.to_owned(),
                (clients_total - status.clients.len()) as u64,
            ));
        }
        if status.sources.len() < sources_total {
            status.counters.push((
                SOURCES_UNLISTED.to_owned(),
                (sources_total - status.sources.len()) as u64,
            ));
        }
    }
}

/// How many of `count` items of a JSON list, item `i` taking `len(i)` bytes, fit in `budget`
/// after `size` bytes; adds what they take (with the separators) to `size`.
fn fitting(count: usize, size: &mut usize, budget: usize, len: impl Fn(usize) -> usize) -> usize {
    let mut n = 0;
    while n < count {
        let add = len(n) + usize::from(n > 0);
        if *size + add > budget {
            break;
        }
        *size += add;
        n += 1;
    }
    n
}

/// The length of a value's JSON.
fn json_len<T: Serialize>(value: &T) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// Cuts `text` to at most `bytes` bytes, at a character boundary.
fn cut_bytes_in_place(text: &mut String, bytes: usize) {
    if text.len() > bytes {
        let mut at = bytes;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}

/// Which arguments are sent as `<redacted>`: those whose name contains one of these words
/// (ignoring case). The rest are sent as text, cut to [`MAX_ARG_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    /// The words, lowercase (an argument name matches when it contains one, ignoring case).
    /// Default: `password`, `secret`, `token`, `key`, `auth`, `cookie`; empty redacts
    /// nothing.
    pub words: Vec<String>,
}

impl Default for Redaction {
    fn default() -> Self {
        Redaction {
            words: ["password", "secret", "token", "key", "auth", "cookie"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl Redaction {
    /// The words of a comma-separated list (`AM_DEBUG_REDACT`); empty entries are skipped.
    pub fn from_list(list: &str) -> Self {
        Redaction {
            words: list
                .split(',')
                .map(|w| w.trim().to_ascii_lowercase())
                .filter(|w| !w.is_empty())
                .collect(),
        }
    }

    /// Whether an argument called `name` is sent as [`REDACTED`]: its name contains one of
    /// the words, ignoring case.
    pub fn hides(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.words.iter().any(|w| name.contains(w.as_str()))
    }

    /// The arguments of `mutation` as they are sent, and how many were left out: names and
    /// values cut to [`MAX_ARG_BYTES`], at most [`MAX_ITEMS`] of them, in name order while
    /// they take at most [`MAX_ARGS_JSON`] bytes as JSON (escapes counted).
    pub fn args(&self, mutation: &Mutation) -> (Vec<(String, String)>, u64) {
        let mut budget = MAX_ARGS_JSON;
        let mut args = Vec::new();
        for (name, value) in mutation.args.iter().take(MAX_ITEMS) {
            let text = if self.hides(name) {
                REDACTED.to_owned()
            } else {
                cut(&value.to_string(), MAX_ARG_BYTES)
            };
            let name = cut(name, MAX_ARG_BYTES);
            // `["name","text"]` and the separator.
            let size = json_str_len(&name) + json_str_len(&text) + 4;
            if size > budget {
                break;
            }
            budget -= size;
            args.push((name, text));
        }
        let dropped = (mutation.args.len() - args.len()) as u64;
        (args, dropped)
    }
}

/// `text` cut to at most `bytes` bytes at a character boundary, with `…` when cut.
fn cut(text: &str, bytes: usize) -> String {
    if text.len() <= bytes {
        return text.to_owned();
    }
    let mut at = bytes;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}…", &text[..at])
}

/// The length of `text` as a JSON string, quotes and escapes included (as serde_json writes
/// it: `\"`, `\\` and the short escapes take two bytes, other control characters six).
fn json_str_len(text: &str) -> usize {
    2 + text
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A mutation kind as records name it: `add`, `remove` or `set`.
pub fn kind_name(kind: MutationKind) -> &'static str {
    match kind {
        MutationKind::Add => "add",
        MutationKind::Remove => "remove",
        MutationKind::Set => "set",
    }
}

fn outcome_name(outcome: Option<Outcome>, local: bool) -> &'static str {
    match (outcome, local) {
        (_, false) => "update",
        (Some(Outcome::Executed), true) => "executed",
        (Some(Outcome::Canceled) | None, true) => "canceled",
        (Some(Outcome::Queued), true) => "queued",
    }
}

/// What a tracer keeps of a transition on the machine's thread: copies, no names and no
/// formatting (the sending task makes the record, [`TransitionRecord::from_raw`]).
#[derive(Debug, Clone)]
pub struct RawTransition {
    /// When the transition began on the sender, microseconds since the Unix epoch.
    pub time_us: u64,
    /// A copy of the mutation (`None` for a mirror's update).
    pub mutation: Option<Mutation>,
    /// How the transition ended; `None` is reported as `canceled` for a local machine.
    pub outcome: Option<Outcome>,
    /// The machine's queue tick while the transition ran.
    pub queue_tick: u64,
    /// The clock after.
    pub clock: Vec<u64>,
    /// Errors of the handlers that failed in this transition.
    pub errors: Vec<String>,
    /// Records of this machine dropped so far because its buffer was full.
    pub dropped: u64,
}

impl RawTransition {
    /// The copy of a tracer's view of a finished transition: its mutation, outcome, queue
    /// tick and clock after, with the failed handlers' `errors`, the time it began
    /// (`time_us`, µs since the Unix epoch) and the drops so far.
    pub fn of(
        trace: &TransitionTrace<'_>,
        errors: Vec<String>,
        time_us: u64,
        dropped: u64,
    ) -> Self {
        RawTransition {
            time_us,
            mutation: trace.mutation.cloned(),
            outcome: trace.outcome,
            queue_tick: trace.queue_tick,
            clock: trace.after.to_vec(),
            errors,
            dropped,
        }
    }
}

/// The names of the positions that are in the schema.
fn names(schema: &Schema, states: &[usize]) -> Vec<String> {
    states
        .iter()
        .filter(|&&s| s < schema.len())
        .map(|&s| schema.name(s).to_owned())
        .collect()
}

impl TransitionRecord {
    /// The record of a finished transition: `previous` is the clock before it (for the
    /// sending task: the clock of the machine's previous record), `schema` names the states.
    pub fn from_raw(
        at: MachineRef,
        raw: RawTransition,
        schema: &Schema,
        previous: &[u64],
        redaction: &Redaction,
    ) -> Self {
        let changed = raw
            .clock
            .iter()
            .enumerate()
            .filter(|&(i, tick)| previous.get(i).unwrap_or(&0) != tick)
            .map(|(i, _)| i as u32)
            .collect();
        let mutation = raw.mutation.as_ref();
        let (args, args_dropped) = mutation.map(|m| redaction.args(m)).unwrap_or_default();
        TransitionRecord {
            at,
            time_us: raw.time_us,
            kind: mutation.map(|m| kind_name(m.kind).to_owned()),
            called: mutation
                .map(|m| names(schema, &m.states))
                .unwrap_or_default(),
            args,
            args_dropped,
            outcome: outcome_name(raw.outcome, mutation.is_some()).to_owned(),
            auto: mutation.is_some_and(Mutation::is_auto),
            queue_tick: raw.queue_tick,
            clock: raw.clock,
            changed,
            errors: raw.errors,
            origin: mutation.and_then(|m| m.origin.as_deref().map(str::to_owned)),
            dropped: raw.dropped,
        }
    }

    /// The record of a finished transition, from a tracer's view of it.
    pub fn of(
        at: MachineRef,
        trace: &TransitionTrace<'_>,
        errors: Vec<String>,
        redaction: &Redaction,
        time_us: u64,
        dropped: u64,
    ) -> Self {
        let raw = RawTransition::of(trace, errors, time_us, dropped);
        Self::from_raw(at, raw, trace.schema, trace.before, redaction)
    }
}

impl TransitionRecord {
    /// The record of a mutation the machine queued (it was busy): outcome `queued`, no change,
    /// `clock` as the machine's previous record left it, `queue_tick` the tick it will run as.
    #[allow(clippy::too_many_arguments)]
    pub fn queued(
        at: MachineRef,
        mutation: &Mutation,
        schema: &Schema,
        clock: Vec<u64>,
        redaction: &Redaction,
        time_us: u64,
        tick: u64,
        dropped: u64,
    ) -> Self {
        let (args, args_dropped) = redaction.args(mutation);
        TransitionRecord {
            at,
            time_us,
            kind: Some(kind_name(mutation.kind).to_owned()),
            called: names(schema, &mutation.states),
            args,
            args_dropped,
            outcome: "queued".to_owned(),
            auto: mutation.is_auto(),
            queue_tick: tick,
            clock,
            changed: Vec::new(),
            errors: Vec::new(),
            origin: mutation.origin.as_deref().map(str::to_owned),
            dropped,
        }
    }
}

impl SentRecord {
    /// The record of a mutation a mirror sent (a copy the tracer took).
    pub fn from_raw(
        at: MachineRef,
        mutation: &Mutation,
        schema: &Schema,
        redaction: &Redaction,
        time_us: u64,
        dropped: u64,
    ) -> Self {
        let (args, args_dropped) = redaction.args(mutation);
        SentRecord {
            at,
            time_us,
            kind: kind_name(mutation.kind).to_owned(),
            called: names(schema, &mutation.states),
            args,
            args_dropped,
            origin: mutation.origin.as_deref().map(str::to_owned),
            dropped,
        }
    }
}

/// Why a line from a sender was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// The line is longer than [`MAX_LINE`] bytes (256 KiB). The collector ends the sender's
    /// connection; a sender of this crate never writes one, so look for another program
    /// writing to the telemetry port.
    #[error("a telemetry line is over {MAX_LINE} bytes")]
    TooLong,
    /// The line is not JSON of a known record (the text says what serde could not read):
    /// something other than a telemetry sender, or a sender of an incompatible version, is
    /// writing to the port. Point only nodes' `debug` at the collector, of the same version.
    #[error("not a telemetry record: {0}")]
    Invalid(String),
    /// The record is well formed but past the bounds (more than [`MAX_STATES`] states, more
    /// than [`MAX_ITEMS`] arguments, errors or listeners, a text over [`MAX_TEXT`] bytes, or
    /// an empty node name). Give the node a name and keep schemas and arguments within them.
    #[error("a telemetry record is over the limits: {0}")]
    OverLimit(&'static str),
}

impl Record {
    /// One line of JSON, without the line feed.
    pub fn to_line(&self) -> String {
        // A record is plain data (strings, numbers, lists): serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Cuts the record to the bounds a collector holds a sender to, where it can without
    /// losing its meaning: a status as [`StatusRecord::fit`] says; a transition's or a sent
    /// mutation's arguments (counted in `args_dropped`) and then its handlers' errors go when
    /// its line is over [`MAX_LINE`] (its clock and states stay). A machine's record (its
    /// schema) is not cut.
    pub fn fit(&mut self) {
        match self {
            Record::Status(status) => status.fit(),
            Record::Transition(t) => {
                t.errors.truncate(MAX_ITEMS);
                for e in &mut t.errors {
                    cut_bytes_in_place(e, MAX_TEXT);
                }
                if t.args.len() > MAX_ITEMS || json_len(t) > MAX_LINE - 64 {
                    t.args_dropped += t.args.len() as u64;
                    t.args.clear();
                }
                if json_len(t) > MAX_LINE - 64 {
                    t.errors = vec![format!("{} handler errors left out", t.errors.len())];
                }
            }
            Record::Sent(s) => {
                if s.args.len() > MAX_ITEMS || json_len(s) > MAX_LINE - 64 {
                    s.args_dropped += s.args.len() as u64;
                    s.args.clear();
                }
            }
            Record::Machine(_) | Record::Dispose(_) => {}
        }
    }

    /// A record from one line a sender wrote, within the bounds.
    pub fn from_line(line: &[u8]) -> Result<Record, RecordError> {
        if line.len() > MAX_LINE {
            return Err(RecordError::TooLong);
        }
        let record: Record =
            serde_json::from_slice(line).map_err(|e| RecordError::Invalid(e.to_string()))?;
        record.check()?;
        Ok(record)
    }

    /// Which machine it is about (`None` for a node's status).
    pub fn machine(&self) -> Option<&MachineRef> {
        match self {
            Record::Machine(m) => Some(&m.at),
            Record::Transition(t) => Some(&t.at),
            Record::Sent(s) => Some(&s.at),
            Record::Dispose(at) => Some(at),
            Record::Status(_) => None,
        }
    }

    /// The node that sent it.
    pub fn node(&self) -> &str {
        match self {
            Record::Status(s) => &s.node,
            other => other.machine().map_or("", |m| m.node.as_str()),
        }
    }

    /// Checks counts and lengths (a line is bounded too, but a record of short items could
    /// still hold many).
    pub fn check(&self) -> Result<(), RecordError> {
        let texts = |items: &[String]| items.iter().all(|t| t.len() <= MAX_TEXT);
        let pairs = |items: &[(String, String)]| {
            items.len() <= MAX_ITEMS
                && items
                    .iter()
                    .all(|(a, b)| a.len() <= MAX_TEXT && b.len() <= MAX_TEXT)
        };
        let at_ok = |at: &MachineRef| {
            !at.node.is_empty() && at.node.len() <= MAX_TEXT && at.machine.len() <= MAX_TEXT
        };
        let ok = match self {
            Record::Machine(m) => {
                at_ok(&m.at)
                    && m.states.len() <= MAX_STATES
                    && m.clock.len() <= MAX_STATES
                    && m.listen.len() <= MAX_ITEMS
                    && texts(&m.listen)
                    && m.states.iter().all(|s| {
                        s.name.len() <= MAX_TEXT
                            && [&s.require, &s.add, &s.remove, &s.after]
                                .iter()
                                .all(|l| l.len() <= MAX_STATES && texts(l))
                    })
            }
            Record::Transition(t) => {
                at_ok(&t.at)
                    && t.called.len() <= MAX_STATES
                    && texts(&t.called)
                    && pairs(&t.args)
                    && t.clock.len() <= MAX_STATES
                    && t.changed.len() <= MAX_STATES
                    && t.errors.len() <= MAX_ITEMS
                    && texts(&t.errors)
            }
            Record::Sent(s) => {
                at_ok(&s.at) && s.called.len() <= MAX_STATES && texts(&s.called) && pairs(&s.args)
            }
            Record::Status(s) => {
                !s.node.is_empty()
                    && s.listen.len() <= MAX_ITEMS
                    && s.status.sources.len() <= MAX_ITEMS
                    && s.status.clients.len() <= MAX_CLIENTS
                    && s.status.sources.iter().all(|x| x.ticks.len() <= MAX_STATES)
            }
            Record::Dispose(at) => at_ok(at),
        };
        if ok {
            Ok(())
        } else {
            Err(RecordError::OverLimit(
                "too many states, items, or too long a name",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Args;

    fn at() -> MachineRef {
        MachineRef {
            node: "root".into(),
            machine: "demo".into(),
        }
    }

    #[test]
    fn a_transition_record_names_the_called_states_and_redacts_secret_arguments() {
        let schema = Schema::builder()
            .state(StateDef::new("A"))
            .state(StateDef::new("B"))
            .build()
            .expect("schema");
        let args = Args::new()
            .with("user", "ann")
            .with("api_Token", "s3cr3t")
            .with("long", "x".repeat(500));
        let mutation = Mutation::new(MutationKind::Add, vec![1], args).with_origin("mid");
        let trace = TransitionTrace {
            machine: "root",
            schema: &schema,
            mutation: Some(&mutation),
            queue_tick: 7,
            before: &[0, 0],
            after: &[0, 1],
            steps: &[],
            outcome: Some(Outcome::Executed),
        };
        let record = TransitionRecord::of(at(), &trace, vec![], &Redaction::default(), 1000, 3);
        assert_eq!(record.called, vec!["B"]);
        assert_eq!(record.kind.as_deref(), Some("add"));
        assert_eq!(record.outcome, "executed");
        assert_eq!(record.changed, vec![1]);
        assert_eq!(record.origin.as_deref(), Some("mid"));
        assert_eq!(record.dropped, 3);
        let arg = |n: &str| {
            record
                .args
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .expect("argument")
        };
        assert_eq!(arg("api_Token"), REDACTED);
        assert!(arg("user").contains("ann"));
        assert!(arg("long").len() <= MAX_ARG_BYTES + "…".len());
        assert_eq!(record.args_dropped, 0);
    }

    #[test]
    fn a_mirror_update_has_no_kind_and_the_outcome_update() {
        let schema = Schema::builder()
            .state(StateDef::new("A"))
            .build()
            .expect("schema");
        let trace = TransitionTrace {
            machine: "m",
            schema: &schema,
            mutation: None,
            queue_tick: 1,
            before: &[0],
            after: &[1],
            steps: &[],
            outcome: Some(Outcome::Executed),
        };
        let record = TransitionRecord::of(at(), &trace, vec![], &Redaction::default(), 1, 0);
        assert_eq!((record.kind, record.outcome.as_str()), (None, "update"));
    }

    #[test]
    fn lines_round_trip_and_bad_lines_are_refused() {
        let record = Record::Dispose(at());
        let line = record.to_line();
        assert_eq!(Record::from_line(line.as_bytes()), Ok(record));
        assert!(matches!(
            Record::from_line(b"{\"t\":\"nope\"}"),
            Err(RecordError::Invalid(_))
        ));
        assert_eq!(
            Record::from_line(&vec![b' '; MAX_LINE + 1]),
            Err(RecordError::TooLong)
        );
        let many = Record::Sent(SentRecord {
            at: at(),
            time_us: 0,
            kind: "add".into(),
            called: vec![],
            args: vec![("a".into(), "b".into()); MAX_ITEMS + 1],
            args_dropped: 0,
            origin: None,
            dropped: 0,
        });
        assert!(matches!(
            Record::from_line(many.to_line().as_bytes()),
            Err(RecordError::OverLimit(_))
        ));
        let empty_node = Record::Dispose(MachineRef {
            node: String::new(),
            machine: "m".into(),
        });
        assert!(Record::from_line(empty_node.to_line().as_bytes()).is_err());
    }

    /// A node with 10 000 clients of 256-byte ids (and more sources than a status may list)
    /// sends a status line the collector takes: the first clients, with the rest counted.
    #[test]
    fn a_status_of_many_clients_is_cut_to_a_line_the_collector_takes() {
        use crate::proto::message::{ClientStatus, SourceStatus};
        let clients: Vec<ClientStatus> = (0..10_000)
            .map(|i| ClientStatus {
                id: format!("{i:05}{}", "x".repeat(251)),
                source: "demo".into(),
                peer: "127.0.0.1:50000".into(),
            })
            .collect();
        let sources = (0..300)
            .map(|i| SourceStatus {
                name: format!("s{i:03}"),
                ..SourceStatus::default()
            })
            .collect();
        let record = Record::Status(StatusRecord {
            node: "hub".into(),
            time_ms: 1,
            listen: vec!["tcp://127.0.0.1:7001".into()],
            status: NodeStatus {
                node: "hub".into(),
                sources,
                clients: clients.clone(),
                counters: vec![("clients".into(), 10_000)],
            },
        });
        let mut out = String::new();
        crate::telemetry::tap::push_line(&mut out, &record);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].len() <= MAX_LINE, "{} bytes", lines[0].len());
        let Ok(Record::Status(sent)) = Record::from_line(lines[0].as_bytes()) else {
            panic!("the collector refuses the status");
        };
        let listed = sent.status.clients.len();
        assert!(listed > 0 && listed <= MAX_CLIENTS, "{listed} clients");
        assert_eq!(
            sent.status.clients[..],
            clients[..listed],
            "the first, in order"
        );
        let counter = |name: &str| {
            sent.status
                .counters
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
        };
        assert_eq!(counter(CLIENTS_TOTAL), Some(10_000));
        assert_eq!(counter(CLIENTS_UNLISTED), Some(10_000 - listed as u64));
        assert_eq!(sent.status.sources.len(), MAX_ITEMS);
        assert_eq!(counter(SOURCES_UNLISTED), Some(300 - MAX_ITEMS as u64));
        assert_eq!(counter("clients"), Some(10_000));

        // A status within the bounds goes as it is, without the counters.
        let mut small = record.clone();
        if let Record::Status(s) = &mut small {
            s.status.clients.truncate(3);
            s.status.sources.truncate(2);
        }
        let mut out = String::new();
        crate::telemetry::tap::push_line(&mut out, &small);
        assert_eq!(
            Record::from_line(out.trim_end().as_bytes()).expect("taken"),
            small
        );
    }

    /// One mutation of a client, 256 arguments of 200 four-byte characters in name and
    /// value, would make a 410 KiB line: its record is cut to one the collector takes, and says
    /// how many arguments it left out.
    #[test]
    fn a_mutation_of_large_arguments_makes_a_line_the_collector_takes() {
        let schema = Schema::builder()
            .state(StateDef::new("A"))
            .build()
            .expect("schema");
        let wide = "\u{1F600}".repeat(200);
        let mut args = Args::new();
        for i in 0..256 {
            args = args.with(format!("{i:03}{wide}"), wide.clone());
        }
        let mutation = Mutation::new(MutationKind::Add, vec![0], args);
        let redaction = Redaction::default();
        let queued = Record::Transition(TransitionRecord::queued(
            at(),
            &mutation,
            &schema,
            vec![0],
            &redaction,
            1,
            1,
            0,
        ));
        let sent = Record::Sent(SentRecord::from_raw(
            at(),
            &mutation,
            &schema,
            &redaction,
            1,
            0,
        ));
        for record in [queued, sent] {
            let mut out = String::new();
            crate::telemetry::tap::push_line(&mut out, &record);
            assert!(out.len() <= MAX_LINE, "{} bytes", out.len());
            let taken = Record::from_line(out.trim_end().as_bytes()).expect("taken");
            let (args, dropped) = match &taken {
                Record::Transition(t) => (&t.args, t.args_dropped),
                Record::Sent(s) => (&s.args, s.args_dropped),
                _ => unreachable!(),
            };
            assert!(!args.is_empty());
            assert_eq!(args.len() as u64 + dropped, 256);
            for (name, value) in args {
                assert!(name.len() <= MAX_ARG_BYTES + 3 && value.len() <= MAX_ARG_BYTES + 3);
                assert!(value.ends_with('…'));
            }
        }
        // Control characters are escaped six bytes each: the budget counts them as sent.
        let mut args = Args::new();
        for i in 0..256 {
            args = args.with(format!("{i:03}"), "\u{1}".repeat(300));
        }
        let mutation = Mutation::new(MutationKind::Add, vec![0], args);
        let (args, dropped) = redaction.args(&mutation);
        let json: usize = args
            .iter()
            .map(|a| serde_json::to_string(a).expect("json").len() + 1)
            .sum();
        assert!(json <= MAX_ARGS_JSON, "{json} bytes");
        assert!(dropped > 0);
    }

    #[test]
    fn redaction_from_a_list() {
        let r = Redaction::from_list(" Pin, ,card ");
        assert!(r.hides("PIN_code") && r.hides("credit_card") && !r.hides("token"));
    }
}
