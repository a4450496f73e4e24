//! Mutations that outlive a broken link (PROTOCOL.md, "Retries and exactly once"): each
//! mutation that wants a reply gets a key; while the link is down it waits (bounded) and goes
//! out when the session is ready again, in the order it was made; one sent on a connection that
//! ended unanswered goes out again with the same key; one unanswered at the deadline fails with
//! `Unreachable`. The server's record of keys makes the repeats run once.

use std::collections::VecDeque;
use std::time::Duration;

use super::{ClientEvent, ClientSession, Request};
use crate::machine::{MutationError, MutationKey};
use crate::proto::Message;
use crate::proto::message::MutateRequest;
use crate::proto::session::Moment;

/// How a mirror's mutations outlive a broken link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long a mutation may wait for the link, counted from when it was made; zero fails a
    /// mutation at once while not connected (and one in flight when its connection ends).
    pub deadline: Duration,
    /// Most mutations waiting for the link at once; past it a mutation fails at once.
    pub max_waiting: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(5),
            max_waiting: 1024,
        }
    }
}

impl RetryPolicy {
    /// No retries: a mutation fails at once when the link is down.
    pub const NONE: RetryPolicy = RetryPolicy {
        deadline: Duration::ZERO,
        max_waiting: 0,
    };

    fn enabled(&self) -> bool {
        !self.deadline.is_zero() && self.max_waiting > 0
    }
}

/// What a session's retries did, for counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Mutations sent again after their connection ended unanswered.
    pub retried: u64,
    /// Mutations that waited for the link and went out when it was back.
    pub delayed: u64,
    /// Mutations that failed at the deadline.
    pub expired: u64,
}

/// A mutation sent and not yet answered, kept to send again.
#[derive(Debug)]
pub(super) struct InFlight<P> {
    pub pending: P,
    pub request: MutateRequest,
    /// When it was made, for the deadline.
    pub made: Moment,
    /// Its place in the order mutations were made.
    pub order: u64,
}

/// A mutation waiting for the link.
#[derive(Debug)]
pub(super) struct Waiting<P> {
    flight: InFlight<P>,
    /// It went out before, on a connection that ended.
    resent: bool,
}

/// The retry state of a session.
#[derive(Debug)]
pub(super) struct Retries<P> {
    pub policy: RetryPolicy,
    /// Keys are `origin` (the client id), `epoch`, and the next of these.
    epoch: u64,
    next_seq: u64,
    next_order: u64,
    waiting: VecDeque<Waiting<P>>,
    pub stats: RetryStats,
}

impl<P> Retries<P> {
    pub fn new(policy: RetryPolicy, epoch: u64) -> Self {
        Retries {
            policy,
            epoch,
            next_seq: 1,
            next_order: 0,
            waiting: VecDeque::new(),
            stats: RetryStats::default(),
        }
    }

