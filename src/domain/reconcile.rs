//! Reconciliation of one run, as a pure comparison: what Looker said (the audited source rows),
//! what the connector mapped and planned (the audited lines), and what D365 holds (read back),
//! per legal entity × currency × voucher. Every difference is flagged, naming the line.
//!
//! Loading the inputs (audit store, D365) is `crate::controls::reconcile`'s job; everything here
//! works on plain data.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::config::{AmountRule, InstanceConfig, SignConvention, ValueSource};
use super::journal::LineKind;
use super::ledger::LedgerLine;
use super::mapping::{line_ref, parse_line_ref};
use super::money::{self, parse_amount_text, round, CurrencyPrecision, Overflow};
use super::run::{
    AuditEvent, LineRecord, RunRecord, RunStatus, SourceRowRecord, KIND_DELETED_UNPOSTED,
    KIND_REVERSED, TRIGGER_REVERSE,
};
use super::source::Cell;

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

/// Everything a reconciliation compares, loaded beforehand.
#[derive(Debug, Clone)]
pub struct ReconInputs {
    pub run: RunRecord,
    /// The run's audited lines.
    pub lines: Vec<LineRecord>,
    /// The run's audit events.
    pub events: Vec<AuditEvent>,
    /// The source rows whose amounts the run books: its own, or for a reversal run (see
    /// [`reversal_of`]) the original run's.
    pub rows: Vec<SourceRowRecord>,
    /// The run's journals as D365 holds them now, by legal entity (ascending), each entity's
    /// in the order the run recorded them.
    pub journals: Vec<JournalBack>,
}

/// One journal of the run, read back from D365.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalBack {
    pub legal_entity: String,
    pub batch: String,
    /// Whether D365 has it posted; `None`: D365 does not hold it (any more).
    pub posted: Option<bool>,
    /// Its lines (empty when it is gone).
    pub lines: Vec<LedgerLine>,
}

/// The run a reversal run reverses (named by its `reversal` audit event); `None` for any other
/// run. A reversal run has no rows of its own: its Looker amounts are the original's, negated.
pub fn reversal_of(run: &RunRecord, events: &[AuditEvent]) -> Option<String> {
    if run.trigger != TRIGGER_REVERSE {
        return None;
    }
    events.iter().find_map(AuditEvent::reversal_of)
}

/// Whether D365 should hold nothing of the run: its unposted journals were deleted, or it
/// stopped before writing by design (rejected, conflict, busy, already posted).
pub fn nothing_expected(run: &RunRecord, events: &[AuditEvent]) -> bool {
    unposted_deleted(events)
        || (run.journals.is_empty()
            && matches!(
                run.status,
                RunStatus::Rejected
                    | RunStatus::Conflict
                    | RunStatus::Busy
                    | RunStatus::AlreadyPosted
            ))
}

fn unposted_deleted(events: &[AuditEvent]) -> bool {
    events.iter().any(|e| e.kind == KIND_DELETED_UNPOSTED)
}

/// Compares the loaded inputs. `config` supplies the amount rule and currency precision
/// (normally the version the run used; a different version is noted); `checked_at` is when D365
/// was read.
pub fn compare(
    config: &InstanceConfig,
    inputs: &ReconInputs,
    checked_at: DateTime<Utc>,
) -> Result<Reconciliation, Overflow> {
    let mut cx = Compare::new(config, inputs);
    cx.source_total();
    cx.plan()?;
    cx.unallocated()?;
    for journal in &inputs.journals {
        cx.read_back(journal)?;
    }
    cx.missing_lines();
    cx.assemble(checked_at)
}

type GKey = (String, String);

