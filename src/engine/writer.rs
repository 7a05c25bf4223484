//! The one idempotent journal writer, used by run, replay and reverse.
//!
//! It drives one journal (one header's worth of lines) to exactly one copy in D365, whoever
//! else is posting it: read what D365 holds under the journal's natural key, let
//! [`crate::domain::converge::assess`] decide the next step (clean up duplicates and half
//! vouchers, create the header, write missing vouchers), do it, and read again — until a read
//! shows exactly one copy, a conflict, or something only a human can fix. Nothing a poster
//! remembers is trusted over D365: an unknown outcome (timeout, 5xx, dropped connection) is
//! never resent blindly, it just ends the round and the next read tells what landed.
//!
//! The caller's [`WriterHooks`] record every header and line in the audit trail as it lands,
//! decide crash points (fault injection) and say whether there is time for another write.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;

use super::CrashPoint;
use crate::domain::config::Posting;
use crate::domain::converge::{
    assess, batch_order, line_number_value, Assessment, ConflictReport, Deletion, HeldHeader,
    HeldLine, LineContent, PlannedLine, Step,
};
use crate::domain::journal::JournalPart;
use crate::domain::mapping::{header_of_run, parse_line_ref};
use crate::ports::{
    LedgerError, LedgerGateway, LedgerHeader, LedgerLine, NewLedgerLine, VoucherOutcome,
};

/// Rounds of read → act before the writer gives up (a normal post needs three: create the
/// header, write the lines, confirm; every cleanup or unknown outcome adds one).
const MAX_ROUNDS: u32 = 12;

/// How the writer recognises the headers of its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderKey {
    /// A posting journal: Description `MLC {part key} …` for this run key and part.
    Part { run_key: String, part: JournalPart },
    /// Any Description starting with this text (a reversal journal).
    Prefix(String),
}

impl HeaderKey {
    /// What to ask D365 for (`Description eq 'prefix*'`).
    fn search_prefix(&self) -> String {
        match self {
            HeaderKey::Part { run_key, part } => crate::domain::mapping::description_prefix(
                &crate::domain::mapping::part_key(run_key, *part),
            ),
            HeaderKey::Prefix(p) => p.clone(),
        }
    }

    fn matches(&self, description: &str) -> bool {
        match self {
            HeaderKey::Part { run_key, part } => header_of_run(description, run_key) == Some(*part),
            HeaderKey::Prefix(p) => description.starts_with(p.as_str()),
        }
    }
}

/// The plan fingerprint a header Description carries: the `#xxxxxxxx` token after the key.
pub fn description_fingerprint(description: &str) -> Option<&str> {
    let mut tokens = description.split_whitespace();
    tokens.next()?; // MLC / MLC-R
    tokens.next()?; // the key
    tokens.next()?.strip_prefix('#').filter(|t| !t.is_empty())
}

/// One journal to converge.
pub struct JournalSpec {
    pub legal_entity: String,
    pub journal_name: String,
    pub key: HeaderKey,
    /// The Description of a header this writer creates.
    pub description: String,
    /// The run key the lines' lineage references carry.
    pub line_key: String,
    /// The plan's fingerprint, when the Description carries one.
    pub fingerprint: Option<String>,
    pub plan: Vec<PlannedLine>,
    /// What to send for each line number (`batch_number` is filled in when writing).
    pub lines: BTreeMap<u32, NewLedgerLine>,
    pub posting: Posting,
    /// Operations per `$batch` request.
    pub batch_operations: usize,
    /// Headers that carry the key but no longer count (journals reversed by `reverse`: the
    /// period may be posted again under the same key).
    pub exclude: BTreeSet<String>,
    /// On a conflict with an *unposted* journal, delete every header of the key (each whole,
    /// with its lines) once, then post this plan: a crash in between leaves nothing under the
    /// key, and the next run posts afresh.
    pub supersede: bool,
}

