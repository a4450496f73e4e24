//! What must hold for any bytes a peer can send: the fuzz targets in `fuzz/` and the replay of
//! their corpus in the test suite (`tests/hostile_corpus.rs`) both run these, so a crash the
//! fuzzer finds becomes a regression test by adding its input to `fuzz/seeds/`.
//!
//! Each check panics only when an invariant breaks; malformed input must come back as an error.
//!
//! [`structured`] starts from a message instead of bytes (the `structured` target builds them
//! with `arbitrary`: deep arguments, long lists, many names, each limit and one past it) and
//! checks the decoder against [`within_limits`], the limits written out a second time.

use std::collections::BTreeMap;

use super::acl::Acl;
use super::diff::{self, Tracked};
use super::handshake::{self, Offer};
use super::limits::{
    MAX_ANCESTRY, MAX_ARGS, MAX_DEPTH, MAX_GROUPS, MAX_KEY_LEN, MAX_NAME_LEN, MAX_STATES, MAX_TAGS,
    MAX_TOKEN_LEN,
};
use super::message::{self, Message, Snapshot};
use super::{Compression, FrameConfig, FrameError, FrameReader, ProtoError};
use crate::machine::{Args, Schema, SchemaDef, StateDef};

/// Small enough that hostile lengths are hit often, large enough for real messages.
const MAX_FRAME: usize = 64 * 1024;

