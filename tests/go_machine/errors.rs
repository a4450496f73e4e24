//! Ported tests of error states: `add_err`, `add_err_state`, `last_error`, `is_err`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use asyncmachine::machine::{Args, StateSource};

use crate::helpers::{no_rels, soon};

/// Go: TestAddErr (mach_misc_test.go). Rust: Go's `PanicToErr` / `PanicToErrState` are
/// deferred recovers; their idiom here is `catch_unwind` around the work, then `add_err` /
/// `add_err_state` with the panic's message.
#[tokio::test]
async fn add_err() {
    // add err
    let m = no_rels(&[]);
    m.add_err_state("B", "test", Args::new())
        .expect("known state");
    m.add_err("test", Args::new()).expect("known state");
    assert!(m.is1("B"));
    assert!(m.is_err());
    assert_eq!(m.last_error().as_deref(), Some("test"));

    // panic to state
    let m = no_rels(&[]);
    let worker = m.clone();
    std::thread::spawn(move || {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(failing_work)) {
            let message = panic.downcast_ref::<&str>().copied().unwrap_or("panic");
            worker
                .add_err_state("B", message, Args::new())
                .expect("known state");
        }
    });
    soon(m.when_err()).await.expect("not disposed");
    assert!(m.is1("B"));
    assert!(m.is_err());

    // panic to err
    let m = no_rels(&[]);
    let worker = m.clone();
    std::thread::spawn(move || {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(failing_work)) {
            let message = panic.downcast_ref::<&str>().copied().unwrap_or("panic");
            worker.add_err(message, Args::new()).expect("known state");
        }
    });
    soon(m.when_err()).await.expect("not disposed");
    assert!(m.is_err());
    assert_eq!(m.last_error().as_deref(), Some("test"));
}

/// Work that panics, as the Go test's goroutines do.
fn failing_work() {
    panic!("test");
}
