//! What hooks into a local machine, beyond the Go suite's own tests: tracers (hook order,
//! steps, outcomes), handler sets, the log's levels, handler timeouts in negotiation, and
//! evals queued behind a busy machine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncmachine::machine::{
    Args, HandlerCall, Handlers, LogLevel, Machine, Outcome, Schema, SchemaDef, StateDef,
    StateSource, Tracer, TransitionTrace, UnknownState,
};

fn machine(states: Vec<StateDef>) -> Machine {
    Machine::new(Schema::new(SchemaDef::of_states(states)).expect("valid schema"))
}

/// Records every hook as a line.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn push(&self, line: String) {
        self.0.lock().expect("lock").push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }
}

impl Tracer for Recorder {
    fn transition_init(&self, t: &TransitionTrace<'_>) {
        self.push(format!("init {}", t.called().collect::<Vec<_>>().join(",")));
    }
    fn transition_start(&self, _: &TransitionTrace<'_>) {
        self.push("start".into());
    }
    fn handler_start(&self, _: &TransitionTrace<'_>, h: &HandlerCall<'_>) {
        self.push(format!("> {h}"));
    }
    fn handler_end(&self, _: &TransitionTrace<'_>, h: &HandlerCall<'_>, failure: Option<&str>) {
        self.push(format!(
            "< {h}{}",
            if failure.is_some() { " failed" } else { "" }
        ));
    }
    fn transition_end(&self, t: &TransitionTrace<'_>) {
        let steps: Vec<String> = t
            .steps
            .iter()
            .map(|s| {
                let name = |i: Option<usize>| i.map(|i| t.schema.name(i)).unwrap_or("-");
                format!("{:?}:{}>{}", s.kind, name(s.from), name(s.to))
            })
            .collect();
        self.push(format!(
            "end {:?} {:?}->{:?} [{}]",
            t.outcome,
            t.before,
            t.after,
            steps.join(" ")
        ));
    }
    fn queue_end(&self, _: &Machine) {
        self.push("queue end".into());
    }
    fn machine_dispose(&self, id: &str) {
        self.push(format!("dispose {id}"));
    }
}

#[test]
fn a_tracer_sees_each_step_in_order() {
    let m = machine(vec![StateDef::new("A"), StateDef::new("B").add(["A"])]);
    let tracer = Arc::new(Recorder::default());
    m.bind_tracer(tracer.clone());
    m.on_enter("B", |_| true).expect("known state");
    m.on_state("A", |_| {}).expect("known state");
    m.add(&["B"], Args::new()).expect("known state");
    assert_eq!(
        tracer.lines(),
        vec![
            "init B".to_owned(),
            "start".into(),
            "> BEnter".into(),
            "< BEnter".into(),
            "> AState".into(),
            "< AState".into(),
            "end Some(Executed) [0, 0, 0]->[1, 1, 0] [Requested:->B Set:->B Set:->A \
             Handler(Enter):B>- Handler(State):A>-]"
                .into(),
            "queue end".into(),
        ]
    );
    m.dispose();
    assert!(
        tracer
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("dispose "))
    );
}

#[test]
fn a_tracer_sees_refusals_and_failures_with_their_outcome() {
    let m = machine(vec![StateDef::new("A"), StateDef::new("B")]);
    let tracer = Arc::new(Recorder::default());
    m.bind_tracer(tracer.clone());
    m.on_enter("A", |_| false).expect("known state");
    m.on_enter("B", |_| Err::<bool, _>("no B today"))
        .expect("known state");
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Canceled));
    assert_eq!(m.add(&["B"], Args::new()), Ok(Outcome::Canceled));
    let lines = tracer.lines();
    assert!(lines.contains(&"< AEnter".to_owned()), "{lines:?}");
    assert!(lines.contains(&"< BEnter failed".to_owned()), "{lines:?}");
    let ends: Vec<&String> = lines.iter().filter(|l| l.starts_with("end")).collect();
    // The two refused adds, then the Exception the failure raised.
    assert_eq!(ends.len(), 3, "{lines:?}");
    assert!(ends[0].contains("Some(Canceled)") && ends[0].contains("Cancel:A>-"));
    assert!(
        ends[2].contains("Some(Executed)"),
        "Exception activated: {lines:?}"
    );
}

