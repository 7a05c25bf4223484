//! Equipment for `tests/faults.rs`: an isolated world per case (both simulators, a SQLite audit
//! store, a Lambda context over them), fault-injecting wrappers of the engine's ports, and the
//! checks every case ends with.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::NaiveDate;
use ml_connector::domain::reference::ReferenceData;
use ml_connector::domain::run::{LineStatus, RowStatus, RunStatus};
use ml_connector::engine::{CrashPoint, Progress};
use ml_connector::lambda::Settings;
use ml_connector::ports::{
    LedgerError, LedgerGateway, LedgerHeader, LedgerLine, NewLedgerLine, VoucherOutcome,
};
use ml_connector::sandbox::d365::{D365Sim, SimLine};
use ml_connector::store::Store;
use rust_decimal::Decimal;

// What faults.rs and deadline.rs take from the common world (each uses part of it).
#[allow(unused_imports)]
pub use crate::common::events::{
    event_date, EV_JSON, EV_REPLAY, EV_SCHEDULE, INSTANCE, SAMPLE_RUN_ID, SECRET,
};
#[allow(unused_imports)]
pub use crate::common::{sandbox_creds, Backend, World, WorldBuilder, EXAMPLE};

/// A fault case's world: the sample events' week and path secret, SQLite unless
/// [`WorldBuilder::store`] says otherwise.
pub fn world<'a>() -> WorldBuilder<'a> {
    World::sample_events()
        // The cases' invocations have 120 s (`inv` in faults.rs), not a deployed function's
        // 300-900 s: keep the deadline margin in proportion so a fault's 10 s fallback wait
        // still fits when the shared moto server is slow.
        .settings(Settings {
            deadline_margin: std::time::Duration::from_secs(2),
            ..Settings::default()
        })
}

impl World {
    /// Number of write requests (POST/DELETE) F&O received so far.
    pub fn fno_writes(&self) -> usize {
        self.d365
            .request_log()
            .iter()
            .filter(|r| r.service == ml_connector::sandbox::d365::SimService::FinOps)
            .filter(|r| r.method == "POST" || r.method == "DELETE")
            .count()
    }

    pub fn fno_statuses(&self) -> Vec<u16> {
        self.d365
            .request_log()
            .iter()
            .filter(|r| r.service == ml_connector::sandbox::d365::SimService::FinOps)
            .map(|r| r.status)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Fault-injecting ports

/// Crashes the engine once at `point` (as a killed process would) and remembers that it did.
pub struct CrashProgress {
    pub point: Option<CrashPoint>,
    pub fired: AtomicBool,
}

impl CrashProgress {
    pub fn new(point: Option<CrashPoint>) -> Self {
        CrashProgress {
            point,
            fired: AtomicBool::new(false),
        }
    }
}

impl Progress for CrashProgress {
    fn crash_at(&self, point: CrashPoint) -> bool {
        self.point == Some(point) && !self.fired.swap(true, Ordering::SeqCst)
    }
}

/// What a [`FaultLedger`] does besides passing calls through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerFault {
    None,
    /// The second journal-lines read of the run (the read-back after writing, or a
    /// reconciliation) fails as the D365 client reports a 5xx that outlasted its retries.
    FailSecondLinesRead,
    /// A "naive poster": every write whose outcome is unknown is sent again blindly (no
    /// reconciliation by natural key). Used to prove the checks catch duplicates.
    Naive,
}

pub struct FaultLedger<'a> {
    pub inner: &'a dyn LedgerGateway,
    pub fault: LedgerFault,
    line_reads: AtomicUsize,
    pub fired: AtomicBool,
}

