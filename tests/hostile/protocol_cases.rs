//! Hostile inputs on the protocol stream, whatever carries it: frame heads, hellos, message
//! types where they do not belong, mutations, compressed frames, slow and stalled peers.

use std::time::Duration;

use asyncmachine::machine::{Args, MutationKind, Schema, StateDef};
use asyncmachine::proto::frame::put_varint;
use asyncmachine::proto::message::{
    ClockDiff, ErrResult, Granted, Hello, MutateReply, MutateResult, NodeStatus, Payload, Refusal,
    RefusalKind, Snapshot, WaitResult, WantedOptions, Welcome, WhenArgsRequest,
};
use asyncmachine::proto::{Message, PROTOCOL_VERSION};

use crate::bodies::{
    HelloParts, TOKEN, bstr, frame, hello, message_frame, mutate_body, nested, one_arg, uv,
    zstd_bomb, zstd_frame,
};
use crate::cases::{
    Answer, CLAIMS, Case, Expect, Input, NESTING_LIMIT, Peer, after_hello, before_hello, case,
    family,
};
use crate::node::{MAX_FRAME, MAX_REMOTE_WAITS};

/// Frame heads: empty, varints of every width, overflowing, too large, compressed unasked.
pub(crate) fn framing(cases: &mut Vec<Case>) {
    cases.push(case(
        "frame_empty_head",
        before_hello(vec![0x00]),
        Expect::Refused(RefusalKind::BadHello),
    ));
    // The largest value of each width 1..=10: small ones announce a frame that never comes
    // (the hello times out), wide ones a frame over the limit (refused at once).
    for width in 1..=10usize {
        // Low bit clear: not compressed.
        let mut head = vec![0xffu8; width];
        head[0] = 0xfe;
        head[width - 1] = if width == 10 { 0x01 } else { 0x7e };
        let announced = frame_len(&head);
        let expect = if announced > MAX_FRAME as u64 {
            Expect::Refused(RefusalKind::BadHello)
        } else {
            Expect::TimedOut
        };
        cases.push(case(
            format!("frame_head_varint_{width}_bytes"),
            before_hello(head),
            expect,
        ));
    }
    cases.push(case(
        "frame_head_varint_11_bytes",
        before_hello([vec![0x80; 10], vec![0x01]].concat()),
        Expect::Refused(RefusalKind::BadHello),
    ));
    for last in [0x02u8, 0x7f] {
        cases.push(case(
            format!("frame_head_varint_10th_byte_{last:#04x}"),
            before_hello([vec![0xff; 9], vec![last]].concat()),
            Expect::Refused(RefusalKind::BadHello),
        ));
    }
    let mut over = Vec::new();
    put_varint(&mut over, ((MAX_FRAME as u64) + 1) << 1);
    over.extend(vec![0u8; MAX_FRAME + 1]);
    cases.push(case(
        "frame_over_max_frame_sent_whole",
        before_hello(over),
        Expect::Refused(RefusalKind::BadHello),
    ));
    let mut over = Vec::new();
    put_varint(&mut over, ((MAX_FRAME as u64) + 1) << 1);
    over.extend(hello("over"));
    cases.push(case(
        "frame_over_max_frame_after_hello",
        after_hello(over),
        Expect::Error,
    ));
    cases.push(case(
        "frame_compressed_before_negotiation",
        before_hello(vec![0x05, 0x00, 0xde, 0xad]),
        Expect::Refused(RefusalKind::BadHello),
    ));
    cases.push(case(
        "frame_compressed_not_negotiated_after_hello",
        after_hello(zstd_frame(
            &zstd::bulk::compress(&[10, 1], 1).expect("compresses"),
        )),
        Expect::Error,
    ));
    cases.push(case(
        "frame_empty_after_hello",
        after_hello(vec![0x00]),
        Expect::Error,
    ));
}

fn frame_len(head: &[u8]) -> u64 {
    match asyncmachine::proto::frame::get_varint(head) {
        Ok(Some((value, _))) => value >> 1,
        _ => u64::MAX,
    }
}

