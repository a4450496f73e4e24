//! A TCP proxy that counts the bytes it forwards in each direction: how benchmarks measure
//! what a protocol puts on the wire, independent of either endpoint's own counters.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bytes forwarded so far.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// Client to server.
    pub up: AtomicU64,
    /// Server to client.
    pub down: AtomicU64,
}

impl ByteCounts {
    pub fn total(&self) -> u64 {
        self.up.load(Ordering::Relaxed) + self.down.load(Ordering::Relaxed)
    }
}

/// A running proxy; dropping it stops accepting (open connections finish on their own).
#[derive(Debug)]
pub struct CountingProxy {
    pub addr: SocketAddr,
    pub counts: Arc<ByteCounts>,
    accept: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(ByteCounts::default());
        let c = counts.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counts = c.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_rd, client_wr) = client.into_split();
                    let (server_rd, server_wr) = server.into_split();
                    let up = pump(client_rd, server_wr, counts.clone(), true);
                    let down = pump(server_rd, client_wr, counts, false);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(CountingProxy {
            addr,
            counts,
            accept,
        })
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counts: Arc<ByteCounts>,
    up: bool,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let counter = if up { &counts.up } else { &counts.down };
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A UDP proxy for one client (QUIC), counting datagram payload bytes each way.
#[derive(Debug)]
pub struct UdpCountingProxy {
    pub addr: SocketAddr,
    pub counts: Arc<ByteCounts>,
    task: JoinHandle<()>,
}

impl UdpCountingProxy {
    /// Listens on `127.0.0.1:0` and relays datagrams between the first client and `target`.
    pub async fn start(target: SocketAddr) -> io::Result<UdpCountingProxy> {
        use tokio::net::UdpSocket;
        let front = UdpSocket::bind("127.0.0.1:0").await?;
        let back = UdpSocket::bind("127.0.0.1:0").await?;
        back.connect(target).await?;
        let addr = front.local_addr()?;
        let counts = Arc::new(ByteCounts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        if back.send(&up[..n]).await.is_ok() {
                            c.up.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    Ok(n) = back.recv(&mut down) => {
                        if let Some(client) = client
                            && front.send_to(&down[..n], client).await.is_ok()
                        {
                            c.down.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(UdpCountingProxy { addr, counts, task })
    }
}

impl Drop for UdpCountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
