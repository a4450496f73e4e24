//! The replica's state behind its lock: the session (which holds the clock), the waiters,
//! observers and tracers around it, and what the session's events mean to them.

use std::collections::HashMap;
use std::sync::Arc;

use futures_channel::oneshot;

use crate::machine::log::MachineLog;
use crate::machine::observers::Observers;
use crate::machine::tracer::Tracers;
use crate::machine::waiters::WaiterSet;
use crate::machine::{LogLevel, MutationError, Outcome, Schema};
use crate::proto::session::{ClientEvent, ClientSession};

use super::effects::{Effects, Notice, ReplicaEvent};

/// A mutation's or a sync's answer.
pub type MutationAnswer = Result<Outcome, MutationError>;
/// The answer to `err`: the source's last error.
pub type ErrAnswer = Result<Option<String>, MutationError>;

/// Who waits for what the session hands back.
#[derive(Debug)]
pub enum Pending {
    Answer(oneshot::Sender<MutationAnswer>),
    Err(oneshot::Sender<ErrAnswer>),
    /// A remote wait: its waiter in the replica's waiter set.
    Wait(u64),
}

/// The replica's state behind its lock.
pub struct Replica {
    pub session: ClientSession<Pending>,
    /// The clock's schema; the session's once a welcome came.
    pub schema: Arc<Schema>,
    pub waiters: WaiterSet,
    /// Remote waits: the waiter's id in `waiters` to the wait's id in the session.
    pub remote_waits: HashMap<u64, u64>,
    pub observers: Observers,
    pub tracers: Tracers,
    /// The replica's log (shared with its handle): changes are gathered for it when it shows them.
    pub(super) log: Arc<MachineLog>,
    /// Set once by `dispose`: reads answer empty from then on.
    pub disposed: bool,
    /// Why the last connection failed or ended (cleared when one is ready).
    pub last_error: Option<String>,
    /// The queue tick observers were last told of (the current one while there are none).
    told_queue_tick: u64,
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
    pub fn drain(&mut self, id: &str, effects: &mut Effects) {
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::Ready { reconnect } => {
                    self.last_error = None;
                    effects.events.push(ReplicaEvent::Ready { reconnect });
                }
                ClientEvent::HandshakeFailed(e) => {
                    self.last_error = Some(e.to_string());
                    effects.events.push(ReplicaEvent::HandshakeFailed(e));
                }
                ClientEvent::ClockChanged {
                    before,
                    changed,
                    schema_changed,
                    diffs,
                } => {
                    effects.diffs += diffs as u64;
                    // The session holds the newest clock by now. One read can hold a diff and,
                    // after it, a schema change: the diff's event comes first, while the clock
                    // is already of the new schema, and the change's own event carries every
                    // state. Nobody is told of the diff alone, in a schema it was not sent for.
                    let superseded = !schema_changed
                        && self
                            .session
                            .schema()
                            .is_some_and(|s| s.hash() != self.schema.hash());
                    if superseded {
                        continue;
                    }
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
                    // Positions past the clock are never waited on (a guard: the events of a
                    // session's one clock name only its positions).
                    let mut changed = changed;
                    changed.retain(|&s| s < ticks.len());
                    self.waiters.clock_changed(ticks, changed.iter().copied());
                    // A snapshot can move the queue tick alone. Growth rides along with the
                    // next change, but a queue tick that went back (the source restarted)
                    // must reach a server serving this replica now, or its clients keep a
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
                ClientEvent::Payload(payload) => {
                    effects.events.push(ReplicaEvent::Payload(payload));
                }
                ClientEvent::Ancestry(upstream) => {
                    let mine = std::iter::once(id.to_owned()).chain(upstream).collect();
                    effects.ancestry = Some((mine, self.observers.snapshot()));
                }
                ClientEvent::Resync => effects.resyncs += 1,
                ClientEvent::Closed(reason) => {
                    self.last_error = Some(reason.clone());
                    effects.events.push(ReplicaEvent::Closed(reason));
                }
            }
        }
    }
}