impl<'a> FaultLedger<'a> {
    pub fn new(inner: &'a dyn LedgerGateway, fault: LedgerFault) -> Self {
        FaultLedger {
            inner,
            fault,
            line_reads: AtomicUsize::new(0),
            fired: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl LedgerGateway for FaultLedger<'_> {
    async fn create_vouchers(
        &self,
        vouchers: &[Vec<NewLedgerLine>],
        max_operations: usize,
    ) -> Result<Option<Vec<VoucherOutcome>>, LedgerError> {
        let first = self.inner.create_vouchers(vouchers, max_operations).await?;
        if self.fault != LedgerFault::Naive {
            return Ok(first);
        }
        // Naive: resend every voucher whose outcome is unknown, once, without looking.
        let Some(mut outcomes) = first else {
            return Ok(None);
        };
        let unknown: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, VoucherOutcome::Unknown(_)))
            .map(|(i, _)| i)
            .collect();
        if unknown.is_empty() {
            return Ok(Some(outcomes));
        }
        self.fired.store(true, Ordering::SeqCst);
        let again: Vec<Vec<NewLedgerLine>> = unknown.iter().map(|&i| vouchers[i].clone()).collect();
        if let Some(retried) = self.inner.create_vouchers(&again, max_operations).await? {
            for (&i, o) in unknown.iter().zip(retried) {
                outcomes[i] = o;
            }
        }
        Ok(Some(outcomes))
    }

    async fn reference(&self, le: &str) -> Result<ReferenceData, LedgerError> {
        self.inner.reference(le).await
    }

    async fn find_headers(&self, le: &str, prefix: &str) -> Result<Vec<LedgerHeader>, LedgerError> {
        self.inner.find_headers(le, prefix).await
    }

    async fn create_header(
        &self,
        le: &str,
        journal_name: &str,
        description: &str,
    ) -> Result<LedgerHeader, LedgerError> {
        match self
            .inner
            .create_header(le, journal_name, description)
            .await
        {
            Err(LedgerError::OutcomeUnknown(_)) if self.fault == LedgerFault::Naive => {
                self.fired.store(true, Ordering::SeqCst);
                self.inner
                    .create_header(le, journal_name, description)
                    .await
            }
            r => r,
        }
    }

    async fn lines(&self, le: &str, batch: &str) -> Result<Vec<LedgerLine>, LedgerError> {
        let n = self.line_reads.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fault == LedgerFault::FailSecondLinesRead && n == 2 {
            self.fired.store(true, Ordering::SeqCst);
            return Err(LedgerError::Other(format!(
                "D365 is unavailable (HTTP 503 on GET LedgerJournalLines of {le}/{batch}, still failing after the client's retries)"
            ).into()));
        }
        self.inner.lines(le, batch).await
    }

    async fn create_line(&self, line: &NewLedgerLine) -> Result<LedgerLine, LedgerError> {
        match self.inner.create_line(line).await {
            Err(LedgerError::OutcomeUnknown(_)) if self.fault == LedgerFault::Naive => {
                self.fired.store(true, Ordering::SeqCst);
                self.inner.create_line(line).await
            }
            r => r,
        }
    }

    async fn header(&self, le: &str, batch: &str) -> Result<Option<LedgerHeader>, LedgerError> {
        self.inner.header(le, batch).await
    }

    // A naive poster never cleans up after itself: it has none of the deletes the convergent
    // writer uses to remove duplicates.
    async fn delete_line(&self, le: &str, batch: &str, n: &str) -> Result<bool, LedgerError> {
        if self.fault == LedgerFault::Naive {
            return Err(LedgerError::Other(
                "the naive poster does not delete".into(),
            ));
        }
        self.inner.delete_line(le, batch, n).await
    }

    async fn delete_lines_atomic(
        &self,
        le: &str,
        batch: &str,
        numbers: &[String],
    ) -> Result<bool, LedgerError> {
        if self.fault == LedgerFault::Naive {
            return Err(LedgerError::Other(
                "the naive poster does not delete".into(),
            ));
        }
        self.inner.delete_lines_atomic(le, batch, numbers).await
    }

    async fn delete_header(&self, le: &str, batch: &str) -> Result<bool, LedgerError> {
        if self.fault == LedgerFault::Naive {
            return Err(LedgerError::Other(
                "the naive poster does not delete".into(),
            ));
        }
        self.inner.delete_header(le, batch).await
    }
}

// ---------------------------------------------------------------------------------------------
// What D365 holds, and the checks

/// A line as compared across worlds: everything but D365's own numbers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line {
    pub text: String,
    pub account: String,
    pub offset: String,
    pub debit: Decimal,
    pub credit: Decimal,
    pub date: NaiveDate,
    pub currency: String,
}

