//! Ported tests of what hooks into a machine: handler sets bound and unbound, tracers, the
//! machine's log, handler timeouts, `Eval` and dispose hooks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asyncmachine::machine::{
    Args, Handlers, LogArgs, LogLevel, Machine, Outcome, Schema, SchemaDef, StateDef, StateSource,
    Tracer,
};

use crate::helpers::{no_rels, soon};

/// Go: TestUnbindHandlers (machine_test.go): a bound set, detached, leaves no handler.
#[test]
fn unbind_handlers() {
    let m = no_rels(&[]);
    let binding = m
        .bind(
            Handlers::new()
                .on_enter("A", |_| true)
                .on_state("A", |_| {}),
        )
        .expect("known states");
    assert_eq!(m.handler_count(), 2);
    assert!(m.unbind(binding));
    assert_eq!(m.handler_count(), 0);
}

/// A tracer that does nothing but count its calls (Go's `TracerNoOp`, counting).
#[derive(Default)]
struct Counting {
    inits: AtomicUsize,
    transitions: AtomicUsize,
}

impl Tracer for Counting {
    fn machine_init(&self, _: &dyn asyncmachine::machine::StateSource) {
        self.inits.fetch_add(1, Ordering::Relaxed);
    }

    fn transition_end(&self, _: &asyncmachine::machine::TransitionTrace<'_>) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
    }
}

/// Go: TestTracers (machine_test.go): a tracer given when the machine is made is bound and
/// sees its transitions. Go's parent machine (through which tracers may be inherited) is only
/// an id here, so inheritance is not ported.
#[test]
fn tracers() {
    let tracer = Arc::new(Counting::default());
    let m = Machine::builder(
        Schema::new(SchemaDef::of_states(vec![StateDef::new("A")])).expect("valid schema"),
    )
    .parent("parent")
    .tracer(tracer.clone())
    .build();
    m.on_state("A", |_| {}).expect("known state");
    assert_eq!(m.tracers().len(), 1);
    m.add(&["A"], Args::new()).expect("known state");
    assert_eq!(m.tracers().len(), 1);
    assert_eq!(tracer.inits.load(Ordering::Relaxed), 1);
    assert_eq!(tracer.transitions.load(Ordering::Relaxed), 1);
}

/// Go: TestBindTracer (machine_test.go): bound, then detached, leaves no tracer. Go's second
/// bind fails because it passes a value instead of a pointer; an `Arc` cannot be wrong here.
#[test]
fn bind_tracer() {
    let m = no_rels(&[]);
    let id = m.bind_tracer(Arc::new(Counting::default()));
    assert!(m.detach_tracer(id), "removed");
    assert!(!m.detach_tracer(id), "removed once");
    assert!(m.tracers().is_empty());
}

/// Go: TestHandlerTimeout (machine_test.go): AState takes longer than the handler timeout
/// (450 ms); the mutation ends `Canceled`. Go's handler sleeps 500 ms; here it moves a
/// manual clock by as much, so the test takes no time.
#[test]
fn handler_timeout() {
    let now = Arc::new(AtomicU64::new(0));
    let clock = now.clone();
    let m = Machine::builder(
        Schema::new(SchemaDef::of_states(
            ["A", "B", "C", "D"].map(StateDef::new).into(),
        ))
        .expect("valid schema"),
    )
    .handler_timeout(Duration::from_millis(450))
    .time_source(Arc::new(move || {
        Duration::from_millis(clock.load(Ordering::Relaxed))
    }))
    .build();
    m.on_state("A", move |_| {
        now.fetch_add(500, Ordering::Relaxed);
    })
    .expect("known state");
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Canceled));
    assert!(m.is_err(), "the timeout went to Exception");
    assert!(
        m.last_error()
            .is_some_and(|e| e.contains("handler timeout")),
        "{:?}",
        m.last_error()
    );
}

/// Go: TestDispose (machine_test.go): a dispose hook runs on dispose.
#[test]
fn dispose() {
    let m = no_rels(&["A"]);
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    m.on_dispose(move |_| r2.store(true, Ordering::Relaxed));
    m.dispose();
    assert!(ran.load(Ordering::Relaxed));
}

/// Go: TestDisposeForce (machine_test.go): Go's forced dispose skips its graceful wait;
/// disposal here is immediate either way, the hook runs once, and a second dispose is a
/// no-op.
#[test]
fn dispose_force() {
    let m = no_rels(&["A"]);
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    m.on_dispose(move |_| {
        r2.fetch_add(1, Ordering::Relaxed);
    });
    m.dispose();
    m.dispose();
    assert_eq!(runs.load(Ordering::Relaxed), 1);
}

/// Go: TestGetters (machine_test.go): the log level set is the one read; the queue is empty.
#[test]
fn getters() {
    let m = no_rels(&["A"]);
    m.set_log_args(Some(LogArgs::new(5, ["arg", "arg2"])));
    m.set_log_level(LogLevel::Everything);
    assert_eq!(m.log_level(), LogLevel::Everything);
    assert_eq!(m.queue_len(), 0);
}

