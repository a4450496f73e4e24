//! [`DrivenMirror`]: a mirror whose connection an outside event loop drives.
//!
//! The loop opens a transport and calls [`DrivenMirror::connected`], hands in what it reads
//! ([`DrivenMirror::handle_bytes`]), the time when [`DrivenMirror::poll_timeout`] is due
//! ([`DrivenMirror::handle_timeout`]) and the end of the transport
//! ([`DrivenMirror::handle_lost`]), and sends what [`DrivenMirror::take_transmit`] gives. A
//! mutation made through the [`StateSource`] queues bytes outside those calls: the `outbound`
//! hook tells the loop to take them. Reconnecting is the loop's: after a
//! [`MirrorEvent::Closed`] or a failed handshake it connects again when it likes, and the clock
//! stays the last one known meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use super::reply::Reply;
use crate::machine::observers::Observers;
use crate::machine::waiters::{Registration, WaiterHost, WaiterSet, make_when};
use crate::machine::{
    Args, ClockChange, Condition, ErrFuture, Mutation, MutationError, MutationFuture, Observer,
    ObserverId, Outcome, Schema, StateSource, UpstreamInfo, WaitError, When,
};
use crate::proto::message::Payload;
use crate::proto::session::{
    ClientConfig, ClientEvent, ClientSession, HandshakeError, Moment, Phase,
};

/// What the event loop (or the page) is told after an input.
#[derive(Debug)]
pub enum MirrorEvent {
    /// The handshake succeeded: the clock is the source's (`reconnect` after the first).
    Ready { reconnect: bool },
    /// The handshake failed: close the transport; a refusal may be permanent.
    HandshakeFailed(HandshakeError),
    /// The source ended the session (or broke the protocol): close the transport.
    Closed(String),
    /// A payload the source sent.
    Payload(Payload),
}

type Hook = Box<dyn Fn() + Send + Sync>;

type MutationAnswer = Result<Outcome, MutationError>;
type ErrAnswer = Result<Option<String>, MutationError>;

/// Who waits for what the session hands back.
#[derive(Debug)]
enum Pending {
    Answer(Reply<MutationAnswer>),
    Err(Reply<ErrAnswer>),
    /// A remote wait: its waiter in the mirror's waiter set.
    Wait(u64),
}

/// A mirror of a remote source over a connection driven from outside.
#[derive(Clone)]
pub struct DrivenMirror {
    shared: Arc<Shared>,
}

struct Shared {
    id: String,
    endpoint: String,
    inner: Mutex<Inner>,
    /// Called when bytes were queued outside a driver call (a mutation).
    outbound: Hook,
}

struct Inner {
    session: ClientSession<Pending>,
    schema: Arc<Schema>,
    waiters: WaiterSet,
    /// Remote waits (`when_args`) by waiter: their ids in the session.
    remote_waits: HashMap<u64, u64>,
    observers: Observers,
    last_error: Option<String>,
    reconnects: u64,
    /// The queue tick observers were last told of.
    told_queue_tick: u64,
}

/// What an input calls for once the lock is released, in the order it happened.
#[derive(Default)]
struct Effects {
    notices: Vec<Notice>,
    ancestry: Vec<(Vec<String>, crate::machine::observers::ObserverSnapshot)>,
    answers: Vec<(Reply<MutationAnswer>, MutationAnswer)>,
    errs: Vec<(Reply<ErrAnswer>, ErrAnswer)>,
    events: Vec<MirrorEvent>,
}

struct Notice {
    before: Vec<u64>,
    after: Vec<u64>,
    changed: Vec<usize>,
    queue_tick: u64,
    observers: crate::machine::observers::ObserverSnapshot,
}

impl std::fmt::Debug for DrivenMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenMirror")
            .field("id", &self.shared.id)
            .field("endpoint", &self.shared.endpoint)
            .finish()
    }
}

