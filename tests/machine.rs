//! The state machine core through its public API: relations, flags, handlers, the queue,
//! Exception, waiters, state contexts and observers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use asyncmachine::machine::{
    Args, ClockChange, Event, Machine, MutationError, MutationKind, Outcome, Schema, SchemaDef,
    StateDef, StateSource, WaitError,
};

fn machine(states: Vec<StateDef>) -> Machine {
    Machine::new(Schema::new(SchemaDef::of_states(states)).expect("valid schema"))
}

fn abc() -> Machine {
    machine(vec![
        StateDef::new("A"),
        StateDef::new("B"),
        StateDef::new("C"),
    ])
}

fn poll_now<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

/// A log of handler calls shared with handlers.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: impl Into<String>) {
        self.0.lock().expect("log lock").push(entry.into());
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("log lock"))
    }
}

fn log_all(m: &Machine, log: &Log, states: &[&'static str]) {
    for &s in states {
        let (l1, l2, l3, l4) = (log.clone(), log.clone(), log.clone(), log.clone());
        m.on_enter(s, move |_| {
            l1.push(format!("{s}:enter"));
            true
        })
        .expect("known state");
        m.on_exit(s, move |_| {
            l2.push(format!("{s}:exit"));
            true
        })
        .expect("known state");
        m.on_state(s, move |_| l3.push(format!("{s}:state")))
            .expect("known state");
        m.on_end(s, move |_| l4.push(format!("{s}:end")))
            .expect("known state");
    }
}

// ----- clock and reads -----

#[test]
fn ticks_are_odd_while_active_and_reads_agree() {
    let m = abc();
    assert_eq!(m.add(&["A", "B"], Args::new()), Ok(Outcome::Executed));
    assert_eq!(m.remove(&["B"], Args::new()), Ok(Outcome::Executed));
    assert_eq!(m.time(&["A", "B", "C"]), [1, 2, 0]);
    assert!(m.is(&["A"]) && m.is1("A"));
    assert!(!m.is(&["A", "B"]));
    assert!(m.not(&["B", "C"]));
    assert!(m.any(&["B", "A"]));
    assert_eq!(m.active_states(), ["A"]);
    assert_eq!(m.switch(&["C", "B", "A"]), Some("A"));
    assert_eq!(m.switch(&["C", "B"]), None);
    assert_eq!(m.clock(), [1, 2, 0, 0]);
    assert_eq!(m.queue_tick(), 2);
    assert!(!m.is1("Nope"), "unknown names read as inactive");
    assert_eq!(m.tick("Nope"), 0);
}

#[test]
fn set_replaces_the_active_states() {
    let m = abc();
    m.add(&["A", "B"], Args::new()).expect("taken in");
    assert_eq!(m.set(&["C"], Args::new()), Ok(Outcome::Executed));
    assert_eq!(m.active_states(), ["C"]);
}

#[test]
fn unknown_states_in_mutations_are_errors() {
    let m = abc();
    assert_eq!(
        m.add(&["Nope"], Args::new()),
        Err(MutationError::UnknownState("Nope".into()))
    );
    assert!(m.on_state("Nope", |_| ()).is_err());
}

#[test]
fn multi_state_reactivation_ticks_by_two_and_runs_handlers_again() {
    let m = machine(vec![StateDef::new("M").multi(), StateDef::new("S")]);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    m.on_state("M", move |_| {
        r.fetch_add(1, Ordering::SeqCst);
    })
    .expect("known state");
    m.add(&["M", "S"], Args::new()).expect("taken in");
    m.add(&["M", "S"], Args::new()).expect("taken in");
    assert_eq!(m.time(&["M", "S"]), [3, 1]);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

// ----- relations through the machine -----

#[test]
fn every_cancel_path_leaves_the_clock_alone() {
    let m = machine(vec![
        StateDef::new("Start"),
        StateDef::new("Event").require(["Start"]),
        StateDef::new("Lock").remove(["Open"]),
        StateDef::new("Open"),
        StateDef::new("X").remove(["Y"]),
        StateDef::new("Y"),
    ]);
    assert_eq!(
        m.add(&["Event"], Args::new()),
        Ok(Outcome::Canceled),
        "missing require"
    );
    m.add(&["Lock"], Args::new()).expect("taken in");
    let clock = m.clock();
    assert_eq!(
        m.add(&["Open"], Args::new()),
        Ok(Outcome::Canceled),
        "blocked by active"
    );
    assert_eq!(
        m.add(&["X", "Y"], Args::new()),
        Ok(Outcome::Canceled),
        "called conflict"
    );
    assert_eq!(m.clock(), clock);
    assert_eq!(m.queue_tick(), 4, "canceled mutations count as processed");
}

#[test]
fn add_relation_and_remove_relation_work_together() {
    let m = machine(vec![
        StateDef::new("Connect")
            .add(["Connecting"])
            .remove(["Disconnected"]),
        StateDef::new("Connecting"),
        StateDef::new("Disconnected"),
    ]);
    m.add(&["Disconnected"], Args::new()).expect("taken in");
    m.add(&["Connect"], Args::new()).expect("taken in");
    assert_eq!(m.active_states(), ["Connect", "Connecting"]);
}

#[test]
fn auto_states_activate_after_a_change_with_partial_acceptance() {
    let m = machine(vec![
        StateDef::new("Start"),
        StateDef::new("Ready").auto().require(["Start"]),
        StateDef::new("Never").auto().require(["Missing"]),
        StateDef::new("Missing"),
    ]);
    let log = Log::default();
    log_all(&m, &log, &["Ready"]);
    m.add(&["Start"], Args::new()).expect("taken in");
    assert_eq!(m.active_states(), ["Start", "Ready"]);
    assert_eq!(log.take(), ["Ready:enter", "Ready:state"]);
    // Auto states follow their requirements out, and come back with them.
    m.remove(&["Start"], Args::new()).expect("taken in");
    assert!(m.not(&["Ready"]));
    m.add(&["Start"], Args::new()).expect("taken in");
    assert!(m.is(&["Ready"]));
}

// ----- handlers -----

#[test]
fn handlers_run_in_order_negotiation_then_final() {
    let m = machine(vec![
        StateDef::new("A").remove(["B"]),
        StateDef::new("B").remove(["A"]),
        StateDef::new("C").after(["A"]),
    ]);
    let log = Log::default();
    log_all(&m, &log, &["A", "B", "C"]);
    let (l1, l2) = (log.clone(), log.clone());
    m.on_any_enter(move |e: &Event<'_>| {
        l1.push(format!("any_enter:{}", e.kind()));
        true
    });
    m.on_any_state(move |e: &Event<'_>| {
        l2.push(format!(
            "any_state:{}",
            e.called().collect::<Vec<_>>().join("+")
        ))
    });

    m.add(&["B"], Args::new()).expect("taken in");
    log.take();
    m.add(&["C", "A"], Args::new()).expect("taken in");
    assert_eq!(
        log.take(),
        [
            "B:exit",
            "A:enter",
            "C:enter",
            "any_enter:add",
            "B:end",
            "A:state",
            "C:state",
            "any_state:C+A"
        ]
    );
}

