//! The hostile-input suite (in the spirit of zenoh's malformed-input tests): a table of bad
//! inputs (bytes, frames, messages, handshakes, WebSocket framing, HTTP upgrades, TLS and QUIC
//! garbage, slow and stalled peers) run against one node per transport (tcp, tls, quic, ws,
//! wss) and through am-relay. After each input the suite checks that the connection that sent
//! it was closed (with the protocol's `Refused` or `Error` where there is one), that the same
//! node still serves a fresh client, and that the process's memory stayed bounded.
//!
//! The table is data (`hostile/cases.rs`, filled by `protocol_cases.rs` and `transport_cases.rs`); the node and the fresh client are in
//! `hostile/node.rs`; the runner and its checks in `hostile/run.rs`; scripted peers in
//! `hostile/peers.rs`. `AM_HOSTILE_SKIP=prefix,...` skips cases by name prefix (for inputs
//! that abort the process on a node without the fix); nothing is skipped by default.

#[path = "hostile/bodies.rs"]
mod bodies;
#[path = "hostile/cases.rs"]
mod cases;
mod common;
#[path = "hostile/node.rs"]
mod node;
#[path = "hostile/peers.rs"]
mod peers;
#[path = "hostile/protocol_cases.rs"]
mod protocol_cases;
#[path = "hostile/run.rs"]
mod run;
#[path = "hostile/transport_cases.rs"]
mod transport_cases;

use std::collections::BTreeSet;

use node::Kind;

const KINDS: [Kind; 6] = [
    Kind::Tcp,
    Kind::Tls,
    Kind::Quic,
    Kind::Ws,
    Kind::Wss,
    Kind::Relay,
];

/// The table names each input once, holds at least 100, and says how many reach each
/// listener.
#[test]
#[allow(
    clippy::print_stderr,
    reason = "the suite prints what it covers, as the issue asks"
)]
fn the_table_holds_at_least_a_hundred_distinct_inputs() {
    let table = cases::table();
    let names: BTreeSet<&str> = table.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), table.len(), "every case has its own name");
    assert!(
        table.len() >= 100,
        "{} hostile inputs; the suite promises at least 100",
        table.len()
    );
    for kind in KINDS {
        let reach = table.iter().filter(|c| c.applies(kind)).count();
        eprintln!("hostile inputs for {}: {reach}", kind.name());
        assert!(reach >= 100, "only {reach} inputs reach {}", kind.name());
    }
    eprintln!("hostile inputs in the table: {}", table.len());
}

/// The zstd bombs are real: small on the wire, huge when unpacked, and refused by a
/// decompression bounded as the node's is.
#[test]
fn the_zstd_bombs_are_real() {
    let bomb = bodies::zstd_bomb(2 << 20, None);
    assert!(bomb.len() < 100, "{} bytes", bomb.len());
    let unpacked = zstd::stream::decode_all(&bomb[..]).expect("a valid zstd frame");
    assert_eq!(unpacked.len(), 2 << 20);
    assert!(unpacked.iter().all(|&b| b == 0));
    assert!(zstd::bulk::decompress(&bomb, node::MAX_FRAME).is_err());
    let gigabyte = bodies::zstd_bomb(1 << 30, None);
    assert!(gigabyte.len() < node::MAX_FRAME, "{} bytes", gigabyte.len());
}

macro_rules! suites {
    ($($name:ident => $kind:expr),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            run::suite($kind).await;
        }
    )*};
}

suites!(
    tcp => Kind::Tcp,
    tls => Kind::Tls,
    quic => Kind::Quic,
    ws => Kind::Ws,
    wss => Kind::Wss,
    through_the_relay => Kind::Relay,
);
