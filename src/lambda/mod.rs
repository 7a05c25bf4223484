//! AWS Lambda entry points, as library functions the three thin binaries (`src/bin/webhook.rs`,
//! `scheduler.rs`, `replay.rs`) wrap.
//!
//! - [`webhook`]: Function URL `POST /ingest/{instance}/{secret}` receiving a Looker
//!   scheduled-plan delivery ([`crate::looker::delivery`] parses it) → `Engine::run_extract`.
//! - [`action_hub`]: the Looker action "Post to Dynamics 365 journal" on the same Function URL
//!   (`/actions`, token in `Authorization`).
//! - [`scheduler`]: EventBridge Scheduler (ScheduleV2) input `{instance, scheduled_time,
//!   execution_id}` → `Engine::run`.
//! - [`replay`]: DynamoDB stream records asking for a replay → `Engine::replay`, reporting
//!   failed records by SequenceNumber.
//!
//! All three share a [`LambdaContext`] built once per execution environment, and the same
//! Powertools-style idempotency discipline on [`Store::acquire_lock`]: lock with the invocation's
//! deadline as the in-progress lease, complete with the result, release on failure.

pub mod action_hub;
pub(crate) mod context;
pub mod continuation;
pub(crate) mod error;
#[cfg(feature = "sandbox")]
pub mod local;
pub mod payload;
pub mod replay;
pub mod scheduler;
pub mod webhook;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

pub use context::{Instance, Invocation, LambdaContext, Settings};
pub use error::LambdaError;

use crate::engine::{Outcome, RunReport};
use crate::store::{LockOutcome, Store, StoreError};

/// What a run amounted to, as the Lambdas answer it (and as the idempotency record keeps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: String,
    pub instance: String,
    /// The recorded run status (`completed`, `already_posted`, `rejected`, `failed`, …).
    pub status: String,
    pub period: String,
    pub journals: Vec<JournalRef>,
    pub lines_created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Validation problems (rejected runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<String>,
    /// For an interrupted run: whether it continues by itself ([`continuation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
}

/// A journal a run created or found: legal entity and D365 batch number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRef {
    pub legal_entity: String,
    pub batch_number: String,
}

impl RunSummary {
    pub fn of(report: &RunReport) -> Self {
        let run = &report.run;
        RunSummary {
            run_id: run.run_id.clone(),
            instance: run.instance.clone(),
            status: run.status.as_str().to_string(),
            period: run.period.clone(),
            journals: run
                .journals
                .iter()
                .map(|(le, b)| JournalRef {
                    legal_entity: le.clone(),
                    batch_number: b.clone(),
                })
                .collect(),
            lines_created: run.totals.created_lines,
            message: run.message.clone(),
            issues: report.issues.iter().map(|i| i.to_string()).collect(),
            continuation: None,
        }
    }
}

/// Whether an outcome is final (the same event must not run again) or may change on a retry.
pub(crate) fn outcome_is_final(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Posted | Outcome::AlreadyPosted | Outcome::Previewed | Outcome::NothingToPost
    )
}

/// Result of taking an idempotency lock for one event.
pub(crate) enum Idempotency {
    /// This invocation owns the event: do the work, then complete or release.
    Run,
    /// Done before: the recorded result.
    Completed(String),
    /// Another invocation holds it until `until`.
    InProgress(DateTime<Utc>),
}

/// Powertools-style lock on `key`, held while in progress until the invocation's deadline.
pub(crate) async fn acquire(
    store: &dyn Store,
    key: &str,
    inv: &Invocation,
    ttl: Duration,
) -> Result<Idempotency, StoreError> {
    let now = Utc::now();
    let deadline = inv.deadline.max(now + Duration::seconds(1));
    match store
        .acquire_lock(key, &inv.request_id, now, deadline, deadline + ttl)
        .await?
    {
        LockOutcome::Acquired => Ok(Idempotency::Run),
        LockOutcome::Completed { result } => Ok(Idempotency::Completed(result)),
        // The same invocation (a runtime-level retry with the same request id) may resume.
        LockOutcome::InProgress { owner, .. } if owner == inv.request_id => Ok(Idempotency::Run),
        LockOutcome::InProgress { until, .. } => Ok(Idempotency::InProgress(until)),
    }
}

/// Marks `key` done with `result`; a failure is logged (the run itself is recorded already).
pub(crate) async fn complete(
    store: &dyn Store,
    key: &str,
    inv: &Invocation,
    result: &str,
    ttl: Duration,
) {
    if let Err(e) = store
        .complete_lock(key, &inv.request_id, result, Utc::now() + ttl)
        .await
    {
        tracing::warn!(lock = key, error = %e, "could not mark the idempotency record completed");
    }
}

/// Frees `key` after a failure so a retry may run.
pub(crate) async fn release(store: &dyn Store, key: &str, inv: &Invocation) {
    if let Err(e) = store.release_lock(key, &inv.request_id).await {
        tracing::warn!(lock = key, error = %e, "could not release the idempotency record");
    }
}

/// Engine progress as structured log lines.
pub struct LogProgress;

impl crate::engine::Progress for LogProgress {
    fn step(&self, message: &str) {
        tracing::info!(step = message, "progress");
    }
    fn line_posted(&self, done: usize, total: usize) {
        if done == total || done.is_multiple_of(500) {
            tracing::info!(done, total, "journal lines posted");
        }
    }
}

/// Initialises JSON logs for a Lambda binary (level from `AWS_LAMBDA_LOG_LEVEL`, else
/// `RUST_LOG`, else INFO; no ANSI colours, no timestamps: CloudWatch adds them). Never logs
/// raw events (see below).
///
/// The filter is a [`Targets`](tracing_subscriber::filter::Targets) (`level` and
/// `target=level` directives), not an `EnvFilter`: the latter's span and field-value matching
/// links a regex engine into the binaries (~0.2 MB), which nothing here needs. A value it cannot
/// parse (say a `[span]` directive, or Lambda's `FATAL`) falls back to INFO.
pub fn init_tracing() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string())
        .to_lowercase();
    // The runtime logs each raw event at TRACE; a webhook event's path holds the ingest secret,
    // so that module is capped at DEBUG whatever the level.
    const CAPPED: &str = "lambda_runtime::layers::api_response";
    let filter = format!("{level},{CAPPED}=debug")
        .parse::<Targets>()
        .unwrap_or_else(|_| {
            Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target(CAPPED, LevelFilter::DEBUG)
        });
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(false)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        // Everything reaches `filter`, which decides.
        .with_max_level(LevelFilter::TRACE)
        .finish()
        .with(filter)
        .try_init();
}
