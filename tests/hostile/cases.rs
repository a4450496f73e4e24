//! The table of hostile inputs: each case a name, an input (bytes, frames, requests, datagrams,
//! or a misbehaving peer), and what the node must do about it. Families of inputs are
//! generated (every truncation of a hello, every unknown message type, every field's length
//! lie, ...) so that the table says what is covered and the suite counts it. The cases are in
//! `protocol_cases.rs` (frames, messages, handshakes, slow peers) and `transport_cases.rs`
//! (WebSocket, HTTP, TLS, QUIC); this file holds their types and the table.

use std::time::Duration;

use asyncmachine::proto::message::RefusalKind;

use crate::bodies::HelloParts;
use crate::node::Kind;
use crate::{protocol_cases, transport_cases};

/// The nesting depth the protocol allows for argument values (issue 13, item 1: the decoder's
/// `MAX_DEPTH`, counted as lists or maps around a scalar): a value nested this deep is
/// accepted, one level more is a protocol error. Written here rather than imported so that
/// the suite builds on a node without the limit, and fails there.
pub const NESTING_LIMIT: usize = 32;

/// Stands for the address the input goes to in an HTTP request's `Host` (the port is known
/// only once the node listens): replaced when the case runs.
pub const HOST: &str = "@HOST@";

/// One hostile input and what the node must answer.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    pub input: Input,
    pub expect: Expect,
    /// One of a large family swept on tcp only (other listeners get a sample of it): the
    /// family tests the decoder, which every transport shares.
    pub sweep_only: bool,
}

impl Case {
    pub fn applies(&self, kind: Kind) -> bool {
        self.input.applies(kind) && (!self.sweep_only || kind == Kind::Tcp)
    }
}

/// How the input reaches the node.
#[derive(Debug)]
pub enum Input {
    /// Bytes on the protocol stream (after the transport's own handshake); first a valid
    /// hello and its welcome when `hello` is given; then, if `finish`, the client's side ends.
    Stream {
        hello: Option<HelloParts>,
        bytes: Vec<u8>,
        finish: bool,
    },
    /// Bytes on the protocol stream one at a time, `every` apart, until the node answers.
    Trickle { bytes: Vec<u8>, every: Duration },
    /// Raw WebSocket bytes (frames) after a valid upgrade, and after a hello when `hello`.
    WsFrames { hello: bool, bytes: Vec<u8> },
    /// Bytes where an HTTP upgrade request is expected (on TLS for wss).
    Http(Vec<u8>),
    /// An HTTP request only the relay interprets (the node's listener ignores the path).
    RelayHttp(Vec<u8>),
    /// Bytes where a TLS ClientHello is expected.
    Tls(Vec<u8>),
    /// UDP datagrams to a QUIC listener.
    Datagrams(Vec<Vec<u8>>),
    /// A peer whose misbehaviour is a script rather than bytes; the script checks the
    /// outcome its case's `Expect` names.
    Peer(Peer),
}

/// Scripted misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Handshakes, then sends pings and never reads a pong.
    NeverReadsPongs,
    /// Handshakes and never reads while the node sends it payloads and diffs.
    NeverReadsPushes,
    /// Through the relay: keeps the bridge alive with WebSocket pings but never reads what
    /// the node pushes; the relay's write deadline must end the bridge.
    PingsButNeverReads,
    /// A WebSocket message that never ends: continuation frames until the node cuts it.
    EndlessContinuation,
    /// A WebSocket message of twice max_frame, all of it valid pings.
    MessageOverMaxFrame,
    /// After the hello, WebSocket pings, thousands, never reading the pongs: the node either
    /// goes on serving the connection or drops it, within bounded memory.
    WsPingFlood,
    /// The upgrade request one byte per 100 ms.
    HttpTrickle,
    /// A TLS ClientHello one byte per 100 ms.
    TlsTrickle,
    /// A QUIC connection that opens a stream and never writes to it.
    QuicSilentStream,
    /// A QUIC connection with no stream at all.
    QuicNoStream,
    /// A QUIC stream that ends (FIN) before any byte.
    QuicEmptyStream,
    /// A QUIC stream reset in the middle of a hello.
    QuicResetMidHello,
    /// A QUIC client that sends a hello and stops the node's sending side.
    QuicStopSending,
    /// A QUIC handshake offering another application protocol.
    QuicAlpn(&'static [u8]),
}

