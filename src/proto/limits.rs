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
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, Deserialize, DeserializeSeed, SeqAccess, Visitor};

pub use crate::machine::schema::MAX_STATES;
pub use crate::machine::value::{MAX_ARGS, MAX_DEPTH, MAX_KEY_LEN};

/// Longest client id, source name, state name in a tracking list, ancestry id or payload name,
/// in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// Longest auth token, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Most ids in an ancestry: the depth of a state-source tree above a server.
pub const MAX_ANCESTRY: usize = 64;

/// Largest frame a server reads before a client's hello is accepted: what a connection that has
/// not said who it is may make the server hold. A hello is names and a token (a few KiB); a
/// tracking list of thousands of long names is the one thing that could need more (track
/// everything instead).
pub const MAX_HELLO_FRAME: usize = 64 * 1024;

/// Items reserved up front for any decoded list, whatever count it claims: a claimed count is
/// only a promise, so the list grows as items really arrive.
pub const PREALLOC: usize = 64;

/// `what` of `len` units is over `max`: the error a field's bound raises.
fn over<E: de::Error>(what: &str, len: usize, max: usize, unit: &str) -> E {
    E::custom(format_args!(
        "{what} of {len} {unit} is over the protocol's limit of {max}"
    ))
}

/// A list of `T` with at most `max` items.
struct BoundedSeq<T> {
    what: &'static str,
    max: usize,
    item: PhantomData<T>,
}

impl<T> BoundedSeq<T> {
    fn new(what: &'static str, max: usize) -> Self {
        BoundedSeq {
            what,
            max,
            item: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<T>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at most {} items)", self.what, self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let claimed = seq.size_hint().unwrap_or(0);
        if claimed > self.max {
            return Err(over(self.what, claimed, self.max, "items"));
        }
        let mut items = Vec::with_capacity(claimed.min(PREALLOC));
        while let Some(item) = seq.next_element()? {
            if items.len() == self.max {
                return Err(over(self.what, self.max + 1, self.max, "items"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// A string of at most `MAX` bytes. Its bytes are already in the frame when this runs, and the
/// codec's allocation limit follows the frame's size, so checking after reading costs nothing
/// a frame could not.
#[derive(Debug)]
struct BoundedString<const MAX: usize>(String);

impl<'de, const MAX: usize> Deserialize<'de> for BoundedString<MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s.len() > MAX {
            return Err(over("a name", s.len(), MAX, "bytes"));
        }
        Ok(BoundedString(s))
    }
}

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

fn string<'de, D: Deserializer<'de>>(
    deserializer: D,
    what: &'static str,
    max: usize,
) -> Result<String, D::Error> {
    let s = String::deserialize(deserializer)?;
    if s.len() > max {
        return Err(over(what, s.len(), max, "bytes"));
    }
    Ok(s)
}

fn names<'de, D: Deserializer<'de>>(
    deserializer: D,
    what: &'static str,
    max: usize,
) -> Result<Vec<String>, D::Error> {
    let bounded = BoundedSeq::<BoundedString<MAX_NAME_LEN>>::new(what, max);
    let items = bounded.deserialize(deserializer)?;
    Ok(items.into_iter().map(|s| s.0).collect())
}

/// A client id, source name or payload name.
pub fn name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    string(deserializer, "a name", MAX_NAME_LEN)
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
    use crate::machine::{Args, MutationKind, Value};
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
        }));
        assert_eq!(body.pop(), Some(0), "the encoding ends with the null's tag");
        for _ in 0..depth {
            body.push(container);
            body.push(1); // one item (a list) or one entry (a map)
            if container == MAP {
                body.extend_from_slice(&[1, b'k']);
            }
        }
        body.push(0);
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
        }));
        body.pop();
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
            })
        };
        let args = |count: usize, key_len: usize| {
            Message::Mutate(MutateRequest {
                id: 0,
                kind: MutationKind::Set,
                states: vec![],
                args: (0..count)
                    .map(|i| (format!("{i:0>key_len$}"), Value::Null))
                    .collect(),
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
