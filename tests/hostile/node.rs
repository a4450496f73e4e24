//! The node under attack, one per transport: a server with short timeouts and a small frame
//! limit (so timeouts and limits are reached quickly), a long-lived mirror that must never
//! notice the attacks, and for the relay target an am-relay in front of a tcp node. Also the
//! well-behaved client that checks, after every input, that the node still serves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use asyncmachine::machine::{Args, Machine, StateSource};
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig};
use asyncmachine::proto::Message;
use asyncmachine::proto::acl::Acl;
use asyncmachine::proto::config::Limits;
use asyncmachine::proto::message::MutateResult;
use asyncmachine::relay::{Relay, RelayConfig, Target};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{self, BoxStream, Endpoint};

use crate::bodies::{TOKEN, frame, hello, message_frame, mutate_body};
use crate::common::raw::{self, Link, RawWs, Received};
use crate::common::{abc_schema, any_port, mirror_config, serve, within};

/// The node's largest frame body: small, so that limits are reached with little traffic.
pub const MAX_FRAME: usize = 64 * 1024;
/// A hello must come within this (and the transport's handshake too). Short, so that stalled
/// peers are cut quickly; long enough for a TLS handshake on a loaded two-core machine.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
/// A client silent this long is dropped; a write blocked this long drops its client.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// The relay's token (`?token=`), besides the node's own in every hello.
pub const RELAY_TOKEN: &str = "r3lay-t0ken";
/// The one origin, besides its own, whose pages may use the relay.
pub const ALLOWED_ORIGIN: &str = "https://app.example";

/// Where the hostile peer comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Tls,
    Quic,
    Ws,
    Wss,
    /// am-relay (ws) in front of a tcp node.
    Relay,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Quic => "quic",
            Kind::Ws => "ws",
            Kind::Wss => "wss",
            Kind::Relay => "relay",
        }
    }

    /// Whether the first bytes a client sends are an HTTP upgrade.
    pub fn speaks_http(self) -> bool {
        matches!(self, Kind::Ws | Kind::Wss | Kind::Relay)
    }

    /// Whether a TLS handshake comes first on a TCP socket.
    pub fn tls_on_tcp(self) -> bool {
        matches!(self, Kind::Tls | Kind::Wss)
    }
}

/// Remote waits one client may have pending: small, so that a flood passes it quickly.
pub const MAX_REMOTE_WAITS: usize = 16;

pub fn server_config() -> ServerConfig {
    ServerConfig {
        name: "hostile".into(),
        limits: Limits {
            max_frame: MAX_FRAME,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            keepalive: Duration::from_millis(200),
            max_remote_waits: MAX_REMOTE_WAITS,
            ..Limits::default()
        },
        acl: Acl {
            token: Some(TOKEN.into()),
            ..Acl::default()
        },
        ..ServerConfig::default()
    }
}

/// A node (and relay) under attack.
pub struct Node {
    pub kind: Kind,
    pub server: Server,
    pub source: Machine,
    /// The node's own listener (for the relay target: the tcp node behind it).
    pub endpoint: Endpoint,
    pub relay: Option<Relay>,
    /// Connected before the first input; must stay connected through all of them.
    watcher: Mirror,
    fresh: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("kind", &self.kind)
            .field("endpoint", &self.endpoint.to_string())
            .finish_non_exhaustive()
    }
}

impl Node {
    pub async fn start(kind: Kind) -> Node {
        let source = Machine::builder(abc_schema()).id("worker").build();
        let scheme = match kind {
            Kind::Relay => "tcp",
            other => other.name(),
        };
        let (server, endpoint) = serve(Arc::new(source.clone()), server_config(), scheme).await;
        let relay = match kind {
            Kind::Relay => Some(
                Relay::start(RelayConfig {
                    listen: any_port("ws"),
                    targets: vec![Target {
                        name: "worker".into(),
                        endpoint: endpoint.clone(),
                    }],
                    origins: vec![ALLOWED_ORIGIN.into()],
                    token: Some(RELAY_TOKEN.into()),
                    max_message: MAX_FRAME,
                    // Longer than the node's: a silent client hears the node's Bye.
                    idle_timeout: 3 * IDLE_TIMEOUT,
                    handshake_timeout: HANDSHAKE_TIMEOUT,
                    ..RelayConfig::default()
                })
                .await
                .expect("the relay starts"),
            ),
            _ => None,
        };
        let config = MirrorConfig {
            token: Some(TOKEN.into()),
            keepalive: Duration::from_millis(100),
            ..mirror_config("watcher")
        };
        let watcher = within("the watcher connects", Mirror::connect(&endpoint, config))
            .await
            .expect("the watcher connects");
        Node {
            kind,
            server,
            source,
            endpoint,
            relay,
            watcher,
            fresh: 0,
        }
    }

    /// The address hostile peers dial: the relay's for the relay target, else the node's.
    pub fn address(&self) -> String {
        match &self.relay {
            Some(relay) => relay.local_endpoint().address.clone(),
            None => self.endpoint.address.clone(),
        }
    }

    /// The path of the relay's WebSocket route to the node, with the relay's token.
    pub fn relay_path(&self) -> String {
        format!("/arpc/worker?token={RELAY_TOKEN}")
    }