    /// When the first waiting mutation's deadline comes.
    pub fn next_deadline(&self) -> Option<Moment> {
        let deadline = self.policy.deadline;
        self.waiting.iter().map(|w| w.flight.made + deadline).min()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

impl<P> ClientSession<P> {
    /// Queues a mutation made at `now`. With `pending`, its answer comes back as
    /// [`ClientEvent::Answered`], and with retries on it has a key and outlives a broken link:
    /// while not connected it waits (bounded by the policy) and goes out when the session is
    /// ready again. Without `pending`, no answer is asked for (`sync` fetches the clock after)
    /// and it is sent only on a ready session.
    pub fn mutate(
        &mut self,
        mutation: crate::machine::Mutation,
        pending: Option<P>,
        now: Moment,
    ) -> Result<(), MutationError> {
        if self.phase == super::Phase::Closed {
            return Err(MutationError::Disposed);
        }
        let len = self.ticks.len();
        if let Some(&bad) = mutation.states.iter().find(|&&s| s >= len) {
            return Err(MutationError::BadIndex(bad));
        }
        let ready = self.phase == super::Phase::Ready;
        let Some(pending) = pending else {
            self.check_ready()?;
            self.send(&Message::Mutate(MutateRequest {
                id: 0,
                kind: mutation.kind,
                states: mutation.states.iter().map(|&s| s as u32).collect(),
                args: mutation.args,
                key: mutation.key,
            }));
            return Ok(());
        };
        let retries = &mut self.retries;
        if !ready && !retries.policy.enabled() {
            return Err(MutationError::Disconnected);
        }
        if !ready && retries.waiting.len() >= retries.policy.max_waiting {
            return Err(MutationError::RetryQueueFull {
                waiting: retries.waiting.len(),
            });
        }
        // A forwarded mutation keeps the key its first mirror gave it; a mirror that retries
        // gives one to its own (one that does not retry needs none).
        let key = mutation.key.or_else(|| {
            retries.policy.enabled().then(|| {
                let seq = retries.next_seq;
                retries.next_seq += 1;
                MutationKey {
                    origin: self.config.client_id.clone(),
                    epoch: retries.epoch,
                    seq,
                }
            })
        });
        let order = retries.next_order;
        retries.next_order += 1;
        let flight = InFlight {
            pending,
            request: MutateRequest {
                id: 0,
                kind: mutation.kind,
                states: mutation.states.iter().map(|&s| s as u32).collect(),
                args: mutation.args,
                key,
            },
            made: now,
            order,
        };
        if ready {
            self.send_flight(flight).map_err(|(e, _)| e)
        } else {
            self.retries.waiting.push_back(Waiting {
                flight,
                resent: false,
            });
            Ok(())
        }
    }

    /// Sends a mutation on the ready session under a new request id; at the limit of requests
    /// in flight, hands its caller back with the error.
    fn send_flight(&mut self, flight: InFlight<P>) -> Result<(), (MutationError, P)> {
        let full = MutationError::QueueFull {
            limit: super::super::requests::MAX_IN_FLIGHT,
        };
        if self.requests.in_flight() >= super::super::requests::MAX_IN_FLIGHT {
            return Err((full, flight.pending));
        }
        let request = flight.request.clone();
        let Some(id) = self.requests.insert(Request::Mutation(flight)) else {
            // Room was checked just above; nothing to send without an id.
            return Ok(());
        };
        if let Some(Request::Mutation(kept)) = self.requests.get_mut(id) {
            kept.request.id = id;
        }
        self.send(&Message::Mutate(MutateRequest { id, ..request }));
        Ok(())
    }

    /// The session is ready: the mutations that waited go out, those sent before first.
    pub(super) fn send_waiting(&mut self) {
        let waiting = std::mem::take(&mut self.retries.waiting);
        for Waiting { flight, resent } in waiting {
            if resent {
                self.retries.stats.retried += 1;
            } else {
                self.retries.stats.delayed += 1;
            }
            if let Err((error, pending)) = self.send_flight(flight) {
                self.events.push_back(ClientEvent::Answered {
                    pending,
                    result: Err(error),
                });
            }
        }
    }

    /// A connection ended: mutations in flight wait for the next one (with retries on) or
    /// fail. `Sync` and `err` requests fail either way.
    pub(super) fn requeue_or_fail(&mut self, error: MutationError) {
        let mut back = Vec::new();
        for request in self.requests.take_all() {
            match request {
                Request::Mutation(flight) if self.retries.policy.enabled() => back.push(flight),
                other => self.fail_request(other, error.clone()),
            }
        }
        for flight in back {
            self.retries.waiting.push_back(Waiting {
                flight,
                resent: true,
            });
        }
        self.retries
            .waiting
            .make_contiguous()
            .sort_by_key(|w| w.flight.order);
    }

    /// Fails every waiting mutation (the session closed).
    pub(super) fn fail_waiting(&mut self, error: MutationError) {
        for Waiting { flight, .. } in std::mem::take(&mut self.retries.waiting) {
            self.events.push_back(ClientEvent::Answered {
                pending: flight.pending,
                result: Err(error.clone()),
            });
        }
    }

    /// The schema changed and moved states: the waiting mutations hold positions of the old
    /// one, which now name other states, so none goes out; each fails.
    pub(super) fn fail_moved(&mut self) {
        for Waiting { flight, resent } in std::mem::take(&mut self.retries.waiting) {
            self.events.push_back(ClientEvent::Answered {
                pending: flight.pending,
                result: Err(MutationError::SchemaMoved {
                    sent_before: resent,
                }),
            });
        }
    }

    /// Waiting mutations past their deadline fail with `Unreachable`.
    pub(super) fn expire_waiting(&mut self, now: Moment) {
        let deadline = self.retries.policy.deadline;
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries.waiting)
            .into_iter()
            .partition(|w| now >= w.flight.made + deadline);
        self.retries.waiting = kept.into();
        for Waiting { flight, .. } in expired {
            self.retries.stats.expired += 1;
            self.events.push_back(ClientEvent::Answered {
                pending: flight.pending,
                result: Err(MutationError::Unreachable(deadline)),
            });
        }
    }

    /// What the retries did so far.
    pub fn retry_stats(&self) -> RetryStats {
        self.retries.stats
    }

    /// Mutations waiting for the link now.
    pub fn waiting_mutations(&self) -> usize {
        self.retries.waiting()
    }
}
