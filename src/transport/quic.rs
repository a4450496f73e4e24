//! QUIC (`quic://`) with quinn: one connection per session, one bidirectional stream in it.
//!
//! Keepalive and idle timeout are set on purpose rather than left to defaults: QUIC pings every
//! 5 s keep NAT bindings and the connection alive under our own (slower) protocol keepalive,
//! and a peer silent for 30 s is gone. The client opens the stream and speaks first (its
//! hello), which is what makes the stream visible to the server.
//!
//! Outgoing connections go through client endpoints (UDP sockets) shared by the process
//! ([`super::quic_clients`]).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, RecvStream, SendStream, TransportConfig};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::quic_clients;
use super::tls::{TlsConfig, identity, server_name};
use super::{BoxFuture, BoxStream, Endpoint, Handshake, Listener, PeerInfo, Scheme};

const KEEPALIVE: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEPALIVE));
    // 30 s fits a QUIC idle timeout (it must be below 2^62 ms); the conversion cannot fail.
    t.max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    // One stream per connection is all a session uses.
    t.max_concurrent_bidi_streams(1u8.into());
    t.max_concurrent_uni_streams(0u8.into());
    Arc::new(t)
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// How long a closing session waits for the peer to receive its last bytes.
const LINGER: Duration = Duration::from_secs(2);

/// A session's stream; holds the connection (and, for clients, the shared endpoint it was made
/// through) alive with it.
struct QuicStream {
    send: SendStream,
    recv: RecvStream,
    connection: quinn::Connection,
    endpoint: Option<quinn::Endpoint>,
}

impl Drop for QuicStream {
    /// Closing a QUIC connection discards data still in flight, so the last words of a session
    /// (a refusal, a bye) would be lost: finish the stream and close only once the peer has
    /// it, in the background, bounded by [`LINGER`].
    fn drop(&mut self) {
        let connection = self.connection.clone();
        let endpoint = self.endpoint.take();
        let _ = self.send.finish();
        let stopped = self.send.stopped();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            connection.close(0u8.into(), b"session closed");
            return;
        };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, stopped).await;
            connection.close(0u8.into(), b"session closed");
            drop(endpoint);
        });
    }
}

impl QuicStream {
    /// quinn's I/O errors say only "connection lost"; the connection knows why.
    fn why(&self, e: io::Error) -> io::Error {
        match self.connection.close_reason() {
            Some(reason) => super::tls::explain(io::Error::new(e.kind(), reason.to_string())),
            None => e,
        }
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.recv).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.why(e))),
            other => other,
        }
    }
}

impl QuicStream {
    /// A write fails with a bare "connection lost" when the peer closed the connection; the
    /// reason it gave (a TLS alert: no client certificate, an unknown CA) is the connection's.
    fn why_lost(&self, error: io::Error) -> io::Error {
        match self.connection.close_reason() {
            Some(reason) => super::tls::explain(io::Error::new(error.kind(), reason.to_string())),
            None => error,
        }
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        AsyncWrite::poll_write(Pin::new(&mut this.send), cx, buf).map_err(|e| this.why_lost(e))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        AsyncWrite::poll_flush(Pin::new(&mut this.send), cx).map_err(|e| this.why_lost(e))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

fn resolve(address: &str) -> io::Result<SocketAddr> {
    address.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{address} resolves to nothing"),
        )
    })
}

