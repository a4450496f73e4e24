//! The server: serves named sources (local machines or mirrors) to any number of clients on any
//! number of listeners.
//!
//! A thin async driver over [`crate::proto`]: the accept loop hands each peer to its own task,
//! which finishes the transport handshake and the protocol handshake within the handshake
//! timeout, then runs a reader and a writer. The reader applies mutations to the source; the
//! writer sends replies, pings and whatever its source's pushers leave to it. The pushers (one
//! per runtime worker and source) write each clock change to every client as soon as it
//! happens, merging whatever happened while a client was busy into one diff. Bad input closes
//! that one connection.

mod conn;
mod hub;
mod push;
mod waits;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tracing::{debug, info, warn};

use crate::machine::StateSource;
use crate::proto::Compression;
use crate::proto::acl::Acl;
use crate::proto::config::Limits;
use crate::proto::message::{ClientStatus, NodeStatus, Payload, SourceStatus};
use crate::proto::session::{CloseReason, ServerSessionConfig};
use crate::transport::{self, Endpoint, Listener, TransportConfig, TransportError};

use hub::Hub;

/// How a server behaves; every limit has a default a person would expect.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The node's name, as `status` shows it.
    pub name: String,
    /// Bounds on clients, frames, timeouts and pending requests ([`Limits::default`] for the
    /// defaults).
    pub limits: Limits,
    /// Compression offered to clients that ask; `None` to never compress.
    pub compression: Option<Compression>,
    /// Who is let in, what each client sees and may mutate.
    pub acl: Acl,
    /// TLS material for tls://, quic:// and wss:// listeners.
    pub transport: TransportConfig,
    /// Client ids pushed to before the others on every change: the nodes below this one in a
    /// tree (`am-node run` lists them from the topology), so a change goes down the tree
    /// before it reaches the leaf clients of each node. Only the order changes: a client that
    /// claims such an id gets nothing else. The order holds within each runtime worker's
    /// pusher (all clients, on `am-node run`'s default of one thread); pushers on different
    /// workers run side by side.
    pub push_first: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            name: "server".to_owned(),
            limits: Limits::default(),
            compression: Some(Compression::default()),
            acl: Acl::default(),
            transport: TransportConfig::default(),
            push_first: Vec::new(),
        }
    }
}

/// Why the server could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// [`Server::add_source`] was given a name already served.
    #[error("a source named {0:?} is already served; source names must be unique")]
    DuplicateSource(String),
    /// No source is served under that name.
    #[error("no source named {0:?} is served here")]
    UnknownSource(String),
    /// The server was shut down; it serves nothing more.
    #[error("the server is shut down")]
    ShutDown,
    /// A listener could not bind (the port is taken, TLS material is missing).
    #[error(transparent)]
    Transport(#[from] TransportError),
}

pub use crate::proto::session::ServerStats;

/// A connected client, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's id from its hello.
    pub id: String,
    /// The name of the source it mirrors.
    pub source: String,
    /// Its network address.
    pub peer: String,
}

struct ClientEntry {
    info: ClientInfo,
    outlet: Arc<push::Outlet>,
}

pub(crate) struct Inner {
    /// The node's name, as `status` shows it.
    name: String,
    transport: TransportConfig,
    /// Limits and access rules, built once and shared by every session.
    session_config: Arc<ServerSessionConfig>,
    hubs: RwLock<HashMap<String, Arc<Hub>>>,
    clients: Mutex<HashMap<u64, ClientEntry>>,
    next_conn: AtomicU64,
    slots: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    live_tasks: AtomicUsize,
    tasks_done: Notify,
    stats: Arc<ServerStats>,
    /// [`ServerConfig::push_first`].
    push_first: std::collections::HashSet<String>,
}

/// Serves named [`StateSource`]s to any number of mirrors over any transport. Cheap to clone:
/// clones share one server.
///
/// Each clock change of a source is pushed to its clients as a diff; mutations from clients
/// run on the source, checked against the [`Acl`]. A server listens on as many endpoints as
/// wanted; [`shutdown`](Self::shutdown) says goodbye to every client.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use asyncmachine::mirror::{Mirror, MirrorConfig};
/// use asyncmachine::prelude::*;
/// use asyncmachine::server::{Server, ServerConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// let schema = Schema::builder().state(StateDef::new("Ready")).build()?;
/// let machine = Machine::builder(schema).id("root").build();
///
/// let server = Server::new(ServerConfig::default());
/// server.add_source("root", Arc::new(machine.clone()))?;
/// // Port 0: any free port; `listen` answers with the real one.
/// let endpoint = server.listen(&"tcp://127.0.0.1:0".parse()?).await?;
/// assert_eq!(server.source_names(), ["root"]);
///
/// let mirror = Mirror::connect(&endpoint.with_machine("root"), MirrorConfig::default()).await?;
/// machine.add(&["Ready"], Args::new())?;
/// mirror.when(&["Ready"]).await?; // the diff reached the mirror
/// assert_eq!(server.clients().len(), 1);
///
/// server.shutdown(Duration::from_secs(1)).await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })
/// # }
/// ```
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("sources", &self.source_names())
            .field("clients", &self.inner.stats.clients.load(Ordering::Relaxed))
            .finish()
    }
}

