//! The driven mirror against a server's bytes made by hand: the handshake, diffs waking
//! waiters and observers, a mutation's bytes and answer, a lost connection and a close.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{DrivenMirror, MirrorEvent};
use crate::machine::{
    Args, ClockChange, MutationError, Outcome, SchemaDef, StateDef, StateSource, WaitError,
};
use crate::proto::diff::{ClockRef, Tracked, diff};
use crate::proto::message::{Granted, MutateReply, Snapshot, Welcome};
use crate::proto::session::{ClientConfig, Moment, Phase};
use crate::proto::{FrameConfig, FrameReader, Message, encode_frame};

fn config() -> ClientConfig {
    ClientConfig {
        client_id: "page".into(),
        source: "demo".into(),
        compression: false,
        track: None,
        token: None,
        max_frame: crate::proto::frame::DEFAULT_MAX_FRAME,
        handshake_timeout: Duration::from_secs(5),
        keepalive: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        retry: crate::proto::session::RetryPolicy::NONE,
        key_epoch: 1,
    }
}

fn frame(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&FrameConfig::default(), message, &mut out);
    out
}

/// The messages a mirror sent.
fn sent(mirror: &DrivenMirror) -> Vec<Message> {
    let mut bytes = Vec::new();
    mirror.take_transmit(&mut bytes);
    let mut reader = FrameReader::new(FrameConfig::default());
    reader.push(&bytes);
    std::iter::from_fn(|| reader.next_message().expect("valid frames")).collect()
}

fn poll<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// A mirror of a source with states A and B (and Exception), ready with A active.
fn ready_mirror(outbound: Arc<AtomicUsize>) -> DrivenMirror {
    let mirror = DrivenMirror::new("page", "ws://relay/arpc/demo", config(), None, move || {
        outbound.fetch_add(1, Ordering::Relaxed);
    });
    assert!(mirror.connected(Moment::ZERO).is_empty());
    assert!(matches!(sent(&mirror)[..], [Message::Hello(_)]));
    let welcome = Welcome {
        ancestry: vec!["root".into()],
        schema: Some(SchemaDef::of_states(vec![
            StateDef::new("A"),
            StateDef::new("B"),
        ])),
        snapshot: Snapshot {
            ticks: vec![1, 0, 0],
            queue_tick: 1,
        },
        granted: Granted::default(),
        parent_id: None,
        tags: Vec::new(),
    };
    let events = mirror.handle_bytes(&frame(&Message::Welcome(welcome)), Moment::ZERO);
    assert!(
        matches!(events[..], [MirrorEvent::Ready { reconnect: false }]),
        "{events:?}"
    );
    mirror
}

fn diff_to(before: &[u64], after: &[u64], queue: (u64, u64)) -> Message {
    Message::Diff(diff(
        ClockRef {
            ticks: before,
            queue_tick: queue.0,
        },
        ClockRef {
            ticks: after,
            queue_tick: queue.1,
        },
        &Tracked::All,
    ))
}

#[test]
fn the_welcome_brings_the_schema_and_diffs_wake_waiters_and_observers() {
    let mirror = ready_mirror(Arc::default());
    assert_eq!(mirror.phase(), Phase::Ready);
    assert_eq!(mirror.active_states(), ["A"]);
    assert_eq!(mirror.schema().len(), 3);
    assert_eq!(mirror.ancestry(), ["page", "root"]);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let told = seen.clone();
    mirror.observe(Arc::new(move |change: &ClockChange<'_>| {
        told.lock()
            .expect("not poisoned")
            .push(change.changed.to_vec());
    }));
    let mut when_b = pin!(mirror.when(&["B"]));
    assert!(poll(when_b.as_mut()).is_pending());

    let events = mirror.handle_bytes(
        &frame(&diff_to(&[1, 0, 0], &[1, 1, 0], (1, 2))),
        Moment::ZERO,
    );
    assert!(events.is_empty());
    assert_eq!(poll(when_b.as_mut()), Poll::Ready(Ok(())));
    assert_eq!(*seen.lock().expect("not poisoned"), [vec![1]]);
    assert_eq!(mirror.queue_tick(), 2);
}

