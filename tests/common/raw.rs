//! Raw peers for hostile-input tests: a process memory probe, TLS and QUIC clients that trust
//! anything (a hostile peer does not care who the server is), a WebSocket client that writes
//! any frame byte by byte, and [`Link`], one protocol byte stream over any of them.
//!
//! Nothing here speaks the protocol correctly on purpose: callers choose every byte.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use asyncmachine::proto::{FrameConfig, FrameReader, Message, ProtoError};
use asyncmachine::transport::BoxStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Memory

/// One field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The process's resident set size now, in KiB.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// The highest resident set size since the last [`PeakRss::reset`]. A buffer freed before the
/// input's connection closed leaves RSS where it was: only the peak shows it was ever held.
///
/// Linux resets its own high-water mark (`VmHWM`) when `5` is written to
/// `/proc/self/clear_refs`; where that is not allowed, a thread samples `VmRSS` every
/// millisecond instead.
#[derive(Debug)]
pub struct PeakRss {
    /// `None` when the kernel's high-water mark can be reset.
    sampled: Option<Arc<AtomicU64>>,
}

impl PeakRss {
    /// The probe of this process (one, shared by every test of the binary).
    pub fn get() -> &'static PeakRss {
        static PROBE: OnceLock<PeakRss> = OnceLock::new();
        PROBE.get_or_init(|| {
            if clear_peak() {
                return PeakRss { sampled: None };
            }
            let peak = Arc::new(AtomicU64::new(rss_kib()));
            let sampler = peak.clone();
            std::thread::spawn(move || {
                loop {
                    sampler.fetch_max(rss_kib(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            PeakRss {
                sampled: Some(peak),
            }
        })
    }

    /// How the peak is measured, for the suite's summary.
    pub fn method(&self) -> &'static str {
        match self.sampled {
            None => "VmHWM, reset through /proc/self/clear_refs",
            Some(_) => "VmRSS sampled every millisecond",
        }
    }

    /// Starts a new measurement at the current RSS.
    pub fn reset(&self) {
        match &self.sampled {
            None => {
                clear_peak();
            }
            Some(peak) => peak.store(rss_kib(), Ordering::Relaxed),
        }
    }

    /// The highest RSS since the last reset, in KiB.
    pub fn peak_kib(&self) -> u64 {
        match &self.sampled {
            None => status_kib("VmHWM"),
            Some(peak) => peak.load(Ordering::Relaxed).max(rss_kib()),
        }
    }
}

fn clear_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

// ---------------------------------------------------------------------------------------------
// TLS and QUIC clients that accept any server certificate

/// Accepts every certificate, but still checks the handshake signatures (so the TLS session
/// is a real one).
#[derive(Debug)]
struct TrustAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client TLS configuration (ring, TLS 1.2 and 1.3) that trusts any server and offers the
/// given ALPN protocols.
pub fn trusting_tls(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn ip_name(address: &str) -> ServerName<'static> {
    let ip: std::net::SocketAddr = address.parse().expect("tests use IP addresses");
    ServerName::IpAddress(ip.ip().into())
}

/// A plain TCP connection, as a stream.
pub async fn tcp(address: &str) -> io::Result<BoxStream> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    Ok(Box::new(tcp))
}

/// A TLS connection (no ALPN) to a tls:// or wss:// listener.
pub async fn tls(address: &str) -> io::Result<BoxStream> {
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(trusting_tls(&[]))
        .connect(ip_name(address), tcp)
        .await?;
    Ok(Box::new(stream))
}

/// The bytes of a real TLS ClientHello (as the first record a client sends), to cut or spoil.
pub fn client_hello() -> Vec<u8> {
    let mut client = rustls::ClientConnection::new(trusting_tls(&[]), ip_name("127.0.0.1:1"))
        .expect("a client connection");
    let mut out = Vec::new();
    client.write_tls(&mut out).expect("writes into a Vec");
    out
}

/// A QUIC connection (the endpoint must live as long as the connection) offering `alpn`.
pub async fn quic(
    address: &str,
    alpn: &[&[u8]],
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(trusting_tls(alpn))
        .map_err(|e| e.to_string())?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("valid"))
        .map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let remote = address.parse().map_err(|e| format!("{address}: {e}"))?;
    let connection = endpoint
        .connect(remote, "127.0.0.1")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok((endpoint, connection))
}

// ---------------------------------------------------------------------------------------------
// WebSocket, byte by byte

/// One WebSocket frame as a client writes it, with every field under the caller's control.
#[derive(Debug, Clone)]
pub struct WsFrame {
    pub fin: bool,
    /// The three reserved bits (RSV1..3), as bits 2..0.
    pub rsv: u8,
    pub opcode: u8,
    /// The masking key; `None` sends the payload unmasked (a protocol error from a client).
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
    /// A length to claim instead of the payload's, in the 64-bit form.
    pub claimed_len: Option<u64>,
}

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

impl WsFrame {
    /// A final, masked frame of `opcode` carrying `payload`.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Self {
        WsFrame {
            fin: true,
            rsv: 0,
            opcode,
            mask: Some([0x37, 0xfa, 0x21, 0x3d]),
            payload: payload.into(),
            claimed_len: None,
        }
    }

