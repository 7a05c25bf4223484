//! Reconciliation report of one run: what Looker said, what the connector mapped, the rounding
//! residue and where it went, what was planned for D365, and what D365 holds now (read back),
//! per legal entity × currency × voucher. Every difference is flagged, naming the line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{
    record, ControlsError, KIND_DELETED_UNPOSTED, KIND_RECONCILIATION, KIND_REVERSAL,
    KIND_REVERSED, TRIGGER_REVERSE,
};
use crate::domain::config::{AmountRule, InstanceConfig, SignConvention, ValueSource};
use crate::domain::journal::LineKind;
use crate::domain::mapping::{description_prefix, header_of_run, line_ref, parse_line_ref};
use crate::domain::money::{self, parse_amount_text, round, CurrencyPrecision, Overflow};
use crate::domain::run::{LineRecord, RunStatus, SourceRowRecord};
use crate::domain::source::Cell;
use crate::ports::{LedgerGateway, LedgerLine};
use crate::store::Store;

/// What kind of difference was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// A journal the run created is not in D365 any more.
    MissingJournal,
    /// A planned line is not in D365.
    MissingLine,
    /// A line's debit/credit in D365 differs from what the connector sent.
    ChangedAmount,
    /// A line's account or currency in D365 differs from what the connector sent.
    ChangedLine,
    /// A line carrying this run's key that the run did not plan (or a duplicate).
    ExtraLine,
    /// A line in the run's journal without this run's lineage reference.
    ForeignLine,
    /// A D365 voucher whose debits and credits differ.
    UnbalancedVoucher,
    /// The Looker total and the booked total differ by more than rounding can explain.
    SourceDifference,
}

/// One flagged difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub kind: DifferenceKind,
    pub legal_entity: String,
    pub batch: Option<String>,
    /// The run's line number (lineage reference `{run_key}.L{line_no:04}`).
    pub line_no: Option<u32>,
    pub reference: Option<String>,
    /// D365 `LineNumber`.
    pub d365_line_number: Option<String>,
    pub message: String,
}

/// One voucher of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherRecon {
    /// The run's voucher number.
    pub voucher: u32,
    /// Voucher numbers D365 gave its lines.
    pub d365_vouchers: Vec<String>,
    pub source_total: Decimal,
    pub mapped_total: Decimal,
    pub rounding_residue: Decimal,
    /// Line(s) the residue was booked to.
    pub residue_lines: Vec<u32>,
    pub planned_debit: Decimal,
    pub planned_credit: Decimal,
    pub d365_debit: Decimal,
    pub d365_credit: Decimal,
    pub flagged: bool,
}

/// One legal entity and currency of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecon {
    pub legal_entity: String,
    pub currency: String,
    /// D365 journals: batch number and whether it is posted (`None`: not found).
    pub journals: Vec<(String, Option<bool>)>,
    /// Exact sum of the Looker amounts of the rows routed here.
    pub source_total: Decimal,
    /// Sum of the rounded detail amounts before residue.
    pub mapped_total: Decimal,
    pub rounding_residue: Decimal,
    pub residue_lines: Vec<u32>,
    /// `source_total − (mapped_total + rounding_residue)`: the sub-cent part rounding left out.
    pub unbooked: Decimal,
    pub planned_lines: usize,
    pub planned_debit: Decimal,
    pub planned_credit: Decimal,
    pub d365_lines: usize,
    pub d365_debit: Decimal,
    pub d365_credit: Decimal,
    /// Vouchers; only flagged ones are kept in the stored copy of a large report.
    pub vouchers: Vec<VoucherRecon>,
    /// How many vouchers the group has (also when `vouchers` was cut for storage).
    pub voucher_count: usize,
}

