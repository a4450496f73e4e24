//! The relay: a WebSocket front (ws or wss) that lets browsers reach configured targets (nodes'
//! tcp, tls or quic endpoints) by name, and serves the demo page and the JavaScript client.
//!
//! It bridges bytes and parses no more of the protocol than it must: none of it. Browsers reach
//! only the targets named in the configuration (`/arpc/NAME`), never a host or port taken from
//! the request. Each upgrade is checked before it is accepted (target, origin, token,
//! connection limit) and refused with an HTTP status and a readable body; each connection is
//! bounded (message size, idle time). `am-relay` is this module behind a command line.

pub mod config;

use crate::http;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info, warn};

use crate::transport::{self, Endpoint, Scheme, TransportConfig};

/// The demo page and the client module, served by every relay.
const INDEX_HTML: &str = include_str!("../../relay/web/index.html");
const AM_JS: &str = include_str!("../../relay/web/am.js");

/// One target browsers may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    /// The node's endpoint; its machine (if any) is what the page mirrors.
    pub endpoint: Endpoint,
}

/// How a relay behaves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `ws://host:port` or `wss://host:port` (then `transport` needs a certificate).
    pub listen: Endpoint,
    pub targets: Vec<Target>,
    /// Origins (`scheme://host:port`) whose pages may connect. The relay's own origin is always
    /// allowed; a request with no Origin header (not a browser) is allowed.
    pub origins: Vec<String>,
    /// Browsers must present this token (`?token=`).
    pub token: Option<String>,
    pub max_connections: usize,
    /// Largest WebSocket message accepted from a browser.
    pub max_message: usize,
    /// A bridge with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// The request head and the upstream connection must come within this.
    pub handshake_timeout: Duration,
    /// TLS for wss:// termination and for tls:// and quic:// targets.
    pub transport: TransportConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: Endpoint::new(Scheme::Ws, "127.0.0.1:7480"),
            targets: Vec::new(),
            origins: Vec::new(),
            token: None,
            max_connections: 1024,
            max_message: 1 << 20,
            idle_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(5),
            transport: TransportConfig::default(),
        }
    }
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the relay listens on ws:// or wss://, not {0}")]
    BadListen(Endpoint),
    #[error("target {0:?} is defined twice")]
    DuplicateTarget(String),
    #[error(
        "target {name:?}: the relay reaches tcp://, tls:// and quic:// endpoints, not {endpoint}"
    )]
    BadTarget { name: String, endpoint: Endpoint },
    #[error("wss:// needs a certificate and key (tls)")]
    NoTls,
    #[error("cannot listen on {endpoint}: {error}")]
    Bind {
        endpoint: Endpoint,
        error: std::io::Error,
    },
}

/// Counters of one relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub connections: AtomicU64,
    pub bridges: AtomicU64,
    pub refused: AtomicU64,
    pub upstream_failures: AtomicU64,
    pub bytes_to_upstream: AtomicU64,
    pub bytes_to_browser: AtomicU64,
}

struct Inner {
    config: RelayConfig,
    targets: BTreeMap<String, Target>,
    tls: Option<TlsAcceptor>,
    slots: Arc<Semaphore>,
    stats: RelayStats,
    shutdown: watch::Sender<bool>,
}

/// A running relay.
pub struct Relay {
    inner: Arc<Inner>,
    local: Endpoint,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("local", &self.local.to_string())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Binds and starts serving.
    pub async fn start(config: RelayConfig) -> Result<Relay, RelayError> {
        let tls = match config.listen.scheme {
            Scheme::Ws => None,
            Scheme::Wss => {
                let server = config
                    .transport
                    .tls
                    .as_ref()
                    .and_then(|t| t.server.clone())
                    .ok_or(RelayError::NoTls)?;
                Some(TlsAcceptor::from(server))
            }
            _ => return Err(RelayError::BadListen(config.listen.clone())),
        };
        let mut targets = BTreeMap::new();
        for target in &config.targets {
            if !matches!(
                target.endpoint.scheme,
                Scheme::Tcp | Scheme::Tls | Scheme::Quic | Scheme::Mem
            ) {
                return Err(RelayError::BadTarget {
                    name: target.name.clone(),
                    endpoint: target.endpoint.clone(),
                });
            }
            if targets
                .insert(target.name.clone(), target.clone())
                .is_some()
            {
                return Err(RelayError::DuplicateTarget(target.name.clone()));
            }
        }
        let listener = TcpListener::bind(&config.listen.address)
            .await
            .map_err(|error| RelayError::Bind {
                endpoint: config.listen.clone(),
                error,
            })?;
        let local_addr = listener.local_addr().map_err(|error| RelayError::Bind {
            endpoint: config.listen.clone(),
            error,
        })?;
        let local = Endpoint::new(config.listen.scheme, local_addr.to_string());
        let inner = Arc::new(Inner {
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config,
            targets,
            tls,
            stats: RelayStats::default(),
            shutdown: watch::channel(false).0,
        });
        info!(endpoint = %local, targets = ?inner.targets.keys().collect::<Vec<_>>(), "relay listening");
        tokio::spawn(accept_loop(inner.clone(), listener));
        Ok(Relay { inner, local })
    }

