//! A machine's state as a file keeps it: [`ExportedState`] (Go's `Serialized`), written by
//! [`StateSource::export`](super::StateSource::export) and read back by
//! [`Machine::import`](super::Machine::import). Durable roots (`crate::durable`) save one per
//! machine on every change; a person or a tool may read, keep and restore one too.
//!
//! Owns the format and its checks, not the files: no I/O here (reading a file with its size
//! capped is the caller's, see `crate::durable`).
//!
//! # The format (JSON, version 1)
//!
//! ```json
//! {
//!   "format": 1,
//!   "id": "root",
//!   "state_names": ["Start", "Counter", "Exception"],
//!   "schema_hash": "5c0e6b1a4f0d2e77",
//!   "ticks": [1, 24, 0],
//!   "queue_tick": 12
//! }
//! ```
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `format` | integer | the version of this layout, 1; a reader refuses versions it does not know |
//! | `id` | string | the machine's id ([`StateSource::id`](super::StateSource::id)); a machine imports only its own state |
//! | `state_names` | list of strings | the schema's states in schema order (the order of `ticks`), `Exception` included |
//! | `schema_hash` | string | the schema's hash (PROTOCOL.md, "Hashes") as 16 lowercase hex digits; informative: import decides by the names, so a schema whose relations changed still imports |
//! | `ticks` | list of integers | the clock: one tick per name, same order; odd = active |
//! | `queue_tick` | integer | how many mutations the machine had processed |
//!
//! Integers are unsigned 64-bit: a reader in a language whose numbers are doubles loses ticks
//! above 2^53. Unknown fields are refused, so a misspelt field is not silently lost.
//!
//! # What imports where
//!
//! A state imports into a machine with the same id whose schema has the same names in the same
//! order, or more states after them: a schema may grow at its end, and its new states start at
//! tick 0. `Exception`, which a schema gets appended when its definition lacks it, is set aside
//! on both sides for that comparison and matched by name, so a definition that grew by a state
//! still takes the state of the smaller one. Renamed, removed or reordered states are refused:
//! a tick belongs to the state it counted.
//!
//! A file is input like a peer's message: at most [`MAX_EXPORT_BYTES`] are parsed, and the
//! counts are checked against [`MAX_STATES`].

use serde::{Deserialize, Serialize};

use super::schema::{EXCEPTION, MAX_STATES, Schema};

/// The format version this module writes and reads.
pub const EXPORT_FORMAT: u32 = 1;

/// Largest exported state parsed, in bytes: the largest schema (4096 states of names of 1 KiB)
/// with its clock needs about a quarter of it.
pub const MAX_EXPORT_BYTES: usize = 16 * 1024 * 1024;

/// A machine's state: its id, the schema's state names and hash, the clock and the queue tick.
/// The module docs describe each field as it is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedState {
    /// The layout's version, [`EXPORT_FORMAT`].
    pub format: u32,
    /// The machine's id; a machine imports only a state with its own id.
    pub id: String,
    /// The schema's states in schema order (the order of `ticks`), `Exception` included.
    pub state_names: Vec<String>,
    /// The schema's hash, informative (import matches by names); 16 hex digits in JSON.
    #[serde(with = "hex_u64")]
    pub schema_hash: u64,
    /// The clock: one tick per name, in the same order; odd = active.
    pub ticks: Vec<u64>,
    /// How many mutations the machine had processed.
    pub queue_tick: u64,
}

/// Why an exported state cannot be read or imported; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The input is over [`MAX_EXPORT_BYTES`].
    #[error(
        "the state is {len} bytes, over the limit of {max}; this is not a state file this library wrote"
    )]
    TooLarge {
        /// The input's length in bytes.
        len: u64,
        /// The limit, [`MAX_EXPORT_BYTES`].
        max: usize,
    },
    /// Not JSON of this layout (the parser's message says where).
    #[error("the state is not valid JSON of the export format: {0}")]
    Malformed(String),
    /// A format version this library does not read.
    #[error(
        "the state is in format {found}; this version reads format {EXPORT_FORMAT}: export it again with a matching version"
    )]
    Format {
        /// The version the input declares.
        found: u32,
    },
    /// The names and ticks are of different lengths: a damaged file.
    #[error(
        "the state lists {names} state names but {ticks} ticks; the file is damaged: restore a copy or remove it to start from zero"
    )]
    Inconsistent {
        /// How many state names the input lists.
        names: usize,
        /// How many ticks it lists.
        ticks: usize,
    },
    /// More states than [`MAX_STATES`] (the count it lists).
    #[error("the state lists {0} states, over the limit of {MAX_STATES}")]
    TooManyStates(usize),
    /// A tick (or the queue tick) past [`MAX_TICK`]: no machine counts that far, and the next
    /// transition would overflow it.
    #[error(
        "the state holds a tick of {0}, past the limit of {MAX_TICK}: no machine counts that far; the file is damaged"
    )]
    TickTooLarge(u64),
    /// The state is another machine's.
    #[error(
        "the state is of machine {found:?}, not of {expected:?}: import a machine's own state (a file of another machine was put in its place)"
    )]
    OtherMachine {
        /// The id in the input.
        found: String,
        /// The id of the machine importing it.
        expected: String,
    },
    /// The state's names do not fit the machine's schema (renamed, removed or reordered states).
    #[error(
        "the state does not fit the schema: {0}; a schema may only grow at its end (keep the states in order and add new ones after them)"
    )]
    Schema(String),
    /// A transition was running; import again between mutations.
    #[error("a transition is running; import before the machine is used, or between mutations")]
    Busy,
    /// The machine was disposed; it takes no state any more.
    #[error("the machine was disposed")]
    Disposed,
}

