//! Replays the fuzz corpus (`fuzz/seeds/<target>/`) through the same checks the fuzz targets
//! run, so every input a fuzzer ever found stays a regression test without cargo-fuzz.
//!
//! The seeds are valid messages and frames to start the fuzzer from, messages at and past each
//! decoding limit (PROTOCOL.md, "Limits"), plus each input found to break a check;
//! `cargo test --test hostile_corpus -- --ignored write_seeds` rewrites the generated ones.
//!
//! The `structured` target's inputs are `arbitrary`'s raw bytes, which only the fuzz crate can
//! turn into messages; its check runs here on the samples instead, and a message it ever flags
//! is kept, encoded, in `fuzz/seeds/message/`.

use std::fs;
use std::path::{Path, PathBuf};

use asyncmachine::machine::{Args, GroupDef, MutationKind, Schema, SchemaDef, StateDef, Value};
use asyncmachine::proto::checks;
use asyncmachine::proto::limits::{
    MAX_ANCESTRY, MAX_ARGS, MAX_DEPTH, MAX_GROUPS, MAX_NAME_LEN, MAX_STATES, MAX_TAGS,
};
use asyncmachine::proto::message::{
    ClockDiff, Granted, Hello, MutateRequest, Snapshot, WantedOptions, Welcome, encode_to_vec,
};
use asyncmachine::proto::{Compression, FrameConfig, Message, PROTOCOL_VERSION, encode_frame};

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 3] = [
    ("frames", checks::frames),
    ("message", checks::message),
    ("handshake", checks::handshake),
];

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
}

#[test]
fn every_seed_passes_its_check() {
    for (target, check) in TARGETS {
        let dir = seeds_dir(target);
        let entries = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .collect::<Result<Vec<_>, _>>()
            .expect("listing seeds");
        assert!(entries.len() >= 3, "{} holds too few seeds", dir.display());
        for entry in entries {
            let bytes = fs::read(entry.path()).expect("reading a seed");
            check(&bytes);
        }
    }
}

/// Every sample, valid or past a limit, through the structure-aware check, with knobs spread
/// over chunk sizes from 1 byte, compression on and off, prefix lengths.
#[test]
fn every_sample_passes_the_structured_check() {
    for (name, message) in samples().into_iter().chain(at_and_past_limits()) {
        for knobs in (0..=u8::MAX).step_by(5) {
            checks::structured(&message, knobs);
        }
        let body = encode_to_vec(&message);
        assert_eq!(
            asyncmachine::proto::message::decode(&body).is_ok(),
            checks::within_limits(&message),
            "{name}"
        );
    }
}

/// A mutation whose argument `a` is `depth` lists deep around a null.
fn nested_mutate(depth: usize) -> Message {
    let deep = (0..depth).fold(Value::Null, |inner, _| Value::List(vec![inner]));
    Message::Mutate(MutateRequest {
        id: 1,
        kind: MutationKind::Add,
        states: vec![0],
        args: Args::new().with("a", deep),
        key: None,
    })
}

/// Messages at each decoding limit and one past it.
fn at_and_past_limits() -> Vec<(&'static str, Message)> {
    let hello = |client_id: String| {
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_id,
            source: String::new(),
            schema_hash: 0,
            options: WantedOptions::default(),
            token: None,
        })
    };
    let mutate_states = |n: usize| {
        Message::Mutate(MutateRequest {
            id: 1,
            kind: MutationKind::Set,
            states: vec![0; n],
            args: Args::new(),
            key: None,
        })
    };
    let keyed = |origin: String| {
        Message::Mutate(MutateRequest {
            id: 1,
            kind: MutationKind::Add,
            states: vec![0],
            args: Args::new(),
            key: Some(asyncmachine::machine::MutationKey {
                origin,
                epoch: u64::MAX,
                seq: u64::MAX,
            }),
        })
    };
    let many_args = |n: usize| {
        Message::Mutate(MutateRequest {
            id: 1,
            kind: MutationKind::Add,
            states: vec![],
            args: (0..n).map(|i| (format!("a{i}"), i as i64)).collect(),
            key: None,
        })
    };
    vec![
        ("depth-at-limit", nested_mutate(MAX_DEPTH)),
        ("depth-past-limit", nested_mutate(MAX_DEPTH + 1)),
        ("states-at-limit", mutate_states(MAX_STATES)),
        ("states-past-limit", mutate_states(MAX_STATES + 1)),
        ("args-at-limit", many_args(MAX_ARGS)),
        ("key-origin-at-limit", keyed("k".repeat(MAX_NAME_LEN))),
        ("key-origin-past-limit", keyed("k".repeat(MAX_NAME_LEN + 1))),
        ("args-past-limit", many_args(MAX_ARGS + 1)),
        ("client-id-past-limit", hello("i".repeat(MAX_NAME_LEN + 1))),
        (
            "ancestry-past-limit",
            Message::Ancestry(vec!["n".into(); MAX_ANCESTRY + 1]),
        ),
        ("tags-at-limit", identity(None, vec!["t".into(); MAX_TAGS])),
        (
            "tags-past-limit",
            identity(None, vec!["t".into(); MAX_TAGS + 1]),
        ),
        (
            "parent-id-past-limit",
            identity(Some("p".repeat(MAX_NAME_LEN + 1)), Vec::new()),
        ),
        ("groups-at-limit", groups(MAX_GROUPS)),
        ("groups-past-limit", groups(MAX_GROUPS + 1)),
    ]
}

