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
///
/// Stored as JSON (SQLite `events.json`, DynamoDB `record`): `level` and `kind` keep their
/// string forms, and `payload` is left out when absent, so rows written before these fields were
/// typed read back unchanged, and so do rows of a newer version (unknown kinds and payloads are
/// kept as they are).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub run_id: String,
    pub at: DateTime<Utc>,
    pub level: EventLevel,
    pub kind: EventKind,
    pub message: String,
    /// Data that code reads back from the event (instead of parsing `message`). Absent in
    /// events from before payloads: readers fall back to the message text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<EventPayload>,
}

impl AuditEvent {
    /// An event stamped now, without payload.
    pub fn new(
        run_id: impl Into<String>,
        level: EventLevel,
        kind: EventKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            run_id: run_id.into(),
            at: Utc::now(),
            level,
            kind,
            message: message.into(),
            payload: None,
        }
    }

    /// The typed payload, when there is one this version knows.
    pub fn data(&self) -> Option<&EventData> {
        match self.payload.as_ref()? {
            EventPayload::Known(d) => Some(d),
            EventPayload::Unknown(_) => None,
        }
    }

    /// On a [`EventKind::Reversal`] event: the run it reverses. From the payload, or for
    /// events from before payloads from the message `reversal of run {run_id} …`.
    pub fn reversal_of(&self) -> Option<String> {
        if self.kind != EventKind::Reversal {
            return None;
        }
        if let Some(EventData::Reversal {
            original_run_id, ..
        }) = self.data()
        {
            return Some(original_run_id.clone());
        }
        self.message
            .strip_prefix("reversal of run ")
            .and_then(|m| m.split_whitespace().next())
            .map(str::to_string)
    }

    /// On a [`EventKind::Reversed`] event: whether `reversal_run_id` is the run that reversed
    /// it. From the payload, or for events from before payloads from the message text.
    pub fn reversed_by(&self, reversal_run_id: &str) -> bool {
        if self.kind != EventKind::Reversed {
            return false;
        }
        match self.data() {
            Some(EventData::Reversed { by_run_id, .. }) => by_run_id == reversal_run_id,
            _ => self.message.contains(reversal_run_id),
        }
    }
}

/// Severity of an audit event; `info`, `warn`, `error` as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum EventLevel {
    Info,
    Warn,
    Error,
    /// A level this version does not know (kept as written); `From` never puts a known level
    /// here.
    Other(String),
}

impl EventLevel {
    pub fn as_str(&self) -> &str {
        match self {
            EventLevel::Info => "info",
            EventLevel::Warn => "warn",
            EventLevel::Error => "error",
            EventLevel::Other(s) => s,
        }
    }
}

impl From<&str> for EventLevel {
    fn from(s: &str) -> Self {
        match s {
            "info" => EventLevel::Info,
            "warn" => EventLevel::Warn,
            "error" => EventLevel::Error,
            other => EventLevel::Other(other.to_string()),
        }
    }
}

impl From<String> for EventLevel {
    fn from(s: String) -> Self {
        match EventLevel::from(s.as_str()) {
            EventLevel::Other(_) => EventLevel::Other(s),
            known => known,
        }
    }
}

impl From<EventLevel> for String {
    fn from(l: EventLevel) -> Self {
        match l {
            EventLevel::Other(s) => s,
            known => known.as_str().to_string(),
        }
    }
}

impl std::fmt::Display for EventLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for EventLevel {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Defines [`EventKind`]: one variant per kind this version writes, each with its stored string.
macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident => $s:literal,)*) => {
        /// Machine-readable kind of an audit event, stored as its snake_case string.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum EventKind {
            $($(#[$doc])* $variant,)*
            /// A kind this version does not know (an older or newer writer): kept as written.
            /// Build kinds from strings with `From`, which never puts a known kind here.
            Other(String),
        }

        impl EventKind {
            /// Every kind this version knows (not `Other`).
            pub const KNOWN: &'static [EventKind] = &[$(EventKind::$variant,)*];

            pub fn as_str(&self) -> &str {
                match self {
                    $(EventKind::$variant => $s,)*
                    EventKind::Other(s) => s,
                }
            }
        }

        impl From<&str> for EventKind {
            fn from(s: &str) -> Self {
                match s {
                    $($s => EventKind::$variant,)*
                    other => EventKind::Other(other.to_string()),
                }
            }
        }
    };
}

event_kinds! {
    /// Rows read from Looker, or the extract failed.
    Extract => "extract",
    /// A validation problem (one per issue).
    Validation => "validation",
    /// The plan was validated against D365.
    Validated => "validated",
    /// A journal was written (or a post failed).
    Post => "post",
    /// Different data for an already-posted period.
    Conflict => "conflict",
    /// D365 holds a posted duplicate.
    DuplicatePosted => "duplicate_posted",
    /// The run stopped before its deadline.
    Interrupted => "interrupted",
    /// Another run holds the period lock.
    Busy => "busy",
    /// Period lock trouble (lost, not released).
    Lock => "lock",
    /// The run's final status.
    Finish => "finish",
    /// The run was closed because another completed the same data.
    Superseded => "superseded",
    /// A replay of the run.
    Replay => "replay",
    /// Cleanup after a failed reversal.
    Cleanup => "cleanup",
    /// A reconciliation report (the message is its JSON).
    Reconciliation => "reconciliation",
    /// On a reversal run: what it reverses.
    Reversal => "reversal",
    /// On an original run: its journals were reversed by another run.
    Reversed => "reversed",
    /// On an original run: its unposted journal lines were deleted from D365.
    DeletedUnposted => "deleted_unposted",
    /// A notification was published (or not).
    Notification => "notification",
    /// A Lambda continuation of an interrupted run.
    Continuation => "continuation",
    /// A Looker Action Hub request was taken.
    ActionRequest => "action_request",
    /// A Looker Action Hub request was refused.
    ActionRefused => "action_refused",
    /// A webhook request was refused.
    WebhookRefused => "webhook_refused",
    /// A replay request (DynamoDB stream) was handled.
    ReplayRequest => "replay_request",
}

