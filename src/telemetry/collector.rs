//! The collector (`am-node dbg`): a TCP listener for nodes' telemetry (one JSON record a
//! line), the history (`super::history`), dumps on disk (zstd-compressed lines), and the web
//! console: a static page and a WebSocket over which the page gets the history and then every
//! new entry live, and asks for time travel and filters. Everything read from a peer is
//! bounded: line length, connections, WebSocket message size.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::{debug, info, warn};

use super::history::{DEFAULT_MAX_ENTRIES, Entry, Filter, History};
use super::record::{MAX_LINE, Record};
use super::reorder::{DEFAULT_WINDOW_MS, Reorder};
use super::sender::now_ms;
use crate::http;

/// Most nodes sending at once; more are refused (closed at once).
pub const MAX_SENDERS: usize = 256;
/// Most consoles at once.
pub const MAX_CONSOLES: usize = 64;
/// Most entries a console gets at once (on connecting, or for a filter); older ones are
/// counted, not sent.
pub const CONSOLE_BATCH: usize = 5000;
/// Largest message a console may send.
const MAX_CONSOLE_MESSAGE: usize = 64 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries buffered for each console; one that falls further behind is told to catch up.
const LIVE_BUFFER: usize = 8192;

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");
/// The console's policy: its own script and style, its own WebSocket, nothing else.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Where the collector listens and what it keeps.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    /// `host:port` for nodes' telemetry (port 0: any).
    pub telemetry: String,
    /// `host:port` for the console (port 0: any).
    pub console: String,
    /// Most entries the history keeps in memory (the oldest go first); default
    /// [`DEFAULT_MAX_ENTRIES`] (100 000), `--max-entries` of `am-node dbg`.
    pub max_entries: usize,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            telemetry: "127.0.0.1:6831".into(),
            console: "127.0.0.1:6832".into(),
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// Why the collector could not start, or a dump could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// A listener could not bind (the address is in use, not local, or not `host:port`).
    /// Pick a free address (`--listen`, `--console`), or port 0 for any.
    #[error("cannot listen on {address}: {error}; pick a free address or port 0")]
    Listen {
        /// The `host:port` it tried.
        address: String,
        /// Why the bind failed.
        error: std::io::Error,
    },
    /// A dump could not be read or written: the file is missing or not readable, its
    /// directory not writable, it is not zstd, or it decompresses to over [`MAX_DUMP_BYTES`].
    /// Check the path and its permissions.
    #[error("dump {path}: {error}")]
    Io {
        /// The dump's path.
        path: String,
        /// What the file system or the decompressor said.
        error: std::io::Error,
    },
    /// A dump was read but its content was refused (not a dump, another version, a bad line:
    /// see [`DumpError`](super::history::DumpError)).
    #[error("dump {path}: {error}")]
    Dump {
        /// The dump's path.
        path: String,
        /// What was wrong with its content.
        error: super::history::DumpError,
    },
}

struct Inner {
    history: Mutex<History>,
    /// Records held a moment to be put in the order they happened (`super::reorder`).
    reorder: Mutex<Reorder>,
    /// Each new entry, as the console's JSON.
    live: broadcast::Sender<Arc<str>>,
    senders: AtomicUsize,
    consoles: AtomicUsize,
}

impl Inner {
    fn history(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running collector.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
    telemetry_addr: std::net::SocketAddr,
    console_addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("telemetry", &self.telemetry_addr)
            .field("console", &self.console_addr)
            .finish()
    }
}

impl Collector {
    /// Listens for telemetry and for consoles, starting from `history` (an imported dump, or
    /// empty).
    pub async fn start(
        config: CollectorConfig,
        history: History,
    ) -> Result<Collector, CollectorError> {
        let bind = |address: String| async move {
            TcpListener::bind(&address)
                .await
                .map_err(|error| CollectorError::Listen { address, error })
        };
        let telemetry = bind(config.telemetry.clone()).await?;
        let console = bind(config.console.clone()).await?;
        let inner = Arc::new(Inner {
            history: Mutex::new(history),
            reorder: Mutex::new(Reorder::new(DEFAULT_WINDOW_MS)),
            live: broadcast::channel(LIVE_BUFFER).0,
            senders: AtomicUsize::new(0),
            consoles: AtomicUsize::new(0),
        });
        let (stop, _) = watch::channel(false);
        let collector = Collector {
            telemetry_addr: telemetry
                .local_addr()
                .map_err(|error| CollectorError::Listen {
                    address: config.telemetry.clone(),
                    error,
                })?,
            console_addr: console
                .local_addr()
                .map_err(|error| CollectorError::Listen {
                    address: config.console.clone(),
                    error,
                })?,
            inner: inner.clone(),
            stop,
        };
        tokio::spawn(accept_senders(
            inner.clone(),
            telemetry,
            collector.stop.subscribe(),
        ));
        tokio::spawn(accept_consoles(
            inner.clone(),
            console,
            collector.stop.subscribe(),
        ));
        tokio::spawn(release_due(inner, collector.stop.subscribe()));
        info!(telemetry = %collector.telemetry_addr, console = %collector.console_addr, "collector listening");
        Ok(collector)
    }

