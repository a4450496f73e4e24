//! The mirror's own side without a socket or a runtime: frames handed to its session and the
//! effects applied as the connection task applies them. Final handlers, tracers, the log,
//! disposal, and what observers are told.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::*;
use crate::machine::{
    Args, ClockChange, DisposeHook, FinalHandlers, LogLevel, MutationError, StateDef, Tracer,
    TransitionTrace, WaitError,
};
use crate::proto::diff::{Tracked, checksum};
use crate::proto::message::{ClockDiff, Granted, Snapshot, Welcome};
use crate::proto::session::Moment;
use crate::proto::{FrameConfig, Message, encode_frame};

/// `A`, `B`, `M` (multi) and `Exception`.
fn schema() -> Arc<Schema> {
    let def = SchemaDef::of_states(vec![
        StateDef::new("A"),
        StateDef::new("B"),
        StateDef::new("M").multi(),
    ]);
    Arc::new(Schema::new(def).expect("valid"))
}

fn frame(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&FrameConfig::default(), message, &mut out);
    out
}

fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

/// A mirror whose session is fed frames by hand, as if from a source named `root`.
struct Harness {
    mirror: Mirror,
}

impl Harness {
    /// Connected, with the welcome applied (all ticks 0, queue tick 1).
    fn new() -> Harness {
        let schema = schema();
        let config = MirrorConfig {
            client_id: "leaf".into(),
            schema: Some(schema.clone()),
            ..MirrorConfig::default()
        };
        let endpoint: Endpoint = "tcp://127.0.0.1:1/root".parse().expect("valid");
        let harness = Harness {
            mirror: Mirror {
                shared: Shared::new(&endpoint, config, schema.clone()),
            },
        };
        harness.replica().session.connect(Moment::ZERO);
        harness.receive(&Message::Welcome(Welcome {
            ancestry: vec!["root".into()],
            schema: None,
            snapshot: Snapshot {
                ticks: vec![0; schema.len()],
                queue_tick: 1,
            },
            granted: Granted::default(),
            parent_id: None,
            tags: Vec::new(),
        }));
        harness
    }

    fn replica(&self) -> std::sync::MutexGuard<'_, crate::replica::Replica> {
        self.mirror.shared.core.lock()
    }

    /// Hands a message to the session and applies what it changed.
    fn receive(&self, message: &Message) {
        self.mirror
            .shared
            .input(|session| session.handle_bytes(&frame(message), Moment::ZERO));
    }

    /// A diff from the source: each named state's tick grows by its delta.
    fn push(&self, deltas: &[(&str, u64)]) {
        let schema = self.mirror.schema();
        let mut ticks = self.mirror.clock();
        let changes: Vec<(u32, u64)> = deltas
            .iter()
            .map(|&(state, delta)| {
                let s = schema.index(state).expect("known state");
                ticks[s] += delta;
                (s as u32, delta)
            })
            .collect();
        self.receive(&Message::Diff(ClockDiff {
            changes,
            queue_delta: 1,
            checksum: checksum(&ticks, &Tracked::All),
        }));
        assert_eq!(self.mirror.clock(), ticks, "the diff applied");
    }
}

/// Lines pushed by handlers, tracers and loggers.
#[derive(Default, Clone)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn push(&self, line: String) {
        self.0.lock().expect("lock").push(line);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}

#[test]
fn final_handlers_run_after_each_update_without_a_transition() {
    let h = Harness::new();
    let lines = Lines::default();
    let record = |lines: &Lines| {
        let lines = lines.clone();
        move |e: &crate::machine::FinalEvent<'_>| {
            assert!(e.transition().is_none(), "a mirror knows what, not why");
            assert_eq!(e.source().id(), "leaf");
            lines.push(format!(
                "{} {:?}->{:?}",
                e.handler_name(),
                e.before(),
                e.after()
            ));
        }
    };
    let binding = h
        .mirror
        .bind_final(
            FinalHandlers::new()
                .on_state("A", record(&lines))
                .on_end("A", record(&lines))
                .on_state("M", record(&lines))
                .on_end("M", record(&lines))
                .on_any_state(record(&lines)),
        )
        .expect("known states");

    h.push(&[("A", 1)]);
    assert_eq!(
        lines.take(),
        [
            "AState [0, 0, 0, 0]->[1, 0, 0, 0]",
            "AnyState [0, 0, 0, 0]->[1, 0, 0, 0]"
        ]
    );
    // M activated, then activated again (a multi state's new activation, tick +2).
    h.push(&[("M", 1)]);
    h.push(&[("M", 2)]);
    assert_eq!(
        lines.take(),
        [
            "MState [1, 0, 0, 0]->[1, 0, 1, 0]",
            "AnyState [1, 0, 0, 0]->[1, 0, 1, 0]",
            "MState [1, 0, 1, 0]->[1, 0, 3, 0]",
            "AnyState [1, 0, 1, 0]->[1, 0, 3, 0]",
        ]
    );
    // Ends before arrivals, in schema order, whatever order the diff named them in.
    h.push(&[("M", 1), ("B", 1), ("A", 1)]);
    assert_eq!(
        lines.take(),
        [
            "AEnd [1, 0, 3, 0]->[2, 1, 4, 0]",
            "MEnd [1, 0, 3, 0]->[2, 1, 4, 0]",
            "AnyState [1, 0, 3, 0]->[2, 1, 4, 0]",
        ]
    );
    // Activated and deactivated again between two updates: its tick moved, nothing ran for it.
    h.push(&[("A", 2)]);
    assert_eq!(lines.take(), ["AnyState [2, 1, 4, 0]->[4, 1, 4, 0]"]);

    assert!(h.mirror.unbind_final(binding));
    assert!(!h.mirror.unbind_final(binding), "unbound once");
    h.push(&[("A", 1)]);
    assert!(lines.take().is_empty());
}

