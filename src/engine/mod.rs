//! The run pipeline: extract → map → validate → post → record.
//!
//! One code path for the CLI, the Lambdas and tests. Everything the engine decides is recorded in
//! the store before it acts on D365, so a crash at any point leaves an audit trail that a replay
//! can resume from, and a retry can never double-post (lines are found again by their lineage
//! reference).

mod budget;
pub(crate) mod lease;
mod post;
pub(crate) mod writer;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;

use crate::domain::config::{InstanceConfig, Period, Source};
use crate::domain::journal::Journal;
use crate::domain::mapping::{resolve_extract, Mapped, MappingContext};
use crate::domain::money::CurrencyPrecision;
use crate::domain::reference::{DimensionFormat, ReferenceData};
use crate::domain::run::{
    AuditEvent, EventData, EventKind, EventLevel, EventPayload, LineRecord, LineStatus, RowStatus,
    RunKeys, RunRecord, RunStatus, RunTotals, SourceRowRecord,
};
use crate::domain::source::{Extract, SourceRef, SourceRow};
use crate::domain::validation::{validate, Issue};
use crate::ports::{ExtractError, ExtractRequest, Extractor, LedgerGateway};
use crate::store::{LockOutcome, Store, StoreError};

pub use post::PostSummary;

pub use crate::ports::{CrashPoint, NoProgress, Progress};

/// Errors that stop the engine itself (as opposed to a run ending rejected or failed, which is
/// a normal, recorded outcome).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("audit store: {0}")]
    Store(#[from] StoreError),
    #[error("run `{0}` not found in the audit store")]
    RunNotFound(String),
    #[error("{0}")]
    Config(String),
    /// Fault injection stopped the engine at this point (see [`Progress::crash_at`]).
    #[error("crashed (injected) at {0:?}")]
    Crashed(CrashPoint),
}

/// Audit event kind recorded once a run passed validation: only such runs may be replayed.
pub const VALIDATED_EVENT: EventKind = EventKind::Validated;

/// Preview stops before writing; Post writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Preview,
    Post,
}

/// Records one audit event of `run_id` (and logs it). Best effort: a store that cannot take
/// the event is logged, and the run goes on. The engine and the finance controls both record
/// through here.
pub(crate) async fn record_event(
    store: &dyn Store,
    run_id: &str,
    level: EventLevel,
    kind: EventKind,
    message: String,
) {
    record_event_with(store, run_id, level, kind, message, None).await
}

/// [`record_event`] with a typed payload for readers that need the event's data back.
pub(crate) async fn record_event_with(
    store: &dyn Store,
    run_id: &str,
    level: EventLevel,
    kind: EventKind,
    message: String,
    payload: Option<EventData>,
) {
    let k = kind.as_str();
    match level {
        EventLevel::Error => tracing::error!(run_id, kind = k, "{message}"),
        EventLevel::Warn => tracing::warn!(run_id, kind = k, "{message}"),
        _ => tracing::info!(run_id, kind = k, "{message}"),
    }
    let mut ev = AuditEvent::new(run_id, level, kind, message);
    ev.payload = payload.map(EventPayload::from);
    if let Err(e) = store.append_event(&ev).await {
        tracing::error!(run_id, "could not record audit event: {e}");
    }
}

/// How a run ended, for exit codes and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every line is in D365.
    Posted,
    /// Same data for the same period was already posted: nothing new written.
    AlreadyPosted,
    /// Preview finished (nothing written by design).
    Previewed,
    /// Mapping/validation found problems: nothing written.
    Rejected,
    /// The period was already posted with different data: nothing written.
    Conflict,
    /// Another run is posting this period right now: nothing written.
    Busy,
    /// Something failed; see the message. Lines may be partially in D365; replay resumes.
    Failed,
    /// Stopped on purpose before the deadline; what was written is recorded, the lock is
    /// released, and a replay finishes the run.
    Interrupted,
    /// D365 holds a posted duplicate of the journal: finance must reverse it.
    DuplicatePosted,
    /// The source had no rows for the period (or only rows skipped for zero amounts): no
    /// journal, nothing written. Its own outcome, so an empty period is never read as posted.
    NothingToPost,
}

