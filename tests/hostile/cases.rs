//! The table of hostile inputs: each case a name, an input (bytes, frames, requests, datagrams,
//! or a misbehaving peer), and what the node must do about it. Families of inputs are
//! generated (every truncation of a hello, every unknown message type, every field's length
//! lie, ...) so that the table says what is covered and the suite counts it.

use std::time::Duration;

use asyncmachine::machine::{Args, MutationKind, Schema, StateDef};
use asyncmachine::proto::frame::put_varint;
use asyncmachine::proto::message::{
    ClockDiff, Granted, Hello, MutateReply, MutateResult, NodeStatus, Payload, Refusal,
    RefusalKind, Snapshot, WantedOptions, Welcome,
};
use asyncmachine::proto::{Message, PROTOCOL_VERSION};

use crate::bodies::{
    HelloParts, TOKEN, bstr, frame, hello, message_frame, mutate_body, nested, one_arg, uv,
    zstd_bomb, zstd_frame,
};
use crate::common::raw::{self, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT, WsFrame};
use crate::node::{Kind, MAX_FRAME, RELAY_TOKEN};

/// The nesting depth the protocol allows for argument values (issue 13, item 1: the decoder's
/// `MAX_DEPTH`, counted as lists or maps around a scalar): a value nested this deep is
/// accepted, one level more is a protocol error. Written here rather than imported so that
/// the suite builds on a node without the limit, and fails there.
pub const NESTING_LIMIT: usize = 32;

/// Stands for the address the input goes to in an HTTP request's `Host` (the port is known
/// only once the node listens): replaced when the case runs.
pub const HOST: &str = "@HOST@";

/// One hostile input and what the node must answer.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    pub input: Input,
    pub expect: Expect,
    /// One of a large family swept on tcp only (other listeners get a sample of it): the
    /// family tests the decoder, which every transport shares.
    pub sweep_only: bool,
}

impl Case {
    pub fn applies(&self, kind: Kind) -> bool {
        self.input.applies(kind) && (!self.sweep_only || kind == Kind::Tcp)
    }
}

/// How the input reaches the node.
#[derive(Debug)]
pub enum Input {
    /// Bytes on the protocol stream (after the transport's own handshake); first a valid
    /// hello and its welcome when `hello` is given; then, if `finish`, the client's side ends.
    Stream {
        hello: Option<HelloParts>,
        bytes: Vec<u8>,
        finish: bool,
    },
    /// Bytes on the protocol stream one at a time, `every` apart, until the node answers.
    Trickle { bytes: Vec<u8>, every: Duration },
    /// Raw WebSocket bytes (frames) after a valid upgrade, and after a hello when `hello`.
    WsFrames { hello: bool, bytes: Vec<u8> },
    /// Bytes where an HTTP upgrade request is expected (on TLS for wss).
    Http(Vec<u8>),
    /// An HTTP request only the relay interprets (the node's listener ignores the path).
    RelayHttp(Vec<u8>),
    /// Bytes where a TLS ClientHello is expected.
    Tls(Vec<u8>),
    /// UDP datagrams to a QUIC listener.
    Datagrams(Vec<Vec<u8>>),
    /// A peer whose misbehaviour is a script rather than bytes.
    Peer(Peer),
}

/// Scripted misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Handshakes, then sends pings and never reads a pong.
    NeverReadsPongs,
    /// Handshakes and never reads while the node sends it payloads and diffs.
    NeverReadsPushes,
    /// A WebSocket message that never ends: continuation frames until the node cuts it.
    EndlessContinuation,
    /// A WebSocket message of twice max_frame, all of it valid pings.
    MessageOverMaxFrame,
    /// After the hello, WebSocket pings, thousands, never reading the pongs: the node either
    /// goes on serving the connection or drops it, within bounded memory.
    WsPingFlood,
    /// The upgrade request one byte per 100 ms.
    HttpTrickle,
    /// A TLS ClientHello one byte per 100 ms.
    TlsTrickle,
    /// A QUIC connection that opens a stream and never writes to it.
    QuicSilentStream,
    /// A QUIC connection with no stream at all.
    QuicNoStream,
    /// A QUIC stream that ends (FIN) before any byte.
    QuicEmptyStream,
    /// A QUIC stream reset in the middle of a hello.
    QuicResetMidHello,
    /// A QUIC client that sends a hello and stops the node's sending side.
    QuicStopSending,
    /// A QUIC handshake offering another application protocol.
    QuicAlpn(&'static [u8]),
}

