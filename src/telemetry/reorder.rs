//! Putting records of different nodes back in the order they happened, without I/O. Each node
//! sends on its own connection and drains its buffers every few milliseconds, so a mirror's
//! update can arrive before the root's transition that caused it. The collector holds each
//! record for a short window and releases what is due sorted by the sender's time (on one host
//! that is the order of events; across hosts, clocks differ, and the window bounds how much
//! that can reorder). A record that comes later than the window is released in arrival order.

use super::record::Record;

/// How long a record is held by default, in milliseconds.
pub const DEFAULT_WINDOW_MS: u64 = 25;
/// Most records held; past it, everything held is released.
pub const MAX_HELD: usize = 100_000;

/// How much later than its time a mirror's update sorts. Threads of one host can read the
/// wall clock tens of microseconds apart (virtual CPUs), enough for a mirror's update to be
/// timed before the source's transition that caused it; an update always comes a hop (over
/// 10 µs) after its cause, so sorting it this much later puts it back after its cause, and
/// moves it past nothing else but transitions of the same 100 µs.
pub const MIRROR_UPDATE_LAG_US: u64 = 100;

/// The time a record sorts by, where it has one.
fn time_us(record: &Record) -> Option<u64> {
    match record {
        Record::Machine(m) => Some(m.time_us),
        // A sender's time is peer input: it may be anything up to u64::MAX.
        Record::Transition(t) if t.kind.is_none() => {
            Some(t.time_us.saturating_add(MIRROR_UPDATE_LAG_US))
        }
        Record::Transition(t) => Some(t.time_us),
        Record::Sent(s) => Some(s.time_us),
        Record::Status(_) | Record::Dispose(_) => None,
    }
}

/// Records held until they are due.
#[derive(Debug, Clone)]
pub struct Reorder {
    window_ms: u64,
    /// (arrived at, arrival number, record)
    held: Vec<(u64, u64, Record)>,
    arrivals: u64,
}

impl Reorder {
    /// Holds each record `window_ms` milliseconds after it arrives (the collector uses
    /// [`DEFAULT_WINDOW_MS`]); with 0 every record is due at the next [`Reorder::release`].
    pub fn new(window_ms: u64) -> Self {
        Reorder {
            window_ms,
            held: Vec::new(),
            arrivals: 0,
        }
    }

    /// Takes a record in at `now_ms`; what is due is returned by [`Reorder::release`].
    pub fn push(&mut self, record: Record, now_ms: u64) {
        self.arrivals += 1;
        self.held.push((now_ms, self.arrivals, record));
    }

    /// When the oldest held record is due (ms), if any.
    pub fn next_due(&self) -> Option<u64> {
        self.held.iter().map(|(at, _, _)| at + self.window_ms).min()
    }

    /// The records due at `now_ms`, in the order to take them: every record held for the
    /// window, and with them every held record the sender timed no later than the latest of
    /// those; sorted by the sender's time (records without one keep their arrival place).
    pub fn release(&mut self, now_ms: u64) -> Vec<Record> {
        let window = self.window_ms;
        let overfull = self.held.len() > MAX_HELD;
        let due = |at: u64| overfull || at + window <= now_ms;
        let Some(latest) = self
            .held
            .iter()
            .filter(|(at, _, _)| due(*at))
            .map(|(_, _, r)| time_us(r).unwrap_or(0))
            .max()
        else {
            return Vec::new();
        };
        let (mut out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(at, _, r)| due(*at) || time_us(r).is_some_and(|t| t <= latest));
        self.held = keep;
        // Untimed records (a disposal) sort with the timed record that arrived just before.
        let mut last = 0;
        let mut keyed: Vec<(u64, u64, Record)> = Vec::with_capacity(out.len());
        out.sort_by_key(|(_, n, _)| *n);
        for (_, n, record) in out {
            let t = time_us(&record).unwrap_or(last);
            last = t;
            keyed.push((t, n, record));
        }
        keyed.sort_by_key(|(t, n, _)| (*t, *n));
        keyed.into_iter().map(|(_, _, r)| r).collect()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::{MachineRef, TransitionRecord};

    fn at(time_us: u64, node: &str) -> Record {
        Record::Transition(TransitionRecord {
            at: MachineRef {
                node: node.into(),
                machine: "m".into(),
            },
            time_us,
            kind: Some("add".into()),
            called: vec![],
            args: vec![],
            args_dropped: 0,
            outcome: "update".into(),
            auto: false,
            queue_tick: 0,
            clock: vec![],
            changed: vec![],
            errors: vec![],
            origin: None,
            dropped: 0,
        })
    }

    fn nodes(records: &[Record]) -> Vec<&str> {
        records.iter().map(Record::node).collect()
    }

    #[test]
    fn records_within_the_window_come_out_in_the_senders_order() {
        let mut r = Reorder::new(25);
        r.push(at(2_000, "mirror"), 100);
        r.push(at(1_000, "root"), 110);
        assert!(
            r.release(120).is_empty(),
            "nothing is due before the window"
        );
        assert_eq!(r.next_due(), Some(125));
        assert_eq!(nodes(&r.release(125)), vec!["root", "mirror"]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_mirrors_update_timed_just_before_its_cause_sorts_after_it() {
        let mut r = Reorder::new(25);
        let Record::Transition(mut update) = at(1_000, "mirror") else {
            unreachable!()
        };
        update.kind = None;
        r.push(Record::Transition(update), 0);
        r.push(at(1_030, "root"), 1);
        assert_eq!(nodes(&r.release(30)), vec!["root", "mirror"]);
    }

    #[test]
    fn a_late_record_is_released_as_it_comes_and_later_ones_wait() {
        let mut r = Reorder::new(25);
        r.push(at(5_000, "a"), 0);
        r.push(at(9_000, "b"), 20);
        // At 25 the first is due; the second, timed later, waits for its own window.
        assert_eq!(nodes(&r.release(25)), vec!["a"]);
        r.push(at(1_000, "late"), 30);
        // The late one was timed before b: it goes out with b.
        assert_eq!(nodes(&r.release(45)), vec!["late", "b"]);
    }

    #[test]
    fn a_mirrors_update_timed_at_the_end_of_time_is_released() {
        let mut r = Reorder::new(0);
        let Record::Transition(mut update) = at(u64::MAX, "mirror") else {
            unreachable!()
        };
        update.kind = None;
        r.push(Record::Transition(update), 0);
        r.push(at(u64::MAX, "root"), 0);
        // Both sort at u64::MAX: they keep their arrival order.
        assert_eq!(nodes(&r.release(0)), vec!["mirror", "root"]);
    }

    #[test]
    fn untimed_records_keep_their_place_and_overfull_releases_all() {
        let mut r = Reorder::new(25);
        r.push(at(3_000, "a"), 0);
        r.push(
            Record::Dispose(MachineRef {
                node: "a".into(),
                machine: "m".into(),
            }),
            1,
        );
        r.push(at(1_000, "b"), 2);
        let out = r.release(30);
        assert_eq!(nodes(&out), vec!["b", "a", "a"]);
        assert!(matches!(out[2], Record::Dispose(_)));
        let mut r = Reorder::new(1_000_000);
        for i in 0..=MAX_HELD as u64 {
            r.push(at(i, "x"), 0);
        }
        assert_eq!(r.release(0).len(), MAX_HELD + 1);
    }
}