/// Hellos: every truncation, trailing bytes, every length field lying, bad values.
pub(crate) fn hellos(cases: &mut Vec<Case>) {
    let body = HelloParts::valid("hostile").body();
    for cut in 1..body.len() {
        let truncated = case(
            format!("hello_truncated_at_{cut}_of_{}", body.len()),
            before_hello(frame(&body[..cut])),
            Expect::Refused(RefusalKind::BadHello),
        );
        cases.push(family(
            truncated,
            [1, 2, body.len() / 2, body.len() - 1].contains(&cut),
        ));
    }
    // The frame announced whole, its body cut short, then the client waits.
    for cut in [0, body.len() / 2, body.len() - 1] {
        let mut bytes = Vec::new();
        put_varint(&mut bytes, (body.len() as u64) << 1);
        bytes.extend_from_slice(&body[..cut]);
        let stalled = case(
            format!("hello_frame_stalls_after_{cut}_body_bytes"),
            before_hello(bytes),
            Expect::Refused(RefusalKind::Timeout),
        );
        cases.push(family(stalled, cut == body.len() / 2));
    }
    let mut bytes = Vec::new();
    put_varint(&mut bytes, (body.len() as u64) << 1);
    bytes.extend_from_slice(&body[..body.len() / 2]);
    cases.push(case(
        "hello_frame_cut_then_client_closes",
        Input::Stream {
            hello: None,
            bytes,
            finish: true,
        },
        Expect::Closed,
    ));
    cases.push(case(
        "hello_with_trailing_byte",
        before_hello(frame(&[&body[..], &[0]].concat())),
        Expect::Refused(RefusalKind::BadHello),
    ));
    type Lie = fn(&mut HelloParts, Vec<u8>);
    let lies: [(&str, Lie); 5] = [
        ("client_id", |h, lie| h.client_id = lie),
        ("source", |h, lie| h.source = lie),
        ("track_count", |h, lie| {
            h.options = [vec![0, 1], lie].concat();
        }),
        ("track_name", |h, lie| {
            h.options = [vec![0, 1, 1], lie].concat();
        }),
        ("token", |h, lie| h.token = [vec![1], lie].concat()),
    ];
    for (field, lie) in lies {
        for (claim_name, claim) in CLAIMS {
            let mut parts = HelloParts::valid("hostile");
            lie(&mut parts, [uv(claim), b"abc".to_vec()].concat());
            let mut body = parts.body();
            // The lie is the last thing in the body: whatever followed it is cut.
            let end = body
                .windows(3)
                .rposition(|w| w == b"abc")
                .expect("the lie is there")
                + 3;
            body.truncate(end);
            let lying = case(
                format!("hello_{field}_length_{claim_name}"),
                before_hello(frame(&body)),
                Expect::Refused(RefusalKind::BadHello),
            );
            cases.push(family(lying, claim == u64::MAX));
        }
    }
    // Every version but this build's (the one before it and the one after it among them).
    let current = u64::from(asyncmachine::proto::message::PROTOCOL_VERSION);
    for version in [0u64, 1, current - 1, current + 1, u64::from(u32::MAX)] {
        let mut parts = HelloParts::valid("hostile");
        parts.version = uv(version);
        cases.push(case(
            format!("hello_version_{version}"),
            before_hello(frame(&parts.body())),
            Expect::Refused(RefusalKind::Version),
        ));
    }
    let mut version_too_wide = HelloParts::valid("hostile");
    version_too_wide.version = uv(u64::from(u32::MAX) + 1);
    cases.push(case(
        "hello_version_past_u32",
        before_hello(frame(&version_too_wide.body())),
        Expect::Refused(RefusalKind::BadHello),
    ));
    type Change = fn(&mut HelloParts);
    let variants: [(&str, Change, Expect); 9] = [
        (
            "hello_client_id_not_utf8",
            |h| h.client_id = bstr(&[0xff, 0xfe, b'x']),
            Expect::Refused(RefusalKind::BadHello),
        ),
        (
            "hello_compression_bool_2",
            |h| h.options[0] = 2,
            Expect::Refused(RefusalKind::BadHello),
        ),
        (
            "hello_track_option_tag_2",
            |h| h.options[1] = 2,
            Expect::Refused(RefusalKind::BadHello),
        ),
        (
            "hello_token_option_tag_7",
            |h| h.token = vec![7],
            Expect::Refused(RefusalKind::BadHello),
        ),
        (
            "hello_unknown_source",
            |h| h.source = bstr(b"nope"),
            Expect::Refused(RefusalKind::UnknownSource),
        ),
        (
            "hello_tracks_unknown_state",
            |h| h.options = [vec![0, 1, 1], bstr(b"Nope")].concat(),
            Expect::Refused(RefusalKind::BadHello),
        ),
        (
            "hello_without_token",
            |h| h.token = vec![0],
            Expect::Refused(RefusalKind::Auth),
        ),
        (
            "hello_wrong_token",
            |h| h.token = [vec![1], bstr(b"guess")].concat(),
            Expect::Refused(RefusalKind::Auth),
        ),
        (
            "hello_client_is_the_source_itself",
            |h| h.client_id = bstr(b"worker"),
            Expect::Refused(RefusalKind::Loop),
        ),
    ];
    for (name, change, expect) in variants {
        let mut parts = HelloParts::valid("hostile");
        change(&mut parts);
        cases.push(case(name, before_hello(frame(&parts.body())), expect));
    }
    // Honest but oversized or forged fields, within the frame limit.
    let big = "x".repeat(60 * 1024);
    let honest: [(&str, HelloParts, Expect); 6] = [
        (
            "hello_client_id_with_newline_and_escape",
            HelloParts {
                client_id: bstr(b"ok\n\x1b[31mforged line"),
                ..HelloParts::valid("x")
            },
            Expect::Refused(RefusalKind::BadHello),
        ),
        (
            "hello_client_id_257_bytes",
            HelloParts::valid(&"i".repeat(257)),
            Expect::Refused(RefusalKind::BadHello),
        ),
        (
            "hello_client_id_60_kib",
            HelloParts::valid(&big),
            Expect::Refused(RefusalKind::BadHello),
        ),
        (
            "hello_token_60_kib",
            HelloParts {
                token: [vec![1], bstr(big.as_bytes())].concat(),
                ..HelloParts::valid("hostile")
            },
            // A wrong token, unless a limit on its length refuses it first.
            Expect::RefusedAs(&[RefusalKind::Auth, RefusalKind::BadHello]),
        ),
        (
            "hello_source_60_kib",
            HelloParts {
                source: bstr(big.as_bytes()),
                ..HelloParts::valid("hostile")
            },
            Expect::RefusedAs(&[RefusalKind::UnknownSource, RefusalKind::BadHello]),
        ),
        (
            "hello_tracks_ten_thousand_names",
            HelloParts {
                options: [
                    vec![0, 1],
                    uv(10_000),
                    (0..10_000)
                        .flat_map(|i| bstr(format!("S{i}").as_bytes()))
                        .collect(),
                ]
                .concat(),
                ..HelloParts::valid("hostile")
            },
            Expect::Refused(RefusalKind::BadHello),
        ),
    ];
    for (name, parts, expect) in honest {
        cases.push(case(name, before_hello(frame(&parts.body())), expect));
    }
    cases.push(case(
        "status_request_token_length_u64_max",
        before_hello(frame(
            &[vec![14, 1], uv(u64::MAX), b"abc".to_vec()].concat(),
        )),
        Expect::Refused(RefusalKind::BadHello),
    ));
    cases.push(case(
        "status_request_without_token",
        before_hello(message_frame(&Message::StatusRequest { token: None })),
        Expect::Refused(RefusalKind::Auth),
    ));
}

