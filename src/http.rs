//! The little HTTP/1.1 the relay, the node's WebSocket listeners and the admin listener speak:
//! read one request head (bounded), answer with a small body and the security headers every
//! answer carries, or accept a WebSocket upgrade.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest request head accepted; a longer one is answered with 431.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// What a refused request may still send after the answer, read and thrown away so that the
/// answer is not lost to a reset (closing a socket with unread input resets it, and a reset
/// can discard the answer before the peer reads it).
const DRAIN_BYTES: usize = 4 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Bodies up to this size are sent with their head in one write (a copy); larger ones after it.
const ONE_WRITE: usize = 16 * 1024;

/// The policy of every answer that is not a page: nothing may load, nothing may frame it.
pub(crate) const CSP_NONE: &str = "default-src 'none'; frame-ancestors 'none'";

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    /// `HTTP/1.0` or `HTTP/1.1`: a WebSocket upgrade needs 1.1.
    pub version: String,
    headers: Vec<(String, String)>,
}

impl Request {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_upgrade(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    }

    /// The path without its query: what may be logged (a query can carry a token).
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

/// Why a request head could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    #[error("connection closed before the request head ended")]
    Closed,
    #[error("request head is not UTF-8")]
    NotUtf8,
    #[error("malformed request line")]
    Malformed,
    #[error("unsupported HTTP version {0:?}; speak HTTP/1.1")]
    Version(String),
    #[error("reading the request head: {0}")]
    Io(#[from] std::io::Error),
}

impl HeadError {
    /// The status to answer with, when the peer can still read one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HeadError::TooLarge => Some(431),
            HeadError::NotUtf8 | HeadError::Malformed | HeadError::Version(_) => Some(400),
            HeadError::Closed | HeadError::Io(_) => None,
        }
    }
}

/// Reads a request head; returns it and any bytes read past it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Request, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut searched: usize = 0;
    let end = loop {
        // Only the new bytes (and the three before them) can complete the blank line.
        let from = searched.saturating_sub(3);
        if let Some(at) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            break from + at;
        }
        searched = buf.len();
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if end > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HeadError::NotUtf8)?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path, version) = (first.next(), first.next(), first.next());
    let (Some(method), Some(path), Some(version), None) = (method, path, version, first.next())
    else {
        return Err(HeadError::Malformed);
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HeadError::Version(version.chars().take(16).collect()));
    }
    // RFC 9112: a field line is `name: value`, the name a token with no whitespace before the
    // colon; anything else is a malformed request (and a way to smuggle one past a proxy).
    let headers = lines
        .map(|line| match line.split_once(':') {
            // A bare CR, LF or NUL inside a value could split a header we echo (the relay's
            // policy quotes Host) or a line we log.
            Some((name, value))
                if !name.is_empty()
                    && !name.contains([' ', '\t'])
                    && !value.contains(['\r', '\n', '\0']) =>
            {
                Ok((name.to_owned(), value.trim().to_owned()))
            }
            _ => Err(HeadError::Malformed),
        })
        .collect::<Result<_, _>>()?;
    let rest = buf[end + 4..].to_vec();
    Ok((
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            version: version.to_owned(),
            headers,
        },
        rest,
    ))
}

/// The value of a query parameter, undecoded beyond `%XX` escapes.
pub(crate) fn query(path: &str, key: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Answers with a body and closes; the body may load nothing (see [`respond_with`]).
pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    respond_with(stream, status, content_type, CSP_NONE, &[], body).await
}