/// What the caller records and decides while the writer works.
#[async_trait]
pub trait WriterHooks: Send {
    /// The canonical header (created by this writer or found).
    async fn header(&mut self, batch: &str, created: bool);
    /// Lines this writer created (line number, D365's row), in the audit before the next write.
    async fn written(&mut self, batch: &str, lines: &[(u32, LedgerLine)]);
    /// A cleanup step (duplicate header or lines removed), for the audit.
    async fn cleaned(&mut self, deletion: &Deletion, result: &str);
    /// An unknown outcome, for the audit (the next read tells what landed).
    async fn unknown(&mut self, what: &str);
    /// Fault injection: stop right here, like a killed process.
    fn crash_at(&self, point: CrashPoint) -> bool;
    /// `Some(time left)` when the next write might not finish before the deadline.
    fn short(&self) -> Option<Duration>;
    /// Measures a write, for the deadline estimate.
    fn took(&self, started: tokio::time::Instant);
    /// Whether a deadline applies at all (then `$batch` requests go one at a time).
    fn has_deadline(&self) -> bool;
    /// D365's canonical header under this key is this plan's (same fingerprint), read back:
    /// another mapping's poster finds it and stops. Called before every write and on
    /// convergence.
    fn owned(&mut self, _batch: &str) {}
}

/// How a journal ended.
#[derive(Debug)]
pub enum WriteEnd {
    /// Exactly one copy: the header and, per line number, the line D365 holds.
    Converged {
        header: LedgerHeader,
        header_created: bool,
        lines: BTreeMap<u32, LedgerLine>,
        /// Lines this writer created.
        created: usize,
        /// Duplicates or half vouchers this writer removed (headers and line deletions).
        cleaned: usize,
    },
    /// D365 holds another version under this key; nothing was written.
    Conflict(ConflictReport),
    /// Posted duplicates (batches named): only a reversal fixes it.
    DuplicatePosted {
        batches: Vec<String>,
        detail: String,
    },
    /// D365 refused a line or a voucher (validation): its line numbers.
    Refused { lines: Vec<u32>, message: String },
    /// Anything else that stops the journal (the message says why and what to do).
    Failed(String),
    /// No time for the next write; `lines_written` were written by this writer.
    Interrupted {
        left: Duration,
        batch: Option<String>,
    },
    /// Fault injection stopped here.
    Crashed(CrashPoint),
}

/// Converges journals through a ledger gateway.
pub struct JournalWriter<'a> {
    pub ledger: &'a dyn LedgerGateway,
}

/// One read of D365: our headers with their lines, and the raw rows to report from.
struct Observed {
    held: Vec<HeldHeader>,
    headers: BTreeMap<String, LedgerHeader>,
    /// Per batch, per our line number, the copy with the lowest line number.
    canonical_lines: BTreeMap<String, BTreeMap<u32, LedgerLine>>,
}

fn content_of(l: &LedgerLine) -> LineContent {
    LineContent {
        trans_date: l.trans_date,
        account: l.account_display.clone(),
        offset: l.offset_display.clone(),
        debit: l.debit,
        credit: l.credit,
        currency: l.currency.clone(),
        text: l.text.clone(),
    }
}

/// The content of a line to send, as D365 will hold it.
pub fn content_of_new(l: &NewLedgerLine) -> LineContent {
    LineContent {
        trans_date: l.trans_date,
        account: l.account_display.clone(),
        offset: l.offset_display.clone(),
        debit: l.debit,
        credit: l.credit,
        currency: l.currency.clone(),
        text: l.text.clone(),
    }
}