impl WaiterHost for Shared {
    /// A waiter was dropped before it ended; a remote one is withdrawn at the source too.
    fn cancel_waiter(&self, id: u64) {
        let withdrawn = {
            let mut inner = self.lock();
            inner.waiters.remove(id);
            match inner.remote_waits.remove(&id) {
                Some(wait) => {
                    inner.session.cancel_wait(wait);
                    true
                }
                None => false,
            }
        };
        if withdrawn {
            (self.outbound)();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl DrivenMirror {
    /// A mirror named `id` of the source `config` asks for at `endpoint` (for status displays).
    /// `schema`, when set, is the one the source must serve (else the welcome brings it).
    /// `outbound` is called whenever bytes wait to be sent after a call that was not an input.
    pub fn new(
        id: impl Into<String>,
        endpoint: impl Into<String>,
        config: ClientConfig,
        schema: Option<Arc<Schema>>,
        outbound: impl Fn() + Send + Sync + 'static,
    ) -> DrivenMirror {
        let clock_schema = schema.clone().unwrap_or_else(placeholder);
        DrivenMirror {
            shared: Arc::new(Shared {
                id: id.into(),
                endpoint: endpoint.into(),
                inner: Mutex::new(Inner {
                    waiters: WaiterSet::new(clock_schema.len()),
                    session: ClientSession::new(config, schema),
                    remote_waits: HashMap::new(),
                    schema: clock_schema,
                    observers: Observers::default(),
                    last_error: None,
                    reconnects: 0,
                    told_queue_tick: 0,
                }),
                outbound: Box::new(outbound),
            }),
        }
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.shared.lock().session.phase()
    }

    /// Why the last connection failed or ended, until the next one is ready.
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }

    /// When [`DrivenMirror::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Moment> {
        self.shared.lock().session.poll_timeout()
    }

    /// Takes the bytes to send, in order (appended to `out`).
    pub fn take_transmit(&self, out: &mut Vec<u8>) {
        let mut inner = self.shared.lock();
        if out.is_empty() {
            inner.session.take_transmit(out);
        } else {
            let mut taken = Vec::new();
            inner.session.take_transmit(&mut taken);
            out.extend_from_slice(&taken);
        }
    }

    /// The transport is up: the hello is queued.
    pub fn connected(&self, now: Moment) -> Vec<MirrorEvent> {
        self.input(|session| session.connect(now))
    }

    /// Bytes read from the transport.
    pub fn handle_bytes(&self, bytes: &[u8], now: Moment) -> Vec<MirrorEvent> {
        self.input(|session| session.handle_bytes(bytes, now))
    }

    /// The time, when [`DrivenMirror::poll_timeout`] was due (or later).
    pub fn handle_timeout(&self, now: Moment) -> Vec<MirrorEvent> {
        self.input(|session| session.handle_timeout(now))
    }

    /// The transport ended (`reason` from it); waiting mutations fail with `Disconnected`.
    pub fn handle_lost(&self, reason: String) -> Vec<MirrorEvent> {
        self.input(|session| session.handle_lost(reason))
    }

    /// Says goodbye (when connected; take the bytes) and ends the mirror: waits end with
    /// `Disposed`, mutations fail.
    pub fn close(&self) -> Vec<MirrorEvent> {
        let events = self.input(ClientSession::close);
        self.shared.lock().waiters.close();
        events
    }

    fn input(&self, f: impl FnOnce(&mut ClientSession<Pending>)) -> Vec<MirrorEvent> {
        let mut effects = Effects::default();
        {
            let mut inner = self.shared.lock();
            f(&mut inner.session);
            inner.drain(&self.shared.id, &mut effects);
        }
        effects.apply()
    }
}

impl Inner {
    /// Takes the session's events: waiters and the schema now, the rest gathered for later.
    fn drain(&mut self, id: &str, effects: &mut Effects) {
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::Ready { reconnect } => {
                    self.last_error = None;
                    if reconnect {
                        self.reconnects += 1;
                    }
                    effects.events.push(MirrorEvent::Ready { reconnect });
                }
                ClientEvent::HandshakeFailed(e) => {
                    self.last_error = Some(e.to_string());
                    effects.events.push(MirrorEvent::HandshakeFailed(e));
                }
                ClientEvent::ClockChanged {
                    before,
                    changed,
                    schema_changed,
                    ..
                } => {
                    if schema_changed && let Some(schema) = self.session.schema() {
                        if schema.extends(&self.schema) {
                            // Enlarged: every position keeps its state, every waiter stays.
                            self.waiters.grow(schema.len());
                        } else {
                            // Positions mean other states now: waits on the old ones end.
                            self.waiters.reset(schema.len());
                        }
                        self.schema = schema.clone();
                    }
                    let ticks = self.session.ticks();
                    self.waiters.clock_changed(ticks, changed.iter().copied());
                    let queue_tick = self.session.queue_tick();
                    let went_back = queue_tick < self.told_queue_tick;
                    if !self.observers.is_empty() && (!changed.is_empty() || went_back) {
                        effects.notices.push(Notice {
                            before,
                            after: ticks.to_vec(),
                            changed,
                            queue_tick,
                            observers: self.observers.snapshot(),
                        });
                    }
                    self.told_queue_tick = queue_tick;
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
                ClientEvent::Payload(payload) => effects.events.push(MirrorEvent::Payload(payload)),
                ClientEvent::Ancestry(upstream) => {
                    let mine = std::iter::once(id.to_owned()).chain(upstream).collect();
                    effects.ancestry.push((mine, self.observers.snapshot()));
                }
                ClientEvent::Resync => {}
                ClientEvent::Closed(reason) => {
                    self.last_error = Some(reason.clone());
                    effects.events.push(MirrorEvent::Closed(reason));
                }
            }
        }
    }
}