impl Peer {
    pub fn applies(self, kind: Kind) -> bool {
        match self {
            Peer::NeverReadsPushes => true,
            // The node first works through the megabytes of pings the buffers on the way hold
            // (seconds in a debug build; tens of seconds through the relay's two hops), so
            // this runs on one stream and one QUIC listener; never_reads_pushes covers a
            // client that never reads on every listener.
            Peer::NeverReadsPongs => matches!(kind, Kind::Tcp | Kind::Quic),
            Peer::EndlessContinuation
            | Peer::MessageOverMaxFrame
            | Peer::WsPingFlood
            | Peer::HttpTrickle => kind.speaks_http(),
            Peer::TlsTrickle => kind.tls_on_tcp(),
            Peer::QuicSilentStream
            | Peer::QuicNoStream
            | Peer::QuicEmptyStream
            | Peer::QuicResetMidHello
            | Peer::QuicStopSending
            | Peer::QuicAlpn(_) => kind == Kind::Quic,
        }
    }
}

/// What the node must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// A `Refused` of this kind, then the connection closes.
    Refused(RefusalKind),
    /// `Refused(Timeout)`, then closed; on QUIC, where a client that sent nothing has no
    /// stream to carry it, the connection just closes.
    TimedOut,
    /// An `Error` message, then the connection closes.
    Error,
    /// A `Bye` whose reason contains this, then the connection closes.
    Bye(&'static str),
    /// The connection closes (a transport-level last word is allowed: a TLS alert, a
    /// WebSocket close frame, an HTTP error status, a protocol Error).
    Closed,
    /// As `Closed`, and at once: not by the idle timeout (no `Bye` for idleness).
    Cut,
    /// An HTTP response with this status, then the connection closes.
    Status(u16),
    /// A relay refusal: the HTTP status, or (after an upgrade) a close frame with the code.
    Refusal { status: u16, close: u16 },
    /// Odd but not wrong HTTP: the node may upgrade (then the WebSocket must serve a hello)
    /// or refuse (a 4xx, or a close).
    UpgradeOrRefusal,
    /// Valid, if unusual: the node welcomes the client.
    Welcome,
    /// Valid: the node answers the mutation with this result and keeps the connection.
    Reply(Answer),
    /// No connection comes of it, and the node counts none.
    NoConnection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Executed,
    Refused,
}

impl Input {
    /// Whether the input can reach a node through this kind of listener.
    pub fn applies(&self, kind: Kind) -> bool {
        match self {
            Input::Stream { .. } | Input::Trickle { .. } => true,
            Input::WsFrames { .. } | Input::Http(_) => kind.speaks_http(),
            Input::RelayHttp(_) => kind == Kind::Relay,
            Input::Tls(_) => kind.tls_on_tcp(),
            Input::Datagrams(_) => kind == Kind::Quic,
            Input::Peer(peer) => peer.applies(kind),
        }
    }
}

fn case(name: impl Into<String>, input: Input, expect: Expect) -> Case {
    Case {
        name: name.into(),
        input,
        expect,
        sweep_only: false,
    }
}

/// A case of a large family: every listener runs it when `sample`, else only tcp.
fn family(case: Case, sample: bool) -> Case {
    Case {
        sweep_only: !sample,
        ..case
    }
}

fn before_hello(bytes: Vec<u8>) -> Input {
    Input::Stream {
        hello: None,
        bytes,
        finish: false,
    }
}

fn after_hello(bytes: Vec<u8>) -> Input {
    Input::Stream {
        hello: Some(HelloParts::valid("hostile")),
        bytes,
        finish: false,
    }
}

/// Lengths a field may claim: far past any body, past what a u32 holds, one past the body.
const CLAIMS: [(&str, u64); 3] = [
    ("u64_max", u64::MAX),
    ("u32_max", 0xffff_ffff),
    ("one_past", 4),
];

