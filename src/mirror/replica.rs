//! The replica: the mirror's session (which holds the clock) with the machine side around it,
//! its waiters, observers and tracers, and what the session's events mean to them.
//!
//! Everything here runs under the mirror's lock except telling observers (and so running final
//! handlers), tracers and the log, and answering callers, which [`Effects`] does after the lock
//! is released.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use crate::machine::log::MachineLog;
use crate::machine::observers::{ObserverSnapshot, Observers};
use crate::machine::tracer::{Tracers, change_steps};
use crate::machine::waiters::WaiterSet;
use crate::machine::{
    ClockChange, LogLevel, MutationError, Outcome, Schema, Tracer, TransitionTrace,
};
use crate::proto::message::Payload;
use crate::proto::session::{ClientEvent, ClientSession, HandshakeError};

use super::Mirror;
use super::config::MirrorStats;

/// A caller of a mutation or a sync, waiting for the source's answer.
pub(super) type Answer = oneshot::Sender<Result<Outcome, MutationError>>;

/// A caller of `err`, waiting for the source's last error.
pub(super) type ErrAnswer = oneshot::Sender<Result<Option<String>, MutationError>>;

/// Who waits for what the session hands back.
#[derive(Debug)]
pub(super) enum Pending {
    Answer(Answer),
    Err(ErrAnswer),
    /// A remote wait: its waiter in the replica's waiter set.
    Wait(u64),
}

/// The mirror's state behind its lock.
pub(super) struct Replica {
    pub session: ClientSession<Pending>,
    /// The clock's schema; the session's once a welcome came.
    pub schema: Arc<Schema>,
    pub waiters: WaiterSet,
    /// Remote waits: the waiter's id in `waiters` to the wait's id in the session.
    pub remote_waits: HashMap<u64, u64>,
    pub observers: Observers,
    pub tracers: Tracers,
    /// The mirror's log (shared with its handle): changes are gathered for it when it shows them.
    log: Arc<MachineLog>,
    /// Set once by `dispose`: reads answer empty from then on.
    pub disposed: bool,
    /// Why the last connection attempt failed (cleared on success).
    pub last_error: Option<String>,
    /// The queue tick observers were last told of (the current one while there are none).
    told_queue_tick: u64,
}

/// What the session's events call for once the lock is released.
#[derive(Default)]
pub(super) struct Effects {
    notices: Vec<Notice>,
    answers: Vec<(Answer, Result<Outcome, MutationError>)>,
    errs: Vec<(ErrAnswer, Result<Option<String>, MutationError>)>,
    payloads: Vec<Payload>,
    /// The mirror's new ancestry (its id first), and the observers to tell.
    ancestry: Option<(Vec<String>, ObserverSnapshot)>,
    /// The session is ready (`true` after a reconnect).
    pub ready: Option<bool>,
    /// The handshake failed.
    pub handshake_failed: Option<HandshakeError>,
    /// The server ended the session.
    pub closed: Option<String>,
}

impl Replica {
    pub fn new(
        session: ClientSession<Pending>,
        schema: Arc<Schema>,
        log: Arc<MachineLog>,
    ) -> Replica {
        Replica {
            waiters: WaiterSet::new(schema.len()),
            remote_waits: HashMap::new(),
            session,
            schema,
            observers: Observers::default(),
            tracers: Tracers::default(),
            log,
            disposed: false,
            last_error: None,
            told_queue_tick: 0,
        }
    }

