//! The relay: a WebSocket front (ws or wss) that lets browsers reach configured targets (nodes'
//! tcp, tls or quic endpoints) by name, and serves the demo page and the JavaScript client.
//!
//! It bridges bytes and parses no more of the protocol than it must: none of it. Browsers reach
//! only the targets named in the configuration (`/arpc/NAME`), never a host or port taken from
//! the request. Every request must name the relay in `Host` (`host`, against DNS rebinding);
//! one that does not, or is not HTTP, gets an HTTP status. An upgrade that is refused after that
//! (origin, token, target, connection limit, unreachable target) is accepted and closed at once
//! with a [`RelayClose`] code and a reason, because a browser sees nothing of a refused upgrade.
//! Each connection is bounded (message size, idle time). `am-relay` is this module behind a
//! command line.

pub mod config;
mod host;
mod listen;
mod pages;
mod refusal;

pub use refusal::RelayClose;

use crate::http;
use host::HostCheck;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info, warn};

use crate::transport::{self, Endpoint, Scheme, TransportConfig};

/// One target browsers may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name pages ask for (a WebSocket to `/arpc/NAME` or `/NAME`) and `/targets` lists.
    pub name: String,
    /// The node's endpoint; its machine (if any) is what the page mirrors.
    pub endpoint: Endpoint,
}

/// How a relay behaves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `ws://host:port` or `wss://host:port` (then `transport` needs a certificate).
    pub listen: Endpoint,
    /// The nodes browsers may reach, by name.
    pub targets: Vec<Target>,
    /// Origins (`scheme://host:port`) whose pages may connect. The relay's own origin is always
    /// allowed; a request with no Origin header (not a browser) is allowed.
    pub origins: Vec<String>,
    /// Host names (without port) the relay answers to besides its listen address, e.g. the
    /// name a reverse proxy or DNS gives it. Any other `Host` is refused (DNS rebinding).
    pub hosts: Vec<String>,
    /// Browsers must present this token (`?token=` on the WebSocket, `Authorization: Bearer`
    /// or `?token=` on `/targets`).
    pub token: Option<String>,
    /// Bridges open at once; one more is closed with [`RelayClose::Full`].
    pub max_connections: usize,
    /// Largest WebSocket message (and single WebSocket frame) accepted from a browser.
    pub max_message: usize,
    /// A bridge that receives nothing from its browser (no message, no ping, no pong) for this
    /// long is closed with [`RelayClose::Idle`]; traffic from the target does not count. It
    /// also bounds an HTTP answer (a page's file, am.wasm, a refusal): a client that has not
    /// taken all of it within this long is dropped, rather than holding the connection.
    pub idle_timeout: Duration,
    /// The request head and the upstream connection must come within this.
    pub handshake_timeout: Duration,
    /// TLS for wss:// termination and for tls:// and quic:// targets.
    pub transport: TransportConfig,
    /// The WebAssembly module pages load as `/am.wasm` (read once, at start).
    pub wasm: PathBuf,
    /// Names pages may offer machines under (`/offer/NAME`), for nodes to mirror at
    /// `ws://relay/listen/NAME`.
    pub offers: Vec<String>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: Endpoint::new(Scheme::Ws, "127.0.0.1:7480"),
            targets: Vec::new(),
            origins: Vec::new(),
            hosts: Vec::new(),
            token: None,
            max_connections: 1024,
            max_message: 1 << 20,
            idle_timeout: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(5),
            transport: TransportConfig::default(),
            wasm: PathBuf::from(pages::DEFAULT_WASM),
            offers: Vec::new(),
        }
    }
}

