//! Replays the fuzz corpus (`fuzz/seeds/<target>/`) through the same checks the fuzz targets
//! run, so every input a fuzzer ever found stays a regression test without cargo-fuzz.
//!
//! The seeds are valid messages and frames to start the fuzzer from, plus each input found
//! to break a check; `cargo test --test hostile_corpus -- --ignored write_seeds` rewrites the
//! generated ones.

use std::fs;
use std::path::{Path, PathBuf};

use asyncmachine::machine::{Args, MutationKind, Schema, StateDef};
use asyncmachine::proto::checks;
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

fn samples() -> Vec<(&'static str, Message)> {
    let schema = Schema::builder()
        .state(StateDef::new("A"))
        .state(StateDef::new("B").require(["A"]))
        .build()
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
    write("frames", "plain", &plain_stream);
    write("frames", "zstd", &packed_stream);
    write("frames", "one-byte-chunks", &{
        let mut s = plain_stream.clone();
        s[0] = 0;
        s
    });
}
