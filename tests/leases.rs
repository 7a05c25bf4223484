//! The period lock's lease and heartbeat, end to end over the simulators, on SQLite and on
//! DynamoDB (the local moto server `.ci/test` starts): a run that posts for longer than its lease
//! is not overtaken by a second poster, and a crashed run's lock names the replay command and
//! its expiry, then expires on its own (nothing keeps a dead run's lock alive).

#![cfg(all(feature = "sandbox", feature = "aws"))]

mod common;

use std::sync::Mutex;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use common::World;
use ml_connector::domain::config::Posting;
use ml_connector::domain::run::RunStatus;
use ml_connector::engine::{
    CrashPoint, Engine, EngineError, Mode, NoProgress, Outcome, Progress, RunOptions,
};
use ml_connector::store::{LockOutcome, SqliteStore, Store};
use tokio::time::Instant;

/// Lease of the runs under test: the heartbeat renews it every third.
const LEASE_SECS: i64 = 1;
/// D365 answers this slowly: the first run posts for several leases.
const LATENCY: StdDuration = StdDuration::from_millis(150);
/// One request per line: 30 lines × `LATENCY`, far longer than the lease.
const ROWS: usize = 30;

async fn sqlite() -> Box<dyn Store> {
    Box::new(SqliteStore::open_in_memory().expect("sqlite"))
}

async fn dynamo() -> Box<dyn Store> {
    Box::new(common::aws::dynamo_store("mlc-leases").await)
}

async fn world() -> World {
    let (mut w, _) = World::with_fee_rows_look(ROWS, "91", "Fees by row").await;
    w.config.d365.posting = Posting::Lines;
    w.config.check().expect("valid config");
    w
}

fn opts(w: &World, lease_secs: i64) -> RunOptions {
    let mut o = w.options(Mode::Post);
    o.lease = Duration::seconds(lease_secs);
    o
}

/// Notes when the run took the period lock, and optionally crashes at one point.
struct Watch {
    locked: Mutex<Option<Instant>>,
    crash: Option<CrashPoint>,
}

impl Watch {
    fn new(crash: Option<CrashPoint>) -> Self {
        Watch {
            locked: Mutex::new(None),
            crash,
        }
    }

    fn locked_at(&self) -> Option<Instant> {
        *self.locked.lock().expect("mutex")
    }
}

impl Progress for Watch {
    fn crash_at(&self, point: CrashPoint) -> bool {
        if point == CrashPoint::Locked {
            *self.locked.lock().expect("mutex") = Some(Instant::now());
        }
        self.crash == Some(point)
    }
}

/// The period lock's current holder and lease end (a probe that never takes it while held).
async fn lock_holder(store: &dyn Store, key: &str) -> Option<(String, DateTime<Utc>)> {
    let now = Utc::now();
    match store
        .acquire_lock(key, "probe", now, now, now)
        .await
        .expect("probe the lock")
    {
        LockOutcome::InProgress { owner, until } => Some((owner, until)),
        _ => None,
    }
}

async fn long_run_is_not_overtaken(store: &dyn Store) {
    let w = world().await;
    w.d365.set_latency(LATENCY);
    let clients = w.clients();
    let watch = Watch::new(None);
    let first = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store,
        progress: &watch,
    };
    let second = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store,
        progress: &NoProgress,
    };
    let first_opts = opts(&w, LEASE_SECS);
    let second_opts = opts(&w, 60);
    let first_run = async {
        let r = first.run(&w.config, &first_opts).await;
        (r, Instant::now())
    };
    let contender = async {
        // Once the first run holds the lock, wait until its original lease has long passed.
        let locked = loop {
            if let Some(t) = watch.locked_at() {
                break t;
            }
            tokio::time::sleep(StdDuration::from_millis(20)).await;
        };
        tokio::time::sleep_until(locked + StdDuration::from_millis(2500)).await;
        let started = Instant::now();
        let r = second.run(&w.config, &second_opts).await;
        (locked, started, r, Instant::now())
    };
    let ((first_report, first_done), (locked, second_started, second_report, second_done)) =
        tokio::join!(first_run, contender);
    eprintln!(
        "lock taken at 0; contender {:?}..{:?}; first run done at {:?}",
        second_started - locked,
        second_done - locked,
        first_done - locked
    );
    let first_report = first_report.expect("first run");
    let second_report = second_report.expect("second run");

    assert_eq!(
        second_report.outcome,
        Outcome::Busy,
        "the contender must not get in: {:?}",
        second_report.run.message
    );
    assert!(
        second_started >= locked + StdDuration::from_secs(LEASE_SECS as u64 * 2),
        "the contender started after the first run's original lease had passed"
    );
    assert!(
        first_done > second_done,
        "the first run was still posting when the contender finished ({:?} before it)",
        first_done - second_done
    );
    let msg = second_report.run.message.clone().unwrap_or_default();
    assert!(msg.contains(&first_report.run.run_id), "{msg}");
    assert_eq!(
        first_report.outcome,
        Outcome::Posted,
        "{:?}",
        first_report.run.message
    );
    // Exactly one journal with every line once.
    assert_eq!(w.d365.headers().len(), 1);
    assert_eq!(
        w.d365.lines().len() as u64,
        first_report.run.totals.journal_lines
    );
    // The lock is released at the end: a new run gets in and finds everything posted.
    let again = second.run(&w.config, &second_opts).await.expect("again");
    assert_eq!(
        again.outcome,
        Outcome::AlreadyPosted,
        "{:?}",
        again.run.message
    );
    assert_eq!(
        w.d365.lines().len() as u64,
        first_report.run.totals.journal_lines
    );
}

