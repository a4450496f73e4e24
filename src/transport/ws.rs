//! WebSocket (`ws://`) and WebSocket over TLS (`wss://`), with tokio-tungstenite.
//!
//! The protocol is a byte stream; WebSocket carries it in binary messages: each write becomes
//! one message (our writers put whole frames in each write), and a reader takes the
//! concatenation of messages as the stream, so a receiver never depends on message boundaries.
//! Text messages are refused. TLS for `wss://` is ours (tokio-rustls with the node's
//! [`TlsConfig`]), so every TLS transport trusts the same CA.
//!
//! Bounds: a writer splits each write into messages of at most [`MESSAGE_CHUNK`] bytes; a
//! reader takes messages (and single WebSocket frames) of at most the node's `max_frame` plus a
//! frame head, and never less than one chunk (see [`limits`]), so a peer cannot make a
//! connection buffer more than that. A listener reads the upgrade request itself
//! ([`crate::http`]): a head over its limit gets 431, anything but an upgrade a status and a
//! reason, never a bare reset.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::http;
use crate::proto::frame::DEFAULT_MAX_FRAME;

use super::tls::{TlsConfig, accept_tls, explain, server_name};
use super::{BoxFuture, BoxStream, Endpoint, Handshake, Listener, PeerInfo, Scheme};

/// A WebSocket as a byte stream.
pub(crate) struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Option<(tungstenite::Bytes, usize)>,
}

impl<S> WsBytes<S> {
    pub(crate) fn new(ws: WebSocketStream<S>) -> Self {
        WsBytes { ws, pending: None }
    }
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::other(format!("WebSocket: {other}")),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if let Some((data, offset)) = &mut self.pending {
                let n = buf.remaining().min(data.len() - *offset);
                buf.put_slice(&data[*offset..*offset + n]);
                *offset += n;
                if *offset == data.len() {
                    self.pending = None;
                }
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(None))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Close(Some(frame)))) => {
                    // A refusal (a relay's 4xxx, a size or policy close) is the peer's reason for
                    // ending: the reader reports it rather than a silent end of stream.
                    return Poll::Ready(match frame.code {
                        CloseCode::Normal | CloseCode::Away => Ok(()),
                        code => Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            format!(
                                "the peer closed the WebSocket ({}): {}",
                                u16::from(code),
                                crate::printable::printable(&frame.reason)
                            ),
                        )),
                    });
                }
                Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                    self.pending = Some((data, 0))
                }
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text WebSocket message: aRPC travels in binary messages",
                    )));
                }
                // Pings are answered by tungstenite itself; empty messages carry nothing.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_error)?;
        // A partial write: callers loop (write_all), and the peer joins messages into a stream.
        let n = buf.len().min(MESSAGE_CHUNK);
        Pin::new(&mut self.ws)
            .start_send(Message::binary(buf[..n].to_vec()))
            .map_err(ws_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_error)
    }
}

/// The largest message a writer here sends: larger writes become several messages.
pub(crate) const MESSAGE_CHUNK: usize = 64 * 1024;

/// Room for a protocol frame's head (a varint of at most 10 bytes) beside its body.
const FRAME_HEAD: usize = 16;

/// The configuration of every WebSocket of a node whose frames are at most `max_frame` bytes.
///
/// Incoming messages and single WebSocket frames are bounded by one protocol frame with its
/// head (so an endless message of continuation frames is cut there), and never below one
/// [`MESSAGE_CHUNK`], the most any writer here puts in one message. Buffers are sized for
/// small, flushed-at-once frames: tungstenite's defaults (128 KiB to read, up to 128 KiB to
/// write, 64 MiB per message) cost a quarter of a megabyte per idle connection and let a peer
/// make one buffer 64 MiB. The write buffer holds at most one message besides control frames:
/// the sink flushes before it takes the next.
pub(crate) fn limits(max_frame: usize) -> WebSocketConfig {
    let max_message = max_frame.saturating_add(FRAME_HEAD).max(MESSAGE_CHUNK);
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * MESSAGE_CHUNK)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Explains a WebSocket handshake failure with the likely cause.
fn handshake_error(e: tungstenite::Error, scheme: Scheme) -> io::Error {
    let hint = match &e {
        tungstenite::Error::Http(_)
        | tungstenite::Error::HttpFormat(_)
        | tungstenite::Error::Protocol(_) => {
            format!("; is this a {}:// listener?", scheme.as_str())
        }
        _ => String::new(),
    };
    explain(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("WebSocket handshake failed: {e}{hint}"),
    ))
}

pub(super) struct WsListener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    local: Endpoint,
    config: WebSocketConfig,
}

pub(super) async fn bind(
    address: &str,
    tls: Option<&TlsConfig>,
    max_frame: usize,
) -> io::Result<WsListener> {
    let tls = match tls {
        Some(tls) => Some(TlsAcceptor::from(tls.server()?)),
        None => None,
    };
    let listener = TcpListener::bind(address).await?;
    let scheme = if tls.is_some() {
        Scheme::Wss
    } else {
        Scheme::Ws
    };
    let local = Endpoint::new(scheme, listener.local_addr()?.to_string());
    Ok(WsListener {
        listener,
        tls,
        local,
        config: limits(max_frame),
    })
}

