//! The messages of the protocol and their body encoding (serde + bincode 2, standard config:
//! varint integers, little endian). PROTOCOL.md documents each byte.
//!
//! Everything a peer sends is decoded within the bounds of [`super::limits`] (counts, names,
//! nesting) and an allocation limit that follows the body's size, and must use up its whole
//! frame body; anything else is an error for that connection, never a panic.

use serde::{Deserialize, Serialize};

use super::limits;

use crate::machine::{Args, MutationKey, MutationKind, Outcome, SchemaDef};

/// The protocol version this build speaks. A server refuses other versions with a reason.
pub const PROTOCOL_VERSION: u32 = 3;

/// One protocol message: the body of one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Client -> server: the first message of a connection.
    Hello(Hello),
    /// Server -> client: the handshake was accepted.
    Welcome(Welcome),
    /// Server -> client: the handshake was refused; the server closes the connection.
    Refused(Refusal),
    /// Server -> client: the source's clock changed.
    Diff(ClockDiff),
    /// Client -> server: a mutation of the source.
    Mutate(MutateRequest),
    /// Server -> client: the result of a mutation that asked for one.
    MutateReply(MutateReply),
    /// Client -> server: send the whole clock (after a checksum mismatch, or on demand).
    Sync {
        /// Echoed in the `Snapshot` that answers it.
        id: u64,
    },
    /// Server -> client: the whole clock, in answer to `Sync` (`id` echoes it).
    Snapshot {
        /// The `id` of the `Sync` this answers (0 when the server sends one unasked).
        id: u64,
        /// The whole tracked clock.
        snapshot: Snapshot,
    },
    /// Server -> client: named binary data from the source.
    Payload(Payload),
    /// Server -> client: the source's schema changed; the snapshot is in the new schema.
    SchemaChanged {
        /// The new schema (it only grows at its end).
        schema: SchemaDef,
        /// The clock in the new schema.
        snapshot: Snapshot,
    },
    /// Either way: keepalive probe, answered by `Pong` with the same nonce.
    Ping(u64),
    /// Either way: the answer to a `Ping`, with its nonce.
    Pong(u64),
    /// Either way: a graceful close, with a reason.
    Bye {
        /// Why the sender is closing, for logs.
        reason: String,
    },
    /// Either way: the peer broke the protocol; the sender closes the connection.
    Error {
        /// What the peer did wrong.
        message: String,
    },
    /// Client -> server, instead of `Hello`: describe the node; answered by `Status`, then the
    /// server closes.
    StatusRequest {
        /// The server's token, if it requires one (at most 16 KiB).
        #[serde(deserialize_with = "limits::token")]
        token: Option<String>,
    },
    /// Server -> client: what the node serves, who is connected, its counters.
    Status(NodeStatus),
    /// Server -> client: the source's ancestry changed (a served mirror reached its upstream,
    /// or reconnected elsewhere); keeps loop detection right all the way down a tree.
    Ancestry(#[serde(deserialize_with = "limits::ancestry")] Vec<String>),
    /// Client -> server: wait for an activation of a state with these arguments at the source
    /// (Go's `WhenArgs`), answered once by `WhenArgsDone` with the same id.
    WhenArgs(WhenArgsRequest),
    /// Server -> client: the end of a wait: it held, or why not.
    WhenArgsDone {
        /// The `WhenArgs` id this ends.
        id: u64,
        /// How the wait ended.
        result: WaitResult,
    },
    /// Client -> server: withdraw a pending wait; its `WhenArgsDone` (`Canceled`, unless it
    /// had ended already) still comes, and only then is the id free again.
    WhenArgsCancel {
        /// The `WhenArgs` id to withdraw.
        id: u64,
    },
    /// Client -> server: the source's last error (Go's `Err()`), answered by `ErrReply`.
    ErrRequest {
        /// Echoed in the `ErrReply`.
        id: u64,
    },
    /// Server -> client: the answer to `ErrRequest`.
    ErrReply {
        /// The `ErrRequest` id this answers.
        id: u64,
        /// The last error, none, or a refusal.
        result: ErrResult,
    },
}