    /// Where nodes send telemetry: `tcp://ADDR`.
    pub fn telemetry_addr(&self) -> std::net::SocketAddr {
        self.telemetry_addr
    }

    /// Where the console is served (the bound address: a real port when port 0 was asked);
    /// [`Collector::console_url`] gives it as a URL.
    pub fn console_addr(&self) -> std::net::SocketAddr {
        self.console_addr
    }

    /// The console's address, `http://ADDR/`.
    pub fn console_url(&self) -> String {
        format!("http://{}/", self.console_addr)
    }

    /// Runs `f` with the history (under its lock: keep it short).
    pub fn with_history<T>(&self, f: impl FnOnce(&History) -> T) -> T {
        f(&self.inner.history())
    }

    /// Writes the history to `path` (zstd-compressed dump lines), with the records still held
    /// for ordering.
    pub fn export(&self, path: &Path) -> Result<(), CollectorError> {
        release(&self.inner, u64::MAX);
        let text = {
            let history = self.inner.history();
            let mut text = String::new();
            for line in history.export_lines() {
                text.push_str(&line);
                text.push('\n');
            }
            text
        };
        write_dump(path, text.as_bytes())
    }

    /// Stops listening for senders and consoles and stops releasing held records; open
    /// connections end. Export first to keep what is held ([`Collector::export`]).
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CollectorError + '_ {
    move |error| CollectorError::Io {
        path: path.display().to_string(),
        error,
    }
}

fn write_dump(path: &Path, text: &[u8]) -> Result<(), CollectorError> {
    let compressed = zstd::encode_all(text, 3).map_err(io_error(path))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, compressed).map_err(io_error(path))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))
}

/// Most bytes a dump may decompress to.
pub const MAX_DUMP_BYTES: u64 = 2 << 30;

/// Reads a dump written by [`Collector::export`], keeping at most `max_entries`.
pub fn import(path: &Path, max_entries: usize) -> Result<History, CollectorError> {
    let file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut decoder = zstd::Decoder::new(file).map_err(io_error(path))?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&mut decoder, MAX_DUMP_BYTES + 1),
        &mut text,
    )
    .map_err(io_error(path))?;
    if text.len() as u64 > MAX_DUMP_BYTES {
        return Err(CollectorError::Io {
            path: path.display().to_string(),
            error: std::io::Error::other("the dump decompresses to over 2 GiB"),
        });
    }
    History::import_lines(text.split(|&b| b == b'\n'), max_entries).map_err(|error| {
        CollectorError::Dump {
            path: path.display().to_string(),
            error,
        }
    })
}

async fn accept_senders(inner: Arc<Inner>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => { debug!(error = %e, "collector: accept failed"); continue; }
            },
            _ = stop.changed() => return,
        };
        if inner.senders.fetch_add(1, Ordering::AcqRel) >= MAX_SENDERS {
            inner.senders.fetch_sub(1, Ordering::AcqRel);
            warn!(%peer, "collector: too many senders; refused one");
            continue;
        }
        let inner = inner.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = read_sender(&inner, stream, peer, SENDER_IDLE) => {
                    if let Err(e) = result {
                        warn!(%peer, error = %e, "collector: dropped a sender");
                    }
                }
                _ = stop.changed() => {}
            }
            inner.senders.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// How long a sender may send nothing before its connection is ended: a node sends its status
/// (or an empty line) every 500 ms and a page's glue an empty line every 10 s, so only a
/// connection that is not a live sender is this silent, and it would hold one of the
/// [`MAX_SENDERS`] places.
pub const SENDER_IDLE: Duration = Duration::from_secs(30);

/// A sender's bytes cut into lines, each scanned for its end once (a line sent a byte at a
/// time costs its length, not its square).
#[derive(Debug, Default)]
struct Lines {
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no line feed.
    scanned: usize,
    /// Bytes looked at for a line feed so far (what the scan costs).
    looked_at: u64,
}

