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
/// An argument's value is cut to this many characters before it is sent.
pub const MAX_ARG_CHARS: usize = 200;
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
    pub node: String,
    pub machine: String,
}

impl MachineRef {
    /// `node/machine`, as the console and deep links name it.
    pub fn key(&self) -> String {
        format!("{}/{}", self.node, self.machine)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    #[serde(flatten)]
    pub at: MachineRef,
    /// The machine's own id (`StateSource::id`).
    pub id: String,
    pub parent_id: Option<String>,
    /// For a mirror: the endpoint it mirrors (`tcp://host:port/name`).
    pub upstream: Option<String>,
    /// The node's listeners (real ports), so a collector can tell which node a mirror's
    /// upstream is.
    pub listen: Vec<String>,
    pub states: Vec<StateDef>,
    pub clock: Vec<u64>,
    pub queue_tick: u64,
    pub time_us: u64,
    /// Records of this machine dropped so far because its buffer was full.
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    #[serde(flatten)]
    pub at: MachineRef,
    /// Wall time on the sender, microseconds since the Unix epoch.
    pub time_us: u64,
    /// `add`, `remove` or `set`; `None` for a mirror's update (it knows what changed, not
    /// why).
    pub kind: Option<String>,
    pub called: Vec<String>,
    /// Argument name and its value as text (redacted or cut: see [`Redaction`]).
    pub args: Vec<(String, String)>,
    /// `executed` or `canceled`; `queued` for a mutation the busy machine queued (it is
    /// reported again when it runs); `update` for a mirror's update.
    pub outcome: String,
    pub auto: bool,
    pub queue_tick: u64,
    /// The clock after the transition.
    pub clock: Vec<u64>,
    /// Positions whose tick changed.
    pub changed: Vec<u32>,
    /// Errors of the handlers that failed in this transition.
    pub errors: Vec<String>,
    /// For a mutation a server ran for a client: the client's id (a node's mirrors use the
    /// node's name).
    pub origin: Option<String>,
    /// Records of this machine dropped so far because its buffer was full.
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentRecord {
    #[serde(flatten)]
    pub at: MachineRef,
    pub time_us: u64,
    pub kind: String,
    pub called: Vec<String>,
    pub args: Vec<(String, String)>,
    /// The client of this node that asked for it; `None` when the node itself did.
    pub origin: Option<String>,
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub node: String,
    pub time_ms: u64,
    pub listen: Vec<String>,
    pub status: NodeStatus,
}

/// Which arguments are sent as `<redacted>`: those whose name contains one of these words
/// (ignoring case). The rest are sent as text, cut to [`MAX_ARG_CHARS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
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

    pub fn hides(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.words.iter().any(|w| name.contains(w.as_str()))
    }

    /// The arguments of `mutation` as they are sent.
    pub fn args(&self, mutation: &Mutation) -> Vec<(String, String)> {
        mutation
            .args
            .iter()
            .take(MAX_ITEMS)
            .map(|(name, value)| {
                let text = if self.hides(name) {
                    REDACTED.to_owned()
                } else {
                    cut(&value.to_string(), MAX_ARG_CHARS)
                };
                (cut(name, MAX_ARG_CHARS), text)
            })
            .collect()
    }
}

fn cut(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

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
    pub time_us: u64,
    /// A copy of the mutation (`None` for a mirror's update).
    pub mutation: Option<Mutation>,
    pub outcome: Option<Outcome>,
    pub queue_tick: u64,
    /// The clock after.
    pub clock: Vec<u64>,
    pub errors: Vec<String>,
    pub dropped: u64,
}

impl RawTransition {
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
        TransitionRecord {
            at,
            time_us: raw.time_us,
            kind: mutation.map(|m| kind_name(m.kind).to_owned()),
            called: mutation
                .map(|m| names(schema, &m.states))
                .unwrap_or_default(),
            args: mutation.map(|m| redaction.args(m)).unwrap_or_default(),
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
        TransitionRecord {
            at,
            time_us,
            kind: Some(kind_name(mutation.kind).to_owned()),
            called: names(schema, &mutation.states),
            args: redaction.args(mutation),
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
        SentRecord {
            at,
            time_us,
            kind: kind_name(mutation.kind).to_owned(),
            called: names(schema, &mutation.states),
            args: redaction.args(mutation),
            origin: mutation.origin.as_deref().map(str::to_owned),
            dropped,
        }
    }
}

/// Why a line from a sender was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("a telemetry line is over {MAX_LINE} bytes")]
    TooLong,
    #[error("not a telemetry record: {0}")]
    Invalid(String),
    #[error("a telemetry record is over the limits: {0}")]
    OverLimit(&'static str),
}

impl Record {
    /// One line of JSON, without the line feed.
    pub fn to_line(&self) -> String {
        // A record is plain data (strings, numbers, lists): serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
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
                    && s.status.clients.len() <= 4 * MAX_ITEMS
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
        assert!(arg("long").chars().count() <= MAX_ARG_CHARS + 1);
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

    #[test]
    fn redaction_from_a_list() {
        let r = Redaction::from_list(" Pin, ,card ");
        assert!(r.hides("PIN_code") && r.hides("credit_card") && !r.hides("token"));
    }
}