/// Answers with a body under a Content-Security-Policy, and closes. Every answer also says
/// `nosniff` (a body is only ever its declared type) and may not be framed (clickjacking).
pub(crate) async fn respond_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    csp: &str,
    extra_headers: &[(&str, &str)],
    body: impl AsRef<[u8]>,
) -> std::io::Result<()> {
    let body = body.as_ref();
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nContent-Security-Policy: {csp}\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    if body.len() <= ONE_WRITE {
        // One write: a client that reads only what has arrived still gets the reason with the
        // status.
        let mut response = head.into_bytes();
        response.extend_from_slice(body);
        stream.write_all(&response).await?;
    } else {
        // A file (am.wasm is over a megabyte) goes from where it lies: a copy per request
        // would hold that much memory for as long as the client takes to read it.
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}

/// How long a node's own HTTP answers (the collector's console files, `/metrics`) may take to
/// be taken by the client: one that stops reading must not hold a task, a socket and its
/// buffers for ever. The relay bounds its answers by its configured idle timeout instead.
pub(crate) const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Answers a request whose head could not be read (431 for one too large, 400 for a malformed
/// one), then reads and drops what the peer still sends, within a bound, so the answer reaches
/// it instead of a reset. A head that ended with the connection gets no answer.
pub(crate) async fn refuse_head<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    error: &HeadError,
) {
    let Some(status) = error.status() else {
        return;
    };
    let body = match error {
        HeadError::TooLarge => {
            format!("the request head is over {MAX_HEAD} bytes; send fewer or shorter headers\n")
        }
        other => format!("bad request: {other}\n"),
    };
    if respond(stream, status, "text/plain", &body).await.is_ok() {
        drain(stream).await;
    }
}

/// Reads and drops input until the peer closes, or [`DRAIN_BYTES`] or [`DRAIN_TIME`] pass.
async fn drain<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 8192];
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// The `Sec-WebSocket-Key` of a valid upgrade request, or the status and reason to refuse it.
pub(crate) fn upgrade_key(request: &Request) -> Result<&str, (u16, String)> {
    if !request.is_upgrade() {
        return Err((426, "not a WebSocket upgrade".into()));
    }
    if request.method != "GET" {
        return Err((
            400,
            format!("a WebSocket upgrade is a GET, not {:?}", request.method),
        ));
    }
    if request.version != "HTTP/1.1" {
        return Err((
            400,
            format!(
                "a WebSocket upgrade needs HTTP/1.1, not {}",
                request.version
            ),
        ));
    }
    let key = request
        .header("sec-websocket-key")
        .ok_or_else(|| (400, "missing Sec-WebSocket-Key".to_owned()))?;
    if request.header("sec-websocket-version") != Some("13") {
        return Err((400, "only WebSocket version 13 is supported".into()));
    }
    Ok(key)
}

/// Accepts a WebSocket upgrade.
pub(crate) async fn accept_upgrade<S: AsyncWrite + Unpin>(
    stream: &mut S,
    key: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    stream.write_all(head.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_a_head_and_keeps_what_follows() {
        let mut input: &[u8] =
            b"GET /arpc/demo?token=a%20b HTTP/1.1\r\nHost: x:1\r\nUpgrade: WebSocket\r\n\r\nextra";
        let (request, rest) = read_head(&mut input).await.expect("parses");
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/arpc/demo?token=a%20b")
        );
        assert_eq!(request.header("HOST"), Some("x:1"));
        assert!(request.is_upgrade());
        assert_eq!(rest, b"extra");
        assert_eq!(query(&request.path, "token").as_deref(), Some("a b"));
    }

    #[tokio::test]
    async fn refuses_malformed_field_lines_and_other_versions() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\n: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
        ] {
            let mut input = head;
            let error = read_head(&mut input).await.expect_err("refused");
            assert_eq!(error.status(), Some(400), "{error} for {head:?}");
        }
        // 1.0 is HTTP (the admin listener answers it), but not an upgrade.
        let mut input: &[u8] =
            b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let (request, _) = read_head(&mut input).await.expect("HTTP/1.0 is read");
        let (status, reason) = upgrade_key(&request).expect_err("not an upgrade");
        assert_eq!(status, 400);
        assert!(reason.contains("HTTP/1.1"), "{reason}");
    }

    #[tokio::test]
    async fn refuses_what_is_not_http() {
        let mut input: &[u8] = b"\x05\x00hello\r\n\r\n";
        assert!(read_head(&mut input).await.is_err());
        let big = vec![b'a'; 20_000];
        let mut input: &[u8] = &big;
        assert!(
            read_head(&mut input)
                .await
                .expect_err("too big")
                .to_string()
                .contains("over")
        );
    }

    #[tokio::test]
    async fn a_large_body_follows_its_head_whole() {
        let body: Vec<u8> = (0..ONE_WRITE * 5).map(|i| i as u8).collect();
        let (mut client, mut server) = tokio::io::duplex(4096);
        let answering = tokio::spawn(async move {
            respond_with(&mut server, 200, "application/wasm", CSP_NONE, &[], &body).await
        });
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("reads");
        answering.await.expect("done").expect("answered");
        let at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head = std::str::from_utf8(&answer[..at]).expect("text");
        assert!(
            head.contains(&format!("Content-Length: {}", ONE_WRITE * 5)),
            "{head}"
        );
        let sent: Vec<u8> = (0..ONE_WRITE * 5).map(|i| i as u8).collect();
        assert_eq!(&answer[at + 4..], &sent[..]);
    }

    #[tokio::test]
    async fn a_head_too_large_is_answered_431_and_the_rest_drained() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let refusing = tokio::spawn(async move {
            let error = read_head(&mut server).await.expect_err("too large");
            refuse_head(&mut server, &error).await;
        });
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.extend(std::iter::repeat_n(b'a', 200_000));
        // All of it is taken (drained) although the answer came after 16 KiB.
        client.write_all(&head).await.expect("the server drains");
        client.shutdown().await.expect("half-close");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("reads");
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
            "{answer}"
        );
        refusing.await.expect("done");
    }
}
