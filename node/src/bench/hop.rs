//! One relay of the floor of `bench chain --processes`: a process that passes fixed-size
//! messages on over bare TCP, as a node of the chain passes clock diffs on, so the floor pays
//! the same process hops and sockets and nothing of the protocol.
//!
//! A relay listens on 127.0.0.1; each connection says what it is with its first byte: a
//! [`READER`] gets every message the relay passes on, a [`WRITER`] sends messages for it to
//! pass on. With an upstream, the relay connects to it as a reader and passes on what it
//! receives. So the root relay is the one without an upstream, the bench writes to it, and
//! relay k reads from relay k-1: the chain of nodes, with the bench reading at every depth.
//! A reader is answered with one byte ([`READER`]) once it is registered, so a message written
//! after that reaches it; a relay tells its address only once its upstream answered.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// The first byte of a connection that reads what the relay passes on.
pub const READER: u8 = b'r';
/// The first byte of a connection whose messages the relay passes on.
pub const WRITER: u8 = b'w';
/// The size of every message: about a clock diff of one state (what the nodes pass on).
pub const MESSAGE: usize = 12;
/// The most readers a relay serves; more are closed (the bench needs two or three).
const MAX_READERS: usize = 64;

type Readers = Arc<Mutex<Vec<OwnedWriteHalf>>>;

/// Runs a relay until its process is killed: binds 127.0.0.1:0, tells `bound` the address,
/// connects to `upstream` if given, and passes messages on.
pub async fn serve(
    upstream: Option<SocketAddr>,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let readers: Readers = Arc::new(Mutex::new(Vec::new()));
    if let Some(addr) = upstream {
        let mut up = TcpStream::connect(addr).await?;
        up.set_nodelay(true)?;
        up.write_all(&[READER]).await?;
        let mut ack = [0u8; 1];
        up.read_exact(&mut ack).await?;
        tokio::spawn(pass_on(up, readers.clone()));
    }
    bound(listener.local_addr()?);
    loop {
        let (mut stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let mut role = [0u8; 1];
        if stream.read_exact(&mut role).await.is_err() {
            continue;
        }
        match role[0] {
            READER => {
                // Registered and answered under the lock: nothing is passed on in between.
                let mut readers = readers.lock().await;
                if readers.len() < MAX_READERS {
                    let mut to = stream.into_split().1;
                    if to.write_all(&[READER]).await.is_ok() {
                        readers.push(to);
                    }
                }
            }
            WRITER => {
                tokio::spawn(pass_on(stream, readers.clone()));
            }
            _ => {}
        }
    }
}

/// Reads messages from `from` and writes each to every reader, dropping readers that fail.
async fn pass_on(mut from: TcpStream, readers: Readers) {
    let mut message = [0u8; MESSAGE];
    while from.read_exact(&mut message).await.is_ok() {
        let mut readers = readers.lock().await;
        let mut i = 0;
        while i < readers.len() {
            if readers[i].write_all(&message).await.is_ok() {
                i += 1;
            } else {
                readers.swap_remove(i);
            }
        }
    }
}