/// The largest tick (and queue tick) a state may hold: 2^62, which a machine ticking a billion
/// times a second reaches in 146 years. Past it, the next transition could overflow.
pub const MAX_TICK: u64 = 1 << 62;

impl ExportedState {
    /// The state of a machine with this id and schema at this clock and queue tick.
    pub fn new(id: &str, schema: &Schema, ticks: Vec<u64>, queue_tick: u64) -> Self {
        ExportedState {
            format: EXPORT_FORMAT,
            id: id.to_owned(),
            state_names: schema.names().map(str::to_owned).collect(),
            schema_hash: schema.hash(),
            ticks,
            queue_tick,
        }
    }

    /// The JSON this module documents, indented for the people who read it.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses and checks JSON of this format: its size, its version, that names and ticks
    /// pair up, and their count.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ImportError> {
        if bytes.len() > MAX_EXPORT_BYTES {
            return Err(ImportError::TooLarge {
                len: bytes.len() as u64,
                max: MAX_EXPORT_BYTES,
            });
        }
        let state: ExportedState =
            serde_json::from_slice(bytes).map_err(|e| ImportError::Malformed(e.to_string()))?;
        state.check()?;
        Ok(state)
    }

    /// What holds for any state, whatever machine it goes to.
    pub fn check(&self) -> Result<(), ImportError> {
        if self.format != EXPORT_FORMAT {
            return Err(ImportError::Format { found: self.format });
        }
        if self.state_names.len() > MAX_STATES {
            return Err(ImportError::TooManyStates(self.state_names.len()));
        }
        if self.state_names.len() != self.ticks.len() {
            return Err(ImportError::Inconsistent {
                names: self.state_names.len(),
                ticks: self.ticks.len(),
            });
        }
        if let Some(&tick) = self
            .ticks
            .iter()
            .chain([&self.queue_tick])
            .find(|&&t| t > MAX_TICK)
        {
            return Err(ImportError::TickTooLarge(tick));
        }
        Ok(())
    }

    /// Where each exported tick goes in `schema`'s clock (the rule in the module docs), or why
    /// it does not fit.
    pub fn positions(&self, schema: &Schema) -> Result<Vec<usize>, ImportError> {
        self.check()?;
        let exported: Vec<&str> = self
            .state_names
            .iter()
            .map(String::as_str)
            .filter(|&n| n != EXCEPTION)
            .collect();
        if self.state_names.len() - exported.len() > 1 {
            return Err(ImportError::Schema(format!("{EXCEPTION} is listed twice")));
        }
        let current: Vec<&str> = schema.names().filter(|&n| n != EXCEPTION).collect();
        if let Some((i, (was, is))) = exported
            .iter()
            .zip(&current)
            .enumerate()
            .find(|(_, (was, is))| was != is)
        {
            return Err(ImportError::Schema(format!(
                "state {} is {was:?} in the exported state but {is:?} in the schema",
                i + 1
            )));
        }
        if exported.len() > current.len() {
            return Err(ImportError::Schema(format!(
                "the exported state has {} states, the schema only {} ({:?} and after are missing)",
                exported.len(),
                current.len(),
                exported[current.len()]
            )));
        }
        Ok(self
            .state_names
            .iter()
            .map(|name| {
                // Every name is in the schema: the prefix matched, and `Exception` always is.
                schema.index(name).unwrap_or_else(|| schema.exception())
            })
            .collect())
    }
}