/// One valid message of every type (what a server would send as well as what a client
/// would), to send where it does not belong.
fn every_message() -> Vec<Message> {
    let schema = Schema::builder()
        .state(StateDef::new("A"))
        .build()
        .expect("schema");
    vec![
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_id: "again".into(),
            source: "worker".into(),
            schema_hash: 0,
            options: WantedOptions::default(),
            token: Some(TOKEN.into()),
        }),
        Message::Welcome(Welcome {
            ancestry: vec!["w".into()],
            schema: Some(schema.def().clone()),
            snapshot: Snapshot {
                ticks: vec![1, 0],
                queue_tick: 1,
            },
            granted: Granted::default(),
            parent_id: None,
            tags: Vec::new(),
        }),
        Message::Refused(Refusal {
            kind: RefusalKind::Full,
            reason: "no".into(),
        }),
        Message::Diff(ClockDiff {
            changes: vec![(0, 1)],
            queue_delta: 1,
            checksum: 7,
        }),
        Message::Mutate(asyncmachine::proto::message::MutateRequest {
            id: 1,
            kind: MutationKind::Add,
            states: vec![0],
            args: Args::new(),
            key: None,
        }),
        Message::MutateReply(MutateReply {
            id: 1,
            result: MutateResult::Executed,
            diff: ClockDiff::default(),
        }),
        Message::Sync { id: 1 },
        Message::Snapshot {
            id: 1,
            snapshot: Snapshot::default(),
        },
        Message::Payload(Payload {
            name: "p".into(),
            data: vec![1, 2, 3],
        }),
        Message::SchemaChanged {
            schema: schema.def().clone(),
            snapshot: Snapshot::default(),
        },
        Message::Ping(1),
        Message::Pong(1),
        Message::Bye {
            reason: "bye".into(),
        },
        Message::Error {
            message: "err".into(),
        },
        Message::StatusRequest {
            token: Some(TOKEN.into()),
        },
        Message::Status(NodeStatus::default()),
        Message::Ancestry(vec!["x".into()]),
        Message::WhenArgs(WhenArgsRequest {
            id: 1,
            state: 0,
            args: Args::new(),
        }),
        Message::WhenArgsDone {
            id: 1,
            result: WaitResult::Done,
        },
        Message::WhenArgsCancel { id: 1 },
        Message::ErrRequest { id: 1 },
        Message::ErrReply {
            id: 1,
            result: ErrResult::NoError,
        },
    ]
}

