//! Benchmark scenarios of DESIGN.md section 9, run in one process over real sockets, as
//! library functions that `am-node bench` prints and tests call with small sizes; and the
//! chain and sgp as deployed, each node its own process (`chain_processes`, `sgp_processes`,
//! with `children` and `hop`).
//!
//! Figures come from these runs, never from timed assertions in tests.

pub mod bytes;
pub mod chain;
pub mod chain_processes;
pub mod children;
pub mod fanout;
pub mod hop;
pub mod proxy;
pub mod redis_chain;
pub mod relay;
pub mod relay_compare;
pub mod sgp;
pub mod sgp_processes;

use std::sync::Arc;
use std::time::Duration;

use asyncmachine::machine::StateSource;
use asyncmachine::telemetry::{Telemetry, TelemetryConfig};

use asyncmachine::machine::{Schema, StateDef};
use asyncmachine::transport::{Scheme, TlsConfig, TransportConfig};

/// Telemetry of a benchmark's machine when `AM_DEBUG` names a collector (to measure what
/// telemetry costs: BENCHMARKS.md); `None` without it, or outside a tokio runtime. With
/// `AM_BENCH_NULL_TRACER`, a tracer that does nothing is bound first.
pub fn telemetry_from_env(
    node: &str,
    name: &str,
    source: Arc<dyn StateSource>,
) -> Option<Telemetry> {
    tokio::runtime::Handle::try_current().ok()?;
    let config: TelemetryConfig = TelemetryConfig::from_env()?.ok()?;
    let telemetry = Telemetry::start(node, config);
    telemetry.attach(name, source);
    Some(telemetry)
}

/// The schema the chain and fanout scenarios flip: one multi state, `Tick`, and its position.
fn tick_schema() -> Result<(Schema, usize), BenchError> {
    let schema = Schema::builder()
        .state(StateDef::new("Tick").multi())
        .build()
        .map_err(|e| BenchError::Setup(format!("schema: {e}")))?;
    let tick = schema
        .index("Tick")
        .ok_or_else(|| BenchError::Setup("schema: no Tick".into()))?;
    Ok((schema, tick))
}

/// Transport material for a benchmark over `scheme`: a fresh development CA and node
/// certificate for the TLS-based schemes, nothing for the others.
pub fn transport_for(scheme: Scheme) -> Result<TransportConfig, BenchError> {
    Ok(BenchTls::for_scheme(scheme)?.map_or_else(TransportConfig::default, |tls| tls.node))
}

/// A benchmark's TLS material: what its nodes present and trust, and the CA certificate a
/// client in another process needs to trust them.
struct BenchTls {
    node: TransportConfig,
    ca_pem: String,
    /// The node's certificate and key, PEM, for a node that reads them from files.
    node_pem: asyncmachine::certs::PemPair,
}

impl BenchTls {
    /// A fresh development CA and node certificate for the TLS-based schemes; `None` for the
    /// others.
    fn for_scheme(scheme: Scheme) -> Result<Option<BenchTls>, BenchError> {
        if matches!(scheme, Scheme::Tcp | Scheme::Ws | Scheme::Mem) {
            return Ok(None);
        }
        let setup = |e: &dyn std::fmt::Display| BenchError::Setup(format!("TLS material: {e}"));
        let ca = asyncmachine::certs::DevCa::new("bench CA").map_err(|e| setup(&e))?;
        let node = ca.issue("bench-node").map_err(|e| setup(&e))?;
        let ca_pem = ca.pem().cert.clone();
        let tls = TlsConfig::from_pem(
            Some(node.cert.as_bytes()),
            Some(node.key.as_bytes()),
            Some(ca_pem.as_bytes()),
            false,
        )
        .map_err(|e| setup(&e))?;
        Ok(Some(BenchTls {
            node: TransportConfig::with_tls(tls),
            ca_pem,
            node_pem: node,
        }))
    }
}

/// Transport material for clients that trust `ca_pem` and present nothing.
fn trusting(ca_pem: &str) -> Result<TransportConfig, BenchError> {
    TlsConfig::from_pem(None, None, Some(ca_pem.as_bytes()), false)
        .map(TransportConfig::with_tls)
        .map_err(|e| BenchError::Setup(format!("the root's CA certificate: {e}")))
}

/// Parses a `--transport` value.
pub fn scheme(name: &str) -> Result<Scheme, BenchError> {
    match name {
        "tcp" => Ok(Scheme::Tcp),
        "tls" => Ok(Scheme::Tls),
        "quic" => Ok(Scheme::Quic),
        "ws" => Ok(Scheme::Ws),
        "wss" => Ok(Scheme::Wss),
        other => Err(BenchError::Setup(format!(
            "unknown transport {other:?}; use tcp, tls, quic, ws or wss"
        ))),
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("setting up the benchmark failed: {0}")]
    Setup(String),
    #[error("the scenario failed at loop {at}: {reason}")]
    Scenario { at: u64, reason: String },
}

/// Latency percentiles of a run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn of(samples: &mut [Duration]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles {
                p50_us: 0.0,
                p99_us: 0.0,
                max_us: 0.0,
            };
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i].as_secs_f64() * 1e6
        };
        Percentiles {
            p50_us: at(0.50),
            p99_us: at(0.99),
            max_us: at(1.0),
        }
    }
}