/// A welcome with this parent id and these tags.
fn identity(parent_id: Option<String>, tags: Vec<String>) -> Message {
    Message::Welcome(Welcome {
        ancestry: vec!["root".into()],
        schema: None,
        snapshot: Snapshot::default(),
        granted: Granted::default(),
        parent_id,
        tags,
    })
}

/// A schema change whose schema has `n` groups.
fn groups(n: usize) -> Message {
    Message::SchemaChanged {
        schema: SchemaDef {
            states: vec![StateDef::new("A")],
            groups: (0..n)
                .map(|i| GroupDef::new(format!("g{i}"), ["A"]))
                .collect(),
        },
        snapshot: Snapshot::default(),
    }
}

/// Bodies no encoder writes: the 10,000-deep argument and counts claiming far more
/// than the body holds.
fn hostile_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let mut deep = encode_to_vec(&nested_mutate(0));
    deep.pop(); // the null
    for _ in 0..10_000 {
        deep.extend_from_slice(&[6, 1]); // a list of one
    }
    deep.push(0);
    // Mutate{id 1, Add, states: 2^60 claimed}: bincode's `fd` + u64 length.
    let mut states = vec![4, 1, 0, 0xfd];
    states.extend_from_slice(&(1u64 << 60).to_le_bytes());
    // Bye{reason: 60 MiB claimed}.
    let mut reason = vec![12, 0xfc];
    reason.extend_from_slice(&(60u32 << 20).to_le_bytes());
    vec![
        ("depth-10000", deep),
        ("states-2-pow-60", states),
        ("string-60-mib", reason),
    ]
}

fn samples() -> Vec<(&'static str, Message)> {
    let schema = Schema::builder()
        .state(StateDef::new("A"))
        .state(StateDef::new("B").require(["A"]))
        .build()
        .and_then(|s| s.with_group("G", &["B", "A"]))
        .expect("schema");
    vec![
        (
            "hello",
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                client_id: "a".into(),
                source: String::new(),
                schema_hash: 0,
                options: WantedOptions {
                    compression: true,
                    track: Some(vec!["A".into(), "C".into()]),
                },
                token: Some("t".into()),
            }),
        ),
        (
            "welcome",
            Message::Welcome(Welcome {
                ancestry: vec!["root".into()],
                schema: Some(schema.def().clone()),
                snapshot: Snapshot {
                    ticks: vec![1, 2, 0],
                    queue_tick: 3,
                },
                granted: Granted {
                    compression: true,
                    tracked: Some(vec![0, 2]),
                    mutable: None,
                },
                parent_id: Some("owner".into()),
                tags: vec!["worker".into(), "eu".into()],
            }),
        ),
        (
            "diff",
            Message::Diff(ClockDiff {
                changes: vec![(0, 5), (2, 9)],
                queue_delta: 4,
                checksum: 0xdead_beef,
            }),
        ),
        (
            "mutate",
            Message::Mutate(MutateRequest {
                id: 1,
                kind: MutationKind::Add,
                states: vec![0, 1],
                args: Args::new().with("op", 2),
                key: None,
            }),
        ),
        ("ping", Message::Ping(42)),
    ]
}

/// Writes the generated seeds: each sample as a message body, as a hello or welcome for the
/// handshake target (first byte picks the policy), and as a stream of frames.
#[test]
#[ignore = "rewrites fuzz/seeds; run by hand after changing the messages"]
fn write_seeds() {
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = seeds_dir(target);
        fs::create_dir_all(&dir).expect("creating the seeds folder");
        fs::write(dir.join(name), bytes).expect("writing a seed");
    };
    let mut plain_stream = vec![0x10];
    let mut packed_stream = vec![0x90];
    let packed = FrameConfig {
        compression: Some(Compression {
            threshold: 0,
            ..Compression::default()
        }),
        ..FrameConfig::default()
    };
    for (name, message) in samples() {
        let body = encode_to_vec(&message);
        write("message", name, &body);
        if matches!(message, Message::Hello(_) | Message::Welcome(_)) {
            for policy in 0u8..3 {
                let mut seed = vec![policy];
                seed.extend_from_slice(&body);
                write("handshake", &format!("{name}-{policy}"), &seed);
            }
        }
        encode_frame(&FrameConfig::default(), &message, &mut plain_stream);
        encode_frame(&packed, &message, &mut packed_stream);
    }
    // Each message past a limit as its own stream: the reader stops at the first.
    let hostile = at_and_past_limits()
        .into_iter()
        .map(|(name, m)| (name, encode_to_vec(&m)))
        .chain(hostile_bodies());
    for (name, body) in hostile {
        write("message", name, &body);
        let mut stream = vec![0x10];
        asyncmachine::proto::frame::put_varint(&mut stream, (body.len() as u64) << 1);
        stream.extend_from_slice(&body);
        write("frames", name, &stream);
    }
    write("frames", "plain", &plain_stream);
    write("frames", "zstd", &packed_stream);
    write("frames", "one-byte-chunks", &{
        let mut s = plain_stream.clone();
        s[0] = 0;
        s
    });
}
