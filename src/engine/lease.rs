//! The period lock's lease and its heartbeat.
//!
//! One poster per period: the engine (run, replay) and `reverse` take the store lock
//! `post#{instance}#{period_key}` with a short lease ([`DEFAULT_LEASE`]) and, while they work,
//! renew it every third of the lease ([`Lease::hold`]), so a run that lasts longer than the lease
//! is never overtaken, and the lock of a run that died (crash, kill, power loss) expires within
//! one lease of its last heartbeat.
//!
//! The heartbeat is not a detached task: [`Lease::hold`] polls it together with the work, in the
//! same task. It stops the moment the work ends — finished, failed, or stopped by an injected
//! crash ([`super::EngineError::Crashed`]) — and when the future is dropped, so nothing ever keeps
//! a dead run's lock alive. (The engine borrows its store, so a spawned `'static` task could not
//! hold it anyway.)
//!
//! A renewal that finds the lock gone (taken over after a stall longer than the lease, or
//! released) sets [`Lease::lost`] for good and reports it once to the caller, which records an
//! audit warning. **For the posting loop:** check [`Lease::lost`] (or a [`LeaseLost`] handle from
//! [`Lease::lost_flag`]) before each write and stop without writing when it is set — another
//! poster may be working on the period. A store that fails (rather than refuses) a renewal is
//! retried sooner and does not set the flag.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use crate::domain::run::{EventKind, EventLevel};
use crate::store::{Store, StoreError};

/// The period lock's lease for every caller without a shorter deadline (CLI `run`, `replay`,
/// `reverse`, the demo; Lambdas use the smaller of this and their time left).
///
/// Two minutes, renewed every 40 s: a live run keeps its lock for as long as it works (two
/// renewals in a row may fail before the lease is at risk), and a run that died leaves a lock
/// that expires within two minutes — after which a new `run` proceeds and closes the dead run, or
/// `replay RUN_ID` resumes it at once (the busy message says both).
pub const DEFAULT_LEASE: Duration = Duration::minutes(2);

/// How long a lock record outlives its lease (its `expires_at`, the DynamoDB TTL).
pub const RECORD_MARGIN: Duration = Duration::days(1);

/// The shortest interval between two renewals (so a tiny test lease does not spin).
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// A period lock this process holds (or is about to take), with its lease.
pub struct Lease<'s> {
    store: &'s dyn Store,
    key: String,
    owner: String,
    lease: Duration,
    lost: LeaseLost,
}

/// Shared view of [`Lease::lost`]: cheap to clone, for code that runs under [`Lease::hold`].
#[derive(Debug, Clone, Default)]
pub struct LeaseLost(Arc<AtomicBool>);