impl Outcome {
    /// CLI exit code: 0 done (incl. already posted), 2 rejected by validation, 3 nothing to
    /// post, 1 anything else (the table is in `ml-connector --help` and the README).
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Posted | Outcome::AlreadyPosted | Outcome::Previewed => 0,
            Outcome::Rejected => 2,
            Outcome::NothingToPost => 3,
            Outcome::Conflict
            | Outcome::Busy
            | Outcome::Failed
            | Outcome::Interrupted
            | Outcome::DuplicatePosted => 1,
        }
    }
}

/// Everything a caller may want to show about a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub run: RunRecord,
    pub journals: Vec<Journal>,
    /// Ledger dimension format per legal entity (to render account display values).
    pub formats: BTreeMap<String, DimensionFormat>,
    pub issues: Vec<Issue>,
    pub posted: Vec<PostSummary>,
}

/// Options for one run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub run_date: NaiveDate,
    /// `cli`, `demo`, `schedule`, `webhook`, `replay`.
    pub trigger: String,
    pub mode: Mode,
    /// The period lock's lease: another run may take the lock over once this long has passed
    /// since the last renewal. The lock is renewed every third of it while posting, so it only
    /// bounds how long a dead run's lock lingers ([`lease::DEFAULT_LEASE`]; Lambda: the smaller
    /// of that and its time left).
    pub lease: Duration,
    /// Stop posting cleanly (status `interrupted`, resumable by replay) when the next write
    /// might not finish before this instant (Lambda: its deadline minus a margin). `None`: no
    /// deadline.
    pub deadline: Option<tokio::time::Instant>,
    /// Replace an *unposted* journal that D365 holds under this data's key with other lines
    /// (the mapping changed): delete it whole, then post this one. Without it such a run is a
    /// conflict and writes nothing. Posted journals are never replaced (reverse them).
    pub supersede: bool,
}

/// The pipeline with its ports.
pub struct Engine<'a> {
    pub extractor: &'a dyn Extractor,
    pub ledger: &'a dyn LedgerGateway,
    pub store: &'a dyn Store,
    pub progress: &'a dyn Progress,
}

fn new_run_id(now: DateTime<Utc>) -> String {
    // 32 random bits: runs started in the same second by posters that share no store (or one
    // store) must not collide; 16 bits did in the convergence simulation.
    format!("r-{}-{:08x}", now.format("%Y%m%d%H%M%S"), fastrand::u32(..))
}

impl<'a> Engine<'a> {
    /// Stops the engine if fault injection asks for a crash at `point`.
    pub(crate) fn crash(&self, point: CrashPoint) -> Result<(), EngineError> {
        if self.progress.crash_at(point) {
            tracing::warn!(?point, "injected crash");
            return Err(EngineError::Crashed(point));
        }
        Ok(())
    }

    async fn event(
        &self,
        run_id: &str,
        level: EventLevel,
        kind: EventKind,
        message: impl Into<String>,
    ) {
        record_event(self.store, run_id, level, kind, message.into()).await
    }

    /// Runs one sync of `config`.
    pub async fn run(
        &self,
        config: &InstanceConfig,
        opts: &RunOptions,
    ) -> Result<RunReport, EngineError> {
        let period = config.period.kind.period_for(opts.run_date);
        let request = match config
            .source
            .resolve()
            .map_err(|e| EngineError::Config(e.to_string()))?
        {
            Source::Look(id) => ExtractRequest::Look(id.to_string()),
            Source::Query(_) => ExtractRequest::Query(
                config
                    .query_for_period(&period)
                    .ok_or_else(|| EngineError::Config("source.query missing".into()))?,
            ),
        };
        self.progress.step(&format!(
            "Extracting {} from Looker for {}",
            describe_request(&request),
            period.label
        ));
        match self.extractor.extract(&request).await {
            Ok(extract) => Box::pin(self.run_extract(config, opts, &period, extract)).await,
            Err(err) => {
                self.record_extract_failure(config, opts, &period, &request, err)
                    .await
            }
        }
    }

