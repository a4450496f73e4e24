//! What a replica's input calls for once its lock is released: observers (and so final
//! handlers), tracers and the log told of each clock change, callers answered, and the events
//! its pump acts on, in the order they happened.

use std::sync::Arc;

use futures_channel::oneshot;

use crate::machine::log::MachineLog;
use crate::machine::observers::ObserverSnapshot;
use crate::machine::tracer::{change_steps, wanted};
use crate::machine::{ClockChange, Outcome, Schema, StateSource, Tracer, TransitionTrace};
use crate::proto::message::Payload;
use crate::proto::session::HandshakeError;

use super::state::{ErrAnswer, MutationAnswer};

/// What the replica's pump (a connection task, a page's event loop) is told after an input.
#[derive(Debug)]
pub enum ReplicaEvent {
    /// The handshake succeeded: the clock is the source's (`reconnect` after the first).
    Ready {
        /// Whether this is a session after the first.
        reconnect: bool,
    },
    /// The handshake failed: close the transport; a refusal may be permanent.
    HandshakeFailed(HandshakeError),
    /// The source ended the session (or broke the protocol): close the transport.
    Closed(String),
    /// A payload the source sent.
    Payload(Payload),
}

/// What the session's events call for once the lock is released.
#[derive(Default)]
pub struct Effects {
    pub(super) notices: Vec<Notice>,
    pub(super) answers: Vec<(oneshot::Sender<MutationAnswer>, MutationAnswer)>,
    pub(super) errs: Vec<(oneshot::Sender<ErrAnswer>, ErrAnswer)>,
    /// The replica's new ancestry (its id first), and the observers to tell.
    pub(super) ancestry: Option<(Vec<String>, ObserverSnapshot)>,
    /// Events for the pump, in order.
    pub events: Vec<ReplicaEvent>,
    /// Diffs applied and resyncs asked for (a pump's counters).
    pub diffs: u64,
    pub resyncs: u64,
}

impl Effects {
    /// Tells observers, tracers and the log of `source` (the replica's handle), then callers,
    /// in the order the changes happened. What is left is the pump's.
    pub(super) fn apply(&mut self, source: &dyn StateSource, log: &MachineLog) {
        for notice in self.notices.drain(..) {
            notice.tell(source, log);
        }
        if let Some((ancestry, observers)) = self.ancestry.take() {
            observers.ancestry_changed(&ancestry);
        }
        for (answer, result) in self.answers.drain(..) {
            // A caller that gave up is not waiting.
            let _ = answer.send(result);
        }
        for (answer, result) in self.errs.drain(..) {
            let _ = answer.send(result);
        }
    }
}

/// A clock change to tell observers, tracers and the log about, outside the lock.
pub(super) struct Notice {
    pub before: Vec<u64>,
    pub after: Vec<u64>,
    pub changed: Vec<usize>,
    pub queue_tick: u64,
    pub schema: Arc<Schema>,
    /// The schema before, when the change came with a new one.
    pub old_schema: Option<Arc<Schema>>,
    pub observers: ObserverSnapshot,
    pub tracers: Arc<Vec<(u64, Arc<dyn Tracer>)>>,
}

impl Notice {
    /// As asyncmachine's network machine applies a clock: tracers' `transition_init` and
    /// `transition_start`, the observers (final handlers among them), `transition_end`.
    fn tell(self, source: &dyn StateSource, log: &MachineLog) {
        let id = source.id();
        let tracers = self.tracers.iter().map(|(_, t)| t);
        if let Some(old) = &self.old_schema {
            tracers.clone().for_each(|t| t.schema_change(source, old));
        }
        let traced = !self.changed.is_empty() && wanted(&self.tracers);
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
        log.changes(id, &self.schema, &self.after, &self.changed);
        self.observers.clock_changed(&ClockChange {
            source,
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
