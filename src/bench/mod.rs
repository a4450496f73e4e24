//! Benchmark scenarios of DESIGN.md section 9, run in one process over real sockets, as
//! library functions that `am-node bench` prints and tests call with small sizes.
//!
//! Figures come from these runs, never from timed assertions in tests.

pub mod chain;
pub mod proxy;
pub mod sgp;

use std::time::Duration;

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
