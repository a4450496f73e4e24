//! Hostile inputs below the protocol: WebSocket framing, HTTP upgrades, TLS records, QUIC
//! datagrams and streams.

use crate::bodies::hello;
use crate::cases::{Case, Expect, HOST, Input, Peer, case};
use crate::common::raw::{self, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT, WsFrame};
use crate::node::{MAX_FRAME, RELAY_TOKEN};

/// WebSocket framing, after a valid upgrade.
pub(crate) fn websocket(cases: &mut Vec<Case>) {
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
        Expect::ServedOrDropped,
    ));
}

/// HTTP where an upgrade is expected: wrong, oversized, garbled; and the relay's refusals.
pub(crate) fn http(cases: &mut Vec<Case>) {
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
    // A page the user opened: nodes refuse every browser (their ws listeners check no
    // origin), the relay this foreign one.
    push(
        "upgrade_from_a_foreign_page",
        upgrade_with(&["Origin: https://evil.example"]),
        Expect::Refusal {
            status: 403,
            close: 4403,
        },
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
pub(crate) fn tls(cases: &mut Vec<Case>) {
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
pub(crate) fn quic(cases: &mut Vec<Case>) {
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
