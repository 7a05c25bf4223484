//! Fault-injection suite: proves exactly-once posting under every fault the simulators can
//! inject, in every way a run can be started.
//!
//! Table-driven: [`Fault::ALL`] × [`Scenario::ALL`]. Each case runs in its own world (fresh
//! Looker and D365 simulators on loopback, a fresh SQLite audit store, a Lambda context), injects
//! its fault, lets the product recover the way it documents (the same call absorbs the fault; a
//! failed or crashed run is replayed or retried after its lease; Looker/EventBridge redeliver),
//! and then asserts:
//!
//! - D365 holds exactly the lines of a fault-free run of the same scenario (by lineage reference,
//!   accounts, amounts, dates), in one journal, with no duplicate lineage reference;
//! - no partial voucher: every voucher balances and is exactly a voucher of the fault-free run;
//! - every source row of the final run is accounted for in the audit (mapped to recorded lines),
//!   and every recorded line says where D365 holds it;
//! - the final run's status is true (completed / already posted, journals and line count as in
//!   D365), and no two runs claim to have posted the period;
//! - the fault actually fired where it can (and provably could not where it cannot, e.g. a
//!   write fault during a replay that has nothing to write);
//! - faults the product promises to absorb (throttling, latency, token expiry, unknown write
//!   outcomes) do not fail the run at all.
//!
//! A matrix (fault × scenario → ok) is printed at the end. `FAULTS_NAIVE=1` runs the matrix with
//! a "naive poster" (writes with unknown outcome are resent blindly) to watch the checks fail;
//! `naive_poster_is_caught` proves that in CI. `FAULTS_ONLY=<substring>` filters cases.
#![cfg(all(feature = "aws", feature = "sandbox"))]

mod common;
mod faults_support;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use chrono::Duration;
use faults_support::*;
use ml_connector::domain::config::{DeliveryMode, InstanceConfig, Posting, VoucherBy};
use ml_connector::domain::run::RunStatus;
use ml_connector::engine::{
    CrashPoint, Engine, EngineError, Mode, NoProgress, Outcome, RunOptions,
};
use ml_connector::lambda::replay::handle_replay;
use ml_connector::lambda::scheduler::{handle_schedule, ScheduleInput};
use ml_connector::lambda::webhook::{handle_webhook, WebhookRequest, WebhookResponse};
use ml_connector::lambda::Invocation;
use ml_connector::looker::delivery::parse_delivery;
use ml_connector::store::LockOutcome;
use ml_connector::wiring::build_clients;
use tokio::sync::Semaphore;

/// Lease of a run that is about to be killed: the next attempt may take over after it.
const CRASH_LEASE_SECS: i64 = 2;
/// How long to wait for a killed holder's lease (or in-progress record) to pass.
const PAST_LEASE: StdDuration = StdDuration::from_millis(2200);

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// D365 answers 429 with `Retry-After: 1` to the next 3 requests once the header exists.
    D365ThrottleRetryAfter,
    /// D365 answers 429 without `Retry-After` once the header exists (the client's fallback
    /// wait, 10 s in the product's `RetryPolicy`).
    D365ThrottleNoRetryAfter,
    /// Looker answers 429 (`Retry-After: 1`) to the next 2 requests.
    LookerThrottle,
    /// A read of the journal's lines (after writing) fails with a 5xx past the client's retries.
    D365ReadServerError,
    /// The header create answers 503 without saving anything.
    HeaderServerError,
    /// The header create is saved, then the connection drops.
    HeaderCommitDrop,
    /// `posting = "lines"`: the first line create is saved, then the connection drops.
    LineCommitDrop,
    /// The first `$batch` is saved, then the connection drops.
    BatchCommitDrop,
    /// The first `$batch` is saved, then answers 502 (HTML from the gateway).
    BatchCommitServerError,
    /// The first `$batch` drops the connection without saving anything.
    BatchDrop,
    /// 40 ms added to every F&O answer.
    D365Latency,
    /// Every D365 token stops working once the header exists (F&O answers 401).
    D365TokenExpiry,
    /// Every Looker token stops working after the client logged in (Looker answers 401).
    LookerTokenExpiry,
    /// The process is killed at this step.
    Crash(CrashPoint),
}

impl Fault {
    const ALL: [Fault; 18] = [
        Fault::D365ThrottleRetryAfter,
        Fault::D365ThrottleNoRetryAfter,
        Fault::LookerThrottle,
        Fault::D365ReadServerError,
        Fault::HeaderServerError,
        Fault::HeaderCommitDrop,
        Fault::LineCommitDrop,
        Fault::BatchCommitDrop,
        Fault::BatchCommitServerError,
        Fault::BatchDrop,
        Fault::D365Latency,
        Fault::D365TokenExpiry,
        Fault::LookerTokenExpiry,
        Fault::Crash(CrashPoint::Recorded),
        Fault::Crash(CrashPoint::Locked),
        Fault::Crash(CrashPoint::HeaderCreated),
        Fault::Crash(CrashPoint::LinesWritten),
        Fault::Crash(CrashPoint::Posted),
    ];

