//! A server session's handshake: the first message (a hello or a status request), admission,
//! the source's offer decided into a welcome or a refusal, and status answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::info;

use super::{Client, CloseReason, Phase, ServerEvent, ServerSession};
use crate::machine::Schema;
use crate::proto::acl::{admit, admit_status};
use crate::proto::handshake::{Accepted, Offer, decide};
use crate::proto::message::{NodeStatus, Refusal, RefusalKind};
use crate::proto::session::ClockFeed;
use crate::proto::session::cache::{Versioned, options_key};
use crate::proto::session::time::Moment;
use crate::proto::{Message, with_foreign_hint};

impl ServerSession {
    /// The first message of a connection.
    pub(super) fn handle_first(&mut self, message: Message, now: Moment) {
        match message {
            Message::Hello(mut hello) => {
                if let Some(identity) = &self.identity
                    && *identity != hello.client_id
                {
                    info!(claimed = ?hello.client_id, %identity, "client id taken from its certificate");
                    hello.client_id = identity.clone();
                }
                // A peer that is not let in learns nothing of what is served here, not even
                // the names.
                if let Err(refusal) =
                    admit(&self.config.acl, &hello.client_id, hello.token.as_deref())
                {
                    self.refuse(refusal);
                    return;
                }
                self.phase = Phase::Answering {
                    since: now,
                    hello: Some(Box::new(hello.clone())),
                };
                self.events.push_back(ServerEvent::Hello(hello));
            }
            Message::StatusRequest { token } => {
                self.phase = Phase::Answering {
                    since: now,
                    hello: None,
                };
                self.events.push_back(ServerEvent::StatusRequest { token });
            }
            other => {
                let reason = with_foreign_hint(
                    format!("expected Hello as the first message, got {}", other.name()),
                    self.reader.opening(),
                );
                self.refuse(Refusal {
                    kind: RefusalKind::BadHello,
                    reason,
                });
            }
        }
    }

    /// Answers a hello from [`ServerEvent::Hello`] with what the source offers: decides the
    /// handshake. `Some` is the connection's settings, to be confirmed with
    /// [`ServerSession::welcome`] once the driver has room for the client; on `None` the
    /// refusal is queued.
    pub fn accept(&mut self, offer: Offer<'_>) -> Option<Accepted> {
        let Phase::Answering {
            hello: Some(hello), ..
        } = &self.phase
        else {
            return None;
        };
        let decided = decide(
            hello,
            offer,
            &self.config.acl,
            self.config.compression.is_some(),
        );
        decided.map_err(|refusal| self.refuse(refusal)).ok()
    }

    /// Sends the welcome of an accepted handshake, then reads what the client sent after its
    /// hello: `start` is the source's clock the welcome's snapshot was taken from, `schema` the
    /// schema its positions are of.
    pub fn welcome(
        &mut self,
        accepted: Accepted,
        schema: Arc<Schema>,
        start: Versioned,
        now: Moment,
        feed: &dyn ClockFeed,
    ) {
        let Phase::Answering {
            hello: Some(hello), ..
        } = &mut self.phase
        else {
            return;
        };
        let id = std::mem::take(&mut hello.client_id);
        self.frame.compression = if accepted.compression {
            self.config.compression
        } else {
            None
        };
        self.reader.set_config(self.frame);
        // A client that asked for compression can decode it: the welcome (schema and
        // snapshot, the largest message of a session) is the first frame to benefit.
        self.send(&Message::Welcome(accepted.welcome));
        info!(client = %id, compression = accepted.compression, "client ready");
        self.phase = Phase::Ready(Box::new(Client {
            id,
            options: options_key(&accepted.tracked, &self.frame),
            tracked: accepted.tracked,
            mutable: accepted.mutable,
            schema,
            ancestry: start.ancestry,
            last: start,
            replies_pending: 0,
            last_push: Moment::ZERO,
            push_due: None,
            waits: Default::default(),
            waits_refused: 0,
        }));
        self.last_heard = now;
        self.next_ping = now + self.config.limits.keepalive;
        self.read_messages(now, feed);
    }

    /// Refuses the client with a reason a person can act on, and ends the session.
    pub fn refuse(&mut self, refusal: Refusal) {
        self.stats.refusals.fetch_add(1, Ordering::Relaxed);
        info!(kind = ?refusal.kind, reason = %refusal.reason, "refusing client");
        // A refusal goes out uncompressed: the client may not have asked for compression.
        self.frame.compression = None;
        self.send(&Message::Refused(refusal));
        self.phase = Phase::Closed(CloseReason::Handshake);
    }

    /// Answers a status request from [`ServerEvent::StatusRequest`]: `schemas` are those of
    /// every source the status shows.
    pub fn answer_status<'a>(
        &mut self,
        token: Option<&str>,
        schemas: impl IntoIterator<Item = &'a Schema>,
        status: impl FnOnce() -> NodeStatus,
    ) {
        match admit_status(&self.config.acl, schemas, self.identity.as_deref(), token) {
            Ok(()) => {
                self.send(&Message::Status(status()));
                self.phase = Phase::Closed(CloseReason::Handshake);
            }
            Err(refusal) => self.refuse(refusal),
        }
    }
}

/// The refusal of a client the server has no room for.
pub fn server_full(max_clients: usize) -> Refusal {
    Refusal {
        kind: RefusalKind::Full,
        reason: format!(
            "server is full ({max_clients} clients); try again later or use another server"
        ),
    }
}
