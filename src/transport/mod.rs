//! Transports: reliable ordered byte streams between peers, chosen by an endpoint's scheme.
//!
//! Everything above this module sees a [`BoxStream`] (`AsyncRead + AsyncWrite`) and never
//! which transport carries it. A [`Listener`] accepts connections in two steps: `accept`
//! returns as soon as a peer knocks, with a [`Handshake`] future that finishes the transport's
//! own handshake (TLS, WebSocket, QUIC streams) inside the connection's task, so one slow peer
//! never holds up the accept loop.
//!
//! Schemes: `tcp://host:port`, `tls://` (TLS over TCP), `quic://` (one QUIC stream per
//! session), `ws://` and `wss://` (WebSocket binary messages), and `mem://name` (in-process
//! pairs, for tests). The TLS-based ones take their material from a [`TransportConfig`].

mod mem;
mod quic;
mod quic_clients;
mod tcp;
pub mod tls;
pub(crate) mod ws;

use std::sync::Arc;

pub use tls::{TlsConfig, TlsError};

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream of any transport.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A connected stream of any transport, boxed.
pub type BoxStream = Box<dyn Stream>;
/// A boxed future that can be sent between threads.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Finishes an accepted connection's transport handshake.
pub type Handshake = BoxFuture<'static, io::Result<(BoxStream, PeerInfo)>>;

/// What the transport knows about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address, for logs.
    pub address: String,
    /// Who the peer's certificate says it is (its first DNS name), under mutual TLS.
    pub identity: Option<String>,
}

/// Transport settings shared by a node's listeners and connections.
#[derive(Debug, Clone, Default)]
pub struct TransportConfig {
    /// Certificates for `tls://`, `quic://` and `wss://`.
    pub tls: Option<Arc<TlsConfig>>,
}

impl TransportConfig {
    /// Settings with these certificates, for the TLS schemes.
    pub fn with_tls(tls: TlsConfig) -> Self {
        TransportConfig {
            tls: Some(Arc::new(tls)),
        }
    }

    fn tls(&self, scheme: Scheme) -> Result<&TlsConfig, TransportError> {
        self.tls
            .as_deref()
            .ok_or(TransportError::NoTls(scheme.as_str()))
    }
}

/// A bound listener of one transport.
pub trait Listener: Send + Sync {
    /// Waits for the next peer. The returned handshake must be awaited (with a timeout) to get
    /// the stream.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Handshake>>;

    /// The endpoint peers can connect to (with the real port when bound to port 0).
    fn local_endpoint(&self) -> Endpoint;
}

/// A transport scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain TCP (`tcp://host:port`).
    Tcp,
    /// TLS over TCP (`tls://host:port`), optionally mutual.
    Tls,
    /// QUIC (`quic://host:port`): one bidirectional stream per connection, TLS built in.
    Quic,
    /// WebSocket over TCP (`ws://host:port`), binary messages.
    Ws,
    /// WebSocket over TLS (`wss://host:port`).
    Wss,
    /// In-process pipes (`mem://name`), for tests and nodes in one process.
    Mem,
}

impl Scheme {
    /// The scheme as written in endpoints (`"tcp"`, `"quic"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
            Scheme::Quic => "quic",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
            Scheme::Mem => "mem",
        }
    }
}

/// Where a source is served: `scheme://address[/machine][?token=T]`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The transport.
    pub scheme: Scheme,
    /// `host:port` for network schemes, a name for `mem`.
    pub address: String,
    /// The machine (named source) on the server; `None` for the server's only one.
    pub machine: Option<String>,
    /// `ws://` and `wss://` only: a token for the WebSocket upgrade itself (`?token=`), which
    /// am-relay checks before it bridges. Never printed.
    pub upgrade_token: Option<Box<str>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("scheme", &self.scheme)
            .field("address", &self.address)
            .field("machine", &self.machine)
            .field("upgrade_token", &self.upgrade_token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Endpoint {
    /// An endpoint of this scheme and address (`host:port`, or a name for `mem`), with no
    /// machine and no token.
    pub fn new(scheme: Scheme, address: impl Into<String>) -> Self {
        Endpoint {
            scheme,
            address: address.into(),
            machine: None,
            upgrade_token: None,
        }
    }

    /// The path and query of a WebSocket upgrade to this endpoint: `/MACHINE[?token=T]`.
    pub(crate) fn upgrade_path(&self) -> String {
        let mut path = self.machine.clone().unwrap_or_default();
        if let Some(token) = &self.upgrade_token {
            path.push_str("?token=");
            for byte in token.bytes() {
                match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        path.push(byte as char);
                    }
                    _ => path.push_str(&format!("%{byte:02X}")),
                }
            }
        }
        path
    }

    /// The same endpoint naming a machine (a named source on the server).
    pub fn with_machine(mut self, machine: impl Into<String>) -> Self {
        self.machine = Some(machine.into());
        self
    }

    /// The same endpoint without the machine: what a listener binds.
    pub fn without_machine(&self) -> Self {
        Endpoint {
            machine: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.address)?;
        if let Some(machine) = &self.machine {
            write!(f, "/{machine}")?;
        }
        Ok(())
    }
}