impl From<String> for EventKind {
    fn from(s: String) -> Self {
        match EventKind::from(s.as_str()) {
            EventKind::Other(_) => EventKind::Other(s),
            known => known,
        }
    }
}

impl From<EventKind> for String {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::Other(s) => s,
            known => known.as_str().to_string(),
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The payload of an audit event: typed when this version knows its `type`, else kept as the
/// JSON it was written as (a newer writer), so reading and re-writing loses nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventPayload {
    Known(EventData),
    Unknown(serde_json::Value),
}

impl From<EventData> for EventPayload {
    fn from(d: EventData) -> Self {
        EventPayload::Known(d)
    }
}

/// Typed data of the events that code reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventData {
    /// On a reversal run ([`EventKind::Reversal`]): the run it reverses.
    Reversal {
        original_run_id: String,
        original_run_key: String,
        /// (legal entity, batch number) of the original journals reversed.
        journals: Vec<(String, String)>,
    },
    /// On an original run ([`EventKind::Reversed`]): the run that reversed it.
    Reversed {
        by_run_id: String,
        by_run_key: String,
    },
    /// On an original run ([`EventKind::DeletedUnposted`]): which unposted journal lost lines.
    DeletedUnposted {
        legal_entity: String,
        batch: String,
        lines_deleted: u64,
        header_deleted: bool,
    },
}

/// Audit event kind carrying a reconciliation report (the message is its JSON).
pub const KIND_RECONCILIATION: EventKind = EventKind::Reconciliation;
/// Audit event on an original run: its journals were reversed by another run.
pub const KIND_REVERSED: EventKind = EventKind::Reversed;
/// Audit event on a reversal run: what it reverses.
pub const KIND_REVERSAL: EventKind = EventKind::Reversal;
/// Audit event on an original run: its unposted journal lines were deleted from D365.
pub const KIND_DELETED_UNPOSTED: EventKind = EventKind::DeletedUnposted;
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
    fn event_kinds_and_levels_keep_their_stored_strings() {
        assert_eq!(EventKind::KNOWN.len(), 23);
        for k in EventKind::KNOWN {
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(&serde_json::from_str::<EventKind>(&json).unwrap(), k);
            assert_eq!(&EventKind::from(k.as_str()), k);
        }
        assert_eq!(
            serde_json::to_string(&EventKind::DeletedUnposted).unwrap(),
            "\"deleted_unposted\""
        );
        let unknown: EventKind = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(unknown, EventKind::Other("from_the_future".into()));
        assert_eq!(
            serde_json::to_string(&unknown).unwrap(),
            "\"from_the_future\""
        );
        for (l, s) in [
            (EventLevel::Info, "info"),
            (EventLevel::Warn, "warn"),
            (EventLevel::Error, "error"),
        ] {
            assert_eq!(serde_json::to_string(&l).unwrap(), format!("\"{s}\""));
            assert_eq!(EventLevel::from(s), l);
        }
        assert_eq!(EventLevel::from("trace"), EventLevel::Other("trace".into()));
        assert_eq!(format!("{:<5}|", EventLevel::Warn), "warn |");
    }

    #[test]
    fn event_payload_is_optional_and_typed() {
        let mut e = AuditEvent::new(
            "r-1",
            EventLevel::Info,
            EventKind::Reversal,
            "reversal of run r-0 (run key k), journals usmf/B1",
        );
        let json = serde_json::to_value(&e).unwrap();
        assert!(
            json.get("payload").is_none(),
            "absent payload is not written: {json}"
        );
        assert_eq!(e.reversal_of().as_deref(), Some("r-0"));
        // The payload wins over the message.
        e.payload = Some(
            EventData::Reversal {
                original_run_id: "r-7".into(),
                original_run_key: "k".into(),
                journals: vec![("usmf".into(), "B1".into())],
            }
            .into(),
        );
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["payload"]["type"], "reversal");
        assert_eq!(json["payload"]["original_run_id"], "r-7");
        let back: AuditEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.reversal_of().as_deref(), Some("r-7"));
        // Not a reversal event: no answer, whatever the message says.
        e.kind = EventKind::Post;
        assert_eq!(e.reversal_of(), None);
        // A payload of a newer version is kept as written.
        let newer = serde_json::json!({"run_id": "r", "at": "2026-11-23T10:00:00Z", "level": "info",
            "kind": "reversed", "message": "reversed by run r-2", "payload": {"type": "later", "x": 1}});
        let e: AuditEvent = serde_json::from_value(newer.clone()).unwrap();
        assert!(matches!(e.payload, Some(EventPayload::Unknown(_))));
        assert!(e.reversed_by("r-2"));
        assert_eq!(serde_json::to_value(&e).unwrap(), newer);
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