/// Every case, in order.
pub fn table() -> Vec<Case> {
    let mut cases = Vec::new();
    framing(&mut cases);
    hellos(&mut cases);
    message_types(&mut cases);
    mutations(&mut cases);
    compression(&mut cases);
    slow_and_stalled(&mut cases);
    websocket(&mut cases);
    http(&mut cases);
    tls(&mut cases);
    quic(&mut cases);
    cases
}

/// Frame heads: empty, varints of every width, overflowing, too large, compressed unasked.
fn framing(cases: &mut Vec<Case>) {
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
fn hellos(cases: &mut Vec<Case>) {
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
    for version in [0u64, 1, 3, u64::from(u32::MAX)] {
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
            Expect::Refused(RefusalKind::Auth),
        ),
        (
            "hello_source_60_kib",
            HelloParts {
                source: bstr(big.as_bytes()),
                ..HelloParts::valid("hostile")
            },
            Expect::Refused(RefusalKind::UnknownSource),
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
    ]
}

/// Message types where they do not belong: first instead of a hello, server-only ones from
/// a client, and type indexes past the last.
fn message_types(cases: &mut Vec<Case>) {
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
            Message::Mutate(_) | Message::Sync { .. } | Message::Ping(_) | Message::Pong(_) => {
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
    // Every type index past the last (16), as one byte of body; a sample of them on every
    // listener, all of them on tcp.
    for index in 17..=250u64 {
        let unknown = case(
            format!("unknown_type_{index}"),
            before_hello(frame(&uv(index))),
            Expect::Refused(RefusalKind::BadHello),
        );
        cases.push(family(unknown, [17, 128, 250].contains(&index)));
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
    for index in [17u64, 255] {
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

/// Mutations: every length field lying, bad kinds and tags, states outside the schema,
/// trailing bytes, and nesting at 10, the limit, one past it, and 10,000.
fn mutations(cases: &mut Vec<Case>) {
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
fn compression(cases: &mut Vec<Case>) {
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
fn slow_and_stalled(cases: &mut Vec<Case>) {
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
}

/// WebSocket framing, after a valid upgrade.
fn websocket(cases: &mut Vec<Case>) {
    let hello = hello("hostile");
    let frames = |frames: &[WsFrame]| frames.iter().flat_map(WsFrame::encode).collect::<Vec<u8>>();
    let mut push = |name: &str, after: bool, bytes: Vec<u8>, expect: Expect| {
        cases.push(case(
            format!("ws_{name}"),
            Input::WsFrames {
                hello: after,
                bytes,
            },
            expect,
        ));
    };
    push(
        "hello_in_a_text_message",
        false,
        frames(&[WsFrame::new(OP_TEXT, hello.clone())]),
        Expect::Cut,
    );
    push(
        "hello_unmasked",
        false,
        frames(&[WsFrame::binary(hello.clone()).mask(None)]),
        Expect::Cut,
    );
    let (a, b) = hello.split_at(hello.len() / 2);
    push(
        "hello_fragmented_binary_then_continuation",
        false,
        frames(&[
            WsFrame::binary(a).fin(false),
            WsFrame::new(OP_CONTINUATION, b),
        ]),
        Expect::Welcome,
    );
    push(
        "hello_one_byte_per_message",
        false,
        frames(
            &hello
                .iter()
                .map(|&b| WsFrame::binary([b]))
                .collect::<Vec<_>>(),
        ),
        Expect::Welcome,
    );
    push(
        "hello_after_empty_messages",
        false,
        [
            frames(&vec![WsFrame::binary(Vec::new()); 1000]),
            frames(&[WsFrame::binary(hello.clone())]),
        ]
        .concat(),
        Expect::Welcome,
    );
    push(
        "continuation_without_start",
        false,
        frames(&[WsFrame::new(OP_CONTINUATION, hello.clone())]),
        Expect::Cut,
    );
    push(
        "new_message_inside_a_fragmented_one",
        false,
        frames(&[WsFrame::binary(a).fin(false), WsFrame::binary(b)]),
        Expect::Cut,
    );
    push(
        "text_not_utf8",
        true,
        frames(&[WsFrame::new(OP_TEXT, vec![0xff, 0xfe, 0xfd])]),
        Expect::Cut,
    );
    push(
        "text_after_hello",
        true,
        frames(&[WsFrame::new(OP_TEXT, "hello")]),
        Expect::Cut,
    );
    push(
        "frame_claims_2_pow_63_minus_1",
        false,
        frames(&[WsFrame::binary(Vec::new()).claim(i64::MAX as u64)]),
        Expect::Cut,
    );
    push(
        "frame_claims_length_with_top_bit",
        false,
        frames(&[WsFrame::binary(Vec::new()).claim(u64::MAX)]),
        Expect::Cut,
    );
    push(
        "frame_claims_1_gib",
        true,
        frames(&[WsFrame::binary(Vec::new()).claim(1 << 30)]),
        Expect::Cut,
    );
    // A WebSocket message holds at most one protocol frame and its head (or what one write
    // of the node's holds, if that is more): twice max_frame is past any reading of that.
    push(
        "frame_header_claims_twice_max_frame",
        true,
        frames(&[WsFrame::binary(Vec::new()).claim(2 * MAX_FRAME as u64)]),
        Expect::Cut,
    );
    push(
        "ping_over_125_bytes",
        true,
        frames(&[WsFrame::new(OP_PING, vec![0u8; 126])]),
        Expect::Cut,
    );
    push(
        "close_over_125_bytes",
        true,
        frames(&[WsFrame::new(
            OP_CLOSE,
            [&1000u16.to_be_bytes()[..], &[b'x'; 124]].concat(),
        )]),
        Expect::Cut,
    );
    push(
        "ping_fragmented",
        true,
        frames(&[WsFrame::new(OP_PING, b"ab".to_vec()).fin(false)]),
        Expect::Cut,
    );
    for opcode in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        push(
            &format!("opcode_{opcode:#x}"),
            true,
            frames(&[WsFrame::new(opcode, b"x".to_vec())]),
            Expect::Cut,
        );
    }
    for bit in [4u8, 2, 1] {
        push(
            &format!("rsv_bits_{bit:03b}"),
            true,
            frames(&[WsFrame::binary(vec![0x04, 0x0a, 0x00]).rsv(bit)]),
            Expect::Cut,
        );
    }
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
        push(
            &format!("close_code_{code}"),
            true,
            frames(&[WsFrame::new(OP_CLOSE, code.to_be_bytes())]),
            Expect::Cut,
        );
    }
    push(
        "close_one_byte_payload",
        true,
        frames(&[WsFrame::new(OP_CLOSE, vec![3])]),
        Expect::Cut,
    );
    push(
        "close_reason_not_utf8",
        true,
        frames(&[WsFrame::new(
            OP_CLOSE,
            [&1000u16.to_be_bytes()[..], &[0xff, 0xfe]].concat(),
        )]),
        Expect::Cut,
    );
    for (name, peer) in [
        ("endless_continuation", Peer::EndlessContinuation),
        ("message_twice_max_frame", Peer::MessageOverMaxFrame),
    ] {
        cases.push(case(format!("ws_{name}"), Input::Peer(peer), Expect::Cut));
    }
    cases.push(case(
        "ws_ping_flood_unread",
        Input::Peer(Peer::WsPingFlood),
        Expect::Welcome,
    ));
}

/// HTTP where an upgrade is expected: wrong, oversized, garbled; and the relay's refusals.
fn http(cases: &mut Vec<Case>) {
    let host = HOST;
    // With the relay's token: the relay must refuse these for what they are, not for that.
    let path = format!("/arpc/worker?token={RELAY_TOKEN}");
    let upgrade_with = |extra: &[&str]| raw::upgrade_request(host, &path, extra);
    let mut push = |name: &str, bytes: Vec<u8>, expect: Expect| {
        cases.push(case(format!("http_{name}"), Input::Http(bytes), expect));
    };
    push("silent_after_connect", Vec::new(), Expect::Closed);
    push(
        "get_without_upgrade",
        format!("GET /worker HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
        Expect::Closed,
    );
    push(
        "version_1_0",
        String::from_utf8_lossy(&upgrade_with(&[]))
            .replace("HTTP/1.1", "HTTP/1.0")
            .into_bytes(),
        Expect::Closed,
    );
    push(
        "version_9_9",
        String::from_utf8_lossy(&upgrade_with(&[]))
            .replace("HTTP/1.1", "HTTP/9.9")
            .into_bytes(),
        Expect::Closed,
    );
    push(
        "http2_preface",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        Expect::Closed,
    );
    push(
        "websocket_version_8",
        String::from_utf8_lossy(&upgrade_with(&[]))
            .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8")
            .into_bytes(),
        Expect::Closed,
    );
    push(
        "no_websocket_key",
        String::from_utf8_lossy(&upgrade_with(&[]))
            .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")
            .into_bytes(),
        Expect::Closed,
    );
    push(
        "post_upgrade",
        String::from_utf8_lossy(&upgrade_with(&[]))
            .replacen("GET", "POST", 1)
            .into_bytes(),
        Expect::Closed,
    );
    let megabyte = format!("X-Filler: {}", "a".repeat(1 << 20));
    push(
        "one_megabyte_header",
        upgrade_with(&[&megabyte]),
        Expect::Status(431),
    );
    let many: Vec<String> = (0..20_000).map(|i| format!("X-{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    push(
        "twenty_thousand_headers",
        upgrade_with(&many),
        Expect::Closed,
    );
    push(
        "header_without_colon",
        upgrade_with(&["this line has no colon"]),
        Expect::Closed,
    );
    push(
        "request_line_garbage",
        b"\x00\x01\x02\x03 \xff\xfe garbage\r\n\r\n".to_vec(),
        Expect::Closed,
    );
    push(
        "request_line_only_a_method",
        b"GET\r\n\r\n".to_vec(),
        Expect::Closed,
    );
    push(
        "header_value_not_utf8",
        upgrade_with(&["X-Bad: \u{fffd}"])
            .into_iter()
            .map(|b| if b == 0xef { 0xff } else { b })
            .collect(),
        Expect::UpgradeOrRefusal,
    );
    push(
        "head_that_never_ends",
        [
            b"GET /worker HTTP/1.1\r\nX-Long: ".to_vec(),
            vec![b'a'; 1 << 20],
        ]
        .concat(),
        Expect::Closed,
    );
    // The relay's own refusals (the node's ws listener does not interpret them).
    let mut relay = |name: &str, bytes: Vec<u8>, status: u16| {
        cases.push(case(
            format!("relay_{name}"),
            Input::RelayHttp(bytes),
            Expect::Refusal {
                status,
                close: 4000 + status,
            },
        ));
    };
    relay(
        "no_token",
        raw::upgrade_request(host, "/arpc/worker", &[]),
        401,
    );
    relay(
        "wrong_token",
        raw::upgrade_request(host, "/arpc/worker?token=guess", &[]),
        401,
    );
    relay(
        "unknown_target",
        raw::upgrade_request(host, &format!("/arpc/nope?token={RELAY_TOKEN}"), &[]),
        404,
    );
    relay(
        "host_port_as_target",
        raw::upgrade_request(host, &format!("/127.0.0.1:22?token={RELAY_TOKEN}"), &[]),
        404,
    );
    // DNS rebinding: the attacker's name, re-pointed at the relay's address, with a page of
    // that same name as the origin.
    relay(
        "foreign_host",
        raw::upgrade_request(
            "attacker.test:7480",
            &format!("/arpc/worker?token={RELAY_TOKEN}"),
            &[],
        ),
        421,
    );
    relay(
        "dns_rebinding_origin_equal_to_host",
        raw::upgrade_request(
            "attacker.test:7480",
            &format!("/arpc/worker?token={RELAY_TOKEN}"),
            &["Origin: http://attacker.test:7480"],
        ),
        421,
    );
    relay(
        "no_host_header",
        String::from_utf8_lossy(&raw::upgrade_request(
            HOST,
            &format!("/arpc/worker?token={RELAY_TOKEN}"),
            &[],
        ))
        .replace(&format!("Host: {HOST}\r\n"), "")
        .into_bytes(),
        400,
    );
    relay(
        "foreign_origin",
        raw::upgrade_request(
            host,
            &format!("/arpc/worker?token={RELAY_TOKEN}"),
            &["Origin: https://evil.example"],
        ),
        403,
    );
}

/// Bytes where a TLS ClientHello is expected.
fn tls(cases: &mut Vec<Case>) {
    let client_hello = raw::client_hello();
    let mut push = |name: &str, bytes: Vec<u8>| {
        cases.push(case(
            format!("tls_{name}"),
            Input::Tls(bytes),
            Expect::Closed,
        ));
    };
    push("silent_after_connect", Vec::new());
    push("plain_arpc_hello", hello("plain"));
    push(
        "plain_http_upgrade",
        raw::upgrade_request("127.0.0.1", "/worker", &[]),
    );
    push(
        "garbage_record",
        [vec![0x16, 0x03, 0x01, 0x00, 0x05], vec![0xff; 5]].concat(),
    );
    push(
        "record_over_limit",
        [vec![0x16, 0x03, 0x03, 0xff, 0xff], vec![0; 1024]].concat(),
    );
    push(
        "alert_first",
        vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
    );
    push(
        "change_cipher_spec_first",
        vec![0x14, 0x03, 0x03, 0x00, 0x01, 0x01],
    );
    push(
        "application_data_first",
        [vec![0x17, 0x03, 0x03, 0x00, 0x10], vec![0xaa; 16]].concat(),
    );
    push(
        "sslv2_hello",
        vec![
            0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
        ],
    );
    let mut spoiled = client_hello.clone();
    let middle = spoiled.len() / 2;
    spoiled[middle..middle + 8].copy_from_slice(&[0xff; 8]);
    push("client_hello_spoiled_in_the_middle", spoiled);
    push(
        "client_hello_cut_in_half_then_stall",
        client_hello[..client_hello.len() / 2].to_vec(),
    );
    cases.push(case(
        "tls_client_hello_one_byte_per_100ms",
        Input::Peer(Peer::TlsTrickle),
        Expect::Closed,
    ));
    cases.push(case(
        "http_upgrade_one_byte_per_100ms",
        Input::Peer(Peer::HttpTrickle),
        Expect::Closed,
    ));
}

/// QUIC: datagrams that are not QUIC, and connections that misuse their stream.
fn quic(cases: &mut Vec<Case>) {
    let noise = |len: usize, seed: u32| -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                // xorshift: deterministic noise.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    };
    let long_header = |version: u32, padding: usize| -> Vec<u8> {
        let mut d = vec![0xc0];
        d.extend_from_slice(&version.to_be_bytes());
        d.push(8);
        d.extend(noise(8, 7));
        d.push(8);
        d.extend(noise(8, 9));
        d.push(0); // token length
        d.extend_from_slice(&[0x44, 0x00]); // payload length, 2-byte varint
        d.extend(noise(padding, 11));
        d
    };
    let mut push = |name: &str, datagrams: Vec<Vec<u8>>| {
        cases.push(case(
            format!("quic_{name}"),
            Input::Datagrams(datagrams),
            Expect::NoConnection,
        ));
    };
    push("one_zero_byte_datagram", vec![vec![0]]);
    push("noise_1200_bytes", vec![noise(1200, 1)]);
    push("noise_65000_bytes", vec![noise(65_000, 2)]);
    push(
        "initial_with_undecryptable_payload",
        vec![long_header(1, 1200)],
    );
    push("initial_too_short", vec![long_header(1, 100)]);
    push("unknown_version", vec![long_header(0x1a2a_3a4a, 1200)]);
    push(
        "short_header_unknown_connection",
        vec![[vec![0x40], noise(100, 3)].concat()],
    );
    push(
        "thousand_noise_datagrams",
        (0..1000).map(|i| noise(1200, 100 + i)).collect(),
    );
    for (name, peer) in [
        ("stream_opened_never_written", Peer::QuicSilentStream),
        ("connection_without_stream", Peer::QuicNoStream),
        ("stream_finished_empty", Peer::QuicEmptyStream),
        ("stream_reset_mid_hello", Peer::QuicResetMidHello),
        ("stop_sending_after_hello", Peer::QuicStopSending),
        ("alpn_h3", Peer::QuicAlpn(b"h3")),
        ("no_alpn", Peer::QuicAlpn(b"")),
    ] {
        cases.push(case(
            format!("quic_{name}"),
            Input::Peer(peer),
            Expect::Closed,
        ));
    }
}
