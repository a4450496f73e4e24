//! A fault-injecting TCP proxy: put it on a link of a tree and cut, stall, delay or reset that
//! link on command, to test what the nodes at both ends do (kernel netem is not available on
//! every machine, and a proxy can act on one link of many on loopback).
//!
//! Faults apply to the bytes in flight on every connection through the proxy, in both
//! directions, from the moment they are set; [`Fault::Pass`] forwards normally again.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward bytes as they come.
    Pass,
    /// Hold every chunk this long before forwarding it.
    Delay(Duration),
    /// Forward nothing and keep connections open: a link that hangs.
    Stall,
    /// Close every connection and refuse new ones (closed right after accept): a link that is
    /// down.
    Cut,
}

/// A running proxy. Dropping it stops accepting; connections end with their peers.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// The fault in force and how many times connections were reset (a generation: a
    /// connection opened in an older one is reset).
    control: watch::Sender<(Fault, u64)>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (control, watching) = watch::channel((Fault::Pass, 0));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut control = watching.clone();
                let generation = control.borrow_and_update().1;
                if control.borrow().0 == Fault::Cut {
                    reset(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        reset(client);
                        return;
                    };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_rd, client_wr) = client.split();
                    let (server_rd, server_wr) = server.split();
                    // Whichever direction ends first ends the connection.
                    let end = tokio::select! {
                        end = pump(client_rd, server_wr, control.clone(), generation) => end,
                        end = pump(server_rd, client_wr, control, generation) => end,
                    };
                    if end == End::Reset {
                        reset(client);
                        reset(server);
                    }
                });
            }
        });
        Ok(FaultProxy {
            addr,
            control,
            accept,
        })
    }

    /// Sets the fault for every connection, open or new.
    pub fn set(&self, fault: Fault) {
        self.control.send_modify(|(f, _)| *f = fault);
    }

    /// Resets every open connection (peers see a connection reset) and goes on forwarding new
    /// ones as set.
    pub fn reset_all(&self) {
        self.control.send_modify(|(_, generation)| *generation += 1);
    }

    /// How many times [`FaultProxy::reset_all`] was called.
    pub fn resets(&self) -> u64 {
        self.control.borrow().1
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Closes with RST rather than FIN, as a crashed peer or a middlebox would.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// A side closed or failed: the other side is closed normally.
    Closed,
    /// The link was cut or reset: both sides get a reset.
    Reset,
}

/// Forwards one direction under the current fault until either side closes, the link is cut,
/// or the connections are reset.
async fn pump(
    mut rd: ReadHalf<'_>,
    mut wr: WriteHalf<'_>,
    mut control: watch::Receiver<(Fault, u64)>,
    generation: u64,
) -> End {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (fault, current) = *control.borrow_and_update();
        if current != generation || fault == Fault::Cut {
            return End::Reset;
        }
        if fault == Fault::Stall {
            if control.changed().await.is_err() {
                return End::Closed;
            }
            continue;
        }
        let n = tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            },
            changed = control.changed() => {
                if changed.is_err() {
                    return End::Closed;
                }
                continue;
            }
        };
        if let Fault::Delay(by) = fault {
            tokio::time::sleep(by).await;
        }
        if wr.write_all(&buf[..n]).await.is_err() {
            return End::Closed;
        }
    }
}