    /// Runs the pipeline on rows already in hand (a webhook delivery, or `run`'s extract).
    pub async fn run_extract(
        &self,
        config: &InstanceConfig,
        opts: &RunOptions,
        period: &Period,
        extract: Extract,
    ) -> Result<RunReport, EngineError> {
        let checked = self.map_and_validate(config, opts, period, extract).await;
        if opts.mode == Mode::Preview {
            return Ok(checked.preview(period));
        }
        let Checked {
            keys,
            mapped,
            issues,
            failure,
            formats,
            mut run,
            rows,
            source,
        } = checked;
        // Record everything before acting on D365.
        self.store.insert_run(&run).await?;
        self.event(
            &run.run_id,
            EventLevel::Info,
            EventKind::Extract,
            format!(
                "{} rows from {} for period {} ({} to {}); run key {}; config {}",
                run.totals.source_rows,
                source.identity(),
                period.label,
                period.start,
                period.end,
                keys.run_key,
                run.config_version
            ),
        )
        .await;
        // Consumes the rows: each is dropped as its audit record is made, so the extract and
        // its audit copy are not both alive in full.
        let row_audit = row_records(&run.run_id, rows, &mapped, &issues);
        self.store.put_source_rows(&row_audit).await?;
        drop(row_audit);
        let lines = line_records(&run.run_id, &mapped.journals, &formats);
        self.store.put_lines(&lines).await?;

        let stop = match failure {
            Some(msg) => Some((RunStatus::Failed, msg)),
            None => self.rejected_or_empty(&run, &mapped, &issues, period).await,
        };
        if let Some((status, msg)) = stop {
            let empty = status == RunStatus::Completed;
            let mut report = self
                .finish(run, status, msg, mapped, formats, issues)
                .await?;
            if empty {
                report.outcome = Outcome::NothingToPost;
            }
            return Ok(report);
        }
        self.event(
            &run.run_id,
            EventLevel::Info,
            VALIDATED_EVENT,
            format!(
                "validated against D365: {} journal(s), {} line(s), every voucher balances",
                mapped.journals.len(),
                lines.len()
            ),
        )
        .await;
        self.crash(CrashPoint::Recorded)?;
        let (status, message, posted) = match self
            .post_under_lock(&mut run, config, opts, &keys, lines)
            .await?
        {
            Ok(done) => done,
            Err((status, message)) => (status, message, vec![]),
        };
        let mut report = self
            .finish(run, status, message, mapped, formats, issues)
            .await?;
        report.posted = posted;
        Ok(report)
    }

    /// The run's first steps, nothing written: run keys from the extract's content, mapping,
    /// reference data for every legal entity the journals touch, validation against it. The
    /// rows are kept only when they will be recorded (post mode); otherwise they are dropped
    /// as soon as mapping has read them, before the journals are built.
    async fn map_and_validate(
        &self,
        config: &InstanceConfig,
        opts: &RunOptions,
        period: &Period,
        extract: Extract,
    ) -> Checked {
        let now = Utc::now();
        let keys = RunKeys::derive(&config.instance, &period.label, &extract.content_hash());
        let precision = CurrencyPrecision::with_overrides(config.currencies.clone());
        let ctx = MappingContext {
            config,
            period,
            run_date: opts.run_date,
            run_key: &keys.run_key,
            precision: &precision,
        };
        self.progress
            .step(&format!("Mapping {} rows", extract.rows.len()));
        let resolved = resolve_extract(&extract, &ctx);
        let Extract { source, rows, .. } = extract;
        let source_rows = rows.len();
        let rows = match opts.mode {
            Mode::Post => rows,
            Mode::Preview => {
                drop(rows);
                release_freed_memory();
                vec![]
            }
        };
        let mapped = resolved.build(&ctx);
        let mut issues = mapped.issues.clone();
        let (refs, failure) = self.read_references(&mapped.journals).await;
        if failure.is_none() {
            issues.extend(validate(&mapped.journals, &refs, &precision));
        }
        let formats: BTreeMap<String, DimensionFormat> =
            refs.into_iter().map(|(k, v)| (k, v.format)).collect();
        let run = RunRecord {
            run_id: new_run_id(now),
            instance: config.instance.clone(),
            keys: keys.clone(),
            source: source.clone(),
            period: period.label.clone(),
            run_date: opts.run_date,
            config_version: config.version(),
            trigger: opts.trigger.clone(),
            status: RunStatus::Started,
            totals: totals_of(&mapped, source_rows),
            journals: vec![],
            message: None,
            started_at: now,
            finished_at: None,
        };
        Checked {
            keys,
            mapped,
            issues,
            failure,
            formats,
            run,
            rows,
            source,
        }
    }

