//! Counters, the mutation latency histogram and the admin listener (/metrics, /healthz).

mod common;

use std::path::Path;

use asyncmachine::machine::{Args, Outcome, StateSource};
use asyncmachine::node::start_topology;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    within("admin GET", async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("writes");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reads");
        out
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_prometheus_metrics_and_health() {
    let name = format!("obs-{}", std::process::id());
    let text = format!(
        "[schemas.s]\nstates = [{{ name = \"A\" }}, {{ name = \"B\" }}]\n\n[[nodes]]\nname = \"root\"\nlisten = [\"mem://{name}\"]\nadmin = \"127.0.0.1:0\"\nmachines = [{{ name = \"s\", schema = \"s\" }}]\n"
    );
    let plan = asyncmachine::topology::parse(Path::new("inline.toml"), &text).expect("valid");
    let running = within("start", start_topology(&plan, &[]))
        .await
        .expect("starts");
    let node = running.node("root").expect("root");
    let admin = node.admin().expect("an admin listener");
    let endpoint = node.endpoints()[0].clone().with_machine("s");
    let mirror = mirror(&endpoint, "watcher").await;
    for state in ["A", "B", "A"] {
        let out = within("mutate", mirror.add(&[state], Args::new())).await;
        assert_eq!(out, Ok(Outcome::Executed));
    }

    let health = get(admin, "/healthz").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    let metrics = get(admin, "/metrics").await;
    assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
    for needle in [
        "am_clients{node=\"root\"} 1",
        "am_mutations_total{node=\"root\"} 3",
        "am_source_clients{node=\"root\",source=\"s\"} 1",
        "am_mutation_latency_seconds_count{node=\"root\"} 3",
        "# TYPE am_mutation_latency_seconds histogram",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }
    let status = node.server().status();
    let counter = |name: &str| {
        status
            .counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    };
    assert!(counter("mutation_p50_us").is_some_and(|us| us > 0));
    assert!(
        counter("frames_out").is_some_and(|n| n >= 4),
        "welcome and three replies"
    );
    assert!(get(admin, "/nope").await.starts_with("HTTP/1.1 404"));
    assert_eq!(mirror.clock(), node.machine("s").expect("s").clock());
    running.shutdown().await;
}
