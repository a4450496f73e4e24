//! A source's clock as numbered versions, and the diff frames encoded once for all the
//! clients that need the same bytes.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use crate::proto::diff::{self, ClockRef, Tracked};
use crate::proto::message::Message;
use crate::proto::{FrameConfig, encode_frame};

/// A source's clock as of one version. Cheap to clone: the ticks are shared.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// Grows by one with every clock change of the source.
    pub version: u64,
    /// The clock: one tick per state of the source's schema.
    pub ticks: Arc<[u64]>,
    /// How many mutations the source had processed.
    pub queue_tick: u64,
    /// Grows by one with every change of the source's ancestry (read the ancestry from the
    /// source); `version` stays: the clock did not change.
    pub ancestry: u64,
    /// The hash of the source's schema as of this version: a served mirror's schema can change
    /// under its clients, whose tracked and mutable positions then mean other states.
    pub schema: u64,
}

impl Versioned {
    /// The clock as the diff functions take it.
    pub fn clock(&self) -> ClockRef<'_> {
        ClockRef {
            ticks: &self.ticks,
            queue_tick: self.queue_tick,
        }
    }
}

/// One encoded diff frame.
#[derive(Debug)]
struct CachedFrame {
    from: u64,
    to: u64,
    options: u64,
    /// What `options` was hashed from, compared on a hit: a hash collision between two
    /// clients' tracked sets must not send one the other's states (it may see fewer).
    tracked: Tracked,
    compressed: bool,
    bytes: Arc<[u8]>,
}

/// How many distinct diff frames the cache keeps: one per (from, to, options) in flight.
const CACHE_SLOTS: usize = 16;

/// Encoded diff frames by (from, to, options), shared by the sessions of one source.
#[derive(Debug, Default)]
pub struct DiffCache {
    slots: Mutex<VecDeque<CachedFrame>>,
}

impl DiffCache {
    /// The frame that takes a client from `from` to `to`, encoded once per options and shared;
    /// `None` when nothing tracked changed.
    pub fn diff_frame(
        &self,
        from: &Versioned,
        to: &Versioned,
        tracked: &Tracked,
        frame: &FrameConfig,
        options: u64,
    ) -> Option<Arc<[u8]>> {
        // Nothing under this lock calls out or panics on peer input.
        let mut cache = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let compressed = frame.compression.is_some();
        if let Some(hit) = cache.iter().find(|c| {
            c.from == from.version
                && c.to == to.version
                && c.options == options
                && c.compressed == compressed
                && c.tracked == *tracked
        }) {
            return Some(hit.bytes.clone()).filter(|b| !b.is_empty());
        }
        let d = diff::diff(from.clock(), to.clock(), tracked);
        let bytes: Arc<[u8]> = if d.changes.is_empty() {
            Arc::from(Vec::new())
        } else {
            let mut out = Vec::with_capacity(16 + d.changes.len() * 4);
            encode_frame(frame, &Message::Diff(d), &mut out);
            Arc::from(out)
        };
        if cache.len() == CACHE_SLOTS {
            cache.pop_front();
        }
        cache.push_back(CachedFrame {
            from: from.version,
            to: to.version,
            options,
            tracked: tracked.clone(),
            compressed,
            bytes: bytes.clone(),
        });
        Some(bytes).filter(|b| !b.is_empty())
    }
}

/// A key for "same bytes on the wire": clients with equal keys can share diff frames.
pub fn options_key(tracked: &Tracked, frame: &FrameConfig) -> u64 {
    let mut h = DefaultHasher::new();
    tracked.hash(&mut h);
    frame.compression.is_some().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FrameReader;

    fn version(version: u64, ticks: &[u64]) -> Versioned {
        Versioned {
            version,
            ticks: Arc::from(ticks),
            queue_tick: version,
            ancestry: 0,
            schema: 0,
        }
    }

    /// The states a cached diff frame carries.
    fn changed(bytes: &[u8]) -> Vec<u32> {
        let mut reader = FrameReader::new(FrameConfig::default());
        reader.push(bytes);
        match reader.next_message() {
            Ok(Some(Message::Diff(diff))) => diff.changes.iter().map(|c| c.0).collect(),
            other => panic!("expected a diff, got {other:?}"),
        }
    }

    #[test]
    fn equal_option_keys_never_share_frames_across_tracked_sets() {
        let cache = DiffCache::default();
        let frame = FrameConfig::default();
        let (from, to) = (version(1, &[0, 0]), version(2, &[1, 1]));
        // Two clients whose keys collide (the key is a hash): one sees state 0 only.
        let narrow = Tracked::Only(vec![0]);
        let bytes = cache
            .diff_frame(&from, &to, &narrow, &frame, 7)
            .expect("a change");
        assert_eq!(changed(&bytes), [0]);
        let bytes = cache
            .diff_frame(&from, &to, &Tracked::All, &frame, 7)
            .expect("a change");
        assert_eq!(changed(&bytes), [0, 1]);
        // And the other way round: the narrow client never gets the wide frame.
        let bytes = cache
            .diff_frame(&from, &to, &narrow, &frame, 7)
            .expect("a change");
        assert_eq!(changed(&bytes), [0]);
    }
}
