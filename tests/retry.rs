//! Exactly once over real sockets: a chain leaf -> mid -> root where one link is cut after the
//! root ran a mutation and before its reply got back. The cut side sends the mutation again
//! with its key when the link is back; the hop that recorded it answers from the record, and the
//! root's multi state `Counter` shows one activation. Run once with the cut between the leaf
//! and mid (mid answers the repeat) and once between mid and the root (the root does).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Connections being relayed: a cut is done when none is left.
    live: Arc<AtomicUsize>,
}

/// Counts a relayed connection while it lives.
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(live: &Arc<AtomicUsize>) -> Live {
        live.fetch_add(1, Ordering::SeqCst);
        Live(live.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("an address");
        let cuts = watch::channel(0u64).0;
        let held = watch::channel(false).0;
        let (cut_rx, held_rx) = (cuts.subscribe(), held.subscribe());
        let live = Arc::new(AtomicUsize::new(0));
        let counted = live.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *held_rx.borrow() {
                    continue; // dropped: the client sees its connection end
                }
                let mut cut = cut_rx.clone();
                cut.mark_unchanged();
                let alive = Live::new(&counted);
                tokio::spawn(async move {
                    let _alive = alive;
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        // A cut wins over bytes ready to be relayed in the same turn.
                        biased;
                        _ = cut.changed() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Proxy {
            address,
            cuts,
            held,
            live,
        }
    }

    /// Cuts every connection and refuses new ones until [`Proxy::release`]; returns when no
    /// connection is relayed any more (the cut is asynchronous: a relay task told to stop
    /// could otherwise still pass on bytes that arrive meanwhile).
    async fn cut_and_hold(&self) {
        self.held.send_replace(true);
        self.cuts.send_modify(|n| *n += 1);
        let live = self.live.clone();
        eventually("the proxy's connections cut", || {
            live.load(Ordering::SeqCst) == 0
        })
        .await;
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

/// The leaf's first `add` of `Counter`, with the key a retry of it carries.
fn leafs_first_add() -> asyncmachine::machine::Mutation {
    use asyncmachine::machine::{Mutation, MutationKey, MutationKind};
    let counter = schema().index("Counter").expect("a state");
    Mutation::new(MutationKind::Add, vec![counter], Args::new()).with_key(Some(MutationKey {
        origin: "leaf".into(),
        epoch: 7,
        seq: 1,
    }))
}

/// A root whose `Counter` handler says it runs (the receiver) and holds the transition until
/// the test lets it go (the sender), so a link can be cut after the root ran and before the
/// reply left.
fn held_root() -> (Machine, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let root = Machine::builder((*schema()).clone()).id("root").build();
    let (running_tx, running_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (running_tx, go_rx) = (Mutex::new(running_tx), Mutex::new(go_rx));
    root.on_state("Counter", move |_| {
        let _ = running_tx.lock().expect("lock").send(());
        // The handler runs on a worker of the test's runtime (the root's server runs a local
        // mutation in its reader): held there, it would keep the tasks queued on that worker
        // (among them mid's and the leaf's) from running.
        tokio::task::block_in_place(|| {
            let _ = go_rx
                .lock()
                .expect("lock")
                .recv_timeout(Duration::from_secs(20));
        });
    })
    .expect("bound");
    (root, running_rx, go_tx)
}

/// Waits until the held root's `Counter` handler says it runs.
async fn root_running(running: mpsc::Receiver<()>) {
    within(
        "the root running the mutation",
        tokio::task::spawn_blocking(move || running.recv_timeout(Duration::from_secs(20))),
    )
    .await
    .expect("joins")
    .expect("the handler runs");
}

/// Lets the held root's handler go and waits for its transition to end.
async fn let_root_finish(go: &mpsc::Sender<()>, root: &Machine) {
    go.send(()).expect("the handler waits");
    within(
        "the root's transition",
        root.when_tick_reaches("Counter", 1),
    )
    .await
    .expect("waits");
}

/// Which link the test cuts.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    LeafToMid,
    MidToRoot,
}

async fn a_lost_reply_is_answered_from_the_record(cut: Cut) {
    let (root, running_rx, go_tx) = held_root();
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
    root_running(running_rx).await;
    // The link goes down with the reply still to come; the root finishes meanwhile.
    proxy.cut_and_hold().await;
    let_root_finish(&go_tx, &root).await;
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

/// A hop whose client went away while the hop's forwarded run was still out keeps the run
/// going and records its answer: a repeat of the key, on a new connection, is answered from the
/// record (it does not wait for ever on a run nobody finishes, nor run again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_client_left_still_records_its_answer() {
    use asyncmachine::proto::config::Limits;
    let (root, running_rx, go_tx) = held_root();
    let (_root_server, root_address) = serve(Arc::new(root.clone())).await;
    let mid = Mirror::connect(&at(root_address), config("mid"))
        .await
        .expect("mid connects");
    // mid drops a silent client fast, so the leaf's going away ends its connection there.
    let mid_server = Server::new(ServerConfig {
        limits: Limits {
            idle_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
        ..ServerConfig::default()
    });
    mid_server
        .add_source("demo", Arc::new(mid.clone()))
        .expect("a source");
    let mid_at = mid_server
        .listen(&"tcp://127.0.0.1:0".parse().expect("valid"))
        .await
        .expect("binds")
        .with_machine("demo");
    let leaf_config = || MirrorConfig {
        keepalive: Duration::from_millis(50),
        ..config("leaf")
    };

    let first = Mirror::connect(&mid_at, leaf_config())
        .await
        .expect("connects");
    let sent = first.mutate(leafs_first_add());
    let sent = tokio::spawn(sent);
    root_running(running_rx).await;
    // The leaf goes away; mid's connection to it ends while mid's forwarded run is still out.
    first.dispose();
    let _ = sent.await;
    within("mid to drop the leaf's connection", async {
        while mid_server.clients().iter().any(|c| c.id == "leaf") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let_root_finish(&go_tx, &root).await;

    // The same key again, on a new connection: answered from mid's record.
    let again = Mirror::connect(&mid_at, leaf_config())
        .await
        .expect("connects");
    assert_eq!(
        within("the repeat's answer", again.mutate(leafs_first_add())).await,
        Ok(Outcome::Executed)
    );
    assert_eq!(root.tick("Counter"), 1, "ran once");
    assert_eq!(
        mid_server
            .stats()
            .mutations_deduplicated
            .load(Ordering::Relaxed),
        1
    );
}

/// A keyed run that panics at the source (here an observer of the root panics) is answered as
/// failed and recorded so: the client hears why instead of losing its connection, a repeat of
/// the key gets the same answer instead of waiting for a run nobody finishes, and the
/// connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_panics_at_the_source_is_answered_and_recorded_as_failed() {
    use asyncmachine::machine::ClockChange;
    let root = Machine::builder((*schema()).clone()).id("root").build();
    let (server, root_address) = serve(Arc::new(root.clone())).await;
    let counter = schema().index("Counter").expect("a state");
    root.observe(Arc::new(move |change: &ClockChange<'_>| {
        if change.after[counter] == 1 {
            panic!("an observer that fails on the first Counter");
        }
    }));
    let leaf = Mirror::connect(&at(root_address), config("leaf"))
        .await
        .expect("connects");

    let first = within("the panicking run's answer", leaf.mutate(leafs_first_add()))
        .await
        .expect_err("a failure");
    assert!(first.to_string().contains("panicked"), "{first}");
    let again = within("the repeat's answer", leaf.mutate(leafs_first_add()))
        .await
        .expect_err("the same failure");
    assert_eq!(again.to_string(), first.to_string());
    assert_eq!(
        server
            .stats()
            .mutations_deduplicated
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(leaf.connection(), ConnState::Ready);
    assert_eq!(
        leaf.stats().reconnects.load(Ordering::Relaxed),
        0,
        "the connection went on"
    );
}

/// A mutation made while the mirror waits out a long reconnect backoff fails at its own
/// deadline, not when the backoff ends: the driver's timer learns of the new deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_made_during_a_long_backoff_fails_at_its_deadline() {
    use asyncmachine::machine::{Mutation, MutationError, MutationKind};
    use asyncmachine::proto::session::RetryPolicy;
    // Nothing listens at this address once the listener is gone.
    let address = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        listener.local_addr().expect("an address")
    };
    let deadline = Duration::from_millis(200);
    let mirror = Mirror::start(
        &at(address),
        MirrorConfig {
            backoff_initial: Duration::from_secs(120),
            backoff_max: Duration::from_secs(120),
            retry: RetryPolicy {
                deadline,
                max_waiting: 16,
            },
            ..config("leaf")
        },
    )
    .expect("starts");
    eventually("the first attempt to fail", || {
        mirror.last_error().is_some()
    })
    .await;
    let counter = schema().index("Counter").expect("a state");
    let made = mirror.mutate(Mutation::new(MutationKind::Add, vec![counter], Args::new()));
    assert_eq!(
        within(
            "the mutation's deadline, long before the backoff ends",
            made
        )
        .await,
        Err(MutationError::Unreachable(deadline))
    );
}

/// A hop whose forwarded run timed out does not know whether it ran, and records nothing: the
/// client hears the timeout, and a repeat of the key goes up again, where the root's record
/// answers it with what really happened (it ran once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_that_timed_out_leaves_the_answer_to_the_roots_record() {
    let (root, running_rx, go_tx) = held_root();
    let (_root_server, root_address) = serve(Arc::new(root.clone())).await;
    let mid = Mirror::connect(
        &at(root_address),
        MirrorConfig {
            mutation_timeout: Duration::from_millis(200),
            ..config("mid")
        },
    )
    .await
    .expect("mid connects");
    let (_mid_server, mid_address) = serve(Arc::new(mid.clone())).await;
    let leaf = Mirror::connect(&at(mid_address), config("leaf"))
        .await
        .expect("leaf connects");

    let first = tokio::spawn(leaf.mutate(leafs_first_add()));
    root_running(running_rx).await;
    let timed_out = within("mid's timeout", first)
        .await
        .expect("the task runs")
        .expect_err("no answer reached mid in time");
    assert!(
        timed_out.to_string().contains("may or may not have run"),
        "{timed_out}"
    );
    let_root_finish(&go_tx, &root).await;

    assert_eq!(
        within("the repeat's answer", leaf.mutate(leafs_first_add())).await,
        Ok(Outcome::Executed),
        "mid kept no record of a run it could not see end; the root's record answers"
    );
    assert_eq!(root.tick("Counter"), 1, "ran once");
}