/// The comparison under way.
struct Compare<'a> {
    config: &'a InstanceConfig,
    inp: &'a ReconInputs,
    precision: CurrencyPrecision,
    key: String,
    version: String,
    /// ±1: a reversal run books the original's amounts negated.
    sign: Decimal,
    reverses: Option<String>,
    deleted: bool,
    nothing_expected: bool,
    notes: Vec<String>,
    diffs: Vec<Difference>,
    /// Exact Looker amounts per (row, lineage column).
    amounts: BTreeMap<(usize, Option<String>), Decimal>,
    groups: BTreeMap<GKey, BTreeMap<u32, VAcc>>,
    planned: BTreeMap<(String, u32), &'a LineRecord>,
    rows_in_lines: BTreeSet<(usize, Option<String>)>,
    unallocated: BTreeMap<GKey, Decimal>,
    journal_state: BTreeMap<String, Vec<(String, Option<bool>)>>,
    seen: BTreeSet<(String, u32)>,
    d365_count: BTreeMap<GKey, usize>,
}

impl<'a> Compare<'a> {
    fn new(config: &'a InstanceConfig, inp: &'a ReconInputs) -> Self {
        let reverses = reversal_of(&inp.run, &inp.events);
        Compare {
            config,
            inp,
            precision: CurrencyPrecision::with_overrides(config.currencies.clone()),
            key: inp.run.keys.run_key.clone(),
            version: config.version(),
            sign: if reverses.is_some() {
                Decimal::NEGATIVE_ONE
            } else {
                Decimal::ONE
            },
            reverses,
            deleted: unposted_deleted(&inp.events),
            nothing_expected: nothing_expected(&inp.run, &inp.events),
            notes: Vec::new(),
            diffs: Vec::new(),
            amounts: BTreeMap::new(),
            groups: BTreeMap::new(),
            planned: BTreeMap::new(),
            rows_in_lines: BTreeSet::new(),
            unallocated: BTreeMap::new(),
            journal_state: BTreeMap::new(),
            seen: BTreeSet::new(),
            d365_count: BTreeMap::new(),
        }
    }

    /// Notes for the reader, the exact Looker amounts of the audited rows, and their total
    /// against the one the run recorded.
    fn source_total(&mut self) {
        let inp = self.inp;
        let (run, events, rows) = (&inp.run, &inp.events, &inp.rows);
        let Compare {
            config,
            version,
            sign,
            reverses,
            deleted,
            nothing_expected,
            notes,
            diffs,
            amounts,
            ..
        } = self;
        let (config, sign, deleted, nothing_expected) =
            (*config, *sign, *deleted, *nothing_expected);
        if *version != run.config_version {
            notes.push(format!(
            "the run used config version {}; amounts were read with the current version {version}",
            run.config_version
        ));
        }
        for e in events {
            if e.kind == KIND_REVERSED || e.kind == KIND_DELETED_UNPOSTED {
                notes.push(e.message.clone());
            }
        }
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
        let mut all_rows = Decimal::ZERO;
        for r in rows {
            for (column, a) in line_amounts(config, &r.cells) {
                let Some(a) = a.map(|a| sign * a) else {
                    continue;
                };
                if money::add_to(&mut all_rows, a).is_ok() {
                    amounts.insert((r.row_index, column.map(str::to_string)), a);
                }
            }
        }
        if let Some(orig) = reverses {
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
    }

    /// The plan per (entity, currency) and voucher, from the audited lines.
    fn plan(&mut self) -> Result<(), Overflow> {
        let lines = &self.inp.lines;
        let Compare {
            precision,
            amounts,
            groups,
            planned,
            rows_in_lines,
            ..
        } = self;
        // Plan per (entity, currency) and voucher.
        for rec in lines {
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
        Ok(())
    }

    fn unallocated(&mut self) -> Result<(), Overflow> {
        let rows = &self.inp.rows;
        let Compare {
            config,
            amounts,
            rows_in_lines,
            unallocated,
            ..
        } = self;
        let config = *config;
        // Amounts that rounded to zero carry no line; route them to their entity/currency. (With
        // `[[lines]]` a mapped row may have such a line beside lines that were written.)
        let row_by_index: BTreeMap<usize, &SourceRowRecord> =
            rows.iter().map(|r| (r.row_index, r)).collect();
        for (key, a) in amounts.iter() {
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

        Ok(())
    }

    /// One journal as D365 holds it, line by line against the plan.
    fn read_back(&mut self, journal: &JournalBack) -> Result<(), Overflow> {
        let run_id = self.inp.run.run_id.as_str();
        let Compare {
            key,
            deleted,
            diffs,
            groups,
            planned,
            journal_state,
            seen,
            d365_count,
            ..
        } = self;
        let (key, deleted) = (key.as_str(), *deleted);
        let (le, batch) = (&journal.legal_entity, &journal.batch);
        journal_state
            .entry(le.clone())
            .or_default()
            .push((batch.clone(), journal.posted));
        if journal.posted.is_none() {
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
            return Ok(());
        }
        let back = &journal.lines;
        diffs.extend(unbalanced_vouchers(le, batch, back)?);
        for l in back {
            let parsed = parse_line_ref(&l.text);
            let diff = |kind, line_no: Option<u32>, message: String| Difference {
                kind,
                legal_entity: le.clone(),
                batch: Some(batch.clone()),
                line_no,
                reference: line_no.map(|n| line_ref(key, n)),
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
                    line_ref(key, n),
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
                        line_ref(key, n),
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
                    line_ref(key, n),
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
                    line_ref(key, n),
                    l.line_number,
                    l.account_display,
                    l.currency,
                    rec.account_display,
                    rec.line.currency
                ),
            ));
            }
        }
        Ok(())
    }