#[test]
fn a_negotiation_handler_can_cancel() {
    let m = abc();
    let log = Log::default();
    log_all(&m, &log, &["B"]);
    // C's enter runs after B's (mutation order), so B's negotiation is seen before the refusal.
    m.on_enter("C", |e: &Event<'_>| {
        e.arg("allow").and_then(|v| v.as_bool()).unwrap_or(false)
    })
    .expect("known state");
    assert_eq!(m.add(&["B", "C"], Args::new()), Ok(Outcome::Canceled));
    assert_eq!(log.take(), ["B:enter"], "final handlers must not run");
    assert!(m.not(&["B", "C"]));
    assert_eq!(
        m.add(&["C"], Args::new().with("allow", true)),
        Ok(Outcome::Executed)
    );

    m.on_exit("C", |_| false).expect("known state");
    assert_eq!(m.remove(&["C"], Args::new()), Ok(Outcome::Canceled));
    assert!(m.is1("C"));
}

#[test]
fn handlers_see_arguments_and_the_transition() {
    let m = abc();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    m.on_state("A", move |e: &Event<'_>| {
        let entering: Vec<&str> = e.entering().collect();
        *s.lock().expect("lock") = Some((
            e.state().map(str::to_owned),
            e.arg("n").and_then(|v| v.as_int()),
            entering.join(","),
            e.before().to_vec(),
            e.machine().is1("A"),
        ));
    })
    .expect("known state");
    m.add(&["A", "B"], Args::new().with("n", 7))
        .expect("taken in");
    let seen = seen.lock().expect("lock").clone().expect("handler ran");
    assert_eq!(
        seen,
        (
            Some("A".into()),
            Some(7),
            "A,B".into(),
            vec![0, 0, 0, 0],
            true
        )
    );
}