#[test]
fn a_set_with_an_unknown_state_binds_nothing_and_unbinding_is_exact() {
    let m = machine(vec![StateDef::new("A")]);
    let set = Handlers::new()
        .on_enter("A", |_| true)
        .on_state("Nope", |_| {});
    assert_eq!(m.bind(set).err(), Some(UnknownState("Nope".into())));
    assert_eq!(m.handler_count(), 0);
    let calls = Arc::new(AtomicU64::new(0));
    let (c1, c2) = (calls.clone(), calls.clone());
    let first = m
        .bind(Handlers::new().on_state("A", move |_| {
            c1.fetch_add(1, Ordering::Relaxed);
        }))
        .expect("known state");
    let _second = m
        .bind(Handlers::new().on_state("A", move |_| {
            c2.fetch_add(10, Ordering::Relaxed);
        }))
        .expect("known state");
    assert!(m.unbind(first));
    assert!(!m.unbind(first), "unbound once");
    m.add(&["A"], Args::new()).expect("known state");
    assert_eq!(calls.load(Ordering::Relaxed), 10, "only the second set ran");
}

#[test]
fn a_from_to_handler_sees_both_states() {
    let m = machine(vec![StateDef::new("A"), StateDef::new("B")]);
    m.add(&["A"], Args::new()).expect("known state");
    let seen = Arc::new(Mutex::new(None));
    let s2 = seen.clone();
    m.on_from_to("A", "B", move |e| {
        *s2.lock().expect("lock") = Some((
            e.state().map(str::to_owned),
            e.to_state().map(str::to_owned),
            e.handler_name(),
        ));
        true
    })
    .expect("known states");
    m.add(&["B"], Args::new()).expect("known state");
    assert_eq!(
        *seen.lock().expect("lock"),
        Some((Some("A".into()), Some("B".into()), "AB".into()))
    );
}

#[test]
fn each_log_level_adds_to_the_one_before() {
    let m = machine(vec![StateDef::new("A"), StateDef::new("B").add(["A"])]);
    let lines = Arc::new(Mutex::new(Vec::<(LogLevel, String)>::new()));
    let l2 = lines.clone();
    m.set_logger(Some(Arc::new(move |level, line: &str| {
        l2.lock().expect("lock").push((level, line.to_owned()))
    })));
    m.on_enter("B", |_| true).expect("known state");
    m.add(&["B"], Args::new()).expect("known state");
    assert!(lines.lock().expect("lock").is_empty(), "nothing by default");

    m.set_log_level(LogLevel::Changes);
    m.remove(&["A", "B"], Args::new()).expect("known states");
    m.log("not at changes? yes: external is below changes");
    let taken: Vec<(LogLevel, String)> = std::mem::take(&mut *lines.lock().expect("lock"));
    assert_eq!(
        taken,
        vec![
            (LogLevel::Changes, "[state] -A -B".to_owned()),
            (
                LogLevel::External,
                "[extern] not at changes? yes: external is below changes".to_owned()
            ),
        ]
    );

    m.set_log_level(LogLevel::Everything);
    m.add(&["B"], Args::new()).expect("known state");
    let taken: Vec<String> = std::mem::take(&mut *lines.lock().expect("lock"))
        .into_iter()
        .map(|(_, line)| line)
        .collect();
    assert_eq!(
        taken,
        vec![
            "[add] B",
            "[implied] A",
            "[handler] BEnter",
            "[state] +A +B"
        ]
    );
}

#[test]
fn a_negotiation_handler_past_the_timeout_cancels_and_raises() {
    let now = Arc::new(AtomicU64::new(0));
    let clock = now.clone();
    let m = Machine::builder(
        Schema::new(SchemaDef::of_states(vec![StateDef::new("A")])).expect("valid schema"),
    )
    .handler_timeout(Duration::from_millis(100))
    .time_source(Arc::new(move || {
        Duration::from_millis(clock.load(Ordering::Relaxed))
    }))
    .build();
    m.on_enter("A", move |_| {
        now.fetch_add(101, Ordering::Relaxed);
        true
    })
    .expect("known state");
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Canceled));
    assert!(m.is_err());
    assert!(!m.is1("A"));
}

