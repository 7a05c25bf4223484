//! The audit store port: runs, their audit trail, idempotency locks, instance configs and
//! replay requests. Implemented by `crate::store` (SQLite, DynamoDB).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::Cause;
use crate::domain::run::{AuditEvent, LineRecord, RunRecord, SourceRowRecord};

/// What a store operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The record already exists (e.g. a run with the same `run_id`).
    #[error("already exists: {0}")]
    Duplicate(String),
    /// The record to update (or a record it depends on) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The idempotency lock is not (or no longer) held by the caller.
    #[error("lock not held: {0}")]
    LockLost(String),
    /// The backend failed (I/O, busy, unexpected database error, schema too new, …): what the
    /// store was doing (empty when the cause says it all), and the cause, the backend's own
    /// error kept as the source (a message when the store itself refused).
    #[error("store backend error: {}", .source.in_context(.context))]
    Backend {
        context: String,
        #[source]
        source: Cause,
    },
    /// Stored data could not be decoded: what was read, and why it does not decode.
    #[error("corrupt stored data: {}", .source.in_context(.context))]
    Corrupt {
        context: String,
        #[source]
        source: Cause,
    },
}

impl StoreError {
    /// The backend failed with `cause` while doing `context` (`""`: the cause says it all).
    pub fn backend(context: impl Into<String>, cause: impl Into<Cause>) -> Self {
        StoreError::Backend {
            context: context.into(),
            source: cause.into(),
        }
    }

    /// Stored data (`context` names it) could not be decoded because of `cause`.
    pub fn corrupt(context: impl Into<String>, cause: impl Into<Cause>) -> Self {
        StoreError::Corrupt {
            context: context.into(),
            source: cause.into(),
        }
    }
}

/// Result of [`Store::acquire_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// The caller now holds the lock (status INPROGRESS) and should do the work.
    Acquired,
    /// Someone else (or an earlier invocation of the caller) is working on it until `until`.
    InProgress { owner: String, until: DateTime<Utc> },
    /// The work was done; `result` is what the owner recorded.
    Completed { result: String },
}

