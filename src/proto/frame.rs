//! Framing: varints and length-delimited frames, over any ordered byte stream.
//!
//! ```text
//! frame := head:varint  body:[u8; head >> 1]
//! ```
//! The head's low bit marks a zstd-compressed body; the rest is the body's length. One byte of
//! head carries bodies up to 63 bytes, which is every diff and mutation of a small machine:
//! a separate flags byte would have cost a byte per frame (a tenth of a small diff). The
//! decoder tells "need more bytes" (`Ok(None)`) apart from "invalid" (`Err`), checks the length
//! against the maximum before it allocates, and bounds decompression by the same maximum, so a
//! hostile peer costs at most one frame of memory.

use std::borrow::Cow;

/// The head's low bit: the body is zstd-compressed.
pub const HEAD_ZSTD: u64 = 0x01;

/// Largest varint: 10 bytes hold a u64.
pub const MAX_VARINT_LEN: usize = 10;

/// Default largest frame body (before and after decompression).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Why bytes are not a valid frame. Each closes the connection that sent them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame's length prefix claims more than the limit.
    #[error(
        "frame of {len} bytes is over the limit of {max}; raise max_frame on both sides if this is expected"
    )]
    TooLarge {
        /// The length claimed, in bytes.
        len: u64,
        /// The limit (`max_frame`).
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("malformed length prefix (varint longer than 10 bytes or over 64 bits)")]
    BadVarint,
    /// A frame of length zero.
    #[error("empty frame: every frame carries a message")]
    Empty,
    /// A compressed frame on a connection that did not agree to compression.
    #[error("compressed frame, but compression was not negotiated")]
    CompressionNotNegotiated,
    /// A compressed body is corrupt or decompresses past the limit.
    #[error("compressed body does not decompress within {max} bytes: {reason}")]
    Decompress {
        /// The limit it had to decompress within (`max_frame`).
        max: usize,
        /// The decompressor's error.
        reason: String,
    },
}

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint from the front of `buf`: `Ok(None)` when more bytes are needed, else the value
/// and how many bytes it took.
pub fn get_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(FrameError::BadVarint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
        if i + 1 == MAX_VARINT_LEN {
            return Err(FrameError::BadVarint);
        }
    }
    Ok(None)
}

/// A frame taken from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedFrame<'a> {
    /// The body, decompressed when it was compressed.
    pub body: Cow<'a, [u8]>,
    /// Bytes the whole frame took, prefix included.
    pub len: usize,
}

/// Compression settings agreed in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// Bodies shorter than this are never compressed.
    pub threshold: usize,
    /// zstd's compression level (1 is fast; higher is smaller and slower).
    pub level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            threshold: 256,
            level: 1,
        }
    }
}

/// Frame settings of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameConfig {
    /// The largest frame body in bytes, before and after decompression (default
    /// [`DEFAULT_MAX_FRAME`], 1 MiB); both sides must allow what the other sends.
    pub max_frame: usize,
    /// `Some` once both sides agreed to compress.
    pub compression: Option<Compression>,
}

impl Default for FrameConfig {
    fn default() -> Self {
        FrameConfig {
            max_frame: DEFAULT_MAX_FRAME,
            compression: None,
        }
    }
}

impl FrameConfig {
    /// Appends one frame holding `body`, compressed when negotiated, above the threshold, and
    /// smaller that way.
    pub fn encode(&self, body: &[u8], out: &mut Vec<u8>) {
        if let Some(c) = self.compression
            && body.len() >= c.threshold
            && let Some(packed) = super::compress::compress(body, c.level)
            && packed.len() < body.len()
        {
            put_varint(out, (packed.len() as u64) << 1 | HEAD_ZSTD);
            out.extend_from_slice(&packed);
            return;
        }
        put_varint(out, (body.len() as u64) << 1);
        out.extend_from_slice(body);
    }

    /// Decodes the frame at the front of `buf`: `Ok(None)` when it is not all there yet, else
    /// the body (decompressed) and the number of bytes the frame took.
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Result<Option<DecodedFrame<'a>>, FrameError> {
        let Some((head, prefix)) = get_varint(buf)? else {
            return Ok(None);
        };
        let len = head >> 1;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame as u64 {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let compressed = head & HEAD_ZSTD != 0;
        if compressed && self.compression.is_none() {
            return Err(FrameError::CompressionNotNegotiated);
        }
        let Some(body) = buf.get(prefix..prefix + len as usize) else {
            return Ok(None);
        };
        let body = if compressed {
            let unpacked = super::compress::decompress(body, self.max_frame).map_err(|reason| {
                FrameError::Decompress {
                    max: self.max_frame,
                    reason,
                }
            })?;
            Cow::Owned(unpacked)
        } else {
            Cow::Borrowed(body)
        };
        Ok(Some(DecodedFrame {
            body,
            len: prefix + len as usize,
        }))
    }