impl Peer {
    pub fn applies(self, kind: Kind) -> bool {
        match self {
            Peer::NeverReadsPushes => true,
            Peer::PingsButNeverReads => matches!(kind, Kind::Relay),
            // The node first works through the megabytes of pings the buffers on the way hold
            // (seconds in a debug build; tens of seconds through the relay's two hops), so
            // this runs on one stream and one QUIC listener; never_reads_pushes covers a
            // client that never reads on every listener.
            Peer::NeverReadsPongs => matches!(kind, Kind::Tcp | Kind::Quic),
            Peer::EndlessContinuation
            | Peer::MessageOverMaxFrame
            | Peer::WsPingFlood
            | Peer::HttpTrickle => kind.speaks_http(),
            Peer::TlsTrickle => kind.tls_on_tcp(),
            Peer::QuicSilentStream
            | Peer::QuicNoStream
            | Peer::QuicEmptyStream
            | Peer::QuicResetMidHello
            | Peer::QuicStopSending
            | Peer::QuicAlpn(_) => kind == Kind::Quic,
        }
    }
}

/// What the node must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// A `Refused` of this kind, then the connection closes.
    Refused(RefusalKind),
    /// A `Refused` of one of these kinds (where a limit may refuse it before the check that
    /// would otherwise), then the connection closes.
    RefusedAs(&'static [RefusalKind]),
    /// `Refused(Timeout)`, then closed; on QUIC, where a client that sent nothing has no
    /// stream to carry it, the connection just closes.
    TimedOut,
    /// An `Error` message, then the connection closes.
    Error,
    /// A `Bye` whose reason contains this, then the connection closes.
    Bye(&'static str),
    /// The connection closes (a transport-level last word is allowed: a TLS alert, a
    /// WebSocket close frame, an HTTP error status, a protocol Error).
    Closed,
    /// As `Closed`, and at once: not by the idle timeout (no `Bye` for idleness).
    Cut,
    /// An HTTP response with this status, then the connection closes.
    Status(u16),
    /// A relay refusal: the HTTP status, or (after an upgrade) a close frame with the code.
    Refusal { status: u16, close: u16 },
    /// Odd but not wrong HTTP: the node may upgrade (then the WebSocket must serve a hello)
    /// or refuse (a 4xx, or a close).
    UpgradeOrRefusal,
    /// Valid, if unusual: the node welcomes the client.
    Welcome,
    /// Valid: the node answers the mutation with this result and keeps the connection.
    Reply(Answer),
    /// Valid: the node refuses the remote wait (`WhenArgsDone` with `Refused`) and keeps the
    /// connection.
    WaitRefused,
    /// Waits past the node's limit: refusals (`WhenArgsDone` with `Refused`, at least one),
    /// then an `Error` once the peer keeps going, and the connection closes.
    WaitsRefusedThenError,
    /// No connection comes of it, and the node counts none.
    NoConnection,
    /// The connection goes on serving the protocol, or the node drops it; either way within
    /// bounded memory.
    ServedOrDropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Executed,
    Refused,
}

impl Input {
    /// Whether the input can reach a node through this kind of listener.
    pub fn applies(&self, kind: Kind) -> bool {
        match self {
            Input::Stream { .. } | Input::Trickle { .. } => true,
            Input::WsFrames { .. } | Input::Http(_) => kind.speaks_http(),
            Input::RelayHttp(_) => kind == Kind::Relay,
            Input::Tls(_) => kind.tls_on_tcp(),
            Input::Datagrams(_) => kind == Kind::Quic,
            Input::Peer(peer) => peer.applies(kind),
        }
    }
}

pub(crate) fn case(name: impl Into<String>, input: Input, expect: Expect) -> Case {
    Case {
        name: name.into(),
        input,
        expect,
        sweep_only: false,
    }
}

/// A case of a large family: every listener runs it when `sample`, else only tcp.
pub(crate) fn family(case: Case, sample: bool) -> Case {
    Case {
        sweep_only: !sample,
        ..case
    }
}

pub(crate) fn before_hello(bytes: Vec<u8>) -> Input {
    Input::Stream {
        hello: None,
        bytes,
        finish: false,
    }
}

pub(crate) fn after_hello(bytes: Vec<u8>) -> Input {
    Input::Stream {
        hello: Some(HelloParts::valid("hostile")),
        bytes,
        finish: false,
    }
}

/// Lengths a field may claim: far past any body, past what a u32 holds, one past the body.
pub(crate) const CLAIMS: [(&str, u64); 3] = [
    ("u64_max", u64::MAX),
    ("u32_max", 0xffff_ffff),
    ("one_past", 4),
];

/// Every case, in order.
pub fn table() -> Vec<Case> {
    let mut cases = Vec::new();
    protocol_cases::framing(&mut cases);
    protocol_cases::hellos(&mut cases);
    protocol_cases::message_types(&mut cases);
    protocol_cases::mutations(&mut cases);
    protocol_cases::remote_requests(&mut cases);
    protocol_cases::compression(&mut cases);
    protocol_cases::slow_and_stalled(&mut cases);
    transport_cases::websocket(&mut cases);
    transport_cases::http(&mut cases);
    transport_cases::tls(&mut cases);
    transport_cases::quic(&mut cases);
    cases
}