// ----- the queue -----

#[test]
fn mutations_from_handlers_are_queued_fifo_with_auto_first() {
    let m = machine(vec![
        StateDef::new("A"),
        StateDef::new("B"),
        StateDef::new("C"),
        StateDef::new("Auto").auto().require(["A"]),
    ]);
    let log = Log::default();
    log_all(&m, &log, &["B", "C", "Auto"]);
    let l = log.clone();
    m.on_state("A", move |e: &Event<'_>| {
        let m = e.machine();
        l.push(format!("queue:{:?}", m.add(&["B"], Args::new())));
        l.push(format!("queue:{:?}", m.add(&["C"], Args::new())));
        assert!(m.not(&["B", "C"]), "queued mutations have not run yet");
    })
    .expect("known state");
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Executed));
    assert_eq!(
        log.take(),
        [
            "queue:Ok(Queued)",
            "queue:Ok(Queued)",
            "Auto:enter",
            "Auto:state",
            "B:enter",
            "B:state",
            "C:enter",
            "C:state"
        ]
    );
    assert_eq!(m.active_states(), ["A", "B", "C", "Auto"]);
    assert_eq!(
        m.queue_tick(),
        3,
        "A, B, C: the auto mutation, prepended by the machine, takes no queue tick (as in asyncmachine)"
    );
    assert_eq!(m.queue_len(), 0);
}

#[test]
fn the_queue_is_bounded() {
    let schema = Schema::new(SchemaDef::of_states(vec![
        StateDef::new("A"),
        StateDef::new("M").multi(),
    ]))
    .expect("valid");
    let m = Machine::builder(schema).queue_limit(2).build();
    let results = Arc::new(Mutex::new(Vec::new()));
    let r = results.clone();
    m.on_state("A", move |e: &Event<'_>| {
        for _ in 0..4 {
            r.lock()
                .expect("lock")
                .push(e.machine().add(&["M"], Args::new()));
        }
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("taken in");
    let results = results.lock().expect("lock").clone();
    assert_eq!(results[..2], [Ok(Outcome::Queued), Ok(Outcome::Queued)]);
    assert_eq!(
        results[2..],
        [
            Err(MutationError::QueueFull { limit: 2 }),
            Err(MutationError::QueueFull { limit: 2 })
        ]
    );
    assert_eq!(m.tick("M"), 3, "the two queued ones ran");
}

/// Makes `state`'s handler wait, once entered, until the returned sender sends (or 10 s
/// pass): a transition held open so a test can act while it runs. The receiver tells when
/// the handler was entered.
fn hold_in(
    m: &Machine,
    state: &str,
) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    m.on_state(state, move |_| {
        entered_tx.send(()).expect("test alive");
        release_rx
            .lock()
            .expect("lock")
            .recv_timeout(Duration::from_secs(10))
            .expect("released");
    })
    .expect("known state");
    (entered_rx, release_tx)
}

#[test]
fn a_mutation_from_another_thread_during_a_transition_is_queued_and_run() {
    let m = abc();
    let (entered_rx, release_tx) = hold_in(&m, "A");
    let m2 = m.clone();
    let worker = std::thread::spawn(move || m2.add(&["A"], Args::new()));
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("handler runs");
    assert_eq!(m.add(&["B"], Args::new()), Ok(Outcome::Queued));
    release_tx.send(()).expect("worker alive");
    assert_eq!(worker.join().expect("no panic"), Ok(Outcome::Executed));
    assert_eq!(
        m.active_states(),
        ["A", "B"],
        "the processing thread ran the queued mutation"
    );
}

