//! The catch-up of a client to its source's latest clock: one path with two entries, the
//! pusher's (a plain diff or nothing, else the writer's turn) and the writer's (everything:
//! ancestry, a snapshot when the clock went back, pacing, a source's schema change: passed on
//! when the new schema enlarges the client's, the end of the session otherwise).
//!
//! An enlarged schema (or one that only changed its groups) keeps every state at its position,
//! so what the client holds stays valid: its tracked states, the states it may mutate, its pending waits and requests. The
//! client gets `SchemaChanged` with the new schema and a snapshot of the source's clock in it,
//! and goes on. Its grant stays as given, in positions: a client that sees every state sees
//! the new ones too; one whose view was narrowed (a track list, a `see` rule) keeps its view,
//! and a `mutate` list its states, until it reconnects.

use std::sync::atomic::Ordering;

use std::sync::Arc;

use tracing::info;

use super::{CatchUp, ClockFeed, CloseReason, Phase, ServerSession};
use crate::machine::Schema;
use crate::proto::diff::went_back;
use crate::proto::message::{Message, Snapshot};
use crate::proto::session::cache::{DiffCache, Versioned};
use crate::proto::session::time::Moment;

impl ServerSession {
    /// The pusher's catch-up: appends the diff that takes the client to `latest`, when a plain
    /// diff is all it needs and nothing waits to be sent before it; anything more is the
    /// writer's ([`CatchUp::Writer`]). Counts nothing: the pusher counts a pass at once.
    pub fn push(&mut self, latest: &Versioned, cache: &DiffCache) -> CatchUp {
        let paced = self.config.limits.min_push_interval.is_some();
        let pending = !self.transmit.is_empty();
        let Phase::Ready(client) = &mut self.phase else {
            return CatchUp::Nothing;
        };
        if client.last.version == latest.version && client.ancestry == latest.ancestry {
            return CatchUp::Nothing;
        }
        // A changed schema is the writer's to pass on (or to end the session for).
        if paced
            || pending
            || latest.schema != client.schema.hash()
            || client.ancestry != latest.ancestry
            || client.replies_pending > 0
            || went_back(client.last.clock(), latest.clock(), &client.tracked)
        {
            return CatchUp::Writer;
        }
        // With nothing tracked changed there is no frame, and the client's clock stays where
        // it was: the next diff then carries this version's queue growth too.
        let Some(bytes) = cache.diff_frame(
            &client.last,
            latest,
            &client.tracked,
            &self.frame,
            client.options,
        ) else {
            return CatchUp::Nothing;
        };
        self.transmit.extend_from_slice(&bytes);
        let merged = merged(&client.last, latest);
        client.last = latest.clone();
        CatchUp::Sent { merged }
    }

    /// The writer's catch-up: everything that takes the client to the source's latest clock
    /// (an ancestry update, a snapshot when the clock went back, a diff), unless a push
    /// interval holds it back; ends the session when the source's schema changed.
    pub fn catch_up(&mut self, now: Moment, feed: &dyn ClockFeed, cache: &DiffCache) -> CatchUp {
        let interval = self.config.limits.min_push_interval;
        let latest = self.latest(feed);
        if self.closed().is_some() {
            return CatchUp::Closed;
        }
        let Phase::Ready(client) = &mut self.phase else {
            return CatchUp::Nothing;
        };
        if client.last.version == latest.version {
            return CatchUp::Nothing;
        }
        if let Some(interval) = interval {
            if client.push_due.is_some() {
                return CatchUp::Nothing;
            }
            if client.last_push != Moment::ZERO && now < client.last_push + interval {
                client.push_due = Some(client.last_push + interval);
                return CatchUp::Nothing;
            }
        }
        client.last_push = now;
        if self.resync_if_went_back(&latest) {
            return CatchUp::Sent { merged: 0 };
        }
        let Phase::Ready(client) = &mut self.phase else {
            return CatchUp::Nothing;
        };
        let Some(bytes) = cache.diff_frame(
            &client.last,
            &latest,
            &client.tracked,
            &self.frame,
            client.options,
        ) else {
            return CatchUp::Nothing;
        };
        let merged = merged(&client.last, &latest);
        client.last = latest;
        self.transmit.extend_from_slice(&bytes);
        let stats = &self.stats;
        stats.frames_out.fetch_add(1, Ordering::Relaxed);
        stats.diffs_sent.fetch_add(1, Ordering::Relaxed);
        if merged > 0 {
            stats.diffs_merged.fetch_add(merged, Ordering::Relaxed);
        }
        CatchUp::Sent { merged }
    }

    /// The source's latest clock; first queues the source's ancestry when it changed since
    /// the client last had it, and deals with a source's schema that is not the client's:
    /// passes it on when it enlarges the client's, ends the session otherwise. The version's
    /// own record says when to look; the source says whether the schema really changed (it
    /// can change without a transition, and the record lags until the next one).
    pub(super) fn latest(&mut self, feed: &dyn ClockFeed) -> Versioned {
        let latest = feed.latest();
        let Phase::Ready(client) = &mut self.phase else {
            return latest;
        };
        let mine = client.schema.hash();
        if latest.schema != mine {
            match feed.schema() {
                // The record's clock is of the source's schema now, which keeps the client's
                // positions.
                Some(now)
                    if now.hash() == latest.schema
                        && now.len() == latest.ticks.len()
                        && now.extends(&client.schema) =>
                {
                    self.enlarge_schema(now, &latest);
                }
                // The record lags behind a source whose schema is the client's again.
                _ if feed.schema_hash() == mine => {}
                _ => {
                    self.close(CloseReason::SchemaChanged);
                    return latest;
                }
            }
        }
        let Phase::Ready(client) = &mut self.phase else {
            return latest;
        };
        if latest.ancestry != client.ancestry {
            client.ancestry = latest.ancestry;
            self.send(&Message::Ancestry(feed.ancestry()));
        }
        latest
    }

    /// Passes on a schema that enlarges the client's: the new schema and a snapshot of `latest`
    /// (a clock of it), which the client then has.
    fn enlarge_schema(&mut self, schema: Arc<Schema>, latest: &Versioned) {
        let Phase::Ready(client) = &mut self.phase else {
            return;
        };
        info!(client = %client.id, from = client.schema.len(), to = schema.len(), "the source's schema changed and keeps the client's states; passing it on");
        let snapshot = Snapshot {
            ticks: client.tracked.mask(&latest.ticks),
            queue_tick: latest.queue_tick,
        };
        client.schema = schema;
        client.last = latest.clone();
        let def = client.schema.def().clone();
        self.send(&Message::SchemaChanged {
            schema: def,
            snapshot,
        });
    }

    /// When the source's clock went back (it restarted and a mirror resynced to it), no diff
    /// can express the change: sends an unsolicited snapshot (id 0) and takes it as sent.
    pub(super) fn resync_if_went_back(&mut self, latest: &Versioned) -> bool {
        let Phase::Ready(client) = &mut self.phase else {
            return false;
        };
        if !went_back(client.last.clock(), latest.clock(), &client.tracked) {
            return false;
        }
        let snapshot = Snapshot {
            ticks: client.tracked.mask(&latest.ticks),
            queue_tick: latest.queue_tick,
        };
        client.last = latest.clone();
        self.send(&Message::Snapshot { id: 0, snapshot });
        true
    }
}

/// Versions between the client's and the latest, folded into one diff.
fn merged(last: &Versioned, latest: &Versioned) -> u64 {
    latest
        .version
        .saturating_sub(last.version)
        .saturating_sub(1)
}