    /// A protocol byte stream to the node, before the hello.
    pub async fn dial(&self) -> Result<Link, String> {
        match self.kind {
            Kind::Relay => {
                let address = self.address();
                let io = raw::tcp(&address).await.map_err(|e| e.to_string())?;
                let request = raw::upgrade_request(&address, &self.relay_path(), &[]);
                Ok(Link::ws(RawWs::upgrade(io, &request).await?))
            }
            _ => transport::connect(&self.endpoint, &crate::common::transport())
                .await
                .map(Link::stream)
                .map_err(|e| e.to_string()),
        }
    }

    /// The stream an HTTP request goes on: TCP, or TLS for wss.
    pub async fn http_stream(&self) -> Result<BoxStream, String> {
        let address = self.address();
        match self.kind {
            Kind::Wss => raw::tls(&address).await,
            _ => raw::tcp(&address).await,
        }
        .map_err(|e| e.to_string())
    }

    /// A raw WebSocket to the node (ws, wss) or through the relay, after a valid upgrade.
    pub async fn ws(&self) -> Result<RawWs, String> {
        let address = self.address();
        let path = match self.kind {
            Kind::Relay => self.relay_path(),
            _ => "/worker".to_owned(),
        };
        let io = self.http_stream().await?;
        RawWs::upgrade(io, &raw::upgrade_request(&address, &path, &[])).await
    }

    /// A well-behaved client from scratch: handshake, snapshot, a mutation that executes, and
    /// a change at the source that arrives as a diff.
    pub async fn serves_a_fresh_client(&mut self) -> Result<(), String> {
        self.fresh += 1;
        let id = format!("fresh-{}", self.fresh);
        let bounded = tokio::time::timeout(Duration::from_secs(10), async {
            let mut link = self
                .dial()
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            link.send(&hello(&id))
                .await
                .map_err(|e| format!("hello: {e}"))?;
            let mut clock = match significant(&mut link).await {
                Received::Message(Message::Welcome(w)) => w.snapshot.ticks,
                other => return Err(format!("expected a welcome, got {other:?}")),
            };
            if clock != self.source.clock() {
                return Err(format!(
                    "the welcome's snapshot {clock:?} is not the source's clock {:?}",
                    self.source.clock()
                ));
            }
            // Toggle A: a mutation that always executes.
            let kind = u64::from(self.source.is1("A"));
            let body = mutate_body(1, kind, &[0], &[0]);
            link.send(&frame(&body))
                .await
                .map_err(|e| format!("mutate: {e}"))?;
            loop {
                match link.next().await {
                    Received::Message(Message::MutateReply(reply)) => {
                        if reply.id != 1 || reply.result != MutateResult::Executed {
                            return Err(format!("mutation not executed: {reply:?}"));
                        }
                        if !reply.diff.changes.iter().any(|&(s, d)| s == 0 && d == 1) {
                            return Err(format!("the reply's diff misses A: {reply:?}"));
                        }
                        apply(&mut clock, &reply.diff.changes);
                        break;
                    }
                    Received::Message(Message::Diff(d)) => apply(&mut clock, &d.changes),
                    Received::Message(Message::Ping(_)) => {}
                    other => return Err(format!("expected the mutation's reply, got {other:?}")),
                }
            }
            // A change at the source reaches the client as a push.
            let c = if self.source.is1("C") {
                self.source.remove(&["C"], Args::new())
            } else {
                self.source.add(&["C"], Args::new())
            };
            c.map_err(|e| format!("local mutation: {e}"))?;
            let target = self.source.clock();
            while clock != target {
                match link.next().await {
                    Received::Message(Message::Diff(d)) => apply(&mut clock, &d.changes),
                    Received::Message(Message::Ping(_)) => {}
                    other => return Err(format!("expected a diff, got {other:?}")),
                }
            }
            let _ = link
                .send(&message_frame(&Message::Bye {
                    reason: "checked".into(),
                }))
                .await;
            Ok(())
        })
        .await;
        bounded.unwrap_or_else(|_| Err("the fresh client timed out".into()))
    }

    /// After the whole suite: the watcher never lost its connection and has the clock.
    pub async fn watcher_went_on(&self) -> Result<(), String> {
        if self.watcher.connection() != ConnState::Ready {
            return Err(format!("the watcher is {:?}", self.watcher.connection()));
        }
        let reconnects = self.watcher.stats().reconnects.load(Ordering::Relaxed);
        if reconnects != 0 {
            return Err(format!("the watcher reconnected {reconnects} times"));
        }
        let target = self.source.clock();
        let caught_up = tokio::time::timeout(
            Duration::from_secs(5),
            self.watcher
                .wait(asyncmachine::machine::Condition::TicksAtLeast(
                    target.iter().copied().enumerate().collect(),
                )),
        )
        .await;
        match caught_up {
            Ok(Ok(_)) if self.watcher.clock() == target => Ok(()),
            other => Err(format!(
                "the watcher's clock {:?} is not the source's {target:?} ({other:?})",
                self.watcher.clock()
            )),
        }
    }
}

fn apply(clock: &mut [u64], changes: &[(u32, u64)]) {
    for &(s, delta) in changes {
        if let Some(tick) = clock.get_mut(s as usize) {
            *tick += delta;
        }
    }
}

/// The next message that is not keepalive or a push, or how the link ended.
pub async fn significant(link: &mut Link) -> Received {
    loop {
        match link.next().await {
            Received::Message(Message::Ping(_) | Message::Pong(_) | Message::Diff(_)) => {}
            other => return other,
        }
    }
}