    fn name(&self) -> String {
        match self {
            Fault::D365ThrottleRetryAfter => "d365 429 retry-after".into(),
            Fault::D365ThrottleNoRetryAfter => "d365 429 no retry-after".into(),
            Fault::LookerThrottle => "looker 429".into(),
            Fault::D365ReadServerError => "d365 5xx on read".into(),
            Fault::HeaderServerError => "d365 5xx on header".into(),
            Fault::HeaderCommitDrop => "commit+drop header".into(),
            Fault::LineCommitDrop => "commit+drop line".into(),
            Fault::BatchCommitDrop => "commit+drop $batch".into(),
            Fault::BatchCommitServerError => "commit+502 $batch".into(),
            Fault::BatchDrop => "drop $batch (no commit)".into(),
            Fault::D365Latency => "d365 latency".into(),
            Fault::D365TokenExpiry => "d365 token expiry".into(),
            Fault::LookerTokenExpiry => "looker token expiry".into(),
            Fault::Crash(p) => format!("crash {p:?}"),
        }
    }

    /// Config the fault needs (a line-level fault needs line-by-line posting).
    fn adjust(&self, c: &mut InstanceConfig) {
        if *self == Fault::LineCommitDrop {
            c.d365.posting = Posting::Lines;
        }
    }

    /// Injected by wrapping the engine's ports (crash, persistent read failure): the Lambda
    /// handlers cannot be wrapped, so their faulted attempt is run as the handler would run it.
    fn in_engine(&self) -> bool {
        matches!(self, Fault::Crash(_) | Fault::D365ReadServerError)
    }

    fn crash_point(&self) -> Option<CrashPoint> {
        match self {
            Fault::Crash(p) => Some(*p),
            _ => None,
        }
    }

    fn ledger_fault(&self) -> LedgerFault {
        match self {
            Fault::D365ReadServerError => LedgerFault::FailSecondLinesRead,
            _ => LedgerFault::None,
        }
    }

    /// Armed once the journal header exists in D365 (mid-run), not before the run.
    fn after_header(&self) -> bool {
        matches!(
            self,
            Fault::D365ThrottleRetryAfter
                | Fault::D365ThrottleNoRetryAfter
                | Fault::LineCommitDrop
                | Fault::D365TokenExpiry
        )
    }

    /// Faults the product absorbs within the same run: the first attempt must succeed.
    fn absorbed(&self) -> bool {
        !matches!(
            self,
            Fault::Crash(_) | Fault::D365ReadServerError | Fault::HeaderServerError
        )
    }

    fn is_write_fault(&self) -> bool {
        matches!(
            self,
            Fault::HeaderServerError
                | Fault::HeaderCommitDrop
                | Fault::LineCommitDrop
                | Fault::BatchCommitDrop
                | Fault::BatchCommitServerError
                | Fault::BatchDrop
        )
    }

    /// Whether the fault can fire in `s` at all (asserted both ways).
    fn reachable(&self, s: Scenario) -> bool {
        match (self, s) {
            // A replay of a completed run calls neither Looker nor any D365 write, and passes
            // only the crash points of posting.
            (Fault::LookerThrottle | Fault::LookerTokenExpiry, Scenario::Replay) => false,
            (f, Scenario::Replay) if f.is_write_fault() => false,
            // ... and reads the journal once: a read that shows exactly one copy is final (the
            // convergent writer), so there is no second lines read to fail.
            (Fault::D365ReadServerError, Scenario::Replay) => false,
            (
                Fault::Crash(CrashPoint::Recorded | CrashPoint::Locked | CrashPoint::LinesWritten),
                Scenario::Replay,
            ) => false,
            // A delivery carrying its rows never calls Looker.
            (Fault::LookerThrottle | Fault::LookerTokenExpiry, Scenario::Redelivery) => false,
            _ => true,
        }
    }

    /// Injects what can be injected before the run starts.
    async fn arm_before(&self, w: &World) {
        match self {
            Fault::LookerThrottle => w.looker.throttle_next(2, Some(1)),
            Fault::HeaderServerError => w.d365.fail_next_writes(1, 503, false),
            Fault::HeaderCommitDrop => w.d365.fail_next_writes(1, 0, true),
            Fault::BatchCommitDrop => w.d365.fail_next_batches(1, 0, true),
            Fault::BatchCommitServerError => w.d365.fail_next_batches(1, 502, true),
            Fault::BatchDrop => w.d365.fail_next_batches(1, 0, false),
            Fault::D365Latency => w.d365.set_latency(StdDuration::from_millis(40)),
            Fault::D365TokenExpiry => {
                // The (cached) client holds a token when it expires mid-run.
                let inst = w.ctx.instance(INSTANCE, None).await.expect("instance");
                inst.clients.d365.token_check().await.expect("token");
            }
            Fault::LookerTokenExpiry => {
                // The (cached) client logs in, then every token it holds stops working.
                let inst = w.ctx.instance(INSTANCE, None).await.expect("instance");
                inst.clients.looker.login_check().await.expect("login");
                w.looker.expire_tokens();
            }
            _ => {}
        }
    }

    /// Injects the mid-run part once the header exists.
    fn arm_after_header(&self, w: &World) {
        match self {
            Fault::D365ThrottleRetryAfter => w.d365.throttle_next(3, Some(1)),
            Fault::D365ThrottleNoRetryAfter => w.d365.throttle_next(1, None),
            Fault::LineCommitDrop => w.d365.fail_next_writes(1, 0, true),
            Fault::D365TokenExpiry => w.d365.expire_tokens(),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    /// The weekly example (12 rows → one voucher, 14 lines), `ml-connector run` style.
    Small,
    /// Every row its own voucher, at most 6 operations per `$batch` (several requests) and at
    /// most 6 lines per journal header (several headers, each with its own part key).
    MultiVoucher,
    /// The webhook Lambda gets the same Looker delivery (rows in the payload) again.
    Redelivery,
    /// The scheduler Lambda and a trigger-only webhook for the same week at the same time.
    CronWebhook,
    /// A completed run is replayed through the replay Lambda.
    Replay,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Small,
        Scenario::MultiVoucher,
        Scenario::Redelivery,
        Scenario::CronWebhook,
        Scenario::Replay,
    ];

    fn name(&self) -> &'static str {
        match self {
            Scenario::Small => "small",
            Scenario::MultiVoucher => "multi-voucher",
            Scenario::Redelivery => "redelivery",
            Scenario::CronWebhook => "cron+webhook",
            Scenario::Replay => "replay",
        }
    }

