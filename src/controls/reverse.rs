//! Reversal of a run's journals, and deletion of a still-unposted one.
//!
//! Posted entries are never edited: a posted journal gets an inverse journal (same accounts and
//! dimensions, debit and credit swapped, dated on the first day of the next open period after
//! the original), recorded as its own run (trigger `reverse`) linked to the original by audit
//! events on both. A journal that is still unposted can instead have the connector's lines (and
//! then its header) deleted, on request.
//!
//! Idempotent: the reversal journal is found again by its header Description
//! (`MLC-R {original run key} {original batch} …`) and its lines by their lineage references
//! (`{reversal run key}.L0007`, same line numbers as the original), so a second `reverse`
//! writes nothing new and an interrupted one resumes.

use std::collections::BTreeMap;

use chrono::{Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use super::notify::{validation, Validation};
use super::{
    record, record_with, reversal_description_prefix, ControlsError, EventData, EventKind,
    EventLevel, KIND_DELETED_UNPOSTED, KIND_REVERSAL, KIND_REVERSED, TRIGGER_REVERSE,
};
use crate::domain::config::InstanceConfig;
use crate::domain::converge::{Deletion, PlannedLine};
use crate::domain::journal::{Journal, JournalLine, JournalPart};
use crate::domain::mapping::{line_ref, parse_line_ref, truncate_chars};
use crate::domain::money::CurrencyPrecision;
use crate::domain::reference::{PeriodStatus, ReferenceData, VoucherAllocation};
use crate::domain::run::{LineRecord, LineStatus, RunKeys, RunRecord, RunStatus, RunTotals};
use crate::domain::validation::validate;
use crate::engine::lease::{busy_message, Lease, DEFAULT_LEASE};
use crate::engine::writer::{
    content_of_new, HeaderKey, JournalSpec, JournalWriter, WriteEnd, WriterHooks,
};
use crate::engine::CrashPoint;
use crate::ports::{LedgerGateway, LedgerHeader, LedgerLine, NewLedgerLine};
use crate::store::{LockOutcome, Store};
use async_trait::async_trait;

/// Options of [`reverse()`].
#[derive(Debug, Clone)]
pub struct ReverseOptions {
    /// Delete the connector's lines of journals that are still unposted (otherwise refused).
    pub delete_unposted: bool,
    /// The period lock's lease, renewed while reversing (see [`crate::engine::lease`]).
    pub lease: Duration,
}

impl Default for ReverseOptions {
    fn default() -> Self {
        Self {
            delete_unposted: false,
            lease: DEFAULT_LEASE,
        }
    }
}

/// One original journal and its reversal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalReversal {
    pub legal_entity: String,
    pub original_batch: String,
    pub reversal_batch: String,
    pub reversal_date: NaiveDate,
    pub lines_created: usize,
    pub lines_found: usize,
    /// Debit and credit of the reversal as read back from D365.
    pub debit: Decimal,
    pub credit: Decimal,
}

/// One unposted original journal whose lines were deleted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalDeletion {
    pub legal_entity: String,
    pub batch: String,
    pub lines_deleted: usize,
    pub header_deleted: bool,
    /// Lines not created by the run, left in place (the header then stays too).
    pub foreign_lines: usize,
}

/// What [`reverse()`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReverseReport {
    pub original_run_id: String,
    /// The reversal run (absent when only deletions happened).
    pub reversal: Option<RunRecord>,
    pub reversed: Vec<JournalReversal>,
    pub deleted: Vec<JournalDeletion>,
    /// Nothing new was written (a repeated `reverse`).
    pub nothing_new: bool,
    pub message: String,
}

/// Run key of the reversal of `original` covering `journals`: `{period_key}-r{5 hex}`, stable
/// for the same original and journals, different from any posting key (`{period_key}-{6 hex}`).
pub fn reversal_run_key(original: &RunRecord, journals: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    h.update(original.keys.run_key.as_bytes());
    for (le, b) in journals {
        h.update([0u8]);
        h.update(le.as_bytes());
        h.update([b'/']);
        h.update(b.as_bytes());
    }
    format!(
        "{}-r{}",
        original.keys.period_key,
        &hex::encode(h.finalize())[..5]
    )
}

/// First day of the first open period after the period containing `after`.
pub fn next_open_period_start(refd: &ReferenceData, after: NaiveDate) -> Option<NaiveDate> {
    let current_end = refd.period_for(after).map(|p| p.end).unwrap_or(after);
    refd.periods
        .iter()
        .filter(|p| p.start > current_end && p.status == PeriodStatus::Open)
        .map(|p| p.start)
        .min()
}