#[test]
fn a_final_handler_that_fails_is_logged_and_the_others_run() {
    let h = Harness::new();
    let lines = Lines::default();
    let (first, last) = (lines.clone(), lines.clone());
    h.mirror
        .bind_final(
            FinalHandlers::new()
                .on_state("A", |_| Err::<(), _>("refused"))
                .on_state("A", |_| -> () { panic!("handler panics") })
                .on_state("B", move |_| first.push("B".into()))
                .on_any_state(move |e| {
                    last.push(format!("any {:?}", e.activated().collect::<Vec<_>>()))
                }),
        )
        .expect("known states");
    h.push(&[("A", 1), ("B", 1)]);
    assert_eq!(lines.take(), ["B", "any [\"A\", \"B\"]"]);
    assert!(h.mirror.is1("A"), "nothing is undone");
}

#[test]
fn binding_a_set_with_an_unknown_state_binds_nothing() {
    let h = Harness::new();
    let set = FinalHandlers::new()
        .on_state("A", |_| {})
        .on_end("Nope", |_| {});
    assert_eq!(
        h.mirror.bind_final(set).err(),
        Some(crate::machine::UnknownState("Nope".into()))
    );
    assert!(h.replica().observers.is_empty());
}

/// Records each hook of a tracer as a line.
struct Recorder(Lines);

impl Tracer for Recorder {
    fn machine_init(&self, source: &dyn StateSource) {
        self.0.push(format!("init {}", source.id()));
    }
    fn machine_dispose(&self, id: &str) {
        self.0.push(format!("dispose {id}"));
    }
    fn transition_init(&self, t: &TransitionTrace<'_>) {
        assert!(t.mutation.is_none() && t.called().next().is_none());
        self.0
            .push(format!("tx init {:?}->{:?}", t.before, t.after));
    }
    fn transition_start(&self, _: &TransitionTrace<'_>) {
        self.0.push("tx start".into());
    }
    fn transition_end(&self, t: &TransitionTrace<'_>) {
        let steps: Vec<String> = t
            .steps
            .iter()
            .map(|s| format!("{:?}:{}", s.kind, s.to.map_or("-", |i| t.schema.name(i))))
            .collect();
        self.0.push(format!(
            "tx end {} {:?} {:?}->{:?} q{} [{}]",
            t.machine,
            t.outcome,
            t.before,
            t.after,
            t.queue_tick,
            steps.join(" ")
        ));
    }
}

#[test]
fn tracers_see_each_update_as_a_transition_without_a_mutation() {
    let h = Harness::new();
    let lines = Lines::default();
    let id = h.mirror.bind_tracer(Arc::new(Recorder(lines.clone())));
    assert_eq!(h.mirror.tracers().len(), 1);
    let handled = lines.clone();
    h.mirror
        .bind_final(FinalHandlers::new().on_state("B", move |_| handled.push("BState".into())))
        .expect("known state");
    h.push(&[("A", 1)]);
    h.push(&[("A", 1), ("B", 1)]);
    assert_eq!(
        lines.take(),
        [
            "init leaf",
            "tx init [0, 0, 0, 0]->[0, 0, 0, 0]",
            "tx start",
            "tx end leaf Some(Executed) [0, 0, 0, 0]->[1, 0, 0, 0] q2 [Set:A]",
            "tx init [1, 0, 0, 0]->[1, 0, 0, 0]",
            "tx start",
            "BState",
            "tx end leaf Some(Executed) [1, 0, 0, 0]->[2, 1, 0, 0] q3 [Remove:A Set:B]",
        ]
    );
    assert!(h.mirror.detach_tracer(id));
    assert!(!h.mirror.detach_tracer(id), "detached once");
    h.push(&[("A", 1)]);
    assert!(lines.take().is_empty(), "a detached tracer hears nothing");
}

