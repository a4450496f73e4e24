//! WebSocket (`ws://`) and WebSocket over TLS (`wss://`), with tokio-tungstenite.
//!
//! The protocol is a byte stream; WebSocket carries it in binary messages: each write becomes
//! one message (our writers put whole frames in each write), and a reader takes the
//! concatenation of messages as the stream, so a receiver never depends on message boundaries.
//! Text messages are refused. TLS for `wss://` is ours (tokio-rustls with the node's
//! [`TlsConfig`]), so every TLS transport trusts the same CA.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

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
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
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
        Pin::new(&mut self.ws)
            .start_send(Message::binary(buf.to_vec()))
            .map_err(ws_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_error)
    }
}

/// Buffers sized for small, flushed-at-once frames: tungstenite's defaults (128 KiB to read,
/// up to 128 KiB to write) cost a quarter of a megabyte per idle connection.
pub(crate) fn small_buffers() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
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
}

pub(super) async fn bind(address: &str, tls: Option<&TlsConfig>) -> io::Result<WsListener> {
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
                tokio_tungstenite::client_async_with_config(url, stream, Some(small_buffers()))
                    .await
                    .map_err(|e| handshake_error(e, Scheme::Wss))?;
            Ok(Box::new(WsBytes::new(ws)))
        }
        None => {
            let url = format!("ws://{address}/{path}");
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url, tcp, Some(small_buffers()))
                    .await
                    .map_err(|e| handshake_error(e, Scheme::Ws))?;
            Ok(Box::new(WsBytes::new(ws)))
        }
    }
}

impl Listener for WsListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Handshake>> {
        Box::pin(async move {
            let (tcp, peer) = self.listener.accept().await?;
            let tls = self.tls.clone();
            let handshake: Handshake = Box::pin(async move {
                let address = peer.to_string();
                match tls {
                    Some(acceptor) => {
                        let (stream, peer) = accept_tls(acceptor, tcp, address).await?;
                        let ws = tokio_tungstenite::accept_async_with_config(
                            stream,
                            Some(small_buffers()),
                        )
                        .await
                        .map_err(|e| handshake_error(e, Scheme::Wss))?;
                        let stream: BoxStream = Box::new(WsBytes::new(ws));
                        Ok((stream, peer))
                    }
                    None => {
                        tcp.set_nodelay(true)?;
                        let ws =
                            tokio_tungstenite::accept_async_with_config(tcp, Some(small_buffers()))
                                .await
                                .map_err(|e| handshake_error(e, Scheme::Ws))?;
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
