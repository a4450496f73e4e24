//! TLS material and the `tls://` transport (TLS over TCP with tokio-rustls).
//!
//! A [`TlsConfig`] is loaded once from PEM (a certificate chain and key, a CA to verify peers,
//! optionally requiring client certificates) and serves every TLS-based transport: `tls://`,
//! `wss://` and `quic://`. ring is the only crypto provider, set on every config explicitly so
//! nothing depends on a process-wide default.

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{BoxFuture, BoxStream, Endpoint, Handshake, Listener, PeerInfo, Scheme};

/// The ALPN protocol of aRPC over QUIC.
pub(crate) const ALPN: &[u8] = b"arpc/1";

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {what} {path}: {error}")]
    Read {
        /// Which file it is (`certificate`, `private key`, `CA certificate`).
        what: &'static str,
        /// Its path.
        path: String,
        /// The operating system's error.
        error: io::Error,
    },
    /// A file is not valid PEM.
    #[error("{what} is not valid PEM: {reason}")]
    Pem {
        /// Which file it is.
        what: &'static str,
        /// The parser's error.
        reason: String,
    },
    /// A file (named) holds no certificate.
    #[error("{0} holds no certificate")]
    NoCertificate(&'static str),
    /// rustls refused the configuration (a key that does not match its certificate, say).
    #[error("the TLS configuration is not usable: {0}")]
    Rustls(String),
    /// `require_client_cert` is set without a CA to verify clients with.
    #[error("requiring client certificates needs a CA to verify them with (`ca`)")]
    ClientAuthWithoutCa,
}

/// TLS settings of one node (or tool): what it presents and whom it trusts.
#[derive(Clone)]
pub struct TlsConfig {
    /// For listeners; `None` when the material has no key (a client-only config).
    pub(crate) server: Option<Arc<ServerConfig>>,
    pub(crate) client: Arc<ClientConfig>,
    /// The same configs with the QUIC ALPN set.
    pub(crate) quic_server: Option<Arc<ServerConfig>>,
    pub(crate) quic_client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rustls_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

impl TlsConfig {
    /// From PEM files: `cert` and `key` (optional for a client that presents nothing), `ca` to
    /// verify peers, and whether listeners require client certificates (mutual TLS).
    pub fn from_pem_files(
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        ca: Option<&std::path::Path>,
        client_auth: bool,
    ) -> Result<Self, TlsError> {
        let read = |what: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.display().to_string(),
                error: source,
            })
        };
        let cert = cert.map(|p| read("certificate", p)).transpose()?;
        let key = key.map(|p| read("private key", p)).transpose()?;
        let ca = ca.map(|p| read("CA certificate", p)).transpose()?;
        Self::from_pem(cert.as_deref(), key.as_deref(), ca.as_deref(), client_auth)
    }

    /// From PEM text; see [`TlsConfig::from_pem_files`].
    pub fn from_pem(
        cert: Option<&[u8]>,
        key: Option<&[u8]>,
        ca: Option<&[u8]>,
        client_auth: bool,
    ) -> Result<Self, TlsError> {
        let chain = match cert {
            Some(pem) => Some(certificates(pem, "the certificate")?),
            None => None,
        };
        let key = match key {
            Some(pem) => Some(
                PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
                    what: "the private key",
                    reason: e.to_string(),
                })?,
            ),
            None => None,
        };
        let mut roots = RootCertStore::empty();
        if let Some(pem) = ca {
            for cert in certificates(pem, "the CA")? {
                roots.add(cert).map_err(rustls_error)?;
            }
        }
        let roots = Arc::new(roots);

        let server = match (&chain, &key) {
            (Some(chain), Some(key)) => {
                let builder = ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(rustls_error)?;
                let builder = if client_auth {
                    if roots.is_empty() {
                        return Err(TlsError::ClientAuthWithoutCa);
                    }
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                            .build()
                            .map_err(rustls_error)?;
                    builder.with_client_cert_verifier(verifier)
                } else {
                    builder.with_no_client_auth()
                };
                Some(
                    builder
                        .with_single_cert(chain.clone(), key.clone_key())
                        .map_err(rustls_error)?,
                )
            }
            _ => None,
        };
        let client_builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?
            .with_root_certificates(roots.clone());
        let client = match (chain, key) {
            (Some(chain), Some(key)) => client_builder
                .with_client_auth_cert(chain, key)
                .map_err(rustls_error)?,
            _ => client_builder.with_no_client_auth(),
        };
        let with_alpn_server = |c: &ServerConfig| {
            let mut c = c.clone();
            c.alpn_protocols = vec![ALPN.to_vec()];
            Arc::new(c)
        };
        let mut quic_client = client.clone();
        quic_client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(TlsConfig {
            quic_server: server.as_ref().map(with_alpn_server),
            server: server.map(Arc::new),
            client: Arc::new(client),
            quic_client: Arc::new(quic_client),
        })
    }

    pub(crate) fn server(&self) -> io::Result<Arc<ServerConfig>> {
        self.server.clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a TLS listener needs a certificate and key",
            )
        })
    }
}

