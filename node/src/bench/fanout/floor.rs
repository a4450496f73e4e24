//! The fanout scenario's floor: its pattern over N bare TCP connections, no protocol and no
//! state machine, with the writing ends where the root is and the reading ends where the
//! mirrors are. What the protocol's figures are compared with.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::RemoteRoot;
use crate::bench::{BenchError, Percentiles};

pub(super) fn floor_io(e: std::io::Error) -> BenchError {
    BenchError::Setup(format!("the bare-socket floor: {e}"))
}

/// What the bare sockets managed.
pub(super) struct RawFloor {
    pub(super) convergence: Percentiles,
    pub(super) frames_per_s: f64,
}

/// The floor's message: the size of a small diff frame.
const RAW_MESSAGE: usize = 12;

/// The writing ends of the floor's bare TCP connections (the server's side of the pattern).
pub(super) struct RawWriters {
    sockets: Vec<TcpStream>,
}

impl RawWriters {
    pub(super) async fn accept(listener: &TcpListener, n: usize) -> Result<RawWriters, BenchError> {
        let mut sockets = Vec::with_capacity(n.min(1 << 16));
        while sockets.len() < n {
            let (socket, _) = listener.accept().await.map_err(floor_io)?;
            socket.set_nodelay(true).map_err(floor_io)?;
            sockets.push(socket);
        }
        Ok(RawWriters { sockets })
    }

    /// One message to every connection, one after the other.
    pub(super) async fn flip(&mut self) -> Result<(), BenchError> {
        for socket in &mut self.sockets {
            socket
                .write_all(&[1u8; RAW_MESSAGE])
                .await
                .map_err(floor_io)?;
        }
        Ok(())
    }

    /// For `duration`, one task per CPU writes a message to every connection of its share that
    /// has room, round after round (a full socket is skipped, as a busy client gets no frame of
    /// its own).
    pub(super) async fn sustain(&mut self, duration: Duration) -> Result<(), BenchError> {
        let started = Instant::now();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let share = self.sockets.len().div_ceil(cpus).max(1);
        let mut tasks = Vec::with_capacity(cpus);
        while !self.sockets.is_empty() {
            let take = share.min(self.sockets.len());
            let mine: Vec<TcpStream> = self.sockets.drain(..take).collect();
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < duration {
                    for socket in &mine {
                        match socket.try_write(&[2u8; RAW_MESSAGE]) {
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e),
                        }
                    }
                    tokio::task::yield_now().await;
                }
                Ok(mine)
            }));
        }
        for task in tasks {
            let mine = task.await.map_err(|e| floor_io(std::io::Error::other(e)))?;
            self.sockets.extend(mine.map_err(floor_io)?);
        }
        Ok(())
    }
}

/// The reading ends of the floor's connections (the mirrors' side), one task each, counting
/// whole messages; the tasks end when this is dropped.
struct RawReaders {
    n: usize,
    arrived: Arc<AtomicUsize>,
    bytes_read: Arc<AtomicU64>,
    all: Arc<Notify>,
    last: Arc<Mutex<Option<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RawReaders {
    async fn connect(addr: std::net::SocketAddr, n: usize) -> Result<RawReaders, BenchError> {
        let mut readers = RawReaders {
            n,
            arrived: Arc::new(AtomicUsize::new(0)),
            bytes_read: Arc::new(AtomicU64::new(0)),
            all: Arc::new(Notify::new()),
            last: Arc::new(Mutex::new(None)),
            tasks: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let mut socket = TcpStream::connect(addr).await.map_err(floor_io)?;
            socket.set_nodelay(true).map_err(floor_io)?;
            let (arrived, all, last, bytes_read) = (
                readers.arrived.clone(),
                readers.all.clone(),
                readers.last.clone(),
                readers.bytes_read.clone(),
            );
            readers.tasks.push(tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut pending = 0;
                while let Ok(read @ 1..) = socket.read(&mut buf).await {
                    bytes_read.fetch_add(read as u64, Ordering::Relaxed);
                    pending += read;
                    if pending >= RAW_MESSAGE {
                        pending %= RAW_MESSAGE;
                        *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                        if arrived.fetch_add(1, Ordering::AcqRel) + 1 == n {
                            all.notify_one();
                        }
                    }
                }
            }));
        }
        Ok(readers)
    }

    /// The time from `flip` starting to the last reader having its message.
    async fn time_flip(
        &self,
        flip: impl Future<Output = Result<(), BenchError>>,
    ) -> Result<Option<Duration>, BenchError> {
        self.arrived.store(0, Ordering::Release);
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let waiting = self.all.notified();
        let started = Instant::now();
        flip.await?;
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .map_err(|_| {
                floor_io(std::io::Error::other(format!(
                    "only {} of {} bare sockets got the message",
                    self.arrived.load(Ordering::Relaxed),
                    self.n
                )))
            })?;
        let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(last.map(|t| t - started))
    }

    /// Whole messages read so far.
    fn messages(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed) / RAW_MESSAGE as u64
    }
}

impl Drop for RawReaders {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Where the floor's writing ends are: here, or in the root's process.
enum FloorWriters<'a> {
    Here(RawWriters),
    There(&'a mut RemoteRoot),
}

impl FloorWriters<'_> {
    async fn flip(&mut self) -> Result<(), BenchError> {
        match self {
            FloorWriters::Here(writers) => writers.flip().await,
            FloorWriters::There(root) => root.raw_flip().await,
        }
    }

    async fn sustain(&mut self, duration: Duration) -> Result<(), BenchError> {
        match self {
            FloorWriters::Here(writers) => writers.sustain(duration).await,
            FloorWriters::There(root) => root.raw_sustain(duration).await,
        }
    }
}

/// The scenario's pattern over N bare TCP connections, no protocol and no state machine, with
/// the writing ends where the root is (in `remote`'s process, or here) and the reading ends
/// here. Convergence: one 12-byte message to each connection per flip, the time until every
/// reader has it. Sustained: [`RawWriters::sustain`] for `sustained`, counting what arrives.
pub(super) async fn raw_floor(
    n: usize,
    flips: u64,
    sustained: Duration,
    remote: Option<&mut RemoteRoot>,
) -> Result<RawFloor, BenchError> {
    let connect = async |addr| RawReaders::connect(addr, n).await;
    let (readers, mut writers) = match remote {
        Some(root) => (root.raw_open(n, connect).await?, FloorWriters::There(root)),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await.map_err(floor_io)?;
            let addr = listener.local_addr().map_err(floor_io)?;
            let accepting = tokio::spawn(async move { RawWriters::accept(&listener, n).await });
            let connected = connect(addr).await;
            if connected.is_err() {
                accepting.abort();
            }
            let readers = connected?;
            let writers = accepting
                .await
                .map_err(|e| floor_io(std::io::Error::other(e)))??;
            (readers, FloorWriters::Here(writers))
        }
    };
    let mut samples = Vec::with_capacity(flips as usize);
    for _ in 0..flips {
        samples.extend(readers.time_flip(writers.flip()).await?);
    }
    let (before, started) = (readers.messages(), Instant::now());
    writers.sustain(sustained).await?;
    let elapsed = started.elapsed();
    Ok(RawFloor {
        convergence: Percentiles::of(&mut samples),
        frames_per_s: (readers.messages() - before) as f64 / elapsed.as_secs_f64(),
    })
}