    /// Reference data of each legal entity the journals touch, read once per entity (not per
    /// part); the failure, if a read fails, stops at that entity.
    async fn read_references(
        &self,
        journals: &[Journal],
    ) -> (BTreeMap<String, ReferenceData>, Option<String>) {
        let mut refs: BTreeMap<String, ReferenceData> = BTreeMap::new();
        for j in journals {
            if refs.contains_key(&j.legal_entity) {
                continue; // another part of the same entity's journal
            }
            self.progress.step(&format!(
                "Reading accounts, dimensions, journal names and periods of {} from D365",
                j.legal_entity
            ));
            match self.ledger.reference(&j.legal_entity).await {
                Ok(r) => {
                    refs.insert(j.legal_entity.clone(), r);
                }
                Err(e) => {
                    let msg = format!(
                        "could not read reference data for {} from D365: {e}",
                        j.legal_entity
                    );
                    return (refs, Some(msg));
                }
            }
        }
        (refs, None)
    }

    /// Why a recorded run stops before posting, if it does: rejected (each problem recorded
    /// as an event), or nothing to post (status completed).
    async fn rejected_or_empty(
        &self,
        run: &RunRecord,
        mapped: &Mapped,
        issues: &[Issue],
        period: &Period,
    ) -> Option<(RunStatus, String)> {
        if !issues.is_empty() {
            for i in issues {
                self.event(
                    &run.run_id,
                    EventLevel::Error,
                    EventKind::Validation,
                    i.to_string(),
                )
                .await;
            }
            let msg = format!(
                "rejected: {} problem(s) found before writing; nothing was written to D365",
                issues.len()
            );
            return Some((RunStatus::Rejected, msg));
        }
        if mapped.journals.is_empty() {
            return Some((
                RunStatus::Completed,
                nothing_to_post(run.totals.source_rows, period),
            ));
        }
        None
    }

    /// Posts a recorded, validated run under the period lock: one poster per period at a
    /// time, the lock a mutex with a short lease renewed while posting (a crashed holder is
    /// taken over once its lease has passed; see `lease`). "Already posted" is decided from the
    /// audit history and, authoritatively, from D365 by natural key. `Err` = the run stopped
    /// before posting (busy, conflict, a lock in an unexpected state), with its status.
    async fn post_under_lock(
        &self,
        run: &mut RunRecord,
        config: &InstanceConfig,
        opts: &RunOptions,
        keys: &RunKeys,
        lines: Vec<LineRecord>,
    ) -> Result<Result<(RunStatus, String, Vec<PostSummary>), (RunStatus, String)>, EngineError>
    {
        let lock_key = format!("post#{}#{}", config.instance, keys.period_key);
        let lease = lease::Lease::new(self.store, &lock_key, &run.run_id, opts.lease);
        let (now, lease_until, expires_at) = lease.times();
        match self
            .store
            .acquire_lock(&lock_key, &run.run_id, now, lease_until, expires_at)
            .await?
        {
            LockOutcome::Acquired => {}
            LockOutcome::InProgress { owner, until } => {
                let msg = lease::busy_message(&owner, until, Utc::now());
                self.event(&run.run_id, EventLevel::Warn, EventKind::Busy, msg.clone())
                    .await;
                return Ok(Err((RunStatus::Busy, msg)));
            }
            LockOutcome::Completed { result } => {
                let msg = format!("period lock {lock_key} is unexpectedly marked completed ({result}); nothing was written");
                return Ok(Err((RunStatus::Failed, msg)));
            }
        }

        // Same period posted before with other data? (Checked under the lock.)
        let earlier = self
            .store
            .runs_for_period(&config.instance, &keys.period_key)
            .await?;
        if let Some(other) = self.blocking_run(run, keys, &earlier).await? {
            let msg = conflict_message(other, run);
            self.event(
                &run.run_id,
                EventLevel::Error,
                EventKind::Conflict,
                msg.clone(),
            )
            .await;
            self.store.release_lock(&lock_key, &run.run_id).await.ok();
            return Ok(Err((RunStatus::Conflict, msg)));
        }

        run.status = RunStatus::Posting;
        self.store.update_run(run).await?;
        self.crash(CrashPoint::Locked)?;
        let budget = budget::Budget::new(opts.deadline).with_lease(lease.lost_flag());
        let run_id = run.run_id.clone();
        let (status, message, posted) = self
            .holding(
                &lease,
                &run_id,
                // Boxed: the posting future is large (the writer, parallel parts), and held
                // inline in every caller's future it overflowed a 2 MiB worker stack (debug).
                Box::pin(self.post_all(run, config, lines, keys, opts.supersede, &budget)),
            )
            .await?;
        self.crash(CrashPoint::Posted)?;
        if matches!(status, RunStatus::Completed | RunStatus::AlreadyPosted) {
            self.close_superseded(run, &earlier).await?;
        }
        if let Err(e) = self.store.release_lock(&lock_key, &run.run_id).await {
            self.event(
                &run.run_id,
                EventLevel::Warn,
                EventKind::Lock,
                format!("could not release period lock: {e}"),
            )
            .await;
        }
        Ok(Ok((status, message, posted)))
    }