/// Message types where they do not belong: first instead of a hello, server-only ones from
/// a client, and type indexes past the last.
pub(crate) fn message_types(cases: &mut Vec<Case>) {
    for message in every_message() {
        let name = message.name();
        let bytes = message_frame(&message);
        // First message: only Hello and StatusRequest open a connection.
        if !matches!(message, Message::Hello(_) | Message::StatusRequest { .. }) {
            let first = case(
                format!("first_message_{name}"),
                before_hello(bytes.clone()),
                Expect::Refused(RefusalKind::BadHello),
            );
            let sample = matches!(message, Message::Welcome(_) | Message::Mutate(_));
            cases.push(family(first, sample));
        }
        // After the handshake: what a client may send is served elsewhere; the rest is the
        // wrong direction.
        let expect = match message {
            Message::Mutate(_)
            | Message::Sync { .. }
            | Message::Ping(_)
            | Message::Pong(_)
            | Message::WhenArgs(_)
            | Message::WhenArgsCancel { .. }
            | Message::ErrRequest { .. } => {
                continue;
            }
            Message::Bye { .. } | Message::Error { .. } => Expect::Closed,
            _ => Expect::Error,
        };
        cases.push(case(
            format!("after_hello_{name}"),
            after_hello(bytes),
            expect,
        ));
    }
    // Every type index past the last (21), as one byte of body; a sample of them on every
    // listener, all of them on tcp.
    for index in 22..=250u64 {
        let unknown = case(
            format!("unknown_type_{index}"),
            before_hello(frame(&uv(index))),
            Expect::Refused(RefusalKind::BadHello),
        );
        cases.push(family(unknown, [22, 128, 250].contains(&index)));
    }
    // The bytes that start wider varints, alone and with the widths they announce.
    for marker in 251..=255u8 {
        let alone = case(
            format!("unknown_type_marker_{marker}_alone"),
            before_hello(frame(&[marker])),
            Expect::Refused(RefusalKind::BadHello),
        );
        cases.push(family(alone, marker == 255));
    }
    for (name, index) in [("u16", 0xffffu64), ("u32", 0xffff_ffff), ("u64", u64::MAX)] {
        cases.push(case(
            format!("unknown_type_{name}_max"),
            before_hello(frame(&uv(index))),
            Expect::Refused(RefusalKind::BadHello),
        ));
    }
    for index in [22u64, 255] {
        cases.push(case(
            format!("after_hello_unknown_type_{index}"),
            after_hello(frame(&uv(index))),
            Expect::Error,
        ));
    }
    for (name, body) in [
        ("bye_reason", vec![12]),
        ("error_message", vec![13]),
        ("payload_data", vec![8, 1, b'p']),
        ("ancestry_count", vec![16]),
    ] {
        cases.push(case(
            format!("after_hello_{name}_length_u64_max"),
            after_hello(frame(&[body, uv(u64::MAX), b"abc".to_vec()].concat())),
            Expect::Error,
        ));
    }
}

/// A `WhenArgs` body: a wait on `state` with the encoded `args` map.
fn when_args_body(id: u64, state: u64, args: &[u8]) -> Vec<u8> {
    [vec![17], uv(id), uv(state), args.to_vec()].concat()
}

