//! The client endpoints a process's outgoing QUIC connections share.
//!
//! A quinn endpoint is one UDP socket and the task that drives it; the connections made
//! through it are told apart by their connection ids, so a process needs one per address
//! family, not one per connection (10 000 mirrors used to hold 10 000 sockets and 10 000
//! endpoint tasks). The client TLS and transport configuration travel with each connection
//! (`Endpoint::connect_with`), so they need no endpoint of their own.
//!
//! One endpoint's task receives the datagrams of every connection made through it, so on a
//! runtime of several workers that task bounds them all: a runtime gets one endpoint per
//! worker, and connections are spread over them in turn.
//!
//! An endpoint's socket and task belong to the tokio runtime that made it and stop with it,
//! and a process may run many runtimes, one after the other or side by side (a test binary
//! does). So endpoints are kept per (runtime, address family): made on first use, and
//! forgotten when their runtime shuts down: a task that never finishes holds a guard, and a
//! runtime drops its tasks when it shuts down. That also keeps a later runtime that gets a
//! finished one's id (tokio reuses them) from an endpoint whose driver is gone.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use tokio::runtime::{Handle, Id};

/// What must differ between two client endpoints: the runtime that drives it, and whether it
/// binds IPv6 (`[::]:0`, dual-stack where the system allows) or IPv4 (`0.0.0.0:0`).
type Key = (Id, bool);

static ENDPOINTS: LazyLock<Mutex<HashMap<Key, Pool>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The endpoints of one key: up to one per worker of its runtime, made as connections need
/// them, and taken in turn.
struct Pool {
    endpoints: Vec<quinn::Endpoint>,
    /// How many the runtime gets: its worker count.
    size: usize,
    /// The next connection's endpoint.
    next: usize,
}

impl Pool {
    /// The endpoint for the next connection, or `None` when a new one is due.
    fn take_turn(&mut self) -> Option<quinn::Endpoint> {
        let at = self.next % self.size;
        let endpoint = self.endpoints.get(at).cloned();
        if endpoint.is_some() {
            self.next = (at + 1) % self.size;
        }
        endpoint
    }
}

/// The map holds only handles: a panic while it is locked leaves nothing half-done.
fn endpoints() -> MutexGuard<'static, HashMap<Key, Pool>> {
    ENDPOINTS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client endpoint of the current runtime for remote addresses of `remote`'s family.
pub(super) fn client_for(remote: SocketAddr) -> io::Result<quinn::Endpoint> {
    let runtime = Handle::try_current().map_err(|_| {
        io::Error::other("a quic:// connection must be made inside a tokio runtime")
    })?;
    let key = (runtime.id(), remote.is_ipv6());
    if let Some(endpoint) = endpoints().get_mut(&key).and_then(Pool::take_turn) {
        return Ok(endpoint);
    }
    let made = bind(key.1)?;
    // Two connections may race here for one slot: the first stored is used by both, the
    // other endpoint is dropped unused (outside the lock).
    let (endpoint, unused, first) = match endpoints().entry(key) {
        Entry::Occupied(mut stored) => {
            let pool = stored.get_mut();
            match pool.take_turn() {
                Some(endpoint) => (endpoint, Some(made), false),
                None => {
                    pool.endpoints.push(made.clone());
                    pool.next = pool.endpoints.len() % pool.size;
                    (made, None, false)
                }
            }
        }
        Entry::Vacant(slot) => {
            let size = runtime.metrics().num_workers().max(1);
            slot.insert(Pool {
                endpoints: vec![made.clone()],
                size,
                next: 1 % size,
            });
            (made, None, true)
        }
    };
    if first {
        let guard = Forget(key);
        // Spawned outside the lock: on a runtime that is shutting down the task is dropped at
        // once, and its guard takes the lock.
        runtime.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
    }
    drop(unused);
    tracing::debug!(?key, "a QUIC client endpoint for this runtime");
    Ok(endpoint)
}

/// A client endpoint on a new socket: as `quinn::Endpoint::client` makes it (an IPv6 one
/// dual-stack where the system allows), with [`super::quic::SOCKET_BUFFER`]s: every
/// connection's datagrams arrive at this one socket.
fn bind(ipv6: bool) -> io::Result<quinn::Endpoint> {
    let addr: SocketAddr = if ipv6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        super::quic::udp_socket(addr, ipv6)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Forgets the current runtime's endpoint for `remote`'s family: its driver stopped (quinn
/// said so when connecting), and the next connection must make a new one.
pub(super) fn forget_for(remote: SocketAddr) {
    if let Ok(runtime) = Handle::try_current() {
        forget((runtime.id(), remote.is_ipv6()));
    }
}

fn forget(key: Key) {
    // The endpoint is dropped after the lock is released.
    let gone = endpoints().remove(&key);
    drop(gone);
}

/// Forgets its runtime's endpoint when dropped: held by a task that never finishes, so when
/// its runtime shuts down.
struct Forget(Key);

impl Drop for Forget {
    fn drop(&mut self) {
        forget(self.0);
    }
}

/// How many client endpoints the runtime `id` holds (tests).
#[cfg(test)]
pub(super) fn held_by(id: Id) -> usize {
    endpoints()
        .iter()
        .filter(|((runtime, _), _)| *runtime == id)
        .map(|(_, pool)| pool.endpoints.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 9).into()
    }

    #[test]
    fn a_runtime_makes_one_endpoint_per_family_and_forgets_it_when_it_ends() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let id = runtime.handle().id();
        let (first, second, port) = runtime.block_on(async {
            let first = client_for(v4()).expect("an endpoint");
            let second = client_for(v4()).expect("the same endpoint");
            let port = |e: &quinn::Endpoint| e.local_addr().expect("bound").port();
            (
                port(&first),
                port(&second),
                first.local_addr().expect("bound"),
            )
        });
        assert_eq!(first, second, "one socket for both");
        assert!(port.ip().is_unspecified());
        assert_eq!(held_by(id), 1);
        drop(runtime);
        assert_eq!(held_by(id), 0, "forgotten with its runtime");
    }

    #[test]
    fn a_runtime_after_another_gets_a_working_endpoint_of_its_own() {
        for _ in 0..2 {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let endpoint = client_for(v4()).expect("an endpoint");
                // A live driver takes a connection attempt; a dead one says it is stopping.
                let crypto = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("TLS 1.3")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
                    .expect("a QUIC client config");
                let config = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
                assert!(endpoint.connect_with(config, v4(), "localhost").is_ok());
            });
        }
    }

    #[test]
    fn a_runtime_of_two_workers_spreads_connections_over_two_endpoints() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let id = runtime.handle().id();
        let ports: Vec<u16> = runtime.block_on(async {
            (0..4)
                .map(|_| {
                    let endpoint = client_for(v4()).expect("an endpoint");
                    endpoint.local_addr().expect("bound").port()
                })
                .collect()
        });
        assert_ne!(
            ports[0], ports[1],
            "the second connection gets the second endpoint"
        );
        assert_eq!(ports[0], ports[2], "then they take turns");
        assert_eq!(ports[1], ports[3]);
        assert_eq!(held_by(id), 2);
        drop(runtime);
        assert_eq!(held_by(id), 0, "forgotten with their runtime");
    }

    #[test]
    fn outside_a_runtime_is_a_clear_error() {
        let error = client_for(v4()).expect_err("no runtime");
        assert!(
            error.to_string().contains("inside a tokio runtime"),
            "{error}"
        );
    }
}
