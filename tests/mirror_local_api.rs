//! The local part of asyncmachine's Api on a mirror three hops from its root (a root machine,
//! mirror `a` of it served, mirror `b` of `a` served, leaf `c` of `b`): final handlers, tracers
//! and the log of the leaf follow the root's changes; a handler's mutation reaches the root;
//! disposing the leaf ends it and nothing else. Run over tcp and ws.

mod common;

use std::sync::{Arc, Mutex};

use asyncmachine::machine::{
    Args, FinalHandlers, LogArgs, LogLevel, Machine, MutationError, Schema, StateDef, StateSource,
    Tracer, TransitionTrace, WaitError,
};
use asyncmachine::mirror::ConnState;
use asyncmachine::server::ServerConfig;
use common::*;

fn machine() -> Machine {
    let schema = Schema::builder()
        .state(StateDef::new("Ready"))
        .state(StateDef::new("Flag").require(["Ready"]))
        .state(StateDef::new("Tick").multi())
        .build()
        .expect("valid schema");
    Machine::builder(schema).id("root").build()
}

/// Lines pushed by handlers, tracers and loggers.
#[derive(Default, Clone)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn push(&self, line: String) {
        self.0.lock().expect("lock").push(line);
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }

    fn has(&self, line: &str) -> bool {
        self.all().iter().any(|l| l == line)
    }
}

/// Records a mirror's transitions as `init`/`start`/`end` lines with their steps.
struct Recorder(Lines);

impl Tracer for Recorder {
    fn machine_init(&self, source: &dyn StateSource) {
        self.0.push(format!("init {}", source.id()));
    }
    fn transition_start(&self, t: &TransitionTrace<'_>) {
        assert!(t.mutation.is_none(), "a mirror traces no mutation");
        self.0.push("start".into());
    }
    fn transition_end(&self, t: &TransitionTrace<'_>) {
        let steps: Vec<String> = t
            .steps
            .iter()
            .map(|s| {
                format!(
                    "{}:{}",
                    s.kind.name(),
                    s.to.map_or("-", |i| t.schema.name(i))
                )
            })
            .collect();
        self.0.push(format!("end {}", steps.join(" ")));
    }
    fn machine_dispose(&self, id: &str) {
        self.0.push(format!("dispose {id}"));
    }
}

pub async fn a_leaf_runs_handlers_tracers_and_its_log_for_the_roots_changes(scheme: &str) {
    let tree = chain(machine(), scheme, ServerConfig::default()).await;
    let handled = Lines::default();
    let (on_ready, on_end, on_any) = (handled.clone(), handled.clone(), handled.clone());
    tree.c
        .bind_final(
            FinalHandlers::new()
                .on_state("Ready", move |e| {
                    on_ready.push(format!(
                        "ReadyState transition={}",
                        e.transition().is_some()
                    ));
                    // A reaction: a mutation of the leaf's own, up three hops to the root.
                    tokio::spawn(e.source().add(&["Flag"], Args::new().with("n", 1)));
                })
                .on_end("Ready", move |_| on_end.push("ReadyEnd".into()))
                .on_any_state(move |e| {
                    let on: Vec<&str> = e.activated().collect();
                    let off: Vec<&str> = e.deactivated().collect();
                    on_any.push(format!("any +{on:?} -{off:?}"));
                }),
        )
        .expect("known states");
    let traced = Lines::default();
    tree.c.bind_tracer(Arc::new(Recorder(traced.clone())));
    let logged = Lines::default();
    let sink = logged.clone();
    tree.c.set_log_level(LogLevel::Ops);
    tree.c.set_log_args(Some(LogArgs::new(0, ["n"])));
    tree.c
        .set_logger(Some(Arc::new(move |_: LogLevel, line: &str| {
            sink.push(line.to_owned())
        })));
    tree.c.log("watching the root");

    tree.root.add(&["Ready"], Args::new()).expect("known state");
    within(
        "Flag at the root, added by the leaf's handler",
        tree.root.when(&["Flag"]),
    )
    .await
    .expect("waits");
    converged(&tree.c, &tree.root.clock()).await;
    eventually("the leaf to see Flag", || {
        handled.has("any +[\"Flag\"] -[]")
    })
    .await;
    assert_eq!(
        handled.all(),
        [
            "ReadyState transition=false",
            "any +[\"Ready\"] -[]",
            "any +[\"Flag\"] -[]"
        ]
    );
    assert_eq!(
        traced.all(),
        [
            "init c",
            "start",
            "end activate:Ready",
            "start",
            "end activate:Flag"
        ]
    );
    let log = logged.all();
    assert_eq!(log[0], "[extern] watching the root");
    assert!(log.contains(&"[state] +Ready".to_owned()), "{log:?}");
    assert!(log.contains(&"[add] Flag (n=1)".to_owned()), "{log:?}");
    assert!(log.contains(&"[state] +Flag".to_owned()), "{log:?}");

    tree.root
        .remove(&["Ready"], Args::new())
        .expect("known state");
    eventually("the leaf to see Ready end", || handled.has("ReadyEnd")).await;
    assert!(
        handled.has("any +[] -[\"Ready\", \"Flag\"]"),
        "{:?}",
        handled.all()
    );
    assert!(traced.has("end deactivate:Ready deactivate:Flag"));
    assert!(logged.has("[state] -Ready -Flag"));
}

pub async fn disposing_a_leaf_ends_it_and_nothing_above_it(scheme: &str) {
    let tree = chain(machine(), scheme, ServerConfig::default()).await;
    let b_server = &tree.servers[2];
    assert_eq!(b_server.clients().len(), 1, "the leaf is b's client");
    let lines = Lines::default();
    tree.c.bind_tracer(Arc::new(Recorder(lines.clone())));
    let hook = lines.clone();
    tree.c.on_dispose(move |id| hook.push(format!("hook {id}")));
    let waiting = tree.c.when(&["Flag"]);
    let disposal = tree.c.when_disposed();
    let mut changes = tree.c.connection_changes();

    tree.c.dispose();
    assert!(tree.c.is_disposed());
    assert_eq!(lines.all(), ["init c", "hook c", "dispose c"]);
    assert_eq!(within("the disposal", disposal).await, Ok(()));
    assert_eq!(
        within("the waiter", waiting).await,
        Err(WaitError::Disposed)
    );
    assert!(tree.c.clock().is_empty(), "reads answer empty");
    assert_eq!(
        within("a mutation", tree.c.add(&["Ready"], Args::new())).await,
        Err(MutationError::Disposed)
    );
    within(
        "the leaf's connection to end",
        changes.wait_for(|s| *s == ConnState::Disconnected),
    )
    .await
    .expect("the mirror lives");
    eventually("b's server to drop the leaf", || {
        b_server.clients().is_empty()
    })
    .await;

    // The tree above goes on, and the leaf stays ended.
    tree.root.add(&["Ready"], Args::new()).expect("known state");
    converged(&tree.b, &tree.root.clock()).await;
    assert!(tree.c.clock().is_empty());
    assert_eq!(tree.c.connection(), ConnState::Disconnected);
    assert_eq!(
        lines.all().len(),
        3,
        "no transition traced after the disposal"
    );
}

macro_rules! transports {
    ($($transport:ident),* $(,)?) => {$(
        mod $transport {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(stringify!($transport)).await;
                    }
                };
            }
            case!(a_leaf_runs_handlers_tracers_and_its_log_for_the_roots_changes);
            case!(disposing_a_leaf_ends_it_and_nothing_above_it);
        }
    )*};
}

transports!(tcp, ws);
