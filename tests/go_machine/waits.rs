//! Ported tests of waits, state contexts and disposal.

use std::sync::{Arc, Mutex};

use asyncmachine::machine::{Args, MutationError, MutationKind, StateDef, StateSource, WaitError};

use crate::helpers::{assert_states, machine, no_rels, soon};
use crate::queue::rels;

/// Go: TestWhen (machine_test.go). Go's handler sleeps before each add; the thread here adds
/// at once, and the wait has a timeout.
#[tokio::test]
async fn when() {
    let m = no_rels(&[]);
    m.on_state("A", |e| {
        let m = e.machine().clone();
        std::thread::spawn(move || {
            m.add(&["B"], Args::new()).expect("known");
            m.add(&["C"], Args::new()).expect("known");
        });
    })
    .expect("known state");
    m.set(&["A"], Args::new()).expect("known states");
    soon(m.when(&["B", "C"])).await.expect("not disposed");
    assert_states(&m, &["A", "B", "C"]);
}

/// Go: TestWhen2 (machine_test.go)
#[tokio::test]
async fn when2() {
    let m = no_rels(&[]);
    let (first, second) = (m.when(&["A", "B"]), m.when(&["A", "B"]));
    let waiters = tokio::spawn(async move { (first.await, second.await) });
    m.add(&["A", "B"], Args::new()).expect("known states");
    let (a, b) = soon(waiters).await.expect("joins");
    assert_eq!((a, b), (Ok(()), Ok(())));
}

/// Go: TestWhenActive (machine_test.go)
#[tokio::test]
async fn when_active() {
    let m = no_rels(&["A"]);
    soon(m.when(&["A"])).await.expect("not disposed");
    assert_states(&m, &["A"]);
}

/// Go: TestWhenDups (machine_test.go): overlapping waits, dropped unresolved, are harmless.
#[test]
fn when_dups() {
    let m = no_rels(&[]);
    let waits = [m.when(&["A"]), m.when(&["A", "B"]), m.when(&["A", "C"])];
    m.set(&["A"], Args::new()).expect("known states");
    assert!(waits[0].is_ready());
    drop(waits);
    assert_eq!(m.waiter_count(), 0);
}