/// Remote waits and error requests: past the limit of pending waits, without an id, with a
/// taken id, on a state outside the schema, with arguments past the limits.
pub(crate) fn remote_requests(cases: &mut Vec<Case>) {
    // The limit accepted, as many again refused, then one more: the node has had enough.
    let flood: Vec<u8> = (1..=2 * MAX_REMOTE_WAITS as u64 + 2)
        .flat_map(|id| frame(&when_args_body(id, 0, &[0])))
        .collect();
    cases.push(case(
        "when_args_flood_past_the_limit",
        after_hello(flood),
        Expect::WaitsRefusedThenError,
    ));
    let taken = [1u64, 1]
        .iter()
        .flat_map(|&id| frame(&when_args_body(id, 0, &[0])))
        .collect();
    let too_many_args: Vec<u8> = [
        uv(257),
        (0..257u32)
            .flat_map(|n| [bstr(format!("k{n}").as_bytes()), vec![0]].concat())
            .collect(),
    ]
    .concat();
    let bad: [(&str, Vec<u8>, Expect); 8] = [
        (
            "when_args_id_0",
            frame(&when_args_body(0, 0, &[0])),
            Expect::Error,
        ),
        ("when_args_id_taken", taken, Expect::Error),
        (
            "when_args_state_outside_schema",
            frame(&when_args_body(1, 4, &[0])),
            Expect::WaitRefused,
        ),
        (
            "when_args_state_u32_max",
            frame(&when_args_body(1, u64::from(u32::MAX), &[0])),
            Expect::WaitRefused,
        ),
        (
            "when_args_state_index_past_u32",
            frame(&when_args_body(1, u64::from(u32::MAX) + 1, &[0])),
            Expect::Error,
        ),
        (
            "when_args_args_nested_past_the_limit",
            frame(&when_args_body(
                1,
                0,
                &one_arg("k", &nested(NESTING_LIMIT + 1, false)),
            )),
            Expect::Error,
        ),
        (
            "when_args_257_args",
            frame(&when_args_body(1, 0, &too_many_args)),
            Expect::Error,
        ),
        ("err_request_id_0", frame(&[20, 0]), Expect::Error),
    ];
    for (name, bytes, expect) in bad {
        cases.push(case(name, after_hello(bytes), expect));
    }
    for (claim_name, claim) in CLAIMS {
        cases.push(case(
            format!("when_args_args_count_{claim_name}"),
            after_hello(frame(&when_args_body(1, 0, &uv(claim)))),
            Expect::Error,
        ));
    }
}

/// Mutations: every length field lying, bad kinds and tags, states outside the schema,
/// trailing bytes, and nesting at 10, the limit, one past it, and 10,000.
pub(crate) fn mutations(cases: &mut Vec<Case>) {
    type Body = fn(Vec<u8>) -> Vec<u8>;
    let lies: [(&str, Body); 7] = [
        ("states_count", |lie| [vec![4, 1, 0], lie].concat()),
        ("args_count", |lie| [vec![4, 1, 0, 1, 0], lie].concat()),
        ("arg_key", |lie| [vec![4, 1, 0, 1, 0, 1], lie].concat()),
        ("str_value", |lie| {
            [mutate_body(1, 0, &[0], &[1, 1, b'k', 4]), lie].concat()
        }),
        ("bytes_value", |lie| {
            [mutate_body(1, 0, &[0], &[1, 1, b'k', 5]), lie].concat()
        }),
        ("list_value", |lie| {
            [mutate_body(1, 0, &[0], &[1, 1, b'k', 6]), lie].concat()
        }),
        ("map_value", |lie| {
            [mutate_body(1, 0, &[0], &[1, 1, b'k', 7]), lie].concat()
        }),
    ];
    for (field, body) in lies {
        for (claim_name, claim) in CLAIMS {
            let lying = case(
                format!("mutate_{field}_length_{claim_name}"),
                after_hello(frame(&body([uv(claim), b"abc".to_vec()].concat()))),
                Expect::Error,
            );
            cases.push(family(lying, claim == u64::MAX));
        }
    }
    let arg = |value: &[u8]| mutate_body(1, 0, &[0], &one_arg("k", value));
    let bad: [(&str, Vec<u8>, Expect); 9] = [
        (
            "mutate_kind_3",
            mutate_body(1, 3, &[0], &[0]),
            Expect::Error,
        ),
        ("mutate_value_tag_8", arg(&[8]), Expect::Error),
        ("mutate_bool_value_2", arg(&[1, 2]), Expect::Error),
        (
            "mutate_arg_key_not_utf8",
            mutate_body(
                1,
                0,
                &[0],
                &[vec![1], bstr(&[0xc3, 0x28]), vec![0]].concat(),
            ),
            Expect::Error,
        ),
        (
            "mutate_trailing_byte",
            [mutate_body(1, 0, &[0], &[0]), vec![0]].concat(),
            Expect::Error,
        ),
        ("mutate_truncated_float", arg(&[3, 0, 0, 0]), Expect::Error),
        (
            "mutate_state_outside_schema",
            mutate_body(1, 0, &[4], &[0]),
            Expect::Reply(Answer::Refused),
        ),
        (
            "mutate_state_u32_max",
            mutate_body(1, 0, &[u32::MAX], &[0]),
            Expect::Reply(Answer::Refused),
        ),
        (
            "mutate_state_index_past_u32",
            [vec![4, 1, 0, 1], uv(u64::from(u32::MAX) + 1), vec![0]].concat(),
            Expect::Error,
        ),
    ];
    for (name, body, expect) in bad {
        cases.push(case(name, after_hello(frame(&body)), expect));
    }
    for map in [false, true] {
        let shape = if map { "maps" } else { "lists" };
        for (depth, expect) in [
            (10, Expect::Reply(Answer::Executed)),
            (NESTING_LIMIT, Expect::Reply(Answer::Executed)),
            (NESTING_LIMIT + 1, Expect::Error),
            (10_000, Expect::Error),
        ] {
            let body = mutate_body(1, 0, &[0], &one_arg("k", &nested(depth, map)));
            cases.push(case(
                format!("deep_nesting_{shape}_{depth}"),
                after_hello(frame(&body)),
                expect,
            ));
        }
    }
}