/// The reconciliation report of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub run_id: String,
    pub run_key: String,
    pub instance: String,
    pub period: String,
    pub run_status: String,
    pub checked_at: DateTime<Utc>,
    /// Version of the config whose amount rule read the audited rows (the run's own version
    /// unless the config changed since).
    pub config_version: String,
    pub source_total: Decimal,
    pub mapped_total: Decimal,
    pub rounding_residue: Decimal,
    pub planned_debit: Decimal,
    pub planned_credit: Decimal,
    pub d365_debit: Decimal,
    pub d365_credit: Decimal,
    pub groups: Vec<GroupRecon>,
    pub differences: Vec<Difference>,
    /// Context for the reader (reversed, deleted, nothing written by design, …).
    pub notes: Vec<String>,
}

impl Reconciliation {
    /// No difference flagged.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    /// The copy kept in the audit store: clean vouchers are dropped from large reports so the
    /// event stays small (DynamoDB items are limited to 400 KB).
    pub fn for_storage(&self) -> Reconciliation {
        const KEEP_ALL_UP_TO: usize = 200;
        let mut r = self.clone();
        let total: usize = r.groups.iter().map(|g| g.vouchers.len()).sum();
        if total > KEEP_ALL_UP_TO {
            for g in &mut r.groups {
                g.vouchers.retain(|v| v.flagged);
            }
            r.notes.push(format!(
                "stored copy keeps only flagged vouchers ({total} in total)"
            ));
        }
        r.differences.truncate(500);
        r
    }

    /// The "Reconciliation" section of `ml-connector show`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Reconciliation (read back from D365 at {}, config {})",
            self.checked_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.config_version
        );
        let _ = writeln!(
            s,
            "  {:<6} {:<4} {:<12} {:>16} {:>16} {:>12} {:>16} {:>16} {:>16} {:>16}",
            "Entity",
            "Cur",
            "Journal",
            "Looker",
            "Mapped",
            "Residue",
            "Planned Dr",
            "Planned Cr",
            "D365 Dr",
            "D365 Cr"
        );
        for g in &self.groups {
            let journals = g
                .journals
                .iter()
                .map(|(b, posted)| match posted {
                    Some(true) => format!("{b}(P)"),
                    Some(false) => b.clone(),
                    None => format!("{b}(gone)"),
                })
                .collect::<Vec<_>>()
                .join(",");
            let _ = writeln!(
                s,
                "  {:<6} {:<4} {:<12} {:>16} {:>16} {:>12} {:>16} {:>16} {:>16} {:>16}",
                g.legal_entity,
                g.currency,
                journals,
                g.source_total,
                g.mapped_total,
                g.rounding_residue,
                g.planned_debit,
                g.planned_credit,
                g.d365_debit,
                g.d365_credit
            );
            if !g.rounding_residue.is_zero() {
                let _ = writeln!(
                    s,
                    "         rounding residue {} booked on line(s) {}; {} below a cent left unbooked",
                    g.rounding_residue,
                    g.residue_lines
                        .iter()
                        .map(|n| format!("L{n:04}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    g.unbooked
                );
            }
            for v in g.vouchers.iter().filter(|v| v.flagged) {
                let _ = writeln!(
                    s,
                    "    ! voucher {} ({}): planned {} / {}, D365 {} / {}",
                    v.voucher,
                    v.d365_vouchers.join(","),
                    v.planned_debit,
                    v.planned_credit,
                    v.d365_debit,
                    v.d365_credit
                );
            }
        }
        let _ = writeln!(
            s,
            "  total: Looker {} → mapped {} + residue {} → planned {} / {} → D365 {} / {}",
            self.source_total,
            self.mapped_total,
            self.rounding_residue,
            self.planned_debit,
            self.planned_credit,
            self.d365_debit,
            self.d365_credit
        );
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        if self.differences.is_empty() {
            let _ = writeln!(
                s,
                "  OK: D365 holds exactly what the run planned; no difference"
            );
        } else {
            let _ = writeln!(s, "  DIFFERENCES ({}):", self.differences.len());
            for d in &self.differences {
                let _ = writeln!(s, "  ! {}", d.message);
            }
        }
        s
    }
}

