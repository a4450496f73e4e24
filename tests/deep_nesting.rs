//! Issue 13, item 1: a mutation whose argument nests 10,000 lists deep once aborted the node with
//! a stack overflow. Over a real connection it is now a protocol error for that connection only:
//! the peer gets an `Error` naming the limit and is closed, while other clients go on. The other
//! limits of PROTOCOL.md ("Limits") end a connection the same way.

mod common;

use std::sync::Arc;

use asyncmachine::machine::{Args, Machine, MutationKind, Outcome, StateSource, Value};
use asyncmachine::proto::frame::put_varint;
use asyncmachine::proto::limits::{MAX_DEPTH, MAX_NAME_LEN};
use asyncmachine::proto::message::{
    MutateReply, MutateRequest, MutateResult, Refusal, RefusalKind, decode, encode_to_vec,
};
use asyncmachine::proto::{Message, encode_frame};
use asyncmachine::server::ServerConfig;
use common::*;

/// The variant tag of `Value::List` on the wire.
const LIST: u8 = 6;

/// A frame holding a `Mutate` of state A whose argument `deep` is a list nested `depth` deep,
/// written byte by byte: building such a value here would recurse as deep as the server once did.
fn nested_mutate_frame(id: u64, depth: usize) -> Vec<u8> {
    let mut body = encode_to_vec(&Message::Mutate(MutateRequest {
        id,
        kind: MutationKind::Add,
        states: vec![0],
        args: Args::new().with("deep", Value::Null),
        key: None,
    }));
    assert_eq!(body.pop(), Some(0), "the body ends with the key's None");
    assert_eq!(body.pop(), Some(0), "after the null's tag");
    for _ in 0..depth {
        body.extend_from_slice(&[LIST, 1]);
    }
    body.push(0);
    body.push(0); // no key
    let mut frame = Vec::new();
    put_varint(&mut frame, (body.len() as u64) << 1);
    frame.extend_from_slice(&body);
    frame
}

/// A value of lists nested `depth` deep around a null.
fn nested_value(depth: usize) -> Value {
    (0..depth).fold(Value::Null, |inner, _| Value::List(vec![inner]))
}

