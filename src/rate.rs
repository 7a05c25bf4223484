//! Client-side rate limit shared by the Looker and D365 clients: at most `n` requests in any
//! window, shared by every call of one client (and its clones), applied before each request.
//!
//! Looker answers 429 when an instance is over its API quota (small on Looker (Google Cloud
//! core) editions); F&O's service protection throttles per user/app over a sliding window.
//! Pacing ourselves keeps a long extract or a big post from being throttled at all. A sliding
//! window (not a token bucket with a refill rate) so the limit means exactly what the setting
//! says: never more than `n` requests started within any window.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The window the Looker limit counts requests in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The limiter would have to wait past the caller's deadline; nothing was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client-side rate limit needs a {wait:?} wait, but only {left:?} remain before the deadline")]
pub struct PastDeadline {
    pub wait: Duration,
    pub left: Duration,
}

/// Sliding-window limiter; `max == 0` turns it off.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    max: usize,
    window: Duration,
    /// Which service, for the log line (`looker`, `d365`).
    service: &'static str,
    /// Start times of the requests in the current window, oldest first. The mutex is held while
    /// a caller waits, so waiters are served in order and never overshoot.
    started: Mutex<VecDeque<Instant>>,
}

impl RateLimiter {
    /// At most `per_minute` requests per 60 s; `0` = unlimited.
    pub(crate) fn per_minute(per_minute: u32) -> Self {
        Self::new(per_minute as usize, WINDOW)
    }

    pub(crate) fn new(max: usize, window: Duration) -> Self {
        Self::for_service("looker", max, window)
    }

    /// A limiter whose log lines name `service`.
    pub(crate) fn for_service(service: &'static str, max: usize, window: Duration) -> Self {
        RateLimiter {
            max,
            window,
            service,
            started: Mutex::new(VecDeque::with_capacity(max.min(1024))),
        }
    }

    /// Waits until one more request may start, then counts it. Returns how long it waited.
    #[cfg(test)]
    pub(crate) async fn acquire(&self) -> Duration {
        // Without a deadline it never refuses.
        self.acquire_until(None).await.unwrap_or_default()
    }

    /// [`Self::acquire`], but refuses (without waiting) a wait that would end after `deadline`,
    /// so a caller with a time budget stops instead of sleeping into its timeout.
    pub(crate) async fn acquire_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Duration, PastDeadline> {
        if self.max == 0 {
            return Ok(Duration::ZERO);
        }
        let mut started = self.started.lock().await;
        let begin = Instant::now();
        loop {
            let now = Instant::now();
            while started
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.window)
            {
                started.pop_front();
            }
            if started.len() < self.max {
                started.push_back(now);
                return Ok(now.duration_since(begin));
            }
            let Some(&oldest) = started.front() else {
                continue;
            };
            let wait = (oldest + self.window).saturating_duration_since(now);
            if let Some(d) = deadline {
                if now + wait > d {
                    return Err(PastDeadline {
                        wait,
                        left: d.saturating_duration_since(now),
                    });
                }
            }
            tracing::info!(
                target: "rate",
                service = self.service,
                limit_per_window = self.max,
                window_ms = self.window.as_millis() as u64,
                wait_ms = wait.as_millis() as u64,
                "client-side rate limit reached; waiting"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time with a short window (the crate does not enable tokio's `test-util`).
    const W: Duration = Duration::from_millis(300);

    #[tokio::test]
    async fn never_more_than_max_in_any_window() {
        let rl = RateLimiter::new(3, W);
        let t0 = Instant::now();
        let mut at = Vec::new();
        for _ in 0..7 {
            rl.acquire().await;
            at.push(Instant::now().duration_since(t0));
        }
        // 3 at once, 3 after one window, 1 after two.
        let windows: Vec<u128> = at.iter().map(|d| d.as_millis() / W.as_millis()).collect();
        assert_eq!(windows, vec![0, 0, 0, 1, 1, 1, 2], "{at:?}");
        for (i, a) in at.iter().enumerate() {
            let in_window = at
                .iter()
                .filter(|b| **b >= *a && b.saturating_sub(*a) < W)
                .count();
            assert!(in_window <= 3, "request {i}: {in_window} in one window");
        }
    }

    #[tokio::test]
    async fn zero_is_off() {
        let rl = RateLimiter::per_minute(0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(rl.acquire().await, Duration::ZERO);
        }
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_by_concurrent_callers() {
        let rl = std::sync::Arc::new(RateLimiter::new(2, W));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let rl = rl.clone();
                tokio::spawn(async move {
                    rl.acquire().await;
                    Instant::now().duration_since(t0).as_millis() / W.as_millis()
                })
            })
            .collect();
        let mut windows = Vec::new();
        for t in tasks {
            windows.push(t.await.unwrap());
        }
        windows.sort();
        assert_eq!(windows, vec![0, 0, 1, 1, 2, 2]);
    }

    #[tokio::test]
    async fn refuses_a_wait_past_the_deadline() {
        let rl = RateLimiter::for_service("d365", 1, Duration::from_secs(30));
        let soon = Instant::now() + Duration::from_millis(200);
        assert!(rl.acquire_until(Some(soon)).await.is_ok());
        let t0 = Instant::now();
        let e = rl.acquire_until(Some(soon)).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_millis(100), "it waited");
        assert!(e.wait > Duration::from_secs(29), "{e:?}");
        assert!(e.to_string().contains("deadline"), "{e}");
    }
}