fn refused(m: impl Into<String>) -> ControlsError {
    ControlsError::Refused(m.into())
}

/// Reverses (or, for unposted journals with `delete_unposted`, deletes) the journals of run
/// `run_id`. See the module docs.
pub async fn reverse(
    store: &dyn Store,
    ledger: &dyn LedgerGateway,
    config: &InstanceConfig,
    run_id: &str,
    opts: &ReverseOptions,
) -> Result<ReverseReport, ControlsError> {
    let original = store
        .get_run(run_id)
        .await?
        .ok_or_else(|| ControlsError::RunNotFound(run_id.to_string()))?;
    if original.instance != config.instance {
        return Err(refused(format!(
            "run {run_id} belongs to instance `{}`, not `{}`",
            original.instance, config.instance
        )));
    }
    if original.trigger == TRIGGER_REVERSE {
        return Err(refused(format!(
            "run {run_id} is itself a reversal; to undo it, delete it in D365 while unposted, or re-post the original data"
        )));
    }
    if original.journals.is_empty() {
        return nothing_written(store, &original).await;
    }

    // Where does each journal stand in D365?
    let mut posted: Vec<(String, LedgerHeader)> = Vec::new();
    let mut unposted: Vec<(String, LedgerHeader)> = Vec::new();
    let mut gone: Vec<String> = Vec::new();
    for (le, batch) in &original.journals {
        match ledger.header(le, batch).await? {
            Some(h) if h.is_posted => posted.push((le.clone(), h)),
            Some(h) => unposted.push((le.clone(), h)),
            None => gone.push(format!("{le}/{batch}")),
        }
    }
    if !unposted.is_empty() && !opts.delete_unposted {
        let list = unposted
            .iter()
            .map(|(le, h)| format!("{le}/{}", h.batch_number))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(refused(format!(
            "journal(s) {list} of run {run_id} are not posted in D365. Nothing was written. An unposted journal is not reversed but deleted: run `ml-connector reverse {run_id} --config FILE --delete-unposted` to delete the connector's lines (posted entries are never edited), or post it in D365 first and then reverse it."
        )));
    }
    if posted.is_empty() && unposted.is_empty() {
        // The state `reverse` asks for already holds (typically a repeated `reverse` after
        // `--delete-unposted`): a success that writes nothing, as `reverse` is idempotent.
        return Ok(ReverseReport {
            original_run_id: run_id.to_string(),
            reversal: None,
            reversed: vec![],
            deleted: vec![],
            nothing_new: true,
            message: format!(
                "no journal of run {run_id} is in D365 any more ({}): nothing left to reverse, nothing written",
                gone.join(", ")
            ),
        });
    }

    // One writer per period: the same lock the posting engine takes.
    let lock_key = format!("post#{}#{}", original.instance, original.keys.period_key);
    let owner = format!("reverse-{run_id}");
    let lease = Lease::new(store, &lock_key, &owner, opts.lease);
    let (now, until, expires_at) = lease.times();
    match store
        .acquire_lock(&lock_key, &owner, now, until, expires_at)
        .await?
    {
        LockOutcome::InProgress { owner: o, until } if o != owner => {
            return Err(refused(busy_message(&o, until, Utc::now())));
        }
        _ => {}
    }
    // Renewed while reversing (see `engine::lease`).
    let result = lease
        .hold(
            reverse_locked(store, ledger, config, &original, posted, unposted),
            |e| {
                record(
                    store,
                    run_id,
                    EventLevel::Warn,
                    EventKind::Lock,
                    format!("the period lock {lock_key} was lost while reversing ({e}); another run may have taken the period over"),
                )
            },
        )
        .await;
    store.release_lock(&lock_key, &owner).await.ok();
    let mut report = result?;
    if !gone.is_empty() {
        report.message.push_str(&format!(
            " Journal(s) {} are no longer in D365 and were skipped.",
            gone.join(", ")
        ));
    }
    Ok(report)
}