// ----- Exception -----

#[test]
fn a_handler_error_activates_exception_with_the_error() {
    let m = abc();
    m.on_state("A", |_| Err::<(), _>("disk full"))
        .expect("known state");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    m.on_state("Exception", move |e: &Event<'_>| {
        let arg = |k| {
            e.arg(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        s.lock().expect("lock").push(format!(
            "{} in {} of {}",
            arg("error"),
            arg("handler"),
            arg("state")
        ));
    })
    .expect("Exception is in every schema");
    // As in asyncmachine, a failing final handler stops the transition: A's state handler did
    // not complete, so A is deactivated again and the mutation reports `Canceled`.
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Canceled));
    assert!(m.not(&["A"]));
    assert_eq!(m.tick("A"), 2);
    assert!(m.is1("Exception"));
    assert_eq!(*seen.lock().expect("lock"), ["disk full in state of A"]);
}

#[test]
fn a_panic_in_a_negotiation_handler_cancels_and_activates_exception() {
    let m = abc();
    m.on_enter("A", |_| -> bool { panic!("boom") })
        .expect("known state");
    let mut when_err = m.when_err();
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Canceled));
    assert!(m.not(&["A"]));
    assert!(m.is1("Exception"));
    assert_eq!(poll_now(&mut when_err), Poll::Ready(Ok(())));
    // Exception is multi: every error is a new activation.
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Canceled));
    assert_eq!(m.tick("Exception"), 3);
}

#[test]
fn a_failing_exception_handler_does_not_loop() {
    let m = abc();
    m.on_state("A", |_| -> Result<(), &str> { panic!("first") })
        .expect("known state");
    m.on_state("Exception", |_| -> Result<(), &str> {
        panic!("handler of the handler")
    })
    .expect("known state");
    m.on_any_state(|_| Err::<(), _>("any_state fails every time"));
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Canceled));
    // A's failure raises once and stops A's transition before any_state. The failure inside
    // Exception's own transition only logs; it stops that transition too, so Exception is
    // deactivated again (as in asyncmachine), and nothing is queued.
    assert_eq!(m.tick("Exception"), 2);
    assert_eq!(m.queue_len(), 0);
}

// ----- waiters -----

#[tokio::test]
async fn waiters_resolve_from_the_clock() {
    let m = abc();
    let when = m.when(&["A", "B"]);
    let when_not = m.when_not(&["A"]);
    let when_ticks = m.when_ticks("C", 3);
    let when_time = m.when_time(&["A", "C"], &[1, 2]);
    let m2 = m.clone();
    let driver = tokio::spawn(async move {
        m2.add(&["A"], Args::new()).expect("taken in");
        tokio::task::yield_now().await;
        m2.add(&["B", "C"], Args::new()).expect("taken in");
        m2.remove(&["A", "C"], Args::new()).expect("taken in");
        m2.add(&["C"], Args::new()).expect("taken in");
    });
    let all = async { tokio::try_join!(when, when_not, when_ticks, when_time) };
    tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .expect("in time")
        .expect("resolved");
    driver.await.expect("driver ran");
}

#[test]
fn waiters_that_must_not_resolve_stay_pending() {
    let m = abc();
    let mut when = m.when(&["A", "B"]);
    m.add(&["C"], Args::new()).expect("taken in");
    let mut when_not = m.when_not(&["C"]);
    let mut ticks = m.when_ticks("A", 2);
    m.add(&["A"], Args::new()).expect("taken in");
    m.remove(&["B"], Args::new()).expect("taken in");
    assert!(poll_now(&mut when).is_pending(), "B never became active");
    assert!(poll_now(&mut when_not).is_pending(), "C stays active");
    assert!(
        poll_now(&mut ticks).is_pending(),
        "A ticked once, not twice"
    );
    assert_eq!(m.waiter_count(), 3);
    m.remove(&["A"], Args::new()).expect("taken in");
    assert_eq!(poll_now(&mut ticks), Poll::Ready(Ok(())));
    drop((when, when_not));
    assert_eq!(m.waiter_count(), 0, "dropped waiters deregister");
}