/// The longest target or offer name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Whether a page can ask for `name` in a path as it is: the relay matches the path's bytes
/// without percent-decoding them, so a name with characters a browser escapes (a space, `/`,
/// `?`, non-ASCII) could be configured and never reached. URL-safe characters only (RFC 3986's
/// unreserved set), and not only dots.
fn name_usable(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        // `.` and `..` are path steps: a browser resolves them away.
        && name.bytes().any(|b| b != b'.')
}

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The listen endpoint is not `ws://` or `wss://`.
    #[error("the relay listens on ws:// or wss://, not {0}")]
    BadListen(Endpoint),
    /// Two targets have the same name.
    #[error("target {0:?} is defined twice")]
    DuplicateTarget(String),
    /// A target's or offer's name is not one a page can put in a path as it is.
    #[error(
        "{kind} name {name:?} cannot be asked for in a URL path as it is: use 1 to {MAX_NAME_BYTES} \
         letters, digits, '-', '_', '.' or '~', not only dots"
    )]
    BadName {
        /// `target` or `offer`.
        kind: &'static str,
        /// The name (cut to 64 characters).
        name: String,
    },
    /// A target's scheme is one the relay cannot reach (`tcp://`, `tls://`, `quic://` only).
    #[error(
        "target {name:?}: the relay reaches tcp://, tls:// and quic:// endpoints, not {endpoint}"
    )]
    BadTarget {
        /// The target's name.
        name: String,
        /// Its endpoint.
        endpoint: Endpoint,
    },
    /// `wss://` without a certificate and key in `transport`.
    #[error("wss:// needs a certificate and key (tls)")]
    NoTls,
    /// The listen address could not be bound (taken, or not this host's).
    #[error("cannot listen on {endpoint}: {error}")]
    Bind {
        /// The listen endpoint.
        endpoint: Endpoint,
        /// The operating system's error.
        error: std::io::Error,
    },
}

/// Counters of one relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// HTTP connections accepted.
    pub connections: AtomicU64,
    /// Bridges opened between a browser and a target (or a node and an offering page).
    pub bridges: AtomicU64,
    /// Requests refused (Host, Origin, token, unknown target, full).
    pub refused: AtomicU64,
    /// Bridges whose target could not be reached.
    pub upstream_failures: AtomicU64,
    /// Bytes forwarded from browsers to targets.
    pub bytes_to_upstream: AtomicU64,
    /// Bytes forwarded from targets to browsers.
    pub bytes_to_browser: AtomicU64,
    /// HTTP answers cut short: the client had not read them within the idle timeout, or the
    /// relay stopped while they were being sent.
    pub answers_cut: AtomicU64,
}