impl Message {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::Refused(_) => "Refused",
            Message::Diff(_) => "Diff",
            Message::Mutate(_) => "Mutate",
            Message::MutateReply(_) => "MutateReply",
            Message::Sync { .. } => "Sync",
            Message::Snapshot { .. } => "Snapshot",
            Message::Payload(_) => "Payload",
            Message::SchemaChanged { .. } => "SchemaChanged",
            Message::Ping(_) => "Ping",
            Message::Pong(_) => "Pong",
            Message::Bye { .. } => "Bye",
            Message::Error { .. } => "Error",
            Message::StatusRequest { .. } => "StatusRequest",
            Message::Status(_) => "Status",
            Message::Ancestry(_) => "Ancestry",
            Message::WhenArgs(_) => "WhenArgs",
            Message::WhenArgsDone { .. } => "WhenArgsDone",
            Message::WhenArgsCancel { .. } => "WhenArgsCancel",
            Message::ErrRequest { .. } => "ErrRequest",
            Message::ErrReply { .. } => "ErrReply",
        }
    }
}

/// The client's side of the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks, [`PROTOCOL_VERSION`]; others are refused.
    pub version: u32,
    /// Who the client is; for a node, its node id (used for loop detection).
    #[serde(deserialize_with = "limits::name")]
    pub client_id: String,
    /// The name of the source wanted; empty for the server's only source.
    #[serde(deserialize_with = "limits::name")]
    pub source: String,
    /// Hash of the schema the client already has, 0 for none: the server sends the schema only
    /// when it differs.
    pub schema_hash: u64,
    /// Compression and tracking the client would like.
    pub options: WantedOptions,
    /// The server's shared secret, if it requires one (at most 16 KiB); a wrong or missing one is
    /// refused with [`RefusalKind::Auth`].
    #[serde(deserialize_with = "limits::token")]
    pub token: Option<String>,
}

/// Options the client asks for; the server grants a subset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WantedOptions {
    /// zstd on frames above the server's threshold.
    pub compression: bool,
    /// Track only these states (by name); `None` for all.
    #[serde(deserialize_with = "limits::tracked_names")]
    pub track: Option<Vec<String>>,
}

/// The server's side of an accepted handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The source's id, and the ids of the sources it mirrors, nearest first (for loop
    /// detection in trees).
    #[serde(deserialize_with = "limits::ancestry")]
    pub ancestry: Vec<String>,
    /// The schema, when the client's hash differed.
    pub schema: Option<SchemaDef>,
    /// The source's whole clock now.
    pub snapshot: Snapshot,
    /// The options in force for this connection.
    pub granted: Granted,
    /// The id of the machine the source belongs to (Go's `ParentId`), if any.
    #[serde(deserialize_with = "limits::optional_name")]
    pub parent_id: Option<String>,
    /// The source's tags (Go's `Tags`).
    #[serde(deserialize_with = "limits::tags")]
    pub tags: Vec<String>,
}

/// Options in force for the connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Granted {
    /// Whether frames above the server's threshold are zstd-compressed both ways.
    pub compression: bool,
    /// Positions of the states the client sees; `None` for all. Diffs and checksums cover
    /// only these.
    #[serde(deserialize_with = "limits::optional_states")]
    pub tracked: Option<Vec<u32>>,
    /// Positions of the states the client may mutate; `None` for all.
    #[serde(deserialize_with = "limits::optional_states")]
    pub mutable: Option<Vec<u32>>,
}

/// A whole clock: one tick per state of the schema (0 for untracked states).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// One tick per state of the client's schema, at most 4096 (0 for untracked states).
    #[serde(deserialize_with = "limits::ticks")]
    pub ticks: Vec<u64>,
    /// How many mutations the source has processed.
    pub queue_tick: u64,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// The client speaks another protocol version.
    Version,
    /// The server serves no source of that name (the reason lists those it does).
    UnknownSource,
    /// A missing or wrong token.
    Auth,
    /// The client's id is not on the allow-list.
    Acl,
    /// The client's id is in the source's ancestry: a node would mirror itself or a descendant.
    Loop,
    /// No free client slot.
    Full,
    /// The first message was not a valid `Hello` (or tracks an unknown state, or is too large).
    BadHello,
    /// No `Hello` came in time.
    Timeout,
}

/// A refusal with a reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// What kind of refusal: retrying can help after `Loop`, `Full` and `Timeout` (the tree or
    /// the load may change); the others need a change of configuration.
    pub kind: RefusalKind,
    /// What to do about it, for a person (escaped peer text).
    pub reason: String,
}

/// Clock changes since the last diff or snapshot the client got: `(state, tick delta)` for each
/// changed tracked state, how much the queue tick grew, and a checksum of the tracked clock
/// after applying.
///
/// Both are deltas because absolute ticks outgrow one byte within seconds while a delta rarely
/// does: on a busy source that is 2-4 bytes saved per diff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockDiff {
    /// `(state position, tick increase)` per changed tracked state; at most 4096 entries.
    #[serde(deserialize_with = "limits::changes")]
    pub changes: Vec<(u32, u64)>,
    /// How much the source's queue tick grew.
    pub queue_delta: u64,
    /// Four little-endian bytes: a hash has no small values for a varint to save on.
    #[serde(with = "fixed_u32")]
    pub checksum: u32,
}

