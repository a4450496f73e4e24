//! Helpers shared by the network tests: bounded waits, servers on port 0, raw protocol clients.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of these helpers"
)]

pub mod chromium;
pub mod raw;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use asyncmachine::certs::DevCa;
use asyncmachine::machine::{Args, Machine, Schema, SchemaDef, StateDef, StateSource};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::proto::message::{Hello, WantedOptions, Welcome};
use asyncmachine::proto::{FrameConfig, FrameReader, Message, PROTOCOL_VERSION, encode_frame};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{self, BoxStream, Endpoint, TlsConfig, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every await in a test is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(20);

pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {LIMIT:?} waiting for {what}"),
    }
}

/// TLS material for every test of this process: one CA, one node certificate (named
/// `test-node`, valid for 127.0.0.1), used by servers and clients alike.
pub fn transport() -> TransportConfig {
    static TLS: std::sync::OnceLock<TransportConfig> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let ca = DevCa::new("test CA").expect("a CA");
        let node = ca.issue("test-node").expect("a certificate");
        let tls = TlsConfig::from_pem(
            Some(node.cert.as_bytes()),
            Some(node.key.as_bytes()),
            Some(ca.pem().cert.as_bytes()),
            false,
        )
        .expect("usable TLS material");
        TransportConfig::with_tls(tls)
    })
    .clone()
}

/// An endpoint to bind on for a scheme: port 0 (or a fresh name) so tests never collide.
pub fn any_port(scheme: &str) -> Endpoint {
    match scheme {
        "mem" => "mem://0".parse().expect("valid"),
        other => format!("{other}://127.0.0.1:0").parse().expect("valid"),
    }
}

pub fn abc_schema() -> Schema {
    Schema::new(SchemaDef::of_states(
        ["A", "B", "C"].map(StateDef::new).to_vec(),
    ))
    .expect("valid")
}

/// The sgp benchmark's schema (`am_node::sgp::schema`, `topologies/schemas/sgp.toml`): a
/// schema other than [`abc_schema`] for tests of schema mismatches and changes.
pub fn sgp_schema() -> Schema {
    let def = toml::from_str(include_str!("../../topologies/schemas/sgp.toml"))
        .expect("the shipped schema parses");
    Schema::new(def).expect("the shipped schema is valid")
}

/// A server with one source named `worker`, listening on the scheme; returns the endpoint
/// of the source.
pub async fn serve(
    source: Arc<dyn StateSource>,
    config: ServerConfig,
    scheme: &str,
) -> (Server, Endpoint) {
    let server = Server::new(ServerConfig {
        transport: transport(),
        ..config
    });
    server.add_source("worker", source).expect("first source");
    let endpoint = server.listen(&any_port(scheme)).await.expect("binds");
    (server, endpoint.with_machine("worker"))
}

pub fn mirror_config(id: &str) -> MirrorConfig {
    MirrorConfig {
        client_id: id.to_owned(),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        transport: transport(),
        ..MirrorConfig::default()
    }
}

pub async fn mirror(endpoint: &Endpoint, id: &str) -> Mirror {
    within(
        "mirror connect",
        Mirror::connect(endpoint, mirror_config(id)),
    )
    .await
    .expect("mirror connects")
}