impl Lines {
    /// Adds `bytes` and hands each complete, non-empty line to `each`; fails when a line is
    /// over [`MAX_LINE`] (before it ends) or `each` fails.
    fn push(
        &mut self,
        bytes: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            let rest = &self.buf[self.scanned..];
            let Some(at) = rest.iter().position(|&b| b == b'\n') else {
                self.looked_at += rest.len() as u64;
                break;
            };
            self.looked_at += at as u64 + 1;
            let end = self.scanned + at;
            let line = &self.buf[start..end];
            start = end + 1;
            self.scanned = start;
            if !line.is_empty() {
                each(line)?;
            }
        }
        self.scanned = self.buf.len();
        self.buf.drain(..start);
        self.scanned -= start;
        if self.buf.len() > MAX_LINE {
            return Err(format!("a line over {MAX_LINE} bytes"));
        }
        Ok(())
    }
}

/// Reads records a line at a time; a line over the bound, a bad record or `idle` without a
/// byte ends the connection.
async fn read_sender(
    inner: &Inner,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    idle: Duration,
) -> Result<(), String> {
    // A record past the history's bounds of nodes or machines is skipped (the history
    // refuses it too, should others fill the bound meanwhile), said once per connection:
    // the sender's other machines still report.
    let mut refused = false;
    let mut lines = Lines::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match timeout(idle, stream.read(&mut chunk)).await {
            Ok(read) => read.map_err(|e| e.to_string())?,
            Err(_) => return Err(format!("nothing sent in {idle:?}")),
        };
        if n == 0 {
            return Ok(());
        }
        lines.push(&chunk[..n], |line| {
            let record = Record::from_line(line).map_err(|e| e.to_string())?;
            if let Err(e) = inner.history().admits(&record) {
                if !refused {
                    warn!(%peer, error = %e, "collector: refused a sender's record (said once a connection)");
                    refused = true;
                }
                return Ok(());
            }
            if matches!(record, Record::Status(_)) {
                ingest(inner, [record]);
            } else {
                inner
                    .reorder
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(record, now_ms());
            }
            Ok(())
        })?;
    }
}

/// How many recent entries a hop's record may complete the hops of.
const RELINK: usize = 64;

/// How often held records are looked at.
const RELEASE_EVERY: Duration = Duration::from_millis(5);

async fn release_due(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(RELEASE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => release(&inner, now_ms()),
            _ = stop.changed() => return,
        }
    }
}

/// Takes into the history what the reorder window lets go at `now_ms`.
fn release(inner: &Inner, now_ms: u64) {
    let due = inner
        .reorder
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .release(now_ms);
    if !due.is_empty() {
        ingest(inner, due);
    }
}

fn ingest(inner: &Inner, records: impl IntoIterator<Item = Record>) {
    let mut messages = Vec::new();
    let mut history = inner.history();
    for record in records {
        let status = match &record {
            Record::Status(s) => Some(json!({"t": "status", "status": s})),
            _ => None,
        };
        let sent = matches!(record, Record::Sent(_));
        match history.ingest(record, now_ms()) {
            Some(seq) => messages.extend(history.entry(seq).map(|e| entry_json(&history, e))),
            None => messages.extend(status),
        }
        // A hop's record can come after the transition it led to (nodes send on connections
        // of their own): the transitions it may complete get their hops again.
        if sent {
            for entry in history.entries().rev().take(RELINK) {
                if let Record::Transition(t) = &entry.record
                    && t.origin.is_some()
                {
                    messages.push(
                        json!({"t": "hops", "seq": entry.seq, "hops": history.hops(entry.seq)}),
                    );
                }
            }
        }
    }
    for message in messages {
        let _ = inner.live.send(Arc::from(message.to_string()));
    }
}

/// An entry as the console gets it: the entry, and the hops of a forwarded mutation.
fn entry_json(history: &History, entry: &Entry) -> Value {
    let mut value = json!({"t": "entry", "seq": entry.seq, "received_ms": entry.received_ms, "record": entry.record});
    let hops = history.hops(entry.seq);
    if !hops.is_empty() {
        value["hops"] = json!(hops);
    }
    value
}

