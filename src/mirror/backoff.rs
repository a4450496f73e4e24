//! Reconnect delays: exponential backoff with jitter, so that mirrors cut off together do not
//! come back together and knock the server over.

use std::time::Duration;

/// How long to wait before reconnect attempt `attempt` (0 for the first retry): the delay
/// doubles from `initial` up to `max`, and a random share of up to half of it is taken off
/// ("equal jitter"), so a herd spreads over half the window while no retry comes early.
pub fn delay(attempt: u32, initial: Duration, max: Duration, random: u64) -> Duration {
    let doubled = initial.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
    let ceiling = doubled.min(max);
    let half = ceiling / 2;
    let jitter_nanos = random % (half.as_nanos() as u64).max(1);
    ceiling - half + Duration::from_nanos(jitter_nanos).min(half)
}

/// A small xorshift generator, seeded per mirror; jitter needs spread, not crypto.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator from a seed (any value; equal seeds give equal sequences).
    pub fn new(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// The next pseudo-random number.
    pub fn draw(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap_and_stay_in_the_jitter_window() {
        let mut jitter = Jitter::new(42);
        for attempt in 0..40 {
            let ceiling = (MS * 50)
                .saturating_mul(1 << attempt.min(20))
                .min(MS * 5000);
            for _ in 0..50 {
                let d = delay(attempt, MS * 50, MS * 5000, jitter.draw());
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "attempt {attempt}: {d:?} outside {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_a_herd() {
        let mut jitter = Jitter::new(7);
        let delays: std::collections::BTreeSet<Duration> = (0..100)
            .map(|_| delay(3, MS * 50, MS * 5000, jitter.draw()))
            .collect();
        assert!(delays.len() > 90, "only {} distinct delays", delays.len());
    }
}