/// `u32` as exactly four little-endian bytes instead of a varint.
mod fixed_u32 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &u32, s: S) -> Result<S::Ok, S::Error> {
        value.to_le_bytes().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        <[u8; 4]>::deserialize(d).map(u32::from_le_bytes)
    }
}

/// A mutation sent upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutateRequest {
    /// Echoed in the reply. 0 asks for no reply: nothing is answered, `Sync` fetches the clock.
    pub id: u64,
    /// Add, remove or set.
    pub kind: MutationKind,
    /// The states' positions in the schema the client was given; at most 4096.
    #[serde(deserialize_with = "limits::states")]
    pub states: Vec<u32>,
    /// The mutation's arguments (at most 256, nested at most 32 deep).
    pub args: Args,
    /// The mutation's idempotency key: a server answers a key it has run from its record
    /// (PROTOCOL.md, "Retries and exactly once"). `None` from clients that do not retry.
    pub key: Option<MutationKey>,
}

impl MutateRequest {
    /// Whether the client asked for a `MutateReply` (a non-zero id).
    pub fn wants_reply(&self) -> bool {
        self.id != 0
    }
}

/// The answer to a mutation, with the clock diff that brings the client up to date with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MutateReply {
    /// The request's id.
    pub id: u64,
    /// What became of the mutation.
    pub result: MutateResult,
    /// The clock changes up to and including the mutation's, for this client.
    pub diff: ClockDiff,
}

/// What became of a mutation: its outcome, or why the server did not run it. One byte on the
/// wire for the outcomes (a `Result<Outcome, _>` would take two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MutateResult {
    /// The transition ran.
    Executed,
    /// The relations or a handler refused it.
    Canceled,
    /// The source was busy; it runs after the mutations before it.
    Queued,
    /// Not run, with a reason a person can read (e.g. a position outside the schema).
    Refused(String),
}

impl From<Result<Outcome, String>> for MutateResult {
    fn from(result: Result<Outcome, String>) -> Self {
        match result {
            Ok(Outcome::Executed) => MutateResult::Executed,
            Ok(Outcome::Canceled) => MutateResult::Canceled,
            Ok(Outcome::Queued) => MutateResult::Queued,
            Err(reason) => MutateResult::Refused(reason),
        }
    }
}

impl From<MutateResult> for Result<Outcome, String> {
    fn from(result: MutateResult) -> Self {
        match result {
            MutateResult::Executed => Ok(Outcome::Executed),
            MutateResult::Canceled => Ok(Outcome::Canceled),
            MutateResult::Queued => Ok(Outcome::Queued),
            MutateResult::Refused(reason) => Err(reason),
        }
    }
}

/// A wait for an activation with arguments, sent upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhenArgsRequest {
    /// Echoed in the answer; never 0 (a wait always has an answer).
    pub id: u64,
    /// The state's position in the schema the client was given.
    pub state: u32,
    /// What the activation's arguments must include.
    pub args: Args,
}

/// How a remote wait ended. One byte on the wire but for a refusal's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitResult {
    /// The state was activated with the arguments.
    Done,
    /// The source was disposed, or its schema changed under the wait.
    Disposed,
    /// The client withdrew it (`WhenArgsCancel`).
    Canceled,
    /// Not waited for, with a reason a person can read (a state the client may not see, too
    /// many waits pending, the source out of reach further up).
    Refused(String),
}

/// The answer to `ErrRequest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrResult {
    /// The source has had no error.
    NoError,
    /// The source's last error.
    Error(String),
    /// Not answered, with a reason a person can read (the client may not see `Exception`,
    /// the source is out of reach further up).
    Refused(String),
}

/// Named binary data from the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// What the data is, chosen by the source (at most 1024 bytes).
    #[serde(deserialize_with = "limits::name")]
    pub name: String,
    /// The data, up to the frame limit.
    #[serde(deserialize_with = "limits::bytes")]
    pub data: Vec<u8>,
}

/// A node as `am-node status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub node: String,
    /// Each source it serves.
    pub sources: Vec<SourceStatus>,
    /// Each connected client.
    pub clients: Vec<ClientStatus>,
    /// Counter name and value, in a stable order.
    pub counters: Vec<(String, u64)>,
}