#[test]
fn a_mutation_goes_out_and_its_answer_comes_back_with_the_diff() {
    let outbound = Arc::new(AtomicUsize::new(0));
    let mirror = ready_mirror(outbound.clone());
    let mut added = pin!(mirror.add(&["B"], Args::new().with("n", 1)));
    assert!(poll(added.as_mut()).is_pending());
    assert_eq!(outbound.load(Ordering::Relaxed), 1, "the loop was told");
    let [Message::Mutate(request)] = &sent(&mirror)[..] else {
        panic!("one mutation");
    };
    assert_eq!(request.states, [1]);
    let Message::Diff(diff) = diff_to(&[1, 0, 0], &[1, 1, 0], (1, 2)) else {
        unreachable!()
    };
    let reply = Message::MutateReply(MutateReply {
        id: request.id,
        result: Ok(Outcome::Executed).into(),
        diff,
    });
    mirror.handle_bytes(&frame(&reply), Moment::ZERO);
    assert_eq!(poll(added.as_mut()), Poll::Ready(Ok(Outcome::Executed)));
    assert!(
        mirror.is(&["A", "B"]),
        "the clock holds the change on return"
    );

    // A refusal comes back as its reason.
    let mut refused = pin!(mirror.remove(&["A"], Args::new()));
    let [Message::Mutate(request)] = &sent(&mirror)[..] else {
        panic!("one mutation");
    };
    let Message::Diff(diff) = diff_to(&[1, 1, 0], &[1, 1, 0], (2, 2)) else {
        unreachable!()
    };
    let reply = Message::MutateReply(MutateReply {
        id: request.id,
        result: Err::<Outcome, _>("not in your mutate list".to_owned()).into(),
        diff,
    });
    mirror.handle_bytes(&frame(&reply), Moment::ZERO);
    let Poll::Ready(Err(MutationError::Refused(reason))) = poll(refused.as_mut()) else {
        panic!("refused");
    };
    assert!(reason.contains("not in your mutate list"), "{reason}");
}

#[test]
fn a_lost_connection_fails_mutations_and_keeps_the_clock_and_close_ends_waits() {
    let mirror = ready_mirror(Arc::default());
    let mut added = pin!(mirror.add(&["B"], Args::new()));
    assert!(poll(added.as_mut()).is_pending());
    let mut when_b = pin!(mirror.when(&["B"]));
    let events = mirror.handle_lost("the relay went away".into());
    assert!(
        matches!(&events[..], [MirrorEvent::Closed(r)] if r.contains("relay went away")),
        "{events:?}"
    );
    assert_eq!(
        poll(added.as_mut()),
        Poll::Ready(Err(MutationError::Disconnected))
    );
    assert_eq!(mirror.active_states(), ["A"], "the last clock known");
    assert!(mirror.upstream().is_some_and(|u| u.state == "disconnected"
        && u.last_error.is_some_and(|e| e.contains("relay went away"))));
    // Mutating while disconnected fails at once.
    let mut late = pin!(mirror.add(&["B"], Args::new()));
    assert_eq!(
        poll(late.as_mut()),
        Poll::Ready(Err(MutationError::Disconnected))
    );
    mirror.close();
    assert_eq!(poll(when_b.as_mut()), Poll::Ready(Err(WaitError::Disposed)));
}

#[test]
fn a_refused_hello_is_a_failed_handshake_with_its_reason() {
    let mirror = DrivenMirror::new("page", "ws://relay/arpc/demo", config(), None, || {});
    mirror.connected(Moment::ZERO);
    let refusal = crate::proto::message::Refusal {
        kind: crate::proto::message::RefusalKind::Auth,
        reason: "wrong token".into(),
    };
    let events = mirror.handle_bytes(&frame(&Message::Refused(refusal)), Moment::ZERO);
    assert!(
        matches!(&events[..], [MirrorEvent::HandshakeFailed(e)] if e.to_string().contains("wrong token")),
        "{events:?}"
    );
    // Nothing is known of the source yet: reads answer empty.
    assert!(mirror.active_states().is_empty());
    assert_eq!(mirror.clock(), Vec::<u64>::new());
}

/// A driven server and a driven mirror, bytes handed across until both are quiet.
mod served {
    use super::*;
    use crate::driven::{DrivenServer, ServerDrive};
    use crate::machine::{Machine, Schema, StateSource};
    use crate::proto::session::ServerSessionConfig;

    fn machine() -> Machine {
        let schema = Schema::new(SchemaDef::of_states(vec![
            StateDef::new("Foo"),
            StateDef::new("Bar").require(["Foo"]),
        ]))
        .expect("valid");
        Machine::builder(schema).id("bar").build()
    }

