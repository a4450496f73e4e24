//! In-process pairs (`mem://name`): the same code paths as a socket, without one, for tests.
//! Names live in one process-wide registry; binding an empty name picks a fresh one.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::{BoxFuture, BoxStream, Endpoint, Handshake, Listener, PeerInfo, Scheme};

/// Bytes buffered in each direction of a pair, like a socket buffer.
const PIPE_CAPACITY: usize = 64 * 1024;

type Registry = Mutex<HashMap<String, mpsc::Sender<(DuplexStream, u64)>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

pub(super) struct MemListener {
    name: String,
    incoming: mpsc::Receiver<(DuplexStream, u64)>,
}

pub(super) fn bind(name: &str) -> io::Result<MemListener> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let name = if name.is_empty() || name == "0" {
        format!("anon-{}", NEXT.fetch_add(1, Ordering::Relaxed))
    } else {
        name.to_owned()
    };
    let mut names = registry().lock().unwrap_or_else(PoisonError::into_inner);
    if names.get(&name).is_some_and(|tx| !tx.is_closed()) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("mem://{name} is already bound"),
        ));
    }
    let (tx, incoming) = mpsc::channel(1024);
    names.insert(name.clone(), tx);
    Ok(MemListener { name, incoming })
}

pub(super) async fn connect(name: &str) -> io::Result<BoxStream> {
    static NEXT_PEER: AtomicU64 = AtomicU64::new(1);
    let tx = registry()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .cloned()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing listens on mem://{name}"),
            )
        })?;
    let (ours, theirs) = tokio::io::duplex(PIPE_CAPACITY);
    tx.send((theirs, NEXT_PEER.fetch_add(1, Ordering::Relaxed)))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("mem://{name} stopped listening"),
            )
        })?;
    Ok(Box::new(ours))
}

impl Listener for MemListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<Handshake>> {
        Box::pin(async move {
            let (stream, peer) =
                self.incoming.recv().await.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::BrokenPipe, "mem listener closed")
                })?;
            let handshake: Handshake = Box::pin(async move {
                let stream: BoxStream = Box::new(stream);
                Ok((
                    stream,
                    PeerInfo {
                        address: format!("mem-peer-{peer}"),
                        identity: None,
                    },
                ))
            });
            Ok(handshake)
        })
    }

    fn local_endpoint(&self) -> Endpoint {
        Endpoint::new(Scheme::Mem, self.name.clone())
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        // Closing our receiver closes the registered sender; a later listener that reused the
        // name has an open one and stays.
        self.incoming.close();
        let mut names = registry().lock().unwrap_or_else(PoisonError::into_inner);
        if names.get(&self.name).is_some_and(mpsc::Sender::is_closed) {
            names.remove(&self.name);
        }
    }
}