    /// How many bytes of `buf` the frame at its front will take, once its length prefix is
    /// there; lets a reader size its buffer.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        match get_varint(buf)? {
            Some((head, _)) if head >> 1 > self.max_frame as u64 => Err(FrameError::TooLarge {
                len: head >> 1,
                max: self.max_frame,
            }),
            Some((head, prefix)) => Ok(Some(prefix + (head >> 1) as usize)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(get_varint(&buf), Ok(Some((v, buf.len()))), "value {v}");
            for cut in 0..buf.len() {
                assert_eq!(get_varint(&buf[..cut]), Ok(None), "value {v} cut at {cut}");
            }
        }
    }

    #[test]
    fn overlong_and_overflowing_varints_are_invalid() {
        assert_eq!(get_varint(&[0x80; 11]), Err(FrameError::BadVarint));
        // 10th byte may only carry the top bit of a u64.
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&over), Err(FrameError::BadVarint));
    }

    #[test]
    fn frames_round_trip_and_report_need_more() {
        let cfg = FrameConfig::default();
        let mut buf = Vec::new();
        cfg.encode(b"hello", &mut buf);
        assert_eq!(buf, [10, b'h', b'e', b'l', b'l', b'o']);
        for cut in 0..buf.len() {
            assert_eq!(cfg.decode(&buf[..cut]), Ok(None));
        }
        let frame = cfg.decode(&buf).expect("valid").expect("complete");
        assert_eq!((&*frame.body, frame.len), (&b"hello"[..], 6));
    }

    #[test]
    fn hostile_lengths_fail_before_allocating() {
        let cfg = FrameConfig {
            max_frame: 1024,
            compression: None,
        };
        let mut buf = Vec::new();
        put_varint(&mut buf, u64::MAX);
        assert_eq!(
            cfg.decode(&buf),
            Err(FrameError::TooLarge {
                len: u64::MAX >> 1,
                max: 1024
            })
        );
        assert!(cfg.frame_len(&buf).is_err());
        assert_eq!(cfg.decode(&[0]), Err(FrameError::Empty));
        assert_eq!(cfg.decode(&[1]), Err(FrameError::Empty));
        // A compressed head is refused as soon as it arrives when nothing was negotiated.
        assert_eq!(
            cfg.decode(&[0x0b]),
            Err(FrameError::CompressionNotNegotiated)
        );
    }

    #[test]
    fn compression_is_used_only_when_it_pays_and_was_negotiated() {
        let plain = FrameConfig::default();
        let packed = FrameConfig {
            compression: Some(Compression::default()),
            ..plain
        };
        let repetitive = vec![7u8; 4096];
        let mut small = Vec::new();
        packed.encode(&repetitive, &mut small);
        let (head, _) = get_varint(&small).expect("ok").expect("some");
        assert_eq!(head & HEAD_ZSTD, HEAD_ZSTD);
        assert!(small.len() < 100);
        let frame = packed.decode(&small).expect("valid").expect("complete");
        assert_eq!(&*frame.body, &repetitive[..]);
        assert_eq!(
            plain.decode(&small),
            Err(FrameError::CompressionNotNegotiated)
        );

        // Below the threshold, and incompressible data, go plain.
        let mut out = Vec::new();
        packed.encode(&[1, 2, 3], &mut out);
        assert_eq!(out[0], 3 << 1, "plain head");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise: Vec<u8> = (0..1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        out.clear();
        packed.encode(&noise, &mut out);
        assert_eq!(
            get_varint(&out).expect("ok"),
            Some((1024 << 1, 2)),
            "incompressible data is sent as is"
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused() {
        let big = FrameConfig {
            max_frame: 1 << 24,
            compression: Some(Compression::default()),
        };
        let mut bomb = Vec::new();
        big.encode(&vec![0u8; 1 << 22], &mut bomb);
        let strict = FrameConfig {
            max_frame: 1 << 16,
            ..big
        };
        assert!(matches!(
            strict.decode(&bomb),
            Err(FrameError::Decompress { .. })
        ));
    }
}
