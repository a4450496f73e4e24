//! Exactly once over real sockets: a chain leaf -> mid -> root where one link is cut after the
//! root ran a mutation and before its reply got back. The cut side sends the mutation again
//! with its key when the link is back; the hop that recorded it answers from the record, and the
//! root's multi state `Counter` shows one activation. Run once with the cut between the leaf
//! and mid (mid answers the repeat) and once between mid and the root (the root does).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use asyncmachine::machine::{Args, Machine, Outcome, Schema, StateDef, StateSource};
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::Endpoint;
use common::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy whose connections the test cuts, and which refuses new ones while held.
struct Proxy {
    address: SocketAddr,
    /// Bumped to cut every live connection.
    cuts: watch::Sender<u64>,
    /// While true, new connections are closed at once.
    held: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("an address");
        let cuts = watch::channel(0u64).0;
        let held = watch::channel(false).0;
        let (cut_rx, held_rx) = (cuts.subscribe(), held.subscribe());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *held_rx.borrow() {
                    continue; // dropped: the client sees its connection end
                }
                let mut cut = cut_rx.clone();
                cut.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            address,
            cuts,
            held,
        }
    }

    /// Cuts every connection and refuses new ones until [`Proxy::release`].
    fn cut_and_hold(&self) {
        self.held.send_replace(true);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn release(&self) {
        self.held.send_replace(false);
    }
}

fn schema() -> Arc<Schema> {
    Arc::new(
        Schema::builder()
            .state(StateDef::new("Counter").multi())
            .build()
            .expect("valid"),
    )
}

fn config(id: &str) -> MirrorConfig {
    MirrorConfig {
        client_id: id.into(),
        schema: Some(schema()),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        ..MirrorConfig::default()
    }
}

async fn serve(source: Arc<dyn StateSource>) -> (Server, SocketAddr) {
    let server = Server::new(ServerConfig::default());
    server.add_source("demo", source).expect("a source");
    let endpoint = server
        .listen(&"tcp://127.0.0.1:0".parse().expect("valid"))
        .await
        .expect("binds");
    let address = endpoint.address.parse().expect("a socket address");
    (server, address)
}

fn at(address: SocketAddr) -> Endpoint {
    format!("tcp://{address}/demo").parse().expect("valid")
}

/// Which link the test cuts.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    LeafToMid,
    MidToRoot,
}

async fn a_lost_reply_is_answered_from_the_record(cut: Cut) {
    // The root's handler holds the transition until the test lets it go, so the cut comes
    // after the mutation ran and before its reply left.
    let root = Machine::builder((*schema()).clone()).id("root").build();
    let (running_tx, running_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (running_tx, go_rx) = (Mutex::new(running_tx), Mutex::new(go_rx));
    root.on_state("Counter", move |_| {
        let _ = running_tx.lock().expect("lock").send(());
        let _ = go_rx
            .lock()
            .expect("lock")
            .recv_timeout(Duration::from_secs(20));
    })
    .expect("bound");
    let (root_server, root_address) = serve(Arc::new(root.clone())).await;

    let upstream_of_mid = if cut == Cut::MidToRoot {
        Some(Proxy::start(root_address).await)
    } else {
        None
    };
    let mid_upstream = upstream_of_mid.as_ref().map_or(root_address, |p| p.address);
    let mid = Mirror::connect(&at(mid_upstream), config("mid"))
        .await
        .expect("mid connects");
    let (mid_server, mid_address) = serve(Arc::new(mid.clone())).await;
    let leaf_link = if cut == Cut::LeafToMid {
        Some(Proxy::start(mid_address).await)
    } else {
        None
    };
    let leaf_upstream = leaf_link.as_ref().map_or(mid_address, |p| p.address);
    let leaf = Mirror::connect(&at(leaf_upstream), config("leaf"))
        .await
        .expect("leaf connects");
    let proxy = leaf_link
        .as_ref()
        .or(upstream_of_mid.as_ref())
        .expect("one link is proxied");

    let add = tokio::spawn({
        let leaf = leaf.clone();
        async move { leaf.add(&["Counter"], Args::new()).await }
    });
    within(
        "the root running the mutation",
        tokio::task::spawn_blocking(move || running_rx.recv_timeout(Duration::from_secs(20))),
    )
    .await
    .expect("joins")
    .expect("the handler runs");
    // The link goes down with the reply still to come; the root finishes meanwhile.
    proxy.cut_and_hold();
    go_tx.send(()).expect("the handler waits");
    within(
        "the root's transition",
        root.when_tick_reaches("Counter", 1),
    )
    .await
    .expect("waits");
    let cut_side = if cut == Cut::LeafToMid { &leaf } else { &mid };
    within(
        "the cut side to notice",
        cut_side.wait_connection(ConnState::Disconnected),
    )
    .await;
    proxy.release();

    assert_eq!(
        within("the leaf's answer", add).await.expect("joins"),
        Ok(Outcome::Executed),
        "answered after the link came back"
    );
    converged(&leaf, &root.clock()).await;
    assert_eq!(root.tick("Counter"), 1, "one activation at the root");
    let (answering, quiet) = match cut {
        Cut::LeafToMid => (&mid_server, &root_server),
        Cut::MidToRoot => (&root_server, &mid_server),
    };
    assert_eq!(
        answering
            .stats()
            .mutations_deduplicated
            .load(Ordering::Relaxed),
        1,
        "the hop beyond the cut answered the repeat from its record"
    );
    assert_eq!(
        quiet.stats().mutations_deduplicated.load(Ordering::Relaxed),
        0
    );
    let upstream = cut_side.upstream().expect("a mirror");
    assert_eq!(
        upstream.mutations_retried, 1,
        "sent again once, with its key"
    );
    assert_eq!(upstream.mutations_waiting, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_lost_between_leaf_and_mid_is_answered_by_mid() {
    a_lost_reply_is_answered_from_the_record(Cut::LeafToMid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_lost_between_mid_and_root_is_answered_by_the_root() {
    a_lost_reply_is_answered_from_the_record(Cut::MidToRoot).await;
}