async fn accept_consoles(
    inner: Arc<Inner>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => { debug!(error = %e, "collector: accept failed"); continue; }
            },
            _ = stop.changed() => return,
        };
        let inner = inner.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = serve_console(&inner, stream) => {
                    if let Err(e) = result {
                        debug!(error = %e, "collector: console connection ended");
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
}

async fn serve_console<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Arc<Inner>,
    mut stream: S,
) -> Result<(), String> {
    let (request, rest) = match timeout(HEAD_TIMEOUT, http::read_head(&mut stream)).await {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(e)) => {
            http::refuse_head(&mut stream, &e).await;
            return Err(e.to_string());
        }
        Err(_) => return Err("no request in time".into()),
    };
    let route = request.route().to_owned();
    // Against DNS rebinding: a page of another site that resolves its own name to this
    // address would carry that name. The console answers to addresses and localhost only.
    let host = request.header("host").unwrap_or_default().to_owned();
    if !host_allowed(&host) {
        return http::respond(
            &mut stream,
            421,
            "text/plain",
            "the console answers to an IP address or localhost in Host; open it by its address\n",
        )
        .await
        .map_err(|e| e.to_string());
    }
    if !request.is_upgrade() {
        if request.method != "GET" {
            return http::respond(&mut stream, 405, "text/plain", "only GET is served here\n")
                .await
                .map_err(|e| e.to_string());
        }
        let (content_type, body) = match route.as_str() {
            "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
            "/console.js" => ("text/javascript; charset=utf-8", CONSOLE_JS),
            "/console.css" => ("text/css; charset=utf-8", CONSOLE_CSS),
            _ => {
                return http::respond(&mut stream, 404, "text/plain", "not found\n")
                    .await
                    .map_err(|e| e.to_string());
            }
        };
        let answer = http::respond_with(&mut stream, 200, content_type, CONSOLE_CSP, &[], body);
        return match timeout(http::ANSWER_TIMEOUT, answer).await {
            Ok(answered) => answered.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "the console's {route} was not taken within {:?}",
                http::ANSWER_TIMEOUT
            )),
        };
    }
    if route != "/ws" {
        return http::respond(
            &mut stream,
            404,
            "text/plain",
            "the console's socket is /ws\n",
        )
        .await
        .map_err(|e| e.to_string());
    }
    // A page of another origin may not read the history (a WebSocket is not bound by CORS).
    if let Some(origin) = request.header("origin")
        && origin.split("://").nth(1) != Some(host.as_str())
    {
        return http::respond(
            &mut stream,
            403,
            "text/plain",
            "the console's socket is for its own page\n",
        )
        .await
        .map_err(|e| e.to_string());
    }
    let key = match http::upgrade_key(&request) {
        Ok(key) => key.to_owned(),
        Err((status, reason)) => {
            let _ = http::respond(&mut stream, status, "text/plain", &format!("{reason}\n")).await;
            return Err(reason);
        }
    };
    if inner.consoles.fetch_add(1, Ordering::AcqRel) >= MAX_CONSOLES {
        inner.consoles.fetch_sub(1, Ordering::AcqRel);
        let _ = http::respond(&mut stream, 503, "text/plain", "too many consoles\n").await;
        return Err("too many consoles".into());
    }
    let result = async {
        http::accept_upgrade(&mut stream, &key)
            .await
            .map_err(|e| e.to_string())?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_CONSOLE_MESSAGE))
            .max_frame_size(Some(MAX_CONSOLE_MESSAGE));
        let ws =
            WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await;
        console_socket(inner, ws).await
    }
    .await;
    inner.consoles.fetch_sub(1, Ordering::AcqRel);
    result
}

/// Whether a `Host` header names an IP address or localhost (with any port).
fn host_allowed(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// What a console asks.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Ask {
    /// Everything after `since` (0: all kept) that matches, then every new entry live.
    Hello {
        #[serde(default)]
        since: u64,
        #[serde(default)]
        filter: Filter,
    },
    /// Entries that match, the newest [`CONSOLE_BATCH`].
    Query { filter: Filter },
    /// Every machine's clock at an entry.
    At { seq: u64 },
    /// The next or previous transition from an entry, and every clock there.
    Step {
        seq: u64,
        forward: bool,
        #[serde(default)]
        filter: Filter,
    },
}