/// The machine's log lines, captured (Go's `captureLog`).
fn capture_log(m: &Machine) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let l2 = log.clone();
    m.set_log_level(LogLevel::Everything);
    m.set_logger(Some(Arc::new(move |_, line: &str| {
        let mut log = l2.lock().expect("log lock");
        log.push_str(line);
        log.push('\n');
    })));
    log
}

/// Go: TestLogArgs (machine_test.go): the log-args filter shows `arg`, cut to 5 characters.
#[test]
fn log_args() {
    let m = no_rels(&["A"]);
    m.set_log_args(Some(LogArgs::new(5, ["arg", "arg2"])));
    let log = capture_log(&m);
    m.add(&["D"], Args::new().with("arg", "foofoofoo"))
        .expect("known state");
    let log = log.lock().expect("log lock");
    assert!(log.contains("(arg=fo...)"), "{log}");
}

/// Go: TestLogger (machine_test.go): a logger set takes the lines, and unset they go back to
/// `tracing`; `Log` lines are single lines. Go's `SetSimple(nil)` panics; a Rust logger
/// cannot be nil.
#[test]
fn logger() {
    let m = no_rels(&[]);
    let log = capture_log(&m);
    m.add(&["A"], Args::new()).expect("known state");
    m.log("foo\nbar");
    {
        let log = log.lock().expect("log lock");
        assert!(log.contains("[add] A"), "{log}");
        assert!(log.contains("[state] +A"), "{log}");
        assert!(log.contains("[extern] foo bar"), "{log}");
    }
    m.set_logger(None);
    m.add(&["B"], Args::new()).expect("known state");
    assert!(!log.lock().expect("log lock").contains("[add] B"));
    m.set_log_level(LogLevel::Changes);
    assert_eq!(m.log_level(), LogLevel::Changes);
}

/// Go: TestLogLevelString (mach_misc_test.go)
#[test]
fn log_level_string() {
    assert_eq!(LogLevel::Nothing.to_string(), "nothing");
    assert_eq!(LogLevel::default().to_string(), "nothing");
    assert_eq!(LogLevel::External.to_string(), "external");
    assert_eq!(LogLevel::Changes.to_string(), "changes");
    assert_eq!(LogLevel::Ops.to_string(), "ops");
    assert_eq!(LogLevel::Decisions.to_string(), "decisions");
    assert_eq!(LogLevel::Everything.to_string(), "everything");
}

/// Go: TestEval (machine_test.go): an eval on an idle machine runs at once.
#[tokio::test]
async fn eval() {
    let m = no_rels(&[]);
    let a = Arc::new(AtomicUsize::new(0));
    let a2 = a.clone();
    assert!(soon(m.eval("eval", move || a2.store(1, Ordering::Relaxed))).await);
    assert_eq!(a.load(Ordering::Relaxed), 1);
}

/// Go: TestEvalNested (machine_test.go): an eval inside an eval answers `false` and does not
/// run; that is no error.
#[tokio::test]
async fn eval_nested() {
    let m = no_rels(&[]);
    let a = Arc::new(AtomicUsize::new(0));
    let nested = Arc::new(Mutex::new(None));
    let (a2, n2, m2) = (a.clone(), nested.clone(), m.clone());
    let ok = soon(m.eval("eval", move || {
        a2.fetch_add(1, Ordering::Relaxed);
        let a3 = a2.clone();
        let mut inner = m2.eval("eval nested", move || {
            a3.fetch_add(1, Ordering::Relaxed);
        });
        let ready = futures_util::FutureExt::now_or_never(&mut inner);
        *n2.lock().expect("lock") = ready;
    }))
    .await;
    assert!(ok, "outer eval");
    assert_eq!(*nested.lock().expect("lock"), Some(false), "nested eval");
    assert_eq!(a.load(Ordering::Relaxed), 1);
    assert!(!m.is_err());
}

/// Go: TestEvalNestedHandlers (machine_test.go): an eval straight from a handler answers
/// `false` and raises an error; one from another thread (Go's `Fork`) waits for the machine's
/// turn and runs.
#[test]
fn eval_nested_handlers() {
    let m = no_rels(&[]);
    let a = Arc::new(AtomicUsize::new(0));
    let direct = Arc::new(Mutex::new(None));
    let (forked_tx, forked_rx) = std::sync::mpsc::channel();
    let (a2, d2) = (a.clone(), direct.clone());
    m.on_state("A", move |e| {
        let a3 = a2.clone();
        let mut now = e.machine().eval("direct", move || {
            a3.fetch_add(1, Ordering::Relaxed);
        });
        *d2.lock().expect("lock") = futures_util::FutureExt::now_or_never(&mut now);
        let (machine, a4, forked_tx) = (e.machine().clone(), a2.clone(), forked_tx.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime");
            let ran = runtime.block_on(machine.eval("forked", move || {
                a4.fetch_add(1, Ordering::Relaxed);
            }));
            forked_tx.send(ran).expect("the test waits");
        });
    })
    .expect("known state");
    m.add(&["A"], Args::new()).expect("known state");
    let forked = forked_rx
        .recv_timeout(crate::helpers::PATIENCE)
        .expect("the forked eval ends");
    assert_eq!(*direct.lock().expect("lock"), Some(false), "direct eval");
    assert!(forked, "forked eval");
    assert_eq!(a.load(Ordering::Relaxed), 1);
    assert!(m.is_err(), "the direct eval raised an error");
}

