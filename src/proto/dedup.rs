//! The record of mutations a server ran by key, per source: what makes a retried mutation run
//! once (PROTOCOL.md, "Retries and exactly once"). Sans-IO: the driver asks [`Dedup::begin`]
//! before running a keyed mutation and hands the result to [`Dedup::finish`]; time is passed in.
//!
//! A key is recorded under the id of the client connection that sent it, so a client can only
//! repeat its own keys. The window is bounded by count and kept for at least a time: the oldest
//! finished entries go first when the count is reached, and entries older than the time go
//! whenever the record is touched. Running entries are never evicted (their number is bounded
//! by the connections and the replies each may have in flight).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::machine::{MutationKey, Outcome};

use super::session::Moment;

/// Keys kept per source by default.
pub const DEFAULT_DEDUP_WINDOW: usize = 4096;
/// How long a finished key is kept at least, by default.
pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(120);

/// A mutation's result as a client is answered: an outcome or a refusal's reason.
pub type Answer = Result<Outcome, String>;

/// A key as recorded: the sending connection's client id with the mutation's key.
type Recorded = (String, MutationKey);

enum Entry<W> {
    /// Running now; these wait for its result.
    Running(Vec<W>),
    Done(Answer),
}

/// What to do with a keyed mutation.
#[derive(Debug)]
pub enum Begin<W> {
    /// Not seen: run it, then [`Dedup::finish`].
    Run,
    /// Ran already: answer this, do not run it.
    Done(Answer),
    /// Its first copy is running: the waiter was kept and is handed back by
    /// [`Dedup::finish`] with the result.
    Joined,
    /// The record is full of running entries: run it without a record (counted; the window
    /// is too small for the load).
    Unrecorded(W),
}

/// The keys one source ran, with their results. `W` is how a waiting duplicate is told the
/// result (a channel's sender in the server).
pub struct Dedup<W> {
    entries: HashMap<Recorded, Entry<W>>,
    /// Finished keys, oldest first, with when they finished.
    finished: VecDeque<(Recorded, Moment)>,
    window: usize,
    ttl: Duration,
}

impl<W> std::fmt::Debug for Dedup<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("entries", &self.entries.len())
            .field("window", &self.window)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl<W> Default for Dedup<W> {
    fn default() -> Self {
        Dedup::new(DEFAULT_DEDUP_WINDOW, DEFAULT_DEDUP_TTL)
    }
}

impl<W> Dedup<W> {
    /// A record of at most `window` keys (at least 1), each finished one kept `ttl` at least
    /// unless the window is full.
    pub fn new(window: usize, ttl: Duration) -> Self {
        Dedup {
            entries: HashMap::new(),
            finished: VecDeque::new(),
            window: window.max(1),
            ttl,
        }
    }

    /// Keys held (running and finished).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A keyed mutation from `client` arrived at `now`; `waiter` hears the result if its first
    /// copy is still running.
    pub fn begin(&mut self, client: &str, key: MutationKey, now: Moment, waiter: W) -> Begin<W> {
        self.expire(now);
        let recorded = (client.to_owned(), key);
        match self.entries.get_mut(&recorded) {
            Some(Entry::Done(answer)) => return Begin::Done(answer.clone()),
            Some(Entry::Running(waiters)) => {
                waiters.push(waiter);
                return Begin::Joined;
            }
            None => {}
        }
        if self.entries.len() >= self.window && !self.evict_oldest() {
            return Begin::Unrecorded(waiter);
        }
        self.entries.insert(recorded, Entry::Running(Vec::new()));
        Begin::Run
    }

    /// The run of `key` from `client` ended with `answer`: recorded, and the duplicates that
    /// waited for it are handed back to be told.
    pub fn finish(
        &mut self,
        client: &str,
        key: MutationKey,
        answer: &Answer,
        now: Moment,
    ) -> Vec<W> {
        let recorded = (client.to_owned(), key);
        let waiters = match self
            .entries
            .insert(recorded.clone(), Entry::Done(answer.clone()))
        {
            Some(Entry::Running(waiters)) => waiters,
            // Evicted while running cannot happen (running entries stay); a key finished twice
            // keeps the later answer.
            Some(Entry::Done(_)) | None => Vec::new(),
        };
        self.finished.push_back((recorded, now));
        waiters
    }

    /// The run of `key` from `client` ended without knowing its outcome (a hop that lost its
    /// way to the source): nothing is recorded, so a repeat runs (is forwarded) again and the
    /// source's own record answers it. The duplicates that waited are handed back to be told.
    pub fn abandon(&mut self, client: &str, key: MutationKey) -> Vec<W> {
        let recorded = (client.to_owned(), key);
        match self.entries.get(&recorded) {
            Some(Entry::Running(_)) => match self.entries.remove(&recorded) {
                Some(Entry::Running(waiters)) => waiters,
                _ => Vec::new(),
            },
            // A finished key keeps its answer.
            Some(Entry::Done(_)) | None => Vec::new(),
        }
    }

