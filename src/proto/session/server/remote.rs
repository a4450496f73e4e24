//! The parts of the Api a client asks its source for because only the source can answer
//! them: waits on the arguments of activations (`WhenArgs`) and the last error (`ErrRequest`).
//!
//! A wait is long-lived, so unlike a mutation it does not hold up the client's next message:
//! the session hands it out as [`ServerEvent::WhenArgs`] with a key of its own, keeps the
//! client's id until the driver's result (or the client's `WhenArgsCancel`) comes, and answers
//! each wait exactly once. The key tells a result from a late one of an earlier wait that had
//! the same id. Waits are bounded per client ([`Limits::max_remote_waits`]): past the bound a
//! wait is refused with a reason, and a client that sends as many refused waits again without
//! any of its waits ending is taken as hostile and disconnected.
//!
//! The last error is asked like a mutation runs: the session reads nothing more from the
//! client until the driver's answer, so answers keep the order of the requests.
//!
//! Access: a client waits only on states it sees (its tracked states, which the server's `see`
//! rule narrows), and reads the last error only when it sees `Exception`.
//!
//! [`Limits::max_remote_waits`]: crate::proto::config::Limits::max_remote_waits

use std::sync::atomic::Ordering;

use tracing::info;

use super::{ClockFeed, CloseReason, Phase, ServerEvent, ServerSession};
use crate::machine::WaitError;
use crate::proto::message::{ErrResult, Message, WaitResult, WhenArgsRequest};
use crate::proto::session::time::Moment;

impl ServerSession {
    /// A client's wait on an activation with arguments.
    pub(super) fn handle_when_args(&mut self, request: WhenArgsRequest, feed: &dyn ClockFeed) {
        let limit = self.config.limits.max_remote_waits;
        let Phase::Ready(client) = &mut self.phase else {
            return;
        };
        let WhenArgsRequest { id, state, args } = request;
        if id == 0 {
            return self.close(CloseReason::Protocol(
                "WhenArgs with id 0: a wait is always answered, give it an id".into(),
            ));
        }
        if client.waits.contains_key(&id) {
            return self.close(CloseReason::Protocol(format!(
                "WhenArgs id {id} is already waiting; an id is free again once its WhenArgsDone came"
            )));
        }
        // Positions of another schema would name other states (an enlarged one keeps them).
        if !super::schema_fits(&client.schema, feed) {
            return self.close(CloseReason::SchemaChanged);
        }
        let refusal = if state as usize >= client.schema.len() {
            Some(format!(
                "state {state} is outside the schema of {} states",
                client.schema.len()
            ))
        } else if !client.tracked.contains(state as usize) {
            self.stats.refusals.fetch_add(1, Ordering::Relaxed);
            Some(format!(
                "client {:?} may not see state {}",
                client.id,
                client.schema.name(state as usize)
            ))
        } else if client.waits.len() >= limit {
            client.waits_refused += 1;
            if client.waits_refused > limit {
                let message = format!(
                    "{} waits refused for the limit of {limit} pending waits, and more come; \
                     wait for fewer at once",
                    client.waits_refused
                );
                return self.close(CloseReason::Protocol(message));
            }
            Some(format!(
                "{limit} waits of this client are pending, the server's limit; withdraw some \
                 or wait for fewer at once"
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            info!(client = %client.id, %reason, "remote wait refused");
            return self.send(&Message::WhenArgsDone {
                id,
                result: WaitResult::Refused(reason),
            });
        }
        let wait = self.next_wait;
        self.next_wait += 1;
        client.waits.insert(id, wait);
        self.events.push_back(ServerEvent::WhenArgs {
            id,
            wait,
            state: client.schema.name(state as usize).to_owned(),
            args,
        });
    }

    /// A client withdrew a wait: the driver drops it, the client hears `Canceled`. A wait that
    /// ended already was answered already: nothing more is said.
    pub(super) fn handle_cancel_wait(&mut self, id: u64) {
        let Phase::Ready(client) = &mut self.phase else {
            return;
        };
        let Some(wait) = client.waits.remove(&id) else {
            return;
        };
        client.waits_refused = 0;
        self.events.push_back(ServerEvent::CancelWait { wait });
        self.send(&Message::WhenArgsDone {
            id,
            result: WaitResult::Canceled,
        });
    }

    /// How a wait from [`ServerEvent::WhenArgs`] ended on the source: answered to the client,
    /// unless it withdrew the wait meanwhile.
    pub fn handle_wait_result(&mut self, id: u64, wait: u64, result: Result<(), WaitError>) {
        let Phase::Ready(client) = &mut self.phase else {
            return;
        };
        if client.waits.get(&id) != Some(&wait) {
            return;
        }
        client.waits.remove(&id);
        client.waits_refused = 0;
        let result = match result {
            Ok(()) => WaitResult::Done,
            Err(WaitError::Disposed) => WaitResult::Disposed,
            Err(WaitError::Canceled) => WaitResult::Canceled,
            Err(WaitError::Refused(reason)) => WaitResult::Refused(reason),
            Err(e @ WaitError::UnknownState(_)) => WaitResult::Refused(e.to_string()),
        };
        self.send(&Message::WhenArgsDone { id, result });
    }

    /// Remote waits of the client pending now.
    pub fn waits(&self) -> usize {
        match &self.phase {
            Phase::Ready(client) => client.waits.len(),
            _ => 0,
        }
    }

    /// A client's question for the source's last error.
    pub(super) fn handle_err_request(&mut self, id: u64) {
        let Phase::Ready(client) = &mut self.phase else {
            return;
        };
        if id == 0 {
            return self.close(CloseReason::Protocol(
                "ErrRequest with id 0: a request is always answered, give it an id".into(),
            ));
        }
        if !client.tracked.contains(client.schema.exception()) {
            self.stats.refusals.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "client {:?} may not see Exception, and so not the source's errors",
                client.id
            );
            return self.send(&Message::ErrReply {
                id,
                result: ErrResult::Refused(reason),
            });
        }
        self.running += 1;
        self.events.push_back(ServerEvent::Err { id });
    }

    /// The source's answer to a [`ServerEvent::Err`]: the last error, or why it could not be
    /// had (a mirror's source out of reach). The session reads on after it.
    pub fn handle_err_result(
        &mut self,
        id: u64,
        result: Result<Option<String>, String>,
        now: Moment,
        feed: &dyn ClockFeed,
    ) {
        if self.is_ready() {
            let result = match result {
                Ok(None) => ErrResult::NoError,
                Ok(Some(error)) => ErrResult::Error(error),
                Err(reason) => ErrResult::Refused(reason),
            };
            self.send(&Message::ErrReply { id, result });
        }
        if self.running > 0 {
            self.running -= 1;
            if self.running == 0 {
                self.read_messages(now, feed);
            }
        }
    }
}