/// What a QUIC socket asks the kernel to buffer each way. One socket carries every
/// connection of a listener (and of a process's outgoing connections): a change pushed to
/// 10 000 mirrors is 10 000 datagrams out and as many acknowledgements back at once, and
/// the default buffer (212 992 bytes on Linux) holds a few hundred, so the rest were dropped
/// (the kernel's UDP RcvbufErrors) and resent only after a loss timeout, hundreds of
/// milliseconds later. Linux grants at most `net.core.rmem_max` / `wmem_max`; a smaller
/// grant is no error.
pub(super) const SOCKET_BUFFER: usize = 16 << 20;

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER`]s; `dual_stack` lets an IPv6 one
/// reach IPv4 addresses too, where the system allows.
pub(super) fn udp_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if dual_stack
        && addr.is_ipv6()
        && let Err(e) = socket.set_only_v6(false)
    {
        tracing::debug!(error = %e, "a QUIC socket that is not dual-stack");
    }
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "a QUIC socket keeps its default receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "a QUIC socket keeps its default send buffer");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub(super) struct QuicListener {
    endpoint: quinn::Endpoint,
    local: Endpoint,
}

pub(super) fn bind(address: &str, tls: &TlsConfig) -> io::Result<QuicListener> {
    let crypto = tls
        .quic_server
        .clone()
        .ok_or_else(|| invalid("a quic:// listener needs a certificate and key"))?;
    let crypto = QuicServerConfig::try_from(crypto).map_err(invalid)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport());
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        udp_socket(resolve(address)?, false)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    let local = Endpoint::new(Scheme::Quic, endpoint.local_addr()?.to_string());
    Ok(QuicListener { endpoint, local })
}

pub(super) async fn connect(address: &str, tls: &TlsConfig) -> io::Result<BoxStream> {
    let remote = resolve(address)?;
    let crypto = QuicClientConfig::try_from(tls.quic_client.clone()).map_err(invalid)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    let name = server_name(address)?.to_str().into_owned();
    let mut endpoint = quic_clients::client_for(remote)?;
    let connecting = match endpoint.connect_with(config.clone(), remote, &name) {
        // The shared endpoint's driver stopped (its socket failed): once more on a new one.
        Err(quinn::ConnectError::EndpointStopping) => {
            quic_clients::forget_for(remote);
            endpoint = quic_clients::client_for(remote)?;
            endpoint.connect_with(config, remote, &name)
        }
        other => other,
    };
    let connection = connecting.map_err(invalid)?.await.map_err(|e| {
        super::tls::explain(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            e.to_string(),
        ))
    })?;
    // A server that rejects the client's certificate aborts right after the handshake: the
    // reason arrives here.
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| super::tls::explain(io::Error::other(e.to_string())))?;
    Ok(Box::new(QuicStream {
        send,
        recv,
        connection,
        endpoint: Some(endpoint),
    }))
}

impl Listener for QuicListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Handshake>> {
        Box::pin(async move {
            let incoming = self.endpoint.accept().await.ok_or_else(|| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the QUIC endpoint closed")
            })?;
            let handshake: Handshake = Box::pin(async move {
                let address = incoming.remote_address().to_string();
                let connection = incoming.await.map_err(|e| {
                    super::tls::explain(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        e.to_string(),
                    ))
                })?;
                let certs = connection
                    .peer_identity()
                    .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
                let identity = match identity(certs.as_deref().map(Vec::as_slice)) {
                    Ok(identity) => identity,
                    Err(e) => {
                        connection.close(1u8.into(), b"client certificate names no id");
                        return Err(e);
                    }
                };
                // The stream appears with the client's first bytes. A client that never sends
                // any is dropped by the caller's handshake timeout; tell it why in the close.
                let closer = CloseOnDrop(Some(connection.clone()));
                let (send, recv) = connection.accept_bi().await.map_err(io::Error::other)?;
                closer.disarm();
                let stream: BoxStream = Box::new(QuicStream {
                    send,
                    recv,
                    connection,
                    endpoint: None,
                });
                Ok((stream, PeerInfo { address, identity }))
            });
            Ok(handshake)
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }
}

/// Closes a connection with a reason unless disarmed.
struct CloseOnDrop(Option<quinn::Connection>);

impl CloseOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            connection.close(1u8.into(), b"no hello within the handshake timeout");
        }
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        self.endpoint.close(0u8.into(), b"listener closed");
    }
}