impl Effects {
    /// Tells observers, then callers; gives the driver its events.
    fn apply(self) -> Vec<MirrorEvent> {
        for notice in self.notices {
            notice.observers.clock_changed(&ClockChange {
                before: &notice.before,
                after: &notice.after,
                changed: &notice.changed,
                queue_tick: notice.queue_tick,
                transition: None,
            });
        }
        for (ancestry, observers) in &self.ancestry {
            observers.ancestry_changed(ancestry);
        }
        for (reply, result) in self.answers {
            reply.send(result);
        }
        for (reply, result) in self.errs {
            reply.send(result);
        }
        self.events
    }
}

impl StateSource for DrivenMirror {
    fn id(&self) -> &str {
        &self.shared.id
    }

    fn schema(&self) -> Arc<Schema> {
        self.shared.lock().schema.clone()
    }

    fn clock(&self) -> Vec<u64> {
        self.shared.lock().session.ticks().to_vec()
    }

    fn tick_at(&self, idx: usize) -> u64 {
        self.shared
            .lock()
            .session
            .ticks()
            .get(idx)
            .copied()
            .unwrap_or(0)
    }

    fn queue_tick(&self) -> u64 {
        self.shared.lock().session.queue_tick()
    }

    fn wait(&self, condition: Condition) -> When {
        let host = Arc::downgrade(&self.shared) as Weak<dyn WaiterHost>;
        let mut inner = self.shared.lock();
        let inner = &mut *inner;
        make_when(
            host,
            inner.waiters.register(inner.session.ticks(), condition),
        )
    }

    /// Asked of the source, which waits (through every hop up to the root) and answers;
    /// dropping the future withdraws the wait up there too.
    fn when_args(&self, state: &str, args: Args) -> When {
        let host = Arc::downgrade(&self.shared) as Weak<dyn WaiterHost>;
        let when = {
            let mut inner = self.shared.lock();
            let inner = &mut *inner;
            let Some(idx) = inner.schema.index(state) else {
                return When::failed(WaitError::UnknownState(state.to_owned()));
            };
            let registration = inner.waiters.register_remote();
            if let Registration::Pending(waiter, _) = &registration {
                match inner.session.when_args(idx, args, Pending::Wait(*waiter)) {
                    Ok(wait) => {
                        inner.remote_waits.insert(*waiter, wait);
                    }
                    Err(e) => inner.waiters.finish(*waiter, Err(e)),
                }
            }
            make_when(host, registration)
        };
        (self.shared.outbound)();
        when
    }

    /// Asked of the source; fails with `Disconnected` while the mirror is not connected.
    fn err(&self) -> ErrFuture {
        let reply = Reply::default();
        let asked = self.shared.lock().session.err(Pending::Err(reply.clone()));
        match asked {
            Ok(()) => {
                (self.shared.outbound)();
                Box::pin(reply.wait())
            }
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn mutate(&self, mutation: Mutation) -> MutationFuture {
        let reply = Reply::default();
        let queued = self
            .shared
            .lock()
            .session
            .mutate(mutation, Some(Pending::Answer(reply.clone())));
        match queued {
            Ok(()) => {
                (self.shared.outbound)();
                Box::pin(reply.wait())
            }
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn observe(&self, observer: Arc<dyn Observer>) -> (ObserverId, Vec<u64>) {
        let mut inner = self.shared.lock();
        let id = inner.observers.add(observer);
        (id, inner.session.ticks().to_vec())
    }

    fn unobserve(&self, id: ObserverId) -> bool {
        self.shared.lock().observers.remove(id)
    }

    fn ancestry(&self) -> Vec<String> {
        let inner = self.shared.lock();
        std::iter::once(self.shared.id.clone())
            .chain(inner.session.upstream().iter().cloned())
            .collect()
    }

    fn upstream(&self) -> Option<UpstreamInfo> {
        let inner = self.shared.lock();
        Some(UpstreamInfo {
            endpoint: self.shared.endpoint.clone(),
            state: match inner.session.phase() {
                Phase::Ready => "ready",
                Phase::Handshake => "connecting",
                Phase::Idle | Phase::Closed => "disconnected",
            },
            last_error: inner.last_error.clone(),
            reconnects: inner.reconnects,
        })
    }
}

/// The schema of a mirror that has not heard its source yet: `Exception` alone, no ticks.
fn placeholder() -> Arc<Schema> {
    Arc::new(
        Schema::new(crate::machine::SchemaDef::default())
            .expect("a schema of Exception alone is valid"),
    )
}