    pub fn binary(payload: impl Into<Vec<u8>>) -> Self {
        WsFrame::new(OP_BINARY, payload)
    }

    pub fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    pub fn rsv(mut self, rsv: u8) -> Self {
        self.rsv = rsv;
        self
    }

    pub fn mask(mut self, mask: Option<[u8; 4]>) -> Self {
        self.mask = mask;
        self
    }

    pub fn claim(mut self, len: u64) -> Self {
        self.claimed_len = Some(len);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(u8::from(self.fin) << 7 | (self.rsv & 0x7) << 4 | (self.opcode & 0xf));
        let masked = u8::from(self.mask.is_some()) << 7;
        match (self.claimed_len, self.payload.len() as u64) {
            (Some(claim), _) => {
                out.push(masked | 127);
                out.extend_from_slice(&claim.to_be_bytes());
            }
            (None, len) if len < 126 => out.push(masked | len as u8),
            (None, len) if len <= u64::from(u16::MAX) => {
                out.push(masked | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            (None, len) => {
                out.push(masked | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        match self.mask {
            // A zero key leaves the payload as it is: cheap for bulk frames.
            Some([0, 0, 0, 0]) => {
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&self.payload);
            }
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

/// A WebSocket upgrade request for `path`, with `extra` header lines (`"Name: value"`).
pub fn upgrade_request(host: &str, path: &str, extra: &[&str]) -> Vec<u8> {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.into_bytes()
}

/// An HTTP response head as read from a raw stream.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    /// Bytes read past the head (the start of the body, or of WebSocket frames).
    pub rest: Vec<u8>,
}

/// Reads a response head: `Ok(None)` when the peer closed (or reset) before sending one.
pub async fn read_response(io: &mut BoxStream) -> Result<Option<HttpResponse>, String> {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
            return Ok(Some(HttpResponse {
                status,
                head,
                rest: buf[end + 4..].to_vec(),
            }));
        }
        if buf.len() > 64 * 1024 {
            return Err("a response head over 64 KiB".into());
        }
        let mut chunk = vec![0u8; 4096];
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) if buf.is_empty() => return Ok(None),
            Ok(0) | Err(_) => {
                return Err(format!(
                    "closed inside a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads and drops whatever comes until the peer closes; errors (a reset) count as closed.
pub async fn drain(io: &mut BoxStream) {
    let mut chunk = vec![0u8; 64 * 1024];
    while let Ok(n) = io.read(&mut chunk).await {
        if n == 0 {
            return;
        }
    }
}

/// What a server frame said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A data frame's payload (binary, text or continuation).
    Data(Vec<u8>),
    Close {
        code: Option<u16>,
        reason: String,
    },
    /// Ping or pong.
    Control,
    /// The connection ended without a close frame.
    Gone(String),
}

/// A WebSocket client connection after an upgrade; frames are written and read raw.
pub struct RawWs {
    pub io: BoxStream,
    buf: Vec<u8>,
}

impl std::fmt::Debug for RawWs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawWs")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl RawWs {
    /// Sends the upgrade request; `Ok` only with a `101`.
    pub async fn upgrade(mut io: BoxStream, request: &[u8]) -> Result<RawWs, String> {
        io.write_all(request).await.map_err(|e| e.to_string())?;
        match read_response(&mut io).await? {
            Some(response) if response.status == 101 => Ok(RawWs {
                io,
                buf: response.rest,
            }),
            Some(response) => Err(format!("upgrade refused: {}", response.head)),
            None => Err("closed instead of answering the upgrade".into()),
        }
    }

    /// A WebSocket whose upgrade was read elsewhere; `rest` is what came after the head.
    pub fn from_parts(io: BoxStream, rest: Vec<u8>) -> RawWs {
        RawWs { io, buf: rest }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    pub async fn send(&mut self, frame: &WsFrame) -> io::Result<()> {
        self.send_raw(&frame.encode()).await
    }

    async fn fill(&mut self, want: usize) -> Result<(), String> {
        while self.buf.len() < want {
            let mut chunk = vec![0u8; 16 * 1024];
            match self.io.read(&mut chunk).await {
                Ok(0) => return Err("closed".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// The next frame from the server.
    pub async fn next(&mut self) -> WsEvent {
        if let Err(e) = self.fill(2).await {
            return WsEvent::Gone(e);
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 => {
                if let Err(e) = self.fill(4).await {
                    return WsEvent::Gone(e);
                }
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                if let Err(e) = self.fill(10).await {
                    return WsEvent::Gone(e);
                }
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(len), 10)
            }
            len => (u64::from(len), 2),
        };
        if len > 64 << 20 {
            return WsEvent::Gone(format!("the server sent a frame of {len} bytes"));
        }
        let key = if masked {
            if let Err(e) = self.fill(at + 4).await {
                return WsEvent::Gone(e);
            }
            let key = [
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ];
            at += 4;
            Some(key)
        } else {
            None
        };
        let end = at + len as usize;
        if let Err(e) = self.fill(end).await {
            return WsEvent::Gone(e);
        }
        let mut payload: Vec<u8> = self.buf[at..end].to_vec();
        self.buf.drain(..end);
        if let Some(key) = key {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b ^= key[i % 4]);
        }
        match b0 & 0x0f {
            OP_CLOSE => WsEvent::Close {
                code: (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                reason: String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned(),
            },
            OP_PING | OP_PONG => WsEvent::Control,
            _ => WsEvent::Data(payload),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One protocol byte stream over a transport stream or a raw WebSocket

/// How a link ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    /// The WebSocket close frame, when one came.
    pub close: Option<(Option<u16>, String)>,
    /// Why reading stopped, when it was not a clean close.
    pub error: Option<String>,
}

/// What a link received next.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Message(Message),
    /// The bytes the server sent are not protocol.
    Garbled(String),
    Ended(Ended),
}

enum Wire {
    Stream(BoxStream),
    Ws(RawWs),
}

/// A protocol byte stream: over any transport stream (each write as it is), or over a raw
/// WebSocket (each write as one binary message).
pub struct Link {
    wire: Wire,
    reader: FrameReader,
    ended: Option<Ended>,
    /// Set once a write failed (the server closed while the client wrote).
    pub write_failed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub fn stream(stream: BoxStream) -> Self {
        Link::new(Wire::Stream(stream))
    }

    pub fn ws(ws: RawWs) -> Self {
        Link::new(Wire::Ws(ws))
    }

    fn new(wire: Wire) -> Self {
        // A reader that takes whatever a server may send, compressed or not.
        let config = FrameConfig {
            max_frame: 16 << 20,
            compression: Some(Default::default()),
        };
        Link {
            wire,
            reader: FrameReader::new(config),
            ended: None,
            write_failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Writes bytes of the protocol stream; an error means the server is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let sent = match &mut self.wire {
            Wire::Stream(stream) => {
                async {
                    stream.write_all(bytes).await?;
                    stream.flush().await
                }
                .await
            }
            // Messages of at most 16 KiB: a large write reaches the node as a stream of
            // messages (as a browser may send it), not as one the relay refuses for its size.
            Wire::Ws(ws) => {
                async {
                    for chunk in bytes.chunks(16 * 1024) {
                        ws.send(&WsFrame::binary(chunk.to_vec())).await?;
                    }
                    Ok(())
                }
                .await
            }
        };
        if sent.is_err() {
            self.write_failed.store(true, Ordering::Relaxed);
        }
        sent
    }

    /// Writes raw WebSocket frames (only on a WebSocket link).
    pub async fn send_ws_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.wire {
            Wire::Ws(ws) => ws.send_raw(bytes).await,
            Wire::Stream(_) => Err(io::Error::other("not a raw WebSocket link")),
        }
    }

    /// Ends the client's side: a FIN (TCP, TLS, QUIC) or a close frame (WebSocket).
    pub async fn finish(&mut self) -> io::Result<()> {
        match &mut self.wire {
            Wire::Stream(stream) => stream.shutdown().await,
            Wire::Ws(ws) => {
                ws.send(&WsFrame::new(OP_CLOSE, 1000u16.to_be_bytes()))
                    .await
            }
        }
    }

    /// Reads and drops everything until the link ends, without decoding it (a flood of
    /// answers decodes slowly in a debug build). Not bounded: wrap it in a timeout.
    pub async fn until_ended(&mut self) -> Ended {
        loop {
            if let Some(ended) = &self.ended {
                return ended.clone();
            }
            match &mut self.wire {
                Wire::Stream(stream) => {
                    let mut chunk = vec![0u8; 64 * 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) => self.ended = Some(Ended::default()),
                        Ok(_) => {}
                        Err(e) => {
                            self.ended = Some(Ended {
                                close: None,
                                error: Some(e.to_string()),
                            })
                        }
                    }
                }
                Wire::Ws(ws) => match ws.next().await {
                    WsEvent::Data(_) | WsEvent::Control => {}
                    WsEvent::Close { code, reason } => {
                        self.ended = Some(Ended {
                            close: Some((code, reason)),
                            error: None,
                        })
                    }
                    WsEvent::Gone(error) => {
                        self.ended = Some(Ended {
                            close: None,
                            error: Some(error),
                        })
                    }
                },
            }
        }
    }

    /// The next message, or how the link ended. Not bounded: wrap it in a timeout.
    pub async fn next(&mut self) -> Received {
        loop {
            if let Some(ended) = &self.ended {
                return Received::Ended(ended.clone());
            }
            match self.reader.next_message() {
                Ok(Some(message)) => return Received::Message(message),
                Ok(None) => {}
                Err(e) => return Received::Garbled(describe(&e)),
            }
            match &mut self.wire {
                Wire::Stream(stream) => {
                    let mut chunk = vec![0u8; 16 * 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) => self.ended = Some(Ended::default()),
                        Ok(n) => self.reader.push(&chunk[..n]),
                        Err(e) => {
                            self.ended = Some(Ended {
                                close: None,
                                error: Some(e.to_string()),
                            })
                        }
                    }
                }
                Wire::Ws(ws) => match ws.next().await {
                    WsEvent::Data(data) => self.reader.push(&data),
                    WsEvent::Control => {}
                    WsEvent::Close { code, reason } => {
                        self.ended = Some(Ended {
                            close: Some((code, reason)),
                            error: None,
                        })
                    }
                    WsEvent::Gone(error) => {
                        self.ended = Some(Ended {
                            close: None,
                            error: Some(error),
                        })
                    }
                },
            }
        }
    }
}

fn describe(e: &ProtoError) -> String {
    e.to_string()
}