    /// An earlier run of the period, with other data, that still holds it. Reversals, and runs
    /// whose journals were reversed or deleted, no longer hold the period; nor does a run that
    /// found nothing to post (an empty period posted later is no conflict).
    async fn blocking_run<'r>(
        &self,
        run: &RunRecord,
        keys: &RunKeys,
        earlier: &'r [RunRecord],
    ) -> Result<Option<&'r RunRecord>, EngineError> {
        for r in earlier.iter().filter(|r| {
            r.run_id != run.run_id
                && r.keys.run_key != keys.run_key
                && matches!(r.status, RunStatus::Completed | RunStatus::AlreadyPosted)
                && !(r.status == RunStatus::Completed && r.journals.is_empty())
        }) {
            if crate::controls::blocks_period(self.store, r).await? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    async fn finish(
        &self,
        mut run: RunRecord,
        status: RunStatus,
        message: String,
        mapped: Mapped,
        formats: BTreeMap<String, DimensionFormat>,
        issues: Vec<Issue>,
    ) -> Result<RunReport, EngineError> {
        run.status = status;
        run.message = Some(message.clone());
        run.finished_at = Some(Utc::now());
        self.store.update_run(&run).await?;
        let level = match status {
            RunStatus::Completed | RunStatus::AlreadyPosted => EventLevel::Info,
            _ => EventLevel::Error,
        };
        // One structured line per finished run: alarms count `outcome` (see infra/template.yaml).
        if level == EventLevel::Info {
            tracing::info!(
                run_id = %run.run_id,
                instance = %run.instance,
                period = %run.period,
                outcome = status.as_str(),
                "run finished: {message}"
            );
        } else {
            // The SNS-ready notification rides on the same line, for alarms and subscribers.
            let validation = crate::controls::notify::validation(self.store, &run.run_id)
                .await
                .unwrap_or(crate::controls::notify::Validation::NotFinished);
            let notification = crate::controls::RunNotification::for_run(&run, validation)
                .map(|n| n.to_json())
                .unwrap_or_default();
            tracing::error!(
                run_id = %run.run_id,
                instance = %run.instance,
                period = %run.period,
                outcome = status.as_str(),
                notification = %notification,
                "run finished: {message}"
            );
        }
        // The status once: messages that already start with it ("rejected: …", "already
        // posted …") are not prefixed again.
        let said = status.as_str().replace('_', " ");
        let finish = if message.starts_with(status.as_str()) || message.starts_with(&said) {
            message.clone()
        } else {
            format!("{}: {message}", status.as_str())
        };
        self.event(&run.run_id, level, EventKind::Finish, finish)
            .await;
        self.progress.finished(&run).await;
        let outcome = match status {
            RunStatus::Completed => Outcome::Posted,
            RunStatus::AlreadyPosted => Outcome::AlreadyPosted,
            RunStatus::Rejected => Outcome::Rejected,
            RunStatus::Conflict => Outcome::Conflict,
            RunStatus::Busy => Outcome::Busy,
            RunStatus::Interrupted => Outcome::Interrupted,
            RunStatus::DuplicatePosted => Outcome::DuplicatePosted,
            _ => Outcome::Failed,
        };
        Ok(RunReport {
            outcome,
            run,
            journals: mapped.journals,
            formats,
            issues,
            posted: vec![],
        })
    }

    async fn record_extract_failure(
        &self,
        config: &InstanceConfig,
        opts: &RunOptions,
        period: &Period,
        request: &ExtractRequest,
        err: ExtractError,
    ) -> Result<RunReport, EngineError> {
        let now = Utc::now();
        let source = match request {
            ExtractRequest::Look(id) => SourceRef::Look {
                look_id: id.clone(),
            },
            ExtractRequest::Query(q) => SourceRef::Query {
                model: q.model.clone(),
                explore: q.explore.clone(),
                query_id: None,
                definition: serde_json::to_string(q).unwrap_or_default(),
            },
        };
        let keys = RunKeys::derive(&config.instance, &period.label, "");
        let status = match err {
            ExtractError::Truncated(_) | ExtractError::Invalid(_) => RunStatus::Rejected,
            _ => RunStatus::Failed,
        };
        let run = RunRecord {
            run_id: new_run_id(now),
            instance: config.instance.clone(),
            keys,
            source,
            period: period.label.clone(),
            run_date: opts.run_date,
            config_version: config.version(),
            trigger: opts.trigger.clone(),
            status: RunStatus::Started,
            totals: RunTotals::default(),
            journals: vec![],
            message: None,
            started_at: now,
            finished_at: None,
        };
        let message = format!("Looker extract failed: {err}; nothing was written to D365");
        let issues = vec![Issue::config("source", err.to_string())];
        if opts.mode == Mode::Preview {
            let mut run = run;
            run.status = status;
            run.message = Some(message);
            return Ok(RunReport {
                outcome: if status == RunStatus::Rejected {
                    Outcome::Rejected
                } else {
                    Outcome::Failed
                },
                run,
                journals: vec![],
                formats: BTreeMap::new(),
                issues,
                posted: vec![],
            });
        }
        self.store.insert_run(&run).await?;
        self.event(
            &run.run_id,
            EventLevel::Error,
            EventKind::Extract,
            message.clone(),
        )
        .await;
        self.finish(
            run,
            status,
            message,
            Mapped::empty(),
            BTreeMap::new(),
            issues,
        )
        .await
    }

    /// Closes runs of the same data and period that were interrupted (a killed process leaves
    /// them `started`/`posting`): this run finished their journal. Only this run holds the
    /// period lock, so any other open run is dead.
    async fn close_superseded(
        &self,
        run: &RunRecord,
        earlier: &[RunRecord],
    ) -> Result<(), EngineError> {
        for other in earlier.iter().filter(|r| {
            r.run_id != run.run_id
                && r.keys.run_key == run.keys.run_key
                && matches!(
                    r.status,
                    RunStatus::Started | RunStatus::Posting | RunStatus::Interrupted
                )
        }) {
            let mut closed = other.clone();
            closed.status = RunStatus::Failed;
            closed.message = Some(format!(
                "interrupted before it finished; run {} completed the same journal",
                run.run_id
            ));
            closed.finished_at = Some(Utc::now());
            self.store.update_run(&closed).await?;
            self.event(
                &other.run_id,
                EventLevel::Warn,
                EventKind::Superseded,
                format!(
                    "closed: run {} completed the same data for this period",
                    run.run_id
                ),
            )
            .await;
        }
        Ok(())
    }

    /// Re-posts what a run did not get into D365, from its audited lines (no new extract).
    pub async fn replay(
        &self,
        config: &InstanceConfig,
        run_id: &str,
        lease: Duration,
    ) -> Result<RunReport, EngineError> {
        self.replay_until(config, run_id, lease, None).await
    }

    /// [`Self::replay`] that stops cleanly (`interrupted`, replayable again) when the next
    /// write might not finish before `deadline`.
    pub async fn replay_until(
        &self,
        config: &InstanceConfig,
        run_id: &str,
        lease: Duration,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<RunReport, EngineError> {
        let mut run = self
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| EngineError::RunNotFound(run_id.to_string()))?;
        if run.instance != config.instance {
            return Err(EngineError::Config(format!(
                "run {run_id} belongs to instance `{}`, not `{}`",
                run.instance, config.instance
            )));
        }
        if !matches!(
            run.status,
            RunStatus::Failed
                | RunStatus::Posting
                | RunStatus::Started
                | RunStatus::Busy
                | RunStatus::Completed
                | RunStatus::Interrupted
        ) {
            let msg = format!(
                "run {run_id} is `{}`; only failed, interrupted or busy runs can be replayed (a rejected or conflicting run needs a new run)",
                run.status.as_str()
            );
            return Err(EngineError::Config(msg));
        }
        // Only lines that passed validation may ever be sent: a run that failed while reading
        // D365's reference data (or was killed before validating) has its lines recorded but
        // never checked, whatever its status says.
        if crate::controls::notify::validation(self.store, run_id).await?
            != crate::controls::notify::Validation::Passed
        {
            return Err(EngineError::Config(format!(
                "run {run_id} stopped before its validation finished; nothing of it was posted — start a new run instead of replaying it"
            )));
        }
        let lines = self.store.lines(run_id).await?;
        let lock_key = format!("post#{}#{}", run.instance, run.keys.period_key);
        let lease = lease::Lease::new(self.store, &lock_key, run_id, lease);
        let (now, until, expires_at) = lease.times();
        match self
            .store
            .acquire_lock(&lock_key, run_id, now, until, expires_at)
            .await?
        {
            LockOutcome::InProgress { owner, until } if owner != run_id => {
                let msg = lease::busy_message(&owner, until, Utc::now());
                self.event(run_id, EventLevel::Warn, EventKind::Busy, msg.clone())
                    .await;
                return Err(EngineError::Config(msg));
            }
            _ => {}
        }
        self.event(
            run_id,
            EventLevel::Info,
            EventKind::Replay,
            "replay requested: reconciling with D365 and posting what is missing",
        )
        .await;
        let was = (run.status, run.message.clone());
        run.status = RunStatus::Posting;
        self.store.update_run(&run).await?;
        let keys = run.keys.clone();
        let budget = budget::Budget::new(deadline).with_lease(lease.lost_flag());
        let (status, message, posted) = self
            .holding(
                &lease,
                run_id,
                Box::pin(self.post_all(&mut run, config, lines, &keys, false, &budget)),
            )
            .await?;
        self.crash(CrashPoint::Posted)?;
        // Replaying a completed run finds everything in place: it stays `completed` with its
        // message, so the audit keeps showing which run created the journal.
        let (status, message) = match (was, status) {
            ((RunStatus::Completed, Some(m)), RunStatus::AlreadyPosted) => {
                self.event(
                    run_id,
                    EventLevel::Info,
                    EventKind::Replay,
                    format!("nothing missing: {message}"),
                )
                .await;
                (RunStatus::Completed, m)
            }
            (_, s) => (s, message),
        };
        self.store.release_lock(&lock_key, run_id).await.ok();
        let mut report = self
            .finish(
                run,
                status,
                message,
                Mapped::empty(),
                BTreeMap::new(),
                vec![],
            )
            .await?;
        report.posted = posted;
        Ok(report)
    }
}