/// Records schema changes.
struct SchemaWatch(Lines);

impl Tracer for SchemaWatch {
    fn schema_change(&self, source: &dyn StateSource, old: &Schema) {
        self.0
            .push(format!("schema {} -> {}", old.len(), source.schema().len()));
    }
}

#[test]
fn a_grown_schema_reaches_tracers_and_handlers_keep_their_states() {
    let h = Harness::new();
    let lines = Lines::default();
    h.mirror.bind_tracer(Arc::new(SchemaWatch(lines.clone())));
    let handled = lines.clone();
    h.mirror
        .bind_final(FinalHandlers::new().on_state("B", move |e| {
            handled.push(format!("BState {:?}", e.after()));
        }))
        .expect("known state");
    let old = h.mirror.schema();
    let mut def = old.def().clone();
    def.states.push(StateDef::new("C"));
    let grown = Schema::new(def.clone()).expect("valid");
    assert!(
        grown.extends(&old),
        "C comes after every state of the old schema"
    );
    h.receive(&Message::SchemaChanged {
        schema: def,
        snapshot: Snapshot {
            ticks: vec![0, 0, 0, 0, 1],
            queue_tick: 2,
        },
    });
    h.push(&[("B", 1)]);
    assert_eq!(
        lines.take(),
        ["schema 4 -> 5", "BState [0, 1, 0, 0, 1]"],
        "the handler bound by name still runs for B"
    );
}

#[test]
fn the_log_writes_changes_and_the_users_lines_at_its_level() {
    let h = Harness::new();
    let lines = Lines::default();
    let sink = lines.clone();
    h.mirror
        .set_logger(Some(Arc::new(move |level: LogLevel, line: &str| {
            sink.push(format!("{level}: {line}"));
        })));
    assert_eq!(
        h.mirror.log_level(),
        LogLevel::Nothing,
        "silent until asked"
    );
    h.mirror.log("unseen");
    h.push(&[("A", 1)]);
    assert!(lines.take().is_empty());

    h.mirror.set_log_level(LogLevel::Changes);
    h.mirror.log("hello\nthere");
    h.push(&[("A", 1), ("B", 1)]);
    assert_eq!(
        lines.take(),
        ["external: [extern] hello there", "changes: [state] -A +B"]
    );
}

#[test]
fn dispose_ends_the_mirror_as_it_ends_a_machine() {
    let h = Harness::new();
    let lines = Lines::default();
    h.mirror.bind_tracer(Arc::new(Recorder(lines.clone())));
    let (first, second) = (lines.clone(), lines.clone());
    h.mirror
        .on_dispose(move |id| first.push(format!("hook {id}")));
    h.mirror.on_dispose(|_| panic!("a failing hook"));
    h.mirror.on_dispose(
        Box::new(move |id: &str| second.push(format!("boxed hook {id}"))) as DisposeHook,
    );
    h.push(&[("A", 1)]);
    let mut waiting = h.mirror.when(&["B"]);
    let mut disposal = h.mirror.when_disposed();
    assert!(poll_once(&mut waiting).is_pending());
    assert!(poll_once(&mut disposal).is_pending());
    h.mirror
        .bind_final(FinalHandlers::new().on_any_state(|_| {}))
        .expect("binds");
    lines.take();

    h.mirror.dispose();
    assert!(h.mirror.is_disposed());
    assert_eq!(
        lines.take(),
        ["hook leaf", "boxed hook leaf", "dispose leaf"]
    );
    assert_eq!(
        poll_once(&mut waiting),
        Poll::Ready(Err(WaitError::Disposed))
    );
    assert_eq!(poll_once(&mut disposal), Poll::Ready(Ok(())));
    assert_eq!(
        poll_once(&mut h.mirror.when(&["A"])),
        Poll::Ready(Err(WaitError::Disposed)),
        "a wait made after ends at once"
    );
    assert!(h.replica().observers.is_empty(), "final handlers dropped");
    // Reads answer empty, as a disposed machine's do.
    assert!(h.mirror.clock().is_empty());
    assert_eq!(h.mirror.tick("A"), 0);
    assert!(!h.mirror.is1("A"));
    assert_eq!(h.mirror.summary(), "");
    assert_eq!(
        poll_once(&mut h.mirror.add(&["B"], Args::new())),
        Poll::Ready(Err(MutationError::Disposed))
    );
    // The connection ends: a goodbye queued for the server, the task told to stop.
    assert!(*h.mirror.shared.stop.borrow());
    assert!(!h.replica().session.transmit().is_empty(), "a bye to send");

    h.mirror.dispose();
    assert!(lines.take().is_empty(), "disposed once");
    let late = lines.clone();
    h.mirror
        .on_dispose(move |id| late.push(format!("late hook {id}")));
    assert_eq!(lines.take(), ["late hook leaf"], "run at once");
}