struct Inner {
    config: RelayConfig,
    /// Machines pages offer now, and node connections waiting for their page.
    offers: listen::Offers,
    /// The module's bytes, or why the page cannot have them.
    wasm: Result<Vec<u8>, String>,
    targets: BTreeMap<String, Target>,
    tls: Option<TlsAcceptor>,
    hosts: HostCheck,
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
        let names = config.targets.iter().map(|t| ("target", &t.name));
        for (kind, name) in names.chain(config.offers.iter().map(|n| ("offer", n))) {
            if !name_usable(name) {
                return Err(RelayError::BadName {
                    kind,
                    name: name.chars().take(64).collect(),
                });
            }
        }
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
        // A relay without the module still bridges; its page says what is missing.
        let wasm = tokio::fs::read(&config.wasm).await.map_err(|error| {
            warn!(path = %config.wasm.display(), %error, "no am.wasm: pages cannot run; build it with scripts/build-wasm.sh");
            pages::wasm_missing(&config.wasm, &error)
        });
        let inner = Arc::new(Inner {
            offers: listen::Offers::default(),
            wasm,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            hosts: HostCheck::new(local_addr.ip(), &config.hosts),
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

    /// The names pages offer machines under now (the listen route).
    pub fn offered(&self) -> Vec<String> {
        self.inner.offers.names()
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

    /// The relay's counters since it started.
    pub fn stats(&self) -> &RelayStats {
        &self.inner.stats
    }

    /// Browser connections open now (upgrades in progress and bridges).
    pub fn open_connections(&self) -> usize {
        self.inner.config.max_connections - self.inner.slots.available_permits()
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

/// The most read from a target at once: one message to the browser.
const UPSTREAM_READ: usize = 64 * 1024;

/// A refusal after the upgrade: the close code and the reason the browser is shown.
type Refused = (RelayClose, String);

/// One browser connection: an HTTP request, answered with a file, a refusal, or an upgrade.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    inner: &Arc<Inner>,
    mut stream: S,
) -> Result<(), String> {
    let limit = inner.config.handshake_timeout;
    let (request, rest) = match timeout(limit, http::read_head(&mut stream)).await {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => {
            let _ = answer_within(inner, async {
                http::refuse_head(&mut stream, &e).await;
                Ok(())
            })
            .await;
            return Err(e.to_string());
        }
        Err(_) => return Err("no request within the handshake timeout".into()),
    };
    // Never the path with its query: that is where a browser's token travels. Logged with `?`
    // (escaped): a path can hold a bare line feed.
    let route = request.route().to_owned();
    // The Host first, on every route: a name the relay does not answer to is DNS rebinding
    // (or a proxy that needs `hosts`), and is never upgraded.
    let host = match request.header("host") {
        Some(host) if inner.hosts.allows(host) => host.to_owned(),
        other => {
            inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            let body = match other {
                None => "no Host header; HTTP/1.1 needs one\n".to_owned(),
                Some(host) => format!(
                    "this relay does not answer to the host {host:?}; reach it by its address, \
                     or add the name to the relay's hosts (--host)\n"
                ),
            };
            info!(?route, reason = %body.trim(), "relay refused a request for another host");
            let status = if other.is_none() { 400 } else { 421 };
            let _ = answer_within(
                inner,
                http::respond(&mut stream, status, "text/plain", &body),
            )
            .await;
            return Err(body);
        }
    };
    if !request.is_upgrade() {
        return answer_within(
            inner,
            serve_http(inner, &mut stream, &request, &route, &host),
        )
        .await;
    }
    let key = match http::upgrade_key(&request) {
        Ok(key) => key.to_owned(),
        Err((status, reason)) => {
            let body = format!("{reason}\n");
            let _ = answer_within(
                inner,
                http::respond(&mut stream, status, "text/plain", &body),
            )
            .await;
            return Err(reason);
        }
    };

    // The listen route: pages offering machines, nodes mirroring them.
    if let Some(listen_route) = listen::ListenRoute::parse(&route) {
        let admitted = admit_peer(inner, &request, &host)
            .and_then(|permit| listen::check(inner, &listen_route).map(|()| permit));
        http::accept_upgrade(&mut stream, &key)
            .await
            .map_err(|e| e.to_string())?;
        let ws = WebSocketStream::from_partially_read(
            stream,
            rest,
            Role::Server,
            Some(browser_limits(inner.config.max_message)),
        )
        .await;
        return match admitted {
            Err((close, reason)) => {
                inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                info!(?route, code = close.code(), %reason, "relay refused a listen-route peer");
                close_with(ws, CloseCode::from(close.code()), &reason, limit).await;
                Err(reason)
            }
            Ok(permit) => {
                let result = listen::serve(inner, ws, listen_route).await;
                drop(permit);
                result
            }
        };
    }

    // Checked before the upgrade, told after it: a browser sees only a close frame.
    let admitted = match admit(inner, &request, &route, &host) {
        Ok((target, permit)) => connect_upstream(inner, &target)
            .await
            .map(|upstream| (permit, upstream)),
        Err(refused) => Err(refused),
    };
    http::accept_upgrade(&mut stream, &key)
        .await
        .map_err(|e| e.to_string())?;
    let ws = WebSocketStream::from_partially_read(
        stream,
        rest,
        Role::Server,
        Some(browser_limits(inner.config.max_message)),
    )
    .await;
    match admitted {
        Err((close, reason)) => {
            inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            info!(?route, code = close.code(), %reason, "relay refused a browser");
            close_with(ws, CloseCode::from(close.code()), &reason, limit).await;
            Err(reason)
        }
        Ok((permit, upstream)) => {
            inner.stats.bridges.fetch_add(1, Ordering::Relaxed);
            let result = bridge(inner, ws, upstream).await;
            drop(permit);
            result
        }
    }
}

/// The relay's WebSocket configuration: browser messages and frames bounded by `max_message`;
/// messages to the browser are the target's bytes as read (at most [`UPSTREAM_READ`]), flushed
/// one by one.
fn browser_limits(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * UPSTREAM_READ)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// An HTTP answer within bounds: a client that has not taken all of it within the idle timeout
/// is dropped (with the task, its socket and what is left to send), and no answer outlives the
/// relay. Without this, a client that asks for am.wasm and never reads holds all three.
async fn answer_within(
    inner: &Inner,
    answer: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), String> {
    let idle = inner.config.idle_timeout;
    let mut shutdown = inner.shutdown.subscribe();
    let cut = tokio::select! {
        answered = timeout(idle, answer) => match answered {
            Ok(answered) => return answered.map_err(|e| e.to_string()),
            Err(_) => format!(
                "the client took no answer within {} ms (the relay's idle timeout)",
                idle.as_millis()
            ),
        },
        _ = shutdown.wait_for(|s| *s) => "relay shutting down".to_owned(),
    };
    inner.stats.answers_cut.fetch_add(1, Ordering::Relaxed);
    Err(cut)
}

/// Plain HTTP: the page's files for anyone who reached the relay by its name; the target list
/// only with the token, like the WebSocket route.
async fn serve_http<S: AsyncWrite + Unpin>(
    inner: &Inner,
    stream: &mut S,
    request: &http::Request,
    route: &str,
    host: &str,
) -> std::io::Result<()> {
    let secure = inner.config.listen.scheme == Scheme::Wss;
    let policy = pages::policy(host, secure);
    if request.method != "GET" {
        return http::respond(stream, 405, "text/plain", "only GET is served here\n").await;
    }
    if let Some(file) = pages::file(route) {
        return http::respond_with(stream, 200, file.content_type, &policy, &[], file.body).await;
    }
    if route == "/am.wasm" {
        return match &inner.wasm {
            Ok(bytes) => {
                http::respond_with(stream, 200, pages::WASM_TYPE, &policy, &[], bytes).await
            }
            Err(why) => http::respond(stream, 503, "text/plain", why).await,
        };
    }
    if route != "/targets" {
        return http::respond(stream, 404, "text/plain", "not found\n").await;
    }
    let bearer = request
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned);
    let presented = bearer.or_else(|| http::query(&request.path, "token"));
    if let Err((_, reason)) = check_token(inner, presented.as_deref()) {
        inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        info!(?route, %reason, "relay refused the target list");
        return http::respond(stream, 401, "text/plain", &format!("{reason}\n")).await;
    }
    let list: Vec<serde_json::Value> = inner
        .targets
        .values()
        .map(|t| serde_json::json!({ "name": t.name, "machine": t.endpoint.machine.clone().unwrap_or_default() }))
        .collect();
    let body = serde_json::Value::Array(list).to_string();
    // The page pings well within the idle timeout; it learns the timeout here.
    let idle = inner.config.idle_timeout.as_millis().to_string();
    http::respond_with(
        stream,
        200,
        "application/json",
        &policy,
        &[("X-Relay-Idle-Timeout-Ms", &idle)],
        &body,
    )
    .await
}

/// Whether a peer may open a socket at all: its origin, its token, a free slot.
fn admit_peer(
    inner: &Inner,
    request: &http::Request,
    host: &str,
) -> Result<OwnedSemaphorePermit, Refused> {
    if let Some(origin) = request.header("origin")
        && !host::origin_allowed(origin, host, &inner.config.origins)
    {
        return Err((
            RelayClose::Origin,
            format!("origin {origin:?} may not use this relay; add it to the relay's origins"),
        ));
    }
    check_token(inner, http::query(&request.path, "token").as_deref())?;
    inner.slots.clone().try_acquire_owned().map_err(|_| {
        (
            RelayClose::Full,
            format!(
                "the relay is full ({} connections); try again later",
                inner.config.max_connections
            ),
        )
    })
}

/// Whether a browser may open a bridge: its origin, its token, its target, a free slot.
fn admit(
    inner: &Inner,
    request: &http::Request,
    route: &str,
    host: &str,
) -> Result<(Target, OwnedSemaphorePermit), Refused> {
    if let Some(origin) = request.header("origin")
        && !host::origin_allowed(origin, host, &inner.config.origins)
    {
        return Err((
            RelayClose::Origin,
            format!("origin {origin:?} may not use this relay; add it to the relay's origins"),
        ));
    }
    check_token(inner, http::query(&request.path, "token").as_deref())?;
    // Browsers use /arpc/NAME; /NAME serves mirrors whose endpoint is ws://relay/NAME.
    let name = route
        .strip_prefix("/arpc/")
        .or_else(|| route.strip_prefix('/'))
        .unwrap_or_default();
    let target = inner.targets.get(name).ok_or_else(|| {
        let names: Vec<&str> = inner.targets.keys().map(String::as_str).collect();
        let shown: String = name.chars().take(40).collect();
        (
            RelayClose::UnknownTarget,
            format!(
                "unknown target {shown:?}; this relay serves: {}",
                names.join(", ")
            ),
        )
    })?;
    let permit = inner.slots.clone().try_acquire_owned().map_err(|_| {
        (
            RelayClose::Full,
            format!(
                "the relay is full ({} connections); try again later",
                inner.config.max_connections
            ),
        )
    })?;
    Ok((target.clone(), permit))
}

/// The token check. The reasons tell a missing token from a wrong one and never repeat it.
fn check_token(inner: &Inner, presented: Option<&str>) -> Result<(), Refused> {
    let Some(expected) = &inner.config.token else {
        return Ok(());
    };
    match presented {
        None | Some("") => Err((
            RelayClose::Token,
            "this relay needs a token and none was given: add ?token=... to the page's address"
                .into(),
        )),
        Some(presented) if crate::proto::acl::token_matches(presented, expected) => Ok(()),
        Some(_) => Err((
            RelayClose::Token,
            "the token given is not this relay's token; check it with whoever runs the relay"
                .into(),
        )),
    }
}

/// The target's connection, opened before the upgrade so a browser never gets a socket that
/// leads nowhere.
async fn connect_upstream(inner: &Inner, target: &Target) -> Result<transport::BoxStream, Refused> {
    let connected = timeout(
        inner.config.handshake_timeout,
        transport::connect(&target.endpoint, &inner.config.transport),
    )
    .await;
    let refused = match connected {
        Ok(Ok(upstream)) => return Ok(upstream),
        Ok(Err(e)) => (
            RelayClose::TargetUnreachable,
            format!("target {} is unreachable: {e}", target.name),
        ),
        Err(_) => (
            RelayClose::TargetTimeout,
            format!("target {} did not answer in time", target.name),
        ),
    };
    inner
        .stats
        .upstream_failures
        .fetch_add(1, Ordering::Relaxed);
    Err(refused)
}

/// Sends a close frame and waits (within `limit`) for the browser's answer, so the frame is
/// read before the socket goes: closing with the browser's unread bytes would reset it, and a
/// reset loses the frame (the browser then sees only 1006).
async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    code: CloseCode,
    reason: &str,
    limit: Duration,
) {
    // Close reasons are limited to 123 bytes.
    let mut short = String::new();
    for c in reason.chars() {
        if short.len() + c.len_utf8() > 123 {
            break;
        }
        short.push(c);
    }
    let frame = CloseFrame {
        code,
        reason: short.into(),
    };
    let _ = timeout(limit, async {
        if ws.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// How a bridge's pump ended.
enum Ended {
    /// The browser closed, or said it was done.
    Browser,
    /// A write to the target failed: the target has closed, and may have sent its last word
    /// (a refusal, an error) before it did. That is still to be forwarded.
    UpstreamWrite(String),
    /// Anything else: close the browser with this code and reason.
    Close(CloseCode, String),
}

/// How long a bridge whose writes to the target failed keeps forwarding what the target sent
/// before it closed. The target has closed already, so its bytes are in flight or buffered:
/// this bounds only a target that half-closed and went quiet.
const LAST_WORD: Duration = Duration::from_secs(2);

/// Pumps bytes both ways until either side ends, the relay stops, or the browser sends nothing
/// for the idle timeout.
///
/// A target that refuses a browser's input (a frame over its limit, a bad hello) answers and
/// closes while the browser may still be sending. The relay's next write to it then fails
/// (`Broken pipe`, `Connection reset`) while the answer sits unread in the relay's socket:
/// the bridge then goes on forwarding from the target until it ends (or [`LAST_WORD`]
/// passes), so the browser gets the target's reason rather than the relay's write error.
async fn bridge<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    ws: WebSocketStream<S>,
    upstream: transport::BoxStream,
) -> Result<(), String> {
    let (mut to_browser, mut from_browser) = ws.split();
    let (mut up_read, mut up_write) = tokio::io::split(upstream);
    let idle = inner.config.idle_timeout;
    // The last frame from the browser, as milliseconds since the bridge began: a store per
    // message, checked on a coarse tick, where a timer re-armed per message would cost more
    // than the message. Only the browser's frames count: a node that pushes to a browser that
    // has gone quiet must not keep it open.
    let began = tokio::time::Instant::now();
    let heard = AtomicU64::new(0);
    let touch = || heard.store(began.elapsed().as_millis() as u64, Ordering::Relaxed);
    let mut shutdown = inner.shutdown.subscribe();

    // The pumps borrow the halves; they end here, so the halves can be rejoined to close.
    let ended: Result<(), (CloseCode, String)> = {
        let browser_to_upstream = async {
            loop {
                let message = match from_browser.next().await {
                    None => return Ended::Browser,
                    Some(Ok(message)) => message,
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        return Ended::Close(CloseCode::Size, format!("message too large: {e}"));
                    }
                    Some(Err(e)) => return Ended::Close(CloseCode::Protocol, e.to_string()),
                };
                touch();
                match message {
                    Message::Binary(data) => {
                        let written = async {
                            up_write.write_all(&data).await?;
                            up_write.flush().await
                        };
                        if let Err(e) = written.await {
                            return Ended::UpstreamWrite(format!("upstream: {e}"));
                        }
                        inner
                            .stats
                            .bytes_to_upstream
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                    Message::Text(_) => {
                        return Ended::Close(
                            CloseCode::Unsupported,
                            "aRPC travels in binary messages".into(),
                        );
                    }
                    Message::Close(_) => return Ended::Browser,
                    // Pings (answered by tungstenite) and pongs only keep the bridge alive.
                    _ => {}
                }
            }
        };
        let upstream_to_browser = async {
            let mut buf = vec![0u8; UPSTREAM_READ];
            loop {
                let n = up_read
                    .read(&mut buf)
                    .await
                    .map_err(|e| (CloseCode::Away, format!("upstream: {e}")))?;
                if n == 0 {
                    return Err::<Infallible, _>((
                        CloseCode::Away,
                        "the target closed the connection".to_owned(),
                    ));
                }
                // A write deadline, as nodes keep for their clients: a browser that sends
                // pings but never reads would otherwise hold this bridge (and its slot) for
                // ever, long after the node dropped the relay for not reading.
                let mut send = std::pin::pin!(to_browser.send(Message::binary(buf[..n].to_vec())));
                // Almost every message goes at once: the timer is armed only for one that
                // waits, not for every message.
                let first =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(send.as_mut().poll(cx))).await;
                let sent = match first {
                    std::task::Poll::Ready(sent) => Ok(sent),
                    std::task::Poll::Pending => tokio::time::timeout(idle, send).await,
                };
                match sent {
                    Ok(sent) => sent.map_err(|e| (CloseCode::Away, format!("browser: {e}")))?,
                    Err(_) => {
                        return Err((
                            CloseCode::Policy,
                            format!(
                                "the browser read nothing for {} ms (the relay's idle timeout)",
                                idle.as_millis()
                            ),
                        ));
                    }
                }
                inner
                    .stats
                    .bytes_to_browser
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        };
        let idle_watch = async {
            let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
            loop {
                tick.tick().await;
                let quiet = began
                    .elapsed()
                    .saturating_sub(Duration::from_millis(heard.load(Ordering::Relaxed)));
                if quiet >= idle {
                    return (
                        CloseCode::from(RelayClose::Idle.code()),
                        format!(
                            "nothing from the browser for {} ms (the relay's idle timeout)",
                            idle.as_millis()
                        ),
                    );
                }
            }
        };
        // Pinned here rather than moved into the select: after a failed write the same pump
        // goes on, with whatever it had read and not yet sent.
        tokio::pin!(upstream_to_browser);
        let first = tokio::select! {
            ended = browser_to_upstream => ended,
            r = &mut upstream_to_browser => {
                let Err((code, reason)) = r;
                Ended::Close(code, reason)
            }
            e = idle_watch => Ended::Close(e.0, e.1),
            _ = shutdown.wait_for(|s| *s) => Ended::Close(CloseCode::Away, "relay shutting down".into()),
        };
        match first {
            Ended::Browser => Ok(()),
            Ended::Close(code, reason) => Err((code, reason)),
            Ended::UpstreamWrite(reason) => {
                debug!(%reason, "a write to the target failed; forwarding its last bytes");
                match timeout(LAST_WORD, &mut upstream_to_browser).await {
                    // The target's own end (it closed, or reset after its last bytes) is the
                    // reason the browser gets; the failed write told nothing more.
                    Ok(Err(ended)) => Err(ended),
                    Err(_) => Err((CloseCode::Away, reason)),
                }
            }
        }
    };
    let _ = up_write.shutdown().await;
    match ended {
        Ok(()) => Ok(()),
        Err((code, reason)) => {
            let ws = to_browser
                .reunite(from_browser)
                .map_err(|_| "the WebSocket halves do not match".to_owned())?;
            close_with(ws, code, &reason, inner.config.handshake_timeout).await;
            Err(reason)
        }
    }
}