/// The message of a run without any journal: no rows at all, or only zero amounts.
fn nothing_to_post(source_rows: u64, period: &Period) -> String {
    if source_rows == 0 {
        format!(
            "nothing to post: the source returned no rows for period {} ({} to {}); nothing was written",
            period.label, period.start, period.end
        )
    } else {
        format!(
            "nothing to post: all {source_rows} row(s) were skipped (zero amounts); nothing was written"
        )
    }
}

fn describe_request(r: &ExtractRequest) -> String {
    match r {
        ExtractRequest::Look(id) => format!("Look {id}"),
        ExtractRequest::Query(q) => {
            format!("{}/{} ({} fields)", q.model, q.explore, q.fields.len())
        }
    }
}

fn conflict_message(other: &RunRecord, this: &RunRecord) -> String {
    format!(
        "period {} was already posted by run {} (journals {}, Looker total {}); this extract (run {}) has different data, Looker total {}. Nothing was written. Undo the earlier run with `ml-connector reverse {} --config FILE` (add `--delete-unposted` while its journal is unposted), then run again.",
        this.period,
        other.run_id,
        other
            .journals
            .iter()
            .map(|(le, b)| format!("{le}/{b}"))
            .collect::<Vec<_>>()
            .join(", "),
        other.totals.source_total,
        this.run_id,
        this.totals.source_total,
        other.run_id
    )
}