#[tokio::test]
async fn a_deeply_nested_argument_closes_only_its_connection() {
    let source = Machine::builder(abc_schema()).id("worker").build();
    let (server, endpoint) = serve(Arc::new(source.clone()), ServerConfig::default(), "tcp").await;
    let healthy = mirror(&endpoint, "healthy").await;

    // The frame: 10,000 levels, about 20 KB, far under the frame limit.
    let (mut attacker, _) = RawClient::handshake(&endpoint, "attacker").await;
    let frame = nested_mutate_frame(1, 10_000);
    assert!(frame.len() > 20_000 && frame.len() < 21_000);
    attacker.send_bytes(&frame).await;
    match attacker.last_word().await {
        Some(Message::Error { message }) => assert!(
            message.contains(&format!("deeper than {MAX_DEPTH} levels")),
            "the error names the limit: {message}"
        ),
        other => panic!("expected an Error naming the depth limit, got {other:?}"),
    }
    assert!(!source.is1("A"), "the refused mutation did not run");

    // The node and its other client go on.
    assert_eq!(
        within("healthy add", healthy.add(&["B"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(source.is1("B"));
    converged(&healthy, &source.clock()).await;

    // A value nested exactly to the limit is an ordinary argument, from a raw peer and through
    // a mirror alike.
    let (mut client, _) = RawClient::handshake(&endpoint, "at-limit").await;
    client.send_bytes(&nested_mutate_frame(7, MAX_DEPTH)).await;
    loop {
        match client.recv().await {
            Some(Message::MutateReply(MutateReply { id: 7, result, .. })) => {
                assert_eq!(result, MutateResult::Executed);
                break;
            }
            Some(Message::Diff(_) | Message::Ping(_)) => {}
            other => panic!("expected the mutation's reply, got {other:?}"),
        }
    }
    let args = Args::new().with("deep", nested_value(MAX_DEPTH));
    assert_eq!(
        within("mirror add at the limit", healthy.add(&["C"], args)).await,
        Ok(Outcome::Executed)
    );
    assert_eq!(
        server.clients().len(),
        2,
        "the healthy mirror and the at-limit client"
    );
}

#[tokio::test]
async fn one_level_past_the_limit_is_refused_like_ten_thousand() {
    let source = Machine::builder(abc_schema()).id("worker").build();
    let (_server, endpoint) = serve(Arc::new(source.clone()), ServerConfig::default(), "tcp").await;
    let (mut client, _) = RawClient::handshake(&endpoint, "past-limit").await;
    client
        .send_bytes(&nested_mutate_frame(1, MAX_DEPTH + 1))
        .await;
    match client.last_word().await {
        Some(Message::Error { message }) => assert!(message.contains("deeper than"), "{message}"),
        other => panic!("expected an Error, got {other:?}"),
    }
}

#[test]
fn the_hand_written_frames_are_what_the_encoder_writes() {
    let frame = nested_mutate_frame(1, 2);
    let decoded = decode(&frame[1..]).expect("a two-deep mutation decodes");
    let Message::Mutate(request) = &decoded else {
        panic!("a mutation, got {decoded:?}")
    };
    assert_eq!(request.args.get("deep"), Some(&nested_value(2)));
    let mut framed = Vec::new();
    encode_frame(&Default::default(), &decoded, &mut framed);
    assert_eq!(framed, frame);
}

/// A hello past a limit is the first message, so it is refused like any bad hello, with the
/// limit in the reason.
#[tokio::test]
async fn a_hello_past_a_limit_is_refused_with_the_limit_named() {
    let source = Machine::builder(abc_schema()).id("worker").build();
    let (_server, endpoint) = serve(Arc::new(source), ServerConfig::default(), "tcp").await;
    let mut client = RawClient::connect(&endpoint).await;
    let long_id = "i".repeat(MAX_NAME_LEN + 1);
    client.send(&RawClient::hello(&endpoint, &long_id)).await;
    match client.last_word().await {
        Some(Message::Refused(Refusal {
            kind: RefusalKind::BadHello,
            reason,
        })) => assert!(
            reason.contains("a name of 1025 bytes is over the protocol's limit of 1024"),
            "{reason}"
        ),
        other => panic!("expected a BadHello refusal, got {other:?}"),
    }
    // An id at the protocol's name limit decodes, and is then refused by the server's own,
    // stricter rule for client ids (they appear in logs and `status`).
    let mut client = RawClient::connect(&endpoint).await;
    client
        .send(&RawClient::hello(&endpoint, &"i".repeat(MAX_NAME_LEN)))
        .await;
    match client.last_word().await {
        Some(Message::Refused(Refusal { reason, .. })) => {
            assert!(reason.contains("ids are at most 256 bytes"), "{reason}")
        }
        other => panic!("expected the id rule's refusal, got {other:?}"),
    }
}

/// Before its hello is accepted a connection may not make the server hold a frame of max_frame
/// (1 MiB by default): a frame head claiming more than MAX_HELLO_FRAME is refused at once, before
/// its body arrives, and a hello within it is an ordinary client.
#[tokio::test]
async fn a_first_frame_over_the_hello_limit_is_refused_before_its_body() {
    use asyncmachine::proto::limits::MAX_HELLO_FRAME;
    let source = Machine::builder(abc_schema()).id("worker").build();
    let config = ServerConfig::default();
    assert!(
        config.limits.max_frame > MAX_HELLO_FRAME,
        "the default frame limit is the larger"
    );
    let (_server, endpoint) = serve(Arc::new(source), config, "tcp").await;
    let mut client = RawClient::connect(&endpoint).await;
    // A head claiming an uncompressed body one past the hello limit (the length sits above the
    // head's compression bit); no body follows.
    let mut head = Vec::new();
    put_varint(&mut head, ((MAX_HELLO_FRAME + 1) as u64) << 1);
    client.send_bytes(&head).await;
    match client.last_word().await {
        Some(Message::Refused(Refusal {
            kind: RefusalKind::BadHello,
            reason,
        })) => assert!(reason.contains(&MAX_HELLO_FRAME.to_string()), "{reason}"),
        other => panic!("expected a BadHello refusal naming the limit, got {other:?}"),
    }
    RawClient::handshake(&endpoint, "after-the-big-head").await;
}