#[test]
fn waits_on_unknown_states_fail_and_dispose_ends_waiters() {
    let m = abc();
    assert_eq!(
        poll_now(&mut m.when(&["Nope"])),
        Poll::Ready(Err(WaitError::UnknownState("Nope".into())))
    );
    let mut when = m.when(&["A"]);
    m.dispose();
    assert_eq!(poll_now(&mut when), Poll::Ready(Err(WaitError::Disposed)));
    assert_eq!(m.add(&["A"], Args::new()), Err(MutationError::Disposed));
    assert_eq!(
        poll_now(&mut m.when(&["B"])),
        Poll::Ready(Err(WaitError::Disposed))
    );
}

#[test]
fn dropping_the_last_machine_handle_ends_waiters() {
    let m = abc();
    let mut when = m.when(&["A"]);
    drop(m);
    assert_eq!(poll_now(&mut when), Poll::Ready(Err(WaitError::Disposed)));
}

#[test]
fn ten_thousand_waiters_are_cheap_and_all_resolve() {
    let m = machine((0..100).map(|i| StateDef::new(format!("S{i}"))).collect());
    let names: Vec<String> = (0..100).map(|i| format!("S{i}")).collect();
    let mut waiters: Vec<_> = (0..10_000)
        .map(|i| m.when(&[names[i % 100].as_str()]))
        .collect();
    assert_eq!(m.waiter_count(), 10_000);
    // A change to one state looks only at that state's 100 waiters.
    m.add(&["S0"], Args::new()).expect("taken in");
    assert_eq!(m.waiter_count(), 9_900);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    m.add(&refs, Args::new()).expect("taken in");
    assert!(
        waiters
            .iter_mut()
            .all(|w| poll_now(w) == Poll::Ready(Ok(())))
    );
    assert_eq!(m.waiter_count(), 0);
}

/// A minimal executor of our own: waiters must not need tokio.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(Duration::from_secs(10));
    }
}

#[test]
fn waiters_work_under_any_executor_across_threads() {
    let m = abc();
    let when = m.when(&["B"]);
    let m2 = m.clone();
    let mutator = std::thread::spawn(move || m2.add(&["B"], Args::new()));
    assert_eq!(block_on(when), Ok(()));
    assert_eq!(mutator.join().expect("no panic"), Ok(Outcome::Executed));
}

// ----- state contexts -----

#[test]
fn a_state_context_is_canceled_when_its_state_ticks() {
    let m = machine(vec![StateDef::new("A"), StateDef::new("M").multi()]);
    // As in asyncmachine, the context of an inactive state lives until its tick changes.
    let ctx_inactive = m.state_ctx("A");
    assert!(!ctx_inactive.is_canceled(), "inactive state: lives on");
    assert!(m.state_ctx("Nope").is_canceled());

    m.add(&["A", "M"], Args::new()).expect("taken in");
    assert!(ctx_inactive.is_canceled(), "A's tick changed");
    let ctx_a = m.state_ctx("A");
    let ctx_m = m.state_ctx("M");
    let mut canceled = ctx_a.canceled();
    m.add(&["A"], Args::new()).expect("taken in");
    assert!(!ctx_a.is_canceled(), "A stayed active");
    assert!(poll_now(&mut canceled).is_pending());
    m.add(&["M"], Args::new()).expect("taken in");
    assert!(
        ctx_m.is_canceled(),
        "a multi re-activation is a new activation"
    );
    m.remove(&["A"], Args::new()).expect("taken in");
    assert!(ctx_a.is_canceled());
    assert_eq!(poll_now(&mut canceled), Poll::Ready(()));
}

#[tokio::test]
async fn work_bound_to_a_state_context_stops_when_the_state_leaves() {
    let m = abc();
    m.add(&["A"], Args::new()).expect("taken in");
    let ctx = m.state_ctx("A");
    let work = tokio::spawn(ctx.bind(std::future::pending::<()>()));
    let finished = tokio::spawn(m.state_ctx("A").bind(async { 42 }));
    assert_eq!(finished.await.expect("ran"), Some(42));
    m.remove(&["A"], Args::new()).expect("taken in");
    let result = tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .expect("in time");
    assert_eq!(result.expect("ran"), None);
}