impl Server {
    /// A server serving nothing yet: add sources with [`add_source`](Self::add_source), then
    /// [`listen`](Self::listen) on one or more endpoints.
    pub fn new(config: ServerConfig) -> Self {
        let ServerConfig {
            name,
            limits,
            compression,
            acl,
            transport,
            push_first,
        } = config;
        let slots = Arc::new(Semaphore::new(limits.max_clients));
        Server {
            inner: Arc::new(Inner {
                name,
                transport,
                session_config: Arc::new(ServerSessionConfig {
                    limits,
                    compression,
                    acl,
                }),
                hubs: RwLock::new(HashMap::new()),
                clients: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                slots,
                shutdown: watch::channel(false).0,
                live_tasks: AtomicUsize::new(0),
                tasks_done: Notify::new(),
                stats: Arc::default(),
                push_first: push_first.into_iter().collect(),
            }),
        }
    }

    /// Serves a source under a name; clients name it in their hello (an empty name reaches the
    /// only source, when there is just one).
    pub fn add_source(&self, name: &str, source: Arc<dyn StateSource>) -> Result<(), ServerError> {
        let mut hubs = self
            .inner
            .hubs
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if hubs.contains_key(name) {
            return Err(ServerError::DuplicateSource(name.to_owned()));
        }
        let limits = &self.inner.session_config.limits;
        hubs.insert(
            name.to_owned(),
            Arc::new(Hub::new(name.to_owned(), source, limits)),
        );
        Ok(())
    }

    /// The names of the sources served, sorted.
    pub fn source_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .hubs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Binds a listener and serves it until shutdown. Returns the endpoint clients can reach
    /// (with the real port when bound to port 0).
    pub async fn listen(&self, endpoint: &Endpoint) -> Result<Endpoint, ServerError> {
        if *self.inner.shutdown.borrow() {
            return Err(ServerError::ShutDown);
        }
        let listener = transport::bind(
            endpoint,
            &self.inner.transport,
            self.inner.session_config.limits.max_frame,
        )
        .await?;
        self.serve(listener)
    }

    /// Serves a listener bound elsewhere (a transport of the caller's own, or one bound with
    /// [`transport::bind`]) until shutdown. Returns the endpoint clients can reach. Call it
    /// inside the Tokio runtime the server runs on.
    pub fn serve(&self, listener: Box<dyn transport::Listener>) -> Result<Endpoint, ServerError> {
        if *self.inner.shutdown.borrow() {
            return Err(ServerError::ShutDown);
        }
        let local = listener.local_endpoint();
        info!(endpoint = %local, "listening");
        let inner = self.inner.clone();
        let task = TaskGuard::new(&inner);
        tokio::spawn(async move {
            let _task = task;
            accept_loop(&inner, listener).await;
        });
        Ok(local)
    }

    /// Sends named data to every client of a source (`client: None`) or to the clients with a
    /// given id. Returns how many clients it was queued for. A client whose queue is full is
    /// disconnected rather than allowed to hold up the others.
    pub fn send_payload(
        &self,
        source: &str,
        client: Option<&str>,
        name: &str,
        data: Vec<u8>,
    ) -> Result<usize, ServerError> {
        if !self
            .inner
            .hubs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(source)
        {
            return Err(ServerError::UnknownSource(source.to_owned()));
        }
        let payload = Payload {
            name: name.to_owned(),
            data,
        };
        let clients = self.inner.clients();
        let mut sent = 0;
        for entry in clients.values() {
            if entry.info.source != source || client.is_some_and(|id| id != entry.info.id) {
                continue;
            }
            let mut state = entry.outlet.lock();
            if state.session.closed().is_some() {
                continue;
            }
            match state.session.send_payload(&payload) {
                Ok(()) => sent += 1,
                Err(_backlogged) => {
                    self.inner
                        .stats
                        .payload_overflows
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(client = %entry.info.id, "client too slow for payloads; disconnecting it");
                    state.session.close(CloseReason::Kicked);
                }
            }
            drop(state);
            entry.outlet.nudge.notify_one();
        }
        Ok(sent)
    }

