//! What a mirror asks its source because only the source can answer it: waits on the
//! arguments of activations (`WhenArgs`) and the last error (`ErrRequest`).
//!
//! A remote wait outlives connections: it is kept while the link is down and sent again on the
//! next connection once its welcome is in, so a wait survives a link flap (an activation during
//! the flap itself is not seen: the source had nobody waiting then). It ends only with its
//! answer, its withdrawal, the session's close, or a schema change that moves state positions.
//! A withdrawn wait keeps its id until the server's answer to the withdrawal comes (or the
//! connection ends), so that a late answer cannot resolve a newer wait with the same id.
//!
//! The last error is a request like a mutation: it fails with the connection.

use tracing::debug;

use super::{ClientEvent, ClientSession, Phase, Request};
use crate::machine::{Args, MutationError, Schema, WaitError};
use crate::printable::printable;
use crate::proto::Message;
use crate::proto::message::{ErrResult, WaitResult, WhenArgsRequest};

/// A remote wait, as the session keeps it across connections.
#[derive(Debug)]
pub(super) struct RemoteWait<P> {
    state: u32,
    args: Args,
    /// `None` once withdrawn: the answer is awaited only to free the id.
    pending: Option<P>,
    /// Sent on the current connection.
    sent: bool,
}

impl<P> ClientSession<P> {
    /// Remote waits pending (withdrawn ones whose answer is still due included).
    pub fn waits(&self) -> usize {
        self.waits.in_flight()
    }

    /// Waits at the source for an activation of the state at `state` with `args`; the end
    /// comes back as [`ClientEvent::WaitEnded`] with `pending`. Sent now when connected, else
    /// once the next connection is ready. Returns the wait's id, for
    /// [`ClientSession::cancel_wait`].
    pub fn when_args(&mut self, state: usize, args: Args, pending: P) -> Result<u64, WaitError> {
        if self.phase == Phase::Closed {
            return Err(WaitError::Disposed);
        }
        let Some(name) = self.schema.as_ref().and_then(|s| s.state(state)) else {
            return Err(WaitError::UnknownState(format!("position {state}")));
        };
        debug!(state = %name.name, "remote wait");
        let wait = RemoteWait {
            state: state as u32,
            args,
            pending: Some(pending),
            sent: false,
        };
        let id = self.waits.insert(wait).ok_or_else(|| {
            WaitError::Refused(format!(
                "{} waits of this mirror are pending, its limit",
                super::super::requests::MAX_IN_FLIGHT
            ))
        })?;
        if self.phase == Phase::Ready {
            self.send_wait(id);
        }
        Ok(id)
    }

    /// Withdraws a wait: nothing more is told of it. A wait the server has is withdrawn there
    /// too (its id stays taken until the server confirms).
    pub fn cancel_wait(&mut self, id: u64) {
        let Some(wait) = self.waits.get_mut(id) else {
            return;
        };
        if wait.pending.take().is_none() {
            return;
        }
        if wait.sent && self.phase == Phase::Ready {
            self.send(&Message::WhenArgsCancel { id });
        } else {
            self.waits.take(id);
        }
    }

    /// Asks the source for its last error; the answer comes back as
    /// [`ClientEvent::ErrAnswered`] with `pending`.
    pub fn err(&mut self, pending: P) -> Result<(), MutationError> {
        self.check_ready()?;
        let id = self.take_id(Request::Err(pending))?;
        self.send(&Message::ErrRequest { id });
        Ok(())
    }

    /// A server's answer to a wait.
    pub(super) fn wait_done(&mut self, id: u64, result: WaitResult) {
        let Some(wait) = self.waits.take(id) else {
            debug!(id, "an answer to no wait of this mirror");
            return;
        };
        let Some(pending) = wait.pending else {
            return;
        };
        let result = match result {
            WaitResult::Done => Ok(()),
            WaitResult::Disposed => Err(WaitError::Disposed),
            WaitResult::Canceled => Err(WaitError::Canceled),
            // Passed down as the reason alone and wrapped once, here, as refusals of
            // mutations are.
            WaitResult::Refused(reason) => Err(WaitError::Refused(printable(&reason).into())),
        };
        self.events
            .push_back(ClientEvent::WaitEnded { pending, result });
    }

    /// A server's answer to a last-error request.
    pub(super) fn err_answered(&mut self, id: u64, result: ErrResult) {
        match self.requests.take(id) {
            Some(Request::Err(pending)) => {
                let result = match result {
                    ErrResult::NoError => Ok(None),
                    ErrResult::Error(error) => Ok(Some(error)),
                    ErrResult::Refused(reason) => {
                        Err(MutationError::Refused(printable(&reason).into()))
                    }
                };
                self.events
                    .push_back(ClientEvent::ErrAnswered { pending, result });
            }
            Some(other) => {
                // Answered wrongly, the request still ends.
                self.fail_request(other, MutationError::Disconnected);
                self.end(format!("the server answered request {id} with an ErrReply"));
            }
            None => debug!(id, "an ErrReply to no request of this mirror"),
        }
    }

    /// A new connection: withdrawn waits are gone with the old one, the others go out again
    /// once the welcome is in.
    pub(super) fn reset_waits(&mut self) {
        self.waits.retain(|_, wait| {
            wait.sent = false;
            wait.pending.is_some()
        });
    }

    /// The welcome is in: every wait goes out on this connection.
    pub(super) fn resend_waits(&mut self) {
        let ids: Vec<u64> = self
            .waits
            .iter_mut()
            .filter(|(_, wait)| !wait.sent && wait.pending.is_some())
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            self.send_wait(id);
        }
    }

    /// The schema changed from `old`: waits keep their positions only when the new schema
    /// extends the old one (its states come first, in the same order); otherwise a position
    /// may name another state now, and every wait ends with [`WaitError::Disposed`].
    pub(super) fn schema_moved(&mut self, old: Option<&Schema>, new: &Schema) {
        if old.is_none_or(|old| new.extends(old)) {
            return;
        }
        let ids: Vec<u64> = self
            .waits
            .iter_mut()
            .filter(|(_, wait)| wait.pending.is_some())
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            let Some(wait) = self.waits.get_mut(id) else {
                continue;
            };
            let (pending, sent) = (wait.pending.take(), wait.sent);
            if sent && self.phase == Phase::Ready {
                self.send(&Message::WhenArgsCancel { id });
            } else {
                self.waits.take(id);
            }
            if let Some(pending) = pending {
                self.events.push_back(ClientEvent::WaitEnded {
                    pending,
                    result: Err(WaitError::Disposed),
                });
            }
        }
    }

    /// The session closed for good: every wait ends with [`WaitError::Disposed`].
    pub(super) fn dispose_waits(&mut self) {
        for wait in self.waits.take_all() {
            if let Some(pending) = wait.pending {
                self.events.push_back(ClientEvent::WaitEnded {
                    pending,
                    result: Err(WaitError::Disposed),
                });
            }
        }
    }

    fn send_wait(&mut self, id: u64) {
        let Some(wait) = self.waits.get_mut(id) else {
            return;
        };
        wait.sent = true;
        let request = WhenArgsRequest {
            id,
            state: wait.state,
            args: wait.args.clone(),
        };
        self.send(&Message::WhenArgs(request));
    }
}