/// The signed exact amount of an audited row under `cfg`'s amount rule (as mapping reads it:
/// `None` for an amount mapping refuses, `amount.max_abs` included). With `[[lines]]`, the sum
/// of its lines' amounts (`None` if any is refused).
pub fn row_amount(cfg: &InstanceConfig, cells: &BTreeMap<String, Cell>) -> Option<Decimal> {
    let mut total = Decimal::ZERO;
    for (_, a) in line_amounts(cfg, cells) {
        money::add_to(&mut total, a?).ok()?;
    }
    Some(total)
}

/// The signed exact amount of each line an audited row makes, in line order, with the line's
/// lineage column (`None` for one line per row); the amount is `None` where mapping refuses it.
pub fn line_amounts<'c>(
    cfg: &'c InstanceConfig,
    cells: &BTreeMap<String, Cell>,
) -> Vec<(Option<&'c str>, Option<Decimal>)> {
    cfg.line_rules()
        .unwrap_or_default()
        .into_iter()
        .map(|rule| (rule.lineage, rule_amount(cfg, &rule.amount, cells)))
        .collect()
}

fn rule_amount(
    cfg: &InstanceConfig,
    rule: &AmountRule<'_>,
    cells: &BTreeMap<String, Cell>,
) -> Option<Decimal> {
    let num = |col: &str| -> Option<Decimal> {
        let d = match cells.get(col)? {
            Cell::Number(d) => *d,
            Cell::Text(t) => parse_amount_text(t).ok()?,
            _ => return None,
        };
        (d.abs() <= cfg.amount.max_abs).then_some(d)
    };
    match *rule {
        AmountRule::Signed { column, sign } => {
            let v = num(column)?;
            Some(match sign {
                SignConvention::DebitPositive => v,
                SignConvention::CreditPositive => -v,
            })
        }
        AmountRule::DebitCredit { debit, credit } => num(debit)?.checked_sub(num(credit)?),
    }
}

/// A value source resolved on an audited row (constant, column, lookup/default).
fn resolve(src: &ValueSource, cells: &BTreeMap<String, Cell>) -> Option<String> {
    if let Some(c) = &src.constant {
        return Some(c.clone());
    }
    let raw = match cells.get(src.column.as_deref()?)? {
        Cell::Null => return None,
        c => c.display(),
    };
    match &src.lookup {
        None => Some(raw.trim().to_string()),
        Some(t) => t.get(&raw).or(src.default.as_ref()).cloned(),
    }
}

/// Debit and credit a line contributes, the offset side included.
fn sides(
    debit: Decimal,
    credit: Decimal,
    has_offset: bool,
) -> Result<(Decimal, Decimal), Overflow> {
    if has_offset {
        Ok((money::add(debit, credit)?, money::add(credit, debit)?))
    } else {
        Ok((debit, credit))
    }
}

#[derive(Default)]
struct VAcc {
    d365_vouchers: BTreeSet<String>,
    source: Decimal,
    mapped: Decimal,
    booked: Decimal,
    residue_lines: Vec<u32>,
    pd: Decimal,
    pc: Decimal,
    dd: Decimal,
    dc: Decimal,
    flagged: bool,
    balancing_lines: usize,
}

/// Reconciles run `run_id`: reads its journals back from D365 now, compares them with the
/// audited plan and source rows, records the report as an audit event of kind
/// [`KIND_RECONCILIATION`] and returns it. `config` supplies the amount rule and currency
/// precision (normally the version the run used; a different version is noted).
pub async fn reconcile(
    store: &dyn Store,
    ledger: &dyn LedgerGateway,
    config: &InstanceConfig,
    run_id: &str,
) -> Result<Reconciliation, ControlsError> {
    let r = compute(store, ledger, config, run_id).await?;
    let level = if r.is_clean() { "info" } else { "warn" };
    let json = serde_json::to_string(&r.for_storage()).unwrap_or_default();
    record(store, run_id, level, KIND_RECONCILIATION, json).await;
    if !r.is_clean() {
        tracing::warn!(
            run_id,
            instance = %r.instance,
            differences = r.differences.len(),
            "reconciliation found differences between the run and D365"
        );
    }
    Ok(r)
}