    fn adjust(&self, c: &mut InstanceConfig) {
        match self {
            Scenario::MultiVoucher => {
                c.journal.voucher_by = VoucherBy::Row;
                c.journal.max_voucher_lines = 6;
                c.journal.max_journal_lines = 6;
                c.d365.batch_operations = 6;
            }
            Scenario::CronWebhook => c.webhook.delivery = DeliveryMode::Trigger,
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One case

/// Per-case fault state shared by the drivers.
struct Harness {
    fault: Option<Fault>,
    naive: bool,
    crash: CrashProgress,
    /// The mid-run part was injected.
    armed: AtomicBool,
    /// A wrapper-level fault fired.
    ledger_fired: AtomicBool,
    /// The faulted part of the run has reached the period lock (or ended).
    lock_reached: AtomicBool,
}

impl Harness {
    fn new(fault: Option<Fault>, naive: bool) -> Self {
        Harness {
            fault,
            naive,
            crash: CrashProgress::new(fault.and_then(|f| f.crash_point())),
            armed: AtomicBool::new(false),
            ledger_fired: AtomicBool::new(false),
            lock_reached: AtomicBool::new(false),
        }
    }

    fn ledger_fault(&self) -> LedgerFault {
        if self.naive {
            LedgerFault::Naive
        } else {
            self.fault.map_or(LedgerFault::None, |f| f.ledger_fault())
        }
    }

    /// Whether the faulted attempt must run through the engine directly (wrapped ports).
    fn in_engine(&self) -> bool {
        self.naive || self.fault.is_some_and(|f| f.in_engine())
    }
}

/// Progress that crashes per the harness and tells when the period lock was reached.
struct CaseProgress<'a>(&'a Harness);

impl ml_connector::engine::Progress for CaseProgress<'_> {
    fn crash_at(&self, point: CrashPoint) -> bool {
        if matches!(point, CrashPoint::Locked | CrashPoint::Posted) {
            self.0.lock_reached.store(true, Ordering::SeqCst);
        }
        self.0.crash.crash_at(point)
    }
}

/// Runs `fut` while arming the mid-run part of the fault as soon as the header exists.
async fn watched<T>(w: &World, h: &Harness, fut: impl Future<Output = T>) -> T {
    let done = AtomicBool::new(false);
    let run = async {
        let r = fut.await;
        done.store(true, Ordering::SeqCst);
        r
    };
    let watch = async {
        let Some(f) = h.fault.filter(|f| f.after_header()) else {
            return;
        };
        while !done.load(Ordering::SeqCst) && !h.armed.load(Ordering::SeqCst) {
            if !w.d365.headers().is_empty() {
                f.arm_after_header(w);
                h.armed.store(true, Ordering::SeqCst);
                break;
            }
            tokio::time::sleep(StdDuration::from_millis(1)).await;
        }
    };
    tokio::join!(run, watch).0
}

/// How a driver ended.
struct Finish {
    /// Runs whose status and audit must be true (the last run of each trigger).
    final_runs: Vec<String>,
    /// The first attempt (the faulted one) already ended posted / already posted.
    first_ok: bool,
}

fn opts(trigger: &str, crash_lease: bool) -> RunOptions {
    RunOptions {
        run_date: event_date(),
        trigger: trigger.into(),
        mode: Mode::Post,
        lease: if crash_lease {
            Duration::seconds(CRASH_LEASE_SECS)
        } else {
            Duration::minutes(5)
        },
        deadline: None,
        supersede: false,
    }
}

/// An invocation with 120 s to run (the deployed functions have 300 s and 900 s). The first
/// attempt must absorb a 429 without `Retry-After` (10–12.5 s of fallback wait) on DynamoDB;
/// with 30 s it ran out of time on a loaded 2-core machine (the case took 33 s).
fn inv(id: &str) -> Invocation {
    Invocation::with_timeout(id, Duration::seconds(120))
}

fn webhook_request(body: Option<&str>) -> WebhookRequest {
    let ev: lambda_http::request::LambdaRequest =
        serde_json::from_str(EV_JSON).expect("sample event");
    let mut r = WebhookRequest::from_http(lambda_http::Request::from(ev));
    if let Some(b) = body {
        r.body = Some(b.to_string());
    }
    r
}

/// A trigger-only delivery (the connector extracts through the API).
const TRIGGER_BODY: &str = r#"{"type":"query","scheduled_plan":{"scheduled_plan_id":1187,"query_id":90211,"url":"https://acme.cloud.looker.com/looks/42"},"attachment":null}"#;

fn header<'a>(r: &'a WebhookResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn is_final_status(s: &str) -> bool {
    s == "completed" || s == "already_posted"
}

async fn latest_run(w: &World) -> String {
    w.store
        .list_runs(None, 1)
        .await
        .expect("runs")
        .first()
        .map(|r| r.run_id.clone())
        .expect("a run was recorded")
}

/// Holds an idempotency record for `key` as a killed invocation would (until its deadline).
async fn hold_as_killed(w: &World, key: &str) {
    let now = chrono::Utc::now();
    let until = now + Duration::seconds(CRASH_LEASE_SECS);
    let got = w
        .store
        .acquire_lock(
            key,
            "killed-invocation",
            now,
            until,
            until + Duration::hours(1),
        )
        .await
        .expect("lock");
    assert!(matches!(got, LockOutcome::Acquired), "{got:?}");
}

fn webhook_key(body: &str) -> String {
    use sha2::Digest;
    format!(
        "webhook#{INSTANCE}#{}",
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    )
}

/// Replays `run_id` (plain engine, healthy ports) until it ends posted or already posted.
async fn replay_until_final(w: &World, run_id: &str) -> Result<(), String> {
    let clients = build_clients(&w.config, &sandbox_creds()).map_err(|e| e.to_string())?;
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: w.store.as_ref(),
        progress: &NoProgress,
    };
    let mut last = String::new();
    for _ in 0..4 {
        match engine.replay(&w.config, run_id, Duration::minutes(5)).await {
            Ok(r) if matches!(r.outcome, Outcome::Posted | Outcome::AlreadyPosted) => return Ok(()),
            Ok(r) => last = format!("{:?}: {}", r.outcome, r.run.message.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(PAST_LEASE).await;
    }
    Err(format!("replay of {run_id} did not finish: {last}"))
}

/// Small / multi-voucher: `ml-connector run`, then `ml-connector replay RUN_ID` if it did not
/// finish.
async fn drive_cli(w: &World, h: &Harness) -> Result<Finish, String> {
    // The context's cached clients: the ones a Looker token-expiry fault has logged in.
    let inst = w
        .ctx
        .instance(INSTANCE, None)
        .await
        .map_err(|e| e.to_string())?;
    let clients = &inst.clients;
    let ledger = FaultLedger::new(&clients.d365, h.ledger_fault());
    let progress = CaseProgress(h);
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &ledger,
        store: w.store.as_ref(),
        progress: &progress,
    };
    let crashy = h.fault.is_some_and(|f| f.crash_point().is_some());
    let first = watched(w, h, engine.run(&w.config, &opts("cli", crashy))).await;
    h.ledger_fired
        .fetch_or(ledger.fired.load(Ordering::SeqCst), Ordering::SeqCst);
    let first_ok = matches!(&first, Ok(r) if r.outcome == Outcome::Posted);
    let run_id = latest_run(w).await;
    match first {
        Ok(r) if matches!(r.outcome, Outcome::Posted | Outcome::AlreadyPosted) => {}
        // The naive control has no recovery of its own: a replay would run the convergent
        // writer and clean up after it. What the naive poster left is what is checked.
        Ok(_) if h.naive => {}
        Ok(_) | Err(EngineError::Crashed(_)) => replay_until_final(w, &run_id).await?,
        Err(e) => return Err(format!("engine error: {e}")),
    }
    Ok(Finish {
        final_runs: vec![run_id],
        first_ok,
    })
}

/// Webhook redelivery: the delivery is handled; Looker sends it again until it gets a 200; then
/// once more (the recorded answer, nothing new).
async fn drive_redelivery(w: &World, h: &Harness) -> Result<Finish, String> {
    let body = webhook_request(None).body.expect("sample body");
    let mut first_ok = false;
    if h.in_engine() {
        // The first invocation, run exactly as the handler runs it but with wrapped ports.
        let inst = w
            .ctx
            .instance(INSTANCE, None)
            .await
            .map_err(|e| e.to_string())?;
        let ledger = FaultLedger::new(&inst.clients.d365, h.ledger_fault());
        let progress = CaseProgress(h);
        let engine = Engine {
            extractor: &inst.clients.looker,
            ledger: &ledger,
            store: w.store.as_ref(),
            progress: &progress,
        };
        let crashy = h.crash.point.is_some();
        if crashy {
            hold_as_killed(w, &webhook_key(&body)).await;
        }
        let delivery = parse_delivery(body.as_bytes()).map_err(|e| e.to_string())?;
        let period = inst.config.period.kind.period_for(event_date());
        let r = watched(
            w,
            h,
            engine.run_extract(
                &inst.config,
                &opts("webhook", crashy),
                &period,
                delivery.extract,
            ),
        )
        .await;
        h.ledger_fired
            .fetch_or(ledger.fired.load(Ordering::SeqCst), Ordering::SeqCst);
        first_ok = matches!(&r, Ok(r) if r.outcome == Outcome::Posted);
    }
    let mut last = None;
    for attempt in 1..=6 {
        let r = watched(
            w,
            h,
            handle_webhook(&w.ctx, webhook_request(None), &inv(&format!("d{attempt}"))),
        )
        .await;
        if attempt == 1 && !h.in_engine() {
            first_ok = r.status == 200 && r.json_body()["status"] == "completed";
        }
        if r.status == 200 {
            last = Some(r);
            break;
        }
        last = Some(r);
        tokio::time::sleep(PAST_LEASE).await;
    }
    let last = last.expect("attempted");
    if last.status != 200 {
        return Err(format!(
            "the delivery never got a 200: {} {}",
            last.status, last.body
        ));
    }
    let run_id = last.json_body()["run_id"]
        .as_str()
        .ok_or("no run_id in the answer")?
        .to_string();
    // Looker sends the same delivery once more: the recorded answer, no D365 write.
    let writes = w.fno_writes();
    let again = handle_webhook(&w.ctx, webhook_request(None), &inv("d-again")).await;
    if again.status != 200
        || header(&again, "idempotent-replayed") != Some("true")
        || again.json_body()["run_id"] != run_id.as_str()
        || w.fno_writes() != writes
    {
        return Err(format!(
            "the redelivery after success was not answered from the idempotency record without writing: {} {:?} {}",
            again.status, again.headers, again.body
        ));
    }
    Ok(Finish {
        final_runs: vec![run_id],
        first_ok,
    })
}

/// Scheduler and trigger-only webhook for the same week at the same time; each is retried the
/// way its caller retries (EventBridge on `Err`, Looker on a non-200) until both are final.
async fn drive_cron_webhook(w: &World, h: &Harness) -> Result<Finish, String> {
    let input: ScheduleInput = serde_json::from_str(EV_SCHEDULE).map_err(|e| e.to_string())?;
    let hook_req = || webhook_request(Some(TRIGGER_BODY));
    let mut sched_done: Option<serde_json::Value> = None;
    let mut hook_done: Option<WebhookResponse> = None;
    let first_ok;

    // Round 1 (faulted).
    if h.in_engine() {
        // The scheduler invocation is the one that is killed / fails; the webhook arrives while
        // it holds the period lock (or right after it died before taking it).
        let inst = w
            .ctx
            .instance(INSTANCE, None)
            .await
            .map_err(|e| e.to_string())?;
        let ledger = FaultLedger::new(&inst.clients.d365, h.ledger_fault());
        let progress = CaseProgress(h);
        let engine = Engine {
            extractor: &inst.clients.looker,
            ledger: &ledger,
            store: w.store.as_ref(),
            progress: &progress,
        };
        let crashy = h.crash.point.is_some();
        if crashy {
            let time = input
                .scheduled_time
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            hold_as_killed(w, &format!("schedule#{INSTANCE}#{time}")).await;
        }
        let sched = async {
            let r = engine.run(&inst.config, &opts("schedule", crashy)).await;
            h.lock_reached.store(true, Ordering::SeqCst);
            r
        };
        let hook = async {
            while !h.lock_reached.load(Ordering::SeqCst) {
                tokio::time::sleep(StdDuration::from_millis(2)).await;
            }
            handle_webhook(&w.ctx, hook_req(), &inv("w1")).await
        };
        let (s, hk) = watched(w, h, async { tokio::join!(sched, hook) }).await;
        h.ledger_fired
            .fetch_or(ledger.fired.load(Ordering::SeqCst), Ordering::SeqCst);
        first_ok = matches!(&s, Ok(r) if r.outcome == Outcome::Posted)
            || (hk.status == 200 && hk.json_body()["status"] == "completed");
        if hk.status == 200 {
            hook_done = Some(hk);
        }
    } else {
        let (s1, w1) = (inv("s1"), inv("w1"));
        let (s, hk) = watched(w, h, async {
            tokio::join!(
                handle_schedule(&w.ctx, input.clone(), &s1),
                handle_webhook(&w.ctx, hook_req(), &w1)
            )
        })
        .await;
        first_ok = matches!(&s, Ok(v) if v["status"] == "completed")
            || (hk.status == 200 && hk.json_body()["status"] == "completed");
        if let Ok(v) = s {
            sched_done = Some(v);
        }
        if hk.status == 200 {
            hook_done = Some(hk);
        }
    }

    // Retries until both are final.
    for round in 2..=8 {
        if sched_done.is_some() && hook_done.is_some() {
            break;
        }
        tokio::time::sleep(PAST_LEASE).await;
        if sched_done.is_none() {
            if let Ok(v) = handle_schedule(&w.ctx, input.clone(), &inv(&format!("s{round}"))).await
            {
                sched_done = Some(v);
            }
        }
        if hook_done.is_none() {
            let r = handle_webhook(&w.ctx, hook_req(), &inv(&format!("w{round}"))).await;
            if r.status == 200 {
                hook_done = Some(r);
            }
        }
    }
    let (Some(s), Some(hk)) = (sched_done, hook_done) else {
        return Err("scheduler and webhook did not both finish after 8 rounds".into());
    };
    let hk = hk.json_body();
    for v in [&s, &hk] {
        if !v["status"].as_str().is_some_and(is_final_status) {
            return Err(format!("not a final answer: {v}"));
        }
    }
    Ok(Finish {
        final_runs: vec![
            s["run_id"].as_str().unwrap_or_default().to_string(),
            hk["run_id"].as_str().unwrap_or_default().to_string(),
        ],
        first_ok,
    })
}

fn replay_event(run_id: &str) -> StreamEvent {
    serde_json::from_str(&EV_REPLAY.replace(SAMPLE_RUN_ID, run_id)).expect("stream sample")
}

/// Replay of a completed run: nothing is written, whatever the fault.
async fn drive_replay(w: &World, h: &Harness) -> Result<Finish, String> {
    // A completed run (no fault).
    let run_id = {
        let clients = build_clients(&w.config, &sandbox_creds()).map_err(|e| e.to_string())?;
        let engine = Engine {
            extractor: &clients.looker,
            ledger: &clients.d365,
            store: w.store.as_ref(),
            progress: &NoProgress,
        };
        let r = engine
            .run(&w.config, &opts("cli", false))
            .await
            .map_err(|e| e.to_string())?;
        if r.outcome != Outcome::Posted {
            return Err(format!(
                "the run to replay did not post: {:?}",
                r.run.message
            ));
        }
        r.run.run_id
    };
    if let Some(f) = h.fault {
        f.arm_before(w).await;
    }
    let writes = w.fno_writes();
    let first_ok;
    if h.in_engine() {
        let inst = w
            .ctx
            .instance(INSTANCE, None)
            .await
            .map_err(|e| e.to_string())?;
        let ledger = FaultLedger::new(&inst.clients.d365, h.ledger_fault());
        let progress = CaseProgress(h);
        let engine = Engine {
            extractor: &inst.clients.looker,
            ledger: &ledger,
            store: w.store.as_ref(),
            progress: &progress,
        };
        let r = watched(
            w,
            h,
            engine.replay(&inst.config, &run_id, Duration::seconds(CRASH_LEASE_SECS)),
        )
        .await;
        h.ledger_fired
            .fetch_or(ledger.fired.load(Ordering::SeqCst), Ordering::SeqCst);
        first_ok =
            matches!(&r, Ok(r) if matches!(r.outcome, Outcome::Posted | Outcome::AlreadyPosted));
    } else {
        let r = watched(
            w,
            h,
            handle_replay(&w.ctx, replay_event(&run_id), &inv("rp1")),
        )
        .await
        .map_err(|e| e.to_string())?;
        first_ok = r.batch_item_failures.is_empty();
    }
    if !first_ok {
        // The replay Lambda reports the record; the stream delivers it again.
        let mut ok = false;
        for attempt in 2..=5 {
            tokio::time::sleep(PAST_LEASE).await;
            let r = handle_replay(&w.ctx, replay_event(&run_id), &inv(&format!("rp{attempt}")))
                .await
                .map_err(|e| e.to_string())?;
            if r.batch_item_failures.is_empty() {
                ok = true;
                break;
            }
        }
        if !ok {
            return Err("the replay record kept failing".into());
        }
    }
    if w.fno_writes() != writes {
        return Err(format!(
            "replaying a completed run wrote to D365 ({} write request(s))",
            w.fno_writes() - writes
        ));
    }
    Ok(Finish {
        final_runs: vec![run_id],
        first_ok,
    })
}

/// Whether the fault fired (so the case did not pass vacuously).
fn fired(f: Fault, w: &World, h: &Harness) -> bool {
    let pending = w.d365.pending_faults();
    let looker_status = |s: u16| w.looker.request_log().iter().any(|r| r.status == s);
    match f {
        Fault::D365ThrottleRetryAfter | Fault::D365ThrottleNoRetryAfter => {
            h.armed.load(Ordering::SeqCst) && pending.throttled == 0
        }
        Fault::LookerThrottle => looker_status(429),
        Fault::D365ReadServerError => h.ledger_fired.load(Ordering::SeqCst),
        Fault::HeaderServerError | Fault::HeaderCommitDrop => pending.writes == 0,
        Fault::LineCommitDrop => h.armed.load(Ordering::SeqCst) && pending.writes == 0,
        Fault::BatchCommitDrop | Fault::BatchCommitServerError | Fault::BatchDrop => {
            pending.batches == 0
        }
        Fault::D365Latency => w.d365.fno_request_count() > 0,
        Fault::D365TokenExpiry => h.armed.load(Ordering::SeqCst) && w.fno_statuses().contains(&401),
        Fault::LookerTokenExpiry => looker_status(401),
        Fault::Crash(_) => h.crash.fired.load(Ordering::SeqCst),
    }
}

async fn drive(s: Scenario, w: &World, h: &Harness) -> Result<Finish, String> {
    if s != Scenario::Replay {
        if let Some(f) = h.fault {
            f.arm_before(w).await;
        }
    }
    match s {
        Scenario::Small | Scenario::MultiVoucher => drive_cli(w, h).await,
        Scenario::Redelivery => drive_redelivery(w, h).await,
        Scenario::CronWebhook => drive_cron_webhook(w, h).await,
        Scenario::Replay => drive_replay(w, h).await,
    }
}

fn adjust_for(s: Scenario, f: Option<Fault>) -> impl FnOnce(&mut InstanceConfig) {
    move |c| {
        s.adjust(c);
        if let Some(f) = f {
            f.adjust(c);
        }
    }
}

/// The fault-free run of a scenario (with the fault's config): what D365 must hold.
async fn reference(b: Backend, s: Scenario, f: Option<Fault>) -> Expected {
    let w = world().store(b).adjust(adjust_for(s, f)).build().await;
    let h = Harness::new(None, false);
    let fin = drive(s, &w, &h)
        .await
        .unwrap_or_else(|e| panic!("fault-free {} run: {e}", s.name()));
    let mut e = snapshot(&w.d365);
    e.source_rows = w
        .store
        .source_rows(&fin.final_runs[0])
        .await
        .expect("rows")
        .len();
    // One header, or several for the scenario that splits its journal into parts.
    let split = matches!(s, Scenario::MultiVoucher);
    assert!(
        (if split { e.headers > 1 } else { e.headers == 1 })
            && !e.lines.is_empty()
            && e.source_rows > 0,
        "{e:?}"
    );
    e
}

struct CaseResult {
    fault: Fault,
    scenario: Scenario,
    problems: Vec<String>,
    recovered: bool,
    reachable: bool,
    secs: f64,
}

async fn run_case(
    b: Backend,
    f: Fault,
    s: Scenario,
    expected: Arc<Expected>,
    naive: bool,
) -> CaseResult {
    let started = Instant::now();
    let w = world()
        .store(b)
        .adjust(adjust_for(s, Some(f)))
        .build()
        .await;
    let h = Harness::new(Some(f), naive);
    let mut problems = Vec::new();
    let mut recovered = false;
    match drive(s, &w, &h).await {
        Err(e) => problems.push(format!("did not converge: {e}")),
        Ok(fin) => {
            recovered = !fin.first_ok;
            if f.absorbed() && !fin.first_ok && !naive {
                problems.push(
                    "the product must absorb this fault within the run, but the first attempt did not finish".into(),
                );
            }
            for run in &fin.final_runs {
                problems.extend(
                    check(
                        &w,
                        &expected,
                        run,
                        &[RunStatus::Completed, RunStatus::AlreadyPosted],
                    )
                    .await,
                );
            }
        }
    }
    let reachable = f.reachable(s);
    if fired(f, &w, &h) != reachable {
        problems.push(if reachable {
            "the fault never fired (the case would pass vacuously)".into()
        } else {
            "a fault this scenario cannot reach fired".into()
        });
    }
    problems.dedup();
    CaseResult {
        fault: f,
        scenario: s,
        problems,
        recovered,
        reachable,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// Runs the (filtered) matrix concurrently; prints it; returns every result.
async fn run_matrix(naive: bool, faults: &[Fault], scenarios: &[Scenario]) -> Vec<CaseResult> {
    run_matrix_on(Backend::Sqlite, naive, faults, scenarios).await
}

/// [`run_matrix`] with every world's audit store on `b`.
async fn run_matrix_on(
    b: Backend,
    naive: bool,
    faults: &[Fault],
    scenarios: &[Scenario],
) -> Vec<CaseResult> {
    let filter = std::env::var("FAULTS_ONLY").unwrap_or_default();
    let parallel: usize = std::env::var("FAULTS_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let started = Instant::now();
    // References: one fault-free run per (scenario, posting mode).
    let mut refs: BTreeMap<(Scenario, bool), Arc<Expected>> = BTreeMap::new();
    for &s in scenarios {
        for lines in [false, true] {
            let needs = faults
                .iter()
                .any(|f| (*f == Fault::LineCommitDrop) == lines);
            if needs {
                let f = lines.then_some(Fault::LineCommitDrop);
                // Boxed: on DynamoDB the reference run's future is too big for the test
                // thread's stack in debug builds.
                let e = Box::pin(reference(b, s, f)).await;
                refs.insert((s, lines), Arc::new(e));
            }
        }
    }
    let gate = Arc::new(Semaphore::new(parallel));
    let mut tasks = Vec::new();
    for &s in scenarios {
        for &f in faults {
            let label = format!("{} × {}", f.name(), s.name());
            if !filter.is_empty() && !label.contains(&filter) {
                continue;
            }
            let expected = refs[&(s, f == Fault::LineCommitDrop)].clone();
            let gate = gate.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("gate");
                run_case(b, f, s, expected, naive).await
            }));
        }
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("case task"));
    }
    print_matrix(&results, faults, scenarios, started.elapsed());
    results
}

