//! The relay with WebSocket clients that speak the protocol through it: several on one target,
//! and every refusal (origin, target, token, size, upstream, idle) with a readable reason.

mod common;

use std::sync::Arc;
use std::time::Duration;

use asyncmachine::machine::{Args, Machine, MutationKind, Outcome, StateSource};
use asyncmachine::proto::message::{Hello, MutateRequest, MutateResult, WantedOptions};
use asyncmachine::proto::{FrameConfig, FrameReader, Message, PROTOCOL_VERSION, encode_frame};
use asyncmachine::relay::{Relay, RelayConfig, Target};
use asyncmachine::server::{Server, ServerConfig};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A machine served over TCP and a relay in front of it; the server lives as long as the test
/// holds it.
async fn setup(config: RelayConfig) -> (Machine, Relay, Server) {
    let machine = Machine::builder(abc_schema()).id("root").build();
    let (server, endpoint) = serve(Arc::new(machine.clone()), ServerConfig::default(), "tcp").await;
    let targets = vec![Target {
        name: "demo".into(),
        endpoint,
    }];
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets,
        ..config
    })
    .await
    .expect("relay starts");
    (machine, relay, server)
}

async fn open(relay: &Relay, path: &str, origin: Option<&str>) -> Result<Ws, WsError> {
    let mut request = format!("ws://{}{path}", relay.local_endpoint().address)
        .into_client_request()
        .expect("valid");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("header"));
    }
    within("ws connect", tokio_tungstenite::connect_async(request))
        .await
        .map(|(ws, _)| ws)
}

/// A browser-like client speaking aRPC in binary messages.
struct Client {
    ws: Ws,
    reader: FrameReader,
    /// The clock as the messages received so far make it.
    clock: Vec<u64>,
}

impl Client {
    async fn send(&mut self, message: &Message) {
        let mut out = Vec::new();
        encode_frame(&FrameConfig::default(), message, &mut out);
        within("ws send", self.ws.send(WsMessage::binary(out)))
            .await
            .expect("sends");
    }

    async fn recv(&mut self) -> Message {
        within("ws recv", async {
            loop {
                if let Some(m) = self.reader.next_message().expect("protocol") {
                    match &m {
                        Message::Ping(_) => continue,
                        Message::Welcome(w) => self.clock = w.snapshot.ticks.clone(),
                        Message::Diff(d) => d
                            .changes
                            .iter()
                            .for_each(|&(s, delta)| self.clock[s as usize] += delta),
                        Message::MutateReply(r) => r
                            .diff
                            .changes
                            .iter()
                            .for_each(|&(s, delta)| self.clock[s as usize] += delta),
                        _ => {}
                    }
                    return m;
                }
                match self.ws.next().await {
                    Some(Ok(WsMessage::Binary(data))) => self.reader.push(&data),
                    Some(Ok(_)) => {}
                    other => panic!("the relay closed: {other:?}"),
                }
            }
        })
        .await
    }

    async fn handshake(relay: &Relay, id: &str) -> (Client, Vec<u64>) {
        let ws = open(relay, "/arpc/demo", None).await.expect("upgrade");
        let mut client = Client {
            ws,
            reader: FrameReader::new(FrameConfig::default()),
            clock: Vec::new(),
        };
        client
            .send(&Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                client_id: id.into(),
                source: String::new(),
                schema_hash: 0,
                options: WantedOptions::default(),
                token: None,
            }))
            .await;
        match client.recv().await {
            Message::Welcome(w) => (client, w.snapshot.ticks),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }
}

