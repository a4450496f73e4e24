//! One served source: its clock as a versioned value that the source's pushers and sessions
//! read, and the cache that lets a diff be encoded once for all clients with the same options.
//!
//! The hub observes the source; each transition replaces the versioned clock (the latest
//! wins), and each ancestry change bumps its ancestry count, so the pushers wait on one
//! watch for both. A client that was busy simply gets the newest version next time, in one
//! merged diff, so nothing queues per client and a slow client never slows the source.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::watch;

use crate::machine::{ClockChange, ObserverId, Schema, StateSource};
use crate::proto::dedup::Dedup;
use crate::proto::session::{ClockFeed, DiffCache, Versioned};

use super::Inner;
use super::push::{Attached, Outlet, Pushers};

/// What a hub hears from its source: clock changes and ancestry changes.
struct HubObserver {
    clock: Arc<watch::Sender<Versioned>>,
    /// Weak: the source holds this observer.
    source: Weak<dyn StateSource>,
}

impl crate::machine::Observer for HubObserver {
    fn clock_changed(&self, change: &ClockChange<'_>) {
        // Sources call observers outside their own locks, so asking for the schema is safe.
        let schema = self.source.upgrade().map(|source| source.schema().hash());
        self.clock.send_modify(|v| {
            v.version += 1;
            v.ticks = Arc::from(change.after);
            v.queue_tick = change.queue_tick;
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
    cache: Arc<DiffCache>,
    /// Started by the first client (they need the runtime).
    pushers: Mutex<Option<Pushers>>,
    observer: ObserverId,
    /// The keyed mutations this source ran for clients, so a retried one runs once.
    pub dedup: Mutex<Dedup<DedupWaiter>>,
    /// The origin of the record's time: one clock for every connection of the source.
    epoch: std::time::Instant,
}

/// How a duplicate that arrived while its first copy ran hears the result.
pub(crate) type DedupWaiter = tokio::sync::oneshot::Sender<crate::proto::dedup::Answer>;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("name", &self.name)
            .field("version", &self.clock.borrow().version)
            .finish()
    }
}

impl Hub {
    pub fn new(
        name: String,
        source: Arc<dyn StateSource>,
        limits: &crate::proto::config::Limits,
    ) -> Self {
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
            dedup: Mutex::new(Dedup::new(limits.dedup_window, limits.dedup_ttl)),
            epoch: std::time::Instant::now(),
        }
    }

    /// The time on the record's clock (see `epoch`).
    pub fn now(&self) -> crate::proto::session::Moment {
        crate::proto::session::Moment::since_epoch(self.epoch.elapsed())
    }

    /// The source's clock as of now.
    pub fn latest(&self) -> Versioned {
        self.clock.borrow().clone()
    }

    /// Has the source's pushers push to `outlet` from now on, until the guard drops; `first`:
    /// before the clients that are not.
    pub fn attach(&self, outlet: Arc<Outlet>, inner: &Arc<Inner>, first: bool) -> Attached {
        let mut pushers = self.pushers.lock().unwrap_or_else(PoisonError::into_inner);
        // Started by the first client, and again by the first after the pushers' runtime
        // ended (their clients ended with it).
        let running = match pushers.take() {
            Some(running) if running.running() => running,
            _ => Pushers::start(&self.clock.subscribe(), &self.cache, inner),
        };
        let attached = running.attach(outlet, first);
        *pushers = Some(running);
        attached
    }

    /// The diff frames encoded so far, shared by the source's writers and pushers.
    pub fn frames(&self) -> &DiffCache {
        &self.cache
    }

    /// The clock a new client's welcome carries, of the source's schema now: the hub's clock
    /// is of an older schema when the schema changed after its last transition (or is
    /// changing now), and the source's own clock then goes with it.
    pub fn start_clock(&self, schema: u64) -> Versioned {
        let latest = self.latest();
        if latest.schema == schema {
            return latest;
        }
        Versioned {
            ticks: Arc::from(self.source.clock()),
            queue_tick: self.source.queue_tick(),
            schema,
            ..latest
        }
    }
}

impl ClockFeed for Hub {
    fn latest(&self) -> Versioned {
        Hub::latest(self)
    }

    fn schema_hash(&self) -> u64 {
        self.source.schema().hash()
    }

    fn schema(&self) -> Option<Arc<Schema>> {
        Some(self.source.schema())
    }

    fn ancestry(&self) -> Vec<String> {
        self.source.ancestry()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.source.unobserve(self.observer);
    }
}
