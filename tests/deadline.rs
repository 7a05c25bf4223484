//! Time budgets: no wait outlives the caller's deadline, a run that runs out of time
//! stops cleanly (`interrupted`, lock released, audit says where) and a replay finishes it
//! exactly once, and the D365 request throttle spaces requests. Real sockets against the
//! sandbox simulators.
#![cfg(all(feature = "aws", feature = "sandbox"))]

mod common;
mod faults_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use faults_support::{check, snapshot, world, World, INSTANCE};
use ml_connector::d365::D365Error;
use ml_connector::domain::config::{InstanceConfig, Posting, VoucherBy};
use ml_connector::domain::run::{LineStatus, RunStatus};
use ml_connector::engine::{Engine, Mode, NoProgress, Outcome, Progress, RunOptions};
use ml_connector::looker::LookerError;
use ml_connector::sandbox::d365::SimService;
use ml_connector::store::LockOutcome;
use ml_connector::wiring::build_clients;
use tokio::time::Instant;

fn creds() -> ml_connector::secrets::Credentials {
    faults_support::sandbox_creds()
}

fn opts(deadline: Option<Instant>) -> RunOptions {
    RunOptions {
        run_date: faults_support::event_date(),
        trigger: "test".into(),
        mode: Mode::Post,
        lease: ChronoDuration::minutes(5),
        deadline,
        supersede: false,
    }
}

