//! Clock diffs: computing them between two clocks, applying them, and checking the result.
//!
//! A diff is relative to the last clock the client was sent, so merging is free: however many
//! transitions happened while a client's connection was busy, the next diff is simply the
//! difference between the clock now and the clock it last got (the latest tick wins). The
//! checksum covers the tracked part of the clock after the diff; a mirror whose clock does not
//! match asks for a full snapshot.

use super::message::ClockDiff;

/// Which states a connection tracks: all, or a sorted subset of positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Tracked {
    /// Every state of the schema.
    #[default]
    All,
    /// Only these positions, sorted and without duplicates.
    Only(Vec<u32>),
}

impl Tracked {
    /// What a connection's granted `tracked` option means: `None` is all, a list is sorted and
    /// deduplicated.
    pub fn from_granted(granted: Option<&[u32]>) -> Self {
        match granted {
            None => Tracked::All,
            Some(states) => {
                let mut states = states.to_vec();
                states.sort_unstable();
                states.dedup();
                Tracked::Only(states)
            }
        }
    }

    /// Whether the state at this position is tracked.
    pub fn contains(&self, state: usize) -> bool {
        match self {
            Tracked::All => true,
            Tracked::Only(states) => states.binary_search(&(state as u32)).is_ok(),
        }
    }

    /// The tracked positions within a clock of `len` states.
    pub fn positions(&self, len: usize) -> impl Iterator<Item = usize> + '_ {
        let (all, only) = match self {
            Tracked::All => (Some(0..len), None),
            Tracked::Only(states) => (
                None,
                Some(states.iter().map(|&s| s as usize).filter(move |&s| s < len)),
            ),
        };
        all.into_iter().flatten().chain(only.into_iter().flatten())
    }

    /// The clock as the client sees it: untracked states read 0.
    pub fn mask(&self, ticks: &[u64]) -> Vec<u64> {
        match self {
            Tracked::All => ticks.to_vec(),
            Tracked::Only(_) => {
                let mut masked = vec![0; ticks.len()];
                for s in self.positions(ticks.len()) {
                    masked[s] = ticks[s];
                }
                masked
            }
        }
    }
}

/// FNV-1a 64 over the tracked ticks, each as 8 little-endian bytes, in schema order, folded
/// to 32 bits (high half XOR low half): enough to detect divergence, and 4 bytes fewer on the
/// wire than a 64-bit varint.
pub fn checksum(ticks: &[u64], tracked: &Tracked) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for s in tracked.positions(ticks.len()) {
        for byte in ticks[s].to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    ((hash >> 32) ^ hash) as u32
}

/// A clock as sent to a client: its ticks and the source's queue tick.
#[derive(Debug, Clone, Copy)]
pub struct ClockRef<'a> {
    /// One tick per state of the schema.
    pub ticks: &'a [u64],
    /// How many mutations the source had processed.
    pub queue_tick: u64,
}

/// The diff that takes a client from `sent` to `now`. Ticks never go back (see [`went_back`]);
/// a state whose tick did not grow is left out.
pub fn diff(sent: ClockRef<'_>, now: ClockRef<'_>, tracked: &Tracked) -> ClockDiff {
    let changes = tracked
        .positions(now.ticks.len())
        .filter_map(|s| {
            let (before, after) = (sent.ticks.get(s).copied().unwrap_or(0), now.ticks[s]);
            (after > before).then(|| (s as u32, after - before))
        })
        .collect();
    ClockDiff {
        changes,
        queue_delta: now.queue_tick.saturating_sub(sent.queue_tick),
        checksum: checksum(now.ticks, tracked),
    }
}

/// Whether the clock went back from `sent` to `now`: a tracked tick or the queue tick is lower
/// (the source restarted), which no diff can express; the client needs a snapshot.
pub fn went_back(sent: ClockRef<'_>, now: ClockRef<'_>, tracked: &Tracked) -> bool {
    sent.ticks.len() != now.ticks.len()
        || now.queue_tick < sent.queue_tick
        || tracked
            .positions(now.ticks.len())
            .any(|s| now.ticks[s] < sent.ticks[s])
}

/// Why a diff could not be applied as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A change names a position outside the client's schema; nothing was applied.
    #[error("diff names state {state}, but the schema has {len} states")]
    BadState {
        /// The position named.
        state: u32,
        /// How many states the client's schema has.
        len: usize,
    },
    /// The clock after the diff does not match the source's checksum: ask for a snapshot.
    #[error("clock checksum mismatch after the diff; a full sync is needed")]
    Checksum,
}