fn answer(inner: &Inner, ask: Ask) -> Value {
    let history = inner.history();
    let entries = |after: u64, filter: &Filter| -> Value {
        Value::Array(
            history
                .query(after, filter, CONSOLE_BATCH)
                .into_iter()
                .map(|e| entry_json(&history, e))
                .collect(),
        )
    };
    let at = |seq: Option<u64>| match seq {
        Some(seq) => json!({"t": "at", "seq": seq, "clocks": history.clocks_at(seq)}),
        None => json!({"t": "at", "seq": null}),
    };
    match ask {
        Ask::Hello { since, filter } => {
            let oldest = history
                .entries()
                .next()
                .map_or(history.next_seq(), |e| e.seq);
            // Entries the console missed that are no longer kept.
            let lost = if since > 0 {
                oldest.saturating_sub(since.saturating_add(1))
            } else {
                0
            };
            json!({
                "t": "snapshot",
                "since": since,
                "lost": lost,
                "next_seq": history.next_seq(),
                "evicted": history.evicted(),
                "refused": history.refused(),
                "machines": history.machines().collect::<Vec<_>>(),
                "nodes": history.nodes().collect::<Vec<_>>(),
                "entries": entries(since, &filter),
            })
        }
        Ask::Query { filter } => json!({"t": "entries", "entries": entries(0, &filter)}),
        Ask::At { seq } => at(Some(seq)),
        Ask::Step {
            seq,
            forward,
            filter,
        } => at(history.step(seq, forward, &filter)),
    }
}

async fn console_socket<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Arc<Inner>,
    ws: WebSocketStream<S>,
) -> Result<(), String> {
    let (mut tx, mut rx) = ws.split();
    // Subscribed before the snapshot is taken: nothing falls between them (the console skips
    // entries it already has).
    let mut live = inner.live.subscribe();
    loop {
        tokio::select! {
            message = rx.next() => {
                let text = match message {
                    None | Some(Ok(WsMessage::Close(_))) => return Ok(()),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(WsMessage::Text(text))) => text,
                    Some(Ok(_)) => continue,
                };
                let reply = match serde_json::from_str::<Ask>(&text) {
                    Ok(ask) => answer(inner, ask),
                    Err(e) => json!({"t": "error", "message": format!("not a console request: {e}")}),
                };
                tx.send(WsMessage::text(reply.to_string())).await.map_err(|e| e.to_string())?;
            }
            entry = live.recv() => match entry {
                Ok(text) => tx.send(WsMessage::text(text.to_string())).await.map_err(|e| e.to_string())?,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tx.send(WsMessage::text(json!({"t": "lagged", "missed": n}).to_string()))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_sent_a_byte_at_a_time_is_scanned_once() {
        let mut lines = Lines::default();
        let line = vec![b'x'; MAX_LINE];
        let mut got = Vec::new();
        for &b in &line {
            lines
                .push(&[b], |l| {
                    got.push(l.len());
                    Ok(())
                })
                .expect("within the bound");
        }
        // Each push looked at the byte it added, not the whole partial line.
        assert_eq!(lines.looked_at, MAX_LINE as u64);
        lines
            .push(b"\n\nab\ncd", |l| {
                got.push(l.len());
                Ok(())
            })
            .expect("lines");
        assert_eq!(got, vec![MAX_LINE, 2]);
        assert_eq!((lines.buf.as_slice(), lines.scanned), (b"cd".as_slice(), 2));
        assert!(
            lines.push(&line, |_| Ok(())).is_err(),
            "a partial line over the bound"
        );
    }

    /// A connection that sends nothing is ended after the idle time, freeing its place.
    #[tokio::test]
    async fn a_silent_sender_is_ended_after_the_idle_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let _silent = TcpStream::connect(address).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let ended = timeout(
            Duration::from_secs(10),
            read_sender(&inner(), stream, peer, Duration::from_millis(100)),
        )
        .await
        .expect("ended within the idle time");
        assert!(ended.expect_err("an error").contains("nothing sent"));
    }

    fn inner() -> Inner {
        Inner {
            history: Mutex::new(History::default()),
            reorder: Mutex::new(Reorder::new(DEFAULT_WINDOW_MS)),
            live: broadcast::channel(8).0,
            senders: AtomicUsize::new(0),
            consoles: AtomicUsize::new(0),
        }
    }

    /// A console's `since` is peer input: u64::MAX is answered (nothing lost), not a panic.
    #[test]
    fn a_hello_since_the_end_of_time_is_answered() {
        let inner = inner();
        let reply = answer(
            &inner,
            Ask::Hello {
                since: u64::MAX,
                filter: Filter::default(),
            },
        );
        assert_eq!(reply["t"], "snapshot");
        assert_eq!(reply["lost"], 0);
    }

    #[test]
    fn the_console_answers_to_addresses_and_localhost_only() {
        for ok in [
            "127.0.0.1:6832",
            "localhost:1",
            "LOCALHOST",
            "[::1]:6832",
            "10.0.0.2",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:6832", "", "127.0.0.1.evil.example"] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }
}
