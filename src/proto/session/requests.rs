//! Request ids of a client: the requests waiting for the server's answer, by id.
//!
//! Ids are reused once answered, so they stay as small as the number of requests in flight:
//! one byte on the wire each way, where a counter would take three bytes after 250 requests
//! and five after 65 535. An id stays taken until its answer comes or the connection ends,
//! even when its caller gave up (a timeout, a dropped future): a late answer must not resolve
//! another request. Id 0 is never taken: it means "no reply" and "unsolicited".

/// Most requests waiting for answers at once. An id is held until its answer comes, so a
/// source that keeps the connection alive but never answers would otherwise make every later
/// request cost memory for as long as the connection lasts.
pub const MAX_IN_FLIGHT: usize = 65_536;

/// Waiting requests, each with what its caller wants back with the answer (`P`).
#[derive(Debug)]
pub struct Requests<P> {
    /// Slot `i` holds id `i + 1`.
    slots: Vec<Option<P>>,
    free: Vec<usize>,
}

impl<P> Default for Requests<P> {
    fn default() -> Self {
        Requests {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<P> Requests<P> {
    /// Requests holding an id now.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Takes the smallest free id for a request; `None` at [`MAX_IN_FLIGHT`].
    pub fn insert(&mut self, pending: P) -> Option<u64> {
        if self.in_flight() >= MAX_IN_FLIGHT {
            return None;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(pending);
                slot
            }
            None => {
                self.slots.push(Some(pending));
                self.slots.len() - 1
            }
        };
        Some(slot as u64 + 1)
    }

    /// Takes the request with this id, if one waits (the server's answer to it).
    pub fn take(&mut self, id: u64) -> Option<P> {
        let slot = usize::try_from(id.checked_sub(1)?).ok()?;
        let pending = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(pending)
    }

    /// The request with this id, if one waits.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut P> {
        let slot = usize::try_from(id.checked_sub(1)?).ok()?;
        self.slots.get_mut(slot)?.as_mut()
    }

    /// The waiting requests with their ids, in id order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut P)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(slot, p)| Some((slot as u64 + 1, p.as_mut()?)))
    }

    /// Keeps the requests `keep` accepts, freeing the ids of the others.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &mut P) -> bool) {
        for (slot, entry) in self.slots.iter_mut().enumerate() {
            if let Some(pending) = entry
                && !keep(slot as u64 + 1, pending)
            {
                *entry = None;
                self.free.push(slot);
            }
        }
    }

    /// Takes every waiting request: the connection that would answer them ended.
    pub fn take_all(&mut self) -> Vec<P> {
        self.free.clear();
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_as_small_as_the_requests_in_flight() {
        let mut requests = Requests::default();
        for _ in 0..1000 {
            let id = requests.insert(()).expect("room");
            assert_eq!(id, 1, "one at a time: always id 1");
            assert!(requests.take(id).is_some());
        }
        let ids: Vec<u64> = (0..3).filter_map(|_| requests.insert(())).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(requests.take(2).is_some());
        assert_eq!(requests.insert(()), Some(2), "a freed id is reused");
        assert!(requests.take(0).is_none(), "0 is never a request");
        assert!(requests.take(99).is_none());
    }

    #[test]
    fn an_abandoned_id_stays_taken_until_its_answer_comes() {
        let mut requests = Requests::default();
        let first = requests.insert("timed out").expect("room");
        let second = requests.insert("waiting").expect("room");
        assert_ne!(first, second);
        // The late answer frees the id and resolves nobody else.
        assert_eq!(requests.take(first), Some("timed out"));
        assert_eq!(requests.insert("next"), Some(first));
        assert_eq!(requests.take(second), Some("waiting"));
    }

    #[test]
    fn a_source_that_never_answers_costs_at_most_the_in_flight_limit() {
        let mut requests = Requests::default();
        for _ in 0..MAX_IN_FLIGHT {
            requests.insert(()).expect("below the limit");
        }
        assert_eq!(requests.insert(()), None);
        assert!(requests.take(8).is_some());
        assert_eq!(requests.insert(()), Some(8), "an answer frees its id");
    }

    #[test]
    fn retained_requests_keep_their_ids_and_the_others_free_theirs() {
        let mut requests = Requests::default();
        for n in 0..4 {
            requests.insert(n);
        }
        requests.retain(|_, n| *n % 2 == 0);
        let left: Vec<(u64, i32)> = requests.iter_mut().map(|(id, n)| (id, *n)).collect();
        assert_eq!(left, [(1, 0), (3, 2)]);
        assert_eq!(requests.in_flight(), 2);
        if let Some(n) = requests.get_mut(3) {
            *n = 7;
        }
        assert_eq!(requests.take(3), Some(7));
        assert!(requests.get_mut(2).is_none(), "a freed id holds nothing");
        let reused = [requests.insert(8), requests.insert(9)];
        assert!(
            reused[0] != reused[1] && reused.iter().all(|id| matches!(id, Some(2..=4))),
            "freed ids are reused: {reused:?}"
        );
    }

    #[test]
    fn the_end_of_a_connection_answers_everything_and_frees_every_id() {
        let mut requests = Requests::default();
        for n in 0..5 {
            requests.insert(n);
        }
        assert_eq!(requests.take_all(), [0, 1, 2, 3, 4]);
        assert_eq!(requests.in_flight(), 0);
        assert_eq!(requests.insert(9), Some(1));
    }
}
