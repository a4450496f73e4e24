//! The listen route: a page offers a machine under a name, and nodes mirror it through the
//! relay as they would mirror a node.
//!
//! ```text
//! page  --WebSocket /offer/NAME-------------> relay   (the offer: one per name)
//! node  --WebSocket /listen/NAME------------> relay   (a mirror's ws:// endpoint)
//! relay --{"open": ID} on the offer---------> page
//! page  --WebSocket /offer/NAME/ID----------> relay   (the node's connection, for the page)
//!        relay bridges the node's socket and the page's socket ID, bytes both ways
//! ```
//!
//! A connection's ID is 128 random bits (32 hex digits), told only to the offering page: any
//! admitted peer may ask for `/offer/NAME/ID`, and the first to ask carries that node's
//! connection, so an ID that could be guessed (a counter) would let another peer be `NAME`
//! for that node.
//!
//! The page runs the server's side of the protocol (a `ServerSession` per connection, in
//! am.wasm); the relay parses none of it. Only names the configuration lists may be offered
//! (`offers`), with the same Host, Origin and token rules as the other routes, each by one
//! page at a time: a second offer of a name is refused with [`RelayClose::Offered`]. A node
//! that reaches a name nobody offers now, or whose connection the page does not take within the
//! handshake timeout, is closed with a code it retries on.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{Inner, Refused, RelayClose, close_with};
use crate::transport::BoxStream;
use crate::transport::ws::WsBytes;

/// What a listen-route request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ListenRoute {
    /// A page offers a machine: `/offer/NAME`.
    Offer(String),
    /// A page takes a node connection: `/offer/NAME/ID` (`None`: not an ID the relay makes).
    Take(String, Option<ConnId>),
    /// A node mirrors an offered machine: `/listen/NAME`.
    Listen(String),
}

impl ListenRoute {
    /// The listen route a path names, if any.
    pub fn parse(route: &str) -> Option<ListenRoute> {
        if let Some(name) = route.strip_prefix("/listen/") {
            return Some(ListenRoute::Listen(name.to_owned()));
        }
        let rest = route.strip_prefix("/offer/")?;
        Some(match rest.split_once('/') {
            Some((name, id)) => ListenRoute::Take(name.to_owned(), ConnId::parse(id)),
            None => ListenRoute::Offer(rest.to_owned()),
        })
    }

    fn name(&self) -> &str {
        match self {
            ListenRoute::Offer(name) | ListenRoute::Take(name, _) | ListenRoute::Listen(name) => {
                name
            }
        }
    }
}

/// A node connection waiting for its page: 128 random bits, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ConnId(u128);

impl ConnId {
    /// A fresh ID from the system's secure random source (through rustls's provider, which
    /// the relay has for TLS anyway); `None` if the source failed.
    fn random() -> Option<ConnId> {
        static PROVIDER: OnceLock<rustls::crypto::CryptoProvider> = OnceLock::new();
        let provider = PROVIDER.get_or_init(rustls::crypto::ring::default_provider);
        let mut bytes = [0u8; 16];
        provider.secure_random.fill(&mut bytes).ok()?;
        Some(ConnId(u128::from_be_bytes(bytes)))
    }

