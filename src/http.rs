//! The little HTTP/1.1 the relay and the admin listener speak: read one request head (bounded),
//! answer with a small body, or accept a WebSocket upgrade.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
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
}

/// Reads a request head; returns it and any bytes read past it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Request, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(format!("request head over {MAX_HEAD} bytes"));
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the request head ended".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| "request head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path, version) = (first.next(), first.next(), first.next());
    let (Some(method), Some(path), Some(version)) = (method, path, version) else {
        return Err("malformed request line".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unsupported HTTP version {version}"));
    }
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let rest = buf[end + 4..].to_vec();
    Ok((
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
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
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Answers with a body and closes.
pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    // One write: a client that reads only what has arrived still gets the reason with the status.
    let mut response = head.into_bytes();
    response.extend_from_slice(body.as_bytes());
    stream.write_all(&response).await?;
    stream.flush().await?;
    stream.shutdown().await
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
    async fn refuses_what_is_not_http() {
        let mut input: &[u8] = b"\x05\x00hello\r\n\r\n";
        assert!(read_head(&mut input).await.is_err());
        let big = vec![b'a'; 20_000];
        let mut input: &[u8] = &big;
        assert!(
            read_head(&mut input)
                .await
                .expect_err("too big")
                .contains("over")
        );
    }
}