/// One served source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The name it is served under.
    pub name: String,
    /// The source machine's id.
    pub id: String,
    /// For a mirror: the endpoint it mirrors, its connection state, its last error.
    pub upstream: Option<String>,
    /// For a mirror: `connecting`, `ready` or `disconnected`.
    pub connection: Option<String>,
    /// For a mirror: why its last session ended or failed.
    pub last_error: Option<String>,
    /// The names of the active states.
    pub active: Vec<String>,
    /// How many mutations it has processed.
    pub queue_tick: u64,
    /// How many clients are connected to it.
    pub clients: u32,
    /// For a mirror: sessions established after the first.
    pub reconnects: u64,
    /// For a mirror: mutations sent again after a connection ended unanswered, failed at the
    /// retry deadline, and waiting for the link now (PROTOCOL.md, "Retries and exactly once").
    pub mutations_retried: u64,
    /// See `mutations_retried`.
    pub mutations_expired: u64,
    /// See `mutations_retried`.
    pub mutations_waiting: u64,
    /// The whole clock, one tick per state in schema order: compare nodes of a tree by it.
    pub ticks: Vec<u64>,
}

impl SourceStatus {
    /// What `source`, served as `name` to `clients` clients, shows: its id, clock and active
    /// states and, for a mirror, its link to its upstream.
    pub fn of(name: &str, source: &dyn crate::machine::StateSource, clients: u32) -> Self {
        let upstream = source.upstream();
        SourceStatus {
            name: name.to_owned(),
            id: source.id().to_owned(),
            upstream: upstream.as_ref().map(|u| u.endpoint.clone()),
            connection: upstream.as_ref().map(|u| u.state.to_owned()),
            reconnects: upstream.as_ref().map_or(0, |u| u.reconnects),
            mutations_retried: upstream.as_ref().map_or(0, |u| u.mutations_retried),
            mutations_expired: upstream.as_ref().map_or(0, |u| u.mutations_expired),
            mutations_waiting: upstream.as_ref().map_or(0, |u| u.mutations_waiting),
            last_error: upstream.and_then(|u| u.last_error),
            active: source.active_states(),
            queue_tick: source.queue_tick(),
            ticks: source.clock(),
            clients,
        }
    }
}

/// One connected client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// The client's id from its hello.
    pub id: String,
    /// The source it mirrors.
    pub source: String,
    /// Its network address.
    pub peer: String,
}

/// Why a frame body is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a message of this protocol version, or past a limit (the decoder's words).
    #[error("undecodable message: {0}")]
    Invalid(String),
    /// The body holds this many bytes after a complete message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a message body, appending to `out`.
pub fn encode(message: &Message, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and every message type serializes (no maps with
    // non-string keys, no unsupported serde features): this is an invariant of the types above.
    if let Err(e) = bincode::serde::encode_into_std_write(message, out, config()) {
        unreachable!("message {} does not encode: {e}", message.name());
    }
}

/// Encodes a message body into a new buffer.
pub fn encode_to_vec(message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode(message, &mut out);
    out
}

/// The most one decode may reserve, whatever the body's size (see [`decode`]).
pub const MAX_DECODE_ALLOC: usize = 64 << 20;

/// Decodes a whole frame body.
///
/// The codec counts what it reserves against an allocation limit: each string's and byte
/// list's claimed length, before it checks that the body holds that many bytes, and each
/// number's size in memory. A valid body never counts more than 8 bytes per byte of its own
/// (a one-byte varint decodes to a `u64`), so the limit follows the body: the smallest of these
/// steps above 8 times its length, at most [`MAX_DECODE_ALLOC`]. A 10-byte body claiming a
/// 60 MiB string is refused before anything is reserved.
pub fn decode(body: &[u8]) -> Result<Message, DecodeError> {
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    let decoded = match body.len() * 8 {
        n if n <= 4 * KIB => decode_within::<{ 4 * KIB }>(body),
        n if n <= 64 * KIB => decode_within::<{ 64 * KIB }>(body),
        n if n <= MIB => decode_within::<MIB>(body),
        n if n <= 16 * MIB => decode_within::<{ 16 * MIB }>(body),
        _ => decode_within::<MAX_DECODE_ALLOC>(body),
    };
    let (message, used) = decoded.map_err(|e| DecodeError::Invalid(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Trailing(body.len() - used));
    }
    Ok(message)
}

/// Decodes with an allocation limit of `LIMIT` bytes.
fn decode_within<const LIMIT: usize>(
    body: &[u8],
) -> Result<(Message, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(body, config().with_limit::<LIMIT>())
}
