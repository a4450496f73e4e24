//! The bounds on what a peer's message may hold, enforced while it decodes (PROTOCOL.md,
//! "Limits"; SECURITY.md, "Limits").
//!
//! The frame limit bounds a message's size, but not what its counts claim: a list header says
//! 2^60 items in a few bytes. So every list the messages carry is read through a bounded
//! sequence that refuses a claimed count over its limit before reserving anything, and reserves
//! at most [`PREALLOC`] items up front; names and tokens are checked as they are read. Argument
//! values bound their own nesting ([`MAX_DEPTH`]). The fields use these through
//! `#[serde(deserialize_with = ...)]` in [`super::message`]; encoding is unchanged.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, Visitor};

pub use crate::machine::bounded::PREALLOC;
use crate::machine::bounded::{BoundedSeq, string, strings};
pub use crate::machine::schema::MAX_STATES;
pub use crate::machine::value::{MAX_ARGS, MAX_DEPTH, MAX_KEY_LEN};

/// Longest client id, source name, state name in a tracking list, ancestry id, payload name,
/// group name, tag or parent id, in bytes.
pub use crate::machine::bounded::MAX_NAME_LEN;

/// Longest auth token, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Most ids in an ancestry: the depth of a state-source tree above a server.
pub const MAX_ANCESTRY: usize = 64;

/// Most tags of a source a welcome carries (each a name, at most [`MAX_NAME_LEN`] bytes).
pub const MAX_TAGS: usize = 256;

/// Most groups of a schema (each named in at most [`MAX_NAME_LEN`] bytes, listing at most
/// [`MAX_STATES`] states); the schema's own decoding keeps it (`machine::groups`).
pub use crate::machine::groups::MAX_GROUPS;

/// Largest frame a server reads before a client's hello is accepted: what a connection that has
/// not said who it is may make the server hold. A hello is names and a token (a few KiB); a
/// tracking list of thousands of long names is the one thing that could need more (track
/// everything instead).
pub const MAX_HELLO_FRAME: usize = 64 * 1024;

/// `Some` of what `seed` reads, or `None`.
struct OptionOf<S>(S);

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for OptionOf<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an optional value")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(deserializer).map(Some)
    }
}

fn names<'de, D: Deserializer<'de>>(
    deserializer: D,
    what: &'static str,
    max: usize,
) -> Result<Vec<String>, D::Error> {
    strings::<D, MAX_NAME_LEN>(deserializer, what, max)
}

/// A client id, source name or payload name.
pub fn name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    string(deserializer, "a name", MAX_NAME_LEN)
}

/// An optional name: a source's parent id.
pub fn optional_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    struct Name;
    impl<'de> DeserializeSeed<'de> for Name {
        type Value = String;
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
            string(deserializer, "a parent id", MAX_NAME_LEN)
        }
    }
    deserializer.deserialize_option(OptionOf(Name))
}

/// A source's tags.
pub fn tags<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    names(deserializer, "a list of tags", MAX_TAGS)
}

/// An optional auth token.
pub fn token<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct Token;
    impl<'de> DeserializeSeed<'de> for Token {
        type Value = String;
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
            string(deserializer, "a token", MAX_TOKEN_LEN)
        }
    }
    deserializer.deserialize_option(OptionOf(Token))
}

/// An optional list of state names to track.
pub fn tracked_names<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<String>>, D::Error> {
    struct Names;
    impl<'de> DeserializeSeed<'de> for Names {
        type Value = Vec<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<String>, D::Error> {
            names(d, "a list of states to track", MAX_STATES)
        }
    }
    deserializer.deserialize_option(OptionOf(Names))
}

/// A source's ancestry: node ids, nearest first.
pub fn ancestry<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    names(deserializer, "an ancestry", MAX_ANCESTRY)
}

/// State positions (a mutation's states).
pub fn states<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u32>, D::Error> {
    BoundedSeq::new("a list of states", MAX_STATES).deserialize(deserializer)
}

/// Optional state positions (a grant's tracked or mutable states).
pub fn optional_states<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<u32>>, D::Error> {
    deserializer.deserialize_option(OptionOf(BoundedSeq::new("a list of states", MAX_STATES)))
}

