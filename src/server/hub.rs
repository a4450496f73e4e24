//! One served source: its clock as a versioned value that the source's pushers watch, and
//! the cache that lets a diff be encoded once for all clients with the same options.
//!
//! The hub observes the source; each transition replaces the versioned clock (the latest
//! wins), and each ancestry change bumps its ancestry count, so the pushers wait on one
//! watch for both. A client that was busy simply gets the newest version next time, in one
//! merged diff, so nothing queues per client and a slow client never slows the source.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::watch;

use crate::machine::{ObserverId, StateSource, Transition};
use crate::proto::diff::ClockRef;
use crate::proto::message::{ClockDiff, Message};
use crate::proto::{FrameConfig, Tracked, diff, encode_frame};

use super::Inner;
use super::push::{Attached, Outlet, Pushers};

/// A clock as of one version of a hub.
#[derive(Debug, Clone)]
pub(crate) struct Versioned {
    pub version: u64,
    pub ticks: Arc<[u64]>,
    pub queue_tick: u64,
    /// Bumped on every change of the source's ancestry (read the ancestry from the source);
    /// `version` stays: the clock did not change.
    pub ancestry: u64,
    /// The hash of the source's schema as of this version: a served mirror's schema can change
    /// under its clients, whose tracked and mutable positions then mean other states.
    pub schema: u64,
}

impl Versioned {
    pub fn clock(&self) -> ClockRef<'_> {
        ClockRef {
            ticks: &self.ticks,
            queue_tick: self.queue_tick,
        }
    }
}

/// Encoded diff frames, shared by the clients that need the same bytes.
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

/// What a hub hears from its source: clock changes and ancestry changes.
struct HubObserver {
    clock: Arc<watch::Sender<Versioned>>,
    /// Weak: the source holds this observer.
    source: Weak<dyn StateSource>,
}

impl crate::machine::Observer for HubObserver {
    fn transition(&self, t: &Transition<'_>) {
        // Sources call observers outside their own locks, so asking for the schema is safe.
        let schema = self.source.upgrade().map(|source| source.schema().hash());
        self.clock.send_modify(|v| {
            v.version += 1;
            v.ticks = Arc::from(t.after);
            v.queue_tick = t.queue_tick;
            if let Some(schema) = schema {
                v.schema = schema;
            }
        });
    }

    fn ancestry_changed(&self, _ancestry: &[String]) {
        self.clock.send_modify(|v| v.ancestry += 1);
    }
}

pub(crate) struct Hub {
    pub name: String,
    pub source: Arc<dyn StateSource>,
    clock: Arc<watch::Sender<Versioned>>,
    cache: Arc<FrameCache>,
    /// Started by the first client (they need the runtime).
    pushers: Mutex<Option<Pushers>>,
    observer: ObserverId,
}

/// Encoded diff frames, by (from, to, options), shared by the clients that need the same
/// bytes.
#[derive(Debug, Default)]
pub(crate) struct FrameCache {
    slots: Mutex<VecDeque<CachedFrame>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("name", &self.name)
            .field("version", &self.clock.borrow().version)
            .finish()
    }
}

impl Hub {
    pub fn new(name: String, source: Arc<dyn StateSource>) -> Self {
        let empty = Versioned {
            version: 0,
            ticks: Arc::from(Vec::new()),
            queue_tick: 0,
            ancestry: 0,
            schema: source.schema().hash(),
        };
        let clock = Arc::new(watch::channel(empty).0);
        let observer = HubObserver {
            clock: clock.clone(),
            source: Arc::downgrade(&source),
        };
        let (observer, start) = source.observe(Arc::new(observer));
        let queue_tick = source.queue_tick();
        // The observer may already have run with a newer clock; version 0 means it has not.
        clock.send_if_modified(|v| {
            let fresh = v.version == 0;
            if fresh {
                v.ticks = Arc::from(start);
                v.queue_tick = queue_tick;
            }
            fresh
        });
        Hub {
            name,
            source,
            clock,
            cache: Arc::default(),
            pushers: Mutex::new(None),
            observer,
        }
    }

    /// The source's clock as of now.
    pub fn latest(&self) -> Versioned {
        self.clock.borrow().clone()
    }

    /// The hash of the schema of the latest clock (see [`Versioned::schema`]).
    pub fn schema_hash(&self) -> u64 {
        self.clock.borrow().schema
    }

    /// Has the source's pushers push to `outlet` from now on, until the guard drops.
    pub fn attach(&self, outlet: Arc<Outlet>, inner: &Arc<Inner>) -> Attached {
        let mut pushers = self.pushers.lock().unwrap_or_else(PoisonError::into_inner);
        // Started by the first client, and again by the first after the pushers' runtime
        // ended (their clients ended with it).
        let running = match pushers.take() {
            Some(running) if running.running() => running,
            _ => Pushers::start(&self.clock.subscribe(), &self.cache, inner),
        };
        let attached = running.attach(outlet);
        *pushers = Some(running);
        attached
    }

    /// The diff from `from` to `to` for one client, not cached (replies carry their own).
    pub fn diff(from: &Versioned, to: &Versioned, tracked: &Tracked) -> ClockDiff {
        diff::diff(from.clock(), to.clock(), tracked)
    }

    /// The diff frames encoded so far, shared by the source's writers and pushers.
    pub fn frames(&self) -> &FrameCache {
        &self.cache
    }
}

impl FrameCache {
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

impl Drop for Hub {
    fn drop(&mut self) {
        self.source.unobserve(self.observer);
    }
}

/// A key for "same bytes on the wire": clients with equal keys can share diff frames.
pub(crate) fn options_key(tracked: &Tracked, frame: &FrameConfig) -> u64 {
    let mut h = DefaultHasher::new();
    tracked.hash(&mut h);
    frame.compression.is_some().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FrameReader, Message};

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
        let cache = FrameCache::default();
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