/// Waits, within [`LIMIT`], until `holds` is true (for what no future reports).
pub async fn eventually(what: &str, holds: impl Fn() -> bool) {
    within(what, async {
        while !holds() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// A tree of depth three: `root` <- a <- b <- c, each served to the next over one scheme.
/// The servers must live as long as the mirrors are used.
pub struct Chain {
    pub root: Machine,
    pub root_at: Endpoint,
    pub a: Mirror,
    pub b: Mirror,
    pub c: Mirror,
    /// The servers of the root, `a` and `b`.
    pub servers: Vec<Server>,
    /// Where `b` is served (what `c` mirrors).
    pub b_at: Endpoint,
}

/// Builds a [`Chain`] over `root`; `a_serves_with` configures the server in front of `a`.
pub async fn chain(root: Machine, scheme: &str, a_serves_with: ServerConfig) -> Chain {
    let (root_server, root_at) =
        serve(Arc::new(root.clone()), ServerConfig::default(), scheme).await;
    let a = mirror(&root_at, "a").await;
    let (a_server, a_at) = serve(Arc::new(a.clone()), a_serves_with, scheme).await;
    let b = mirror(&a_at, "b").await;
    let (b_server, b_at) = serve(Arc::new(b.clone()), ServerConfig::default(), scheme).await;
    let c = mirror(&b_at, "c").await;
    Chain {
        root,
        root_at,
        a,
        b,
        c,
        servers: vec![root_server, a_server, b_server],
        b_at,
    }
}

/// Waits until the mirror's clock has caught up with `target` (ticks only grow between
/// resyncs, so "every tick at least" is "equal" once reached), then checks equality.
pub async fn converged(mirror: &dyn StateSource, target: &[u64]) {
    let pairs = target.iter().copied().enumerate().collect();
    within(
        "convergence",
        mirror.wait(asyncmachine::machine::Condition::TicksAtLeast(pairs)),
    )
    .await
    .expect("waits");
    assert_eq!(
        mirror.clock(),
        target,
        "mirror {} overshot the source",
        mirror.id()
    );
}

/// Flips states on a machine `n` times.
pub fn churn(machine: &Machine, n: usize) {
    for i in 0..n {
        let state = ["A", "B", "C"][i % 3];
        if machine.is1(state) {
            machine.remove(&[state], Args::new()).expect("taken in");
        } else {
            machine.add(&[state], Args::new()).expect("taken in");
        }
    }
}

/// A client that speaks the protocol by hand, to misbehave on purpose.
pub struct RawClient {
    pub stream: BoxStream,
    pub reader: FrameReader,
}

impl RawClient {
    pub async fn connect(endpoint: &Endpoint) -> RawClient {
        let stream = within("raw connect", transport::connect(endpoint, &transport()))
            .await
            .expect("connects");
        RawClient {
            stream,
            reader: FrameReader::new(FrameConfig::default()),
        }
    }

    pub fn hello(endpoint: &Endpoint, id: &str) -> Message {
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_id: id.to_owned(),
            source: endpoint.machine.clone().unwrap_or_default(),
            schema_hash: 0,
            options: WantedOptions::default(),
            token: None,
        })
    }

    pub async fn send(&mut self, message: &Message) {
        let mut out = Vec::new();
        encode_frame(&FrameConfig::default(), message, &mut out);
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        within("raw send", async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .expect("sends");
    }

    /// The next message, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Message> {
        within("raw recv", async {
            loop {
                if let Some(message) = self
                    .reader
                    .next_message()
                    .expect("the server speaks protocol")
                {
                    return Some(message);
                }
                let mut buf = [0u8; 4096];
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.reader.push(&buf[..n]),
                }
            }
        })
        .await
    }

    /// Handshakes with default options and returns the welcome.
    pub async fn handshake(endpoint: &Endpoint, id: &str) -> (RawClient, Welcome) {
        let mut client = RawClient::connect(endpoint).await;
        client.send(&RawClient::hello(endpoint, id)).await;
        match client.recv().await {
            Some(Message::Welcome(welcome)) => (client, welcome),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Reads until the server closes, skipping pings and diffs; returns the last word.
    pub async fn last_word(&mut self) -> Option<Message> {
        let mut last = None;
        while let Some(message) = self.recv().await {
            match message {
                Message::Ping(_) | Message::Diff(_) => {}
                other => last = Some(other),
            }
        }
        last
    }
}

/// A collector (`am-node dbg`'s) on ports 0, with an empty history of up to 10 000 entries.
pub async fn collector() -> asyncmachine::telemetry::collector::Collector {
    use asyncmachine::telemetry::collector::{Collector, CollectorConfig};
    Collector::start(
        CollectorConfig {
            telemetry: "127.0.0.1:0".into(),
            console: "127.0.0.1:0".into(),
            max_entries: 10_000,
        },
        asyncmachine::telemetry::History::default(),
    )
    .await
    .expect("collector starts")
}