/// Applies a diff in place and returns the positions that changed. On [`ApplyError::Checksum`]
/// the diff has been applied and the clock is suspect: ask for a snapshot. On
/// [`ApplyError::BadState`] nothing was changed.
pub fn apply(
    ticks: &mut [u64],
    diff: &ClockDiff,
    tracked: &Tracked,
) -> Result<Vec<usize>, ApplyError> {
    if let Some(&(state, _)) = diff
        .changes
        .iter()
        .find(|(s, _)| *s as usize >= ticks.len())
    {
        return Err(ApplyError::BadState {
            state,
            len: ticks.len(),
        });
    }
    let mut changed = Vec::with_capacity(diff.changes.len());
    for &(state, delta) in &diff.changes {
        let s = state as usize;
        ticks[s] = ticks[s].saturating_add(delta);
        changed.push(s);
    }
    if checksum(ticks, tracked) != diff.checksum {
        return Err(ApplyError::Checksum);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(ticks: &[u64], queue_tick: u64) -> ClockRef<'_> {
        ClockRef { ticks, queue_tick }
    }

    #[test]
    fn a_diff_carries_only_changed_tracked_states_and_applies_back() {
        let sent = [1, 2, 0, 5];
        let now = [1, 4, 1, 5];
        let d = diff(clock(&sent, 4), clock(&now, 9), &Tracked::All);
        assert_eq!(d.queue_delta, 5);
        assert_eq!(d.changes, [(1, 2), (2, 1)]);
        let mut clock = sent.to_vec();
        assert_eq!(apply(&mut clock, &d, &Tracked::All), Ok(vec![1, 2]));
        assert_eq!(clock, now);
    }

    #[test]
    fn merging_is_the_difference_to_the_latest_clock() {
        let sent = [0, 0, 0];
        let mut now = sent;
        // Three transitions while the client was busy: one diff takes it to the last clock.
        for step in [[1, 0, 0], [2, 1, 0], [3, 1, 2]] {
            now = step;
        }
        let d = diff(clock(&sent, 0), clock(&now, 3), &Tracked::All);
        assert_eq!(d.changes, [(0, 3), (1, 1), (2, 2)]);
        assert_eq!(d.queue_delta, 3);
    }

    #[test]
    fn a_clock_that_went_back_needs_a_snapshot() {
        let all = Tracked::All;
        assert!(!went_back(clock(&[1, 2], 5), clock(&[1, 3], 6), &all));
        assert!(went_back(clock(&[1, 2], 5), clock(&[1, 1], 6), &all));
        assert!(
            went_back(clock(&[1, 2], 5), clock(&[1, 2], 4), &all),
            "queue tick"
        );
        assert!(
            went_back(clock(&[1, 2], 5), clock(&[1, 2, 0], 5), &all),
            "schema"
        );
        // An untracked state going back is not the client's concern.
        let first = Tracked::Only(vec![0]);
        assert!(!went_back(clock(&[1, 2], 5), clock(&[1, 1], 6), &first));
    }

    #[test]
    fn a_subset_sees_and_checks_only_its_states() {
        let tracked = Tracked::from_granted(Some(&[2, 0, 2]));
        assert_eq!(tracked, Tracked::Only(vec![0, 2]));
        let now = [3, 7, 1];
        let d = diff(clock(&[0, 0, 0], 0), clock(&now, 1), &tracked);
        assert_eq!(d.changes, [(0, 3), (2, 1)]);
        let mut mirror = vec![0, 0, 0];
        apply(&mut mirror, &d, &tracked).expect("applies");
        assert_eq!(mirror, tracked.mask(&now));
        assert_eq!(mirror, [3, 0, 1]);
    }

    #[test]
    fn checksum_mismatch_and_bad_states_are_reported() {
        let d = diff(clock(&[0, 0], 0), clock(&[1, 0], 1), &Tracked::All);
        let mut stale = vec![2, 0];
        assert_eq!(
            apply(&mut stale, &d, &Tracked::All),
            Err(ApplyError::Checksum)
        );
        let bad = ClockDiff {
            changes: vec![(5, 1)],
            queue_delta: 0,
            checksum: 0,
        };
        let mut clock = vec![0, 0];
        assert_eq!(
            apply(&mut clock, &bad, &Tracked::All),
            Err(ApplyError::BadState { state: 5, len: 2 })
        );
        assert_eq!(clock, [0, 0], "nothing applied");
    }

    #[test]
    fn checksum_is_pinned() {
        // FNV-1a over 1u64 and 2u64 as little-endian bytes is 0x7717980363c8e066 (computed
        // independently); folded to 32 bits: 0x77179803 ^ 0x63c8e066. See PROTOCOL.md.
        assert_eq!(checksum(&[1, 2], &Tracked::All), 0x7717_9803 ^ 0x63c8_e066);
    }
}