    /// Drops finished keys older than the time to keep them.
    fn expire(&mut self, now: Moment) {
        while let Some((_, at)) = self.finished.front() {
            if now < *at + self.ttl {
                break;
            }
            self.evict_oldest();
        }
    }

    /// Drops the oldest finished key; `false` when none is finished.
    fn evict_oldest(&mut self) -> bool {
        while let Some((recorded, _)) = self.finished.pop_front() {
            // A key finished twice is queued twice; only a finished entry is dropped.
            if matches!(self.entries.get(&recorded), Some(Entry::Done(_))) {
                self.entries.remove(&recorded);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seq: u64) -> MutationKey {
        MutationKey {
            origin: "leaf".into(),
            epoch: 7,
            seq,
        }
    }

    fn at(secs: u64) -> Moment {
        Moment::since_epoch(Duration::from_secs(secs))
    }

    #[test]
    fn a_key_runs_once_and_its_repeats_get_the_recorded_answer() {
        let mut dedup = Dedup::<u32>::default();
        assert!(matches!(dedup.begin("mid", key(1), at(0), 0), Begin::Run));
        // A retry while the first copy runs waits for it.
        assert!(matches!(
            dedup.begin("mid", key(1), at(0), 1),
            Begin::Joined
        ));
        let answer = Ok(Outcome::Executed);
        assert_eq!(dedup.finish("mid", key(1), &answer, at(1)), [1]);
        match dedup.begin("mid", key(1), at(2), 2) {
            Begin::Done(recorded) => assert_eq!(recorded, answer),
            other => panic!("expected the recorded answer, got {other:?}"),
        }
        // Another key, and the same key from another client, run.
        assert!(matches!(dedup.begin("mid", key(2), at(2), 3), Begin::Run));
        assert!(matches!(dedup.begin("eve", key(1), at(2), 4), Begin::Run));
    }

    #[test]
    fn refusals_are_recorded_too() {
        let mut dedup = Dedup::<()>::default();
        assert!(matches!(dedup.begin("c", key(1), at(0), ()), Begin::Run));
        let refused = Err("client \"c\" may not mutate A".to_owned());
        dedup.finish("c", key(1), &refused, at(0));
        assert!(
            matches!(dedup.begin("c", key(1), at(1), ()), Begin::Done(Err(r)) if r.contains("may not"))
        );
    }

    #[test]
    fn the_window_drops_the_oldest_finished_key_and_never_a_running_one() {
        let mut dedup = Dedup::<()>::new(2, Duration::from_secs(3600));
        assert!(matches!(dedup.begin("c", key(1), at(0), ()), Begin::Run));
        assert!(matches!(dedup.begin("c", key(2), at(0), ()), Begin::Run));
        // Full of running keys: a third runs unrecorded.
        assert!(matches!(
            dedup.begin("c", key(3), at(0), ()),
            Begin::Unrecorded(())
        ));
        dedup.finish("c", key(1), &Ok(Outcome::Executed), at(1));
        // Now key 1 (finished, oldest) makes room.
        assert!(matches!(dedup.begin("c", key(3), at(2), ()), Begin::Run));
        dedup.finish("c", key(2), &Ok(Outcome::Executed), at(3));
        // Key 1 was forgotten: it runs again, in the room key 2 leaves.
        assert!(matches!(dedup.begin("c", key(1), at(4), ()), Begin::Run));
        assert_eq!(dedup.len(), 2);
    }

    #[test]
    fn finished_keys_are_kept_for_the_ttl_then_forgotten() {
        let mut dedup = Dedup::<()>::new(100, Duration::from_secs(120));
        assert!(matches!(dedup.begin("c", key(1), at(0), ()), Begin::Run));
        dedup.finish("c", key(1), &Ok(Outcome::Canceled), at(10));
        assert!(matches!(
            dedup.begin("c", key(1), at(129), ()),
            Begin::Done(_)
        ));
        assert!(matches!(dedup.begin("c", key(1), at(130), ()), Begin::Run));
    }

    #[test]
    fn an_abandoned_run_is_not_recorded_and_its_repeat_runs_again() {
        let mut dedup: Dedup<u32> = Dedup::new(8, Duration::from_secs(60));
        let now = Moment::ZERO;
        assert!(matches!(dedup.begin("leaf", key(1), now, 1), Begin::Run));
        assert!(matches!(dedup.begin("leaf", key(1), now, 2), Begin::Joined));
        assert_eq!(dedup.abandon("leaf", key(1)), [2], "the duplicate is told");
        assert!(dedup.is_empty());
        assert!(matches!(dedup.begin("leaf", key(1), now, 3), Begin::Run));
        dedup.finish("leaf", key(1), &Ok(Outcome::Executed), now);
        assert!(dedup.abandon("leaf", key(1)).is_empty());
        assert!(matches!(
            dedup.begin("leaf", key(1), now, 4),
            Begin::Done(Ok(Outcome::Executed))
        ));
    }
}