/// `reverse` of a run that recorded no journal. When it cannot have written one (it stopped
/// before posting: rejected, conflict, busy, already posted, nothing to post, or stopped before
/// its validation finished), D365 holds nothing of it: the state `reverse` asks for already
/// holds, a success that writes nothing, like a repeated `reverse`. A run that passed
/// validation but did not finish may have created a header just before it stopped, before
/// recording it: refused, with the replay that records (and finishes) what it wrote.
async fn nothing_written(
    store: &dyn Store,
    original: &RunRecord,
) -> Result<ReverseReport, ControlsError> {
    let run_id = &original.run_id;
    let status = original.status.as_str();
    let never_posts = matches!(
        original.status,
        RunStatus::Rejected
            | RunStatus::Conflict
            | RunStatus::Busy
            | RunStatus::AlreadyPosted
            | RunStatus::Completed
    );
    if !never_posts && validation(store, run_id).await? == Validation::Passed {
        return Err(refused(format!(
            "run {run_id} is `{status}` and recorded no journal, but it passed validation and may have started writing to D365. Nothing was written. Finish it first with `ml-connector replay {run_id} --config FILE` (it records what D365 holds), then reverse it."
        )));
    }
    Ok(ReverseReport {
        original_run_id: run_id.clone(),
        reversal: None,
        reversed: vec![],
        deleted: vec![],
        nothing_new: true,
        message: format!(
            "run {run_id} wrote no journal to D365 (it ended `{status}`): nothing to reverse, nothing written"
        ),
    })
}