// ----- observers and the shared trait -----

#[test]
fn observers_see_every_clock_change_and_nothing_else() {
    let m = abc();
    m.add(&["A"], Args::new()).expect("taken in");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let (id, start) = m.observe(Arc::new(move |c: &ClockChange<'_>| {
        let t = c
            .transition
            .expect("a local machine's change has its transition");
        s.lock().expect("lock").push((
            t.kind,
            t.called.to_vec(),
            c.before.to_vec(),
            c.after.to_vec(),
            c.queue_tick,
        ));
    }));
    assert_eq!(start, [1, 0, 0, 0]);
    m.add(&["B"], Args::new().with("k", "v")).expect("taken in");
    m.add(&["B"], Args::new()).expect("no-op");
    m.remove(&["A"], Args::new()).expect("taken in");
    assert!(m.unobserve(id));
    m.add(&["C"], Args::new()).expect("taken in");
    assert_eq!(
        *seen.lock().expect("lock"),
        [
            (
                MutationKind::Add,
                vec![1],
                vec![1, 0, 0, 0],
                vec![1, 1, 0, 0],
                2
            ),
            (
                MutationKind::Remove,
                vec![0],
                vec![1, 1, 0, 0],
                vec![2, 1, 0, 0],
                4
            ),
        ]
    );
}

#[tokio::test]
async fn a_machine_serves_through_the_shared_trait() {
    let source: Arc<dyn StateSource> = Arc::new(abc());
    assert_eq!(source.add(&["A"], Args::new()).await, Ok(Outcome::Executed));
    assert_eq!(
        source.add(&["Nope"], Args::new()).await,
        Err(MutationError::UnknownState("Nope".into()))
    );
    source.when(&["A"]).await.expect("already active");
    assert_eq!(source.active_states(), ["A"]);
    assert_eq!(source.schema().len(), 4);
}

#[test]
fn schemas_load_from_toml() {
    let text = r#"
        [[states]]
        name = "Start"

        [[states]]
        name = "Event"
        multi = true
        require = ["Start"]
    "#;
    let def: SchemaDef = toml::from_str(text).expect("parses");
    let schema = Schema::new(def).expect("valid");
    assert_eq!(
        schema.names().collect::<Vec<_>>(),
        ["Start", "Event", "Exception"]
    );
    let unknown_key = toml::from_str::<SchemaDef>("[[states]]\nname = \"A\"\nmulty = true\n");
    assert!(unknown_key.expect_err("typo").to_string().contains("multy"));
}

#[test]
fn an_async_mutation_queued_behind_a_transition_resolves_with_its_real_outcome() {
    let m = machine(vec![
        StateDef::new("A"),
        StateDef::new("B"),
        StateDef::new("Lock").remove(["C"]),
        StateDef::new("C"),
    ]);
    let (entered_rx, release_tx) = hold_in(&m, "A");
    let m2 = m.clone();
    let busy = std::thread::spawn(move || m2.add(&["A", "Lock"], Args::new()));
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("handler runs");

    // Both wait behind A's transition; the processing thread runs them and reports back.
    let mut executed = StateSource::add(&m, &["B"], Args::new());
    let mut canceled = StateSource::add(&m, &["C"], Args::new());
    assert!(
        poll_now(&mut executed).is_pending(),
        "queued, not answered with Queued"
    );
    release_tx.send(()).expect("worker alive");
    assert_eq!(block_on(executed), Ok(Outcome::Executed));
    assert_eq!(
        block_on(canceled.as_mut()),
        Ok(Outcome::Canceled),
        "Lock blocks C"
    );
    assert_eq!(busy.join().expect("no panic"), Ok(Outcome::Executed));
    assert!(m.is(&["A", "B"]));
}

