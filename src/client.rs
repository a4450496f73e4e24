//! One-shot client operations for tools (`am-node status`): connect, ask, read the answer,
//! close. Mirrors are for anything longer-lived.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use crate::proto::message::NodeStatus;
use crate::proto::{FrameConfig, FrameReader, Message, encode_frame};
use crate::transport::{self, Endpoint, TransportConfig, TransportError};
use crate::wire::{self, ReadError};

/// Why a one-shot request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed (address, TLS or certificate problem); its message says which.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The node accepted the connection but did not answer in time; it may be overloaded, or the
    /// endpoint is not an aRPC server.
    #[error("no answer from {endpoint} within {after:?}")]
    Timeout {
        /// The node asked.
        endpoint: Endpoint,
        /// How long the request waited.
        after: Duration,
    },
    /// The node refused the request (a wrong token, or its ACL denies status).
    #[error("{endpoint} refused: {reason}")]
    Refused {
        /// The node asked.
        endpoint: Endpoint,
        /// The node's reason, escaped.
        reason: String,
    },
    /// The peer answered with something that is not the aRPC protocol (or another version).
    #[error("{endpoint} did not answer as an aRPC server: {reason}")]
    Protocol {
        /// The node asked.
        endpoint: Endpoint,
        /// What was wrong with its answer.
        reason: String,
    },
}

/// Asks a node what it serves, who is connected, and its counters.
pub async fn fetch_status(
    endpoint: &Endpoint,
    transport: &TransportConfig,
    token: Option<String>,
    limit: Duration,
) -> Result<NodeStatus, ClientError> {
    let protocol = |reason: String| ClientError::Protocol {
        endpoint: endpoint.clone(),
        reason,
    };
    let exchange = async {
        let stream = transport::connect(endpoint, transport).await?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let config = FrameConfig::default();
        let mut out = Vec::new();
        encode_frame(&config, &Message::StatusRequest { token }, &mut out);
        wr.write_all(&out)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        wr.flush().await.map_err(|e| protocol(e.to_string()))?;
        let mut reader = FrameReader::new(config);
        let counted = AtomicU64::new(0);
        match wire::read_message(&mut rd, &mut reader, &counted).await {
            Ok(Message::Status(status)) => Ok(status),
            Ok(Message::Refused(refusal)) => Err(ClientError::Refused {
                endpoint: endpoint.clone(),
                reason: crate::printable::printable(&refusal.reason).into_owned(),
            }),
            Ok(other) => Err(protocol(format!("expected Status, got {}", other.name()))),
            Err(ReadError::Closed) => Err(protocol("the server closed the connection".into())),
            Err(ReadError::Io(e)) => Err(protocol(e.to_string())),
            Err(ReadError::Protocol(e)) => Err(protocol(e.to_string())),
        }
    };
    match timeout(limit, exchange).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            endpoint: endpoint.clone(),
            after: limit,
        }),
    }
}