    /// Moves bytes both ways (and pumps the server) until nothing moves.
    fn settle(server: &DrivenServer, mirror: &DrivenMirror, now: Moment) -> Vec<ServerDrive> {
        let mut drives = Vec::new();
        for _ in 0..100 {
            drives.extend(server.pump(now));
            let mut down = Vec::new();
            server.take_transmit(1, &mut down);
            let mut up = Vec::new();
            mirror.take_transmit(&mut up);
            if down.is_empty() && up.is_empty() {
                return drives;
            }
            if !down.is_empty() {
                mirror.handle_bytes(&down, now);
            }
            if !up.is_empty() {
                drives.extend(server.handle_bytes(1, &up, now));
            }
        }
        panic!("never quiet");
    }

    fn connected(source: &str) -> (Machine, DrivenServer, DrivenMirror) {
        let m = machine();
        let server = DrivenServer::new(
            vec!["bar".into(), "listen/bar".into()],
            Arc::new(m.clone()),
            ServerSessionConfig::default(),
            || {},
        );
        let config = ClientConfig {
            source: source.into(),
            ..config()
        };
        let mirror = DrivenMirror::new("node", "ws://relay/listen/bar", config, None, || {});
        server.open(1, Moment::ZERO);
        mirror.connected(Moment::ZERO);
        (m, server, mirror)
    }

    #[test]
    fn a_mirror_follows_a_served_machine_and_mutates_it() {
        let (m, server, mirror) = connected("bar");
        m.add(&["Foo"], Args::new()).expect("taken");
        settle(&server, &mirror, Moment::ZERO);
        assert_eq!(mirror.phase(), Phase::Ready);
        assert_eq!(mirror.active_states(), ["Foo"]);
        assert_eq!(mirror.ancestry(), ["node", "bar"]);

        // A change at the machine reaches the mirror with the next pump.
        m.remove(&["Foo"], Args::new()).expect("taken");
        settle(&server, &mirror, Moment::ZERO);
        assert!(mirror.active_states().is_empty());

        // A mutation from the mirror runs on the machine; its answer carries the diff.
        m.on_state("Foo", |e| e.machine().add(&["Bar"], Args::new()).map(drop))
            .expect("bound");
        let mut added = pin!(mirror.add(&["Foo"], Args::new()));
        assert!(poll(added.as_mut()).is_pending());
        settle(&server, &mirror, Moment::ZERO);
        assert_eq!(poll(added.as_mut()), Poll::Ready(Ok(Outcome::Executed)));
        assert_eq!(m.active_states(), ["Foo", "Bar"]);
        assert_eq!(mirror.active_states(), ["Foo", "Bar"]);

        // The last error and an argument wait, asked of the served machine.
        let mut err = pin!(mirror.err());
        settle(&server, &mirror, Moment::ZERO);
        assert_eq!(poll(err.as_mut()), Poll::Ready(Ok(None)));
        let mut picked = pin!(mirror.when_args("Bar", Args::new().with("id", 2)));
        settle(&server, &mirror, Moment::ZERO);
        assert!(poll(picked.as_mut()).is_pending());
        m.remove(&["Bar"], Args::new()).expect("taken");
        m.add(&["Bar"], Args::new().with("id", 2)).expect("taken");
        settle(&server, &mirror, Moment::ZERO);
        assert_eq!(poll(picked.as_mut()), Poll::Ready(Ok(())));
        assert_eq!(server.connections(), 1);
    }

    /// Requests that arrive in one read: the first's answer lets the session read the rest,
    /// which are answered in the same pump (they used to be queued and never taken, and the
    /// pump went round for ever: the tab froze).
    #[test]
    fn requests_in_one_read_are_all_answered() {
        let (m, server, mirror) = connected("bar");
        settle(&server, &mirror, Moment::ZERO);
        assert_eq!(mirror.phase(), Phase::Ready);
        let mut first = pin!(mirror.add(&["Foo"], Args::new()));
        let mut second = pin!(mirror.add(&["Bar"], Args::new()));
        let mut err = pin!(mirror.err());
        let mut up = Vec::new();
        mirror.take_transmit(&mut up);
        server.handle_bytes(1, &up, Moment::ZERO);
        settle(&server, &mirror, Moment::ZERO);
        assert_eq!(poll(first.as_mut()), Poll::Ready(Ok(Outcome::Executed)));
        assert_eq!(poll(second.as_mut()), Poll::Ready(Ok(Outcome::Executed)));
        assert_eq!(poll(err.as_mut()), Poll::Ready(Ok(None)));
        assert_eq!(m.active_states(), ["Foo", "Bar"]);
    }