/// A run mapped and validated, nothing written yet (see `Engine::map_and_validate`).
struct Checked {
    keys: RunKeys,
    mapped: Mapped,
    issues: Vec<Issue>,
    /// Reference data could not be read: the run fails with this message.
    failure: Option<String>,
    formats: BTreeMap<String, DimensionFormat>,
    run: RunRecord,
    /// The extract's rows, for their audit records (empty in preview: not kept).
    rows: Vec<SourceRow>,
    source: SourceRef,
}

impl Checked {
    /// What a preview reports: the journals as they would be written, and their problems.
    fn preview(self, period: &Period) -> RunReport {
        let Checked {
            mapped,
            issues,
            failure,
            formats,
            mut run,
            ..
        } = self;
        let outcome = if failure.is_some() {
            Outcome::Failed
        } else if !issues.is_empty() {
            Outcome::Rejected
        } else if mapped.journals.is_empty() {
            Outcome::NothingToPost
        } else {
            Outcome::Previewed
        };
        run.status = match outcome {
            Outcome::Failed => RunStatus::Failed,
            Outcome::Rejected => RunStatus::Rejected,
            _ => RunStatus::Started,
        };
        run.message = match outcome {
            Outcome::NothingToPost => Some(nothing_to_post(run.totals.source_rows, period)),
            _ => failure,
        };
        RunReport {
            outcome,
            run,
            journals: mapped.journals,
            formats,
            issues,
            posted: vec![],
        }
    }
}

