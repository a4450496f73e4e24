//! A process's outgoing QUIC connections share its UDP sockets (one per runtime worker and
//! address family): mirrors of one process reach a server from as many addresses as the
//! runtime has workers, and keep working when the runtime that made an earlier socket is gone.

mod common;

use std::sync::Arc;

use asyncmachine::machine::{Args, Machine, StateSource};
use asyncmachine::server::ServerConfig;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_of_one_process_connect_over_quic_from_a_socket_per_worker() {
    let root = Machine::builder(abc_schema()).id("root").build();
    let (server, at) = serve(Arc::new(root.clone()), ServerConfig::default(), "quic").await;
    let a = mirror(&at, "a").await;
    let b = mirror(&at, "b").await;
    let c = mirror(&at, "c").await;
    eventually("the clients listed", || server.clients().len() == 3).await;
    let peers: std::collections::BTreeSet<String> =
        server.clients().into_iter().map(|c| c.peer).collect();
    assert_eq!(
        peers.len(),
        2,
        "two workers, two local addresses: {peers:?}"
    );

    // Both still carry the root's changes.
    root.add(&["A"], Args::new()).expect("adds");
    converged(&a, &root.clock()).await;
    converged(&b, &root.clock()).await;
    converged(&c, &root.clock()).await;
}

/// A runtime's socket goes with it; a runtime after it connects through a new one.
#[test]
fn a_runtime_after_another_connects_over_quic() {
    for round in 0..2 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let root = Machine::builder(abc_schema()).id("root").build();
            let (_server, at) =
                serve(Arc::new(root.clone()), ServerConfig::default(), "quic").await;
            let m = mirror(&at, &format!("m{round}")).await;
            root.add(&["B"], Args::new()).expect("adds");
            converged(&m, &root.clock()).await;
        });
    }
}