    #[test]
    fn a_hello_for_another_machine_is_refused_and_the_session_ends() {
        let (_m, server, mirror) = connected("foo");
        let mut failures = Vec::new();
        for _ in 0..10 {
            let mut up = Vec::new();
            mirror.take_transmit(&mut up);
            let drives = server.handle_bytes(1, &up, Moment::ZERO);
            let mut down = Vec::new();
            server.take_transmit(1, &mut down);
            failures.extend(mirror.handle_bytes(&down, Moment::ZERO));
            if !drives.is_empty() {
                assert!(matches!(drives[..], [ServerDrive::Closed { conn: 1, .. }]));
                break;
            }
        }
        assert!(
            matches!(&failures[..], [MirrorEvent::HandshakeFailed(e)] if e.to_string().contains("serves \"bar\", not \"foo\"")),
            "{failures:?}"
        );
        server.handle_lost(1);
        assert_eq!(server.connections(), 0);
    }

    #[test]
    fn a_silent_client_is_dropped_on_its_timeout() {
        let (_m, server, mirror) = connected("");
        settle(&server, &mirror, Moment::ZERO);
        assert_eq!(
            mirror.phase(),
            Phase::Ready,
            "an empty name asks for the only source"
        );
        let due = server.poll_timeout(1).expect("a deadline");
        let late = due + Duration::from_secs(60);
        let drives = server.handle_timeout(1, late);
        assert!(
            matches!(&drives[..], [ServerDrive::Closed { conn: 1, reason }] if reason.contains("nothing received")),
            "{drives:?}"
        );
    }
}

/// What watches a driven mirror is what watches a network one (the replica is shared): final
/// handlers and tracers hear each diff, the log writes it, dispose ends waits, empties reads,
/// runs its hooks and says goodbye.
#[test]
fn final_handlers_tracers_the_log_and_dispose_work_as_on_a_network_mirror() {
    struct Recorder(Arc<Mutex<Vec<String>>>);
    impl crate::machine::Tracer for Recorder {
        fn transition_end(&self, trace: &crate::machine::TransitionTrace<'_>) {
            self.0
                .lock()
                .expect("not poisoned")
                .push(format!("end {:?}", trace.after));
        }
        fn machine_dispose(&self, id: &str) {
            self.0
                .lock()
                .expect("not poisoned")
                .push(format!("dispose {id}"));
        }
    }
    let mirror = ready_mirror(Arc::default());
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (handler, logger, hook) = (lines.clone(), lines.clone(), lines.clone());
    mirror
        .bind_final(
            crate::machine::FinalHandlers::new().on_state("B", move |_| {
                handler.lock().expect("not poisoned").push("BState".into());
            }),
        )
        .expect("known states");
    mirror.bind_tracer(Arc::new(Recorder(lines.clone())));
    mirror.set_log_level(crate::machine::LogLevel::Changes);
    mirror.set_logger(Some(Arc::new(move |_level, line: &str| {
        logger.lock().expect("not poisoned").push(line.to_owned());
    })));
    mirror.on_dispose(Box::new(move |id| {
        hook.lock()
            .expect("not poisoned")
            .push(format!("hook {id}"));
    }));

    mirror.handle_bytes(
        &frame(&diff_to(&[1, 0, 0], &[1, 1, 0], (1, 2))),
        Moment::ZERO,
    );
    let taken = std::mem::take(&mut *lines.lock().expect("not poisoned"));
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert!(taken[0].contains("+B"), "the log's line first: {taken:?}");
    assert_eq!(taken[1..], ["BState", "end [1, 1, 0]"]);

    let mut when_never = pin!(mirror.when(&["Exception"]));
    assert!(poll(when_never.as_mut()).is_pending());
    let _ = sent(&mirror);
    mirror.close();
    assert_eq!(
        poll(when_never.as_mut()),
        Poll::Ready(Err(WaitError::Disposed))
    );
    assert!(mirror.is_disposed());
    assert!(mirror.clock().is_empty(), "a disposed mirror reads empty");
    assert!(matches!(sent(&mirror)[..], [Message::Bye { .. }]));
    assert_eq!(
        *lines.lock().expect("not poisoned"),
        ["hook page", "dispose page"]
    );
}
