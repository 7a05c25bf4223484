//! The posting loop's time budget: stop deliberately, between two writes, while there is still
//! time to record where the run stopped, instead of being killed mid-request by a Lambda timeout
//! (which leaves the run `posting`, its lock held until the lease ends, and nobody told).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Time always kept back for recording the stop (audit event, run status, lock release).
pub const STOP_RESERVE: Duration = Duration::from_secs(1);

/// The least a write step is assumed to take, so the first write (nothing measured yet) is not
/// started with only the reserve left.
pub const MIN_STEP_ESTIMATE: Duration = Duration::from_secs(2);

/// A deadline plus what the slowest write so far took (the estimate of the next one).
#[derive(Debug)]
pub(crate) struct Budget {
    deadline: Option<Instant>,
    slowest_ms: AtomicU64,
    /// Set when the period lock's heartbeat found the lock taken over: no further write.
    lost: Option<super::lease::LeaseLost>,
}

impl Budget {
    pub(crate) fn new(deadline: Option<Instant>) -> Self {
        Budget {
            deadline,
            slowest_ms: AtomicU64::new(0),
            lost: None,
        }
    }

    /// Stops before the next write once `lost` says the period lock was taken over (a run that
    /// outlived its lease): the run ends `interrupted`, and whoever holds the lock now, or a
    /// replay, converges D365 from where it stopped.
    pub(crate) fn with_lease(mut self, lost: super::lease::LeaseLost) -> Self {
        self.lost = Some(lost);
        self
    }

    pub(crate) fn has_deadline(&self) -> bool {
        self.deadline.is_some()
    }

    /// Records how long one write step (a `$batch`, a line, a header) took.
    pub(crate) fn took(&self, started: Instant) {
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.slowest_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// `Some(time left)` when the next step might not finish before the deadline: time left is
    /// below the slowest step so far (at least [`MIN_STEP_ESTIMATE`], ×1.5) plus
    /// [`STOP_RESERVE`]. `None`: go ahead.
    pub(crate) fn short(&self) -> Option<Duration> {
        if self.lost.as_ref().is_some_and(|l| l.is_lost()) {
            return Some(Duration::ZERO);
        }
        let deadline = self.deadline?;
        let left = deadline.saturating_duration_since(Instant::now());
        let slowest =
            Duration::from_millis(self.slowest_ms.load(Ordering::Relaxed)).max(MIN_STEP_ESTIMATE);
        let needed = slowest + slowest / 2 + STOP_RESERVE;
        (left < needed).then_some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_deadline_never_short_and_slow_steps_raise_the_bar() {
        let b = Budget::new(None);
        b.took(Instant::now() - Duration::from_secs(100));
        assert_eq!(b.short(), None);

        let b = Budget::new(Some(Instant::now() + Duration::from_secs(5)));
        assert_eq!(b.short(), None, "5 s left, nothing measured yet");
        // A step that took 3 s needs 4.5 s + reserve: 5 s is not enough.
        b.took(Instant::now() - Duration::from_secs(3));
        assert!(b.short().is_some());

        let b = Budget::new(Some(Instant::now() + Duration::from_millis(500)));
        assert!(b.short().is_some(), "less than the reserve left");

        // Nothing measured yet: the first write still needs the minimum estimate (2 s × 1.5 + 1 s).
        let b = Budget::new(Some(Instant::now() + Duration::from_millis(3500)));
        assert!(
            b.short().is_some(),
            "3.5 s is less than the first write's 4 s"
        );
        let b = Budget::new(Some(Instant::now() + Duration::from_millis(4500)));
        assert_eq!(b.short(), None);
    }
}