/// Hands memory freed by dropping an extract back to the OS. The rows were parsed on a blocking
/// thread, so glibc keeps their memory in that thread's arena, where the engine's thread does
/// not reuse it: without this, a 100,000-row extract's ~30 MiB stays resident while mapping
/// allocates its journals afresh. `malloc_trim` releases the free pages of every arena.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` takes no pointers and only returns free pages of the
        // allocator's own heaps to the kernel; it is safe to call at any time from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

fn totals_of(m: &Mapped, rows: usize) -> RunTotals {
    RunTotals {
        source_total: m.source_total,
        mapped_total: m.mapped_total,
        rounding_residue: m.rounding_residue,
        created_debit: Decimal::ZERO,
        created_credit: Decimal::ZERO,
        source_rows: rows as u64,
        journal_lines: m.journals.iter().map(|j| j.lines.len() as u64).sum(),
        created_lines: 0,
    }
}

fn row_records(
    run_id: &str,
    rows: Vec<SourceRow>,
    m: &Mapped,
    issues: &[Issue],
) -> Vec<SourceRowRecord> {
    let outcomes: BTreeMap<usize, _> = m.rows.iter().map(|r| (r.index, r)).collect();
    rows.into_iter()
        .map(|row| {
            let o = outcomes.get(&row.index);
            let mut errors: Vec<String> = o.map(|o| o.errors.clone()).unwrap_or_default();
            // Validation issues found on the lines this row became.
            for i in issues
                .iter()
                .filter(|i| i.row == Some(row.index) && i.line.is_some())
            {
                errors.push(format!("{}: {}", i.field, i.message));
            }
            let status = match o.map(|o| o.status) {
                Some(RowStatus::Mapped) if !errors.is_empty() => RowStatus::Rejected,
                Some(s) => s,
                None => RowStatus::Rejected,
            };
            SourceRowRecord {
                run_id: run_id.to_string(),
                row_index: row.index,
                row_hash: row.hash(),
                cells: row.to_map(),
                status,
                line_nos: o.map(|o| o.line_nos.clone()).unwrap_or_default(),
                errors,
            }
        })
        .collect()
}

fn line_records(
    run_id: &str,
    journals: &[Journal],
    formats: &BTreeMap<String, DimensionFormat>,
) -> Vec<LineRecord> {
    let fallback = DimensionFormat {
        name: "unknown".into(),
        segments: vec!["MainAccount".into()],
        delimiter: '-',
    };
    let mut out = Vec::new();
    for j in journals {
        let f = formats.get(&j.legal_entity).unwrap_or(&fallback);
        for l in &j.lines {
            out.push(LineRecord {
                run_id: run_id.to_string(),
                legal_entity: j.legal_entity.clone(),
                part: j.part,
                account_display: l.account.display_value(f),
                offset_display: l.offset_account.as_ref().map(|o| o.display_value(f)),
                line: l.clone(),
                status: LineStatus::Pending,
                journal_batch: None,
                d365_line_number: None,
                d365_response: None,
            });
        }
    }
    out
}
