//! The relay with WebSocket clients that speak the protocol through it: several on one target,
//! every refusal (host, origin, target, token, size, upstream, full, idle) with a close code and
//! a readable reason, the headers of every route, and no token in any log line.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncmachine::machine::{Args, Machine, MutationKind, Outcome, StateSource};
use asyncmachine::proto::message::{Hello, MutateRequest, MutateResult, WantedOptions};
use asyncmachine::proto::{FrameConfig, FrameReader, Message, PROTOCOL_VERSION, encode_frame};
use asyncmachine::relay::{Relay, RelayConfig, Target};
use asyncmachine::server::{Server, ServerConfig};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
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

/// The close frame that ends a WebSocket (skipping any data before it).
async fn close_of(ws: &mut Ws) -> CloseFrame {
    within("a close frame", async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(Some(frame)))) => return frame,
                Some(Ok(WsMessage::Close(None))) => panic!("a close frame without a code"),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
}

/// Sends `bytes` as one binary message from one end of a bridge and waits for them at the other.
async fn passes(from: &mut Ws, to: &mut Ws, bytes: &[u8]) {
    from.send(WsMessage::binary(bytes.to_vec()))
        .await
        .expect("sent");
    let got = within("the bytes at the bridge's other end", async {
        loop {
            match to.next().await {
                Some(Ok(WsMessage::Binary(data))) => return data,
                Some(Ok(_)) => {}
                other => panic!("expected the bytes, got {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(&got[..], bytes);
}

/// Opens a WebSocket as a browser would (with the relay's own origin) and returns the close
/// code and reason the relay answers with.
async fn refused(relay: &Relay, path: &str) -> (u16, String) {
    let own = format!("http://{}", relay.local_endpoint().address);
    let mut ws = open(relay, path, Some(&own))
        .await
        .expect("a refusal is an upgrade a browser can read");
    let frame = close_of(&mut ws).await;
    (u16::from(frame.code), frame.reason.to_string())
}

/// One plain HTTP request with the given header lines; returns the whole answer.
async fn http_get(address: &str, path: &str, headers: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("an HTTP answer", async {
        let mut s = tokio::net::TcpStream::connect(address)
            .await
            .expect("connects");
        let mut head = format!("GET {path} HTTP/1.1\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.expect("writes");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reads");
        out
    })
    .await
}

fn hello(id: &str) -> Message {
    Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_id: id.into(),
        source: String::new(),
        schema_hash: 0,
        options: WantedOptions::default(),
        token: None,
    })
}

/// Every event logged in this test process, as `name=value` text: installed once, global.
fn capture_logs() -> Arc<Mutex<String>> {
    use std::fmt::Write as _;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata};

    struct Capture(Arc<Mutex<String>>);
    struct Line<'a>(&'a mut String);
    impl Visit for Line<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let mut line = String::new();
            span.record(&mut Line(&mut line));
            self.0.lock().expect("lock").push_str(&line);
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, values: &Record<'_>) {
            let mut line = String::new();
            values.record(&mut Line(&mut line));
            self.0.lock().expect("lock").push_str(&line);
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut line = String::new();
            event.record(&mut Line(&mut line));
            line.push('\n');
            self.0.lock().expect("lock").push_str(&line);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
    static LOGS: std::sync::OnceLock<Arc<Mutex<String>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(String::new()));
        tracing::subscriber::set_global_default(Capture(logs.clone()))
            .expect("no other subscriber in this test binary");
        logs
    })
    .clone()
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
        Client::handshake_at(relay, "/arpc/demo", None, id).await
    }

    async fn handshake_at(
        relay: &Relay,
        path: &str,
        origin: Option<&str>,
        id: &str,
    ) -> (Client, Vec<u64>) {
        let ws = open(relay, path, origin).await.expect("upgrade");
        let mut client = Client {
            ws,
            reader: FrameReader::new(FrameConfig::default()),
            clock: Vec::new(),
        };
        client.send(&hello(id)).await;
        match client.recv().await {
            Message::Welcome(w) => (client, w.snapshot.ticks),
            other => panic!("expected a welcome, got {other:?}"),
        }
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
                key: None,
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
async fn refusals_close_with_a_code_and_a_reason() {
    let config = RelayConfig {
        origins: vec!["https://app.example".into()],
        max_connections: 1,
        ..RelayConfig::default()
    };
    let (_machine, relay, _server) = setup(config).await;
    let mut ws = open(&relay, "/arpc/demo", Some("https://evil.example"))
        .await
        .expect("upgraded, to be told why not");
    let frame = close_of(&mut ws).await;
    assert_eq!(u16::from(frame.code), 4403);
    assert!(frame.reason.contains("evil.example"), "{}", frame.reason);

    let (code, reason) = refused(&relay, "/arpc/elsewhere").await;
    assert_eq!(code, 4404);
    assert!(reason.contains("this relay serves: demo"), "{reason}");
    let (code, _) = refused(&relay, "/127.0.0.1:22").await;
    assert_eq!(code, 4404, "no host:port from the URL, ever");

    // One bridge open (a listed origin): the next is told the relay is full.
    let (first, _) =
        Client::handshake_at(&relay, "/arpc/demo", Some("https://app.example"), "first").await;
    let (code, reason) = refused(&relay, "/arpc/demo").await;
    assert_eq!(code, 4503);
    assert!(reason.contains("full"), "{reason}");
    // Its slot comes back when it ends.
    drop(first);
    within("a free slot", async {
        loop {
            let own = format!("http://{}", relay.local_endpoint().address);
            let mut ws = open(&relay, "/arpc/demo", Some(&own))
                .await
                .expect("upgrade");
            let mut client = Client {
                ws,
                reader: FrameReader::new(FrameConfig::default()),
                clock: Vec::new(),
            };
            client.send(&hello("second")).await;
            ws = client.ws;
            match ws.next().await {
                Some(Ok(WsMessage::Binary(_))) => return,
                Some(Ok(WsMessage::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), 4503, "{}", frame.reason);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_and_a_missing_one_told_from_a_wrong_one() {
    let (_machine, relay, _server) = setup(RelayConfig {
        token: Some("s3cret".into()),
        ..RelayConfig::default()
    })
    .await;
    let (code, missing) = refused(&relay, "/arpc/demo").await;
    assert_eq!(code, 4401);
    assert!(missing.contains("none was given"), "{missing}");
    let (code, wrong) = refused(&relay, "/arpc/demo?token=guess").await;
    assert_eq!(code, 4401);
    assert!(wrong.contains("not this relay's token"), "{wrong}");
    assert!(
        !wrong.contains("guess"),
        "a reason never repeats the token: {wrong}"
    );
    let (code, _) = refused(&relay, "/arpc/elsewhere?token=guess").await;
    assert_eq!(code, 4401, "the token before the target list");
    Client::handshake_at(&relay, "/arpc/demo?token=s3cret", None, "with-token").await;

    // The target list is behind the same token.
    let address = relay.local_endpoint().address.clone();
    let host = format!("Host: {address}");
    let answer = http_get(&address, "/targets", &[&host]).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("none was given") && !answer.contains("demo"),
        "{answer}"
    );
    let answer = http_get(&address, "/targets?token=guess", &[&host]).await;
    assert!(answer.starts_with("HTTP/1.1 401") && answer.contains("not this relay's token"));
    let answer = http_get(
        &address,
        "/targets",
        &[&host, "Authorization: Bearer guess"],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    for auth in ["Authorization: Bearer s3cret", "X-Nothing: 1"] {
        let path = if auth.starts_with("X-") {
            "/targets?token=s3cret"
        } else {
            "/targets"
        };
        let answer = http_get(&address, path, &[&host, auth]).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains(r#""name":"demo""#),
            "{answer}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_host_is_refused_on_every_route_and_never_upgraded() {
    let (_machine, relay, _server) = setup(RelayConfig {
        hosts: vec!["relay.example".into()],
        ..RelayConfig::default()
    })
    .await;
    let address = relay.local_endpoint().address.clone();
    let port = address.rsplit_once(':').expect("host:port").1.to_owned();
    // DNS rebinding: attacker.test now resolves to the relay; the page's origin is its own.
    let rebound = format!("Host: attacker.test:{port}");
    let origin = format!("Origin: http://attacker.test:{port}");
    let upgrade = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    for path in [
        "/",
        "/index.html",
        "/page.js",
        "/am.js",
        "/targets",
        "/arpc/demo",
    ] {
        let answer = http_get(&address, path, &[&rebound, &origin]).await;
        assert!(answer.starts_with("HTTP/1.1 421"), "{path}: {answer}");
        assert!(
            answer.contains("attacker.test") && answer.contains("--host"),
            "{answer}"
        );
        assert!(
            answer.contains("X-Content-Type-Options: nosniff"),
            "{answer}"
        );
        let mut head = vec![rebound.as_str(), origin.as_str()];
        head.extend(upgrade);
        let answer = http_get(&address, path, &head).await;
        assert!(answer.starts_with("HTTP/1.1 421"), "not upgraded: {answer}");
    }
    let answer = http_get(&address, "/", &[]).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("no Host"),
        "{answer}"
    );
    for host in [
        address.clone(),
        format!("localhost:{port}"),
        format!("relay.example:{port}"),
        "relay.example".to_owned(),
    ] {
        let answer = http_get(&address, "/", &[&format!("Host: {host}")]).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_log() {
    let logs = capture_logs();
    let (_machine, relay, _server) = setup(RelayConfig {
        token: Some("REAL-t0ken-9f8e".into()),
        ..RelayConfig::default()
    })
    .await;
    let address = relay.local_endpoint().address.clone();
    let host = format!("Host: {address}");
    refused(&relay, "/arpc/demo?token=GUESSED-t0ken-1a2b").await;
    refused(&relay, "/arpc/nowhere?token=GUESSED-t0ken-1a2b").await;
    refused(&relay, "/arpc/demo?token=").await;
    http_get(&address, "/targets?token=GUESSED-t0ken-1a2b", &[&host]).await;
    http_get(
        &address,
        "/targets",
        &[&host, "Authorization: Bearer GUESSED-t0ken-1a2b"],
    )
    .await;
    http_get(&address, "/targets?token=REAL-t0ken-9f8e", &[&host]).await;
    http_get(
        &address,
        "/?token=REAL-t0ken-9f8e",
        &["Host: elsewhere.test"],
    )
    .await;
    let (client, _) =
        Client::handshake_at(&relay, "/arpc/demo?token=REAL-t0ken-9f8e", None, "ok").await;
    drop(client);
    // The refusals were logged (so the check below looks at the lines that would carry it).
    within("the refusals in the log", async {
        while logs.lock().expect("lock").matches("relay refused").count() < 6 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let text = logs.lock().expect("lock").clone();
    assert!(!text.contains("t0ken"), "a token in the log:\n{text}");
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

/// A node that refuses a frame over its limit answers and closes while the browser is still
/// sending the frame; the relay's next write to it fails. The refusal must still reach the
/// browser, ahead of the close, every time (it was lost to "upstream: Broken pipe" about one
/// time in four when the failed write ended the bridge at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_mid_message_reaches_the_browser_before_the_close() {
    use asyncmachine::proto::frame::put_varint;
    use asyncmachine::proto::message::RefusalKind;
    let (_machine, relay, _server) = setup(RelayConfig::default()).await;
    let max_frame = asyncmachine::proto::config::Limits::default().max_frame;
    for round in 0..20 {
        let ws = open(&relay, "/arpc/demo", None).await.expect("upgrade");
        let mut client = Client {
            ws,
            reader: FrameReader::new(FrameConfig::default()),
            clock: Vec::new(),
        };
        // A head claiming one byte over the node's limit, then the body in 64 KiB messages.
        let mut head = Vec::new();
        put_varint(&mut head, ((max_frame as u64) + 1) << 1);
        let _ = within("ws send", client.ws.send(WsMessage::binary(head))).await;
        for _ in 0..=(max_frame / 65536) {
            let sent = tokio::time::timeout(
                Duration::from_secs(5),
                client.ws.send(WsMessage::binary(vec![0u8; 65536])),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
        let refusal = within("the refusal", async {
            loop {
                if let Some(m) = client.reader.next_message().expect("protocol") {
                    return Ok(m);
                }
                match client.ws.next().await {
                    Some(Ok(WsMessage::Binary(data))) => client.reader.push(&data),
                    Some(Ok(WsMessage::Close(frame))) => return Err(frame),
                    Some(Ok(_)) => {}
                    other => panic!("round {round}: the bridge ended without a close: {other:?}"),
                }
            }
        })
        .await;
        match refusal {
            Ok(Message::Refused(r)) => assert_eq!(r.kind, RefusalKind::BadHello, "{r:?}"),
            other => panic!("round {round}: expected the node's refusal, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_says_so() {
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
    let (code, reason) = refused(&relay, "/arpc/dead").await;
    assert_eq!(code, 4502);
    assert!(reason.contains("unreachable"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_answers_says_so() {
    // A tls:// target that takes the connection and then says nothing: the TLS handshake
    // waits until the relay's handshake timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = silent.local_addr().expect("bound");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets: vec![Target {
            name: "mute".into(),
            endpoint: format!("tls://{address}/x").parse().expect("valid"),
        }],
        handshake_timeout: Duration::from_millis(300),
        transport: transport(),
        ..RelayConfig::default()
    })
    .await
    .expect("starts");
    let (code, reason) = refused(&relay, "/arpc/mute").await;
    assert_eq!(code, 4504);
    assert!(reason.contains("did not answer in time"), "{reason}");
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_means_nothing_from_the_browser_whatever_the_node_pushes() {
    let (machine, relay, _server) = setup(RelayConfig {
        idle_timeout: Duration::from_millis(1000),
        ..RelayConfig::default()
    })
    .await;
    let (mut pinging, _) = Client::handshake(&relay, "pinging").await;
    let pusher = {
        let machine = machine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                churn(&machine, 1);
            }
        })
    };
    // Two silent browsers in turn, each closed while pushes reach it; the pinging one (aRPC
    // pings, as am.js sends) lives through both.
    let mut ping = tokio::time::interval(Duration::from_millis(100));
    let mut nonce = 0;
    for round in 0..2 {
        let (mut silent, _) = Client::handshake(&relay, &format!("silent-{round}")).await;
        let mut pushed = 0;
        let frame = within("the silent browser's idle close", async {
            loop {
                tokio::select! {
                    message = silent.ws.next() => match message {
                        Some(Ok(WsMessage::Close(Some(frame)))) => return frame,
                        Some(Ok(WsMessage::Binary(_))) => pushed += 1,
                        Some(Ok(_)) => {}
                        other => panic!("expected an idle close, got {other:?}"),
                    },
                    _ = ping.tick() => {
                        nonce += 1;
                        pinging.send(&Message::Ping(nonce)).await;
                    }
                    // The pinging browser reads what it is sent, as a page does.
                    message = pinging.ws.next() => {
                        assert!(
                            matches!(message, Some(Ok(WsMessage::Binary(_)))),
                            "the pinging browser was closed: {message:?}"
                        );
                    }
                }
            }
        })
        .await;
        assert_eq!(u16::from(frame.code), 4408, "{}", frame.reason);
        assert!(
            frame.reason.contains("nothing from the browser"),
            "{}",
            frame.reason
        );
        assert!(pushed > 0, "the node pushed to the silent browser");
    }
    pusher.abort();
    // Still open: a mutation gets its reply.
    pinging
        .send(&Message::Mutate(MutateRequest {
            id: 9,
            kind: MutationKind::Add,
            states: vec![0],
            args: Args::new(),
            key: None,
        }))
        .await;
    loop {
        if let Message::MutateReply(reply) = pinging.recv().await {
            assert_eq!(reply.id, 9);
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_the_client_are_served_under_a_policy() {
    let (_machine, relay, _server) = setup(RelayConfig::default()).await;
    let address = relay.local_endpoint().address.clone();
    let host = format!("Host: {address}");
    let headers = [host.as_str()];
    let get = |path: &'static str| http_get(&address, path, &headers);
    let page = get("/").await;
    assert!(
        page.starts_with("HTTP/1.1 200")
            && page.contains(r#"<script type="module" src="/page.js">"#),
        "{page}"
    );
    assert!(
        get("/page.js")
            .await
            .contains(r#"import { Mirror, DEFAULT_KEEPALIVE_MS } from "./am.js""#)
    );
    let js = get("/am.js").await;
    assert!(js.contains("text/javascript") && js.contains("export class Mirror"));
    assert!(get("/page.css").await.contains("text/css"));
    let targets = get("/targets").await;
    assert!(
        targets.contains(r#"[{"machine":"worker","name":"demo"}]"#),
        "{targets}"
    );
    assert!(
        targets.contains("X-Relay-Idle-Timeout-Ms: 120000"),
        "{targets}"
    );
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    // Every answer: a policy that runs no inline script, may not be framed, is not sniffed.
    for path in [
        "/",
        "/index.html",
        "/page.js",
        "/page.css",
        "/am.js",
        "/targets",
        "/nope",
    ] {
        let answer = get(path).await;
        let (head, _) = answer.split_once("\r\n\r\n").expect("a head");
        let policy = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
            .unwrap_or_else(|| panic!("{path}: no policy in {head}"));
        assert!(
            policy.contains("frame-ancestors 'none'"),
            "{path}: {policy}"
        );
        // WebAssembly may compile ('wasm-unsafe-eval'); JavaScript's eval may not.
        assert!(!policy.contains("unsafe-inline") && !policy.contains("'unsafe-eval'"));
        assert!(
            head.contains("X-Content-Type-Options: nosniff"),
            "{path}: {head}"
        );
        assert!(head.contains("X-Frame-Options: DENY"), "{path}: {head}");
        if path.ends_with(".js")
            || path.ends_with(".css")
            || path.ends_with('/')
            || path.ends_with(".html")
        {
            assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
            assert!(
                policy.contains(&format!("connect-src 'self' ws://{address}")),
                "{policy}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasm_module_is_served_as_wasm_or_its_absence_explained() {
    let dir = std::env::temp_dir().join(format!("am-relay-wasm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let module = dir.join("am.wasm");
    // The smallest module: the magic number and the version (ASCII, so it reads as text).
    std::fs::write(&module, b"\0asm\x01\0\0\0").expect("written");
    for (wasm, expected) in [
        (module.clone(), "HTTP/1.1 200"),
        (dir.join("none.wasm"), "HTTP/1.1 503"),
    ] {
        let (_machine, relay, _server) = setup(RelayConfig {
            wasm,
            ..RelayConfig::default()
        })
        .await;
        let address = relay.local_endpoint().address.clone();
        let host = format!("Host: {address}");
        let answer = http_get(&address, "/am.wasm", &[&host]).await;
        assert!(answer.starts_with(expected), "{answer}");
        if expected.ends_with("200") {
            assert!(
                answer.contains("Content-Type: application/wasm"),
                "{answer}"
            );
            assert!(answer.ends_with("\0asm\x01\0\0\0"), "{answer:?}");
            assert!(answer.contains("'wasm-unsafe-eval'"), "{answer}");
        } else {
            assert!(
                answer.contains("none.wasm") && answer.contains("scripts/build-wasm.sh"),
                "{answer}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client that asks for a large file and then reads nothing holds neither the relay's task
/// nor its socket for long: the answer is cut after the idle timeout, or at once when the
/// relay stops, and the client reads what was sent before the cut, then the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_nobody_reads_is_cut_after_the_idle_timeout_or_when_the_relay_stops() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = std::env::temp_dir().join(format!("am-relay-unread-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let module = dir.join("am.wasm");
    // Far more than the socket buffers between the relay and the client hold.
    let size = 16 << 20;
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    bytes.resize(size, 0);
    std::fs::write(&module, &bytes).expect("written");
    for (idle, stop) in [
        (Duration::from_millis(300), false),
        (Duration::from_secs(120), true),
    ] {
        let (_machine, relay, _server) = setup(RelayConfig {
            wasm: module.clone(),
            idle_timeout: idle,
            ..RelayConfig::default()
        })
        .await;
        let address = relay.local_endpoint().address.clone();
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("buffer size");
        let mut client = within("connect", socket.connect(address.parse().expect("address")))
            .await
            .expect("connects");
        client
            .write_all(format!("GET /am.wasm HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
            .await
            .expect("writes");
        // The answer has begun (so the relay has the connection); from here on nothing is read.
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = within("the answer's head", client.read(&mut buf))
            .await
            .expect("reads");
        assert!(
            buf[..got].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..got])
        );
        if stop {
            relay.shutdown();
        }
        let cut = || {
            relay
                .stats()
                .answers_cut
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        eventually("the answer to be cut", || cut() == 1).await;
        within("the end of what was sent", async {
            loop {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        })
        .await;
        assert!(got < size, "{got} bytes: the whole module was sent");
    }
    let _ = std::fs::remove_dir_all(&dir);
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

/// Waits until the relay's offered names are `names`.
async fn offered(relay: &Relay, names: &[&str]) {
    within("the offered names", async {
        while relay.offered() != names {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The next `{"open": ID}` the relay sends on an offer socket: the ID, 32 hex digits.
async fn announced(offer: &mut Ws) -> String {
    within("a node connection announced", async {
        loop {
            match offer.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    let note: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                    let Some(id) = note["open"].as_str() else {
                        continue;
                    };
                    assert!(
                        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                        "{id}"
                    );
                    return id.to_owned();
                }
                Some(Ok(_)) => {}
                other => panic!("expected an announcement, got {other:?}"),
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listen_route_takes_allowed_names_once_and_hands_nodes_to_the_page() {
    let (_machine, relay, _server) = setup(RelayConfig {
        offers: vec!["bar".into()],
        handshake_timeout: Duration::from_millis(500),
        ..RelayConfig::default()
    })
    .await;
    let own = format!("http://{}", relay.local_endpoint().address);
    let (code, reason) = refused(&relay, "/offer/nope").await;
    assert_eq!(code, 4404, "{reason}");
    assert!(reason.contains("takes offers of: bar"), "{reason}");
    let (code, reason) = refused(&relay, "/listen/bar").await;
    assert_eq!(
        code, 4502,
        "nobody offers it yet, so a node retries: {reason}"
    );

    let mut offer = open(&relay, "/offer/bar", Some(&own))
        .await
        .expect("offers");
    // The relay says the offer stands: an open socket alone does not (a refusal opens too).
    let first = within("the offer's first note", offer.next()).await;
    match first {
        Some(Ok(WsMessage::Text(text))) => assert_eq!(text.as_str(), r#"{"offered":"bar"}"#),
        other => panic!("expected the offered note, got {other:?}"),
    }
    offered(&relay, &["bar"]).await;
    let (code, reason) = refused(&relay, "/offer/bar").await;
    assert_eq!(code, 4409, "{reason}");
    assert!(reason.contains("offered by another page"), "{reason}");
    let (code, _) = refused(&relay, "/offer/bar/999").await;
    assert_eq!(code, 4404, "no node waits as connection 999");

    // A node connects; the page is told, takes the connection, and bytes pass both ways.
    let mut node = open(&relay, "/listen/bar", None).await.expect("upgraded");
    let id = announced(&mut offer).await;
    let mut page = open(&relay, &format!("/offer/bar/{id}"), Some(&own))
        .await
        .expect("taken");
    passes(&mut node, &mut page, b"hello").await;
    passes(&mut page, &mut node, b"welcome").await;

    // A node connection the page does not take ends with 4504 after the handshake timeout.
    let mut late = open(&relay, "/listen/bar", None).await.expect("upgraded");
    announced(&mut offer).await;
    let frame = close_of(&mut late).await;
    assert_eq!(u16::from(frame.code), 4504, "{}", frame.reason);

    // The offer ends: the name is free again, and nodes are told nobody offers it.
    offer.close(None).await.expect("closed");
    offered(&relay, &[]).await;
    let (code, _) = refused(&relay, "/listen/bar").await;
    assert_eq!(code, 4502);
}

/// Any admitted peer may ask for `/offer/NAME/ID`, and the first to ask carries that node's
/// connection: the ID is told only to the offering page and cannot be guessed, so a peer
/// racing the page with the numbers a counter would make (or near misses) is refused, and the
/// page still takes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_connection_goes_only_to_the_page_told_its_id() {
    let (_machine, relay, _server) = setup(RelayConfig {
        offers: vec!["bar".into()],
        handshake_timeout: Duration::from_secs(5),
        ..RelayConfig::default()
    })
    .await;
    let own = format!("http://{}", relay.local_endpoint().address);
    let mut offer = open(&relay, "/offer/bar", Some(&own))
        .await
        .expect("offers");
    offered(&relay, &["bar"]).await;
    let mut node = open(&relay, "/listen/bar", None).await.expect("upgraded");
    let id = announced(&mut offer).await;
    let mut guesses: Vec<String> = (0..8).map(|n| n.to_string()).collect();
    guesses.push(format!("{:032x}", 1));
    guesses.push(id.to_uppercase());
    guesses.push(format!("{id}0"));
    guesses.push(id[..31].to_owned());
    guesses.push(format!("{id}/"));
    for guess in &guesses {
        let (code, reason) = refused(&relay, &format!("/offer/bar/{guess}")).await;
        assert_eq!(code, 4404, "{guess}: {reason}");
        assert!(!reason.contains(guess.as_str()), "{reason}");
    }
    let mut page = open(&relay, &format!("/offer/bar/{id}"), Some(&own))
        .await
        .expect("taken");
    passes(&mut node, &mut page, b"hello").await;
    // Taken once: the ID does not open a second socket to the node.
    let (code, _) = refused(&relay, &format!("/offer/bar/{id}")).await;
    assert_eq!(code, 4404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_needs_the_token_and_an_allowed_origin() {
    let (_machine, relay, _server) = setup(RelayConfig {
        offers: vec!["bar".into()],
        token: Some("s3cret".into()),
        ..RelayConfig::default()
    })
    .await;
    let (code, reason) = refused(&relay, "/offer/bar").await;
    assert_eq!(code, 4401, "{reason}");
    let mut ws = open(
        &relay,
        "/offer/bar?token=s3cret",
        Some("https://evil.example"),
    )
    .await
    .expect("upgraded");
    assert_eq!(u16::from(close_of(&mut ws).await.code), 4403);
    let (code, _) = refused(&relay, "/listen/bar").await;
    assert_eq!(code, 4401, "a node needs the token too");
    assert!(relay.offered().is_empty());
}

/// A browser that keeps pinging but reads nothing while its target pushes: the relay's write
/// to it waits (the one write whose deadline is armed), and after the idle timeout the bridge
/// ends and its slot is freed, though the browser is not idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_never_reads_is_dropped_after_the_idle_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![1u8; 64 * 1024];
                while tokio::io::AsyncWriteExt::write_all(&mut s, &chunk)
                    .await
                    .is_ok()
                {}
            });
        }
    });
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets: vec![Target {
            name: "flood".into(),
            endpoint: format!("tcp://{addr}").parse().expect("endpoint"),
        }],
        idle_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_millis(500),
        ..RelayConfig::default()
    })
    .await
    .expect("relay starts");
    let ws = open(&relay, "/arpc/flood", None).await.expect("upgraded");
    // The reading half is held and never polled.
    let (mut pings, _unread) = ws.split();
    within("the bridge to end", async {
        while relay.open_connections() > 0 {
            let _ = pings.send(WsMessage::Ping(Vec::new().into())).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        relay
            .stats()
            .bytes_to_browser
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

/// The relay matches a path's bytes without percent-decoding them, so a name a browser would
/// escape could be configured and never reached: such names are refused when the relay starts,
/// saying which characters a name may have.
#[tokio::test]
async fn names_a_page_cannot_ask_for_are_refused_at_start() {
    let endpoint: asyncmachine::transport::Endpoint =
        "tcp://127.0.0.1:1/demo".parse().expect("an endpoint");
    for name in [
        "my demo",
        "a/b",
        "q?x",
        "caf\u{e9}",
        "",
        ".",
        "..",
        &"n".repeat(129),
    ] {
        let for_target = RelayConfig {
            listen: any_port("ws"),
            targets: vec![Target {
                name: name.to_owned(),
                endpoint: endpoint.clone(),
            }],
            ..RelayConfig::default()
        };
        let for_offer = RelayConfig {
            listen: any_port("ws"),
            offers: vec![name.to_owned()],
            ..RelayConfig::default()
        };
        for config in [for_target, for_offer] {
            let refused = Relay::start(config).await.expect_err("refused");
            let said = refused.to_string();
            assert!(
                said.contains("cannot be asked for in a URL path")
                    && said.contains("letters, digits"),
                "{name:?}: {said}"
            );
        }
    }
    let relay = Relay::start(RelayConfig {
        listen: any_port("ws"),
        targets: vec![Target {
            name: "demo-1_v2.0~x".into(),
            endpoint,
        }],
        offers: vec!["bar.page".into()],
        ..RelayConfig::default()
    })
    .await
    .expect("names of URL-safe characters start");
    drop(relay);
}