fn print_matrix(
    results: &[CaseResult],
    faults: &[Fault],
    scenarios: &[Scenario],
    took: StdDuration,
) {
    let mut out = String::new();
    out.push_str(&format!("\n{:<26}", "fault \\ scenario"));
    for s in scenarios {
        out.push_str(&format!("{:>15}", s.name()));
    }
    out.push('\n');
    for f in faults {
        out.push_str(&format!("{:<26}", f.name()));
        for s in scenarios {
            let cell = match results.iter().find(|r| r.fault == *f && r.scenario == *s) {
                None => "-".to_string(),
                Some(r) if !r.problems.is_empty() => "FAIL".to_string(),
                Some(r) if !r.reachable => "ok (n/a)".to_string(),
                Some(r) if r.recovered => "ok (recov)".to_string(),
                Some(_) => "ok".to_string(),
            };
            out.push_str(&format!("{cell:>15}"));
        }
        out.push('\n');
    }
    let slowest = results.iter().map(|r| r.secs).fold(0.0f64, f64::max);
    out.push_str(&format!(
        "{} case(s) in {:.1}s (slowest case {:.1}s). ok = absorbed by the run; ok (recov) = converged after the documented recovery (replay / retry after the lease / redelivery); ok (n/a) = the fault cannot reach this path, asserted unconsumed.\n",
        results.len(),
        took.as_secs_f64(),
        slowest
    ));
    for r in results.iter().filter(|r| !r.problems.is_empty()) {
        out.push_str(&format!(
            "\nFAIL {} × {}:\n",
            r.fault.name(),
            r.scenario.name()
        ));
        for p in &r.problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    eprintln!("{out}");
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_in_every_scenario_posts_exactly_once() {
    let naive = std::env::var("FAULTS_NAIVE").is_ok_and(|v| v == "1");
    let results = run_matrix(naive, &Fault::ALL, &Scenario::ALL).await;
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| format!("{} × {}", r.fault.name(), r.scenario.name()))
        .collect();
    assert!(
        failed.is_empty(),
        "failing cases: {failed:?} (details above)"
    );
    let distinct = Fault::ALL.len();
    assert!(distinct >= 12, "at least 12 distinct faults");
}

/// The same cases with the audit store on DynamoDB (the local moto server `.ci/test` starts),
/// where the period lock, idempotency records and run updates are conditional writes: the
/// concurrent cron + webhook scenario under every fault, and every crash point on the small and
/// the multi-voucher journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_dynamodb_cron_webhook_and_crash_points_post_exactly_once() {
    let crashes: Vec<Fault> = Fault::ALL
        .iter()
        .copied()
        .filter(|f| f.crash_point().is_some())
        .collect();
    assert!(crashes.len() >= 5, "every crash point");
    let mut results = run_matrix_on(
        Backend::Dynamo,
        false,
        &Fault::ALL,
        &[Scenario::CronWebhook],
    )
    .await;
    results.extend(
        run_matrix_on(
            Backend::Dynamo,
            false,
            &crashes,
            &[Scenario::Small, Scenario::MultiVoucher],
        )
        .await,
    );
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.problems.is_empty())
        .map(|r| format!("{} × {}", r.fault.name(), r.scenario.name()))
        .collect();
    assert!(
        failed.is_empty(),
        "failing cases on DynamoDB: {failed:?} (details above)"
    );
    if std::env::var("FAULTS_ONLY").is_err() {
        assert!(results.len() >= Fault::ALL.len(), "{} cases", results.len());
    }
}