/// Persistence of runs, their audit trail and idempotency locks.
///
/// Ordering conventions shared by every implementation:
/// - runs: `started_at` descending, ties by `run_id` ascending;
/// - source rows: `row_index` ascending; lines: `legal_entity` then `line.line_no` ascending;
/// - events: insertion order.
///
/// Lock timestamps may be kept at millisecond precision by some backends.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Records a new run; `StoreError::Duplicate` if the run_id exists.
    async fn insert_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    /// Replaces a run (status, totals, journals, message, finished_at). `NotFound` if absent.
    async fn update_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// Most recent first (started_at desc, then run_id asc), optionally one instance, at most
    /// `limit`.
    async fn list_runs(
        &self,
        instance: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError>;
    /// Runs of an instance with this period key, most recent first (for "already posted" /
    /// conflicts).
    async fn runs_for_period(
        &self,
        instance: &str,
        period_key: &str,
    ) -> Result<Vec<RunRecord>, StoreError>;
    /// Upsert by (run_id, row_index). A batch is written atomically.
    async fn put_source_rows(&self, rows: &[SourceRowRecord]) -> Result<(), StoreError>;
    /// Ordered by row_index.
    async fn source_rows(&self, run_id: &str) -> Result<Vec<SourceRowRecord>, StoreError>;
    /// Upsert by (run_id, legal_entity, line.line_no). A batch is written atomically.
    /// Each line's run must exist (its `run_key` indexes the line): `NotFound` otherwise.
    async fn put_lines(&self, lines: &[LineRecord]) -> Result<(), StoreError>;
    /// Ordered by legal_entity then line_no.
    async fn lines(&self, run_id: &str) -> Result<Vec<LineRecord>, StoreError>;
    async fn append_event(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// In insertion order.
    async fn events(&self, run_id: &str) -> Result<Vec<AuditEvent>, StoreError>;
    /// Finds the line whose lineage reference is `"{run_key}.L{line_no:04}"`: the line with this
    /// `line_no` of the most recent run (same ordering as `list_runs`) whose `keys.run_key` is
    /// `run_key`. Within that run, the first legal entity (ascending) wins.
    async fn find_line_by_ref(
        &self,
        run_key: &str,
        line_no: u32,
    ) -> Result<Option<LineRecord>, StoreError>;
    /// Idempotency lock on `key` (Powertools semantics): acquired when there is no record, or
    /// `expires_at < now`, or it is INPROGRESS with `in_progress_until < now`; otherwise reports
    /// who holds it or the completed result. Atomic across processes.
    async fn acquire_lock(
        &self,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<LockOutcome, StoreError>;
    /// Heartbeat of a long holder: moves an INPROGRESS lock's `in_progress_until` (and its
    /// record expiry `expires_at`) forward, only if `owner` still holds it. Atomic across
    /// processes, like [`Store::acquire_lock`].
    ///
    /// Held means: the record exists, is INPROGRESS, names `owner`, and is not past its record
    /// expiry (`expires_at < now` counts as gone, as in `acquire_lock`). An in-progress deadline
    /// that passed while nobody took the lock over does not stop its owner renewing it (no one
    /// else can have acted under it). Anything else — no record, another owner (it was taken
    /// over), COMPLETED, expired — is `StoreError::LockLost`, and nothing is changed.
    async fn renew_lock(
        &self,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// INPROGRESS → COMPLETED with `result`, only if `owner` holds it (else `StoreError::LockLost`).
    async fn complete_lock(
        &self,
        key: &str,
        owner: &str,
        result: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Deletes an INPROGRESS lock held by `owner` (after a failure, so a retry may run).
    /// Not-held → `LockLost`.
    async fn release_lock(&self, key: &str, owner: &str) -> Result<(), StoreError>;
}

/// Forwards every `Store` method through a smart pointer, so `Box<dyn Store>` and
/// `Arc<dyn Store>` are stores themselves.
macro_rules! forward_store {
    ($ptr:ident) => {
        #[async_trait::async_trait]
        impl<T: Store + ?Sized> Store for $ptr<T> {
            async fn insert_run(&self, run: &RunRecord) -> Result<(), StoreError> {
                (**self).insert_run(run).await
            }
            async fn update_run(&self, run: &RunRecord) -> Result<(), StoreError> {
                (**self).update_run(run).await
            }
            async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
                (**self).get_run(run_id).await
            }
            async fn list_runs(
                &self,
                instance: Option<&str>,
                limit: usize,
            ) -> Result<Vec<RunRecord>, StoreError> {
                (**self).list_runs(instance, limit).await
            }
            async fn runs_for_period(
                &self,
                instance: &str,
                period_key: &str,
            ) -> Result<Vec<RunRecord>, StoreError> {
                (**self).runs_for_period(instance, period_key).await
            }
            async fn put_source_rows(&self, rows: &[SourceRowRecord]) -> Result<(), StoreError> {
                (**self).put_source_rows(rows).await
            }
            async fn source_rows(&self, run_id: &str) -> Result<Vec<SourceRowRecord>, StoreError> {
                (**self).source_rows(run_id).await
            }
            async fn put_lines(&self, lines: &[LineRecord]) -> Result<(), StoreError> {
                (**self).put_lines(lines).await
            }
            async fn lines(&self, run_id: &str) -> Result<Vec<LineRecord>, StoreError> {
                (**self).lines(run_id).await
            }
            async fn append_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
                (**self).append_event(event).await
            }
            async fn events(&self, run_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
                (**self).events(run_id).await
            }
            async fn find_line_by_ref(
                &self,
                run_key: &str,
                line_no: u32,
            ) -> Result<Option<LineRecord>, StoreError> {
                (**self).find_line_by_ref(run_key, line_no).await
            }
            async fn acquire_lock(
                &self,
                key: &str,
                owner: &str,
                now: DateTime<Utc>,
                in_progress_until: DateTime<Utc>,
                expires_at: DateTime<Utc>,
            ) -> Result<LockOutcome, StoreError> {
                (**self)
                    .acquire_lock(key, owner, now, in_progress_until, expires_at)
                    .await
            }
            async fn renew_lock(
                &self,
                key: &str,
                owner: &str,
                now: DateTime<Utc>,
                in_progress_until: DateTime<Utc>,
                expires_at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                (**self)
                    .renew_lock(key, owner, now, in_progress_until, expires_at)
                    .await
            }
            async fn complete_lock(
                &self,
                key: &str,
                owner: &str,
                result: &str,
                expires_at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                (**self).complete_lock(key, owner, result, expires_at).await
            }
            async fn release_lock(&self, key: &str, owner: &str) -> Result<(), StoreError> {
                (**self).release_lock(key, owner).await
            }
        }
    };
}

forward_store!(Box);
forward_store!(Arc);

/// Instance configuration kept where an operator can change it without a redeploy
/// (`ml-connector config push FILE` validates it first). Each run records the version it used.
#[async_trait::async_trait]
pub trait ConfigStore: Send + Sync {
    /// Stores `toml` (already validated) as the instance's current configuration.
    async fn put_config(&self, instance: &str, version: &str, toml: &str)
        -> Result<(), StoreError>;
    /// The instance's current `(version, toml)`, if any.
    async fn get_config(&self, instance: &str) -> Result<Option<(String, String)>, StoreError>;
}

/// Replay requests: an engineer asks (`ml-connector replay RUN_ID --request`), the replay Lambda
/// acts on the DynamoDB stream record.
#[async_trait::async_trait]
pub trait ReplayRequests: Send + Sync {
    async fn request_replay(&self, run_id: &str, requested_by: &str) -> Result<(), StoreError>;
}
