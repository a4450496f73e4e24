//! A durable machine against real files: restore, acknowledgements after saves, observers of
//! saved clocks, failed saves, closing.

use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::machine::{Args, Outcome, StateDef};

const LIMIT: Duration = Duration::from_secs(10);

fn schema() -> Schema {
    Schema::builder()
        .state(StateDef::new("Start"))
        .state(StateDef::new("Counter").multi())
        .build()
        .expect("valid schema")
}

fn machine() -> Machine {
    Machine::builder(schema()).id("root").build()
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("am-durable-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn on_disk(path: &Path) -> ExportedState {
    let bytes = std::fs::read(path).expect("the state file");
    ExportedState::from_json(&bytes).expect("a valid state")
}

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn an_acknowledged_mutation_is_on_disk_and_a_reopened_machine_continues() {
    let dir = scratch("continue");
    let path = dir.join("state").join("root.json");
    let durable = DurableMachine::open(machine(), &path).await.expect("opens");
    assert!(!durable.restored());
    assert!(
        !path.exists() && path.parent().is_some_and(Path::exists),
        "the directory is made; the file waits for a change"
    );
    for _ in 0..5 {
        let outcome = within("a mutation", durable.add(&["Counter"], Args::new()))
            .await
            .expect("runs");
        assert_eq!(outcome, Outcome::Executed);
        // Acknowledged: the file holds it already.
        assert_eq!(on_disk(&path).ticks[1], durable.tick("Counter"));
    }
    assert_eq!(on_disk(&path).queue_tick, 5);
    durable.close().await;
    assert!(matches!(
        durable.add(&["Start"], Args::new()).await,
        Err(MutationError::Disposed)
    ));
    drop(durable);

    let again = DurableMachine::open(machine(), &path)
        .await
        .expect("reopens");
    assert!(again.restored());
    assert_eq!(again.clock(), vec![0, 9, 0]);
    assert_eq!(again.queue_tick(), 5);
    within("a mutation", again.add(&["Counter"], Args::new()))
        .await
        .expect("runs");
    assert_eq!(again.tick("Counter"), 11, "the clock continues");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn observers_hear_saved_clocks_before_the_acknowledgement() {
    let dir = scratch("observers");
    let path = dir.join("root.json");
    let durable = DurableMachine::open(machine(), &path).await.expect("opens");
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = heard.clone();
    let (_, start) = durable.observe(Arc::new(move |c: &ClockChange<'_>| {
        lock(&log).push((c.after.to_vec(), c.transition.is_none()));
    }));
    assert_eq!(start, vec![0, 0, 0]);
    within("a mutation", durable.add(&["Start"], Args::new()))
        .await
        .expect("runs");
    let last = lock(&heard).last().cloned();
    assert_eq!(
        last,
        Some((vec![1, 0, 0], true)),
        "told the saved clock, with no transition, before the mutation resolved"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_mutation_whose_state_cannot_be_saved_is_not_acknowledged() {
    let dir = scratch("failing");
    let path = dir.join("root.json");
    let durable = DurableMachine::open(machine(), &path).await.expect("opens");
    // The directory goes away under the machine: saves fail until it is back.
    std::fs::remove_dir_all(&dir).expect("removes the directory");
    let result = within("a mutation", durable.add(&["Start"], Args::new())).await;
    assert!(
        matches!(&result, Err(MutationError::Refused(why)) if why.contains("not acknowledged")),
        "{result:?}"
    );
    assert!(durable.is1("Start"), "it ran in memory");
    let stats = durable.stats();
    assert!(stats.failures >= 1, "{stats:?}");
    assert!(stats.last_error.is_some());
    // The save is tried again: once the directory is back, the state reaches the disk.
    std::fs::create_dir_all(&dir).expect("recreates the directory");
    within("the retried save", async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    within("a mutation", durable.add(&["Counter"], Args::new()))
        .await
        .expect("saved now");
    assert_eq!(on_disk(&path).ticks, vec![1, 1, 0]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_state_file_of_another_schema_is_refused_at_open() {
    let dir = scratch("refused");
    let path = dir.join("root.json");
    let other = Machine::builder(
        Schema::builder()
            .state(StateDef::new("Other"))
            .build()
            .expect("valid schema"),
    )
    .id("root")
    .build();
    let durable = DurableMachine::open(other, &path).await.expect("opens");
    within("a mutation", durable.add(&["Other"], Args::new()))
        .await
        .expect("runs");
    durable.close().await;
    drop(durable);
    let err = DurableMachine::open(machine(), &path)
        .await
        .expect_err("another schema");
    assert!(matches!(err, DurableError::Restore { .. }), "{err}");
    assert!(err.to_string().contains("move the file away"), "{err}");
    std::fs::write(&path, b"{ not json").expect("writes");
    let err = DurableMachine::open(machine(), &path)
        .await
        .expect_err("not JSON");
    assert!(matches!(err, DurableError::Restore { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_machine_used_before_it_was_opened_is_saved_before_its_observers_hear_of_it() {
    let dir = scratch("used");
    let path = dir.join("root.json");
    let used = machine();
    used.add(&["Start"], Args::new()).expect("runs");
    let durable = DurableMachine::open(used, &path).await.expect("opens");
    let (_, start) = durable.observe(Arc::new(|_: &ClockChange<'_>| {}));
    assert_eq!(
        start,
        vec![0, 0, 0],
        "nothing saved yet: observers start from zero"
    );
    durable.close().await;
    assert_eq!(on_disk(&path).ticks, vec![1, 0, 0], "saved by the writer");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn closing_saves_what_was_changed_on_the_machine_directly() {
    let dir = scratch("close");
    let path = dir.join("root.json");
    let durable = DurableMachine::open(machine(), &path).await.expect("opens");
    // Not through the durable handle: nobody waits, but the change is saved all the same.
    durable
        .machine()
        .add(&["Start", "Counter"], Args::new())
        .expect("runs");
    durable.close().await;
    assert_eq!(on_disk(&path).ticks, vec![1, 1, 0]);
    assert_eq!(durable.stats().failures, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn final_handlers_run_for_saved_changes_and_dispose_stops_the_writer() {
    let dir = scratch("finals");
    let path = dir.join("root.json");
    let durable = DurableMachine::open(machine(), &path).await.expect("opens");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    durable
        .bind_final(
            crate::machine::FinalHandlers::new().on_state("Start", move |e| {
                // Told after the save: the file holds what the handler sees.
                let saved = on_disk(&dir.join("root.json")).ticks;
                sink.lock().expect("lock").push((
                    e.source().id().to_owned(),
                    e.after().to_vec(),
                    saved,
                ));
            }),
        )
        .expect("known state");
    within("a mutation", durable.add(&["Start"], Args::new()))
        .await
        .expect("runs");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1);
    let (source, after, saved) = &seen[0];
    assert_eq!(
        source, "root",
        "the event's source is the durable machine's"
    );
    assert_eq!(after, saved);

    durable.dispose();
    assert!(durable.is_disposed());
    assert!(matches!(
        durable.add(&["Counter"], Args::new()).await,
        Err(MutationError::Disposed)
    ));
}

/// One machine saves to a state file at a time: a second open of the same file (another
/// process, or another machine of this one) is refused before it reads or writes anything,
/// and the file is free again once the first is closed.
#[tokio::test]
async fn a_state_file_in_use_is_refused_until_its_machine_is_closed() {
    let dir = scratch("locked");
    let path = dir.join("root.json");
    let first = DurableMachine::open(machine(), &path).await.expect("opens");
    within("a mutation", first.add(&["Counter"], Args::new()))
        .await
        .expect("runs");
    let saved = std::fs::read(&path).expect("saved");
    let second = DurableMachine::open(machine(), &path).await;
    let Err(error) = second else {
        panic!("a second machine opened a state file in use");
    };
    assert!(matches!(error, DurableError::Locked { .. }), "{error}");
    assert!(error.to_string().contains("in use"), "{error}");
    assert_eq!(std::fs::read(&path).expect("still there"), saved);
    assert!(!file::temporary(&path).exists(), "nothing was probed");

    first.close().await;
    let again = DurableMachine::open(machine(), &path)
        .await
        .expect("free once closed");
    assert!(again.restored());
    again.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