async fn crashed_run_busy_message_names_replay_and_expiry(store: &dyn Store) {
    let w = world().await;
    let clients = w.clients();
    let crashing = Watch::new(Some(CrashPoint::HeaderCreated));
    let first = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store,
        progress: &crashing,
    };
    let lease_secs = 3;
    match first.run(&w.config, &opts(&w, lease_secs)).await {
        Err(EngineError::Crashed(CrashPoint::HeaderCreated)) => {}
        other => panic!("expected the injected crash, got {other:?}"),
    }
    let crashed = store
        .list_runs(None, 1)
        .await
        .expect("runs")
        .pop()
        .expect("the crashed run");
    assert_eq!(crashed.status, RunStatus::Posting);
    let lock_key = format!("post#{}#{}", crashed.instance, crashed.keys.period_key);
    let (owner, until) = lock_holder(store, &lock_key)
        .await
        .expect("the crashed run still holds the lock");
    assert_eq!(owner, crashed.run_id);

    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store,
        progress: &NoProgress,
    };
    let busy = engine
        .run(&w.config, &opts(&w, 60))
        .await
        .expect("second run");
    assert_eq!(busy.outcome, Outcome::Busy, "{:?}", busy.run.message);
    let msg = busy.run.message.clone().unwrap_or_default();
    let replay = format!("`ml-connector replay {} --config FILE`", crashed.run_id);
    assert!(msg.contains(&replay), "names the replay command: {msg}");
    let expiry = format!("until {}", until.format("%Y-%m-%d %H:%M:%S UTC"));
    assert!(msg.contains(&expiry), "says when the lock expires: {msg}");

    // Nothing renews a crashed run's lock: it expires after its lease.
    let left = (until - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + StdDuration::from_millis(300)).await;
    assert_eq!(
        lock_holder(store, &lock_key).await,
        None,
        "the crashed run's lock expired on time"
    );
    let rerun = engine
        .run(&w.config, &opts(&w, 60))
        .await
        .expect("run after expiry");
    assert_eq!(rerun.outcome, Outcome::Posted, "{:?}", rerun.run.message);
    assert_eq!(w.d365.headers().len(), 1, "the crashed run's header reused");
    assert_eq!(w.d365.lines().len() as u64, rerun.run.totals.journal_lines);
}

/// The printed replay command does resume the crashed run right away (the lock is its own).
async fn crashed_run_resumes_with_the_printed_replay(store: &dyn Store) {
    let w = world().await;
    let clients = w.clients();
    let crashing = Watch::new(Some(CrashPoint::LinesWritten));
    let first = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store,
        progress: &crashing,
    };
    match first.run(&w.config, &opts(&w, 60)).await {
        Err(EngineError::Crashed(CrashPoint::LinesWritten)) => {}
        other => panic!("expected the injected crash, got {other:?}"),
    }
    let crashed = store
        .list_runs(None, 1)
        .await
        .expect("runs")
        .pop()
        .expect("the crashed run");
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store,
        progress: &NoProgress,
    };
    let busy = engine.run(&w.config, &opts(&w, 60)).await.expect("run");
    assert_eq!(busy.outcome, Outcome::Busy);
    let replayed = engine
        .replay(&w.config, &crashed.run_id, Duration::seconds(60))
        .await
        .expect("replay as printed");
    assert_eq!(
        replayed.outcome,
        Outcome::Posted,
        "{:?}",
        replayed.run.message
    );
    assert_eq!(
        w.d365.lines().len() as u64,
        replayed.run.totals.journal_lines
    );
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_run_is_not_overtaken() {
        super::long_run_is_not_overtaken(super::sqlite().await.as_ref()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crashed_run_busy_message_names_replay_and_expiry() {
        super::crashed_run_busy_message_names_replay_and_expiry(super::sqlite().await.as_ref())
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crashed_run_resumes_with_the_printed_replay() {
        super::crashed_run_resumes_with_the_printed_replay(super::sqlite().await.as_ref()).await;
    }
}

mod dynamodb {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_run_is_not_overtaken() {
        super::long_run_is_not_overtaken(super::dynamo().await.as_ref()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crashed_run_busy_message_names_replay_and_expiry() {
        super::crashed_run_busy_message_names_replay_and_expiry(super::dynamo().await.as_ref())
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crashed_run_resumes_with_the_printed_replay() {
        super::crashed_run_resumes_with_the_printed_replay(super::dynamo().await.as_ref()).await;
    }
}
