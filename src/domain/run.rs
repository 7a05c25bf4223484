//! The run model: what one sync did, row by row and line by line, for the audit trail.
//!
//! A run = extract → map → validate → post → record. Every source row and every journal line is
//! recorded with the run id, so a controller can trace any D365 line back to the Looker row it
//! came from, and a failed post can be replayed from the audited lines.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::journal::{JournalLine, JournalPart};
use super::source::{Cell, SourceRef};

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Created; extract/map/validate under way.
    Started,
    /// Validated; lines are being written to D365.
    Posting,
    /// Every line exists in D365.
    Completed,
    /// The same period and content was already posted by an earlier run: nothing written.
    AlreadyPosted,
    /// Rejected before anything was written (mapping or validation errors, truncated extract).
    Rejected,
    /// Failed while posting: some lines may be in D365; replay resumes from the audit.
    Failed,
    /// Data for an already-posted period changed: stopped, nothing written.
    Conflict,
    /// Another run holds the posting lock for this period: stopped, nothing written.
    Busy,
    /// D365 holds more than one *posted* copy of this journal (or a posted journal holds a line
    /// twice): the connector cannot remove posted entries; finance reverses the duplicate.
    DuplicatePosted,
    /// Stopped on purpose before its time ran out (a Lambda's deadline): some lines may be in
    /// D365, the lock is released, and a replay finishes it from the audit.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Started => "started",
            RunStatus::Posting => "posting",
            RunStatus::Completed => "completed",
            RunStatus::AlreadyPosted => "already_posted",
            RunStatus::Rejected => "rejected",
            RunStatus::Failed => "failed",
            RunStatus::Conflict => "conflict",
            RunStatus::Busy => "busy",
            RunStatus::Interrupted => "interrupted",
            RunStatus::DuplicatePosted => "duplicate_posted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "started" => RunStatus::Started,
            "posting" => RunStatus::Posting,
            "completed" => RunStatus::Completed,
            "already_posted" => RunStatus::AlreadyPosted,
            "rejected" => RunStatus::Rejected,
            "failed" => RunStatus::Failed,
            "conflict" => RunStatus::Conflict,
            "busy" => RunStatus::Busy,
            "interrupted" => RunStatus::Interrupted,
            "duplicate_posted" => RunStatus::DuplicatePosted,
            _ => return None,
        })
    }

    /// Final states: nothing more will happen to the run without a replay.
    pub fn is_final(&self) -> bool {
        !matches!(self, RunStatus::Started | RunStatus::Posting)
    }
}

/// Natural keys of a run. `period_key` names *what* is being posted: the instance and the
/// period — deliberately not the source, so a scheduled query and a Looker delivery of the same
/// week share one lock and one natural key in D365 (same data: already posted; different data:
/// a conflict), never two journals. `run_key` adds the content, so the same data for the same
/// period always has the same key and a retry can find what an earlier attempt already created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunKeys {
    /// 10 hex chars of sha256(instance | period).
    pub period_key: String,
    /// `{period_key}-{6 hex chars of the content hash}`.
    pub run_key: String,
}

impl RunKeys {
    pub fn derive(instance: &str, period: &str, content_hash: &str) -> Self {
        let mut h = Sha256::new();
        h.update(instance.as_bytes());
        h.update([0u8]);
        h.update(period.as_bytes());
        let period_key = hex::encode(&h.finalize()[..5]);
        let mut c = Sha256::new();
        c.update(content_hash.as_bytes());
        let run_key = format!("{period_key}-{}", &hex::encode(c.finalize())[..6]);
        Self {
            period_key,
            run_key,
        }
    }
}

/// Totals a controller ties out: what Looker said, what was mapped, what D365 holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTotals {
    /// Sum of the amount column(s) over all source rows, exact.
    pub source_total: Decimal,
    /// Sum of detail lines after rounding (signed).
    pub mapped_total: Decimal,
    /// Sum of rounding residue booked (signed).
    pub rounding_residue: Decimal,
    /// Sum of debits of the lines created in D365 (as D365 confirmed them).
    pub created_debit: Decimal,
    /// Sum of credits of the lines created in D365.
    pub created_credit: Decimal,
    pub source_rows: u64,
    pub journal_lines: u64,
    pub created_lines: u64,
}