    /// Takes the session's events: applies them to waiters and the schema now, and gathers
    /// what must happen outside the lock.
    pub fn drain(&mut self, id: &str, stats: &MirrorStats, effects: &mut Effects) {
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::Ready { reconnect } => {
                    self.last_error = None;
                    effects.ready = Some(reconnect);
                }
                ClientEvent::HandshakeFailed(e) => effects.handshake_failed = Some(e),
                ClientEvent::ClockChanged {
                    before,
                    changed,
                    schema_changed,
                    diffs,
                } => {
                    stats.diffs.fetch_add(diffs as u64, Ordering::Relaxed);
                    let mut old_schema = None;
                    if schema_changed && let Some(schema) = self.session.schema() {
                        if schema.extends(&self.schema) {
                            // Enlarged: every position keeps its state, every waiter stays.
                            self.waiters.grow(schema.len());
                        } else {
                            // State positions mean other states now: waiters on the old
                            // schema's states cannot be answered, so they end (a wait for the
                            // disposal stays).
                            self.waiters.reset(schema.len());
                        }
                        old_schema = Some(std::mem::replace(&mut self.schema, schema.clone()));
                    }
                    let ticks = self.session.ticks();
                    self.waiters.clock_changed(ticks, changed.iter().copied());
                    // A snapshot can move the queue tick alone. Growth rides along with the
                    // next change, but a queue tick that went back (the source restarted)
                    // must reach a server serving this mirror now, or its clients keep a
                    // queue tick the source no longer has.
                    let queue_tick = self.session.queue_tick();
                    let went_back = queue_tick < self.told_queue_tick;
                    // Gathered only when someone looks: most mirrors have no observer.
                    let watched = !self.observers.is_empty()
                        || !self.tracers.is_empty()
                        || self.log.shows(LogLevel::Changes);
                    if !watched {
                        self.told_queue_tick = queue_tick;
                    } else if !changed.is_empty() || went_back || old_schema.is_some() {
                        self.told_queue_tick = queue_tick;
                        effects.notices.push(Notice {
                            before,
                            after: ticks.to_vec(),
                            changed,
                            queue_tick,
                            schema: self.schema.clone(),
                            old_schema,
                            observers: self.observers.snapshot(),
                            tracers: self.tracers.snapshot(),
                        });
                    }
                }
                ClientEvent::Answered {
                    pending: Pending::Answer(answer),
                    result,
                } => effects.answers.push((answer, result)),
                ClientEvent::ErrAnswered {
                    pending: Pending::Err(answer),
                    result,
                } => effects.errs.push((answer, result)),
                ClientEvent::WaitEnded {
                    pending: Pending::Wait(waiter),
                    result,
                } => {
                    self.remote_waits.remove(&waiter);
                    self.waiters.finish(waiter, result);
                }
                // The session hands each kind of request back as the event of its kind.
                ClientEvent::Answered { .. }
                | ClientEvent::ErrAnswered { .. }
                | ClientEvent::WaitEnded { .. } => {}
                ClientEvent::Payload(payload) => effects.payloads.push(payload),
                ClientEvent::Ancestry(upstream) => {
                    let mine = std::iter::once(id.to_owned()).chain(upstream).collect();
                    effects.ancestry = Some((mine, self.observers.snapshot()));
                }
                ClientEvent::Resync => {
                    stats.resyncs.fetch_add(1, Ordering::Relaxed);
                }
                ClientEvent::Closed(reason) => effects.closed = Some(reason),
            }
        }
    }
}

impl Effects {
    /// Tells observers, tracers and the log of `mirror`, then callers, in the order the changes
    /// happened; payloads go to the mirror's receivers.
    pub fn apply(self, mirror: &Mirror) {
        for notice in self.notices {
            notice.tell(mirror);
        }
        if let Some((ancestry, observers)) = &self.ancestry {
            observers.ancestry_changed(ancestry);
        }
        for (answer, result) in self.answers {
            // A caller that gave up is not waiting.
            let _ = answer.send(result);
        }
        for (answer, result) in self.errs {
            let _ = answer.send(result);
        }
        for payload in self.payloads {
            // No receivers is fine: nobody asked for payloads.
            let _ = mirror.shared.payloads.send(payload);
        }
    }
}

/// A clock change to tell observers, tracers and the log about, outside the lock.
struct Notice {
    before: Vec<u64>,
    after: Vec<u64>,
    changed: Vec<usize>,
    queue_tick: u64,
    schema: Arc<Schema>,
    /// The schema before, when the change came with a new one.
    old_schema: Option<Arc<Schema>>,
    observers: ObserverSnapshot,
    tracers: Arc<Vec<(u64, Arc<dyn Tracer>)>>,
}

impl Notice {
    /// As asyncmachine's network machine applies a clock: tracers' `transition_init` and
    /// `transition_start`, the observers (final handlers among them), `transition_end`.
    fn tell(self, mirror: &Mirror) {
        let id = &mirror.shared.id;
        let tracers = self.tracers.iter().map(|(_, t)| t);
        if let Some(old) = &self.old_schema {
            tracers.clone().for_each(|t| t.schema_change(mirror, old));
        }
        let traced = !self.changed.is_empty() && !self.tracers.is_empty();
        let steps = if traced {
            change_steps(&self.before, &self.after, &self.changed)
        } else {
            Vec::new()
        };
        let trace = |after| TransitionTrace {
            machine: id,
            schema: &self.schema,
            mutation: None,
            queue_tick: self.queue_tick,
            before: &self.before,
            after,
            steps: &steps,
            outcome: None,
        };
        if traced {
            let init = trace(&self.before);
            tracers.clone().for_each(|t| t.transition_init(&init));
            tracers.clone().for_each(|t| t.transition_start(&init));
        }
        mirror
            .shared
            .log
            .changes(id, &self.schema, &self.after, &self.changed);
        self.observers.clock_changed(&ClockChange {
            source: mirror,
            schema: &self.schema,
            before: &self.before,
            after: &self.after,
            changed: &self.changed,
            queue_tick: self.queue_tick,
            transition: None,
        });
        if traced {
            let end = TransitionTrace {
                outcome: Some(Outcome::Executed),
                ..trace(&self.after)
            };
            tracers.for_each(|t| t.transition_end(&end));
        }
    }
}
