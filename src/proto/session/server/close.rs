//! Why a server's session ended, and the last word each reason calls for.

use std::time::Duration;

use crate::proto::Message;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client said `Bye`.
    PeerBye,
    /// The client closed the connection.
    PeerClosed,
    /// The client sent `Error` (its message, escaped).
    PeerError(String),
    /// The client broke the protocol (what it did).
    Protocol(String),
    /// The client was silent for this long (the idle timeout).
    Idle(Duration),
    /// Reading or writing the connection failed (the error).
    Io(String),
    /// The server is shutting down.
    Shutdown,
    /// Too slow for its payloads.
    Kicked,
    /// A write to the client stayed blocked for this long (the write deadline).
    WriteStalled(Duration),
    /// The source's schema is neither the one the client was given nor an enlargement of it.
    SchemaChanged,
    /// The handshake ended in a refusal or a status answer.
    Handshake,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::PeerBye => f.write_str("the client said bye"),
            CloseReason::PeerClosed => f.write_str("the client closed the connection"),
            // Quoted: the peer's words must not forge log lines.
            CloseReason::PeerError(message) => {
                write!(f, "the client reported an error: {message:?}")
            }
            CloseReason::Protocol(message) => write!(f, "protocol error: {message}"),
            CloseReason::Idle(after) => write!(f, "nothing received for {after:?}"),
            CloseReason::Io(e) => write!(f, "i/o error: {e}"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
            CloseReason::Kicked => f.write_str("too slow to keep up"),
            CloseReason::WriteStalled(after) => write!(f, "a write stalled for {after:?}"),
            CloseReason::SchemaChanged => f.write_str("the source's schema changed"),
            CloseReason::Handshake => f.write_str("the handshake was answered"),
        }
    }
}

impl CloseReason {
    /// What to tell the peer on the way out, if anything.
    pub(super) fn farewell(&self) -> Option<Message> {
        let bye = |reason: &str| {
            Some(Message::Bye {
                reason: reason.to_owned(),
            })
        };
        match self {
            CloseReason::Protocol(message) => Some(Message::Error {
                message: message.clone(),
            }),
            CloseReason::Idle(after) => bye(&format!("idle for {after:?}")),
            CloseReason::Shutdown => bye("server shutting down"),
            CloseReason::Kicked => bye("too slow to keep up; reconnect"),
            CloseReason::SchemaChanged => {
                bye("the source's schema changed; reconnect to get the new one")
            }
            _ => None,
        }
    }
}
