//! The subscribe-get-process (sgp) scenario of DESIGN.md section 9: its schema, its worker
//! (the source side) and its consumer loop (the mirror side), kept exact to the Go original's
//! benchmark so that figures compare.
//!
//! The worker holds a value 1..3. On `CallOp` with argument `op` it checks that `op` matches
//! its value (else counts an error), draws a new value and emits `Event`; `Event`'s handler
//! removes `Event` and activates the matching `ValueN`. The consumer loops: wait until
//! `Event`'s tick has grown by 2, read which `ValueN` is active, call `add(CallOp, op=N)` and
//! require `Executed`. The consumer works on any [`StateSource`], local or mirrored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use asyncmachine::machine::{
    Args, Machine, MutationError, Outcome, Schema, StateDef, StateSource, WaitError,
};

pub const START: &str = "Start";
pub const EVENT: &str = "Event";
pub const CALL_OP: &str = "CallOp";
pub const VALUES: [&str; 3] = ["Value1", "Value2", "Value3"];

/// The scenario's schema: `Start`, `Event` (multi, requires Start), `Value1..3` (each removes
/// the other two), `CallOp` (multi, requires Start).
pub fn schema() -> Schema {
    let others = |i: usize| {
        VALUES
            .iter()
            .enumerate()
            .filter(move |&(j, _)| j != i)
            .map(|(_, v)| *v)
    };
    Schema::builder()
        .state(StateDef::new(START))
        .state(StateDef::new(EVENT).multi().require([START]))
        .state(StateDef::new(VALUES[0]).remove(others(0)))
        .state(StateDef::new(VALUES[1]).remove(others(1)))
        .state(StateDef::new(VALUES[2]).remove(others(2)))
        .state(StateDef::new(CALL_OP).multi().require([START]))
        .build()
        .unwrap_or_else(|e| unreachable!("the sgp schema is valid: {e}"))
}

/// What the worker counted.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
}

struct Worker {
    /// The current value, 1..3.
    value: AtomicU64,
    rng: AtomicU64,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// xorshift64*: enough randomness for a benchmark, no dependency.
    fn draw(&self) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % 3 + 1
    }
}

/// Builds the worker machine with its handlers, starts it and emits the first `Event`.
pub fn start_worker(id: &str, seed: u64) -> (Machine, Arc<WorkerStats>) {
    let machine = Machine::builder(schema()).id(id).build();
    let stats = Arc::new(WorkerStats::default());
    let worker = Arc::new(Worker {
        value: AtomicU64::new(1),
        rng: AtomicU64::new(seed | 1),
        stats: stats.clone(),
    });

    let w = worker.clone();
    machine
        .on_state(CALL_OP, move |e| {
            w.stats.calls.fetch_add(1, Ordering::Relaxed);
            let op = e.arg("op").and_then(|v| v.as_int());
            if op != Some(w.value.load(Ordering::Relaxed) as i64) {
                w.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            w.value.store(w.draw(), Ordering::Relaxed);
            e.machine().add(&[EVENT], Args::new()).map(drop)
        })
        .unwrap_or_else(|e| unreachable!("{e}"));
    let w = worker;
    machine
        .on_state(EVENT, move |e| {
            let m = e.machine();
            m.remove(&[EVENT], Args::new())?;
            let value = w.value.load(Ordering::Relaxed) as usize;
            m.add(&[VALUES[value - 1]], Args::new()).map(drop)
        })
        .unwrap_or_else(|e| unreachable!("{e}"));

    let started = machine
        .add(&[START], Args::new())
        .and_then(|_| machine.add(&[EVENT], Args::new()));
    if let Err(e) = started {
        unreachable!("a fresh sgp worker accepts its first mutations: {e}");
    }
    (machine, stats)
}

/// Why a consumer loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum SgpError {
    #[error("CallOp was {0:?}, not Executed")]
    NotExecuted(Outcome),
    #[error("no ValueN state is active; the worker is not running")]
    NoValue,
    #[error(transparent)]
    Mutation(#[from] MutationError),
    #[error(transparent)]
    Wait(#[from] WaitError),
}

/// The mirror side of the scenario.
#[derive(Debug)]
pub struct Consumer {
    /// The `Event` tick to wait for before the next call.
    next_event_tick: u64,
}

impl Default for Consumer {
    fn default() -> Self {
        Self::new()
    }
}

impl Consumer {
    pub fn new() -> Self {
        // The worker's first `Event` takes the tick from 0 to 2.
        Consumer { next_event_tick: 2 }
    }

    /// One loop: wait for `Event`, read the value locally, call `CallOp` with it.
    pub async fn step<S: StateSource + ?Sized>(&mut self, source: &S) -> Result<(), SgpError> {
        source.when_time(&[EVENT], &[self.next_event_tick]).await?;
        let value = source.switch(&VALUES).ok_or(SgpError::NoValue)?;
        let op = VALUES
            .iter()
            .position(|v| *v == value)
            .map_or(0, |i| i as i64 + 1);
        self.next_event_tick = source.tick(EVENT) + 2;
        match source.add(&[CALL_OP], Args::new().with("op", op)).await? {
            Outcome::Executed => Ok(()),
            other => Err(SgpError::NotExecuted(other)),
        }
    }
}