/// The checks are not vacuous: with reconciliation replaced by blind resending, the suite
/// reports duplicates for the unknown-outcome faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_poster_is_caught() {
    let faults = [
        Fault::HeaderCommitDrop,
        Fault::BatchCommitDrop,
        Fault::LineCommitDrop,
    ];
    let results = run_matrix(true, &faults, &[Scenario::Small]).await;
    for r in &results {
        assert!(
            r.problems.iter().any(|p| p.contains("duplicate")
                || p.contains("journal header(s)")
                || p.contains("differ")),
            "{} with a naive poster must fail the checks, got {:?}",
            r.fault.name(),
            r.problems
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Engine findings (ignored until the engine is fixed; see the report)

/// The same week arrives once as a scheduled extract (source `query:…`) and once as a Looker
/// delivery carrying the same rows (source `plan:1187/q:90211`). The period key and the period
/// lock are derived from the source identity, so neither run sees the other: D365 gets two
/// journals with the same numbers for 2026-W47.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn schedule_and_rows_webhook_for_the_same_week_post_once() {
    let w = world().build().await;
    let input: ScheduleInput = serde_json::from_str(EV_SCHEDULE).unwrap();
    let (s1, w1) = (inv("s1"), inv("w1"));
    let (s, hk) = tokio::join!(
        handle_schedule(&w.ctx, input, &s1),
        handle_webhook(&w.ctx, webhook_request(None), &w1)
    );
    eprintln!("schedule: {s:?}\nwebhook: {} {}", hk.status, hk.body);
    let headers = w.d365.headers();
    assert_eq!(
        headers.len(),
        1,
        "one journal for the week, got {:?}",
        headers
            .iter()
            .map(|h| format!("{} \"{}\"", h.batch_number, h.description))
            .collect::<Vec<_>>()
    );
    assert_eq!(w.d365.lines().len(), 14);
}

/// Replaying a completed run writes nothing (the matrix proves that) but rewrites the run's
/// recorded status from `completed` to `already_posted`, so the audit no longer says which run
/// created the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn replaying_a_completed_run_keeps_it_completed() {
    let w = world().build().await;
    let h = Harness::new(None, false);
    let fin = drive_replay(&w, &h).await.expect("replay scenario");
    let run = w.store.get_run(&fin.final_runs[0]).await.unwrap().unwrap();
    assert_eq!(
        run.status,
        RunStatus::Completed,
        "{}",
        run.message.unwrap_or_default()
    );
}