impl Line {
    fn of(l: &SimLine) -> Line {
        Line {
            text: l.text.clone(),
            account: l.account_display.clone(),
            offset: l.offset_display.clone(),
            debit: l.debit,
            credit: l.credit,
            date: l.trans_date,
            currency: l.currency.clone(),
        }
    }

    /// The lineage reference (`{run_key}.L0001`).
    pub fn lineage(&self) -> &str {
        self.text.split_whitespace().next().unwrap_or("")
    }
}

/// What a fault-free run of a scenario leaves in D365.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub headers: usize,
    pub lines: Vec<Line>,
    /// Vouchers as sorted lists of lineage references (a multiset: a voucher sent twice counts
    /// twice).
    pub vouchers: Vec<Vec<String>>,
    pub source_rows: usize,
}

pub fn snapshot(d365: &D365Sim) -> Expected {
    let mut lines: Vec<Line> = d365.lines().iter().map(Line::of).collect();
    lines.sort();
    Expected {
        headers: d365.headers().len(),
        lines,
        vouchers: vouchers(d365),
        source_rows: 0,
    }
}

fn vouchers(d365: &D365Sim) -> Vec<Vec<String>> {
    let mut by: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for l in d365.lines() {
        by.entry((
            l.legal_entity.clone(),
            l.batch_number.clone(),
            l.voucher.clone(),
        ))
        .or_default()
        .push(Line::of(&l).lineage().to_string());
    }
    let mut out: Vec<Vec<String>> = by
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    out.sort();
    out
}

/// Every check of a case; returns the violations (empty = the case holds).
pub async fn check(
    w: &World,
    expected: &Expected,
    final_run: &str,
    allowed: &[RunStatus],
) -> Vec<String> {
    let mut bad = check_d365(w, expected);
    bad.extend(check_audit(w, expected, final_run, allowed).await);
    bad
}

/// Checks 1-4: what D365 holds against the fault-free run.
fn check_d365(w: &World, expected: &Expected) -> Vec<String> {
    let mut bad = Vec::new();
    let headers = w.d365.headers();
    let sim_lines = w.d365.lines();

    // 1. Exactly the expected lines: nothing missing, nothing extra.
    let mut got: Vec<Line> = sim_lines.iter().map(Line::of).collect();
    got.sort();
    if got != expected.lines {
        let missing: Vec<_> = expected
            .lines
            .iter()
            .filter(|l| !got.contains(l))
            .map(|l| l.lineage().to_string())
            .collect();
        let mut extra = got.clone();
        for l in &expected.lines {
            if let Some(i) = extra.iter().position(|g| g == l) {
                extra.remove(i);
            }
        }
        let extra: Vec<_> = extra.iter().map(|l| l.lineage().to_string()).collect();
        bad.push(format!(
            "D365 lines differ from the fault-free run: {} lines vs {} expected; missing {missing:?}; extra {extra:?}",
            got.len(),
            expected.lines.len()
        ));
    }
    // 2. No duplicate lineage reference.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for l in &got {
        *seen.entry(l.lineage()).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    if !dups.is_empty() {
        bad.push(format!("duplicate lineage references in D365: {dups:?}"));
    }
    // 3. One journal, no duplicate header.
    if headers.len() != expected.headers {
        bad.push(format!(
            "{} journal header(s) in D365, expected {}: {:?}",
            headers.len(),
            expected.headers,
            headers
                .iter()
                .map(|h| format!("{} \"{}\"", h.batch_number, h.description))
                .collect::<Vec<_>>()
        ));
    }
    // 4. No partial voucher: every voucher balances and is exactly a voucher of the reference.
    let mut sums: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for l in &sim_lines {
        let mut net = l.debit - l.credit;
        if !l.offset_display.is_empty() {
            net = Decimal::ZERO; // an offset account balances its own line
        }
        *sums
            .entry((l.batch_number.clone(), l.voucher.clone()))
            .or_default() += net;
    }
    for ((batch, voucher), net) in &sums {
        if !net.is_zero() {
            bad.push(format!(
                "voucher {voucher} of journal {batch} does not balance (net {net})"
            ));
        }
    }
    let got_vouchers = vouchers(&w.d365);
    if got_vouchers != expected.vouchers {
        bad.push(format!(
            "vouchers differ from the fault-free run (partial or merged voucher): {} vs {} expected",
            got_vouchers.len(),
            expected.vouchers.len()
        ));
    }
    bad
}