    /// Where browsers connect (real port when bound to 0).
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// The page's address: `http://` for ws, `https://` for wss.
    pub fn page_url(&self) -> String {
        let scheme = if self.local.scheme == Scheme::Wss {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/", self.local.address)
    }

    pub fn stats(&self) -> &RelayStats {
        &self.inner.stats
    }

    /// Stops accepting and closes every bridge.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                inner.stats.connections.fetch_add(1, Ordering::Relaxed);
                let _ = tcp.set_nodelay(true);
                let inner = inner.clone();
                tokio::spawn(async move {
                    let result = match inner.tls.clone() {
                        Some(acceptor) => {
                            match timeout(inner.config.handshake_timeout, acceptor.accept(tcp))
                                .await
                            {
                                Ok(Ok(tls)) => serve(&inner, tls).await,
                                Ok(Err(e)) => Err(transport::tls::explain(e).to_string()),
                                Err(_) => Err("TLS handshake timed out".to_owned()),
                            }
                        }
                        None => serve(&inner, tcp).await,
                    };
                    if let Err(reason) = result {
                        debug!(%peer, %reason, "relay connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "relay accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One browser connection: an HTTP request, answered with a file, a refusal, or an upgrade.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    inner: &Arc<Inner>,
    mut stream: S,
) -> Result<(), String> {
    let limit = inner.config.handshake_timeout;
    let (request, rest) = match timeout(limit, http::read_head(&mut stream)).await {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => {
            let _ = http::respond(
                &mut stream,
                400,
                "text/plain",
                &format!("bad request: {e}\n"),
            )
            .await;
            return Err(e);
        }
        Err(_) => return Err("no request within the handshake timeout".into()),
    };
    let path = request.path.split('?').next().unwrap_or_default();
    if !request.is_upgrade() {
        return match (request.method.as_str(), path) {
            ("GET", "/" | "/index.html") => http::respond(&mut stream, 200, "text/html; charset=utf-8", INDEX_HTML).await,
            ("GET", "/am.js") => http::respond(&mut stream, 200, "text/javascript; charset=utf-8", AM_JS).await,
            ("GET", "/targets") => {
                let list: Vec<serde_json::Value> = inner
                    .targets
                    .values()
                    .map(|t| serde_json::json!({ "name": t.name, "machine": t.endpoint.machine.clone().unwrap_or_default() }))
                    .collect();
                let body = serde_json::Value::Array(list).to_string();
                http::respond(&mut stream, 200, "application/json", &body).await
            }
            _ => http::respond(&mut stream, 404, "text/plain", "not found\n").await,
        }
        .map_err(|e| e.to_string());
    }

    // An upgrade: check everything before accepting it.
    let refuse = |status: u16, body: String| (status, body);
    let checked = (|| {
        // Browsers use /arpc/NAME; /NAME serves mirrors whose endpoint is ws://relay/NAME.
        let name = path
            .strip_prefix("/arpc/")
            .or_else(|| path.strip_prefix('/'))
            .unwrap_or_default();
        let target = inner.targets.get(name).ok_or_else(|| {
            let names: Vec<&str> = inner.targets.keys().map(String::as_str).collect();
            refuse(
                404,
                format!(
                    "unknown target {name:?}; this relay serves: {}\n",
                    names.join(", ")
                ),
            )
        })?;
        if let Some(origin) = request.header("origin")
            && !origin_allowed(inner, origin, request.header("host"))
        {
            return Err(refuse(
                403,
                format!(
                    "origin {origin:?} may not use this relay; add it to the relay's origins\n"
                ),
            ));
        }
        if let Some(token) = &inner.config.token
            && http::query(&request.path, "token").as_deref() != Some(token.as_str())
        {
            return Err(refuse(401, "this relay needs a token: ?token=...\n".into()));
        }
        let key = request
            .header("sec-websocket-key")
            .ok_or_else(|| refuse(400, "missing Sec-WebSocket-Key\n".into()))?;
        if request.header("sec-websocket-version") != Some("13") {
            return Err(refuse(
                400,
                "only WebSocket version 13 is supported\n".into(),
            ));
        }
        Ok((target.clone(), key.to_owned()))
    })();
    let (target, key) = match checked {
        Ok(ok) => ok,
        Err((status, body)) => {
            inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            info!(path = %request.path, status, reason = %body.trim(), "relay refused an upgrade");
            let _ = http::respond(&mut stream, status, "text/plain", &body).await;
            return Err(body);
        }
    };
    let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
        inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        let body = format!(
            "the relay is full ({} connections); try again later\n",
            inner.config.max_connections
        );
        let _ = http::respond(&mut stream, 503, "text/plain", &body).await;
        return Err(body);
    };

    // The upstream first: a browser should not get a socket that leads nowhere.
    let upstream = match timeout(
        limit,
        transport::connect(&target.endpoint, &inner.config.transport),
    )
    .await
    {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(e)) => {
            inner
                .stats
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            let body = format!("target {} is unreachable: {e}\n", target.name);
            let _ = http::respond(&mut stream, 502, "text/plain", &body).await;
            return Err(body);
        }
        Err(_) => {
            inner
                .stats
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
            let body = format!("target {} did not answer in time\n", target.name);
            let _ = http::respond(&mut stream, 504, "text/plain", &body).await;
            return Err(body);
        }
    };
    http::accept_upgrade(&mut stream, &key)
        .await
        .map_err(|e| e.to_string())?;
    // A relay moves bulk for few connections: room for whole messages, unlike the small
    // buffers of a node's many idle mirrors.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .max_message_size(Some(inner.config.max_message))
        .max_frame_size(Some(inner.config.max_message));
    let ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await;
    inner.stats.bridges.fetch_add(1, Ordering::Relaxed);
    let result = bridge(inner, ws, upstream).await;
    drop(permit);
    result
}

fn origin_allowed(inner: &Inner, origin: &str, host: Option<&str>) -> bool {
    // The relay's own pages (same host and port) are always welcome.
    let own = host.is_some_and(|host| {
        origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host)
    });
    own || inner.config.origins.iter().any(|o| o == origin)
}

/// Pumps bytes both ways until either side ends, the relay stops, or nothing moves for the
/// idle timeout.
async fn bridge<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    ws: WebSocketStream<S>,
    upstream: transport::BoxStream,
) -> Result<(), String> {
    let (mut to_browser, mut from_browser) = ws.split();
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let idle = inner.config.idle_timeout;
    // The last traffic, as milliseconds since the bridge began: a store per message, checked on
    // a coarse tick, where a timer re-armed per message would cost more than the message.
    let began = tokio::time::Instant::now();
    let last_traffic = AtomicU64::new(0);
    let touch = || last_traffic.store(began.elapsed().as_millis() as u64, Ordering::Relaxed);
    let mut shutdown = inner.shutdown.subscribe();

    let browser_to_upstream = async {
        loop {
            let message = match from_browser.next().await {
                None => return Ok(()),
                Some(Ok(message)) => message,
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    return Err((CloseCode::Size, format!("message too large: {e}")));
                }
                Some(Err(e)) => return Err((CloseCode::Protocol, e.to_string())),
            };
            match message {
                Message::Binary(data) => {
                    up_write
                        .write_all(&data)
                        .await
                        .map_err(|e| (CloseCode::Away, format!("upstream: {e}")))?;
                    up_write
                        .flush()
                        .await
                        .map_err(|e| (CloseCode::Away, format!("upstream: {e}")))?;
                    inner
                        .stats
                        .bytes_to_upstream
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    touch();
                }
                Message::Text(_) => {
                    return Err((
                        CloseCode::Unsupported,
                        "aRPC travels in binary messages".into(),
                    ));
                }
                Message::Close(_) => return Ok(()),
                _ => {}
            }
        }
    };
    let upstream_to_browser = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = up_read
                .read(&mut buf)
                .await
                .map_err(|e| (CloseCode::Away, format!("upstream: {e}")))?;
            if n == 0 {
                return Err((
                    CloseCode::Away,
                    "the target closed the connection".to_owned(),
                ));
            }
            to_browser
                .send(Message::binary(buf[..n].to_vec()))
                .await
                .map_err(|e| (CloseCode::Away, format!("browser: {e}")))?;
            inner
                .stats
                .bytes_to_browser
                .fetch_add(n as u64, Ordering::Relaxed);
            touch();
        }
    };
    let idle_watch = async {
        let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
        loop {
            tick.tick().await;
            let quiet = began
                .elapsed()
                .saturating_sub(Duration::from_millis(last_traffic.load(Ordering::Relaxed)));
            if quiet >= idle {
                return (CloseCode::Normal, format!("idle for {idle:?}"));
            }
        }
    };
    let ended: Result<(), (CloseCode, String)> = tokio::select! {
        r = browser_to_upstream => r,
        r = upstream_to_browser => r,
        e = idle_watch => Err(e),
        _ = shutdown.wait_for(|s| *s) => Err((CloseCode::Away, "relay shutting down".into())),
    };
    let _ = up_write.shutdown().await;
    match ended {
        Ok(()) => Ok(()),
        Err((code, reason)) => {
            // Close reasons are limited to 123 bytes.
            let short: String = reason.chars().take(120).collect();
            let frame = CloseFrame {
                code,
                reason: short.clone().into(),
            };
            let _ = to_browser.send(Message::Close(Some(frame))).await;
            Err(reason)
        }
    }
}