fn status_of(result: Result<Ws, WsError>) -> (u16, String) {
    match result {
        Err(WsError::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (response.status().as_u16(), body)
        }
        other => panic!(
            "expected an HTTP refusal, got {:?}",
            other.map(|_| "an upgrade")
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_browsers_share_one_target() {
    let (machine, relay, _server) = setup(RelayConfig::default()).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(Client::handshake(&relay, &format!("browser-{i}")).await.0);
    }
    // Each mutates through the relay and gets its own reply.
    for (i, client) in clients.iter_mut().enumerate() {
        let state = ["A", "B", "C"][i % 3];
        let kind = if machine.is1(state) {
            MutationKind::Remove
        } else {
            MutationKind::Add
        };
        let index = machine.schema().index(state).expect("known") as u32;
        client
            .send(&Message::Mutate(MutateRequest {
                id: 7,
                kind,
                states: vec![index],
                args: Args::new().with("from", i as i64),
            }))
            .await;
        loop {
            match client.recv().await {
                Message::MutateReply(reply) => {
                    assert_eq!((reply.id, reply.result), (7, MutateResult::Executed));
                    break;
                }
                Message::Diff(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // A change at the source reaches every browser as a diff.
    machine
        .add(&["A", "B", "C"], Args::new())
        .expect("taken in");
    let target = machine.clock();
    for client in &mut clients {
        while client.clock != target {
            client.recv().await;
        }
    }
    assert!(
        relay
            .stats()
            .bridges
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_http_statuses_with_reasons() {
    let config = RelayConfig {
        origins: vec!["https://app.example".into()],
        token: None,
        ..RelayConfig::default()
    };
    let (_machine, relay, _server) = setup(config).await;
    let (status, body) = status_of(open(&relay, "/arpc/demo", Some("https://evil.example")).await);
    assert_eq!(status, 403);
    assert!(body.contains("evil.example"), "{body}");
    open(&relay, "/arpc/demo", Some("https://app.example"))
        .await
        .expect("a listed origin");
    let own = format!("http://{}", relay.local_endpoint().address);
    open(&relay, "/arpc/demo", Some(&own))
        .await
        .expect("the relay's own origin");

    let (status, body) = status_of(open(&relay, "/arpc/elsewhere", None).await);
    assert_eq!(status, 404);
    assert!(body.contains("this relay serves: demo"), "{body}");
    let (status, _) = status_of(open(&relay, "/127.0.0.1:22", None).await);
    assert_eq!(status, 404, "no host:port from the URL, ever");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured() {
    let (_machine, relay, _server) = setup(RelayConfig {
        token: Some("s3cret".into()),
        ..RelayConfig::default()
    })
    .await;
    let (status, body) = status_of(open(&relay, "/arpc/demo", None).await);
    assert_eq!(status, 401);
    assert!(body.contains("token"), "{body}");
    open(&relay, "/arpc/demo?token=s3cret", None)
        .await
        .expect("with the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_that_bridge_only() {
    let (machine, relay, _server) = setup(RelayConfig {
        max_message: 4096,
        ..RelayConfig::default()
    })
    .await;
    let (mut big, _) = Client::handshake(&relay, "big").await;
    let (mut small, _) = Client::handshake(&relay, "small").await;
    within("send", big.ws.send(WsMessage::binary(vec![0u8; 10_000])))
        .await
        .expect("sent");
    let close = within("close", async {
        loop {
            match big.ws.next().await {
                Some(Ok(WsMessage::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame");
    assert_eq!(close.code, CloseCode::Size);
    // The other bridge goes on.
    machine.add(&["C"], Args::new()).expect("taken in");
    assert!(matches!(small.recv().await, Message::Diff(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_and_an_idle_bridge_say_so() {
    let dead = Target {
        name: "dead".into(),
        endpoint: "tcp://127.0.0.1:1/x".parse().expect("valid"),
    };
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets: vec![dead],
        ..RelayConfig::default()
    })
    .await
    .expect("starts");
    let (status, body) = status_of(open(&relay, "/arpc/dead", None).await);
    assert_eq!(status, 502);
    assert!(body.contains("unreachable"), "{body}");

    let (_machine, relay, _server) = setup(RelayConfig {
        idle_timeout: Duration::from_millis(300),
        ..RelayConfig::default()
    })
    .await;
    let mut ws = open(&relay, "/arpc/demo", None).await.expect("upgrade");
    let frame = within("idle close", async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close, got {other:?}"),
            }
        }
    })
    .await
    .expect("a close frame");
    assert!(frame.reason.contains("idle"), "{}", frame.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_the_client_are_served() {
    let (_machine, relay, _server) = setup(RelayConfig::default()).await;
    let get = |path: &'static str| {
        let address = relay.local_endpoint().address.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&address)
                .await
                .expect("connects");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
                .await
                .expect("writes");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("reads");
            out
        }
    };
    let page = within("page", get("/")).await;
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("import { Mirror }"),
        "{page}"
    );
    let js = within("client", get("/am.js")).await;
    assert!(js.contains("text/javascript") && js.contains("export class Mirror"));
    let targets = within("targets", get("/targets")).await;
    assert!(
        targets.contains(r#"[{"machine":"worker","name":"demo"}]"#),
        "{targets}"
    );
    assert!(
        within("missing", get("/nope"))
            .await
            .starts_with("HTTP/1.1 404")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_reaches_a_node_through_a_wss_relay() {
    // The relay terminates TLS; the mirror's ws transport asks for /worker, the target's name.
    let machine = Machine::builder(abc_schema()).id("root").build();
    let (_server, endpoint) =
        serve(Arc::new(machine.clone()), ServerConfig::default(), "tcp").await;
    let relay = Relay::start(RelayConfig {
        listen: any_port("wss"),
        targets: vec![Target {
            name: "worker".into(),
            endpoint,
        }],
        transport: transport(),
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts");
    let through: asyncmachine::transport::Endpoint =
        format!("wss://{}/worker", relay.local_endpoint().address)
            .parse()
            .expect("valid");
    let mirror = common::mirror(&through, "via-wss").await;
    assert_eq!(
        within("add", mirror.add(&["B"], Args::new())).await,
        Ok(Outcome::Executed)
    );
    assert!(machine.is1("B"));
    machine.add(&["C"], Args::new()).expect("taken in");
    converged(&mirror, &machine.clock()).await;
}
