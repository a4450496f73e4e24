//! The sgp scenario's worker and consumer (`am_node::sgp`): the loop runs without errors over
//! every transport, and the schema file shipped for it matches it.

// The helpers of the library's network tests: one copy serves both crates.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use am_node::sgp::{Consumer, schema, start_worker};
use asyncmachine::machine::Schema;
use asyncmachine::server::ServerConfig;
use common::*;

async fn sgp_over_the_network_has_no_errors(scheme: &str) {
    let (worker, stats) = start_worker("sgp-worker", 3);
    let (_server, endpoint) = serve(Arc::new(worker), ServerConfig::default(), scheme).await;
    let mirror = mirror(&endpoint, "sgp-mirror").await;
    let mut consumer = Consumer::new();
    for _ in 0..500 {
        within("sgp step", consumer.step(&mirror))
            .await
            .expect("step");
    }
    assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    assert_eq!(stats.calls.load(Ordering::Relaxed), 500);
}

/// One test per transport.
macro_rules! over {
    ($($transport:ident),* $(,)?) => {$(
        mod $transport {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sgp_over_the_network_has_no_errors() {
                super::sgp_over_the_network_has_no_errors(stringify!($transport)).await;
            }
        }
    )*};
}

over!(tcp, tls, quic, ws, wss, mem);

#[test]
fn the_shipped_sgp_schema_file_matches_the_scenario() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../topologies/schemas/sgp.toml"
    );
    let text = std::fs::read_to_string(path).expect("the schema file ships with the repository");
    let shipped = Schema::new(toml::from_str(&text).expect("parses")).expect("valid");
    assert_eq!(shipped.hash(), schema().hash());
}

#[test]
fn the_test_helpers_sgp_schema_is_the_scenarios() {
    assert_eq!(sgp_schema().hash(), schema().hash());
}
