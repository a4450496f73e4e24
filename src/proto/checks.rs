//! What must hold for any bytes a peer can send: the fuzz targets in `fuzz/` and the replay of
//! their corpus in the test suite (`tests/hostile_corpus.rs`) both run these, so a crash the
//! fuzzer finds becomes a regression test by adding its input to `fuzz/seeds/`.
//!
//! Each check panics only when an invariant breaks; malformed input must come back as an error.

use std::collections::BTreeMap;

use super::diff::{self, Tracked};
use super::handshake::{self, Offer, Policy};
use super::message::{self, Message, Snapshot};
use super::{Compression, FrameConfig, FrameReader};
use crate::machine::{Schema, StateDef};

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
            };
            let Ok(accepted) = handshake::decide(&hello, offer, &policy(knobs)) else {
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

fn policy(knobs: u8) -> Policy {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match knobs % 3 {
        0 => Policy::default(),
        1 => Policy {
            token: Some("t".into()),
            allow_ids: Some(names(&["a", "b"])),
            ..Policy::default()
        },
        _ => Policy {
            compression: true,
            see: BTreeMap::from([
                ("a".into(), names(&["A", "C"])),
                ("*".into(), names(&["B"])),
            ]),
            mutate: BTreeMap::from([("*".into(), names(&["C"]))]),
            ..Policy::default()
        },
    }
}
