//! The sgp loop of DESIGN.md section 9 in one process, no network: the cost of the state
//! machine core per loop (one `CallOp` mutation that runs four transitions and their handlers,
//! plus the consumer's wait and local read).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use am_node::sgp::{Consumer, start_worker};
use criterion::{Criterion, criterion_group, criterion_main};

/// Polls a future that a local machine resolves at once.
fn ready<F: Future>(fut: F) -> F::Output {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a local sgp step never waits"),
    }
}

fn sgp_in_process(c: &mut Criterion) {
    let (worker, stats) = start_worker("sgp-worker", 7);
    // With AM_BENCH_NULL_TRACER: a tracer that does nothing, for what the tracer interface
    // itself costs the machine (BENCHMARKS.md, "Telemetry").
    if std::env::var_os("AM_BENCH_NULL_TRACER").is_some() {
        struct Null;
        impl asyncmachine::machine::Tracer for Null {}
        worker.bind_tracer(std::sync::Arc::new(Null));
    }
    // With AM_DEBUG: the worker's transitions go to that collector, sent by a task on a
    // runtime of their own (the bench's thread only fills the buffer).
    let runtime = std::env::var_os("AM_DEBUG").map(|_| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for telemetry")
    });
    let telemetry = runtime.as_ref().map(|rt| {
        let _entered = rt.enter();
        am_node::bench::telemetry_from_env("bench", "sgp", std::sync::Arc::new(worker.clone()))
            .expect("AM_DEBUG is tcp://HOST:PORT")
    });
    let mut consumer = Consumer::new();
    c.bench_function("sgp_loop_in_process", |b| {
        b.iter(|| ready(consumer.step(&worker)).expect("the worker answers"))
    });
    if let Some(telemetry) = &telemetry {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "telemetry: {} records dropped (buffers full)",
                telemetry.dropped()
            );
        }
    }
    assert_eq!(
        stats.errors.load(Ordering::Relaxed),
        0,
        "the consumer read a stale value"
    );
}

criterion_group!(benches, sgp_in_process);
criterion_main!(benches);
