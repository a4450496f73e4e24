//! Faults on the links of a tree: root <- mid <- leaf over TCP, each link through a
//! [`FaultProxy`]. Under continuous mutations at the root and from the leaf, links are cut,
//! stalled, delayed and reset again and again; afterwards every mirror must equal the root,
//! and every mutation the leaf saw `Executed` must have run at the root.
//!
//! Each fault is held until its effect is seen (a mirror drops, or mutations get through a
//! delayed link), never for a fixed time.

// The helpers of the library's network tests: one copy serves both crates.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use am_node::fault::{Fault, FaultProxy};
use asyncmachine::machine::{Args, Event, Machine, Outcome, Schema, StateDef, StateSource};
use asyncmachine::mirror::{ConnState, Mirror, MirrorConfig};
use asyncmachine::proto::config::Limits;
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::Endpoint;
use common::*;

fn schema() -> Schema {
    Schema::builder()
        .state(StateDef::new("A"))
        .state(StateDef::new("B"))
        .state(StateDef::new("C"))
        .state(StateDef::new("Op").multi())
        .build()
        .expect("valid schema")
}

fn server_config() -> ServerConfig {
    ServerConfig {
        limits: Limits {
            idle_timeout: Duration::from_millis(600),
            keepalive: Duration::from_millis(100),
            ..Limits::default()
        },
        ..ServerConfig::default()
    }
}

fn link_config(id: &str) -> MirrorConfig {
    MirrorConfig {
        keepalive: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(600),
        mutation_timeout: Duration::from_secs(2),
        ..mirror_config(id)
    }
}

async fn serve_source(source: Arc<dyn StateSource>) -> (Server, std::net::SocketAddr) {
    let (server, endpoint) = serve(source, server_config(), "tcp").await;
    let addr = endpoint.address.parse().expect("a tcp address");
    (server, addr)
}

fn through(proxy: &FaultProxy) -> Endpoint {
    format!("tcp://{}/worker", proxy.addr)
        .parse()
        .expect("an endpoint")
}

async fn until_state(mirror: &Mirror, what: &str, wanted: impl Fn(ConnState) -> bool) {
    let mut changes = mirror.connection_changes();
    within(what, changes.wait_for(|s| wanted(*s)))
        .await
        .expect("the mirror is alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_converges_after_links_are_cut_stalled_delayed_and_reset() {
    let root = Machine::builder(schema()).id("root").build();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let s = seen.clone();
    root.on_enter("Op", move |e: &Event<'_>| {
        if let Some(n) = e.arg("n").and_then(|v| v.as_int()) {
            s.lock().expect("lock").insert(n);
        }
        true
    })
    .expect("known state");
    let (_root_server, root_addr) = serve_source(Arc::new(root.clone())).await;
    let upper = FaultProxy::start(root_addr).await.expect("proxy");
    let mid = within("mid", Mirror::connect(&through(&upper), link_config("mid")))
        .await
        .expect("mid connects");
    let (_mid_server, mid_addr) = serve_source(Arc::new(mid.clone())).await;
    let lower = FaultProxy::start(mid_addr).await.expect("proxy");
    let leaf = within(
        "leaf",
        Mirror::connect(&through(&lower), link_config("leaf")),
    )
    .await
    .expect("leaf connects");

    let stop = Arc::new(AtomicBool::new(false));
    let root_load = tokio::spawn({
        let (root, stop) = (root.clone(), stop.clone());
        async move {
            let mut pace = tokio::time::interval(Duration::from_millis(1));
            while !stop.load(Ordering::Relaxed) {
                churn(&root, 5);
                pace.tick().await;
            }
        }
    });
    let acked = Arc::new(Mutex::new(Vec::new()));
    let leaf_load = tokio::spawn({
        let (leaf, stop, acked) = (leaf.clone(), stop.clone(), acked.clone());
        async move {
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if let Ok(Outcome::Executed) = leaf.add(&["Op"], Args::new().with("n", n)).await {
                    acked.lock().expect("lock").push(n);
                }
                pace.tick().await;
            }
        }
    });
    let acked_now = || acked.lock().expect("lock").len();
    let acks_grow = |by: usize| {
        let wanted = acked_now() + by;
        within("leaf mutations to get through", async move {
            let mut pace = tokio::time::interval(Duration::from_millis(5));
            while acked_now() < wanted {
                pace.tick().await;
            }
        })
    };

    let mut faults = 0;
    for round in 0..12 {
        let (proxy, below) = if round % 2 == 0 {
            (&upper, &mid)
        } else {
            (&lower, &leaf)
        };
        match round / 2 % 4 {
            0 => {
                proxy.set(Fault::Cut);
                until_state(below, "the cut is noticed", |s| s != ConnState::Ready).await;
            }
            1 => {
                proxy.set(Fault::Stall);
                until_state(below, "the stall is noticed", |s| s != ConnState::Ready).await;
            }
            2 => {
                proxy.set(Fault::Delay(Duration::from_millis(15)));
                acks_grow(5).await;
            }
            _ => {
                proxy.reset_all();
                until_state(below, "the reset is noticed", |s| s != ConnState::Ready).await;
            }
        }
        faults += 1;
        proxy.set(Fault::Pass);
        until_state(below, "the link is back", |s| s == ConnState::Ready).await;
        // A healthy spell between faults, long enough for mutations to flow end to end.
        acks_grow(20).await;
    }

    stop.store(true, Ordering::Relaxed);
    within("root load stops", root_load)
        .await
        .expect("root load");
    within("leaf load stops", leaf_load)
        .await
        .expect("leaf load");
    let stopped = Instant::now();
    let target = root.clock();
    converged(&mid, &target).await;
    converged(&leaf, &target).await;
    let settle = stopped.elapsed();

    let acked = acked.lock().expect("lock").clone();
    let seen = seen.lock().expect("lock").clone();
    let missing: Vec<i64> = acked
        .iter()
        .filter(|n| !seen.contains(n))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never run at the root: {missing:?}"
    );
    assert!(!acked.is_empty(), "no leaf mutation got through");
    assert_eq!(faults, 12);
    assert!(upper.resets() + lower.resets() >= 2);
    // The figures a run reports (`cargo test --test faults -- --nocapture`).
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{faults} faults; {} leaf mutations executed, {} reached the root's handler; mirrors equal to the root {settle:?} after the load stopped",
            acked.len(),
            seen.len()
        );
    }
}
