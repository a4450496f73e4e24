//! The replica: the mirror's session (which holds the clock) with the machine side around it,
//! its waiters and observers, and what the session's events mean to them.
//!
//! Everything here runs under the mirror's lock except telling observers and answering
//! callers, which [`Effects`] does after the lock is released.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use crate::machine::observers::{ObserverSnapshot, Observers};
use crate::machine::waiters::WaiterSet;
use crate::machine::{ClockChange, MutationError, Outcome, Schema};
use crate::proto::message::Payload;
use crate::proto::session::{ClientEvent, ClientSession, HandshakeError};

use super::config::MirrorStats;

/// A caller waiting for the source's answer.
pub(super) type Pending = oneshot::Sender<Result<Outcome, MutationError>>;

/// The mirror's state behind its lock.
pub(super) struct Replica {
    pub session: ClientSession<Pending>,
    /// The clock's schema; the session's once a welcome came.
    pub schema: Arc<Schema>,
    pub waiters: WaiterSet,
    pub observers: Observers,
    /// Why the last connection attempt failed (cleared on success).
    pub last_error: Option<String>,
}

/// What the session's events call for once the lock is released.
#[derive(Default)]
pub(super) struct Effects {
    notices: Vec<Notice>,
    answers: Vec<(Pending, Result<Outcome, MutationError>)>,
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
    pub fn new(session: ClientSession<Pending>, schema: Arc<Schema>) -> Replica {
        Replica {
            waiters: WaiterSet::new(schema.len()),
            session,
            schema,
            observers: Observers::default(),
            last_error: None,
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
                    if schema_changed && let Some(schema) = self.session.schema() {
                        // State positions mean other states now: waiters on the old schema
                        // cannot be answered, so they end.
                        self.schema = schema.clone();
                        self.waiters.close();
                        self.waiters = WaiterSet::new(schema.len());
                    }
                    let ticks = self.session.ticks();
                    self.waiters.clock_changed(ticks, changed.iter().copied());
                    if !changed.is_empty() && !self.observers.is_empty() {
                        effects.notices.push(Notice {
                            before,
                            after: ticks.to_vec(),
                            changed,
                            queue_tick: self.session.queue_tick(),
                            observers: self.observers.snapshot(),
                        });
                    }
                }
                ClientEvent::Answered { pending, result } => {
                    effects.answers.push((pending, result));
                }
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
    /// Tells observers and callers, in the order the changes happened; payloads go to
    /// `payloads`.
    pub fn apply(self, payloads: &tokio::sync::broadcast::Sender<Payload>) {
        for notice in self.notices {
            notice.tell();
        }
        if let Some((ancestry, observers)) = &self.ancestry {
            observers.ancestry_changed(ancestry);
        }
        for (pending, result) in self.answers {
            // A caller that gave up is not waiting.
            let _ = pending.send(result);
        }
        for payload in self.payloads {
            // No receivers is fine: nobody asked for payloads.
            let _ = payloads.send(payload);
        }
    }
}

/// A clock change to tell observers about, outside the lock.
struct Notice {
    before: Vec<u64>,
    after: Vec<u64>,
    changed: Vec<usize>,
    queue_tick: u64,
    observers: ObserverSnapshot,
}

impl Notice {
    fn tell(self) {
        self.observers.clock_changed(&ClockChange {
            before: &self.before,
            after: &self.after,
            changed: &self.changed,
            queue_tick: self.queue_tick,
            transition: None,
        });
    }
}