/// Go: TestEnv (mach_utils_test.go): `AM_LOG=1` is the external level. Setting a process's
/// environment races with the tests running beside this one, so the value is parsed as
/// `LogLevel::from_env` parses it, and the variable read is an unset one.
#[test]
fn env() {
    assert_eq!(LogLevel::parse("1"), Some(LogLevel::External));
    assert_eq!(LogLevel::parse("everything"), Some(LogLevel::Everything));
    assert_eq!(LogLevel::parse("9"), Some(LogLevel::Everything));
    assert_eq!(LogLevel::parse("loud"), None);
    assert_eq!(
        LogLevel::from_env("AM_LOG_UNSET_IN_THIS_TEST"),
        LogLevel::Nothing
    );
}

/// Go: TestWithOpts (mach_misc_test.go): Go's option helpers set a
/// handler timeout and tracers; the builder's methods do here. Go's `DontPanicToException`
/// has no counterpart: a panic is always caught and becomes `Exception`.
#[test]
fn with_opts() {
    let tracer: Arc<dyn Tracer> = Arc::new(Counting::default());
    let m = Machine::builder(
        Schema::new(SchemaDef::of_states(vec![StateDef::new("A")])).expect("valid schema"),
    )
    .handler_timeout(Duration::from_secs(600))
    .tracer(tracer.clone())
    .build();
    assert!(Arc::ptr_eq(&m.tracers()[0], &tracer));
    m.set_log_args(Some(LogArgs::new(10, ["arg"])));
    assert_eq!(m.add(&["A"], Args::new()), Ok(Outcome::Executed));
}

/// Go: TestNewArgsMapper (mach_misc_test.go): short limits cut, longer ones end with `...`.
#[test]
fn new_args_mapper() {
    let shown = |max, args: Args| LogArgs::new(max, ["arg", "arg2"]).shown(&args);
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        shown(2, Args::new().with("arg", "foo")),
        [pair("arg", "fo")]
    );
    assert_eq!(
        shown(2, Args::new().with("arg", "foo").with("arg2", "bar")),
        [pair("arg", "fo"), pair("arg2", "ba")]
    );
    assert_eq!(
        shown(5, Args::new().with("arg", "foofoofoo")),
        [pair("arg", "fo...")]
    );
}

/// Go: TestStepTypeString (mach_misc_test.go). Go's relation step (`rel`) has no counterpart:
/// the resolver does not record which relation decided (see `machine::tracer`).
#[test]
fn step_type_string() {
    use asyncmachine::machine::{HandlerKind, StepKind};
    assert_eq!(StepKind::Handler(HandlerKind::Enter).name(), "handler");
    assert_eq!(StepKind::Set.name(), "activate");
    assert_eq!(StepKind::Remove.name(), "deactivate");
    assert_eq!(StepKind::RemoveNotActive.name(), "deactivate-passive");
    assert_eq!(StepKind::Requested.name(), "called");
    assert_eq!(StepKind::Cancel.name(), "cancel");
}

/// Go: TestExportImport (machine_test.go): a machine's state exported and imported into
/// another machine of the same id reads the same; another id is refused. Go sets the second
/// machine's id by hand; here it is given when the machine is built. Go's "states verified"
/// flag has no counterpart: a schema here is ordered as written.
#[test]
fn export_import() {
    let m1 = no_rels(&["A"]);
    m1.remove(&["B"], Args::new()).expect("known state");
    m1.add(&["A"], Args::new()).expect("known state");
    m1.add(&["B"], Args::new()).expect("known state");
    m1.add(&["C"], Args::new()).expect("known state");
    let exported = m1.export();
    let json = exported.to_json();

    let schema = || {
        Schema::new(SchemaDef::of_states(
            ["A", "B", "C", "D"].map(StateDef::new).into(),
        ))
        .expect("valid schema")
    };
    let other = Machine::new(schema());
    assert!(
        other.import(exported.clone()).is_err(),
        "another id is refused"
    );
    let m2 = Machine::builder(schema()).id(m1.id()).build();
    let restored =
        asyncmachine::machine::ExportedState::from_json(&json).expect("the export reads back");
    m2.import(restored).expect("the same id and schema import");
    assert_eq!(m1.id(), m2.id());
    assert_eq!(m1.summary(), m2.summary());
    assert_eq!(m1.clock(), m2.clock());
    assert_eq!(m1.queue_tick(), m2.queue_tick());
}
