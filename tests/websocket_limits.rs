//! WebSocket and HTTP limits of every listener that speaks them, a node's `ws://` listener and
//! am-relay alike: an endless message is cut at the configured size, not at tungstenite's 64 MiB;
//! a request head of a megabyte gets 431, not a reset.

mod common;

use std::sync::Arc;

use asyncmachine::machine::Machine;
use asyncmachine::proto::config::Limits;
use asyncmachine::relay::{Relay, RelayConfig, Target};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::Endpoint;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The least a node's WebSocket takes in one message, whatever its `max_frame` (writers split
/// into messages of this size).
const MESSAGE_FLOOR: usize = 1 << 20;

/// A node's ws:// listener whose own timeouts are beyond every wait of these tests, so only a
/// size limit can end a connection in time.
async fn node_ws(max_frame: usize) -> (Server, Endpoint) {
    let machine = Machine::builder(abc_schema()).id("root").build();
    serve(
        Arc::new(machine),
        ServerConfig {
            limits: Limits {
                max_frame,
                handshake_timeout: 3 * LIMIT,
                idle_timeout: 3 * LIMIT,
                ..Limits::default()
            },
            ..ServerConfig::default()
        },
        "ws",
    )
    .await
}

async fn relay(max_message: usize) -> (Relay, Server) {
    let machine = Machine::builder(abc_schema()).id("root").build();
    let (server, endpoint) = serve(Arc::new(machine), ServerConfig::default(), "tcp").await;
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets: vec![Target {
            name: "demo".into(),
            endpoint,
        }],
        max_message,
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts");
    (relay, server)
}

