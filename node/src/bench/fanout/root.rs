//! The root every mirror of the fanout scenario follows, in this process: its machine and
//! server, one flip, a sustained run; and what the runs measure it with (the system clock,
//! the process's memory).

use std::sync::Arc;
use std::time::{Duration, Instant};

use asyncmachine::machine::{Args, Machine, StateSource as _};
use asyncmachine::server::{Server, ServerConfig};
use asyncmachine::transport::{Endpoint, Scheme, TransportConfig};

use crate::bench::BenchError;

/// What a sustained run of the root did.
#[derive(Debug, Clone, Default)]
pub struct Sustained {
    pub mutations: u64,
    /// The root's `Tick` at the end: the clock every mirror must reach.
    pub final_tick: u64,
    /// Each batch of mutations: when it started ([`wall_us`]) and the tick before it.
    pub batches: Vec<(u64, u64)>,
    /// When a client mutated the root (`--processes`): from queueing a mutation to its answer,
    /// p99, µs. The root ran each between the two: what a lag timed from the queueing may
    /// over-estimate by.
    pub answer_p99_us: Option<f64>,
    /// When a client mutated the root: each mutation's answer ([`wall_us`]) and the tick
    /// before it, in the order of `batches`. The root ran it before: timed from these, a lag
    /// is under-estimated.
    pub answered: Option<Vec<(u64, u64)>>,
}

/// Microseconds of the system clock: comparable between processes of one machine.
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The machine every mirror follows and its server, in this process.
pub(super) struct LocalRoot {
    machine: Machine,
    pub(super) server: Server,
    pub(super) endpoint: Endpoint,
    /// The TLS material both ends use (nothing for tcp and ws): the mirrors' too.
    pub(super) transport: TransportConfig,
    /// The position of `Tick`.
    tick: usize,
    /// With `AM_DEBUG`: the root's telemetry (kept for the run).
    _telemetry: Option<asyncmachine::telemetry::Telemetry>,
}

impl LocalRoot {
    /// Serves the root over `scheme` with `transport`'s material (the mirrors must trust it).
    pub(super) async fn start(
        scheme: Scheme,
        transport: TransportConfig,
        mirrors: usize,
    ) -> Result<LocalRoot, BenchError> {
        let setup =
            |what: &str, e: &dyn std::fmt::Display| BenchError::Setup(format!("{what}: {e}"));
        let (schema, tick) = crate::bench::tick_schema()?;
        let machine = Machine::builder(schema).id("root").build();
        machine
            .add(&["Tick"], Args::new())
            .map_err(|e| setup("first tick", &e))?;
        let server = Server::new(ServerConfig {
            transport: transport.clone(),
            limits: asyncmachine::proto::config::Limits {
                max_clients: mirrors + 16,
                ..asyncmachine::proto::config::Limits::default()
            },
            ..ServerConfig::default()
        });
        server
            .add_source("fan", Arc::new(machine.clone()))
            .map_err(|e| setup("serving", &e))?;
        let endpoint = server
            .listen(&Endpoint::new(scheme, "127.0.0.1:0"))
            .await
            .map_err(|e| setup("binding", &e))?
            .with_machine("fan");
        let telemetry =
            crate::bench::telemetry_from_env("bench-root", "fan", Arc::new(machine.clone()));
        Ok(LocalRoot {
            machine,
            server,
            endpoint,
            transport,
            tick,
            _telemetry: telemetry,
        })
    }

    pub(super) fn flip(&self, at: u64) -> Result<(), BenchError> {
        self.machine
            .add(&["Tick"], Args::new())
            .map(drop)
            .map_err(|e| BenchError::Scenario {
                at,
                reason: e.to_string(),
            })
    }

    /// Mutates as fast as it can for `duration`, in batches of 64 with a yield between them so
    /// that, on a one-thread runtime, pushes go out. Each batch is logged before it runs.
    pub(super) async fn sustain(&self, duration: Duration) -> Result<Sustained, BenchError> {
        let started = Instant::now();
        let mut done = Sustained::default();
        while started.elapsed() < duration {
            done.batches
                .push((wall_us(), self.machine.tick_at(self.tick)));
            for _ in 0..64 {
                self.flip(done.mutations)?;
                done.mutations += 1;
            }
            tokio::task::yield_now().await;
        }
        done.final_tick = self.machine.tick_at(self.tick);
        Ok(done)
    }
}

/// Resident memory of this process, from /proc/self/statm (pages of 4 KiB).
pub(super) fn rss_kib() -> Option<u64> {
    statm_rss_kib("/proc/self/statm")
}

/// Resident memory of process `pid` (a child of this one), from its /proc/PID/statm.
pub(super) fn rss_kib_of(pid: u32) -> Option<u64> {
    statm_rss_kib(&format!("/proc/{pid}/statm"))
}

fn statm_rss_kib(path: &str) -> Option<u64> {
    let statm = std::fs::read_to_string(path).ok()?;
    statm
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|pages| pages * 4)
}