/// Compressed frames once compression is agreed: bombs, garbage, lies about the size.
pub(crate) fn compression(cases: &mut Vec<Case>) {
    let packed_hello = || HelloParts::valid("hostile").compressed();
    let mut push = |name: &str, packed: Vec<u8>| {
        cases.push(case(
            format!("zstd_{name}"),
            Input::Stream {
                hello: Some(packed_hello()),
                bytes: zstd_frame(&packed),
                finish: false,
            },
            Expect::Error,
        ));
    };
    push("bomb_1_gib", zstd_bomb(1 << 30, None));
    push("bomb_64_mib", zstd_bomb(64 << 20, None));
    push(
        "bomb_max_frame_plus_one",
        zstd_bomb(MAX_FRAME as u64 + 1, None),
    );
    push(
        "bomb_declaring_a_small_size",
        zstd_bomb(16 << 20, Some(100)),
    );
    push(
        "declares_4_gib_holds_little",
        zstd_bomb(1024, Some(u32::MAX)),
    );
    push(
        "garbage",
        vec![0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff],
    );
    push("not_zstd_at_all", b"definitely not zstd".to_vec());
    let packed = zstd::bulk::compress(&[0u8; 4096], 3).expect("compresses");
    push("truncated", packed[..packed.len() / 2].to_vec());
    // Decompresses within the limit, to something that is no message.
    push("zeros_within_max_frame", zstd_bomb(MAX_FRAME as u64, None));
}

/// Peers that are slow, stall, or stop reading.
pub(crate) fn slow_and_stalled(cases: &mut Vec<Case>) {
    cases.push(case(
        "silent_after_connect",
        before_hello(Vec::new()),
        Expect::TimedOut,
    ));
    cases.push(case(
        "slow_loris_hello_one_byte_per_100ms",
        Input::Trickle {
            bytes: hello("loris"),
            every: Duration::from_millis(100),
        },
        Expect::Refused(RefusalKind::Timeout),
    ));
    let mut half = Vec::new();
    put_varint(&mut half, 40 << 1);
    half.extend_from_slice(&[4, 1]);
    cases.push(case(
        "frame_stalls_after_hello",
        after_hello(half),
        Expect::Bye("idle"),
    ));
    cases.push(case(
        "silent_after_hello",
        after_hello(Vec::new()),
        Expect::Bye("idle"),
    ));
    cases.push(case(
        "never_reads_pongs",
        Input::Peer(Peer::NeverReadsPongs),
        Expect::Closed,
    ));
    cases.push(case(
        "never_reads_pushes",
        Input::Peer(Peer::NeverReadsPushes),
        Expect::Closed,
    ));
    cases.push(case(
        "pings_but_never_reads",
        Input::Peer(Peer::PingsButNeverReads),
        Expect::Closed,
    ));
}