    /// The ID a path segment spells, exactly as [`ConnId`]'s `Display` writes it.
    fn parse(text: &str) -> Option<ConnId> {
        if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(ConnId)
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The offers open now and the node connections waiting for their page.
#[derive(Debug, Default)]
pub(super) struct Offers {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By name: where to ask the page to take a connection.
    open: HashMap<String, mpsc::Sender<ConnId>>,
    /// By name and connection ID: where the page's socket goes.
    waiting: HashMap<(String, ConnId), oneshot::Sender<BoxStream>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("open", &self.open.keys().collect::<Vec<_>>())
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

/// How many connection requests may wait to be written to one page.
const OFFER_QUEUE: usize = 64;

impl Offers {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Names offered now.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().open.keys().cloned().collect();
        names.sort();
        names
    }
}

/// The name checked against the configuration (before the upgrade).
pub(super) fn check(inner: &Inner, route: &ListenRoute) -> Result<(), Refused> {
    let name = route.name();
    if !inner.config.offers.iter().any(|n| n == name) {
        let shown: String = name.chars().take(40).collect();
        return Err((
            RelayClose::UnknownTarget,
            format!(
                "{shown:?} may not be offered here; this relay takes offers of: {}",
                inner.config.offers.join(", ")
            ),
        ));
    }
    match route {
        ListenRoute::Offer(name) if inner.offers.lock().open.contains_key(name) => Err((
            RelayClose::Offered,
            format!("{name:?} is offered by another page already; close it there first"),
        )),
        ListenRoute::Listen(name) if !inner.offers.lock().open.contains_key(name) => Err((
            RelayClose::TargetUnreachable,
            format!("no page offers {name:?} now; retrying"),
        )),
        _ => Ok(()),
    }
}

/// Serves a listen route on an upgraded socket.
pub(super) async fn serve<S>(
    inner: &Arc<Inner>,
    ws: WebSocketStream<S>,
    route: ListenRoute,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match route {
        ListenRoute::Offer(name) => offer(inner, ws, name).await,
        ListenRoute::Take(name, id) => {
            let waiting = id.and_then(|id| inner.offers.lock().waiting.remove(&(name.clone(), id)));
            match waiting {
                Some(node) => {
                    // The node's task bridges from here on.
                    let _ = node.send(Box::new(WsBytes::new(ws)));
                    Ok(())
                }
                None => {
                    // The ID is not repeated: it is the peer's input, and may be anything.
                    let reason = format!("no node connection with that ID waits for {name:?}");
                    refuse(inner, ws, RelayClose::UnknownTarget, &reason).await;
                    Err(reason)
                }
            }
        }
        ListenRoute::Listen(name) => {
            let page = match take_from_page(inner, &name).await {
                Ok(page) => page,
                Err((close, reason)) => {
                    refuse(inner, ws, close, &reason).await;
                    return Err(reason);
                }
            };
            inner.stats.bridges.fetch_add(1, Ordering::Relaxed);
            super::bridge(inner, ws, page).await
        }
    }
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    ws: WebSocketStream<S>,
    close: RelayClose,
    reason: &str,
) {
    inner.stats.refused.fetch_add(1, Ordering::Relaxed);
    close_with(
        ws,
        CloseCode::from(close.code()),
        reason,
        inner.config.handshake_timeout,
    )
    .await;
}

/// Asks the page offering `name` to take a node connection, and waits for its socket.
async fn take_from_page(inner: &Inner, name: &str) -> Result<BoxStream, Refused> {
    let n = ConnId::random().ok_or_else(|| {
        (
            RelayClose::TargetUnreachable,
            "the relay could not draw a random connection ID; retrying".to_owned(),
        )
    })?;
    let (tx, rx) = oneshot::channel();
    let open = {
        let mut state = inner.offers.lock();
        let open = state.open.get(name).cloned();
        if open.is_some() {
            state.waiting.insert((name.to_owned(), n), tx);
        }
        open
    };
    let gone = || {
        (
            RelayClose::TargetUnreachable,
            format!("no page offers {name:?} now; retrying"),
        )
    };
    let open = open.ok_or_else(gone)?;
    if open.try_send(n).is_err() {
        inner.offers.lock().waiting.remove(&(name.to_owned(), n));
        return Err((
            RelayClose::Full,
            format!("the page offering {name:?} has too many connections waiting"),
        ));
    }
    let taken = tokio::time::timeout(inner.config.handshake_timeout, rx).await;
    inner.offers.lock().waiting.remove(&(name.to_owned(), n));
    match taken {
        Ok(Ok(page)) => Ok(page),
        Ok(Err(_)) => Err(gone()),
        Err(_) => Err((
            RelayClose::TargetTimeout,
            format!(
                "the page offering {name:?} did not take the connection within {} ms",
                inner.config.handshake_timeout.as_millis()
            ),
        )),
    }
}

/// A page's offer: registered until its socket ends; node connections are announced on it.
async fn offer<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    mut ws: WebSocketStream<S>,
    name: String,
) -> Result<(), String> {
    let (tx, mut rx) = mpsc::channel(OFFER_QUEUE);
    // Checked before the upgrade too; two offers may have raced since.
    let taken = {
        let mut state = inner.offers.lock();
        let taken = state.open.contains_key(&name);
        if !taken {
            state.open.insert(name.clone(), tx);
        }
        taken
    };
    if taken {
        let reason = format!("{name:?} is offered by another page already; close it there first");
        refuse(inner, ws, RelayClose::Offered, &reason).await;
        return Err(reason);
    }
    tracing::info!(%name, "a page offers a machine");
    // A refused offer is an accepted upgrade closed at once, so the page counts its offer as
    // standing (and its backoff as done) only on this note.
    let note = serde_json::json!({ "offered": name }).to_string();
    let told = tokio::time::timeout(inner.config.handshake_timeout, ws.send(Message::text(note)));
    let ended: Result<(), (CloseCode, String)> = match told.await {
        Ok(Ok(())) => serve_offer(inner, &mut ws, &mut rx).await,
        Ok(Err(e)) => Err((CloseCode::Away, format!("page: {e}"))),
        Err(_) => Err((
            CloseCode::Away,
            "the page read nothing within the handshake timeout".to_owned(),
        )),
    };
    {
        let mut state = inner.offers.lock();
        state.open.remove(&name);
        // Node connections still waiting end now (their senders drop).
        state.waiting.retain(|(offered, _), _| *offered != name);
    }
    tracing::info!(%name, "the page's offer ended");
    match ended {
        Ok(()) => Ok(()),
        Err((code, reason)) => {
            close_with(ws, code, &reason, inner.config.handshake_timeout).await;
            Err(reason)
        }
    }
}

/// An offer that stands: node connections are announced until the page goes, falls silent for
/// the idle timeout, or the relay stops.
async fn serve_offer<S: AsyncRead + AsyncWrite + Unpin>(
    inner: &Inner,
    ws: &mut WebSocketStream<S>,
    rx: &mut mpsc::Receiver<ConnId>,
) -> Result<(), (CloseCode, String)> {
    let idle = inner.config.idle_timeout;
    let mut shutdown = inner.shutdown.subscribe();
    let mut last_heard = tokio::time::Instant::now();
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            n = rx.recv() => {
                let Some(n) = n else { return Ok(()) };
                let note = serde_json::json!({ "open": n.to_string() }).to_string();
                // A deadline, as on a bridge: a page that pings but never reads would otherwise
                // hold the offer (and the name) for ever.
                match tokio::time::timeout(idle, ws.send(Message::text(note))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err((CloseCode::Away, format!("page: {e}"))),
                    Err(_) => return Err((
                        CloseCode::Policy,
                        format!("the page read nothing for {} ms (the relay's idle timeout)", idle.as_millis()),
                    )),
                }
            }
            message = ws.next() => match message {
                None | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Err(e)) => return Err((CloseCode::Protocol, e.to_string())),
                // Anything from the page (its keepalive) keeps the offer alive.
                Some(Ok(_)) => last_heard = tokio::time::Instant::now(),
            },
            _ = tick.tick() => if last_heard.elapsed() >= idle {
                return Err((
                    CloseCode::from(RelayClose::Idle.code()),
                    format!("nothing from the page for {} ms (the relay's idle timeout)", idle.as_millis()),
                ));
            },
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                return Err((CloseCode::Away, "relay shutting down".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(
            ListenRoute::parse("/offer/bar"),
            Some(ListenRoute::Offer("bar".into()))
        );
        let id = ConnId::random().expect("random");
        assert_eq!(
            ListenRoute::parse(&format!("/offer/bar/{id}")),
            Some(ListenRoute::Take("bar".into(), Some(id)))
        );
        assert_eq!(
            ListenRoute::parse("/listen/bar"),
            Some(ListenRoute::Listen("bar".into()))
        );
        assert_eq!(ListenRoute::parse("/arpc/bar"), None);
        for bad in [
            "x".to_owned(),
            "7".to_owned(),
            "0".repeat(31),
            "0".repeat(33),
            "A".repeat(32),
            format!("+{}", "0".repeat(31)),
            format!("{id}/x"),
        ] {
            assert_eq!(
                ListenRoute::parse(&format!("/offer/bar/{bad}")),
                Some(ListenRoute::Take("bar".into(), None)),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_random_and_spelled_as_parsed() {
        let (a, b) = (ConnId::random().expect("a"), ConnId::random().expect("b"));
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(ConnId::parse(&text), Some(a));
    }
}
