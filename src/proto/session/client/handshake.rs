//! A client session's handshake: the server's answer to the hello, and what a welcome must be
//! (a valid schema, the one the mirror expects or an enlargement of it) to open the session;
//! the source's identity it carries (ancestry, parent id, tags).

use std::sync::Arc;

use super::{ClientEvent, ClientSession, HandshakeError, Phase};
use crate::machine::Schema;
use crate::printable::printable;
use crate::proto::diff::Tracked;
use crate::proto::message::{Refusal, Welcome};
use crate::proto::session::time::Moment;
use crate::proto::{Compression, Message, with_foreign_hint};

impl<P> ClientSession<P> {
    /// The server's answer to the hello.
    pub(super) fn handle_answer(&mut self, message: Message, now: Moment) {
        match message {
            Message::Welcome(welcome) => {
                if let Err(e) = self.adopt(welcome, now) {
                    self.handshake_failed(e);
                }
            }
            Message::Refused(Refusal { kind, reason }) => {
                self.handshake_failed(HandshakeError::Refused {
                    kind,
                    reason: printable(&reason).into_owned(),
                });
            }
            other => {
                let reason = with_foreign_hint(
                    format!("expected Welcome, got {}", other.name()),
                    self.reader.opening(),
                );
                self.handshake_failed(HandshakeError::Failed(reason));
            }
        }
    }

    /// Takes a welcome in: checks its schema, applies its snapshot, opens the session.
    fn adopt(&mut self, welcome: Welcome, now: Moment) -> Result<(), HandshakeError> {
        let schema = match welcome.schema {
            Some(def) => Some(Arc::new(
                Schema::new(def).map_err(HandshakeError::BadSchema)?,
            )),
            None if self.schema.is_none() => {
                return Err(HandshakeError::Failed(
                    "the server sent no schema although the mirror has none".into(),
                ));
            }
            None => None,
        };
        // An enlargement of the expected schema keeps every state the mirror's owner expects
        // where it expects it (the source's schema grew while this mirror was away).
        if let (Some(expected), Some(found)) = (&self.expected, &schema)
            && !found.extends(expected)
        {
            return Err(HandshakeError::SchemaMismatch {
                expected: expected.names().collect::<Vec<_>>().join(", "),
                found: printable(&found.names().collect::<Vec<_>>().join(", ")).into_owned(),
            });
        }
        self.frame.compression = welcome.granted.compression.then(Compression::default);
        self.reader.set_config(self.frame);
        self.tracked = Tracked::from_granted(welcome.granted.tracked.as_deref());
        self.mutable = Tracked::from_granted(welcome.granted.mutable.as_deref());
        self.phase = Phase::Ready;
        self.last_heard = now;
        self.next_ping = now + self.config.keepalive;
        self.events.push_back(ClientEvent::Ready {
            reconnect: self.sessions > 0,
        });
        self.sessions += 1;
        self.parent_id = welcome.parent_id;
        self.tags = welcome.tags;
        self.replace(schema, &welcome.snapshot);
        self.set_upstream(welcome.ancestry);
        self.resend_waits();
        // Mutations that waited for the link (or whose connection ended unanswered) go out
        // now, in the order they were made.
        self.send_waiting();
        Ok(())
    }
}