    /// Planned lines D365 does not hold.
    fn missing_lines(&mut self) {
        let Compare {
            key,
            nothing_expected,
            diffs,
            groups,
            planned,
            seen,
            ..
        } = self;
        let (key, nothing_expected) = (key.as_str(), *nothing_expected);
        if !nothing_expected {
            for ((le, n), rec) in planned.iter() {
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
                        reference: Some(line_ref(key, *n)),
                        d365_line_number: rec.d365_line_number.clone(),
                        message: format!(
                            "line {} ({} debit {} / credit {}) is not in D365{}",
                            line_ref(key, *n),
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
    }

    /// The report, with the Looker-vs-booked check per group.
    fn assemble(&mut self, checked_at: DateTime<Utc>) -> Result<Reconciliation, Overflow> {
        let inp = self.inp;
        let run = &inp.run;
        let Compare {
            precision,
            key,
            version,
            notes,
            diffs,
            groups,
            unallocated,
            journal_state,
            d365_count,
            ..
        } = self;
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
                planned_lines: inp
                    .lines
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
            run_key: key.clone(),
            instance: run.instance.clone(),
            period: run.period.clone(),
            run_status: run.status.as_str().to_string(),
            checked_at,
            config_version: version.clone(),
            source_total: sum(|g| g.source_total)?,
            mapped_total: sum(|g| g.mapped_total)?,
            rounding_residue: sum(|g| g.rounding_residue)?,
            planned_debit: sum(|g| g.planned_debit)?,
            planned_credit: sum(|g| g.planned_credit)?,
            d365_debit: sum(|g| g.d365_debit)?,
            d365_credit: sum(|g| g.d365_credit)?,
            groups: out_groups,
            differences: std::mem::take(diffs),
            notes: std::mem::take(notes),
        })
    }
}

/// Vouchers of one journal whose debits and credits differ in D365 (per voucher and currency;
/// lines with an offset account balance themselves).
fn unbalanced_vouchers(
    le: &str,
    batch: &str,
    back: &[LedgerLine],
) -> Result<Vec<Difference>, Overflow> {
    let mut bal: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for l in back {
        if l.offset_display.as_deref().unwrap_or("").is_empty() {
            let net = money::sub(l.debit, l.credit)?;
            money::add_to(
                bal.entry((l.voucher.clone(), l.currency.clone()))
                    .or_default(),
                net,
            )?;
        }
    }
    Ok(bal
        .iter()
        .filter(|(_, d)| !d.is_zero())
        .map(|((voucher, cur), diff)| Difference {
            kind: DifferenceKind::UnbalancedVoucher,
            legal_entity: le.to_string(),
            batch: Some(batch.to_string()),
            line_no: None,
            reference: None,
            d365_line_number: None,
            message: format!(
                "voucher {voucher} of journal {le}/{batch} does not balance in D365: debits − credits = {diff} {cur}"
            ),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::domain::journal::{JournalLine, JournalPart, LedgerAccount};
    use crate::domain::run::{LineStatus, RowStatus, RunKeys, RunTotals};
    use crate::domain::source::SourceRef;

    const EXAMPLE: &str = include_str!("../../infra/config/weekly-marketplace-fees.toml");
    const AMOUNT: &str = "marketplace_fees.total_amount";

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    fn config() -> InstanceConfig {
        InstanceConfig::from_toml(EXAMPLE).unwrap()
    }

    /// A completed run of one source row of 100.00: detail line 1 (debit 600100) balanced by
    /// line 2 (credit 200100), both in journal usmf/B1.
    fn inputs(cfg: &InstanceConfig) -> ReconInputs {
        let keys = RunKeys::derive(&cfg.instance, "2026-W47", "content");
        let run = RunRecord {
            run_id: "run-1".into(),
            instance: cfg.instance.clone(),
            keys: keys.clone(),
            source: SourceRef::Look {
                look_id: "42".into(),
            },
            period: "2026-W47".into(),
            run_date: date(),
            config_version: cfg.version(),
            trigger: "cli".into(),
            status: RunStatus::Completed,
            totals: RunTotals {
                source_total: dec("100.00"),
                mapped_total: dec("100.00"),
                source_rows: 1,
                journal_lines: 2,
                ..RunTotals::default()
            },
            journals: vec![("usmf".into(), "B1".into())],
            message: None,
            started_at: Utc::now(),
            finished_at: None,
        };
        let line =
            |n: u32, account: &str, amount: &str, kind: LineKind, rows: Vec<usize>| LineRecord {
                run_id: run.run_id.clone(),
                legal_entity: "usmf".into(),
                part: JournalPart::default(),
                line: JournalLine {
                    line_no: n,
                    voucher: 1,
                    trans_date: date(),
                    account: LedgerAccount::new(account),
                    offset_account: None,
                    currency: "USD".into(),
                    amount: dec(amount),
                    text: line_ref(&keys.run_key, n),
                    kind,
                    source_rows: rows,
                    source_column: None,
                },
                account_display: account.into(),
                offset_display: None,
                status: LineStatus::Created,
                journal_batch: Some("B1".into()),
                d365_line_number: Some(n.to_string()),
                d365_response: None,
            };
        let lines = vec![
            line(1, "600100", "100.00", LineKind::Detail, vec![0]),
            line(2, "200100", "-100.00", LineKind::Balancing, vec![]),
        ];
        let back = lines
            .iter()
            .map(|r| LedgerLine {
                batch_number: "B1".into(),
                line_number: r.line.line_no.to_string(),
                voucher: "V-1".into(),
                trans_date: date(),
                account_display: r.account_display.clone(),
                offset_display: None,
                debit: r.line.debit(),
                credit: r.line.credit(),
                currency: "USD".into(),
                text: r.line.text.clone(),
            })
            .collect();
        ReconInputs {
            rows: vec![SourceRowRecord {
                run_id: run.run_id.clone(),
                row_index: 0,
                row_hash: "h0".into(),
                cells: BTreeMap::from([(AMOUNT.to_string(), Cell::Number(dec("100.00")))]),
                status: RowStatus::Mapped,
                line_nos: vec![1],
                errors: vec![],
            }],
            run,
            lines,
            events: vec![],
            journals: vec![JournalBack {
                legal_entity: "usmf".into(),
                batch: "B1".into(),
                posted: Some(true),
                lines: back,
            }],
        }
    }

    fn kinds(r: &Reconciliation) -> Vec<DifferenceKind> {
        r.differences.iter().map(|d| d.kind).collect()
    }

    #[test]
    fn what_d365_holds_exactly_is_clean() {
        let cfg = config();
        let r = compare(&cfg, &inputs(&cfg), Utc::now()).unwrap();
        assert!(r.is_clean(), "{:?}", r.differences);
        assert_eq!(r.source_total, dec("100.00"));
        assert_eq!(
            (r.planned_debit, r.planned_credit),
            (dec("100"), dec("100"))
        );
        assert_eq!((r.d365_debit, r.d365_credit), (dec("100"), dec("100")));
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.groups[0].journals, vec![("B1".to_string(), Some(true))]);
        assert_eq!((r.groups[0].planned_lines, r.groups[0].d365_lines), (2, 2));
    }

    #[test]
    fn a_changed_amount_is_flagged_on_its_line_and_its_voucher() {
        let cfg = config();
        let mut inp = inputs(&cfg);
        inp.journals[0].lines[0].debit = dec("90.00");
        let r = compare(&cfg, &inp, Utc::now()).unwrap();
        assert_eq!(
            kinds(&r),
            vec![
                DifferenceKind::UnbalancedVoucher,
                DifferenceKind::ChangedAmount
            ]
        );
        let changed = &r.differences[1];
        assert_eq!(changed.line_no, Some(1));
        assert_eq!(changed.d365_line_number.as_deref(), Some("1"));
        assert!(
            changed.message.contains("debit 90.00"),
            "{}",
            changed.message
        );
        assert!(r.groups[0].vouchers[0].flagged);
        assert_eq!(r.d365_debit, dec("90.00"));
    }

    #[test]
    fn a_missing_journal_and_its_lines_are_named() {
        let cfg = config();
        let mut inp = inputs(&cfg);
        inp.journals[0].posted = None;
        inp.journals[0].lines.clear();
        let r = compare(&cfg, &inp, Utc::now()).unwrap();
        assert_eq!(
            kinds(&r),
            vec![
                DifferenceKind::MissingJournal,
                DifferenceKind::MissingLine,
                DifferenceKind::MissingLine
            ]
        );
        assert_eq!(r.groups[0].journals, vec![("B1".to_string(), None)]);
    }

    #[test]
    fn foreign_and_duplicate_lines_are_extra() {
        let cfg = config();
        let mut inp = inputs(&cfg);
        let mut dup = inp.journals[0].lines[1].clone();
        dup.line_number = "3".into();
        let mut foreign = dup.clone();
        foreign.line_number = "4".into();
        foreign.text = "typed in by hand".into();
        inp.journals[0].lines.extend([dup, foreign]);
        let r = compare(&cfg, &inp, Utc::now()).unwrap();
        let k = kinds(&r);
        assert!(k.contains(&DifferenceKind::ExtraLine), "{k:?}");
        assert!(k.contains(&DifferenceKind::ForeignLine), "{k:?}");
    }

    #[test]
    fn a_source_total_the_rows_do_not_give_is_a_source_difference() {
        let cfg = config();
        let mut inp = inputs(&cfg);
        inp.run.totals.source_total = dec("100.50");
        let r = compare(&cfg, &inp, Utc::now()).unwrap();
        assert_eq!(kinds(&r), vec![DifferenceKind::SourceDifference]);
    }

    #[test]
    fn a_reversal_names_its_original_and_a_rejected_run_expects_nothing() {
        let cfg = config();
        let mut inp = inputs(&cfg);
        assert_eq!(reversal_of(&inp.run, &inp.events), None);
        inp.run.trigger = TRIGGER_REVERSE.into();
        inp.events.push(AuditEvent {
            run_id: inp.run.run_id.clone(),
            at: Utc::now(),
            level: "info".into(),
            kind: crate::domain::run::KIND_REVERSAL,
            message: "reversal of run run-0 (run key k), journals usmf/B0".into(),
            payload: None,
        });
        assert_eq!(reversal_of(&inp.run, &inp.events).as_deref(), Some("run-0"));
        let mut rejected = inputs(&cfg).run;
        assert!(!nothing_expected(&rejected, &[]));
        rejected.status = RunStatus::Rejected;
        rejected.journals.clear();
        assert!(nothing_expected(&rejected, &[]));
    }
}
