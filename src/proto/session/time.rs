//! Time as sessions see it: a moment since an epoch the driver picks.
//!
//! Not `std::time::Instant`: a browser's WebAssembly has no such clock, and a simulator steps
//! its own. Drivers turn their clock into moments (`Moment::since_epoch(epoch.elapsed())`).

use std::ops::Add;
use std::time::Duration;

/// A point in time, as the time since the driver's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Moment(Duration);

impl Moment {
    /// The driver's epoch.
    pub const ZERO: Moment = Moment(Duration::ZERO);

    /// The moment `elapsed` after the driver's epoch.
    pub fn since_epoch(elapsed: Duration) -> Moment {
        Moment(elapsed)
    }

    /// The time since the epoch, to turn a moment back into the driver's clock.
    pub fn elapsed(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn since(self, earlier: Moment) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Moment {
    type Output = Moment;

    fn add(self, rhs: Duration) -> Moment {
        Moment(self.0.saturating_add(rhs))
    }
}