/// Why an endpoint string is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// No `scheme://` in the string.
    #[error("endpoint {0:?} has no scheme; write it as tcp://host:port[/machine]")]
    NoScheme(String),
    /// A scheme this library does not speak.
    #[error("unknown scheme {scheme:?} in {endpoint:?}; use tcp, tls, quic, ws, wss or mem")]
    UnknownScheme {
        /// The scheme written.
        scheme: String,
        /// The whole endpoint.
        endpoint: String,
    },
    /// Nothing after `scheme://`.
    #[error("endpoint {0:?} has no address after the scheme")]
    NoAddress(String),
    /// A network scheme without `:port`.
    #[error("endpoint {0:?} needs a port: host:port")]
    NoPort(String),
    /// The port is not a number from 0 to 65535.
    #[error(
        "port {port:?} in {endpoint:?} is not a port; ports are 1 to 65535 (0 to listen on any)"
    )]
    BadPort {
        /// The port written.
        port: String,
        /// The whole endpoint.
        endpoint: String,
    },
    /// A query on a scheme that takes none, or a query other than `?token=`.
    #[error(
        "endpoint {0:?}: only ws:// and wss:// take a query, and only `?token=` (am-relay's token)"
    )]
    BadQuery(String),
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| EndpointError::NoScheme(s.to_owned()))?;
        let scheme = match scheme {
            "tcp" => Scheme::Tcp,
            "tls" => Scheme::Tls,
            "quic" => Scheme::Quic,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            "mem" => Scheme::Mem,
            other => {
                return Err(EndpointError::UnknownScheme {
                    scheme: other.to_owned(),
                    endpoint: s.to_owned(),
                });
            }
        };
        // A WebSocket upgrade may carry a token for am-relay: ws://host:port/machine?token=T.
        let (rest, upgrade_token) = match rest.split_once('?') {
            None => (rest, None),
            Some((rest, query)) => match (scheme, query.strip_prefix("token=")) {
                (Scheme::Ws | Scheme::Wss, Some(token)) if !token.contains('&') => {
                    (rest, Some(crate::http::percent_decode(token).into()))
                }
                _ => return Err(EndpointError::BadQuery(s.to_owned())),
            },
        };
        let (address, machine) = match rest.split_once('/') {
            Some((address, machine)) if !machine.is_empty() => (address, Some(machine.to_owned())),
            Some((address, _)) => (address, None),
            None => (rest, None),
        };
        if address.is_empty() {
            return Err(EndpointError::NoAddress(s.to_owned()));
        }
        if scheme != Scheme::Mem {
            // The port follows the last colon outside an IPv6 literal's brackets.
            let port = address
                .rsplit_once(':')
                .filter(|(_, port)| !port.contains(']'))
                .map(|(_, port)| port);
            match port {
                None | Some("") => return Err(EndpointError::NoPort(s.to_owned())),
                Some(port) if port.parse::<u16>().is_err() => {
                    return Err(EndpointError::BadPort {
                        port: port.to_owned(),
                        endpoint: s.to_owned(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(Endpoint {
            scheme,
            address: address.to_owned(),
            machine,
            upgrade_token,
        })
    }
}

/// Why a transport could not bind or connect.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The listener could not bind (the port is taken, or the address is not this host's).
    #[error("cannot listen on {endpoint}: {error}")]
    Bind {
        /// The endpoint to listen on.
        endpoint: Endpoint,
        /// The operating system's error.
        error: io::Error,
    },
    /// Connecting failed (refused, unreachable, or its TLS or WebSocket handshake failed).
    #[error("cannot connect to {endpoint}: {error}")]
    Connect {
        /// The endpoint connected to.
        endpoint: Endpoint,
        /// The error.
        error: io::Error,
    },
    /// A TLS scheme (named) was used without TLS settings.
    #[error(
        "{0}:// needs TLS material: a CA to verify servers with, and a certificate and key to listen (`am-node certs DIR` writes development ones)"
    )]
    NoTls(&'static str),
}

fn boxed<L: Listener + 'static>(listener: L) -> Box<dyn Listener> {
    Box::new(listener)
}

/// Binds a listener for the endpoint's scheme. `max_frame` is the largest protocol frame the
/// node takes: transports that buffer messages (WebSocket) bound them by it.
pub async fn bind(
    endpoint: &Endpoint,
    config: &TransportConfig,
    max_frame: usize,
) -> Result<Box<dyn Listener>, TransportError> {
    let address = endpoint.address.as_str();
    let bound = match endpoint.scheme {
        Scheme::Tcp => tcp::bind(address).await.map(boxed),
        Scheme::Mem => mem::bind(address).map(boxed),
        Scheme::Tls => tls::bind(address, config.tls(Scheme::Tls)?)
            .await
            .map(boxed),
        Scheme::Quic => quic::bind(address, config.tls(Scheme::Quic)?).map(boxed),
        Scheme::Ws => ws::bind(address, None, max_frame).await.map(boxed),
        Scheme::Wss => ws::bind(address, Some(config.tls(Scheme::Wss)?), max_frame)
            .await
            .map(boxed),
    };
    bound.map_err(|source| TransportError::Bind {
        endpoint: endpoint.without_machine(),
        error: source,
    })
}

/// Connects to the endpoint.
pub async fn connect(
    endpoint: &Endpoint,
    config: &TransportConfig,
) -> Result<BoxStream, TransportError> {
    let address = endpoint.address.as_str();
    let connected = match endpoint.scheme {
        Scheme::Tcp => tcp::connect(address).await,
        Scheme::Mem => mem::connect(address).await,
        Scheme::Tls => tls::connect(address, config.tls(Scheme::Tls)?).await,
        Scheme::Quic => quic::connect(address, config.tls(Scheme::Quic)?).await,
        Scheme::Ws => ws::connect(address, &endpoint.upgrade_path(), None).await,
        Scheme::Wss => {
            ws::connect(
                address,
                &endpoint.upgrade_path(),
                Some(config.tls(Scheme::Wss)?),
            )
            .await
        }
    };
    connected.map_err(|source| TransportError::Connect {
        endpoint: endpoint.without_machine(),
        error: source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        let e: Endpoint = "tcp://127.0.0.1:7000/worker".parse().expect("valid");
        assert_eq!(
            e,
            Endpoint::new(Scheme::Tcp, "127.0.0.1:7000").with_machine("worker")
        );
        assert_eq!(e.to_string(), "tcp://127.0.0.1:7000/worker");
        let e: Endpoint = "quic://[::1]:9/".parse().expect("valid");
        assert_eq!(
            (e.scheme, e.address.as_str(), e.machine),
            (Scheme::Quic, "[::1]:9", None)
        );
        assert_eq!(
            "mem://a".parse::<Endpoint>().map(|e| e.address),
            Ok("a".into())
        );
    }

    #[test]
    fn bad_endpoints_say_what_to_write() {
        assert!(matches!(
            "127.0.0.1:1".parse::<Endpoint>(),
            Err(EndpointError::NoScheme(_))
        ));
        assert!(matches!(
            "udp://h:1".parse::<Endpoint>(),
            Err(EndpointError::UnknownScheme { .. })
        ));
        assert!(matches!(
            "tcp://".parse::<Endpoint>(),
            Err(EndpointError::NoAddress(_))
        ));
        let err = "tcp://localhost".parse::<Endpoint>().expect_err("no port");
        assert!(err.to_string().contains("host:port"), "{err}");
        // A port out of range is not a missing port.
        let err = "tcp://127.0.0.1:99999"
            .parse::<Endpoint>()
            .expect_err("no port");
        assert!(
            err.to_string().contains("\"99999\"") && err.to_string().contains("1 to 65535"),
            "{err}"
        );
        let err = "tcp://[::1]".parse::<Endpoint>().expect_err("no port");
        assert!(matches!(err, EndpointError::NoPort(_)), "{err}");
    }

    #[test]
    fn a_websocket_endpoint_carries_a_token_for_the_upgrade() {
        let err = "ws://127.0.0.1:7480/demo?token=a&b=c"
            .parse::<Endpoint>()
            .expect_err("one key only");
        assert!(err.to_string().contains("only `?token=`"), "{err}");
        let e: Endpoint = "ws://127.0.0.1:7480/demo?token=s%203/cret"
            .parse()
            .expect("valid");
        assert_eq!(
            (e.machine.as_deref(), e.upgrade_token.as_deref()),
            (Some("demo"), Some("s 3/cret"))
        );
        assert_eq!(e.upgrade_path(), "demo?token=s%203%2Fcret");
        assert!(!e.to_string().contains("cret") && !format!("{e:?}").contains("cret"));
        for bad in ["tcp://h:1/m?token=t", "ws://h:1/m?tokn=t"] {
            assert!(
                matches!(bad.parse::<Endpoint>(), Err(EndpointError::BadQuery(_))),
                "{bad}"
            );
        }
    }
}
