//! The zstd codec behind compressed frames: the C library (the `zstd` crate) with the `net`
//! feature, a pure-Rust one (`ruzstd`) without it, so the WebAssembly build negotiates
//! compression as nodes do. Both read and write standard zstd frames; either side may use
//! either codec.
//!
//! Decompression is bounded by the frame limit whichever codec runs: a peer's frame costs at
//! most `max` bytes of output, and the pure-Rust decoder refuses windows larger than that (or
//! than its own encoder's window of 128 KiB, when `max` is smaller).

/// `body` compressed at `level` (zstd's levels; the pure-Rust codec has one fast level), or
/// `None` when the codec fails.
pub(crate) fn compress(body: &[u8], level: i32) -> Option<Vec<u8>> {
    #[cfg(feature = "net")]
    {
        zstd::bulk::compress(body, level).ok()
    }
    #[cfg(not(feature = "net"))]
    {
        let _ = level;
        Some(pure::compress(body))
    }
}

/// `body` decompressed, or why not; never more than `max` bytes.
pub(crate) fn decompress(body: &[u8], max: usize) -> Result<Vec<u8>, String> {
    #[cfg(feature = "net")]
    {
        zstd::bulk::decompress(body, max).map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "net"))]
    {
        pure::decompress(body, max)
    }
}

/// The pure-Rust codec; in tests of every build too, so it is checked against the C library's.
#[cfg(any(test, not(feature = "net")))]
pub(crate) mod pure {
    use std::io::Read as _;

    use ruzstd::decoding::StreamingDecoder;
    use ruzstd::encoding::{CompressionLevel, compress_to_vec};

    /// The window this codec's encoder declares whatever the input's size (the C library's
    /// declares the input's size): a decoder must take at least this much.
    const ENCODER_WINDOW: u64 = 128 << 10;

    pub(crate) fn compress(body: &[u8]) -> Vec<u8> {
        compress_to_vec(body, CompressionLevel::Fastest)
    }

    pub(crate) fn decompress(body: &[u8], max: usize) -> Result<Vec<u8>, String> {
        // The decoder reserves the declared window at once: at most a frame's worth (or the
        // encoder's own window, for small frames).
        let window = (max as u64).max(ENCODER_WINDOW);
        let decoder =
            StreamingDecoder::new_with_max_window_size(body, window).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        // One byte past the limit tells "exactly max" from "more than max".
        decoder
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        if out.len() > max {
            return Err(format!("more than {max} bytes"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..4096u32).flat_map(|i| (i % 97).to_le_bytes()).collect()
    }

    #[test]
    fn the_pure_codec_reads_what_the_build_writes_and_back() {
        let body = sample();
        let packed = compress(&body, 1).expect("compresses");
        assert!(packed.len() < body.len());
        assert_eq!(pure::decompress(&packed, body.len()).expect("reads"), body);
        let pure_packed = pure::compress(&body);
        assert_eq!(decompress(&pure_packed, body.len()).expect("reads"), body);
    }

    #[test]
    fn decompression_stops_at_the_limit_with_either_codec() {
        let body = sample();
        let packed = compress(&body, 1).expect("compresses");
        let limit = body.len() - 1;
        assert!(decompress(&packed, limit).is_err());
        let e = pure::decompress(&packed, limit).expect_err("over the limit");
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // (No empty body: frames never carry one.)
        for bytes in [&b"\x28\xb5\x2f\xfd"[..], b"not zstd at all", &[0xff; 64]] {
            assert!(pure::decompress(bytes, 1024).is_err(), "{bytes:?}");
            assert!(decompress(bytes, 1024).is_err(), "{bytes:?}");
        }
    }
}
