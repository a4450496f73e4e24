//! The bytes scenario: what a mirror costs on the wire, counted by a TCP proxy. The handshake
//! of a large schema (where zstd pays), and each single-state change after it (where frames are
//! too small to compress), with and without compression.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::BenchError;
use super::proxy::{CountingProxy, UdpCountingProxy};
use asyncmachine::machine::{Args, Machine, Schema, SchemaDef, StateDef, StateSource};
use asyncmachine::mirror::{Mirror, MirrorConfig};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{Endpoint, Scheme};

/// What a run measured, for one compression setting.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BytesReport {
    pub scenario: &'static str,
    pub transport: &'static str,
    pub compression: bool,
    pub states: usize,
    /// Connection, hello and welcome (schema and snapshot) both ways.
    pub handshake_bytes: u64,
    /// Server -> mirror bytes per single-state change.
    pub bytes_per_change: f64,
    pub changes: u64,
}

/// The table `am-node bench bytes` prints: a header and a row per compression setting.
#[derive(Debug, Clone, Copy)]
pub struct BytesTable<'a>(pub &'a [BytesReport]);

impl std::fmt::Display for BytesTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<11} {:>7} {:>16} {:>16}",
            "compression", "states", "handshake bytes", "bytes/change"
        )?;
        for r in self.0 {
            writeln!(
                f,
                "{:<11} {:>7} {:>16} {:>16.1}",
                if r.compression { "zstd" } else { "none" },
                r.states,
                r.handshake_bytes,
                r.bytes_per_change
            )?;
        }
        Ok(())
    }
}

/// Runs with and without compression.
pub async fn run(
    states: usize,
    changes: u64,
    scheme: Scheme,
) -> Result<Vec<BytesReport>, BenchError> {
    let mut reports = Vec::new();
    for compression in [false, true] {
        reports.push(run_one(states, changes, compression, scheme).await?);
    }
    Ok(reports)
}

async fn run_one(
    states: usize,
    changes: u64,
    compression: bool,
    scheme: Scheme,
) -> Result<BytesReport, BenchError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
    // Realistic names, and relations: what a large schema sends in its welcome.
    let defs = (0..states)
        .map(|i| {
            let def = StateDef::new(format!("State{i:04}"));
            if i % 3 == 1 {
                def.require([format!("State{:04}", i - 1)])
            } else {
                def
            }
        })
        .collect();
    let schema = Schema::new(SchemaDef::of_states(defs)).map_err(|e| setup("schema", &e))?;
    let machine = Machine::new(schema);
    let transport = super::transport_for(scheme)?;
    let server = Server::new(ServerConfig {
        transport: transport.clone(),
        ..ServerConfig::default()
    });
    server
        .add_source("big", Arc::new(machine.clone()))
        .map_err(|e| setup("serving", &e))?;
    let bound = server
        .listen(&Endpoint::new(scheme, "127.0.0.1:0"))
        .await
        .map_err(|e| setup("binding", &e))?;
    let target: SocketAddr = bound.address.parse().map_err(|e| setup("address", &e))?;
    // QUIC is UDP: a datagram proxy; the others are TCP underneath (wire bytes, TLS records and
    // WebSocket framing included).
    let (proxy_addr, counts, _tcp, _udp) = if scheme == Scheme::Quic {
        let proxy = UdpCountingProxy::start(target)
            .await
            .map_err(|e| setup("proxy", &e))?;
        (proxy.addr, proxy.counts.clone(), None, Some(proxy))
    } else {
        let proxy = CountingProxy::start(target)
            .await
            .map_err(|e| setup("proxy", &e))?;
        (proxy.addr, proxy.counts.clone(), Some(proxy), None)
    };
    let endpoint = Endpoint::new(scheme, proxy_addr.to_string()).with_machine("big");
    let config = MirrorConfig {
        compression,
        transport,
        keepalive: Duration::from_secs(3600),
        ..MirrorConfig::default()
    };
    let mirror = Mirror::connect(&endpoint, config)
        .await
        .map_err(|e| setup("mirror", &e))?;
    let handshake_bytes = counts.total();
    let down0 = counts.down.load(Ordering::Relaxed);
    for i in 0..changes {
        // One state flips per change; wait for it at the mirror so no two changes merge.
        // Every third state has no requirement, so each flip is accepted.
        let name = format!("State{:04}", (i as usize % states.div_ceil(3)) * 3);
        let target = machine.tick(&name) + 1;
        if machine.is1(&name) {
            machine.remove(&[name.as_str()], Args::new())
        } else {
            machine.add(&[name.as_str()], Args::new())
        }
        .map_err(|e| BenchError::Scenario {
            at: i,
            reason: e.to_string(),
        })?;
        tokio::time::timeout(
            Duration::from_secs(10),
            mirror.when_time(&[name.as_str()], &[target]),
        )
        .await
        .map_err(|_| BenchError::Scenario {
            at: i,
            reason: "the mirror never saw the change".into(),
        })?
        .map_err(|e| BenchError::Scenario {
            at: i,
            reason: e.to_string(),
        })?;
    }
    let down = counts.down.load(Ordering::Relaxed) - down0;
    mirror.close().await;
    server.shutdown(Duration::from_secs(2)).await;
    Ok(BytesReport {
        scenario: "bytes",
        transport: scheme.as_str(),
        compression,
        states,
        handshake_bytes,
        bytes_per_change: down as f64 / changes.max(1) as f64,
        changes,
    })
}