/// Checks 5-6: the final run's audit trail tells the truth about what D365 holds.
async fn check_audit(
    w: &World,
    expected: &Expected,
    final_run: &str,
    allowed: &[RunStatus],
) -> Vec<String> {
    let mut bad = Vec::new();
    let headers = w.d365.headers();
    let sim_lines = w.d365.lines();
    // 5. The final run: status true, every source row accounted for, every line recorded where
    // D365 has it.
    let run = match w.store.get_run(final_run).await {
        Ok(Some(r)) => r,
        other => {
            bad.push(format!("final run {final_run} not in the store: {other:?}"));
            return bad;
        }
    };
    if !allowed.contains(&run.status) {
        bad.push(format!(
            "final run {final_run} is `{}` (allowed {:?}): {}",
            run.status.as_str(),
            allowed.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            run.message.clone().unwrap_or_default()
        ));
    }
    let d365_batches: BTreeSet<(String, String)> = headers
        .iter()
        .map(|h| (h.legal_entity.clone(), h.batch_number.clone()))
        .collect();
    let run_batches: BTreeSet<(String, String)> = run
        .journals
        .iter()
        .map(|(le, b)| (le.to_ascii_lowercase(), b.clone()))
        .collect();
    if run_batches != d365_batches {
        bad.push(format!(
            "run {final_run} records journals {run_batches:?}, D365 holds {d365_batches:?}"
        ));
    }
    if run.totals.created_lines as usize != expected.lines.len() {
        bad.push(format!(
            "run {final_run} says {} line(s) in D365, D365 holds {} of the expected",
            run.totals.created_lines,
            expected.lines.len()
        ));
    }
    let rows = w.store.source_rows(final_run).await.unwrap_or_default();
    let recs = w.store.lines(final_run).await.unwrap_or_default();
    if rows.len() != expected.source_rows {
        bad.push(format!(
            "{} source row(s) audited for run {final_run}, the extract had {}",
            rows.len(),
            expected.source_rows
        ));
    }
    let line_nos: BTreeSet<u32> = recs.iter().map(|r| r.line.line_no).collect();
    for r in &rows {
        let accounted = match r.status {
            RowStatus::Mapped => {
                !r.line_nos.is_empty() && r.line_nos.iter().all(|n| line_nos.contains(n))
            }
            RowStatus::Skipped => true,
            _ => false,
        };
        if !accounted {
            bad.push(format!(
                "source row {} of run {final_run} is not accounted for: {:?} lines {:?} {:?}",
                r.row_index, r.status, r.line_nos, r.errors
            ));
        }
    }
    if recs.len() != expected.lines.len() {
        bad.push(format!(
            "run {final_run} audits {} line(s), expected {}",
            recs.len(),
            expected.lines.len()
        ));
    }
    for rec in &recs {
        let lineage = format!("{}.L{:04}", run.keys.run_key, rec.line.line_no);
        let in_d365: Vec<&SimLine> = sim_lines
            .iter()
            .filter(|l| l.text.split_whitespace().next() == Some(lineage.as_str()))
            .collect();
        let ok = rec.status == LineStatus::Created
            && in_d365.len() == 1
            && rec.journal_batch.as_deref() == Some(in_d365[0].batch_number.as_str())
            && rec
                .d365_line_number
                .as_deref()
                .and_then(|n| n.parse::<Decimal>().ok())
                == Some(Decimal::from(in_d365[0].line_number));
        if !ok {
            bad.push(format!(
                "audit of line {lineage} says {:?} in {:?} as D365 line {:?}; D365 has {:?}",
                rec.status,
                rec.journal_batch,
                rec.d365_line_number,
                in_d365
                    .iter()
                    .map(|l| format!("{}#{}", l.batch_number, l.line_number))
                    .collect::<Vec<_>>()
            ));
        }
    }
    // 6. At most one run may say it wrote the journal.
    let runs = w.store.list_runs(None, 100).await.unwrap_or_default();
    let completed: Vec<_> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Completed)
        .map(|r| r.run_id.clone())
        .collect();
    if completed.len() > 1 {
        bad.push(format!(
            "{} runs claim to have posted the period: {completed:?}",
            completed.len()
        ));
    }
    bad
}
