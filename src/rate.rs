//! Client-side rate limit for the Looker API: at most `n` requests in any 60-second window,
//! shared by every call of one client (and its clones), applied before each request including
//! logins and async-task polls.
//!
//! Looker answers 429 when an instance is over its API quota, and on Looker (Google Cloud core)
//! editions the quota is small; pacing ourselves keeps a long extract (many polls) or several
//! runs sharing one client from being throttled at all. A sliding window (not a token bucket
//! with a refill rate) so the limit means exactly what the setting says: never more than `n`
//! requests started within any minute.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The window the limit counts requests in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Sliding-window limiter; `max == 0` turns it off.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    max: usize,
    window: Duration,
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
        RateLimiter {
            max,
            window,
            started: Mutex::new(VecDeque::with_capacity(max.min(1024))),
        }
    }

    /// Waits until one more request may start, then counts it. Returns how long it waited.
    pub(crate) async fn acquire(&self) -> Duration {
        if self.max == 0 {
            return Duration::ZERO;
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
                return now.duration_since(begin);
            }
            let oldest = *started.front().expect("window is full");
            let wait = (oldest + self.window).saturating_duration_since(now);
            tracing::info!(
                target: "looker",
                limit_per_window = self.max,
                wait_ms = wait.as_millis() as u64,
                "client-side Looker rate limit reached; waiting"
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
}
