//! Ported tests of the queue: queue ticks, queue waits, queue lookups and dry runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use asyncmachine::machine::{Args, Machine, MutationKind, Outcome, StateDef, StateSource, When};

use crate::helpers::{assert_states, machine, no_rels, soon};

/// Go's `NewRels`: A auto and requires C; B multi and adds C; C after D; D adds C and B.
pub fn rels() -> Machine {
    machine(vec![
        StateDef::new("A").auto().require(["C"]),
        StateDef::new("B").multi().add(["C"]),
        StateDef::new("C").after(["D"]),
        StateDef::new("D").add(["C", "B"]),
    ])
}

/// Go: TestQueueCheckable (machine_test.go). Rust: Go's `IsQueued` with its many flags is
/// `find_queued(kind, states)` (the flags' defaults), returning the position.
#[test]
fn queue_checkable() {
    let m = no_rels(&[]);
    let asserts = Arc::new(AtomicUsize::new(0));
    let count = asserts.clone();
    m.on_state("A", move |e| {
        let m = e.machine();
        for state in ["B", "C", "D"] {
            assert_eq!(m.add(&[state], Args::new()), Ok(Outcome::Queued));
        }
        assert_eq!(m.queue_len(), 3, "queue should have 3 mutations scheduled");
        count.fetch_add(1, Ordering::Relaxed);

        assert_eq!(
            m.find_queued(MutationKind::Add, &["C"]),
            Some(1),
            "C queued"
        );
        assert!(m.will_be(&["C"]), "C should be queued");
        count.fetch_add(1, Ordering::Relaxed);

        assert_eq!(m.find_queued(MutationKind::Add, &["A"]), None);
        assert!(!m.will_be(&["A"]), "A should NOT be queued");
        count.fetch_add(1, Ordering::Relaxed);

        assert!(!m.will_be_removed(&["A"]), "no removal should be queued");
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    assert_eq!(asserts.load(Ordering::Relaxed), 3, "asserts executed");
    assert!(!m.is_err());
}

/// Go: TestWhenQueueEnds (machine_test.go). Go passes channels in the arguments; here the
/// handler captures them. Go asserts that a transition is running when the wait is made;
/// here the wait itself shows it: it is still pending until `add` returns.
#[tokio::test]
async fn when_queue_ends() {
    let m = no_rels(&[]);
    let (ready_mut, mut_ready) = mpsc::channel::<()>();
    let (ready_go, go_ready) = mpsc::channel::<()>();
    let go_ready = Mutex::new(go_ready);
    m.on_state("A", move |e| {
        ready_mut.send(()).expect("the waiting thread lives");
        go_ready
            .lock()
            .expect("lock")
            .recv()
            .expect("the waiting thread lives");
        e.machine().add(&["B"], Args::new()).expect("known state");
    })
    .expect("known state");
    let observer = m.clone();
    let waiting = std::thread::spawn(move || {
        mut_ready.recv().expect("A's handler runs");
        let queue_ends = observer.when_queue_ends();
        assert!(!queue_ends.is_ready(), "a transition is running");
        ready_go.send(()).expect("A's handler waits");
        queue_ends
    });
    m.add(&["A"], Args::new()).expect("known state");
    let queue_ends: When = waiting.join().expect("the waiting thread");
    // confirm the queue wait is closed
    soon(queue_ends).await.expect("not disposed");
    assert_states(&m, &["A", "B"]);
    m.remove(&["A"], Args::new()).expect("known state");
    assert!(m.when_queue_ends().is_ready(), "no queue runs");
}

/// Go: TestWhenQueue (machine_test.go). Rust: the queue tick of a queued mutation comes from
/// `mutate_tracked` (Go's `Result`), and the wait made in the handler is awaited after `add`.
#[tokio::test]
async fn when_queue() {
    let m = no_rels(&[]);
    let wait = Arc::new(Mutex::new(None));
    let slot = wait.clone();
    m.on_state("A", move |e| {
        let m = e.machine();
        m.add(&["B"], Args::new()).expect("known state");
        m.add(&["C"], Args::new()).expect("known state");
        let d = m
            .mutation(MutationKind::Add, &["D"], Args::new())
            .expect("known state");
        let receipt = m.mutate_tracked(d).expect("queued");
        assert_eq!(receipt.outcome, Outcome::Queued);
        assert_eq!(receipt.queue_tick, m.queue_tick() + 3);
        let when = m.when_queue(receipt.queue_tick);
        assert!(!when.is_ready(), "D is not processed yet");
        *slot.lock().expect("lock") = Some(when);
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    let when = wait.lock().expect("lock").take().expect("AState ran");
    soon(when).await.expect("not disposed");
    assert_states(&m, &["A", "B", "C", "D"]);
}

/// Go: TestCanAdd (machine_test.go). Go's breakpoint on C is a debugger aid, not ported.
#[test]
fn can_add() {
    let m = rels();
    assert_eq!(m.can_add(&["A"]), Ok(Outcome::Canceled), "can't add A");
    assert_eq!(m.can_add(&["C"]), Ok(Outcome::Executed), "can add C");
    assert_states(&m, &[]);
    assert_eq!(m.can_remove(&["C"]), Ok(Outcome::Executed));
    m.dispose();
}