/// Connects; the request path is `/MACHINE[?token=T]` (nodes ignore it; a relay routes by it
/// and checks the token): `Endpoint::upgrade_path`.
pub(super) async fn connect(
    address: &str,
    path: &str,
    tls: Option<&TlsConfig>,
) -> io::Result<BoxStream> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    match tls {
        Some(tls) => {
            let stream = TlsConnector::from(tls.client.clone())
                .connect(server_name(address)?, tcp)
                .await
                .map_err(explain)?;
            let url = format!("wss://{address}/{path}");
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url, stream, Some(client_limits()))
                    .await
                    .map_err(|e| handshake_error(e, Scheme::Wss))?;
            Ok(Box::new(WsBytes::new(ws)))
        }
        None => {
            let url = format!("ws://{address}/{path}");
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url, tcp, Some(client_limits()))
                    .await
                    .map_err(|e| handshake_error(e, Scheme::Ws))?;
            Ok(Box::new(WsBytes::new(ws)))
        }
    }
}

/// What a client takes from a server: servers and relays here send messages of at most one
/// [`MESSAGE_CHUNK`], so the default frame size bounds it however large the mirror's own frames.
fn client_limits() -> WebSocketConfig {
    limits(DEFAULT_MAX_FRAME)
}

/// The server side of the upgrade: reads the request head within [`http::MAX_HEAD`] and
/// answers anything but a WebSocket upgrade with a status and a reason.
async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    config: WebSocketConfig,
) -> io::Result<WebSocketStream<S>> {
    let refused = |e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("WebSocket upgrade refused: {e}"),
        )
    };
    let (request, rest) = match http::read_head(&mut stream).await {
        Ok(parsed) => parsed,
        Err(e) => {
            http::refuse_head(&mut stream, &e).await;
            return Err(refused(&e));
        }
    };
    let key = match http::upgrade_key(&request) {
        Ok(key) => key.to_owned(),
        Err((status, reason)) => {
            let body = format!("{reason}; this is an aRPC WebSocket listener\n");
            let _ = http::respond(&mut stream, status, "text/plain", &body).await;
            return Err(refused(&reason));
        }
    };
    // Browsers always send Origin; programs (mirrors, am-node, am-relay) do not. A node checks
    // no origins or host names, so any page the user opens could reach a loopback listener
    // and drive it (cross-site WebSocket hijacking): browsers go through am-relay, which does.
    if request.header("origin").is_some() {
        let reason = "a browser may not connect to a node directly; connect through am-relay, \
                      which checks origins and host names";
        let _ = http::respond(&mut stream, 403, "text/plain", &format!("{reason}\n")).await;
        return Err(refused(&reason));
    }
    http::accept_upgrade(&mut stream, &key).await?;
    Ok(WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await)
}

impl Listener for WsListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Handshake>> {
        Box::pin(async move {
            let (tcp, peer) = self.listener.accept().await?;
            let tls = self.tls.clone();
            let config = self.config;
            let handshake: Handshake = Box::pin(async move {
                let address = peer.to_string();
                match tls {
                    Some(acceptor) => {
                        let (stream, peer) = accept_tls(acceptor, tcp, address).await?;
                        let ws = accept(stream, config).await?;
                        let stream: BoxStream = Box::new(WsBytes::new(ws));
                        Ok((stream, peer))
                    }
                    None => {
                        tcp.set_nodelay(true)?;
                        let ws = accept(tcp, config).await?;
                        let stream: BoxStream = Box::new(WsBytes::new(ws));
                        Ok((
                            stream,
                            PeerInfo {
                                address,
                                identity: None,
                            },
                        ))
                    }
                }
            });
            Ok(handshake)
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_write_larger_than_the_peers_message_limit_arrives_whole() {
        // The reader takes messages of at most one chunk (its max_frame is small); one write
        // of four chunks and a bit goes as several messages and reads back as one stream.
        let (a, b) = tokio::io::duplex(16 * 1024);
        let writer = WebSocketStream::from_raw_socket(a, Role::Client, Some(limits(1 << 20))).await;
        let reader = WebSocketStream::from_raw_socket(b, Role::Server, Some(limits(1024))).await;
        let (mut writer, mut reader) = (WsBytes::new(writer), WsBytes::new(reader));
        let sent: Vec<u8> = (0..4 * MESSAGE_CHUNK + 99)
            .map(|i| (i % 251) as u8)
            .collect();
        let expected = sent.clone();
        let write = tokio::spawn(async move {
            writer.write_all(&sent).await.expect("written");
            writer.flush().await.expect("flushed");
            writer
        });
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got).await.expect("read whole");
        assert!(got == expected, "the stream arrives as it was written");
        drop(write.await.expect("writer"));
    }
}
