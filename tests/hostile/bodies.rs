//! Message bodies built byte by byte (bincode 2, standard config, as PROTOCOL.md section 2
//! writes them), so a case can put a lie exactly where it wants: a length no body holds, an
//! index past an enum, a nesting no stack holds. Nothing here builds a recursive value in
//! memory: deep nesting is written as a flat run of bytes.

use asyncmachine::proto::frame::put_varint;
use asyncmachine::proto::message::encode_to_vec;
use asyncmachine::proto::{Message, PROTOCOL_VERSION};

/// The node's token; every hello of the suite carries it unless a case leaves it out.
pub const TOKEN: &str = "n0de-t0ken";

/// bincode's unsigned varint: one byte below 251, else a marker and 2, 4 or 8 bytes.
pub fn uv(n: u64) -> Vec<u8> {
    match n {
        0..=250 => vec![n as u8],
        251..=0xffff => [&[0xfb][..], &(n as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[0xfc][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[0xfd][..], &n.to_le_bytes()].concat(),
    }
}

/// A string (or byte string): its length, then its bytes.
pub fn bstr(s: &[u8]) -> Vec<u8> {
    [uv(s.len() as u64), s.to_vec()].concat()
}

/// A frame around a body: the LEB128 head (length times two, not compressed), then the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 10);
    put_varint(&mut out, (body.len() as u64) << 1);
    out.extend_from_slice(body);
    out
}

/// A frame marked compressed around an already-compressed body.
pub fn zstd_frame(packed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(packed.len() + 10);
    put_varint(&mut out, (packed.len() as u64) << 1 | 1);
    out.extend_from_slice(packed);
    out
}

/// A whole message, as the encoder writes it, in a frame.
pub fn message_frame(message: &Message) -> Vec<u8> {
    frame(&encode_to_vec(message))
}

/// The parts of a `Hello` body, each already encoded; a case replaces one with a lie.
#[derive(Debug, Clone)]
pub struct HelloParts {
    pub version: Vec<u8>,
    pub client_id: Vec<u8>,
    pub source: Vec<u8>,
    pub schema_hash: Vec<u8>,
    /// `compression` (a bool) and `track` (an option of a list of strings).
    pub options: Vec<u8>,
    pub token: Vec<u8>,
}

impl HelloParts {
    /// A valid hello for the suite's node: source `worker`, the token, no options.
    pub fn valid(client_id: &str) -> Self {
        HelloParts {
            version: uv(u64::from(PROTOCOL_VERSION)),
            client_id: bstr(client_id.as_bytes()),
            source: bstr(b"worker"),
            schema_hash: uv(0),
            options: vec![0, 0],
            token: [&[1][..], &bstr(TOKEN.as_bytes())].concat(),
        }
    }

    /// Asks for compression (the server grants it: the suite's node compresses).
    pub fn compressed(mut self) -> Self {
        self.options[0] = 1;
        self
    }

    pub fn body(&self) -> Vec<u8> {
        [
            &[0u8][..],
            &self.version,
            &self.client_id,
            &self.source,
            &self.schema_hash,
            &self.options,
            &self.token,
        ]
        .concat()
    }
}

/// A valid hello frame.
pub fn hello(client_id: &str) -> Vec<u8> {
    frame(&HelloParts::valid(client_id).body())
}

/// A `Mutate` body: `add` (kind 0) of `states` with the encoded `args` map.
pub fn mutate_body(id: u64, kind: u64, states: &[u32], args: &[u8]) -> Vec<u8> {
    let mut body = vec![4];
    body.extend(uv(id));
    body.extend(uv(kind));
    body.extend(uv(states.len() as u64));
    for &s in states {
        body.extend(uv(u64::from(s)));
    }
    body.extend_from_slice(args);
    body.push(0); // key: None (no retries)
    body
}

/// An args map of one entry: `key` = the encoded value.
pub fn one_arg(key: &str, value: &[u8]) -> Vec<u8> {
    [uv(1), bstr(key.as_bytes()), value.to_vec()].concat()
}

/// A `Value` nested `depth` deep: `depth` lists (or maps with key "k") of one element around
/// a `Null`. Flat bytes: building it needs no recursion.
pub fn nested(depth: usize, map: bool) -> Vec<u8> {
    let level: &[u8] = if map { &[7, 1, 1, b'k'] } else { &[6, 1] };
    let mut out = Vec::with_capacity(depth * level.len() + 1);
    for _ in 0..depth {
        out.extend_from_slice(level);
    }
    out.push(0);
    out
}

/// A zstd frame of `total` zero bytes made of RLE blocks (4 bytes per 128 KiB), declaring
/// `declared` as its content size when given (a lie, if it differs): a gigabyte fits in 32 KiB.
pub fn zstd_bomb(total: u64, declared: Option<u32>) -> Vec<u8> {
    const BLOCK: u64 = 128 * 1024;
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd];
    match declared {
        // Frame header descriptor: a 4-byte content size; then the window (2^17).
        Some(size) => {
            out.extend_from_slice(&[0x80, 0x38]);
            out.extend_from_slice(&size.to_le_bytes());
        }
        None => out.extend_from_slice(&[0x00, 0x38]),
    }
    let mut left = total;
    while left > 0 {
        let size = left.min(BLOCK);
        left -= size;
        let last = u32::from(left == 0);
        // Block header: last-block bit, type 1 (RLE), the regenerated size.
        let header = last | 1 << 1 | (size as u32) << 3;
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.push(0);
    }
    out
}