/// A TCP connection that has been upgraded to a WebSocket by hand (so it can send frames no
/// WebSocket library would).
async fn upgraded(address: &str, path: &str) -> TcpStream {
    let mut tcp = within("connect", TcpStream::connect(address))
        .await
        .expect("connects");
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("writes");
    // Read the answer's head byte by byte: nothing of what follows may be consumed.
    let mut answer = Vec::new();
    within("the 101", async {
        while !answer.ends_with(b"\r\n\r\n") {
            answer.push(tcp.read_u8().await.expect("an answer"));
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    tcp
}

/// One masked client frame of `len` (at most 125) bytes, FIN not set (mask 0, so the bytes go
/// as they are).
fn unfinished_frame(opcode: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![opcode, 0x80 | len as u8, 0, 0, 0, 0];
    frame.resize(6 + len, 0x2a);
    frame
}

/// Sends one binary message of `len`-byte frames (FIN never set) until the peer ends the
/// connection or `budget` payload bytes have gone; returns what the peer answered, once it has
/// ended the connection.
async fn endless_message(tcp: &mut TcpStream, budget: usize, len: usize) -> Vec<u8> {
    let (mut rd, mut wr) = tcp.split();
    let mut answer = Vec::new();
    let send = async {
        let (first, next) = (unfinished_frame(0x02, len), unfinished_frame(0x00, len));
        let mut batch = first;
        let mut sent = len;
        while sent < budget {
            while batch.len() < 64 * 1024 {
                batch.extend_from_slice(&next);
                sent += len;
            }
            if wr.write_all(&batch).await.is_err() {
                break;
            }
            batch.clear();
        }
        // Then wait for the peer: sending stops here, so only a cut can end the connection.
        std::future::pending::<()>().await;
    };
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    within("the peer to cut the endless message", async {
        tokio::select! {
            _ = send => {}
            _ = read => {}
        }
    })
    .await;
    answer
}

/// Sends a request head of about a megabyte (while reading) and returns the answer.
async fn huge_head(address: &str) -> String {
    let tcp = within("connect", TcpStream::connect(address))
        .await
        .expect("connects");
    let (mut rd, mut wr) = tcp.into_split();
    let address = address.to_owned();
    let writer = tokio::spawn(async move {
        let mut head = format!(
            "GET / HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        );
        for i in 0..16_000 {
            head.push_str(&format!("X-Filler-{i}: {}\r\n", "x".repeat(50)));
        }
        head.push_str("\r\n");
        assert!(head.len() > 1_000_000);
        // The server may stop reading once it has answered: a failed write is its right.
        let _ = wr.write_all(head.as_bytes()).await;
    });
    let mut answer = Vec::new();
    within("an answer to the huge head", async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reset instead of an answer ({e}); read so far: {answer:?}"),
            }
        }
    })
    .await;
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cuts_an_endless_websocket_message_at_its_frame_limit() {
    let (_server, endpoint) = node_ws(1024).await;
    let mut tcp = upgraded(&endpoint.address, "/worker").await;
    // 1-byte frames past the limit, then silence: with tungstenite's defaults the node would
    // wait for the rest of a 64 MiB message and this would time out.
    endless_message(&mut tcp, MESSAGE_FLOOR + 64 * 1024, 1).await;
    // The node goes on.
    RawClient::handshake(&endpoint, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_larger_max_frame_still_cuts_an_endless_message() {
    // max_frame above the floor: the limit is max_frame (plus a head), still far below 64 MiB.
    let max_frame = 3 << 19;
    let (_server, endpoint) = node_ws(max_frame).await;
    let mut tcp = upgraded(&endpoint.address, "/worker").await;
    let answer = endless_message(&mut tcp, max_frame + 64 * 1024, 125).await;
    assert!(answer.is_empty() || answer[0] == 0x88, "{answer:?}");
    RawClient::handshake(&endpoint, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_cuts_an_endless_websocket_message_at_its_message_limit() {
    let (relay, _server) = relay(4096).await;
    let mut tcp = upgraded(&relay.local_endpoint().address, "/arpc/demo").await;
    let answer = endless_message(&mut tcp, 4 * 4096, 1).await;
    // A close frame: 0x88, its length, the code 1009 (message too big) and the reason.
    assert!(answer.len() > 4 && answer[0] == 0x88, "{answer:?}");
    assert_eq!(u16::from_be_bytes([answer[2], answer[3]]), 1009);
    let reason = String::from_utf8_lossy(&answer[4..]);
    assert!(
        reason.contains("4096"),
        "the limit is the configured one: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_headers_gets_431_from_a_node_and_from_the_relay() {
    let (_server, endpoint) = node_ws(1 << 20).await;
    let answer = huge_head(&endpoint.address).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{answer}"
    );
    assert!(answer.contains("request head is over"), "{answer}");
    RawClient::handshake(&endpoint, "after").await;

    let (relay, _server) = relay(1 << 20).await;
    let answer = huge_head(&relay.local_endpoint().address).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{answer}"
    );
    assert!(
        answer.contains("X-Content-Type-Options: nosniff"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ws_listener_answers_what_is_not_an_upgrade() {
    let (_server, endpoint) = node_ws(1 << 20).await;
    let mut tcp = within("connect", TcpStream::connect(&endpoint.address))
        .await
        .expect("connects");
    tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", endpoint.address).as_bytes())
        .await
        .expect("writes");
    let mut answer = String::new();
    within("an answer", tcp.read_to_string(&mut answer))
        .await
        .expect("reads");
    assert!(answer.starts_with("HTTP/1.1 426"), "{answer}");
    assert!(answer.contains("aRPC WebSocket listener"), "{answer}");
}

/// A page the user opens could reach a node's loopback ws:// listener (browsers send Origin;
/// programs do not): the node refuses it and points at am-relay, which checks origins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ws_listener_refuses_browsers() {
    let (_server, endpoint) = node_ws(1 << 20).await;
    let mut tcp = within("connect", TcpStream::connect(&endpoint.address))
        .await
        .expect("connects");
    let request = format!(
        "GET /root HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: https://evil.example\r\n\r\n",
        endpoint.address
    );
    tcp.write_all(request.as_bytes()).await.expect("writes");
    let mut answer = String::new();
    within("an answer", tcp.read_to_string(&mut answer))
        .await
        .expect("reads");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("through am-relay"), "{answer}");
    // Programs still connect.
    let _mirror = within(
        "a mirror",
        asyncmachine::mirror::Mirror::connect(
            &endpoint.with_machine("worker"),
            asyncmachine::mirror::MirrorConfig::default(),
        ),
    )
    .await
    .expect("a program is not a browser");
}