/// A `u64` as 16 lowercase hex digits: hashes are bit patterns, and JSON numbers above 2^53
/// do not survive every reader.
mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{value:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if text.is_empty() || text.len() > 16 {
            return Err(de::Error::custom("a hash is 1 to 16 hex digits"));
        }
        u64::from_str_radix(&text, 16).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::StateDef;

    fn schema(names: &[&str]) -> Schema {
        names
            .iter()
            .fold(Schema::builder(), |b, n| b.state(StateDef::new(*n)))
            .build()
            .expect("valid schema")
    }

    #[test]
    fn json_round_trips_with_the_documented_fields() {
        let s = schema(&["Start", "Counter"]);
        let state = ExportedState::new("root", &s, vec![1, 24, 0], 12);
        let json = state.to_json();
        let value: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        let fields: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields.len(),
            6,
            "format, id, state_names, schema_hash, ticks, queue_tick: {fields:?}"
        );
        assert_eq!(value["format"], 1);
        assert_eq!(value["state_names"][2], EXCEPTION);
        assert_eq!(value["schema_hash"], format!("{:016x}", s.hash()));
        assert_eq!(ExportedState::from_json(&json), Ok(state));
    }

    /// A damaged file's tick past the limit is refused at import, not overflowed by the next
    /// transition (a panic in debug builds, a clock going back in release ones).
    #[test]
    fn a_tick_past_the_limit_is_refused() {
        let s = schema(&["Start", "Counter"]);
        let machine = crate::machine::Machine::builder(s.clone())
            .id("root")
            .build();
        for (ticks, queue_tick) in [(vec![1, u64::MAX, 0], 3), (vec![1, 2, 0], MAX_TICK + 1)] {
            let state = ExportedState::new("root", &s, ticks, queue_tick);
            let refused = machine.import(state).expect_err("refused");
            assert!(matches!(refused, ImportError::TickTooLarge(_)), "{refused}");
            assert!(refused.to_string().contains("damaged"), "{refused}");
        }
        let at_limit = ExportedState::new("root", &s, vec![1, MAX_TICK, 0], MAX_TICK);
        machine.import(at_limit).expect("the limit itself is taken");
        assert_eq!(
            crate::machine::StateSource::clock(&machine),
            [1, MAX_TICK, 0]
        );
    }

    #[test]
    fn oversized_malformed_and_inconsistent_states_are_refused() {
        let big = vec![b' '; MAX_EXPORT_BYTES + 1];
        assert!(matches!(
            ExportedState::from_json(&big),
            Err(ImportError::TooLarge { .. })
        ));
        assert!(matches!(
            ExportedState::from_json(b"{\"format\": 1"),
            Err(ImportError::Malformed(_))
        ));
        let s = schema(&["A"]);
        let mut state = ExportedState::new("m", &s, vec![1, 0], 1);
        state.format = 2;
        assert_eq!(
            ExportedState::from_json(&state.to_json()),
            Err(ImportError::Format { found: 2 })
        );
        state.format = EXPORT_FORMAT;
        state.ticks.pop();
        assert_eq!(
            ExportedState::from_json(&state.to_json()),
            Err(ImportError::Inconsistent { names: 2, ticks: 1 })
        );
        let unknown = br#"{"format":1,"id":"m","state_names":[],"schema_hash":"0","ticks":[],"queue_tick":0,"extra":1}"#;
        assert!(matches!(
            ExportedState::from_json(unknown),
            Err(ImportError::Malformed(e)) if e.contains("extra")
        ));
        let bad_hash = br#"{"format":1,"id":"m","state_names":[],"schema_hash":"xyz","ticks":[],"queue_tick":0}"#;
        assert!(matches!(
            ExportedState::from_json(bad_hash),
            Err(ImportError::Malformed(_))
        ));
    }

    #[test]
    fn a_schema_may_grow_at_its_end_with_exception_matched_by_name() {
        let small = schema(&["A", "B"]);
        let state = ExportedState::new("m", &small, vec![1, 2, 3], 5);
        assert_eq!(state.positions(&small), Ok(vec![0, 1, 2]));
        // [A, B, C, Exception]: Exception moved from 2 to 3.
        let grown = schema(&["A", "B", "C"]);
        assert_eq!(state.positions(&grown), Ok(vec![0, 1, 3]));
        let renamed = schema(&["A", "X", "C"]);
        assert!(
            matches!(state.positions(&renamed), Err(ImportError::Schema(e)) if e.contains("\"B\" in the exported state but \"X\""))
        );
        let shrunk = schema(&["A"]);
        assert!(
            matches!(state.positions(&shrunk), Err(ImportError::Schema(e)) if e.contains("\"B\" and after are missing"))
        );
        let reordered = schema(&["B", "A"]);
        assert!(state.positions(&reordered).is_err());
    }
}