/// A run killed while holding the period lock and then superseded by a retry (a new run after
/// the lease) stays `posting` forever, although its journal is complete in D365.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_crashed_run_superseded_by_a_retry_is_closed() {
    let w = world().build().await;
    let h = Harness::new(Some(Fault::Crash(CrashPoint::LinesWritten)), false);
    let fin = drive_redelivery(&w, &h)
        .await
        .expect("redelivery converges");
    let runs = w.store.list_runs(None, 10).await.unwrap();
    let stale: Vec<_> = runs
        .iter()
        .filter(|r| !fin.final_runs.contains(&r.run_id))
        .filter(|r| matches!(r.status, RunStatus::Posting | RunStatus::Started))
        .map(|r| format!("{} {}", r.run_id, r.status.as_str()))
        .collect();
    assert!(stale.is_empty(), "runs left open: {stale:?}");
}

// ---------------------------------------------------------------------------------------------
// Client features: D365 concurrency cap

/// `max_concurrent_requests` caps the F&O requests one client has open: with 200 ms latency,
/// 8 parallel reads take ≥ 4 rounds with a cap of 2, about one round without a cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d365_concurrency_cap_limits_requests_in_flight() {
    use ml_connector::d365::{D365Client, D365Settings};
    let w = world().build().await;
    let settings = |cap: usize| {
        let mut s = D365Settings::new(
            &w.config.d365.environment_url,
            &w.config.d365.authority,
            ml_connector::sandbox::d365::SANDBOX_TENANT,
            ml_connector::sandbox::d365::SANDBOX_CLIENT_ID,
            ml_connector::secrets::Secret::new(ml_connector::sandbox::d365::SANDBOX_CLIENT_SECRET),
        )
        .unwrap();
        assert_eq!(s.max_concurrent_requests, 8, "default");
        s.max_concurrent_requests = cap;
        D365Client::new(s).unwrap()
    };
    let latency = StdDuration::from_millis(200);
    let mut took = BTreeMap::new();
    for cap in [2usize, 0] {
        let client = settings(cap);
        client.token_check().await.unwrap(); // the token is fetched outside the timing
        w.d365.set_latency(latency);
        let t0 = Instant::now();
        let results = join_all_local((0..8).map(|_| client.token_check()).collect()).await;
        took.insert(cap, t0.elapsed());
        w.d365.set_latency(StdDuration::ZERO);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    }
    // Cap 2: eight reads in at least four rounds; no cap: clearly faster than that.
    assert!(took[&2] >= latency * 4, "{took:?}");
    assert!(took[&0] >= latency && took[&0] * 2 < took[&2], "{took:?}");
}

/// Polls every future to completion concurrently on the current task.
async fn join_all_local<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("ready")).collect()
}
