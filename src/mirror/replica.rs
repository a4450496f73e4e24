//! The replica: the mirror's session (which holds the clock) with the machine side around it,
//! its waiters and observers, and what the session's events mean to them.
//!
//! Everything here runs under the mirror's lock except telling observers and answering
//! callers, which [`Effects`] does after the lock is released.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use crate::machine::observers::{ObserverSnapshot, Observers};
use crate::machine::waiters::WaiterSet;
use crate::machine::{ClockChange, MutationError, Outcome, Schema};
use crate::proto::message::Payload;
use crate::proto::session::{ClientEvent, ClientSession, HandshakeError};

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
    pub fn new(session: ClientSession<Pending>, schema: Arc<Schema>) -> Replica {
        Replica {
            waiters: WaiterSet::new(schema.len()),
            remote_waits: HashMap::new(),
            session,
            schema,
            observers: Observers::default(),
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
                        self.schema = schema.clone();
                    }
                    let ticks = self.session.ticks();
                    self.waiters.clock_changed(ticks, changed.iter().copied());
                    // A snapshot can move the queue tick alone. Growth rides along with the
                    // next change, but a queue tick that went back (the source restarted)
                    // must reach a server serving this mirror now, or its clients keep a
                    // queue tick the source no longer has.
                    let queue_tick = self.session.queue_tick();
                    let went_back = queue_tick < self.told_queue_tick;
                    if self.observers.is_empty() {
                        self.told_queue_tick = queue_tick;
                    } else if !changed.is_empty() || went_back {
                        self.told_queue_tick = queue_tick;
                        effects.notices.push(Notice {
                            before,
                            after: ticks.to_vec(),
                            changed,
                            queue_tick,
                            observers: self.observers.snapshot(),
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
    /// Tells observers and callers, in the order the changes happened; payloads go to
    /// `payloads`.
    pub fn apply(self, payloads: &tokio::sync::broadcast::Sender<Payload>) {
        for notice in self.notices {
            notice.tell();
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::proto::message::{Granted, Snapshot, Welcome};
    use crate::proto::session::{ClientConfig, Moment};
    use crate::proto::{FrameConfig, Message, encode_frame};

    fn schema() -> Arc<Schema> {
        let def = crate::machine::SchemaDef::of_states(vec![crate::machine::StateDef::new("A")]);
        Arc::new(Schema::new(def).expect("valid"))
    }

    fn frame(message: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&FrameConfig::default(), message, &mut out);
        out
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
        let config = ClientConfig {
            client_id: "mid".into(),
            source: String::new(),
            compression: false,
            track: None,
            token: None,
            max_frame: crate::proto::frame::DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        };
        let schema = schema();
        let mut replica = Replica::new(ClientSession::new(config, Some(schema.clone())), schema);
        let told = Arc::new(Told::default());
        replica.observers.add(told.clone());
        let stats = MirrorStats::default();
        let drain = |replica: &mut Replica| {
            let mut effects = Effects::default();
            replica.drain("mid", &stats, &mut effects);
            effects.apply(&tokio::sync::broadcast::channel(1).0);
        };
        replica.session.connect(Moment::ZERO);
        let welcome = Welcome {
            ancestry: vec!["root".into()],
            schema: None,
            snapshot: Snapshot {
                ticks: vec![1, 0],
                queue_tick: 5,
            },
            granted: Granted::default(),
            parent_id: None,
            tags: Vec::new(),
        };
        replica
            .session
            .handle_bytes(&frame(&Message::Welcome(welcome)), Moment::ZERO);
        drain(&mut replica);
        // The source restarted: the same ticks, an earlier queue tick.
        let snapshot = Snapshot {
            ticks: vec![1, 0],
            queue_tick: 2,
        };
        let resync = Message::Snapshot { id: 0, snapshot };
        replica.session.handle_bytes(&frame(&resync), Moment::ZERO);
        drain(&mut replica);
        assert_eq!(*told.0.lock().expect("not poisoned"), [5, 2]);
    }
}
