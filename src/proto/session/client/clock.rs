//! The replica clock a client session keeps: diffs applied as one change and checked against
//! their checksum, snapshots and schema changes, the source's ancestry.

use std::sync::Arc;

use tracing::warn;

use super::{ClientEvent, ClientSession};
use crate::machine::Schema;
use crate::proto::Message;
use crate::proto::diff::{ApplyError, apply as apply_diff};
use crate::proto::message::{ClockDiff, Snapshot};

impl<P> ClientSession<P> {
    /// Applies diffs in order, as one change: diffs that arrived together reach waiters and
    /// observers once, with the latest clock (the latest wins, as on the server). A checksum
    /// mismatch asks for a snapshot (the diffs after it are dropped: the snapshot supersedes
    /// them); a state outside the schema ends the session.
    pub(super) fn apply_diffs(&mut self, diffs: &[ClockDiff]) {
        let before = self.ticks.clone();
        let mut changed = Vec::new();
        let mut failed = None;
        for diff in diffs {
            match apply_diff(&mut self.ticks, diff, &self.tracked) {
                Ok(states) => changed.extend(states),
                Err(ApplyError::Checksum) => {
                    changed.extend(diff.changes.iter().map(|&(s, _)| s as usize));
                    failed = Some(ApplyError::Checksum);
                }
                // Nothing of this diff was applied.
                Err(e @ ApplyError::BadState { .. }) => {
                    failed = Some(e);
                    break;
                }
            }
            self.queue_tick = self.queue_tick.saturating_add(diff.queue_delta);
            if failed.is_some() {
                break;
            }
        }
        if diffs.len() > 1 {
            changed.sort_unstable();
            changed.dedup();
        }
        self.events.push_back(ClientEvent::ClockChanged {
            before,
            changed,
            schema_changed: false,
            diffs: diffs.len(),
        });
        match failed {
            None => {}
            Some(ApplyError::Checksum) => {
                warn!(mirror = %self.config.client_id, "clock checksum mismatch; asking for a full sync");
                self.events.push_back(ClientEvent::Resync);
                // Id 0: no caller waits; the snapshot replaces the clock when it comes.
                self.send(&Message::Sync { id: 0 });
            }
            Some(e) => self.end(e.to_string()),
        }
    }

    /// Replaces the clock, and the schema when it changed (remote waits end unless the new
    /// schema keeps their states' positions).
    pub(super) fn replace(&mut self, schema: Option<Arc<Schema>>, snapshot: &Snapshot) {
        let mut schema_changed = false;
        if let Some(schema) =
            schema.filter(|s| self.schema.as_ref().map(|m| m.hash()) != Some(s.hash()))
        {
            schema_changed = true;
            self.ticks = vec![0; schema.len()];
            let old = self.schema.replace(schema.clone());
            if old.as_deref().is_some_and(|old| !schema.extends(old)) {
                self.fail_moved();
            }
            self.schema_moved(old.as_deref(), &schema);
        }
        let before = self.ticks.clone();
        for (s, tick) in self.ticks.iter_mut().enumerate() {
            *tick = snapshot.ticks.get(s).copied().unwrap_or(0);
        }
        self.queue_tick = snapshot.queue_tick;
        // A new schema is news to observers (a server serving this mirror) even when no tick
        // differs: their clock is of the old one.
        let changed = (0..self.ticks.len())
            .filter(|&s| schema_changed || before.get(s) != self.ticks.get(s))
            .collect();
        self.events.push_back(ClientEvent::ClockChanged {
            before,
            changed,
            schema_changed,
            diffs: 0,
        });
    }

    pub(super) fn set_upstream(&mut self, ancestry: Vec<String>) {
        if self.upstream != ancestry {
            self.upstream = ancestry.clone();
            self.events.push_back(ClientEvent::Ancestry(ancestry));
        }
    }
}