fn certificates(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

/// The name a client checks the server's certificate against: the endpoint's host.
pub(crate) fn server_name(address: &str) -> io::Result<ServerName<'static>> {
    let host = match address.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    };
    ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad server name {host:?}: {e}"),
        )
    })
}

/// The identity a client certificate proves: its first DNS subject alternative name; `None`
/// when the client presented no certificate. A certificate that names no DNS identity is an
/// error: under mutual TLS the server would otherwise take the id the client claims.
pub(crate) fn identity(certs: Option<&[CertificateDer<'_>]>) -> io::Result<Option<String>> {
    let Some(first) = certs.and_then(<[_]>::first) else {
        return Ok(None);
    };
    let named = webpki::EndEntityCert::try_from(first)
        .ok()
        .and_then(|cert| cert.valid_dns_names().next().map(str::to_owned));
    match named {
        Some(name) => Ok(Some(name)),
        None => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the client certificate names no DNS subject alternative name, so it proves no \
             client id; issue it with the client's id as a DNS name (am-node certs DIR ID)",
        )),
    }
}

/// Explains a TLS failure with the likely fix, for both logs and client errors.
///
/// Which side must change matters: the side whose check failed reads "invalid peer
/// certificate: ..." (rustls) or its own QUIC error; the other side only hears an alert
/// ("received fatal alert: ...", or a QUIC close "by peer"), whose name alone misleads: a
/// certificate signed by another CA of the same name fails its signature check, and the alert
/// for that is `DecryptError`.
pub fn explain(e: io::Error) -> io::Error {
    let text = e.to_string();
    let lower = text.to_lowercase();
    let from_peer = lower.contains("received fatal alert") || lower.contains("by peer");
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    // rustls names problems in its messages; QUIC reports the TLS alert number too.
    let hint = if has(&[
        "certificaterequired",
        "certificate required",
        "nocertificatespresented",
        "error 116",
    ]) {
        "the server requires a client certificate (mutual TLS): give this side a certificate \
         and key signed by the server's CA (--cert and --key on the command line; `cert` and \
         `key` in the node's tls table)"
    } else if has(&["expired", "error 45"]) {
        "a certificate has expired; issue a new one (am-node certs)"
    } else if has(&["notvalidforname", "not valid for name"]) {
        "the server's certificate does not name this host; connect by a name it lists"
    } else if has(&[
        "unknownissuer",
        "unknown issuer",
        "unknownca",
        "badsignature",
        "decrypterror",
        "badcertificate",
        "error 48",
        "error 51",
        "error 42",
    ]) {
        if from_peer {
            "the peer refused this side's certificate: it is not signed by the CA the peer \
             trusts. Fix this side's certificate (issue it from the peer's CA: `am-node certs` \
             in the peer's directory), or give the peer this side's CA"
        } else {
            "the peer's certificate is not signed by the CA this side is configured with \
             (--ca on the command line; `ca` in the node's tls table). Fix the peer's \
             certificate (issue it from this CA) or configure the CA that signed it; a CA of \
             the same name from another `am-node certs` run is another CA"
        }
    } else if has(&["invalidcontenttype", "corrupt message"]) {
        "the peer does not speak TLS; use tcp:// or ws:// for a plain listener"
    } else {
        return e;
    };
    io::Error::new(e.kind(), format!("{text}: {hint}"))
}

pub(super) struct TlsListener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    local: Endpoint,
}

pub(super) async fn bind(address: &str, tls: &TlsConfig) -> io::Result<TlsListener> {
    let acceptor = TlsAcceptor::from(tls.server()?);
    let listener = TcpListener::bind(address).await?;
    let local = Endpoint::new(Scheme::Tls, listener.local_addr()?.to_string());
    Ok(TlsListener {
        listener,
        acceptor,
        local,
    })
}

pub(super) async fn connect(address: &str, tls: &TlsConfig) -> io::Result<BoxStream> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let stream = TlsConnector::from(tls.client.clone())
        .connect(server_name(address)?, tcp)
        .await
        .map_err(explain)?;
    Ok(Box::new(stream))
}

/// TLS over an accepted TCP connection, with the client's identity from its certificate.
pub(super) async fn accept_tls(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    address: String,
) -> io::Result<(tokio_rustls::server::TlsStream<TcpStream>, PeerInfo)> {
    tcp.set_nodelay(true)?;
    let stream = acceptor.accept(tcp).await.map_err(explain)?;
    let identity = identity(stream.get_ref().1.peer_certificates())?;
    Ok((stream, PeerInfo { address, identity }))
}

impl Listener for TlsListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Handshake>> {
        Box::pin(async move {
            let (tcp, peer) = self.listener.accept().await?;
            let acceptor = self.acceptor.clone();
            let handshake: Handshake = Box::pin(async move {
                let (stream, peer) = accept_tls(acceptor, tcp, peer.to_string()).await?;
                let stream: BoxStream = Box::new(stream);
                Ok((stream, peer))
            });
            Ok(handshake)
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        self.local.clone()
    }
}