impl LeaseLost {
    /// The lock was found taken over or released: stop before the next write.
    pub fn is_lost(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl<'s> Lease<'s> {
    pub fn new(store: &'s dyn Store, key: &str, owner: &str, lease: Duration) -> Self {
        Lease {
            store,
            key: key.to_string(),
            owner: owner.to_string(),
            lease,
            lost: LeaseLost::default(),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// `(now, in_progress_until, expires_at)` for acquiring or renewing the lock now.
    pub fn times(&self) -> (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>) {
        let now = Utc::now();
        let until = now + self.lease;
        (now, until, until + RECORD_MARGIN)
    }

    /// A handle on whether a renewal found the lock taken over or released (see the module
    /// docs), for the posting loop.
    pub fn lost_flag(&self) -> LeaseLost {
        self.lost.clone()
    }

    /// Time between two renewals: a third of the lease.
    pub fn interval(&self) -> std::time::Duration {
        (self.lease / 3)
            .to_std()
            .unwrap_or_default()
            .max(MIN_INTERVAL)
    }

    /// Renews the lock once: its lease runs a full [`DEFAULT_LEASE`] (or the lease given) from
    /// now. `StoreError::LockLost` when this owner no longer holds it.
    pub async fn renew(&self) -> Result<(), StoreError> {
        let (now, until, expires) = self.times();
        self.store
            .renew_lock(&self.key, &self.owner, now, until, expires)
            .await
    }

    /// Renews every [`Self::interval`] until a renewal finds the lock lost; returns that error.
    async fn heartbeat(&self) -> StoreError {
        let every = self.interval();
        let mut wait = every;
        loop {
            tokio::time::sleep(wait).await;
            match self.renew().await {
                Ok(()) => wait = every,
                Err(StoreError::LockLost(m)) => {
                    self.lost.set();
                    return StoreError::LockLost(m);
                }
                Err(e) => {
                    // The store failed, the lock may well still be ours: try again sooner.
                    tracing::warn!(
                        lock = %self.key,
                        owner = %self.owner,
                        "could not renew the period lock, retrying: {e}"
                    );
                    wait = (every / 2).max(MIN_INTERVAL);
                }
            }
        }
    }

    /// Runs `work` while renewing the lock every [`Self::interval`]. The heartbeat runs only
    /// while `work` does (same task): it stops when `work` returns, whatever it returns, and
    /// when this future is dropped. If a renewal finds the lock lost, [`Self::lost`] is set,
    /// `on_lost` is awaited once with the store's answer (to record it), and `work` goes on
    /// without a heartbeat.
    pub async fn hold<F, L, LF>(&self, work: F, on_lost: L) -> F::Output
    where
        F: Future,
        L: FnOnce(StoreError) -> LF,
        LF: Future<Output = ()>,
    {
        // Boxed: the posting loop's future is large (see `post_all`).
        let mut work = Box::pin(work);
        let lost = {
            let heartbeat = self.heartbeat();
            tokio::pin!(heartbeat);
            tokio::select! {
                biased;
                out = &mut work => return out,
                lost = &mut heartbeat => lost,
            }
        };
        on_lost(lost).await;
        work.await
    }
}

impl super::Engine<'_> {
    /// [`Lease::hold`] with the engine's audit trail: a lost lock is recorded as a warning
    /// event of `run_id`.
    pub(super) async fn holding<F: Future>(
        &self,
        lease: &Lease<'_>,
        run_id: &str,
        work: F,
    ) -> F::Output {
        lease
            .hold(work, |e| async move {
                self.event(
                    run_id,
                    EventLevel::Warn,
                    EventKind::Lock,
                    format!(
                        "the period lock {} was lost while posting ({e}); another run may have taken the period over — compare with `ml-connector show {run_id}` before replaying",
                        lease.key()
                    ),
                )
                .await;
            })
            .await
    }
}

/// What a run (or replay, or reversal) says when the period lock is held by `owner` until
/// `until`: who holds it, when the lock expires, and the command that resumes the holder if it
/// died. Owners are run ids (`run`, `replay`) or `reverse-{run id}` (`reverse`).
pub fn busy_message(owner: &str, until: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let expiry = format!(
        "{} ({})",
        until.format("%Y-%m-%d %H:%M:%S UTC"),
        from_now(until - now)
    );
    match owner.strip_prefix("reverse-") {
        Some(run_id) => format!(
            "a reversal of run {run_id} holds this period's lock until {expiry}, and renews it while it is running; nothing was written. If that reversal is still running, let it finish. If it stopped (crashed or killed), finish it now with `ml-connector reverse {run_id} --config FILE` (it resumes where it stopped), or try again once the lock expires."
        ),
        None => format!(
            "another run ({owner}) holds this period's lock until {expiry}, and renews it while it is running; nothing was written. If {owner} is still running, let it finish. If it stopped (crashed or killed), resume it now with `ml-connector replay {owner} --config FILE` (AWS: `ml-connector replay {owner} --request --table TABLE`), or try again once the lock expires."
        ),
    }
}

/// `in 1 min 40 s`, `in 12 s`, `now`.
fn from_now(left: Duration) -> String {
    let secs = left.num_seconds();
    match secs {
        s if s <= 0 => "now".to_string(),
        s if s < 60 => format!("in {s} s"),
        s if s % 60 == 0 => format!("in {} min", s / 60),
        s => format!("in {} min {} s", s / 60, s % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LockOutcome, SqliteStore};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid time")
    }

    #[test]
    fn busy_message_names_the_expiry_and_the_resume_command() {
        let m = busy_message("r-20261123100000-beef", t(100), t(0));
        assert!(
            m.contains("until 2027-01-15 08:01:40 UTC (in 1 min 40 s)"),
            "{m}"
        );
        assert!(
            m.contains("`ml-connector replay r-20261123100000-beef --config FILE`"),
            "{m}"
        );
        assert!(
            m.contains("`ml-connector replay r-20261123100000-beef --request --table TABLE`"),
            "{m}"
        );
        let m = busy_message("reverse-r-20261123100000-beef", t(30), t(0));
        assert!(m.contains("(in 30 s)"), "{m}");
        assert!(
            m.contains("`ml-connector reverse r-20261123100000-beef --config FILE`"),
            "{m}"
        );
        assert!(!m.contains("replay"), "{m}");
        assert!(busy_message("r-1", t(0), t(5)).contains("(now)"));
        assert!(busy_message("r-1", t(120), t(0)).contains("(in 2 min)"));
    }

    #[test]
    fn interval_is_a_third_of_the_lease() {
        let store = SqliteStore::open_in_memory().expect("store");
        let l = Lease::new(&store, "k", "o", DEFAULT_LEASE);
        assert_eq!(l.interval(), std::time::Duration::from_secs(40));
        let l = Lease::new(&store, "k", "o", Duration::milliseconds(30));
        assert_eq!(l.interval(), MIN_INTERVAL);
    }

    async fn acquire(store: &dyn Store, lease: &Lease<'_>) {
        let (now, until, expires) = lease.times();
        let got = store
            .acquire_lock(lease.key(), &lease.owner, now, until, expires)
            .await
            .expect("acquire");
        assert_eq!(got, LockOutcome::Acquired);
    }

    async fn holder(store: &dyn Store, key: &str) -> LockOutcome {
        let now = Utc::now();
        store
            .acquire_lock(key, "probe", now, now, now)
            .await
            .expect("probe")
    }

    #[tokio::test]
    async fn hold_renews_while_working_and_stops_when_the_work_ends() {
        let store = SqliteStore::open_in_memory().expect("store");
        let lease = Lease::new(&store, "post#x#p", "r-a", Duration::milliseconds(300));
        acquire(&store, &lease).await;
        // Work three leases long: the lock is never free meanwhile.
        let out = lease
            .hold(
                async {
                    for _ in 0..9 {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        assert!(
                            matches!(holder(&store, "post#x#p").await, LockOutcome::InProgress { ref owner, .. } if owner == "r-a"),
                            "overtaken while working"
                        );
                    }
                    7
                },
                |e| async move { panic!("lost: {e}") },
            )
            .await;
        assert_eq!(out, 7);
        assert!(!lease.lost.is_lost());
        // Work over (as after an injected crash, which returns early too): no more renewals,
        // the lease runs out.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(holder(&store, "post#x#p").await, LockOutcome::Acquired);
    }

    #[tokio::test]
    async fn a_lost_lock_is_reported_once_and_flagged() {
        let store = SqliteStore::open_in_memory().expect("store");
        let lease = Lease::new(&store, "post#x#p", "r-a", Duration::milliseconds(300));
        acquire(&store, &lease).await;
        let flag = lease.lost_flag();
        let reported = std::sync::Mutex::new(Vec::new());
        lease
            .hold(
                async {
                    // Someone else takes the lock (e.g. after this process stalled).
                    store
                        .release_lock("post#x#p", "r-a")
                        .await
                        .expect("release");
                    let now = Utc::now();
                    store
                        .acquire_lock(
                            "post#x#p",
                            "r-b",
                            now,
                            now + Duration::minutes(1),
                            now + Duration::days(1),
                        )
                        .await
                        .expect("take over");
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    assert!(flag.is_lost(), "the next renewal found it lost");
                },
                |e| {
                    reported.lock().expect("mutex").push(e);
                    async {}
                },
            )
            .await;
        assert!(lease.lost.is_lost());
        let reported = reported.into_inner().expect("mutex");
        assert_eq!(reported.len(), 1);
        assert!(
            matches!(reported[0], StoreError::LockLost(_)),
            "{reported:?}"
        );
        // The new owner keeps its lock.
        assert!(
            matches!(holder(&store, "post#x#p").await, LockOutcome::InProgress { ref owner, .. } if owner == "r-b")
        );
    }
}