/// One run as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub instance: String,
    pub keys: RunKeys,
    pub source: SourceRef,
    /// The accounting period the run covers, e.g. `2026-W47` or `2026-11-16..2026-11-22`.
    pub period: String,
    /// Run date used for lines without a date column.
    pub run_date: NaiveDate,
    /// Hash of the instance configuration the run used.
    pub config_version: String,
    /// What started the run: `cli`, `demo`, `schedule`, `webhook`, `replay`.
    pub trigger: String,
    pub status: RunStatus,
    pub totals: RunTotals,
    /// D365 journals created (or found) for this run: (legal entity, JournalBatchNumber).
    pub journals: Vec<(String, String)>,
    /// Human-readable reason for a non-completed final status.
    pub message: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// What happened to one source row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// Mapped into one or more journal lines.
    Mapped,
    /// Skipped by a configured rule (e.g. zero amount).
    Skipped,
    /// Could not be mapped or failed validation.
    Rejected,
}

/// Audit record of one source row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRowRecord {
    pub run_id: String,
    pub row_index: usize,
    pub row_hash: String,
    pub cells: std::collections::BTreeMap<String, Cell>,
    pub status: RowStatus,
    /// Line numbers this row became.
    pub line_nos: Vec<u32>,
    /// Problems found with this row, each naming the field.
    pub errors: Vec<String>,
}

/// Where a journal line stands with D365.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineStatus {
    /// Planned, not yet sent.
    Pending,
    /// D365 confirmed it (201) or it was found there by its lineage reference.
    Created,
    /// D365 refused it, or the outcome is unknown; replay resolves it.
    Failed,
}

/// Audit record of one journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRecord {
    pub run_id: String,
    pub legal_entity: String,
    /// Which journal header of the legal entity the line goes to; recorded so a replay posts
    /// into the same parts without re-mapping (absent in records from before splitting: part 1
    /// of 1).
    #[serde(default)]
    pub part: JournalPart,
    pub line: JournalLine,
    /// `AccountDisplayValue` as sent.
    pub account_display: String,
    pub offset_display: Option<String>,
    pub status: LineStatus,
    pub journal_batch: Option<String>,
    /// D365 `LineNumber` once created.
    pub d365_line_number: Option<String>,
    /// D365 response summary (status and message) of the last attempt.
    pub d365_response: Option<String>,
}

/// A step or finding recorded against a run (validation issues, retries, errors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub run_id: String,
    pub at: DateTime<Utc>,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// Short machine-readable kind: `extract`, `validation`, `post`, `retry`, …
    pub kind: String,
    pub message: String,
}

/// Audit event kind carrying a reconciliation report (the message is its JSON).
pub const KIND_RECONCILIATION: &str = "reconciliation";
/// Audit event on an original run: its journals were reversed by another run.
pub const KIND_REVERSED: &str = "reversed";
/// Audit event on a reversal run: what it reverses.
pub const KIND_REVERSAL: &str = "reversal";
/// Audit event on an original run: its unposted journal lines were deleted from D365.
pub const KIND_DELETED_UNPOSTED: &str = "deleted_unposted";
/// `RunRecord::trigger` of a reversal run.
pub const TRIGGER_REVERSE: &str = "reverse";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_content_sensitive() {
        let a = RunKeys::derive("fees", "2026-W47", "abc");
        let b = RunKeys::derive("fees", "2026-W47", "abc");
        let c = RunKeys::derive("fees", "2026-W47", "abd");
        let d = RunKeys::derive("fees", "2026-W48", "abc");
        let e = RunKeys::derive("other", "2026-W47", "abc");
        assert_ne!(a.period_key, e.period_key);
        assert_eq!(a, b);
        assert_eq!(a.period_key, c.period_key);
        assert_ne!(a.run_key, c.run_key);
        assert_ne!(a.period_key, d.period_key);
        assert_eq!(a.period_key.len(), 10);
        assert_eq!(a.run_key.len(), 17);
    }

    #[test]
    fn status_round_trips() {
        for s in [
            RunStatus::Started,
            RunStatus::Posting,
            RunStatus::Completed,
            RunStatus::AlreadyPosted,
            RunStatus::Rejected,
            RunStatus::Failed,
            RunStatus::Conflict,
            RunStatus::Busy,
            RunStatus::Interrupted,
            RunStatus::DuplicatePosted,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
    }
}