    /// The clients connected now.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let clients = self.inner.clients();
        let mut infos: Vec<ClientInfo> = clients.values().map(|c| c.info.clone()).collect();
        infos.sort_by(|a, b| (&a.source, &a.id).cmp(&(&b.source, &b.id)));
        infos
    }

    /// The server's counters since it started.
    pub fn stats(&self) -> &ServerStats {
        &self.inner.stats
    }

    /// What `am-node status` shows: sources, clients, counters.
    pub fn status(&self) -> NodeStatus {
        self.inner.status()
    }

    /// The status and the mutation latency histogram as Prometheus text.
    pub fn metrics(&self) -> String {
        crate::metrics::render(&self.inner.status(), &self.inner.stats.mutation_latency)
    }

    /// Stops accepting, tells every client goodbye and waits (up to `grace`) for connections
    /// to end.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.send_replace(true);
        let wait = async {
            loop {
                let done = self.inner.tasks_done.notified();
                if self.inner.live_tasks.load(Ordering::Acquire) == 0 {
                    return;
                }
                done.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            warn!(
                tasks = self.inner.live_tasks.load(Ordering::Relaxed),
                "shutdown grace period over; abandoning connections"
            );
        }
    }
}

/// A task the server waits for at shutdown, counted while the guard lives: a task that ends
/// by a panic is uncounted too.
struct TaskGuard(Arc<Inner>);

impl TaskGuard {
    fn new(inner: &Arc<Inner>) -> TaskGuard {
        inner.live_tasks.fetch_add(1, Ordering::AcqRel);
        TaskGuard(inner.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.live_tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.tasks_done.notify_waiters();
        }
    }
}

impl Inner {
    /// The listed clients, by connection.
    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ClientEntry>> {
        // Nothing under this lock calls user code or panics on peer input.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hub(&self, name: &str) -> Result<Arc<Hub>, String> {
        let hubs = self.hubs.read().unwrap_or_else(PoisonError::into_inner);
        let found = if name.is_empty() && hubs.len() == 1 {
            hubs.values().next()
        } else {
            hubs.get(name)
        };
        found.cloned().ok_or_else(|| {
            let mut names: Vec<&str> = hubs.keys().map(String::as_str).collect();
            names.sort_unstable();
            if name.is_empty() {
                format!("this server serves several sources ({}); name one in the endpoint, as tcp://host:port/NAME", names.join(", "))
            } else {
                format!("no source named {name:?} here; this server serves: {}", names.join(", "))
            }
        })
    }

    /// Every source served, for decisions that concern them all.
    fn hubs(&self) -> Vec<Arc<Hub>> {
        let hubs = self.hubs.read().unwrap_or_else(PoisonError::into_inner);
        hubs.values().cloned().collect()
    }

    fn status(&self) -> NodeStatus {
        let clients = self.clients();
        let mut client_list: Vec<ClientStatus> = clients
            .values()
            .map(|c| ClientStatus {
                id: c.info.id.clone(),
                source: c.info.source.clone(),
                peer: c.info.peer.clone(),
            })
            .collect();
        client_list.sort_by(|a, b| (&a.source, &a.id).cmp(&(&b.source, &b.id)));
        drop(clients);
        let hubs = self.hubs.read().unwrap_or_else(PoisonError::into_inner);
        let mut sources: Vec<SourceStatus> = hubs
            .values()
            .map(|hub| {
                let clients = client_list.iter().filter(|c| c.source == hub.name).count();
                SourceStatus::of(&hub.name, hub.source.as_ref(), clients as u32)
            })
            .collect();
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        let s = &self.stats;
        let counters = [
            ("connections", &s.connections),
            ("clients", &s.clients),
            ("refusals", &s.refusals),
            ("transport_errors", &s.transport_errors),
            ("protocol_errors", &s.protocol_errors),
            ("frames_in", &s.frames_in),
            ("frames_out", &s.frames_out),
            ("bytes_in", &s.bytes_in),
            ("bytes_out", &s.bytes_out),
            ("diffs_sent", &s.diffs_sent),
            ("diffs_merged", &s.diffs_merged),
            ("mutations", &s.mutations),
            ("mutations_deduplicated", &s.mutations_deduplicated),
            ("mutations_unrecorded", &s.mutations_unrecorded),
            ("write_stalls", &s.write_stalls),
            ("payload_overflows", &s.payload_overflows),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.load(Ordering::Relaxed)))
        .chain([
            (
                "mutation_p50_us".to_owned(),
                s.mutation_latency.quantile_us(0.5),
            ),
            (
                "mutation_p99_us".to_owned(),
                s.mutation_latency.quantile_us(0.99),
            ),
        ])
        .collect();
        NodeStatus {
            node: self.name.clone(),
            sources,
            clients: client_list,
            counters,
        }
    }
}

async fn accept_loop(inner: &Arc<Inner>, mut listener: Box<dyn Listener>) {
    let endpoint = listener.local_endpoint();
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(handshake) => {
                backoff = Duration::from_millis(10);
                inner.stats.connections.fetch_add(1, Ordering::Relaxed);
                let id = inner.next_conn.fetch_add(1, Ordering::Relaxed);
                let inner = inner.clone();
                let task = TaskGuard::new(&inner);
                tokio::spawn(async move {
                    let _task = task;
                    conn::serve(&inner, id, handshake).await;
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(%endpoint, error = %e, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    debug!(%endpoint, "listener stopped");
}