#[test]
fn a_duplicate_of_a_queued_mutation_is_skipped_and_shares_its_outcome() {
    let m = abc();
    let (entered_rx, release_tx) = hold_in(&m, "A");
    let m2 = m.clone();
    let busy = std::thread::spawn(move || m2.add(&["A"], Args::new()));
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("handler runs");
    let first = StateSource::add(&m, &["B"], Args::new());
    let second = StateSource::add(&m, &["B"], Args::new());
    assert_eq!(m.queue_len(), 1, "the duplicate is not queued");
    assert_eq!(m.add(&["B"], Args::new().with("n", 1)), Ok(Outcome::Queued));
    assert_eq!(
        m.queue_len(),
        2,
        "a mutation with arguments is never a duplicate"
    );
    release_tx.send(()).expect("worker alive");
    assert_eq!(block_on(first), Ok(Outcome::Executed));
    assert_eq!(block_on(second), Ok(Outcome::Executed));
    assert_eq!(busy.join().expect("no panic"), Ok(Outcome::Executed));
    assert_eq!(m.tick("B"), 1);
}

#[test]
fn dispose_fails_queued_async_mutations() {
    let m = abc();
    let queued = Arc::new(Mutex::new(None));
    let q = queued.clone();
    m.on_state("A", move |e: &Event<'_>| {
        // From inside a transition, the async form queues; dispose then abandons it.
        *q.lock().expect("lock") = Some(StateSource::add(e.machine(), &["B"], Args::new()));
        e.machine().dispose();
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("taken in");
    let fut = queued
        .lock()
        .expect("lock")
        .take()
        .expect("queued during the handler");
    assert_eq!(block_on(fut), Err(MutationError::Disposed));
}

#[test]
fn a_disposed_machine_answers_reads_empty() {
    let m = abc();
    m.add(&["A", "B"], Args::new()).expect("taken in");
    m.dispose();
    assert!(m.active_states().is_empty());
    assert!(m.clock().is_empty());
    assert_eq!(m.time(&["A", "B"]), [0, 0]);
    assert!(m.not(&["A", "B"]));
    assert!(m.state_ctx("C").is_canceled());
}

#[test]
fn errors_added_through_the_trait_or_by_a_plain_mutation_are_the_last_error() {
    let m = abc();
    let source: &dyn StateSource = &m;
    assert_eq!(poll_now(&mut source.err()), Poll::Ready(Ok(None)));
    let added = poll_now(&mut source.add_err_state("B", &"net down", Args::new().with("n", 1)));
    assert_eq!(added, Poll::Ready(Ok(Outcome::Executed)));
    assert!(m.is(&["B", "Exception"]));
    assert_eq!(
        poll_now(&mut source.err()),
        Poll::Ready(Ok(Some("net down".into())))
    );
    // What a mirror sends for add_err: Exception with an `error` argument, as a mutation.
    m.add(&["Exception"], Args::new().with("error", "from a leaf"))
        .expect("known state");
    assert_eq!(m.last_error().as_deref(), Some("from a leaf"));
    // Without the argument, or removing Exception, nothing is recorded.
    m.remove(&["Exception"], Args::new().with("error", "not an error"))
        .expect("known state");
    m.add(&["Exception"], Args::new()).expect("known state");
    assert_eq!(m.last_error().as_deref(), Some("from a leaf"));
    assert_eq!(
        poll_now(&mut source.add_err_state("Nope", &"x", Args::new())),
        Poll::Ready(Err(MutationError::UnknownState("Nope".into())))
    );
}

#[test]
fn when_args_through_the_trait_waits_for_the_arguments() {
    let m = machine(vec![StateDef::new("Tick").multi()]);
    let source: &dyn StateSource = &m;
    let mut when = source.when_args("Tick", Args::new().with("id", 2));
    m.add(&["Tick"], Args::new().with("id", 1))
        .expect("known state");
    assert!(poll_now(&mut when).is_pending());
    assert_eq!(m.waiter_count(), 1);
    m.add(&["Tick"], Args::new().with("id", 2).with("more", true))
        .expect("known state");
    assert_eq!(poll_now(&mut when), Poll::Ready(Ok(())));
    assert_eq!(m.waiter_count(), 0);
    assert_eq!(
        poll_now(&mut source.when_args("Nope", Args::new())),
        Poll::Ready(Err(WaitError::UnknownState("Nope".into())))
    );
}