/// Fails the test instead of hanging when a client ignores its deadline.
async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("still waiting after {limit:?}: the deadline was ignored"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d365_429_with_long_retry_after_under_a_3s_deadline_returns_promptly() {
    let w = world().build().await;
    let clients = build_clients(&w.config, &creds()).expect("clients");
    let d365 = clients
        .d365
        .with_deadline(Instant::now() + Duration::from_secs(3));

    // A read: D365 asks for 120 s; the client must not sleep (its default cap is 60 s).
    w.d365.throttle_next(1, Some(120));
    let t0 = Instant::now();
    let err = within(Duration::from_secs(20), d365.token_check())
        .await
        .expect_err("throttled read under a deadline");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert!(matches!(err, D365Error::OutOfTime { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("out of time") && text.contains("429") && text.contains("120.0s"),
        "{text}"
    );

    // A write: refused by the 429, so nothing written and the error says so.
    w.d365.throttle_next(1, Some(120));
    let t0 = Instant::now();
    let err = within(
        Duration::from_secs(20),
        d365.create_header("usmf", "GenJrn", "MLC deadline-test"),
    )
    .await
    .expect_err("throttled write under a deadline");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert!(matches!(err, D365Error::OutOfTime { .. }), "{err:?}");
    assert!(w.d365.headers().is_empty(), "nothing may be written");

    // The original client (no deadline) is unaffected and the throttle is over.
    clients
        .d365
        .token_check()
        .await
        .expect("no deadline, no throttle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looker_429_under_a_deadline_returns_promptly() {
    let w = world().build().await;
    let clients = build_clients(&w.config, &creds()).expect("clients");
    let looker = clients
        .looker
        .with_deadline((Instant::now() + Duration::from_secs(3)).into_std());
    looker.login_check().await.expect("login");
    w.looker.throttle_next(1, Some(120));
    let t0 = Instant::now();
    let err = within(Duration::from_secs(20), looker.look("1"))
        .await
        .expect_err("throttled under a deadline");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert!(matches!(err, LookerError::OutOfTime { .. }), "{err:?}");
}

/// Slows D365 down once the first vouchers are in, so the deadline is reached mid-post whatever
/// the machine's speed: fast reads, one fast `$batch`, then every answer takes `slow`.
struct SlowAfterFirstWrite<'a> {
    world: &'a World,
    slow: Duration,
    fired: AtomicBool,
}

impl Progress for SlowAfterFirstWrite<'_> {
    fn line_posted(&self, done: usize, _total: usize) {
        if done > 0 && !self.fired.swap(true, Ordering::SeqCst) {
            self.world.d365.set_latency(self.slow);
        }
    }
}

fn many_vouchers(posting: Posting) -> impl Fn(&mut InstanceConfig) + Copy {
    move |c: &mut InstanceConfig| {
        // Every row its own voucher, one voucher per `$batch`: many small requests.
        c.journal.voucher_by = VoucherBy::Row;
        c.journal.max_voucher_lines = 3;
        c.d365.batch_operations = 3;
        c.d365.posting = posting;
    }
}

/// Line writes D365 received: `$batch` requests, or single line POSTs.
fn line_writes(w: &World, posting: Posting) -> usize {
    match posting {
        Posting::Batch => w.d365.batch_request_count(),
        Posting::Lines => w
            .d365
            .request_log()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/LedgerJournalLines"))
            .count(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_mid_post_interrupts_cleanly_and_replay_finishes_exactly_once() {
    interrupt_then_replay(Posting::Batch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_mid_post_line_by_line_interrupts_and_replay_finishes() {
    interrupt_then_replay(Posting::Lines).await;
}

async fn interrupt_then_replay(posting: Posting) {
    // What a run without any deadline leaves in D365.
    let expected = {
        let r = world().adjust(many_vouchers(posting)).build().await;
        let clients = build_clients(&r.config, &creds()).expect("clients");
        let engine = Engine {
            extractor: &clients.looker,
            ledger: &clients.d365,
            store: r.store.as_ref(),
            progress: &NoProgress,
        };
        let rep = engine.run(&r.config, &opts(None)).await.expect("reference");
        assert_eq!(rep.outcome, Outcome::Posted, "{:?}", rep.run.message);
        let mut e = snapshot(&r.d365);
        e.source_rows = r.store.source_rows(&rep.run.run_id).await.unwrap().len();
        assert!(e.vouchers.len() >= 6, "want many vouchers: {e:?}");
        e
    };

    let w = world().adjust(many_vouchers(posting)).build().await;
    let clients = build_clients(&w.config, &creds()).expect("clients");
    let progress = SlowAfterFirstWrite {
        world: &w,
        slow: Duration::from_millis(2500),
        fired: AtomicBool::new(false),
    };
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: w.store.as_ref(),
        progress: &progress,
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let report = within(
        Duration::from_secs(30),
        engine.run(&w.config, &opts(Some(deadline))),
    )
    .await
    .expect("engine ran");
    let ended = Instant::now();
    let run_id = report.run.run_id.clone();
    let msg = report.run.message.clone().unwrap_or_default();

    // Stopped on purpose, before the deadline, resumable, saying how.
    assert_eq!(report.outcome, Outcome::Interrupted, "{msg}");
    assert_eq!(report.run.status, RunStatus::Interrupted);
    assert!(
        ended <= deadline,
        "ended {:?} after the deadline",
        ended - deadline
    );
    assert!(
        msg.contains(&format!("ml-connector replay {run_id}")),
        "{msg}"
    );
    let stored = w.store.get_run(&run_id).await.unwrap().expect("run stored");
    assert_eq!(stored.status, RunStatus::Interrupted);

    // Some, not all, lines are in D365, and the audit agrees line by line.
    let in_d365 = w.d365.lines().len();
    assert!(
        in_d365 > 0 && in_d365 < expected.lines.len(),
        "{in_d365} of {} lines written",
        expected.lines.len()
    );
    let recs = w.store.lines(&run_id).await.unwrap();
    let created = recs
        .iter()
        .filter(|r| r.status == LineStatus::Created)
        .count();
    assert_eq!(created, in_d365, "audit and D365 disagree");

    // The audit names where it stopped.
    let events = w.store.events(&run_id).await.unwrap();
    let stop = events
        .iter()
        .find(|e| e.kind == "interrupted")
        .unwrap_or_else(|| panic!("no `interrupted` event: {events:#?}"));
    let batch = &w.d365.headers()[0].batch_number;
    assert!(
        stop.message.contains(batch)
            && stop.message.contains(&format!("{in_d365} line(s)"))
            && stop.message.contains("not sent")
            && stop.message.contains("next: line"),
        "{}",
        stop.message
    );

    // The period lock is free: anyone can take it right now.
    let lock_key = format!("post#{INSTANCE}#{}", stored.keys.period_key);
    let now = chrono::Utc::now();
    let taken = w
        .store
        .acquire_lock(
            &lock_key,
            "probe",
            now,
            now + ChronoDuration::seconds(5),
            now + ChronoDuration::days(1),
        )
        .await
        .unwrap();
    assert!(matches!(taken, LockOutcome::Acquired), "{taken:?}");
    w.store.release_lock(&lock_key, "probe").await.unwrap();

    // Replay (D365 back to normal speed) finishes it: exactly the expected lines, once.
    w.d365.set_latency(Duration::ZERO);
    let vouchers_before: std::collections::BTreeSet<(String, String)> = w
        .d365
        .lines()
        .iter()
        .map(|l| (l.batch_number.clone(), l.voucher.clone()))
        .collect();
    let writes_before = line_writes(&w, posting);
    let replayed = engine
        .replay(&w.config, &run_id, ChronoDuration::minutes(5))
        .await
        .expect("replay");
    assert_eq!(
        replayed.outcome,
        Outcome::Posted,
        "{:?}",
        replayed.run.message
    );
    let problems = check(&w, &expected, &run_id, &[RunStatus::Completed]).await;
    assert!(problems.is_empty(), "{problems:#?}");
    // Only what was missing was sent again: one `$batch` per missing voucher, or one POST per
    // missing line.
    let sent = line_writes(&w, posting) - writes_before;
    let missing = match posting {
        Posting::Batch => expected.vouchers.len() - vouchers_before.len(),
        Posting::Lines => expected.lines.len() - in_d365,
    };
    assert_eq!(sent, missing, "replay re-sent what was already in D365");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d365_throttle_spaces_requests_per_window() {
    let w = world()
        .adjust(|c| {
            c.d365.max_requests_per_window = 3;
            c.d365.window_secs = 1;
        })
        .build()
        .await;
    let clients = build_clients(&w.config, &creds()).expect("clients");
    let fno = |w: &World| {
        w.d365
            .request_log()
            .iter()
            .filter(|r| r.service == SimService::FinOps)
            .count()
    };
    // One read first: the token is fetched outside the throttle's count.
    clients.d365.token_check().await.expect("first read");
    let before = fno(&w);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let d365 = clients.d365.clone();
            tokio::spawn(async move { d365.token_check().await })
        })
        .collect();
    let reads = async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    };
    let sampler = async {
        // Within the first window only what the window allows (one request was already
        // counted by the first read).
        tokio::time::sleep(Duration::from_millis(500)).await;
        fno(&w) - before
    };
    let (results, in_first_window) = tokio::join!(reads, sampler);
    for r in results {
        r.expect("throttled read succeeds");
    }
    let elapsed = t0.elapsed();
    assert!(
        in_first_window <= 2,
        "{in_first_window} requests in the first window"
    );
    assert_eq!(fno(&w) - before, 6);
    // 7 requests at 3 per second need at least two full windows after the first.
    assert!(elapsed >= Duration::from_millis(1900), "took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn lambda_deadline_margin_is_configurable_and_bounds_the_work_deadline() {
    use ml_connector::lambda::{Invocation, Settings};
    let default = Settings::from_lookup(|_| None).expect("defaults");
    assert_eq!(default.deadline_margin, Duration::from_secs(10));
    let s = Settings::from_lookup(|k| (k == "DEADLINE_MARGIN_SECS").then(|| "25".to_string()))
        .expect("margin");
    assert_eq!(s.deadline_margin, Duration::from_secs(25));
    let e = Settings::from_lookup(|k| (k == "DEADLINE_MARGIN_SECS").then(|| "ten".to_string()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("DEADLINE_MARGIN_SECS"), "{e}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let inv = Invocation::with_timeout("req-1", ChronoDuration::seconds(30));
        let left = inv
            .work_deadline(Duration::from_secs(10))
            .saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_secs(18) && left <= Duration::from_secs(20),
            "{left:?}"
        );
        // A margin larger than the time left: the deadline is now, not in the past.
        let left = inv
            .work_deadline(Duration::from_secs(60))
            .saturating_duration_since(Instant::now());
        assert_eq!(left, Duration::ZERO);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d365_throttle_counts_every_retry() {
    let w = world()
        .adjust(|c| {
            c.d365.max_requests_per_window = 2;
            c.d365.window_secs = 1;
        })
        .build()
        .await;
    let clients = build_clients(&w.config, &creds()).expect("clients");
    clients
        .d365
        .token_check()
        .await
        .expect("token and a first read");
    tokio::time::sleep(Duration::from_millis(1100)).await; // that read leaves the window
    let before = w.d365.fno_request_count();
    // Two 429s that ask for no wait at all: three attempts, but only two fit in a window.
    w.d365.throttle_next(2, Some(0));
    let t0 = Instant::now();
    within(Duration::from_secs(20), clients.d365.token_check())
        .await
        .expect("third attempt succeeds");
    let elapsed = t0.elapsed();
    assert_eq!(w.d365.fno_request_count() - before, 3);
    assert!(
        elapsed >= Duration::from_millis(900),
        "the retry was not throttled: {elapsed:?}"
    );
}