/// Feeds `data` to a frame reader in chunks whose sizes the first byte picks, with compression
/// on when its top bit is set, taking messages until the reader needs more bytes or refuses.
pub fn frames(data: &[u8]) {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(knobs & 0x7f) + 1;
    let compression = (knobs & 0x80 != 0).then(Compression::default);
    let mut reader = FrameReader::new(FrameConfig {
        max_frame: MAX_FRAME,
        compression,
    });
    for piece in rest.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next_message() {
                Ok(Some(m)) => assert_round_trips(&m),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// Decodes `data` as a message body; whatever decodes must encode back to the same message, and
/// a clock diff must apply to a clock without panicking.
pub fn message(data: &[u8]) {
    let Ok(m) = message::decode(data) else { return };
    assert_round_trips(&m);
    if let Message::Diff(d) = &m {
        for len in [0, 3, 64] {
            let mut ticks = vec![1; len];
            let _ = diff::apply(&mut ticks, d, &Tracked::All);
        }
    }
}

/// Encodes `m` and decodes it again, as a body and as frames fed in pieces (the knobs pick how
/// many, and compression): it decodes, to the same bytes, exactly when
/// it is within the protocol's limits; else it is refused with an error naming a limit. Every
/// strict prefix of its body is refused.
pub fn structured(m: &Message, knobs: u8) {
    let body = message::encode_to_vec(m);
    let expected_ok = within_limits(m);
    match message::decode(&body) {
        Ok(again) => {
            assert!(expected_ok, "a message past a limit decoded: {}", brief(m));
            assert_eq!(
                message::encode_to_vec(&again),
                body,
                "a decoded message must survive re-encoding: {}",
                brief(m)
            );
        }
        Err(e) => {
            assert!(
                !expected_ok,
                "a message within the limits did not decode ({e}): {}",
                brief(m)
            );
            let text = e.to_string();
            assert!(
                text.contains("limit") || text.contains("LimitExceeded"),
                "a refusal names the limit: {text}"
            );
        }
    }
    let cut = usize::from(knobs) * body.len() / 256;
    assert!(
        message::decode(&body[..cut]).is_err(),
        "a strict prefix ({cut} of {} bytes) decoded",
        body.len()
    );

    let config = FrameConfig {
        max_frame: MAX_FRAME,
        compression: (knobs & 0x80 != 0).then_some(Compression {
            threshold: 0,
            ..Compression::default()
        }),
    };
    let mut stream = Vec::new();
    super::encode_frame(&config, m, &mut stream);
    let mut reader = FrameReader::new(config);
    // The knobs pick how many pieces (1 to 128) the stream arrives in, not their size: a
    // message at a limit is kilobytes, and byte-by-byte reads are the `frames` target's job.
    let chunk = stream.len().div_ceil(usize::from(knobs & 0x7f) + 1).max(1);
    let mut outcome = None;
    for piece in stream.chunks(chunk) {
        reader.push(piece);
        match reader.next_message() {
            Ok(None) => continue,
            result => {
                outcome = Some(result);
                break;
            }
        }
    }
    match outcome {
        Some(Ok(Some(again))) => {
            assert!(expected_ok && body.len() <= MAX_FRAME);
            assert_eq!(message::encode_to_vec(&again), body);
        }
        Some(Err(ProtoError::Frame(
            FrameError::TooLarge { .. } | FrameError::Decompress { .. },
        ))) => assert!(
            body.len() > MAX_FRAME,
            "a frame within the limit was refused"
        ),
        Some(Err(ProtoError::Decode(_))) => assert!(!expected_ok),
        other => panic!(
            "a whole frame of {} bytes read as {other:?}: {}",
            stream.len(),
            brief(m)
        ),
    }
}

/// Whether `m` keeps every limit the decoder enforces (PROTOCOL.md, "Limits"), written out
/// independently of the decoder so that the two check each other.
pub fn within_limits(m: &Message) -> bool {
    let name = |s: &String| s.len() <= MAX_NAME_LEN;
    let names = |v: &[String], max: usize| v.len() <= max && v.iter().all(name);
    let token = |t: &Option<String>| t.as_ref().is_none_or(|t| t.len() <= MAX_TOKEN_LEN);
    let states = |v: &Option<Vec<u32>>| v.as_ref().is_none_or(|v| v.len() <= MAX_STATES);
    let snapshot = |s: &Snapshot| s.ticks.len() <= MAX_STATES;
    match m {
        Message::Hello(h) => {
            name(&h.client_id)
                && name(&h.source)
                && token(&h.token)
                && h.options
                    .track
                    .as_ref()
                    .is_none_or(|t| names(t, MAX_STATES))
        }
        Message::Welcome(w) => {
            names(&w.ancestry, MAX_ANCESTRY)
                && w.schema.as_ref().is_none_or(schema_within_limits)
                && snapshot(&w.snapshot)
                && states(&w.granted.tracked)
                && states(&w.granted.mutable)
                && w.parent_id.as_ref().is_none_or(name)
                && names(&w.tags, MAX_TAGS)
        }
        Message::Diff(d) => d.changes.len() <= MAX_STATES,
        Message::MutateReply(r) => r.diff.changes.len() <= MAX_STATES,
        Message::Mutate(r) => {
            r.states.len() <= MAX_STATES
                && args_within_limits(&r.args)
                && r.key.as_ref().is_none_or(|k| name(&k.origin))
        }
        Message::WhenArgs(r) => args_within_limits(&r.args),
        Message::Snapshot { snapshot: s, .. } => snapshot(s),
        Message::SchemaChanged {
            schema,
            snapshot: s,
        } => schema_within_limits(schema) && snapshot(s),
        Message::Payload(p) => name(&p.name),
        Message::StatusRequest { token: t } => token(t),
        Message::Ancestry(a) => names(a, MAX_ANCESTRY),
        Message::Refused(_)
        | Message::Sync { .. }
        | Message::Ping(_)
        | Message::Pong(_)
        | Message::Bye { .. }
        | Message::Error { .. }
        | Message::Status(_)
        | Message::WhenArgsDone { .. }
        | Message::WhenArgsCancel { .. }
        | Message::ErrRequest { .. }
        | Message::ErrReply { .. } => true,
    }
}

/// A schema's groups: their count, each name's length and each one's count of states.
fn schema_within_limits(schema: &SchemaDef) -> bool {
    schema.groups.len() <= MAX_GROUPS
        && schema
            .groups
            .iter()
            .all(|g| g.name.len() <= MAX_NAME_LEN && g.states.len() <= MAX_STATES)
}

fn args_within_limits(args: &Args) -> bool {
    args.len() <= MAX_ARGS
        && args
            .iter()
            .all(|(k, v)| k.len() <= MAX_KEY_LEN && v.depth() <= MAX_DEPTH)
}

/// A message for an assertion: its name and encoded size (the whole of a message built to break
/// a limit can be megabytes).
fn brief(m: &Message) -> String {
    format!("{} of {} bytes", m.name(), message::encode_to_vec(m).len())
}

/// Re-encoding is a fixed point: bytes are compared, not messages, since a float argument may be
/// NaN, which equals nothing.
fn assert_round_trips(m: &Message) {
    let bytes = message::encode_to_vec(m);
    match message::decode(&bytes) {
        Ok(again) => assert_eq!(
            message::encode_to_vec(&again),
            bytes,
            "a decoded message must survive re-encoding: {m:?}"
        ),
        Err(e) => panic!("a re-encoded message no longer decodes ({e}): {m:?}"),
    }
}

/// Runs the handshake on a decoded body: a hello against a fixed source under one of three
/// policies (the first byte picks), a welcome through the client's schema validation.
pub fn handshake(data: &[u8]) {
    let Some((&knobs, body)) = data.split_first() else {
        return;
    };
    match message::decode(body) {
        Ok(Message::Hello(hello)) => {
            let schema = fixed_schema();
            let offer = Offer {
                schema: &schema,
                ancestry: &["root".to_string()],
                snapshot: Snapshot {
                    ticks: (1..=schema.len() as u64).collect(),
                    queue_tick: 7,
                },
                parent_id: Some("parent".to_string()),
                tags: vec!["tag".to_string()],
            };
            let (acl, compression_offered) = acl(knobs);
            let Ok(accepted) = handshake::decide(&hello, offer, &acl, compression_offered) else {
                return;
            };
            let ticks = &accepted.welcome.snapshot.ticks;
            assert_eq!(
                ticks.len(),
                schema.len(),
                "welcome clock has the schema's length"
            );
            for (i, &t) in ticks.iter().enumerate() {
                if !accepted.tracked.contains(i) {
                    assert_eq!(t, 0, "an untracked state's tick leaked into the welcome");
                }
            }
            if let Some(mutable) = &accepted.mutable {
                assert!(mutable.iter().all(|&s| (s as usize) < schema.len()));
            }
        }
        Ok(Message::Welcome(welcome)) => {
            let tracked = Tracked::from_granted(welcome.granted.tracked.as_deref());
            adopt(welcome.schema, &welcome.snapshot, &tracked);
        }
        Ok(Message::SchemaChanged { schema, snapshot }) => {
            adopt(Some(schema), &snapshot, &Tracked::All);
        }
        _ => {}
    }
}

/// What a mirror does with a schema and clock from its server: validate the schema, mask the
/// clock to what it tracks, check it.
fn adopt(def: Option<crate::machine::SchemaDef>, snapshot: &Snapshot, tracked: &Tracked) {
    let len = match def.map(Schema::new) {
        Some(Ok(schema)) => schema.len(),
        Some(Err(_)) => return,
        None => fixed_schema().len(),
    };
    let mut ticks = vec![0; len];
    for (t, s) in ticks.iter_mut().zip(&snapshot.ticks) {
        *t = *s;
    }
    let masked = tracked.mask(&ticks);
    assert_eq!(masked.len(), len);
    let _ = diff::checksum(&masked, tracked);
}

fn fixed_schema() -> Schema {
    let built = Schema::builder()
        .state(StateDef::new("A"))
        .state(StateDef::new("B").require(["A"]))
        .state(StateDef::new("C").remove(["A"]))
        .build();
    match built {
        Ok(schema) => schema,
        Err(e) => unreachable!("the fixed schema is valid: {e}"),
    }
}

/// The access rules the knobs pick, and whether the server offers compression.
fn acl(knobs: u8) -> (Acl, bool) {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match knobs % 3 {
        0 => (Acl::default(), false),
        1 => (
            Acl {
                token: Some("t".into()),
                allow_ids: Some(names(&["a", "b"])),
                ..Acl::default()
            },
            false,
        ),
        _ => (
            Acl {
                see: BTreeMap::from([
                    ("a".into(), names(&["A", "C"])),
                    ("*".into(), names(&["B"])),
                ]),
                mutate: BTreeMap::from([("*".into(), names(&["C"]))]),
                ..Acl::default()
            },
            true,
        ),
    }
}