#[test]
fn an_eval_waits_for_a_busy_machine_and_a_dropped_one_never_runs() {
    let m = machine(vec![StateDef::new("A"), StateDef::new("B")]);
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    m.on_state("A", move |_| {
        entered_tx.send(()).expect("the test waits");
        release_rx
            .lock()
            .expect("lock")
            .recv_timeout(Duration::from_secs(5))
            .expect("the test releases the handler");
    })
    .expect("known state");
    let busy = {
        let m = m.clone();
        std::thread::spawn(move || m.add(&["A"], Args::new()))
    };
    entered_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("A's handler runs");
    let ran = Arc::new(AtomicU64::new(0));
    let (r1, r2) = (ran.clone(), ran.clone());
    let mut waiting = m.eval("waits", move || {
        r1.fetch_add(1, Ordering::Relaxed);
    });
    let dropped = m.eval("dropped", move || {
        r2.fetch_add(100, Ordering::Relaxed);
    });
    assert_eq!(
        futures_util::FutureExt::now_or_never(&mut waiting),
        None,
        "queued behind the transition"
    );
    drop(dropped);
    release_tx.send(()).expect("the handler waits");
    assert_eq!(busy.join().expect("no panic"), Ok(Outcome::Executed));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let outcome =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), waiting).await });
    assert_eq!(outcome, Ok(true));
    assert_eq!(
        ran.load(Ordering::Relaxed),
        1,
        "the dropped eval did not run"
    );
}

#[test]
fn a_prepended_mutation_runs_before_the_queue_and_takes_no_queue_tick() {
    let m = machine(vec![
        StateDef::new("A"),
        StateDef::new("B"),
        StateDef::new("C"),
    ]);
    let order = Arc::new(Mutex::new(Vec::new()));
    for s in ["B", "C"] {
        let order = order.clone();
        m.on_state(s, move |_| order.lock().expect("lock").push(s))
            .expect("known state");
    }
    m.on_state("A", |e| {
        let m = e.machine();
        let b = m.mutation(
            asyncmachine::machine::MutationKind::Add,
            &["B"],
            Args::new(),
        );
        let c = m.mutation(
            asyncmachine::machine::MutationKind::Add,
            &["C"],
            Args::new(),
        );
        assert_eq!(m.mutate_now(b.expect("known")), Ok(Outcome::Queued));
        assert_eq!(m.prepend(c.expect("known")), Ok(Outcome::Queued));
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    assert_eq!(*order.lock().expect("lock"), vec!["C", "B"]);
    assert_eq!(
        m.queue_tick(),
        2,
        "add(A) and the queued add(B); not the prepended add(C)"
    );
}

/// A tracer that follows every other transition (as telemetry does while its buffer has room).
struct EveryOther {
    asked: AtomicU64,
    lines: Recorder,
}

impl Tracer for EveryOther {
    fn wants_transition(&self) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed).is_multiple_of(2)
    }
    fn transition_init(&self, t: &TransitionTrace<'_>) {
        self.lines.transition_init(t);
    }
    fn handler_start(&self, t: &TransitionTrace<'_>, h: &HandlerCall<'_>) {
        self.lines.handler_start(t, h);
    }
    fn transition_end(&self, t: &TransitionTrace<'_>) {
        self.lines.transition_end(t);
    }
}

#[test]
fn a_transition_no_tracer_follows_runs_untraced_and_one_any_follows_is_told_to_all() {
    let m = machine(vec![StateDef::new("A"), StateDef::new("B")]);
    m.on_enter("A", |_| true).expect("known state");
    let picky = Arc::new(EveryOther {
        asked: AtomicU64::new(0),
        lines: Recorder::default(),
    });
    m.bind_tracer(picky.clone());
    m.add(&["A"], Args::new()).expect("known state");
    m.add(&["B"], Args::new()).expect("known state");
    m.remove(&["A"], Args::new()).expect("known state");
    let lines = picky.lines.lines();
    // The first and third transitions, whole; the second not at all.
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert_eq!(lines[0], "init A");
    assert_eq!(lines[1], "> AEnter");
    // (The third position is the schema's Exception.)
    assert!(
        lines[2].starts_with("end Some(Executed) [0, 0, 0]->[1, 0, 0]"),
        "{lines:?}"
    );
    assert_eq!(lines[3], "init A");
    assert!(
        lines[4].starts_with("end Some(Executed) [1, 1, 0]->[2, 1, 0]"),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("init B")), "{lines:?}");

    // Bound with a tracer that follows everything, the picky one hears every transition: a
    // tracer that declined must ignore what another's interest brings.
    let all = Arc::new(Recorder::default());
    m.bind_tracer(all.clone());
    m.add(&["A"], Args::new()).expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    let ends = |lines: Vec<String>| lines.iter().filter(|l| l.starts_with("end")).count();
    assert_eq!(ends(all.lines()), 2);
    assert_eq!(ends(picky.lines.lines()), 2 + 2);
}