async fn reverse_locked(
    store: &dyn Store,
    ledger: &dyn LedgerGateway,
    config: &InstanceConfig,
    original: &RunRecord,
    posted: Vec<(String, LedgerHeader)>,
    unposted: Vec<(String, LedgerHeader)>,
) -> Result<ReverseReport, ControlsError> {
    let mut deleted = Vec::new();
    for (le, h) in &unposted {
        deleted.push(delete_unposted(store, ledger, original, le, &h.batch_number).await?);
    }

    let mut reversed = Vec::new();
    let mut reversal_run = None;
    if !posted.is_empty() {
        let journals: Vec<(String, String)> = posted
            .iter()
            .map(|(le, h)| (le.clone(), h.batch_number.clone()))
            .collect();
        let cx = Reversal {
            store,
            ledger,
            config,
            original,
            rev_key: reversal_run_key(original, &journals),
        };
        // Plan every reversal journal (and validate it) before writing any of them.
        let plans = cx.plan(&posted).await?;
        let mut rev = cx.find_or_record_run(&plans, &journals).await?;
        let mut recs = cx.line_records(&rev, &plans).await?;
        let mut failure = None;
        for plan in &plans {
            match cx.write_journal(&mut rev, plan, &mut recs).await {
                Ok(r) => reversed.push(r),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        cx.finish(&mut rev, &recs, &reversed, failure).await?;
        reversal_run = Some(rev);
    }
    Ok(reverse_report(original, reversal_run, reversed, deleted))
}

/// One reversal journal, planned and validated before any is written.
struct ReversalPlan {
    le: String,
    original_batch: String,
    date: NaiveDate,
    journal: Journal,
    manual_vouchers: bool,
    /// Account and offset display values of each line, as D365 holds the original.
    display: BTreeMap<u32, (String, Option<String>)>,
}

/// What every step of one reversal shares.
struct Reversal<'a> {
    store: &'a dyn Store,
    ledger: &'a dyn LedgerGateway,
    config: &'a InstanceConfig,
    original: &'a RunRecord,
    /// The reversal run's key (see [`reversal_run_key`]).
    rev_key: String,
}

impl Reversal<'_> {
    /// The reversal journal of each posted journal that holds lines of the original run.
    async fn plan(
        &self,
        posted: &[(String, LedgerHeader)],
    ) -> Result<Vec<ReversalPlan>, ControlsError> {
        let records = self.store.lines(&self.original.run_id).await?;
        let by_no: BTreeMap<(String, u32), &LineRecord> = records
            .iter()
            .map(|r| ((r.legal_entity.clone(), r.line.line_no), r))
            .collect();
        let precision = CurrencyPrecision::with_overrides(self.config.currencies.clone());
        let mut plans = Vec::new();
        for (le, h) in posted {
            if let Some(p) = self.plan_journal(le, h, &by_no, &precision).await? {
                plans.push(p);
            }
        }
        Ok(plans)
    }

    /// Plans the reversal of one posted journal; `None` when it holds none of the run's lines.
    async fn plan_journal(
        &self,
        le: &String,
        h: &LedgerHeader,
        by_no: &BTreeMap<(String, u32), &LineRecord>,
        precision: &CurrencyPrecision,
    ) -> Result<Option<ReversalPlan>, ControlsError> {
        let (ledger, config) = (self.ledger, self.config);
        let (run_id, key) = (
            self.original.run_id.as_str(),
            self.original.keys.run_key.as_str(),
        );
        let rev_key = &self.rev_key;
        let back = ledger.lines(le, &h.batch_number).await?;
        let (ours, foreign): (Vec<&LedgerLine>, Vec<&LedgerLine>) = back
            .iter()
            .partition(|l| matches!(parse_line_ref(&l.text), Some((k, _)) if k == key));
        if !foreign.is_empty() {
            return Err(refused(format!(
                "journal {le}/{} holds {} line(s) not created by run {run_id} (D365 line(s) {}); the connector only reverses its own lines. Reverse the journal in D365 (Reverse / Mass reversal) instead. Nothing was written.",
                h.batch_number,
                foreign.len(),
                foreign.iter().map(|l| l.line_number.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        if ours.is_empty() {
            return Ok(None);
        }
        let refd = ledger.reference(le).await?;
        let last = ours.iter().map(|l| l.trans_date).max().expect("not empty");
        let date = next_open_period_start(&refd, last).ok_or_else(|| {
            refused(format!(
                "{le} has no open fiscal period after the one containing {last}: open the next period in D365 (General ledger > Ledger calendar), then reverse again. Nothing was written."
            ))
        })?;
        let mut lines = Vec::new();
        for l in &ours {
            let (_, n) = parse_line_ref(&l.text).expect("ours");
            let rec = by_no.get(&(le.clone(), n)).ok_or_else(|| {
                refused(format!(
                    "D365 line {} of {le}/{} carries {} but the audit trail of run {run_id} has no such line; nothing was written",
                    l.line_number,
                    h.batch_number,
                    line_ref(key, n)
                ))
            })?;
            lines.push(JournalLine {
                line_no: n,
                voucher: rec.line.voucher,
                trans_date: date,
                account: rec.line.account.clone(),
                offset_account: rec.line.offset_account.clone(),
                currency: l.currency.clone(),
                // What D365 holds, negated (not what the run meant to send).
                amount: l.credit - l.debit,
                text: truncate_chars(
                    &format!("{} reversal of {}", line_ref(rev_key, n), line_ref(key, n)),
                    config.journal.max_text_len,
                ),
                kind: rec.line.kind,
                source_rows: rec.line.source_rows.clone(),
                source_column: rec.line.source_column.clone(),
            });
        }
        let journal = Journal {
            legal_entity: le.clone(),
            journal_name: h.journal_name.clone(),
            description: truncate_chars(
                &format!(
                    "{}reversal of run {run_id}",
                    reversal_description_prefix(key, &h.batch_number)
                ),
                config.journal.max_text_len,
            ),
            // One reversal header per original header (each part has its own).
            part: JournalPart::default(),
            lines,
        };
        let refs = BTreeMap::from([(le.clone(), refd.clone())]);
        let issues = validate(std::slice::from_ref(&journal), &refs, precision);
        if !issues.is_empty() {
            return Err(refused(format!(
                "the reversal of {le}/{} would not be accepted; nothing was written: {}",
                h.batch_number,
                issues
                    .iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let manual = refd
            .journal_names
            .get(&h.journal_name)
            .map(|j| j.voucher_allocation == VoucherAllocation::Manual)
            .unwrap_or(false);
        let display: BTreeMap<u32, (String, Option<String>)> = ours
            .iter()
            .map(|l| {
                (
                    parse_line_ref(&l.text).expect("ours").1,
                    (l.account_display.clone(), l.offset_display.clone()),
                )
            })
            .collect();
        Ok(Some(ReversalPlan {
            le: le.clone(),
            original_batch: h.batch_number.clone(),
            date,
            journal,
            manual_vouchers: manual,
            display,
        }))
    }

    /// The reversal run: found again (idempotent) or recorded before anything is written.
    async fn find_or_record_run(
        &self,
        plans: &[ReversalPlan],
        journals: &[(String, String)],
    ) -> Result<RunRecord, ControlsError> {
        let (store, config, original) = (self.store, self.config, self.original);
        let (run_id, key, rev_key) = (
            original.run_id.as_str(),
            original.keys.run_key.as_str(),
            &self.rev_key,
        );
        let rev = match store
            .runs_for_period(&original.instance, &original.keys.period_key)
            .await?
            .into_iter()
            .find(|r| r.trigger == TRIGGER_REVERSE && r.keys.run_key == *rev_key)
        {
            Some(r) => r,
            None => {
                let now = Utc::now();
                let r = RunRecord {
                    run_id: format!("r-{}-{:08x}", now.format("%Y%m%d%H%M%S"), fastrand::u32(..)),
                    instance: original.instance.clone(),
                    keys: RunKeys {
                        period_key: original.keys.period_key.clone(),
                        run_key: rev_key.clone(),
                    },
                    source: original.source.clone(),
                    period: original.period.clone(),
                    run_date: plans.first().map(|p| p.date).unwrap_or(original.run_date),
                    config_version: config.version(),
                    trigger: TRIGGER_REVERSE.into(),
                    status: RunStatus::Posting,
                    totals: RunTotals {
                        source_total: -original.totals.source_total,
                        mapped_total: -original.totals.mapped_total,
                        rounding_residue: -original.totals.rounding_residue,
                        ..RunTotals::default()
                    },
                    journals: vec![],
                    message: None,
                    started_at: now,
                    finished_at: None,
                };
                store.insert_run(&r).await?;
                record_with(
                    store,
                    &r.run_id,
                    EventLevel::Info,
                    KIND_REVERSAL,
                    format!(
                        "reversal of run {run_id} (run key {key}), journals {}",
                        journals
                            .iter()
                            .map(|(le, b)| format!("{le}/{b}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Some(EventData::Reversal {
                        original_run_id: run_id.to_string(),
                        original_run_key: key.to_string(),
                        journals: journals.to_vec(),
                    }),
                )
                .await;
                r
            }
        };
        Ok(rev)
    }

    /// The reversal run's line records, keeping what an earlier attempt recorded as created;
    /// stored before anything is written.
    async fn line_records(
        &self,
        rev: &RunRecord,
        plans: &[ReversalPlan],
    ) -> Result<Vec<LineRecord>, ControlsError> {
        let store = self.store;
        let recs: Vec<LineRecord> = plans
            .iter()
            .flat_map(|p| {
                let (le, display) = (&p.le, &p.display);
                p.journal.lines.iter().map(|l| LineRecord {
                    run_id: rev.run_id.clone(),
                    legal_entity: le.clone(),
                    part: JournalPart::default(),
                    account_display: display[&l.line_no].0.clone(),
                    offset_display: display[&l.line_no].1.clone().filter(|s| !s.is_empty()),
                    line: l.clone(),
                    status: LineStatus::Pending,
                    journal_batch: None,
                    d365_line_number: None,
                    d365_response: None,
                })
            })
            .collect();
        // Keep what an earlier attempt recorded as created.
        let known: BTreeMap<(String, u32), LineRecord> = store
            .lines(&rev.run_id)
            .await?
            .into_iter()
            .map(|r| ((r.legal_entity.clone(), r.line.line_no), r))
            .collect();
        let recs: Vec<LineRecord> = recs
            .into_iter()
            .map(|r| {
                known
                    .get(&(r.legal_entity.clone(), r.line.line_no))
                    .filter(|k| k.status == LineStatus::Created)
                    .cloned()
                    .unwrap_or(r)
            })
            .collect();
        store.put_lines(&recs).await?;

        Ok(recs)
    }

    /// Records how the reversal run ended, and on the original that it was reversed.
    async fn finish(
        &self,
        rev: &mut RunRecord,
        recs: &[LineRecord],
        reversed: &[JournalReversal],
        failure: Option<ControlsError>,
    ) -> Result<(), ControlsError> {
        let store = self.store;
        let run_id = self.original.run_id.as_str();
        let rev_key = &self.rev_key;
        rev.totals.journal_lines = recs.len() as u64;
        rev.totals.created_lines = reversed
            .iter()
            .map(|r| (r.lines_created + r.lines_found) as u64)
            .sum();
        rev.totals.created_debit = reversed.iter().map(|r| r.debit).sum();
        rev.totals.created_credit = reversed.iter().map(|r| r.credit).sum();
        rev.finished_at = Some(Utc::now());
        let summary = reversed
            .iter()
            .map(|r| {
                format!(
                    "{}/{} reversed by {}/{} dated {} (debit {} = credit {})",
                    r.legal_entity,
                    r.original_batch,
                    r.legal_entity,
                    r.reversal_batch,
                    r.reversal_date,
                    r.debit,
                    r.credit
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        if let Some(e) = failure {
            rev.status = RunStatus::Failed;
            rev.message = Some(format!(
                "reversal of run {run_id} stopped: {e}. Run `ml-connector reverse {run_id} --config FILE` again to resume (nothing is written twice)."
            ));
            store.update_run(rev).await?;
            record(
                store,
                &rev.run_id,
                EventLevel::Error,
                KIND_REVERSAL,
                rev.message.clone().unwrap_or_default(),
            )
            .await;
            return Err(e);
        }
        rev.status = RunStatus::Completed;
        rev.message = Some(format!(
            "reversal journal(s) created and left unposted for review: {summary}"
        ));
        store.update_run(rev).await?;
        let already = store
            .events(run_id)
            .await?
            .iter()
            .any(|e| e.reversed_by(&rev.run_id));
        if !already {
            record_with(
                store,
                run_id,
                EventLevel::Info,
                KIND_REVERSED,
                format!(
                    "reversed by run {} (run key {rev_key}): {summary}; the period is free for a corrected re-post",
                    rev.run_id
                ),
                Some(EventData::Reversed {
                    by_run_id: rev.run_id.clone(),
                    by_run_key: rev_key.to_string(),
                }),
            )
            .await;
        }
        Ok(())
    }

    /// Writes (or finds) one reversal journal through the convergent writer, which leaves
    /// exactly one copy in D365 whoever else reverses the same run, and reads it back.
    async fn write_journal(
        &self,
        rev: &mut RunRecord,
        plan: &ReversalPlan,
        recs: &mut [LineRecord],
    ) -> Result<JournalReversal, ControlsError> {
        let (store, ledger, config, original) =
            (self.store, self.ledger, self.config, self.original);
        let rev_key = self.rev_key.as_str();
        let (le, original_batch, date, journal) = (
            plan.le.as_str(),
            plan.original_batch.as_str(),
            plan.date,
            &plan.journal,
        );
        let (news, planned) = self.new_lines(plan, recs);
        let spec = JournalSpec {
            legal_entity: le.to_string(),
            journal_name: journal.journal_name.clone(),
            key: HeaderKey::Prefix(reversal_description_prefix(
                &original.keys.run_key,
                original_batch,
            )),
            description: journal.description.clone(),
            line_key: rev_key.to_string(),
            fingerprint: None,
            plan: planned,
            lines: news,
            posting: config.d365.posting,
            batch_operations: config.d365.batch_operations,
            exclude: Default::default(),
            supersede: false,
        };
        let mut hooks = ReverseHooks {
            store,
            rev,
            recs,
            le,
        };
        let end = JournalWriter { ledger }.converge(&spec, &mut hooks).await;
        let ReverseHooks { rev, recs, .. } = hooks;
        let refs = |n: u32| line_ref(rev_key, n);
        match end {
            WriteEnd::Converged {
                header,
                lines,
                created,
                ..
            } => {
                let batch = header.batch_number.clone();
                let mut debit = Decimal::ZERO;
                let mut credit = Decimal::ZERO;
                for rec in recs.iter_mut().filter(|r| r.legal_entity == le) {
                    let Some(x) = lines.get(&rec.line.line_no) else {
                        continue;
                    };
                    if rec.status != LineStatus::Created {
                        rec.status = LineStatus::Created;
                        rec.journal_batch = Some(batch.clone());
                        rec.d365_line_number = Some(x.line_number.clone());
                        rec.d365_response = Some(format!(
                            "reversal line {} voucher {} (already in D365)",
                            x.line_number, x.voucher
                        ));
                    }
                    let off = !x.offset_display.as_deref().unwrap_or("").is_empty();
                    let sums = (|| -> Result<(), crate::domain::money::Overflow> {
                        crate::domain::money::add_to(&mut debit, x.debit)?;
                        crate::domain::money::add_to(&mut credit, x.credit)?;
                        if off {
                            crate::domain::money::add_to(&mut debit, x.credit)?;
                            crate::domain::money::add_to(&mut credit, x.debit)?;
                        }
                        Ok(())
                    })();
                    if let Err(e) = sums {
                        return Err(refused(format!(
                            "reversal journal {le}/{} is in D365, but its totals cannot be computed: {e}",
                            header.batch_number
                        )));
                    }
                }
                store.put_lines(recs).await?;
                let found = spec.plan.len().saturating_sub(created);
                record(
                    store,
                    &rev.run_id,
                    EventLevel::Info,
                    EventKind::Post,
                    format!(
                        "reversal journal {le}/{batch} of {le}/{original_batch}: {created} line(s) created, {found} already present; dated {date}; read back: exactly one copy of each line, D365 holds debit {debit}, credit {credit}"
                    ),
                )
                .await;
                Ok(JournalReversal {
                    legal_entity: le.to_string(),
                    original_batch: original_batch.to_string(),
                    reversal_batch: batch,
                    reversal_date: date,
                    lines_created: created,
                    lines_found: found,
                    debit,
                    credit,
                })
            }
            WriteEnd::Conflict(c) => Err(refused(format!(
                "D365 holds reversal journal {le}/{} of {le}/{original_batch} with other lines than the reversal planned now ({}); nothing was written. Check it in D365 (delete it while unposted), then reverse again",
                c.batch,
                c.describe(8)
            ))),
            WriteEnd::DuplicatePosted { batches, detail } => Err(refused(format!(
                "D365 holds posted duplicates of the reversal of {le}/{original_batch}: {} ({detail}); reverse the extra one in D365",
                batches.join(", ")
            ))),
            WriteEnd::Refused { lines, message } => {
                for rec in recs
                    .iter_mut()
                    .filter(|r| r.legal_entity == le && lines.contains(&r.line.line_no))
                {
                    rec.status = LineStatus::Failed;
                    rec.d365_response = Some(message.clone());
                    store.put_lines(std::slice::from_ref(rec)).await?;
                }
                Err(refused(format!(
                    "D365 did not accept line {} of the reversal journal in {le}: {message}",
                    refs(lines.first().copied().unwrap_or_default())
                )))
            }
            WriteEnd::Failed(m) => Err(refused(m)),
            WriteEnd::Interrupted { .. } => Err(refused(format!(
                "the reversal of {le}/{original_batch} stopped before its deadline"
            ))),
            WriteEnd::Crashed(p) => Err(refused(format!("crashed (injected) at {p:?}"))),
        }
    }

    /// The lines to create for `plan` (those of `recs` in its legal entity), with their plan
    /// for the writer.
    fn new_lines(
        &self,
        plan: &ReversalPlan,
        recs: &[LineRecord],
    ) -> (BTreeMap<u32, NewLedgerLine>, Vec<PlannedLine>) {
        let (le, journal, manual_vouchers) =
            (plan.le.as_str(), &plan.journal, plan.manual_vouchers);
        let original = self.original;
        let mut news = BTreeMap::new();
        let mut plan = Vec::with_capacity(journal.lines.len());
        for l in &journal.lines {
            let Some(rec) = recs
                .iter()
                .find(|r| r.legal_entity == le && r.line.line_no == l.line_no)
            else {
                continue;
            };
            let new = NewLedgerLine {
                legal_entity: le.to_string(),
                batch_number: String::new(),
                trans_date: l.trans_date,
                account_display: rec.account_display.clone(),
                offset_display: rec.offset_display.clone(),
                debit: l.debit(),
                credit: l.credit(),
                currency: l.currency.clone(),
                text: l.text.clone(),
                voucher: manual_vouchers
                    .then(|| format!("MLR{}-{:04}", original.keys.period_key, l.voucher)),
            };
            plan.push(PlannedLine {
                line_no: l.line_no,
                voucher: l.voucher,
                content: content_of_new(&new),
            });
            news.insert(l.line_no, new);
        }
        (news, plan)
    }
}

/// What `reverse` reports: the reversal run and the journals deleted.
fn reverse_report(
    original: &RunRecord,
    reversal_run: Option<RunRecord>,
    reversed: Vec<JournalReversal>,
    deleted: Vec<JournalDeletion>,
) -> ReverseReport {
    let run_id = original.run_id.as_str();
    let nothing_new = deleted
        .iter()
        .all(|d| d.lines_deleted == 0 && !d.header_deleted)
        && reversed.iter().all(|r| r.lines_created == 0);
    let mut parts = Vec::new();
    if let Some(rev) = &reversal_run {
        parts.push(format!(
            "{} reversal run {}: {}",
            if nothing_new {
                "already reversed by"
            } else {
                "created"
            },
            rev.run_id,
            rev.message.clone().unwrap_or_default()
        ));
    }
    for d in &deleted {
        parts.push(format!(
            "unposted journal {}/{}: {} line(s) deleted{}",
            d.legal_entity,
            d.batch,
            d.lines_deleted,
            if d.header_deleted {
                ", journal deleted".to_string()
            } else if d.foreign_lines > 0 {
                format!(
                    ", journal kept: it holds {} line(s) not created by the connector",
                    d.foreign_lines
                )
            } else {
                String::new()
            }
        ));
    }
    ReverseReport {
        original_run_id: run_id.to_string(),
        reversal: reversal_run,
        reversed,
        deleted,
        nothing_new,
        message: parts.join(". "),
    }
}

/// What a reversal records while the writer converges its journal.
struct ReverseHooks<'a> {
    store: &'a dyn Store,
    rev: &'a mut RunRecord,
    recs: &'a mut [LineRecord],
    le: &'a str,
}

#[async_trait]
impl WriterHooks for ReverseHooks<'_> {
    async fn header(&mut self, batch: &str, _created: bool) {
        let le = self.le;
        if !self.rev.journals.iter().any(|(l, b)| l == le && b == batch) {
            self.rev.journals.push((le.to_string(), batch.to_string()));
            if let Err(e) = self.store.update_run(self.rev).await {
                tracing::error!(run_id = %self.rev.run_id, "audit store: {e}");
            }
        }
    }

    async fn written(&mut self, batch: &str, rows: &[(u32, LedgerLine)]) {
        let mut changed = Vec::new();
        for (n, got) in rows {
            if let Some(rec) = self
                .recs
                .iter_mut()
                .find(|r| r.legal_entity == self.le && r.line.line_no == *n)
            {
                rec.status = LineStatus::Created;
                rec.journal_batch = Some(batch.to_string());
                rec.d365_line_number = Some(got.line_number.clone());
                rec.d365_response = Some(format!(
                    "reversal line {} voucher {}",
                    got.line_number, got.voucher
                ));
                changed.push(rec.clone());
            }
        }
        if let Err(e) = self.store.put_lines(&changed).await {
            tracing::error!(run_id = %self.rev.run_id, "audit store: {e}");
        }
    }

    async fn cleaned(&mut self, _deletion: &Deletion, result: &str) {
        record(
            self.store,
            &self.rev.run_id,
            EventLevel::Warn,
            EventKind::Cleanup,
            result.to_string(),
        )
        .await;
    }

    async fn unknown(&mut self, what: &str) {
        record(
            self.store,
            &self.rev.run_id,
            EventLevel::Warn,
            EventKind::Post,
            what.to_string(),
        )
        .await;
    }

    fn crash_at(&self, _point: CrashPoint) -> bool {
        false
    }

    fn short(&self) -> Option<std::time::Duration> {
        None
    }

    fn took(&self, _started: tokio::time::Instant) {}

    fn has_deadline(&self) -> bool {
        false
    }
}

/// Deletes the run's lines from an unposted journal, then the journal if nothing else is in it.
async fn delete_unposted(
    store: &dyn Store,
    ledger: &dyn LedgerGateway,
    original: &RunRecord,
    le: &str,
    batch: &str,
) -> Result<JournalDeletion, ControlsError> {
    let key = original.keys.run_key.as_str();
    let lines = ledger.lines(le, batch).await?;
    let (ours, foreign): (Vec<&LedgerLine>, Vec<&LedgerLine>) = lines
        .iter()
        .partition(|l| matches!(parse_line_ref(&l.text), Some((k, _)) if k == key));
    let mut n = 0;
    for l in &ours {
        // Refused by D365 if the journal was posted meanwhile: posted entries stay untouched.
        if ledger.delete_line(le, batch, &l.line_number).await? {
            n += 1;
        }
    }
    let header_deleted = foreign.is_empty() && ledger.delete_header(le, batch).await?;
    record_with(
        store,
        &original.run_id,
        EventLevel::Warn,
        KIND_DELETED_UNPOSTED,
        format!(
            "deleted {n} line(s) of unposted journal {le}/{batch} from D365{}; the period is free for a corrected re-post",
            if header_deleted {
                " and the journal itself".to_string()
            } else if !foreign.is_empty() {
                format!(" (journal kept: {} line(s) not created by the connector)", foreign.len())
            } else {
                String::new()
            }
        ),
        Some(EventData::DeletedUnposted {
            legal_entity: le.to_string(),
            batch: batch.to_string(),
            lines_deleted: n as u64,
            header_deleted,
        }),
    )
    .await;
    Ok(JournalDeletion {
        legal_entity: le.to_string(),
        batch: batch.to_string(),
        lines_deleted: n,
        header_deleted,
        foreign_lines: foreign.len(),
    })
}