/// Go: TestWhenNot (machine_test.go)
#[tokio::test]
async fn when_not() {
    let m = no_rels(&["B", "C"]);
    m.on_state("A", |e| {
        let m = e.machine().clone();
        std::thread::spawn(move || {
            m.remove(&["B"], Args::new()).expect("known");
            m.remove(&["C"], Args::new()).expect("known");
        });
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known states");
    soon(m.when_not(&["B", "C"])).await.expect("not disposed");
    soon(m.when_not(&["B"])).await.expect("not disposed");
    assert_states(&m, &["A"]);
}

/// Go: TestWhenNot2 (machine_test.go)
#[tokio::test]
async fn when_not2() {
    let m = no_rels(&["A", "B"]);
    let (first, second) = (m.when_not(&["A", "B"]), m.when_not(&["A", "B"]));
    let waiters = tokio::spawn(async move { (first.await, second.await) });
    m.remove(&["A", "B"], Args::new()).expect("known states");
    let (a, b) = soon(waiters).await.expect("joins");
    assert_eq!((a, b), (Ok(()), Ok(())));
}

/// Go: TestWhenNotActive (machine_test.go)
#[tokio::test]
async fn when_not_active() {
    let m = no_rels(&["A"]);
    soon(m.when_not(&["B"])).await.expect("not disposed");
    assert_states(&m, &["A"]);
}

/// Go: TestWhenTime (machine_test.go)
#[tokio::test]
async fn when_time() {
    let m = no_rels(&["A", "B"]);
    let first = m.when_time(&["A", "B"], &[5, 2]);
    let _second = m.when_time(&["A", "B"], &[7, 2]);
    let third = m.when_time(&["A", "B"], &[9, 2]);
    m.remove(&["A", "B"], Args::new()).expect("known states");
    m.add(&["A", "B"], Args::new()).expect("known states");
    assert!(!first.is_ready(), "(A:3 B:3) is not yet");
    m.remove(&["A"], Args::new()).expect("known states");
    m.add(&["A"], Args::new()).expect("known states");
    assert!(first.is_ready(), "(A:5 B:3) is");
    for _ in 0..2 {
        m.remove(&["A"], Args::new()).expect("known states");
        m.add(&["A"], Args::new()).expect("known states");
    }
    soon(third).await.expect("not disposed");
}

/// Go: TestStateCtx (machine_test.go): a context taken in A's state handler is canceled once
/// A is removed.
#[test]
fn state_ctx() {
    let m = no_rels(&[]);
    let ctx = Arc::new(Mutex::new(None));
    let c = ctx.clone();
    m.on_state("A", move |e| {
        *c.lock().expect("lock") = Some(e.machine().state_ctx("A"));
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known states");
    let ctx = ctx.lock().expect("lock").clone().expect("AState ran");
    assert!(!ctx.is_canceled());
    m.remove(&["A"], Args::new()).expect("known states");
    assert_states(&m, &[]);
    assert!(ctx.is_canceled(), "state context should be canceled");
}

/// Go: TestStateCtxBasic (machine_test.go): a context lives until its state's tick changes,
/// for an inactive state as well.
#[test]
fn state_ctx_basic() {
    let m = no_rels(&[]);
    m.add(&["A"], Args::new()).expect("known states");
    let ctx1 = m.state_ctx("A");
    assert!(!ctx1.is_canceled());
    m.remove(&["A"], Args::new()).expect("known states");
    assert!(ctx1.is_canceled());

    let ctx2 = m.state_ctx("B");
    assert!(!ctx2.is_canceled(), "an inactive state's context lives on");
    m.add(&["B"], Args::new()).expect("known states");
    assert!(ctx2.is_canceled());
}

/// Go: TestDisposedNoOp (machine_test.go), for what exists here. Rust: mutations of a
/// disposed machine are `Err(Disposed)` (Go: `Canceled`), and its waits end with
/// `Err(Disposed)` (Go: a closed channel). Toggle, Has, String, Inspect and Eval are part 3
/// of issue 14, with other helpers.
#[tokio::test]
async fn disposed_no_op() {
    let m = no_rels(&[]);
    m.dispose();
    for result in [
        m.set(&["A"], Args::new()),
        m.add(&["A"], Args::new()),
        m.remove(&["A"], Args::new()),
    ] {
        assert_eq!(result, Err(MutationError::Disposed));
    }
    assert_eq!(
        StateSource::add(&m, &["A"], Args::new()).await,
        Err(MutationError::Disposed)
    );
    assert_eq!(m.queue_len(), 0);
    assert!(m.active_states().is_empty());
    assert!(m.clock().is_empty());
    assert_eq!(m.tick("A"), 0);
    assert!(!m.is1("A"));
    assert_eq!(m.when(&["A"]).await, Err(WaitError::Disposed));
    assert_eq!(m.when_not(&["A"]).await, Err(WaitError::Disposed));
    assert_eq!(m.when_time(&["A"], &[0]).await, Err(WaitError::Disposed));
    assert!(m.state_ctx("A").is_canceled());
    assert_eq!(
        m.add_err_state("A", "e", Args::new()),
        Err(MutationError::Disposed)
    );
    assert_eq!(
        m.when_args("A", Args::new()).await,
        Err(WaitError::Disposed)
    );
    assert_eq!(m.when_queue_ends().await, Err(WaitError::Disposed));
    assert_eq!(m.find_queued(MutationKind::Add, &["A"]), None);
    assert_eq!(m.when_disposed().await, Ok(()));
}

/// Go: TestWhenArgs (machine_test.go)
#[tokio::test]
async fn when_args() {
    let m = rels();
    let when = m.when_args("B", Args::new().with("foo", "bar"));

    // incorrect args
    m.add(&["B"], Args::new().with("foo", "foo"))
        .expect("known state");
    assert!(!when.is_ready(), "when shouldn't be resolved");

    // correct args
    m.add(&["B"], Args::new().with("foo", "bar"))
        .expect("known state");
    assert!(when.is_ready(), "when should be resolved");
    assert_eq!(when.await, Ok(()));

    // dispose
    m.dispose();
    soon(m.when_disposed()).await.expect("resolves on disposal");
}

/// Go: TestWhenCtx (machine_test.go). Rust: Go passes a context to each wait; here a wait is
/// bound to a cancellation with `When::until`, here the state context of D, canceled by
/// activating D. A canceled wait ends with `Err(Canceled)` (Go closes the channel as on
/// success), and its waiter is gone at once (Go collects it at the next mutation). Go's last
/// part checks that `WhenTime` with more states than ticks raises an error; ours pairs the two
/// lists and cannot raise one from a read-only source, so that part is not ported.
#[tokio::test]
async fn when_ctx() {
    let m = machine(vec![
        StateDef::new("A"),
        StateDef::new("B"),
        StateDef::new("C"),
        StateDef::new("D").multi(),
    ]);
    m.set(&["A", "B"], Args::new()).expect("known states");

    // wait on "when" methods bound to a cancellation
    let ctx = m.state_ctx("D");
    let when_time = m.when_time(&["A", "B"], &[3, 3]).until(ctx.canceled());
    let when_ticks1 = m.when_ticks("A", 2).until(ctx.canceled());
    let when_ticks2 = m.when_tick_reaches("B", 3).until(ctx.canceled());
    let when_args = m
        .when_args("B", Args::new().with("foo", "bar"))
        .until(ctx.canceled());
    let when = m.when(&["C"]).until(ctx.canceled());
    assert_eq!(m.waiter_count(), 6, "five waits and D's context");

    let canceler = m.clone();
    std::thread::spawn(move || {
        canceler.add(&["D"], Args::new()).expect("known state");
    });
    for wait in [when, when_args, when_time, when_ticks1, when_ticks2] {
        assert_eq!(soon(wait).await, Err(WaitError::Canceled));
    }
    assert_eq!(m.waiter_count(), 0, "the canceled waits are gone");

    // dispose
    m.dispose();
    soon(m.when_disposed()).await.expect("resolves on disposal");
}