/// A payload's data: counted against the codec's allocation limit, which follows the body.
pub fn bytes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    crate::machine::value::BytesSeed.deserialize(deserializer)
}

/// A clock: one tick per state.
pub fn ticks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u64>, D::Error> {
    BoundedSeq::new("a clock", MAX_STATES).deserialize(deserializer)
}

/// A clock diff's `(state, tick delta)` changes.
pub fn changes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(u32, u64)>, D::Error> {
    BoundedSeq::new("a clock diff", MAX_STATES).deserialize(deserializer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Args, GroupDef, MutationKind, SchemaDef, StateDef, Value};
    use crate::proto::message::{
        self, ClockDiff, Hello, MutateRequest, Payload, WantedOptions, Welcome,
    };
    use crate::proto::{Message, PROTOCOL_VERSION};

    /// The variant tag of `Value::List` and `Value::Map` on the wire (declaration order).
    const LIST: u8 = 6;
    const MAP: u8 = 7;

    /// A `Mutate` body whose argument `a` is a list (or map) nested `depth` deep around a null,
    /// written byte by byte: building such a value and encoding it would recurse as deep.
    fn nested_mutate(depth: usize, container: u8) -> Vec<u8> {
        let mut body = message::encode_to_vec(&Message::Mutate(MutateRequest {
            id: 1,
            kind: MutationKind::Add,
            states: vec![0],
            args: Args::new().with("a", Value::Null),
            key: None,
        }));
        assert_eq!(body.pop(), Some(0), "the encoding ends with the key's None");
        assert_eq!(body.pop(), Some(0), "after the null's tag");
        for _ in 0..depth {
            body.push(container);
            body.push(1); // one item (a list) or one entry (a map)
            if container == MAP {
                body.extend_from_slice(&[1, b'k']);
            }
        }
        body.push(0);
        body.push(0); // no key
        body
    }

    /// Appends `n` as the codec writes a length: bincode's varint, not the frames' LEB128.
    fn put_len(out: &mut Vec<u8>, n: u64) {
        match bincode::encode_to_vec(n, bincode::config::standard()) {
            Ok(bytes) => out.extend_from_slice(&bytes),
            Err(e) => panic!("a u64 encodes: {e}"),
        }
    }

    fn decode_err(body: &[u8]) -> String {
        match message::decode(body) {
            Err(e) => e.to_string(),
            Ok(m) => panic!("decoded a message over a limit: {}", m.name()),
        }
    }

    #[test]
    fn the_issues_10000_deep_argument_is_an_error_not_a_crash() {
        let body = nested_mutate(10_000, LIST);
        assert!(body.len() > 20_000 && body.len() < 21_000, "a 20 KB frame");
        let error = decode_err(&body);
        assert!(
            error.contains("deeper than 32 levels"),
            "the error names the limit: {error}"
        );
    }

    #[test]
    fn nesting_at_the_limit_decodes_and_one_level_more_fails() {
        for container in [LIST, MAP] {
            let at_limit = message::decode(&nested_mutate(MAX_DEPTH, container))
                .expect("a value nested exactly to the limit decodes");
            let Message::Mutate(request) = &at_limit else {
                panic!("a mutation")
            };
            let value = request.args.get("a").expect("the argument");
            assert_eq!(value.depth(), MAX_DEPTH);
            // What decodes encodes back to the same bytes, so a mirror can forward it upstream.
            assert_eq!(
                message::encode_to_vec(&at_limit),
                nested_mutate(MAX_DEPTH, container)
            );
            let error = decode_err(&nested_mutate(MAX_DEPTH + 1, container));
            assert!(error.contains("deeper than 32 levels"), "{error}");
        }
    }

    #[test]
    fn a_claimed_count_over_its_limit_fails_before_reserving() {
        // Mutate { id: 1, kind: Add, states: <2^60 of them> } and nothing else: the count is
        // refused as soon as it is read; without the bound the decoder would reserve a
        // megabyte for it first.
        let mut body = vec![4, 1, 0];
        put_len(&mut body, 1 << 60);
        let error = decode_err(&body);
        assert!(
            error.contains(
                "a list of states of 1152921504606846976 items is over the protocol's limit of 4096"
            ),
            "{error}"
        );

        // The same for a clock, a diff and a grant.
        let mut snapshot = vec![7, 1];
        put_len(&mut snapshot, u64::MAX >> 1);
        assert!(decode_err(&snapshot).contains("a clock of"));
        let mut diff = vec![3];
        put_len(&mut diff, (MAX_STATES + 1) as u64);
        assert!(decode_err(&diff).contains("a clock diff of 4097 items"));
    }

    #[test]
    fn a_claimed_string_longer_than_the_body_is_refused_before_reserving() {
        // Bye { reason: <60 MiB claimed> }, and Payload { name: "", data: <60 MiB claimed> },
        // in bodies of a few bytes: the codec's allocation limit follows the body, so the claim
        // is over it before anything is reserved.
        for head in [&[12][..], &[8, 0]] {
            let mut body = head.to_vec();
            put_len(&mut body, 60 << 20);
            assert!(body.len() < 8);
            let error = decode_err(&body);
            assert!(error.contains("LimitExceeded"), "{error}");
            // A claim within the allocation limit but past the body is a plain truncation.
            let mut short = head.to_vec();
            short.extend_from_slice(&[100, 1, 2]);
            assert!(decode_err(&short).contains("UnexpectedEnd"));
        }
        // Bytes inside an argument are read the same way.
        let mut body = message::encode_to_vec(&Message::Mutate(MutateRequest {
            id: 1,
            kind: MutationKind::Add,
            states: vec![],
            args: Args::new().with("a", Value::Null),
            key: None,
        }));
        body.pop(); // the key's None
        body.pop(); // the null's tag
        body.push(5); // Value::Bytes
        put_len(&mut body, 60 << 20);
        assert!(decode_err(&body).contains("LimitExceeded"));
    }

    fn hello(client_id: String, token: Option<String>, track: Option<Vec<String>>) -> Message {
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_id,
            source: String::new(),
            schema_hash: 0,
            options: WantedOptions {
                compression: false,
                track,
            },
            token,
        })
    }

    /// Each bounded field decodes at its limit and fails one past it, naming what was too long.
    #[test]
    fn every_bounded_field_decodes_at_its_limit_and_fails_past_it() {
        let name = |n: usize| "n".repeat(n);
        let names = |count: usize, len: usize| vec![name(len); count];
        let welcome = |ancestry: Vec<String>| {
            Message::Welcome(Welcome {
                ancestry,
                schema: None,
                snapshot: Default::default(),
                granted: Default::default(),
                parent_id: None,
                tags: Vec::new(),
            })
        };
        let identity = |parent_id: Option<String>, tags: Vec<String>| {
            Message::Welcome(Welcome {
                ancestry: Vec::new(),
                schema: None,
                snapshot: Default::default(),
                granted: Default::default(),
                parent_id,
                tags,
            })
        };
        // A schema's groups, in a welcome and in a schema change (states are not checked while
        // decoding: the schema is validated after).
        let grouped = |groups: Vec<GroupDef>, change: bool| {
            let schema = SchemaDef {
                states: vec![StateDef::new("A")],
                groups,
            };
            if change {
                Message::SchemaChanged {
                    schema,
                    snapshot: Default::default(),
                }
            } else {
                Message::Welcome(Welcome {
                    ancestry: Vec::new(),
                    schema: Some(schema),
                    snapshot: Default::default(),
                    granted: Default::default(),
                    parent_id: None,
                    tags: Vec::new(),
                })
            }
        };
        let groups = |count: usize| {
            (0..count)
                .map(|i| GroupDef::new(format!("g{i}"), ["A"]))
                .collect::<Vec<_>>()
        };
        let args = |count: usize, key_len: usize| {
            Message::Mutate(MutateRequest {
                id: 0,
                kind: MutationKind::Set,
                states: vec![],
                args: (0..count)
                    .map(|i| (format!("{i:0>key_len$}"), Value::Null))
                    .collect(),
                key: None,
            })
        };
        let cases: Vec<(&str, Message, Message, &str)> = vec![
            (
                "client id",
                hello(name(MAX_NAME_LEN), None, None),
                hello(name(MAX_NAME_LEN + 1), None, None),
                "a name of 1025 bytes",
            ),
            (
                "token",
                hello(String::new(), Some(name(MAX_TOKEN_LEN)), None),
                hello(String::new(), Some(name(MAX_TOKEN_LEN + 1)), None),
                "a token of 16385 bytes",
            ),
            (
                "tracked names",
                hello(String::new(), None, Some(names(MAX_STATES, 1))),
                hello(String::new(), None, Some(names(MAX_STATES + 1, 1))),
                "a list of states to track of 4097 items",
            ),
            (
                "tracked name length",
                hello(String::new(), None, Some(names(1, MAX_NAME_LEN))),
                hello(String::new(), None, Some(names(1, MAX_NAME_LEN + 1))),
                "a name of 1025 bytes",
            ),
            (
                "ancestry",
                welcome(names(MAX_ANCESTRY, 8)),
                welcome(names(MAX_ANCESTRY + 1, 8)),
                "an ancestry of 65 items",
            ),
            (
                "ancestry message",
                Message::Ancestry(names(MAX_ANCESTRY, 8)),
                Message::Ancestry(names(MAX_ANCESTRY + 1, 8)),
                "an ancestry of 65 items",
            ),
            (
                "tags",
                identity(None, names(MAX_TAGS, 8)),
                identity(None, names(MAX_TAGS + 1, 8)),
                "a list of tags of 257 items",
            ),
            (
                "tag length",
                identity(None, names(1, MAX_NAME_LEN)),
                identity(None, names(1, MAX_NAME_LEN + 1)),
                "a name of 1025 bytes",
            ),
            (
                "parent id",
                identity(Some(name(MAX_NAME_LEN)), Vec::new()),
                identity(Some(name(MAX_NAME_LEN + 1)), Vec::new()),
                "a parent id of 1025 bytes",
            ),
            (
                "groups in a welcome",
                grouped(groups(MAX_GROUPS), false),
                grouped(groups(MAX_GROUPS + 1), false),
                "a schema's groups of 1025 items",
            ),
            (
                "groups in a schema change",
                grouped(groups(MAX_GROUPS), true),
                grouped(groups(MAX_GROUPS + 1), true),
                "a schema's groups of 1025 items",
            ),
            (
                "group name",
                grouped(vec![GroupDef::new(name(MAX_NAME_LEN), ["A"])], true),
                grouped(vec![GroupDef::new(name(MAX_NAME_LEN + 1), ["A"])], true),
                "a group's name of 1025 bytes",
            ),
            (
                "group states",
                grouped(vec![GroupDef::new("g", names(MAX_STATES, 1))], false),
                grouped(vec![GroupDef::new("g", names(MAX_STATES + 1, 1))], false),
                "a group's states of 4097 items",
            ),
            (
                "payload name",
                Message::Payload(Payload {
                    name: name(MAX_NAME_LEN),
                    data: vec![1],
                }),
                Message::Payload(Payload {
                    name: name(MAX_NAME_LEN + 1),
                    data: vec![1],
                }),
                "a name of 1025 bytes",
            ),
            (
                "argument count",
                args(MAX_ARGS, 4),
                args(MAX_ARGS + 1, 4),
                "a mutation with 257 arguments",
            ),
            (
                "argument name",
                args(1, MAX_KEY_LEN),
                args(1, MAX_KEY_LEN + 1),
                "an argument name of 1025 bytes",
            ),
            (
                "diff",
                Message::Diff(ClockDiff {
                    changes: vec![(0, 1); MAX_STATES],
                    ..Default::default()
                }),
                Message::Diff(ClockDiff {
                    changes: vec![(0, 1); MAX_STATES + 1],
                    ..Default::default()
                }),
                "a clock diff of 4097 items",
            ),
        ];
        for (what, at_limit, past_limit, expected) in cases {
            let decoded = message::decode(&message::encode_to_vec(&at_limit))
                .unwrap_or_else(|e| panic!("{what} at its limit decodes: {e}"));
            assert_eq!(decoded, at_limit, "{what}");
            let error = decode_err(&message::encode_to_vec(&past_limit));
            assert!(error.contains(expected), "{what}: {error}");
        }
    }
}
