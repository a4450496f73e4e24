//! What a durable machine's writer has to save and what it has saved, counted in clock changes
//! heard from the machine; and, from that, the answer for a mutation that waits to be
//! acknowledged. Plain data: no files, no runtime, so every rule of the group commit is a
//! plain `#[test]`.
//!
//! Changes are numbered as they are heard (1, 2, ...). Only the newest unsaved one is kept:
//! a save writes the whole clock, so saving change 7 saves 1 to 6 as well, and whatever is
//! heard while a save is under way goes together into the next one.

use std::sync::Arc;

/// A clock change heard from the machine, waiting to be saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// Its number: how many changes had been heard with it.
    pub seq: u64,
    pub ticks: Vec<u64>,
    pub queue_tick: u64,
}

/// The writer's work, as the machine's thread and the writer task share it.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    heard: u64,
    /// The newest change not yet taken by the writer.
    pending: Option<Change>,
    status: Status,
    closed: bool,
}

/// What acknowledgements wait on: published by the writer after each save or failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Status {
    /// Changes up to this number are saved.
    pub saved: u64,
    /// The last save failed, for changes up to this number, with this error; cleared when a
    /// later save succeeds.
    pub failed: Option<(u64, Arc<str>)>,
    /// The writer ended: nothing heard from now on will be saved.
    pub ended: bool,
}

/// The answer for a mutation that waits for the changes up to its number to be saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Saved,
    /// The save that included them failed, with this error.
    Failed(Arc<str>),
    /// The writer ended before they were saved.
    Ended,
}

impl Status {
    /// The answer for the changes up to `target`, or `None` while their save is to come.
    pub fn verdict(&self, target: u64) -> Option<Verdict> {
        if self.saved >= target {
            return Some(Verdict::Saved);
        }
        match &self.failed {
            Some((through, error)) if *through >= target => Some(Verdict::Failed(error.clone())),
            _ if self.ended => Some(Verdict::Ended),
            _ => None,
        }
    }
}

impl Progress {
    /// Starts after the state saved when the machine was opened (change 0).
    pub fn new() -> Self {
        Progress::default()
    }

    /// A change of the machine's clock: it replaces any unsaved one. Returns its number.
    pub fn hear(&mut self, ticks: &[u64], queue_tick: u64) -> u64 {
        self.heard += 1;
        self.pending = Some(Change {
            seq: self.heard,
            ticks: ticks.to_vec(),
            queue_tick,
        });
        self.heard
    }

    /// How many changes were heard: a mutation that has run is saved once this many are.
    pub fn heard(&self) -> u64 {
        self.heard
    }

    /// The newest unsaved change, for the writer to save.
    pub fn take(&mut self) -> Option<Change> {
        self.pending.take()
    }

    /// The writer saved `seq` (and so every change before it).
    pub fn saved(&mut self, seq: u64) {
        self.status.saved = self.status.saved.max(seq);
        if self
            .status
            .failed
            .as_ref()
            .is_some_and(|(through, _)| *through <= seq)
        {
            self.status.failed = None;
        }
    }

    /// Saving `change` failed: the mutations waiting for it are answered with `error`, and it
    /// is kept to be saved again unless a newer change came meanwhile (which includes it).
    pub fn failed(&mut self, change: Change, error: &str) {
        self.status.failed = Some((change.seq, Arc::from(error)));
        if self.pending.is_none() {
            self.pending = Some(change);
        }
    }

    /// Asks the writer to save what is pending and end.
    pub fn close(&mut self) {
        self.closed = true;
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The writer ended.
    pub fn end(&mut self) {
        self.status.ended = true;
    }

    pub fn status(&self) -> Status {
        self.status.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_heard_during_a_save_go_together_into_the_next() {
        let mut p = Progress::new();
        assert_eq!(
            p.status().verdict(0),
            Some(Verdict::Saved),
            "nothing to wait for"
        );
        p.hear(&[1], 1);
        let first = p.take().expect("a change to save");
        assert_eq!(first.seq, 1);
        // While change 1 is being saved, three more arrive: only the newest is kept.
        p.hear(&[3], 2);
        p.hear(&[5], 3);
        assert_eq!(p.hear(&[7], 4), 4);
        p.saved(first.seq);
        assert_eq!(p.status().verdict(1), Some(Verdict::Saved));
        assert_eq!(p.status().verdict(2), None, "change 2 is not saved yet");
        let next = p.take().expect("the newest change");
        assert_eq!((next.seq, next.ticks, next.queue_tick), (4, vec![7], 4));
        assert_eq!(p.take(), None);
        p.saved(4);
        for target in 2..=4 {
            assert_eq!(p.status().verdict(target), Some(Verdict::Saved));
        }
    }

    #[test]
    fn a_failed_save_answers_its_waiters_and_is_tried_again() {
        let mut p = Progress::new();
        p.hear(&[1], 1);
        let change = p.take().expect("a change");
        p.failed(change.clone(), "disk full");
        assert_eq!(
            p.status().verdict(1),
            Some(Verdict::Failed(Arc::from("disk full")))
        );
        assert_eq!(p.take(), Some(change), "kept to be saved again");
        // A change heard after the failure waits for its own save.
        p.hear(&[3], 2);
        assert_eq!(p.status().verdict(2), None);
        let second = p.take().expect("change 2");
        p.saved(second.seq);
        assert_eq!(p.status().verdict(1), Some(Verdict::Saved));
        assert_eq!(p.status().failed, None, "a later save clears the failure");
    }

    #[test]
    fn a_failed_save_superseded_by_a_newer_change_is_not_kept() {
        let mut p = Progress::new();
        p.hear(&[1], 1);
        let change = p.take().expect("a change");
        p.hear(&[3], 2);
        p.failed(change, "disk full");
        assert_eq!(
            p.take().map(|c| c.seq),
            Some(2),
            "the newer change includes it"
        );
    }

    #[test]
    fn after_the_writer_ends_unsaved_changes_are_answered() {
        let mut p = Progress::new();
        p.hear(&[1], 1);
        let first = p.take().expect("change 1");
        p.saved(first.seq);
        p.hear(&[3], 2);
        p.close();
        assert!(p.is_closed());
        p.end();
        assert_eq!(p.status().verdict(1), Some(Verdict::Saved));
        assert_eq!(p.status().verdict(2), Some(Verdict::Ended));
    }
}