/// The last reconciliation stored with a run, if any.
pub async fn stored(
    store: &dyn Store,
    run_id: &str,
) -> Result<Option<Reconciliation>, ControlsError> {
    let events = store.events(run_id).await?;
    Ok(events
        .iter()
        .rev()
        .filter(|e| e.kind == KIND_RECONCILIATION)
        .find_map(|e| serde_json::from_str(&e.message).ok()))
}

async fn compute(
    store: &dyn Store,
    ledger: &dyn LedgerGateway,
    config: &InstanceConfig,
    run_id: &str,
) -> Result<Reconciliation, ControlsError> {
    let run = store
        .get_run(run_id)
        .await?
        .ok_or_else(|| ControlsError::RunNotFound(run_id.to_string()))?;
    if run.instance != config.instance {
        return Err(ControlsError::Refused(format!(
            "run {run_id} belongs to instance `{}`, not `{}`",
            run.instance, config.instance
        )));
    }
    let lines = store.lines(run_id).await?;
    let events = store.events(run_id).await?;
    // A reversal run has no rows of its own: its Looker amounts are the original's, negated.
    let reverses = (run.trigger == TRIGGER_REVERSE)
        .then(|| {
            events
                .iter()
                .filter(|e| e.kind == KIND_REVERSAL)
                .find_map(|e| e.message.strip_prefix("reversal of run "))
                .and_then(|m| m.split_whitespace().next())
                .map(str::to_string)
        })
        .flatten();
    let (rows, sign) = match &reverses {
        Some(orig) => (store.source_rows(orig).await?, Decimal::NEGATIVE_ONE),
        None => (store.source_rows(run_id).await?, Decimal::ONE),
    };
    let precision = CurrencyPrecision::with_overrides(config.currencies.clone());
    let key = run.keys.run_key.clone();
    let mut notes = Vec::new();
    let mut diffs: Vec<Difference> = Vec::new();
    let version = config.version();
    if version != run.config_version {
        notes.push(format!(
            "the run used config version {}; amounts were read with the current version {version}",
            run.config_version
        ));
    }
    for e in &events {
        if e.kind == KIND_REVERSED || e.kind == KIND_DELETED_UNPOSTED {
            notes.push(e.message.clone());
        }
    }
    let deleted = events.iter().any(|e| e.kind == KIND_DELETED_UNPOSTED);
    let nothing_expected = deleted
        || (run.journals.is_empty()
            && matches!(
                run.status,
                RunStatus::Rejected
                    | RunStatus::Conflict
                    | RunStatus::Busy
                    | RunStatus::AlreadyPosted
            ));
    if nothing_expected && !deleted {
        notes.push(format!(
            "run ended `{}`: nothing was written to D365 by design",
            run.status.as_str()
        ));
    }

    // Exact Looker amounts of the audited rows, per (row, lineage column) — the column is
    // `None` for one line per row (`sign` is ±1: the product cannot overflow). Their total as
    // mapping makes it: in row and line order, an amount that would overflow it is left out
    // (mapping rejected it), so a rejected run's total is reproduced, not a panic.
    let mut amounts: BTreeMap<(usize, Option<String>), Decimal> = BTreeMap::new();
    let mut all_rows = Decimal::ZERO;
    for r in &rows {
        for (column, a) in line_amounts(config, &r.cells) {
            let Some(a) = a.map(|a| sign * a) else {
                continue;
            };
            if money::add_to(&mut all_rows, a).is_ok() {
                amounts.insert((r.row_index, column.map(str::to_string)), a);
            }
        }
    }
    if let Some(orig) = &reverses {
        notes.push(format!(
            "reversal of run {orig}: Looker amounts are the original run's rows, negated"
        ));
    }
    let row_count_matches = reverses.is_some() || rows.len() as u64 == run.totals.source_rows;
    if row_count_matches && all_rows != run.totals.source_total {
        diffs.push(Difference {
            kind: DifferenceKind::SourceDifference,
            legal_entity: String::new(),
            batch: None,
            line_no: None,
            reference: None,
            d365_line_number: None,
            message: format!(
                "the audited source rows sum to {all_rows} under config {version}, but the run recorded a Looker total of {}; the amount rule changed since the run",
                run.totals.source_total
            ),
        });
    }

    // Plan per (entity, currency) and voucher.
    type GKey = (String, String);
    let mut groups: BTreeMap<GKey, BTreeMap<u32, VAcc>> = BTreeMap::new();
    let mut planned: BTreeMap<(String, u32), &LineRecord> = BTreeMap::new();
    let mut rows_in_lines: BTreeSet<(usize, Option<String>)> = BTreeSet::new();
    for rec in &lines {
        let l = &rec.line;
        planned.insert((rec.legal_entity.clone(), l.line_no), rec);
        let v = groups
            .entry((rec.legal_entity.clone(), l.currency.clone()))
            .or_default()
            .entry(l.voucher)
            .or_default();
        let (d, c) = sides(l.debit(), l.credit(), l.offset_account.is_some())?;
        money::add_to(&mut v.pd, d)?;
        money::add_to(&mut v.pc, c)?;
        match l.kind {
            LineKind::Balancing => v.balancing_lines += 1,
            LineKind::Rounding => {
                money::add_to(&mut v.booked, l.amount)?;
                v.residue_lines.push(l.line_no);
            }
            LineKind::Detail => {
                money::add_to(&mut v.booked, l.amount)?;
                let dp = precision.decimals(&l.currency).unwrap_or(2);
                let mut rounded = Decimal::ZERO;
                for r in &l.source_rows {
                    let key = (*r, l.source_column.clone());
                    let exact = amounts.get(&key).copied().unwrap_or_default();
                    rows_in_lines.insert(key);
                    money::add_to(&mut v.source, exact)?;
                    money::add_to(&mut rounded, round(exact, dp))?;
                }
                money::add_to(&mut v.mapped, rounded)?;
                if rounded != l.amount {
                    v.residue_lines.push(l.line_no);
                }
            }
        }
    }
    // Amounts that rounded to zero carry no line; route them to their entity/currency. (With
    // `[[lines]]` a mapped row may have such a line beside lines that were written.)
    let mut unallocated: BTreeMap<GKey, Decimal> = BTreeMap::new();
    let row_by_index: BTreeMap<usize, &SourceRowRecord> =
        rows.iter().map(|r| (r.row_index, r)).collect();
    for (key, a) in &amounts {
        if a.is_zero() || rows_in_lines.contains(key) {
            continue;
        }
        let Some(r) = row_by_index.get(&key.0) else {
            continue;
        };
        let routed = match r.status {
            crate::domain::run::RowStatus::Skipped => true,
            crate::domain::run::RowStatus::Mapped => key.1.is_some(),
            _ => false,
        };
        if !routed {
            continue;
        }
        let le = resolve(&config.journal.legal_entity, &r.cells)
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default();
        let cur = resolve(&config.journal.currency, &r.cells)
            .map(|s| s.to_ascii_uppercase())
            .unwrap_or_default();
        money::add_to(unallocated.entry((le, cur)).or_default(), *a)?;
    }

    // D365, read back now: the run's journals per entity.
    let mut journals: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (le, b) in &run.journals {
        journals.entry(le.clone()).or_default().push(b.clone());
    }
    if !nothing_expected {
        let entities: BTreeSet<String> = lines.iter().map(|l| l.legal_entity.clone()).collect();
        for le in entities {
            // Fewer headers recorded than the run planned parts (it stopped right after creating
            // one, e.g. part 2 of a split journal): ask D365 for the headers carrying this run's
            // key. Not when all are recorded: a later run of the same data after a reversal
            // carries the same key, and its headers are not this run's.
            let planned = lines
                .iter()
                .filter(|l| l.legal_entity == le)
                .map(|l| l.part.of as usize)
                .max()
                .unwrap_or(1);
            if journals.get(&le).map_or(0, Vec::len) >= planned {
                continue;
            }
            let reversed = super::reversed_batches(ledger, &le, &run.keys.period_key).await?;
            let prefix = description_prefix(&key);
            let found: Vec<String> = ledger
                .find_headers(&le, &prefix)
                .await?
                .into_iter()
                .filter(|h| header_of_run(&h.description, &key).is_some())
                .filter(|h| !reversed.contains(&h.batch_number))
                .map(|h| h.batch_number)
                .collect();
            let known = journals.entry(le).or_default();
            for b in found {
                if !known.contains(&b) {
                    known.push(b);
                }
            }
        }
    }
    let mut journal_state: BTreeMap<String, Vec<(String, Option<bool>)>> = BTreeMap::new();
    let mut seen: BTreeSet<(String, u32)> = BTreeSet::new();
    let mut d365_count: BTreeMap<GKey, usize> = BTreeMap::new();
    for (le, batches) in &journals {
        for batch in batches {
            let header = ledger.header(le, batch).await?;
            journal_state
                .entry(le.clone())
                .or_default()
                .push((batch.clone(), header.as_ref().map(|h| h.is_posted)));
            if header.is_none() {
                if !deleted {
                    diffs.push(Difference {
                        kind: DifferenceKind::MissingJournal,
                        legal_entity: le.clone(),
                        batch: Some(batch.clone()),
                        line_no: None,
                        reference: None,
                        d365_line_number: None,
                        message: format!(
                            "journal {le}/{batch} of run {run_id} is not in D365 (deleted?)"
                        ),
                    });
                }
                continue;
            }
            let back: Vec<LedgerLine> = ledger.lines(le, batch).await?;
            // D365 voucher balance, per voucher and currency.
            let mut bal: BTreeMap<(String, String), Decimal> = BTreeMap::new();
            for l in &back {
                if l.offset_display.as_deref().unwrap_or("").is_empty() {
                    let net = money::sub(l.debit, l.credit)?;
                    money::add_to(
                        bal.entry((l.voucher.clone(), l.currency.clone()))
                            .or_default(),
                        net,
                    )?;
                }
            }
            for ((voucher, cur), diff) in bal.iter().filter(|(_, d)| !d.is_zero()) {
                diffs.push(Difference {
                    kind: DifferenceKind::UnbalancedVoucher,
                    legal_entity: le.clone(),
                    batch: Some(batch.clone()),
                    line_no: None,
                    reference: None,
                    d365_line_number: None,
                    message: format!(
                        "voucher {voucher} of journal {le}/{batch} does not balance in D365: debits − credits = {diff} {cur}"
                    ),
                });
            }
            for l in &back {
                let parsed = parse_line_ref(&l.text);
                let diff = |kind, line_no: Option<u32>, message: String| Difference {
                    kind,
                    legal_entity: le.clone(),
                    batch: Some(batch.clone()),
                    line_no,
                    reference: line_no.map(|n| line_ref(&key, n)),
                    d365_line_number: Some(l.line_number.clone()),
                    message,
                };
                let n = match parsed {
                    Some((k, n)) if k == key => n,
                    _ => {
                        diffs.push(diff(
                            DifferenceKind::ForeignLine,
                            None,
                            format!(
                                "journal {le}/{batch} line {} (debit {}, credit {}, account {}) was not created by this run: \"{}\"",
                                l.line_number, l.debit, l.credit, l.account_display, l.text
                            ),
                        ));
                        continue;
                    }
                };
                let Some(rec) = planned.get(&(le.clone(), n)) else {
                    diffs.push(diff(
                        DifferenceKind::ExtraLine,
                        Some(n),
                        format!(
                            "journal {le}/{batch} line {} carries reference {} which the run did not plan (debit {}, credit {})",
                            l.line_number,
                            line_ref(&key, n),
                            l.debit,
                            l.credit
                        ),
                    ));
                    continue;
                };
                if !seen.insert((le.clone(), n)) {
                    diffs.push(diff(
                        DifferenceKind::ExtraLine,
                        Some(n),
                        format!(
                            "journal {le}/{batch} line {} duplicates {} (debit {}, credit {})",
                            l.line_number,
                            line_ref(&key, n),
                            l.debit,
                            l.credit
                        ),
                    ));
                }
                let gk = (le.clone(), rec.line.currency.clone());
                *d365_count.entry(gk.clone()).or_default() += 1;
                let v = groups
                    .entry(gk)
                    .or_default()
                    .entry(rec.line.voucher)
                    .or_default();
                v.d365_vouchers.insert(l.voucher.clone());
                let has_offset = !l.offset_display.as_deref().unwrap_or("").is_empty();
                let (d, c) = sides(l.debit, l.credit, has_offset)?;
                money::add_to(&mut v.dd, d)?;
                money::add_to(&mut v.dc, c)?;
                if l.debit != rec.line.debit() || l.credit != rec.line.credit() {
                    v.flagged = true;
                    diffs.push(diff(
                        DifferenceKind::ChangedAmount,
                        Some(n),
                        format!(
                            "line {} (journal {le}/{batch} line {}): D365 holds debit {} / credit {}, the run sent debit {} / credit {}",
                            line_ref(&key, n),
                            l.line_number,
                            l.debit,
                            l.credit,
                            rec.line.debit(),
                            rec.line.credit()
                        ),
                    ));
                }
                if l.account_display != rec.account_display
                    || !l.currency.eq_ignore_ascii_case(&rec.line.currency)
                    || l.offset_display.as_deref().unwrap_or("")
                        != rec.offset_display.as_deref().unwrap_or("")
                {
                    v.flagged = true;
                    diffs.push(diff(
                        DifferenceKind::ChangedLine,
                        Some(n),
                        format!(
                            "line {} (journal {le}/{batch} line {}): D365 holds account {} {}, the run sent {} {}",
                            line_ref(&key, n),
                            l.line_number,
                            l.account_display,
                            l.currency,
                            rec.account_display,
                            rec.line.currency
                        ),
                    ));
                }
            }
        }
    }
    if !nothing_expected {
        for ((le, n), rec) in &planned {
            if !seen.contains(&(le.clone(), *n)) {
                if let Some(v) = groups
                    .get_mut(&(le.clone(), rec.line.currency.clone()))
                    .and_then(|g| g.get_mut(&rec.line.voucher))
                {
                    v.flagged = true;
                }
                diffs.push(Difference {
                    kind: DifferenceKind::MissingLine,
                    legal_entity: le.clone(),
                    batch: rec.journal_batch.clone(),
                    line_no: Some(*n),
                    reference: Some(line_ref(&key, *n)),
                    d365_line_number: rec.d365_line_number.clone(),
                    message: format!(
                        "line {} ({} debit {} / credit {}) is not in D365{}",
                        line_ref(&key, *n),
                        rec.account_display,
                        rec.line.debit(),
                        rec.line.credit(),
                        rec.journal_batch
                            .as_deref()
                            .map(|b| format!(" journal {le}/{b}"))
                            .unwrap_or_default()
                    ),
                });
            }
        }
    }

    // Assemble, with the Looker-vs-booked check per group.
    let mut out_groups = Vec::new();
    let mut keys: BTreeSet<GKey> = groups.keys().cloned().collect();
    keys.extend(unallocated.keys().cloned());
    for gk in keys {
        let vouchers = groups.remove(&gk).unwrap_or_default();
        let (le, cur) = gk.clone();
        let extra_source = unallocated.get(&gk).copied().unwrap_or_default();
        let mut g = GroupRecon {
            legal_entity: le.clone(),
            currency: cur.clone(),
            journals: journal_state.get(&le).cloned().unwrap_or_default(),
            source_total: extra_source,
            mapped_total: Decimal::ZERO,
            rounding_residue: Decimal::ZERO,
            residue_lines: vec![],
            unbooked: Decimal::ZERO,
            planned_lines: lines
                .iter()
                .filter(|l| l.legal_entity == le && l.line.currency == cur)
                .count(),
            planned_debit: Decimal::ZERO,
            planned_credit: Decimal::ZERO,
            d365_lines: d365_count.get(&gk).copied().unwrap_or(0),
            d365_debit: Decimal::ZERO,
            d365_credit: Decimal::ZERO,
            vouchers: vec![],
            voucher_count: vouchers.len(),
        };
        let mut tolerance_units = 0usize;
        for (no, v) in vouchers {
            let residue = money::sub(v.booked, v.mapped)?;
            money::add_to(&mut g.source_total, v.source)?;
            money::add_to(&mut g.mapped_total, v.mapped)?;
            money::add_to(&mut g.rounding_residue, residue)?;
            if !residue.is_zero() {
                g.residue_lines.extend(v.residue_lines.iter().copied());
            }
            money::add_to(&mut g.planned_debit, v.pd)?;
            money::add_to(&mut g.planned_credit, v.pc)?;
            money::add_to(&mut g.d365_debit, v.dd)?;
            money::add_to(&mut g.d365_credit, v.dc)?;
            tolerance_units += v.balancing_lines.max(1);
            g.vouchers.push(VoucherRecon {
                voucher: no,
                d365_vouchers: v.d365_vouchers.into_iter().collect(),
                source_total: v.source,
                mapped_total: v.mapped,
                rounding_residue: residue,
                residue_lines: if residue.is_zero() {
                    vec![]
                } else {
                    v.residue_lines
                },
                planned_debit: v.pd,
                planned_credit: v.pc,
                d365_debit: v.dd,
                d365_credit: v.dc,
                flagged: v.flagged,
            });
        }
        let booked = money::add(g.mapped_total, g.rounding_residue)?;
        g.unbooked = money::sub(g.source_total, booked)?;
        let dp = precision.decimals(&cur).unwrap_or(2);
        let half_unit = Decimal::new(5, dp + 1);
        let tolerance = half_unit * Decimal::from(tolerance_units.max(1) as u64);
        if g.unbooked.abs() > tolerance {
            diffs.push(Difference {
                kind: DifferenceKind::SourceDifference,
                legal_entity: le.clone(),
                batch: None,
                line_no: None,
                reference: None,
                d365_line_number: None,
                message: format!(
                    "{le} {cur}: Looker total {} but the journal books {} (mapped {} + residue {}); {} is more than rounding explains",
                    g.source_total,
                    booked,
                    g.mapped_total,
                    g.rounding_residue,
                    g.unbooked
                ),
            });
        }
        out_groups.push(g);
    }
    let sum = |f: fn(&GroupRecon) -> Decimal| money::sum(out_groups.iter().map(f));
    Ok(Reconciliation {
        run_id: run.run_id.clone(),
        run_key: key,
        instance: run.instance.clone(),
        period: run.period.clone(),
        run_status: run.status.as_str().to_string(),
        checked_at: Utc::now(),
        config_version: version,
        source_total: sum(|g| g.source_total)?,
        mapped_total: sum(|g| g.mapped_total)?,
        rounding_residue: sum(|g| g.rounding_residue)?,
        planned_debit: sum(|g| g.planned_debit)?,
        planned_credit: sum(|g| g.planned_credit)?,
        d365_debit: sum(|g| g.d365_debit)?,
        d365_credit: sum(|g| g.d365_credit)?,
        groups: out_groups,
        differences: diffs,
        notes,
    })
}

/// Source rows of a run by index (shared with trace).
pub(crate) fn rows_by_index(rows: Vec<SourceRowRecord>) -> BTreeMap<usize, SourceRowRecord> {
    rows.into_iter().map(|r| (r.row_index, r)).collect()
}