/// The queue ticks observers are told of.
#[derive(Default)]
struct Told(Mutex<Vec<u64>>);

impl crate::machine::Observer for Told {
    fn clock_changed(&self, change: &ClockChange<'_>) {
        self.0.lock().expect("not poisoned").push(change.queue_tick);
    }
}

#[test]
fn a_snapshot_that_takes_only_the_queue_tick_back_reaches_observers() {
    let h = Harness::new();
    let told = Arc::new(Told::default());
    h.mirror.observe(told.clone());
    h.push(&[("A", 1)]);
    // The source restarted: the same ticks, an earlier queue tick.
    let snapshot = Snapshot {
        ticks: vec![1, 0, 0, 0],
        queue_tick: 1,
    };
    h.receive(&Message::Snapshot { id: 0, snapshot });
    assert_eq!(*told.0.lock().expect("not poisoned"), [2, 1]);
}

/// One read can hold a diff of the old schema and, after it, a schema that does not keep its
/// positions: the diff's changes are of states the new clock may not have. Nothing panics;
/// the waits on the old schema's states end, and observers get the new schema's clock.
#[test]
fn a_diff_and_a_smaller_schema_in_one_read_end_the_old_waits() {
    let h = Harness::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    h.mirror.observe(Arc::new(move |change: &ClockChange<'_>| {
        record
            .lock()
            .expect("lock")
            .push((change.after.to_vec(), change.changed.to_vec()));
    }));
    let mut waiting = h.mirror.when(&["M"]);
    assert!(poll_once(&mut waiting).is_pending());

    let diff = Message::Diff(ClockDiff {
        changes: vec![(2, 1)],
        queue_delta: 1,
        checksum: checksum(&[0, 0, 1, 0], &Tracked::All),
    });
    let smaller = SchemaDef::of_states(vec![StateDef::new("X")]);
    let changed = Message::SchemaChanged {
        schema: smaller,
        snapshot: Snapshot {
            ticks: vec![1, 0],
            queue_tick: 3,
        },
    };
    let mut read = frame(&diff);
    read.extend(frame(&changed));
    h.mirror
        .shared
        .input(|session| session.handle_bytes(&read, Moment::ZERO));

    assert_eq!(h.mirror.schema().len(), 2, "X and Exception");
    assert_eq!(h.mirror.clock(), [1, 0]);
    assert!(
        matches!(poll_once(&mut waiting), Poll::Ready(Err(_))),
        "M is not a state of the new schema"
    );
    let seen = seen.lock().expect("lock");
    assert_eq!(
        seen.last().map(|(after, _)| after.clone()),
        Some(vec![1, 0])
    );
    assert!(
        seen.iter()
            .all(|(after, changed)| changed.iter().all(|&s| s < after.len())),
        "{seen:?}"
    );
}

/// A no-reply mutation waits while the outbox is full; when the session ends, or the mirror is
/// disposed, with nothing written, it fails instead of waiting for a write that never comes.
#[test]
fn a_no_reply_mutation_held_by_a_full_outbox_fails_when_the_session_ends() {
    for end in ["lost", "disposed"] {
        let h = Harness::new();
        let blob = Args::new().with("blob", "x".repeat(32 * 1024));
        let send = || {
            Box::pin(h.mirror.mutate_no_reply(Mutation::new(
                crate::machine::MutationKind::Add,
                vec![0],
                blob.clone(),
            )))
        };
        while h.replica().session.transmit().len() < OUTBOX_BYTES {
            assert!(matches!(poll_once(&mut send()), Poll::Ready(Ok(()))));
        }
        let mut held = send();
        assert!(poll_once(&mut held).is_pending(), "the outbox is full");
        let expected = if end == "lost" {
            h.mirror.shared.end_session("the connection ended");
            MutationError::Disconnected
        } else {
            h.mirror.dispose();
            MutationError::Disposed
        };
        assert_eq!(poll_once(&mut held), Poll::Ready(Err(expected)), "{end}");
    }
}
