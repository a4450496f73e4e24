//! Codec tests without sockets: random messages of every kind round-trip through frames, whole
//! and one byte at a time, with and without compression; hostile bytes fail cleanly.

use proptest::prelude::*;

use super::message::*;
use super::*;
use crate::machine::{Args, MutationKind, Outcome, StateDef, Value};

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("NaN never equals itself", |f| !f.is_nan())
            .prop_map(Value::Float),
        ".{0,12}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            proptest::collection::btree_map(".{0,6}", inner, 0..4).prop_map(Value::Map),
        ]
    })
}

fn args() -> impl Strategy<Value = Args> {
    proptest::collection::btree_map("[a-z]{1,8}", value(), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

fn diff() -> impl Strategy<Value = ClockDiff> {
    (
        proptest::collection::vec((any::<u32>(), any::<u64>()), 0..8),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(changes, queue_delta, checksum)| ClockDiff {
            changes,
            queue_delta,
            checksum,
        })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (proptest::collection::vec(any::<u64>(), 0..16), any::<u64>())
        .prop_map(|(ticks, queue_tick)| Snapshot { ticks, queue_tick })
}

fn kind() -> impl Strategy<Value = MutationKind> {
    prop_oneof![
        Just(MutationKind::Add),
        Just(MutationKind::Remove),
        Just(MutationKind::Set)
    ]
}

fn outcome() -> impl Strategy<Value = Result<Outcome, String>> {
    prop_oneof![
        Just(Ok(Outcome::Executed)),
        Just(Ok(Outcome::Canceled)),
        Just(Ok(Outcome::Queued)),
        ".{0,20}".prop_map(Err),
    ]
}

fn schema_def() -> impl Strategy<Value = crate::machine::SchemaDef> {
    let states = proptest::collection::vec(("[A-Z][a-z]{0,6}", any::<bool>(), any::<bool>()), 0..5);
    let groups = proptest::collection::vec(
        (".{0,6}", proptest::collection::vec("[A-Z][a-z]{0,6}", 0..4)),
        0..3,
    );
    (states, groups).prop_map(|(states, groups)| crate::machine::SchemaDef {
        states: states
            .into_iter()
            .map(|(name, auto, multi)| StateDef {
                auto,
                multi,
                ..StateDef::new(name)
            })
            .collect(),
        groups: groups
            .into_iter()
            .map(|(name, states)| crate::machine::GroupDef::new(name, states))
            .collect(),
    })
}

fn message() -> impl Strategy<Value = Message> {
    let refusal_kind = prop_oneof![
        Just(RefusalKind::Version),
        Just(RefusalKind::UnknownSource),
        Just(RefusalKind::Auth),
        Just(RefusalKind::Acl),
        Just(RefusalKind::Loop),
        Just(RefusalKind::Full),
        Just(RefusalKind::BadHello),
        Just(RefusalKind::Timeout),
    ];
    let tracked = proptest::option::of(proptest::collection::vec(any::<u32>(), 0..6));
    prop_oneof![
        (
            any::<u32>(),
            ".{0,10}",
            ".{0,10}",
            any::<u64>(),
            any::<bool>(),
            proptest::option::of(proptest::collection::vec(".{0,5}", 0..3)),
            proptest::option::of(".{0,8}")
        )
            .prop_map(
                |(version, client_id, source, schema_hash, compression, track, token)| {
                    Message::Hello(Hello {
                        version,
                        client_id,
                        source,
                        schema_hash,
                        options: WantedOptions { compression, track },
                        token,
                    })
                }
            ),
        (
            proptest::collection::vec(".{0,6}", 0..3),
            proptest::option::of(schema_def()),
            snapshot(),
            any::<bool>(),
            tracked.clone(),
            tracked,
            (
                proptest::option::of(".{0,8}"),
                proptest::collection::vec(".{0,6}", 0..3)
            )
        )
            .prop_map(
                |(ancestry, schema, snapshot, compression, tracked, mutable, (parent_id, tags))| {
                    Message::Welcome(Welcome {
                        ancestry,
                        schema,
                        snapshot,
                        granted: Granted {
                            compression,
                            tracked,
                            mutable,
                        },
                        parent_id,
                        tags,
                    })
                }
            ),
        (refusal_kind, ".{0,30}")
            .prop_map(|(kind, reason)| Message::Refused(Refusal { kind, reason })),
        diff().prop_map(Message::Diff),
        (
            any::<u64>(),
            kind(),
            proptest::collection::vec(any::<u32>(), 0..5),
            args(),
        )
            .prop_map(|(id, kind, states, args)| Message::Mutate(MutateRequest {
                id,
                kind,
                states,
                args,
                key: None,
            })),
        (any::<u64>(), outcome(), diff()).prop_map(|(id, result, diff)| {
            Message::MutateReply(MutateReply {
                id,
                result: result.into(),
                diff,
            })
        }),
        any::<u64>().prop_map(|id| Message::Sync { id }),
        (any::<u64>(), snapshot()).prop_map(|(id, snapshot)| Message::Snapshot { id, snapshot }),
        (".{0,10}", proptest::collection::vec(any::<u8>(), 0..600))
            .prop_map(|(name, data)| Message::Payload(Payload { name, data })),
        (schema_def(), snapshot())
            .prop_map(|(schema, snapshot)| Message::SchemaChanged { schema, snapshot }),
        any::<u64>().prop_map(Message::Ping),
        any::<u64>().prop_map(Message::Pong),
        ".{0,20}".prop_map(|reason| Message::Bye { reason }),
        ".{0,20}".prop_map(|message| Message::Error { message }),
    ]
}

fn configs() -> [FrameConfig; 2] {
    let plain = FrameConfig::default();
    // A threshold of 0 makes every frame try compression.
    [
        plain,
        FrameConfig {
            compression: Some(Compression {
                threshold: 0,
                level: 1,
            }),
            ..plain
        },
    ]
}

proptest! {
    #[test]
    fn messages_round_trip_whole_and_byte_by_byte(messages in proptest::collection::vec(message(), 1..6)) {
        for config in configs() {
            let mut wire = Vec::new();
            for m in &messages {
                encode_frame(&config, m, &mut wire);
            }
            let mut whole = FrameReader::new(config);
            whole.push(&wire);
            for m in &messages {
                let next = whole.next_message().expect("valid");
                prop_assert_eq!(next.as_ref(), Some(m));
            }
            prop_assert_eq!(whole.next_message().expect("valid"), None);

            let mut trickle = FrameReader::new(config);
            let mut decoded = Vec::new();
            for byte in &wire {
                trickle.push(std::slice::from_ref(byte));
                while let Some(m) = trickle.next_message().expect("valid") {
                    decoded.push(m);
                }
            }
            prop_assert_eq!(&decoded, &messages);
            prop_assert_eq!(trickle.buffered(), 0);
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for config in configs() {
            let mut reader = FrameReader::new(config);
            reader.push(&bytes);
            // Any of: a message, need more, or an error. Never a panic, never a huge allocation.
            for _ in 0..8 {
                match reader.next_message() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}

#[test]
fn a_body_claiming_a_huge_vector_fails_without_allocating_it() {
    // A Snapshot whose tick vector claims 2^60 elements, inside a small frame.
    let mut body = Vec::new();
    body.push(7); // variant index of Snapshot
    body.push(0); // id 0
    frame::put_varint(&mut body, 1 << 60);
    let mut wire = Vec::new();
    FrameConfig::default().encode(&body, &mut wire);
    let mut reader = FrameReader::new(FrameConfig::default());
    reader.push(&wire);
    assert!(matches!(
        reader.next_message(),
        Err(ProtoError::Decode(DecodeError::Invalid(_)))
    ));
}

#[test]
fn unknown_message_types_and_trailing_bytes_are_errors() {
    let mut wire = Vec::new();
    FrameConfig::default().encode(&[200], &mut wire);
    let mut reader = FrameReader::new(FrameConfig::default());
    reader.push(&wire);
    assert!(matches!(
        reader.next_message(),
        Err(ProtoError::Decode(DecodeError::Invalid(_)))
    ));

    let mut body = message::encode_to_vec(&Message::Ping(5));
    body.push(0);
    wire.clear();
    FrameConfig::default().encode(&body, &mut wire);
    let mut reader = FrameReader::new(FrameConfig::default());
    reader.push(&wire);
    assert_eq!(
        reader.next_message(),
        Err(ProtoError::Decode(DecodeError::Trailing(1)))
    );
}

#[test]
fn an_oversized_frame_is_refused_from_its_prefix_alone() {
    let small = FrameConfig {
        max_frame: 64,
        compression: None,
    };
    let mut wire = Vec::new();
    FrameConfig::default().encode(&[0u8; 100], &mut wire);
    let mut reader = FrameReader::new(small);
    reader.push(&wire[..2]);
    assert_eq!(
        reader.next_message(),
        Err(ProtoError::Frame(FrameError::TooLarge {
            len: 100,
            max: 64
        }))
    );
}

#[test]
fn reading_into_the_target_buffer_works_like_push() {
    let mut wire = Vec::new();
    encode_frame(&FrameConfig::default(), &Message::Ping(42), &mut wire);
    let mut reader = FrameReader::new(FrameConfig::default());
    reader.push(&wire[..1]);
    assert_eq!(reader.next_message(), Ok(None));
    let target = reader.read_target(64);
    assert!(target.capacity() - target.len() >= 64);
    target.extend_from_slice(&wire[1..]);
    assert_eq!(reader.next_message(), Ok(Some(Message::Ping(42))));
    assert_eq!(reader.buffered(), 0);
}

/// The worked examples of PROTOCOL.md, byte for byte: if this fails, fix the document too.
#[test]
fn documented_examples_are_what_the_encoder_writes() {
    use crate::machine::Schema;

    fn frame_hex(message: &Message) -> String {
        let mut out = Vec::new();
        encode_frame(&FrameConfig::default(), message, &mut out);
        out.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
    let schema = Schema::builder()
        .state(StateDef::new("A"))
        .state(StateDef::new("B").require(["A"]))
        .build()
        .expect("valid");
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_id: "leaf".into(),
        source: "w".into(),
        schema_hash: 0,
        options: WantedOptions::default(),
        token: None,
    });
    assert_eq!(
        frame_hex(&hello),
        "1a 00 03 04 6c 65 61 66 01 77 00 00 00 00"
    );
    let welcome = Message::Welcome(Welcome {
        ancestry: vec!["w".into()],
        schema: Some(schema.def().clone()),
        snapshot: Snapshot {
            ticks: vec![1, 0, 0],
            queue_tick: 1,
        },
        granted: Granted::default(),
        parent_id: None,
        tags: Vec::new(),
    });
    assert_eq!(
        frame_hex(&welcome),
        "66 01 01 01 77 01 03 01 41 00 00 00 00 00 00 01 42 01 01 41 00 00 00 00 00 \
         09 45 78 63 65 70 74 69 6f 6e 00 00 00 00 00 01 00 03 01 00 00 01 00 00 00 00 00"
    );
    // The same schema with a group, and a source with a parent id and a tag.
    let grouped = schema.clone().with_group("G", &["B", "A"]).expect("known");
    let welcome = Message::Welcome(Welcome {
        ancestry: vec!["w".into()],
        schema: Some(grouped.def().clone()),
        snapshot: Snapshot {
            ticks: vec![1, 0, 0],
            queue_tick: 1,
        },
        granted: Granted::default(),
        parent_id: Some("p".into()),
        tags: vec!["t".into()],
    });
    assert_eq!(
        frame_hex(&welcome),
        "7c 01 01 01 77 01 03 01 41 00 00 00 00 00 00 01 42 01 01 41 00 00 00 00 00 \
         09 45 78 63 65 70 74 69 6f 6e 00 00 00 00 00 01 01 01 47 02 01 42 01 41 \
         03 01 00 00 01 00 00 00 01 01 70 01 01 74"
    );
    // Pinned, computed independently from PROTOCOL.md's encoding: groups change the hash, a
    // schema without them hashes as before they travelled.
    assert_eq!(grouped.hash(), 0xccbf_81cf_2bfa_bc6c);
    let clock = |ticks, queue_tick| diff::ClockRef { ticks, queue_tick };
    let diff = diff::diff(clock(&[1, 0, 0], 1), clock(&[1, 1, 0], 2), &Tracked::All);
    assert_eq!(diff.checksum, 0xffcf_fc86);
    assert_eq!(
        frame_hex(&Message::Diff(diff)),
        "12 03 01 01 01 01 86 fc cf ff"
    );
    let mutate = Message::Mutate(MutateRequest {
        id: 1,
        kind: MutationKind::Add,
        states: vec![1],
        args: Args::new().with("op", 2),
        key: None,
    });
    assert_eq!(frame_hex(&mutate), "18 04 01 00 01 01 01 02 6f 70 02 04 00");
    // The same mutation as a retrying mirror sends it: with its key.
    let keyed = Message::Mutate(MutateRequest {
        id: 1,
        kind: MutationKind::Add,
        states: vec![1],
        args: Args::new().with("op", 2),
        key: Some(crate::machine::MutationKey {
            origin: "leaf".into(),
            epoch: 7,
            seq: 1,
        }),
    });
    assert_eq!(
        frame_hex(&keyed),
        "26 04 01 00 01 01 01 02 6f 70 02 04 01 04 6c 65 61 66 07 01"
    );
    let reply = Message::MutateReply(MutateReply {
        id: 1,
        result: MutateResult::Executed,
        diff: diff::diff(clock(&[1, 0, 0], 1), clock(&[1, 1, 0], 2), &Tracked::All),
    });
    assert_eq!(frame_hex(&reply), "16 05 01 00 01 01 01 01 86 fc cf ff");
    assert_eq!(schema.hash(), 0x9aba_82a6_12cb_1f31);
}

/// A first frame may look like another protocol's opening (a Diff with an 11-byte body starts
/// `16 03`, as a TLS record does): it still decodes; the opening is kept for hints only.
#[test]
fn a_first_frame_that_looks_like_tls_is_still_a_frame() {
    let diff = Message::Diff(ClockDiff {
        changes: vec![(1, 1), (2, 1)],
        queue_delta: 1,
        checksum: 7,
    });
    let mut wire = Vec::new();
    encode_frame(&FrameConfig::default(), &diff, &mut wire);
    assert_eq!(&wire[..2], [0x16, 0x03]);
    let mut reader = FrameReader::new(FrameConfig::default());
    reader.push(&wire);
    assert_eq!(reader.next_message(), Ok(Some(diff)));
    assert_eq!(reader.opening(), &wire[..4]);
}

#[test]
fn other_protocols_are_named_from_the_opening() {
    for (opening, named) in [
        (&b"\x16\x03\x01\x02\x00"[..], "TLS handshake"),
        (b"\x15\x03\x03\x00\x02", "TLS alert"),
        (b"GET / HTTP/1.1\r\n", "HTTP request"),
        (b"HTTP/1.1 400 Bad Request\r\n", "answered with HTTP"),
    ] {
        let mut reader = FrameReader::new(FrameConfig::default());
        reader.push(opening);
        let _ = reader.next_message();
        let message = with_foreign_hint("bad".into(), reader.opening());
        assert!(message.contains(named), "{message}");
    }
    assert_eq!(with_foreign_hint("bad".into(), &[0x1a, 0x00]), "bad");
}