impl JournalWriter<'_> {
    async fn observe(&self, spec: &JournalSpec) -> Result<Observed, LedgerError> {
        let le = spec.legal_entity.as_str();
        let mut headers: Vec<LedgerHeader> = self
            .ledger
            .find_headers(le, &spec.key.search_prefix())
            .await?
            .into_iter()
            .filter(|h| spec.key.matches(&h.description) && !spec.exclude.contains(&h.batch_number))
            .collect();
        headers.sort_by(|a, b| batch_order(&a.batch_number, &b.batch_number));
        let mut held = Vec::with_capacity(headers.len());
        let mut canonical_lines = BTreeMap::new();
        for h in &headers {
            let lines = self.ledger.lines(le, &h.batch_number).await?;
            let mut ours: BTreeMap<u32, LedgerLine> = BTreeMap::new();
            let mut held_lines = Vec::with_capacity(lines.len());
            for l in lines {
                let line_no = parse_line_ref(&l.text)
                    .filter(|(k, _)| *k == spec.line_key)
                    .map(|(_, n)| n);
                held_lines.push(HeldLine {
                    line_number: l.line_number.clone(),
                    voucher: l.voucher.clone(),
                    line_no,
                    content: content_of(&l),
                });
                if let Some(n) = line_no {
                    let lower = ours.get(&n).is_none_or(|o| {
                        line_number_value(&l.line_number) < line_number_value(&o.line_number)
                    });
                    if lower {
                        ours.insert(n, l);
                    }
                }
            }
            canonical_lines.insert(h.batch_number.clone(), ours);
            held.push(HeldHeader {
                batch: h.batch_number.clone(),
                posted: h.is_posted,
                fingerprint: description_fingerprint(&h.description).map(str::to_string),
                lines: held_lines,
            });
        }
        Ok(Observed {
            held,
            headers: headers
                .into_iter()
                .map(|h| (h.batch_number.clone(), h))
                .collect(),
            canonical_lines,
        })
    }

    /// Drives `spec`'s journal to exactly one copy in D365 (see the module docs).
    pub async fn converge(&self, spec: &JournalSpec, hooks: &mut dyn WriterHooks) -> WriteEnd {
        let le = spec.legal_entity.as_str();
        let mut st = Rounds {
            header_created: false,
            created: 0,
            cleaned: 0,
            announced: None,
            line_by_line: spec.posting == Posting::Lines,
            superseded: false,
        };
        for _round in 0..MAX_ROUNDS {
            let seen = match self.observe(spec).await {
                Ok(s) => s,
                Err(LedgerError::OutOfTime(_)) => {
                    return WriteEnd::Interrupted {
                        left: hooks.short().unwrap_or_default(),
                        batch: st.announced,
                    }
                }
                Err(e) => {
                    return WriteEnd::Failed(format!(
                        "could not read the journal from D365 in {le}: {e}"
                    ))
                }
            };
            let step = match self.next_step(spec, &seen, &mut st, hooks).await {
                Ok(step) => step,
                Err(end) => return end,
            };
            let end = match step {
                Step::Clean(deletions) => self.clean(le, &deletions, &mut st, hooks).await,
                Step::CreateHeader => self.create_header(spec, &mut st, hooks).await,
                Step::Write { batch, vouchers } => {
                    self.write(spec, &batch, &vouchers, &mut st, hooks).await
                }
            };
            if let Some(end) = end {
                return end;
            }
        }
        WriteEnd::Failed(format!(
            "the journal in {le} did not settle to one copy after {MAX_ROUNDS} rounds of reading and writing (other posters at work, or D365 answering with unknown outcomes); nothing was left half-written that the next run or replay does not finish"
        ))
    }

    /// What D365 holds decides the next step; `Err` ends the write (converged, a conflict, a
    /// duplicate posting, a state only a person may change).
    async fn next_step(
        &self,
        spec: &JournalSpec,
        seen: &Observed,
        st: &mut Rounds,
        hooks: &mut dyn WriterHooks,
    ) -> Result<Step, WriteEnd> {
        let le = spec.legal_entity.as_str();
        match assess(&spec.plan, spec.fingerprint.as_deref(), &seen.held) {
            Assessment::Converged { batch, .. } => {
                let header = seen.headers.get(&batch).cloned();
                let lines = seen
                    .canonical_lines
                    .get(&batch)
                    .cloned()
                    .unwrap_or_default();
                let Some(header) = header else {
                    return Err(WriteEnd::Failed(format!(
                        "journal {le}/{batch} vanished while it was read"
                    )));
                };
                if st.announced.as_deref() != Some(batch.as_str()) {
                    hooks.header(&batch, false).await;
                    if hooks.crash_at(CrashPoint::HeaderCreated) {
                        return Err(WriteEnd::Crashed(CrashPoint::HeaderCreated));
                    }
                }
                hooks.owned(&batch);
                Err(WriteEnd::Converged {
                    header,
                    header_created: st.header_created,
                    lines,
                    created: st.created,
                    cleaned: st.cleaned,
                })
            }
            Assessment::Conflict(c)
                if spec.supersede
                    && !st.superseded
                    && !c.posted
                    && seen.held.iter().all(|h| !h.posted) =>
            {
                st.superseded = true;
                Ok(Step::Clean(
                    seen.held
                        .iter()
                        .map(|h| Deletion::Header {
                            batch: h.batch.clone(),
                        })
                        .collect(),
                ))
            }
            Assessment::Conflict(c) => Err(WriteEnd::Conflict(c)),
            Assessment::DuplicatePosted { batches, detail } => {
                Err(WriteEnd::DuplicatePosted { batches, detail })
            }
            Assessment::Stuck(m) => Err(WriteEnd::Failed(format!("in {le}: {m}"))),
            Assessment::Act(step) => Ok(step),
        }
    }

    /// Removes duplicates and half vouchers, one deletion at a time. `None`: read again.
    async fn clean(
        &self,
        le: &str,
        deletions: &[Deletion],
        st: &mut Rounds,
        hooks: &mut dyn WriterHooks,
    ) -> Option<WriteEnd> {
        for d in deletions {
            if let Some(left) = hooks.short() {
                return Some(WriteEnd::Interrupted {
                    left,
                    batch: st.announced.clone(),
                });
            }
            let started = tokio::time::Instant::now();
            let result = self.delete(le, d).await;
            hooks.took(started);
            match result {
                Ok(r) => {
                    st.cleaned += 1;
                    hooks.cleaned(d, &r).await;
                }
                Err(LedgerError::OutOfTime(_)) => {
                    return Some(WriteEnd::Interrupted {
                        left: hooks.short().unwrap_or_default(),
                        batch: st.announced.clone(),
                    })
                }
                // Someone else changed the journal meanwhile (a line already gone, a header
                // posted…) or the outcome is unknown: read again.
                Err(e) => {
                    hooks.unknown(&format!("cleanup in {le}: {e}")).await;
                    return None;
                }
            }
            if hooks.crash_at(CrashPoint::LinesWritten) {
                return Some(WriteEnd::Crashed(CrashPoint::LinesWritten));
            }
        }
        None
    }

    /// Creates the journal's header (no header carries the key yet). `None`: read again.
    async fn create_header(
        &self,
        spec: &JournalSpec,
        st: &mut Rounds,
        hooks: &mut dyn WriterHooks,
    ) -> Option<WriteEnd> {
        let le = spec.legal_entity.as_str();
        if let Some(left) = hooks.short() {
            return Some(WriteEnd::Interrupted { left, batch: None });
        }
        let started = tokio::time::Instant::now();
        let result = self
            .ledger
            .create_header(le, &spec.journal_name, &spec.description)
            .await;
        hooks.took(started);
        match result {
            Ok(h) => {
                st.header_created = true;
                hooks.header(&h.batch_number, true).await;
                st.announced = Some(h.batch_number.clone());
                if hooks.crash_at(CrashPoint::HeaderCreated) {
                    return Some(WriteEnd::Crashed(CrashPoint::HeaderCreated));
                }
                None
            }
            Err(LedgerError::OutcomeUnknown(m)) => {
                // Did it land? The next read says; it is never created blindly.
                st.header_created = true;
                hooks
                    .unknown(&format!(
                        "creating the journal header in {le} had an unknown outcome ({m}); reading D365 before anything else"
                    ))
                    .await;
                None
            }
            Err(LedgerError::OutOfTime(_)) => Some(WriteEnd::Interrupted {
                left: hooks.short().unwrap_or_default(),
                batch: None,
            }),
            Err(e) => Some(WriteEnd::Failed(format!(
                "D365 refused the journal header in {le}: {e}"
            ))),
        }
    }

    /// Writes the missing vouchers into the canonical header. `None`: read again.
    async fn write(
        &self,
        spec: &JournalSpec,
        batch: &str,
        vouchers: &[Vec<u32>],
        st: &mut Rounds,
        hooks: &mut dyn WriterHooks,
    ) -> Option<WriteEnd> {
        if st.announced.as_deref() != Some(batch) {
            hooks.header(batch, false).await;
            st.announced = Some(batch.to_string());
            if hooks.crash_at(CrashPoint::HeaderCreated) {
                return Some(WriteEnd::Crashed(CrashPoint::HeaderCreated));
            }
        }
        hooks.owned(batch);
        let groups: Vec<Vec<NewLedgerLine>> = vouchers
            .iter()
            .map(|nos| {
                nos.iter()
                    .filter_map(|n| spec.lines.get(n))
                    .map(|l| NewLedgerLine {
                        batch_number: batch.to_string(),
                        ..l.clone()
                    })
                    .collect()
            })
            .collect();
        let end = if st.line_by_line {
            self.write_lines(batch, &groups, spec, hooks, &mut st.created)
                .await
        } else {
            match self
                .write_vouchers(batch, &groups, spec, hooks, &mut st.created)
                .await
            {
                Some(Err(WriteStop::NoBatch)) => {
                    st.line_by_line = true;
                    None
                }
                other => other,
            }
        };
        match end {
            None | Some(Ok(())) | Some(Err(WriteStop::NoBatch)) => None,
            Some(Err(WriteStop::End(e))) => {
                // A refusal may only mean the header was removed by another poster's
                // cleanup: then read again and carry on.
                if let WriteEnd::Refused { .. } = &e {
                    if let Ok(again) = self.observe(spec).await {
                        if !again.headers.contains_key(batch) {
                            return None;
                        }
                    }
                }
                Some(e)
            }
        }
    }

    /// One deletion; `Ok` with a description of what was removed.
    async fn delete(&self, le: &str, d: &Deletion) -> Result<String, LedgerError> {
        match d {
            Deletion::Header { batch } => {
                let gone = self.ledger.delete_header(le, batch).await?;
                Ok(if gone {
                    format!("removed duplicate journal {le}/{batch} (with its lines)")
                } else {
                    format!("duplicate journal {le}/{batch} was already gone")
                })
            }
            Deletion::Lines {
                batch,
                line_numbers,
                why,
            } => {
                if line_numbers.len() > 1
                    && self
                        .ledger
                        .delete_lines_atomic(le, batch, line_numbers)
                        .await?
                {
                    return Ok(format!(
                        "removed line(s) {} of journal {le}/{batch} in one changeset: {why}",
                        line_numbers.join(", ")
                    ));
                }
                // One line, or no atomic delete available (a crash in between leaves a half
                // voucher, which the next read removes first).
                for n in line_numbers {
                    self.ledger.delete_line(le, batch, n).await?;
                }
                Ok(format!(
                    "removed line(s) {} of journal {le}/{batch}: {why}",
                    line_numbers.join(", ")
                ))
            }
        }
    }

    /// Writes whole vouchers through `$batch` (one atomic changeset each). `None`: all sent
    /// (read again to confirm); `NoBatch`: the gateway cannot post atomically.
    async fn write_vouchers(
        &self,
        batch: &str,
        groups: &[Vec<NewLedgerLine>],
        spec: &JournalSpec,
        hooks: &mut dyn WriterHooks,
        created: &mut usize,
    ) -> Option<Result<(), WriteStop>> {
        let le = spec.legal_entity.as_str();
        let mut rest: &[Vec<NewLedgerLine>] = groups;
        while !rest.is_empty() {
            if let Some(left) = hooks.short() {
                return Some(Err(WriteStop::End(WriteEnd::Interrupted {
                    left,
                    batch: Some(batch.to_string()),
                })));
            }
            // Under a deadline one request's worth at a time, so the time left is checked
            // before each request; otherwise the gateway cuts the requests itself.
            let take = if !hooks.has_deadline() {
                rest.len()
            } else {
                let mut ops = 0;
                rest.iter()
                    .take_while(|g| {
                        ops += g.len();
                        ops <= spec.batch_operations
                    })
                    .count()
                    .max(1)
            };
            let (now, later) = rest.split_at(take);
            rest = later;
            let started = tokio::time::Instant::now();
            let result = self
                .ledger
                .create_vouchers(now, spec.batch_operations)
                .await;
            hooks.took(started);
            let outcomes = match result {
                Ok(None) => return Some(Err(WriteStop::NoBatch)),
                Ok(Some(o)) => o,
                Err(e) => {
                    hooks
                        .unknown(&format!("posting to {le}/{batch} failed: {e}"))
                        .await;
                    return None;
                }
            };
            if outcomes.len() != now.len() {
                hooks
                    .unknown(&format!(
                        "D365 answered the `$batch` for journal {le}/{batch} with {} outcome(s) for {} voucher(s)",
                        outcomes.len(),
                        now.len()
                    ))
                    .await;
                return None;
            }
            let mut unknown = None;
            for (group, outcome) in now.iter().zip(outcomes) {
                match outcome {
                    VoucherOutcome::Created(rows) if rows.len() == group.len() => {
                        let lines: Vec<(u32, LedgerLine)> = group
                            .iter()
                            .zip(rows)
                            .filter_map(|(g, r)| parse_line_ref(&g.text).map(|(_, n)| (n, r)))
                            .collect();
                        *created += lines.len();
                        hooks.written(batch, &lines).await;
                    }
                    VoucherOutcome::Created(_) => {
                        unknown.get_or_insert_with(|| {
                            "a created voucher came back with another number of lines".to_string()
                        });
                    }
                    VoucherOutcome::Failed(msg) => {
                        let lines = group
                            .iter()
                            .filter_map(|g| parse_line_ref(&g.text).map(|(_, n)| n))
                            .collect();
                        return Some(Err(WriteStop::End(WriteEnd::Refused {
                            lines,
                            message: msg,
                        })));
                    }
                    VoucherOutcome::OutOfTime(_) if unknown.is_none() => {
                        return Some(Err(WriteStop::End(WriteEnd::Interrupted {
                            left: hooks.short().unwrap_or_default(),
                            batch: Some(batch.to_string()),
                        })));
                    }
                    VoucherOutcome::NotProcessed(reason) if unknown.is_none() => {
                        return Some(Err(WriteStop::End(WriteEnd::Failed(format!(
                            "D365 did not process the vouchers of journal {le}/{batch} ({reason}); nothing of them was written"
                        )))));
                    }
                    VoucherOutcome::NotProcessed(_) | VoucherOutcome::OutOfTime(_) => {}
                    VoucherOutcome::Unknown(detail) => {
                        unknown.get_or_insert(detail);
                    }
                }
            }
            if hooks.crash_at(CrashPoint::LinesWritten) {
                return Some(Err(WriteStop::End(WriteEnd::Crashed(
                    CrashPoint::LinesWritten,
                ))));
            }
            if let Some(detail) = unknown {
                hooks
                    .unknown(&format!(
                        "batch outcome unknown in {le}/{batch} ({detail}); reconciling with D365"
                    ))
                    .await;
                return None;
            }
        }
        Some(Ok(()))
    }

    /// Writes line by line (no `$batch`): a voucher is whole only once its last line is in.
    async fn write_lines(
        &self,
        batch: &str,
        groups: &[Vec<NewLedgerLine>],
        spec: &JournalSpec,
        hooks: &mut dyn WriterHooks,
        created: &mut usize,
    ) -> Option<Result<(), WriteStop>> {
        let le = spec.legal_entity.as_str();
        for group in groups {
            for l in group {
                if let Some(left) = hooks.short() {
                    return Some(Err(WriteStop::End(WriteEnd::Interrupted {
                        left,
                        batch: Some(batch.to_string()),
                    })));
                }
                let n = parse_line_ref(&l.text).map_or(0, |(_, n)| n);
                let started = tokio::time::Instant::now();
                let result = self.ledger.create_line(l).await;
                hooks.took(started);
                match result {
                    Ok(row) => {
                        *created += 1;
                        hooks.written(batch, &[(n, row)]).await;
                    }
                    Err(LedgerError::OutOfTime(_)) => {
                        return Some(Err(WriteStop::End(WriteEnd::Interrupted {
                            left: hooks.short().unwrap_or_default(),
                            batch: Some(batch.to_string()),
                        })))
                    }
                    Err(LedgerError::OutcomeUnknown(m)) => {
                        hooks
                            .unknown(&format!(
                                "line {n} of {le}/{batch} had an unknown outcome ({m}); reconciling with D365"
                            ))
                            .await;
                        return None;
                    }
                    Err(LedgerError::Rejected(m)) => {
                        return Some(Err(WriteStop::End(WriteEnd::Refused {
                            lines: vec![n],
                            message: m.to_string(),
                        })))
                    }
                    Err(e) => {
                        return Some(Err(WriteStop::End(WriteEnd::Failed(format!(
                            "posting line {n} of journal {le}/{batch} failed: {e}"
                        )))))
                    }
                }
                if hooks.crash_at(CrashPoint::LinesWritten) {
                    return Some(Err(WriteStop::End(WriteEnd::Crashed(
                        CrashPoint::LinesWritten,
                    ))));
                }
            }
        }
        Some(Ok(()))
    }
}

/// What one `converge` call has done so far, across its rounds of reading and writing.
struct Rounds {
    header_created: bool,
    created: usize,
    cleaned: usize,
    /// The batch the hooks were last told about (`hooks.header`).
    announced: Option<String>,
    /// `$batch` is off (configured, or the gateway cannot post atomically).
    line_by_line: bool,
    /// `--supersede` removed a conflicting unposted journal once; never twice.
    superseded: bool,
}

enum WriteStop {
    End(WriteEnd),
    NoBatch,
}
