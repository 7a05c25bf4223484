//! Mapping: Looker rows → journal lines grouped into balanced vouchers, with rounding residue
//! booked deterministically.
//!
//! Pure: the same extract, config, period and run key always give the same journals, line
//! numbers and texts. That determinism is what lets a retry find, by lineage reference, exactly
//! which lines an earlier attempt already created in D365.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use chrono::NaiveDate;
use rust_decimal::Decimal;

use super::config::{
    AmountRule, BalancingStyle, InstanceConfig, LineRule, Period, RoundingTarget, SignConvention,
    TransDate, ValueSource, VoucherBy, ZeroAmounts,
};
use super::journal::{Dimensions, Journal, JournalLine, JournalPart, LedgerAccount, LineKind};
use super::money::{self, parse_amount_text, round, AmountTextError, CurrencyPrecision, Overflow};
use super::run::RowStatus;
use super::source::{Cell, Columns, Extract, SourceRow};
use super::validation::Issue;

/// Inputs that are the same for every row of a run.
pub struct MappingContext<'a> {
    pub config: &'a InstanceConfig,
    pub period: &'a Period,
    pub run_date: NaiveDate,
    /// The run's natural key; every line text starts with `{run_key}.L{line_no:04}`.
    pub run_key: &'a str,
    pub precision: &'a CurrencyPrecision,
}

/// What happened to one source row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOutcome {
    pub index: usize,
    pub status: RowStatus,
    pub line_nos: Vec<u32>,
    pub errors: Vec<String>,
}

/// The result of mapping an extract.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// One journal per legal entity — or, above `journal.max_journal_lines`, one per part of
    /// it — in legal-entity then part order. Built from the rows that mapped, so a preview can
    /// show them even when other rows have issues.
    pub journals: Vec<Journal>,
    pub rows: Vec<RowOutcome>,
    pub issues: Vec<Issue>,
    /// Sum of the exact signed amounts of every row whose amount could be read (in range, and
    /// not overflowing the sum).
    pub source_total: Decimal,
    /// Sum of the rounded detail lines before residue was booked.
    pub mapped_total: Decimal,
    /// Sum of the residue booked (signed).
    pub rounding_residue: Decimal,
}

impl Mapped {
    /// Nothing mapped (a run that stopped before mapping, or a replay from the audit).
    pub fn empty() -> Self {
        Mapped {
            journals: vec![],
            rows: vec![],
            issues: vec![],
            source_total: Decimal::ZERO,
            mapped_total: Decimal::ZERO,
            rounding_residue: Decimal::ZERO,
        }
    }
}

/// The lineage reference of a line, written first in its D365 `Text`.
pub fn line_ref(run_key: &str, line_no: u32) -> String {
    format!("{run_key}.L{line_no:04}")
}

/// Parses a lineage reference back into (run key, line number).
pub fn parse_line_ref(text: &str) -> Option<(&str, u32)> {
    let token = text.split_whitespace().next()?;
    let (key, n) = token.rsplit_once(".L")?;
    if key.is_empty() || n.len() < 4 || !n.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((key, n.parse().ok()?))
}

/// Header description prefix that identifies a run (or, given a part key, one part) in D365.
/// Matching a header needs the whole key token ([`description_key`]): `MLC {run_key}` is also
/// a prefix of the descriptions of that run's parts.
pub fn description_prefix(run_key: &str) -> String {
    format!("MLC {run_key}")
}

/// Natural key of one journal header: the run key itself for a journal that was not split (so
/// descriptions and data from before splitting stay valid), `{run_key}/P{part}of{of}` for a
/// part. `of` is part of the key so `P1` never matches `P10`, and a header written under a
/// different split is recognized as such.
pub fn part_key(run_key: &str, part: JournalPart) -> String {
    if part.is_split() {
        format!("{run_key}/P{}of{}", part.part, part.of)
    } else {
        run_key.to_string()
    }
}

/// The natural key a header Description carries: the token after `MLC `.
pub fn description_key(description: &str) -> Option<&str> {
    description.strip_prefix("MLC ")?.split_whitespace().next()
}

/// Splits a header key into run key and part (a plain run key is part 1 of 1).
pub fn parse_part_key(key: &str) -> (&str, JournalPart) {
    let parsed = key.rsplit_once("/P").and_then(|(run, p)| {
        let (n, of) = p.split_once("of")?;
        let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
        if run.is_empty() || !digits(n) || !digits(of) {
            return None;
        }
        Some((
            run,
            JournalPart {
                part: n.parse().ok()?,
                of: of.parse().ok()?,
            },
        ))
    });
    parsed.unwrap_or((key, JournalPart::default()))
}

/// Whether a header Description belongs to run `run_key` (any of its parts); with the part of
/// that run it is.
pub fn header_of_run(description: &str, run_key: &str) -> Option<JournalPart> {
    let (run, part) = parse_part_key(description_key(description)?);
    (run == run_key).then_some(part)
}

/// The header Description of a journal: `MLC {key} #{fingerprint} ` + the configured template
/// with `{period}` filled in, cut to the field length; `key` is a [`part_key`], `fingerprint`
/// the plan's ([`crate::domain::converge::fingerprint`]): the header says which lines it was
/// created for, so a poster with another mapping sees a conflict before writing a line. The
/// key and fingerprint are never cut (a cut key would not be found again). A replay renders the
/// same text.
pub fn render_description(
    cfg: &InstanceConfig,
    key: &str,
    fingerprint: Option<&str>,
    period_label: &str,
) -> String {
    let head = match fingerprint {
        Some(f) => format!("{} #{f}", description_prefix(key)),
        None => description_prefix(key),
    };
    let room = cfg
        .journal
        .max_text_len
        .saturating_sub(head.chars().count());
    let tail = truncate_chars(
        &format!(
            " {}",
            cfg.journal.description.replace("{period}", period_label)
        ),
        room,
    );
    format!("{head}{tail}")
}

/// A line of a row after its values were resolved, before vouchers are built and lines
/// numbered. Compact on purpose (a 100,000-row extract has 100,000 of them alive at once): the
/// legal entity, currency and accounts are ids into the extract's [`Tables`], not copies.
#[derive(Debug)]
struct RowLine {
    index: usize,
    /// Legal entity (lower case), an id into [`Tables::strings`].
    entity: u32,
    /// Currency (upper case), an id into [`Tables::strings`].
    currency: u32,
    /// Line rule (`[[lines]]` position, 0 for the single-line form): its lineage column.
    rule: u32,
    decimals: u32,
    trans_date: NaiveDate,
    /// Id into [`Tables::accounts`].
    account: u32,
    /// Id into [`Tables::accounts`].
    balancing: u32,
    exact: Decimal,
    /// The rendered line text, with room reserved in front for its lineage reference (added
    /// in place when the line is numbered).
    text: String,
}

/// The strings and ledger accounts a large extract repeats (a handful of legal entities,
/// currencies and accounts over 100,000 rows), each kept once.
#[derive(Debug, Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, u32>,
    accounts: Vec<LedgerAccount>,
    account_ids: HashMap<(u32, Dimensions), u32>,
    /// Scratch for case folding without an allocation per row.
    fold: String,
}

/// Below this many entries a table is searched in order (no hashing per row).
const SCAN: usize = 16;

impl Tables {
    fn string(&mut self, s: &str) -> u32 {
        if self.strings.len() <= SCAN {
            if let Some(i) = self.strings.iter().position(|k| k == s) {
                return i as u32;
            }
        } else if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    /// `s` in ASCII lower (or upper) case, interned.
    fn folded(&mut self, s: &str, upper: bool) -> u32 {
        let mut fold = std::mem::take(&mut self.fold);
        fold.clear();
        fold.push_str(s);
        if upper {
            fold.make_ascii_uppercase();
        } else {
            fold.make_ascii_lowercase();
        }
        let id = self.string(&fold);
        self.fold = fold;
        id
    }

    fn account(&mut self, main: &str, dimensions: Dimensions) -> u32 {
        let main_id = self.string(main);
        if self.accounts.len() <= SCAN {
            // Interned dimension sets compare by pointer first.
            if let Some(i) = self
                .accounts
                .iter()
                .position(|a| a.dimensions == dimensions && a.main_account.as_str() == main)
            {
                return i as u32;
            }
        } else if let Some(&id) = self.account_ids.get(&(main_id, dimensions.clone())) {
            return id;
        }
        let id = self.accounts.len() as u32;
        self.accounts.push(LedgerAccount {
            main_account: main.to_string(),
            dimensions: dimensions.clone(),
        });
        self.account_ids.insert((main_id, dimensions), id);
        id
    }

    fn str(&self, id: u32) -> &str {
        &self.strings[id as usize]
    }

    fn acct(&self, id: u32) -> &LedgerAccount {
        &self.accounts[id as usize]
    }

    /// Each string's position in string order: ids that compare as their strings do.
    fn string_ranks(&self) -> Vec<u32> {
        ranks(&self.strings)
    }

    /// Each account's position in account order.
    fn account_ranks(&self) -> Vec<u32> {
        ranks(&self.accounts)
    }
}

fn ranks<T: Ord>(items: &[T]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| items[a].cmp(&items[b]));
    let mut rank = vec![0u32; items.len()];
    for (r, i) in order.into_iter().enumerate() {
        rank[i] = r as u32;
    }
    rank
}

/// An extract read and checked row by row, before vouchers are built: everything mapping needs
/// from the extract, so a caller that has no further use for the rows can drop them before the
/// journals are built (see [`resolve_extract`]).
#[derive(Debug)]
pub struct Resolved {
    /// Mapping stopped before reading rows (the result lacks columns, the line rules do not
    /// resolve): the outcome as it is.
    stopped: Option<Mapped>,
    rows: Vec<RowOutcome>,
    issues: Vec<Issue>,
    source_total: Decimal,
    lines: Vec<RowLine>,
    tables: Tables,
    /// The lineage column of each line rule, by rule position.
    lineage: Vec<Option<String>>,
}

/// Maps every row; never panics on data, records a row error instead.
pub fn map_extract(extract: &Extract, ctx: &MappingContext<'_>) -> Mapped {
    resolve_extract(extract, ctx).build(ctx)
}

/// The first half of [`map_extract`]: every row's values read and checked. The result no
/// longer borrows the extract.
pub fn resolve_extract(extract: &Extract, ctx: &MappingContext<'_>) -> Resolved {
    let cfg = ctx.config;
    let mut issues = Vec::new();
    let mut rows_out = Vec::with_capacity(extract.rows.len());
    let stopped = |rows, issues| Resolved {
        stopped: Some(Mapped {
            rows,
            issues,
            ..Mapped::empty()
        }),
        rows: vec![],
        issues: vec![],
        source_total: Decimal::ZERO,
        lines: vec![],
        tables: Tables::default(),
        lineage: vec![],
    };

    // Columns the mapping needs but the result doesn't have: one clear issue each, instead of
    // the same error on every row.
    let known: Vec<&str> = if extract.columns.is_empty() {
        extract
            .rows
            .first()
            .map(|r| r.column_names().collect())
            .unwrap_or_default()
    } else {
        extract.columns.iter().map(String::as_str).collect()
    };
    let mut missing = Vec::new();
    if !known.is_empty() {
        for c in cfg.referenced_columns() {
            if !known.contains(&c.as_str()) {
                issues.push(Issue::config(
                    c.clone(),
                    format!(
                        "column is not in the Looker result (columns: {})",
                        known.join(", ")
                    ),
                ));
                missing.push(c);
            }
        }
    }
    if !missing.is_empty() {
        for r in &extract.rows {
            rows_out.push(RowOutcome {
                index: r.index,
                status: RowStatus::Rejected,
                line_nos: vec![],
                errors: vec!["not mapped: the result lacks columns the mapping needs".into()],
            });
        }
        return stopped(rows_out, issues);
    }

    let mut source_total = Decimal::ZERO;
    let rules = match cfg.line_rules() {
        Ok(r) => r,
        Err(e) => {
            // A config that passed `check` always resolves; this is for one built in code.
            issues.push(Issue::config("lines", e.to_string()));
            for r in &extract.rows {
                rows_out.push(RowOutcome {
                    index: r.index,
                    status: RowStatus::Rejected,
                    line_nos: vec![],
                    errors: vec![format!("not mapped: {e}")],
                });
            }
            return stopped(rows_out, issues);
        }
    };
    let mut plan = RowPlan::new(extract, ctx, &rules);
    let mut resolved: Vec<RowLine> = Vec::with_capacity(extract.rows.len() * plan.lines.len());
    let mut amounts: Vec<Option<Decimal>> = Vec::with_capacity(rules.len());
    let mut errs: Vec<(String, String)> = Vec::new();
    for row in &extract.rows {
        errs.clear();
        amounts.clear();
        for line in &plan.lines {
            let mut amount = read_amount(row, &line.rule.amount, cfg.amount.max_abs, &mut errs);
            if let Some(a) = amount {
                match money::add(source_total, a) {
                    Ok(t) => source_total = t,
                    Err(e) => {
                        errs.push((
                            line.amount_field.clone(),
                            overflow_message(a, "the Looker total of the rows before it", e),
                        ));
                        amount = None;
                    }
                }
            }
            amounts.push(amount);
        }
        let before = resolved.len();
        resolve_row(row, &amounts, ctx, &mut plan, &mut errs, &mut resolved);
        if plan.lines.len() > 1 && errs.len() > 1 {
            // A dimension every line shares is resolved once per line: report each problem once.
            let mut seen = std::collections::HashSet::new();
            errs.retain(|e| seen.insert(e.clone()));
        }
        let status = if !errs.is_empty() {
            resolved.truncate(before);
            RowStatus::Rejected
        } else if resolved.len() == before {
            RowStatus::Skipped
        } else {
            RowStatus::Mapped
        };
        for (field, msg) in &errs {
            issues.push(Issue::row(row.index, field.clone(), msg.clone()));
        }
        rows_out.push(RowOutcome {
            index: row.index,
            status,
            line_nos: vec![],
            errors: errs.iter().map(|(f, m)| format!("{f}: {m}")).collect(),
        });
    }
    resolved.shrink_to_fit();
    Resolved {
        stopped: None,
        rows: rows_out,
        issues,
        source_total,
        lines: resolved,
        lineage: plan
            .lines
            .iter()
            .map(|l| l.rule.lineage.map(str::to_string))
            .collect(),
        tables: std::mem::take(&mut plan.tables),
    }
}

impl Resolved {
    /// The second half of [`map_extract`]: vouchers, balancing and rounding lines, numbering,
    /// parts, and which lines each row became.
    pub fn build(self, ctx: &MappingContext<'_>) -> Mapped {
        if let Some(m) = self.stopped {
            return m;
        }
        let cfg = ctx.config;
        let (mut issues, mut rows_out) = (self.issues, self.rows);
        let b = Build {
            ctx,
            tables: &self.tables,
            lineage: &self.lineage,
        };
        let built = build_journals(self.lines, &b, &mut issues);
        let (journals, mapped_total, residue) = (built.journals, built.mapped_total, built.residue);
        check_line_amounts(&journals, cfg, &mut issues);
        // Rows of vouchers whose sums overflowed: rejected, the row the overflow happened at named.
        let mut row_errors: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (o, members) in built.overflows {
            let field = o.field.clone().unwrap_or_else(|| amount_field(cfg));
            let message = overflow_message(o.amount, o.what, Overflow);
            row_errors
                .entry(o.row)
                .or_default()
                .push(format!("{field}: {message}"));
            issues.push(Issue::row(o.row, field.clone(), message));
            for r in members.into_iter().filter(|r| *r != o.row) {
                row_errors.entry(r).or_default().push(format!(
                    "{field}: not mapped: its voucher could not be totalled (see row {})",
                    o.row
                ));
            }
        }
        if !row_errors.is_empty() {
            for r in &mut rows_out {
                if let Some(errors) = row_errors.remove(&r.index) {
                    r.status = RowStatus::Rejected;
                    r.errors.extend(errors);
                }
            }
        }
        // Tell each row which lines it became. Rows normally sit at their own index: fill those
        // in place; a map only for any that do not.
        let mut by_row: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for j in &journals {
            for l in &j.lines {
                for r in &l.source_rows {
                    match rows_out.get_mut(*r) {
                        Some(o) if o.index == *r => o.line_nos.push(l.line_no),
                        _ => by_row.entry(*r).or_default().push(l.line_no),
                    }
                }
            }
        }
        for r in &mut rows_out {
            if let Some(nos) = by_row.remove(&r.index) {
                r.line_nos = nos;
            } else if r.line_nos.is_empty() && r.status == RowStatus::Mapped {
                // Rounded to zero: its exact amount lives on in the residue.
                r.status = RowStatus::Skipped;
            }
        }
        Mapped {
            journals,
            rows: rows_out,
            issues,
            source_total: self.source_total,
            mapped_total,
            rounding_residue: residue,
        }
    }
}

/// "amount `x` is out of range: …" for an amount whose absolute value exceeds `amount.max_abs`
/// (or any decimal: `max_abs` is itself a decimal, so the same words hold).
fn out_of_range(shown: &dyn std::fmt::Display, max_abs: Decimal) -> String {
    format!(
        "amount `{shown}` is out of range: its absolute value exceeds amount.max_abs = {max_abs}"
    )
}

/// A row error for an amount that cannot be added to a running total.
fn overflow_message(amount: Decimal, total: &str, e: Overflow) -> String {
    format!("amount `{amount}` cannot be added to {total}: {e}")
}

/// The row's signed amount under an amount rule, each amount cell within `amount.max_abs`;
/// `None` with the reason in `errs` otherwise.
fn read_amount(
    row: &SourceRow,
    rule: &AmountRule<'_>,
    max_abs: Decimal,
    errs: &mut Vec<(String, String)>,
) -> Option<Decimal> {
    let num = |col: &str, errs: &mut Vec<(String, String)>| -> Option<Decimal> {
        let (value, shown): (Decimal, &dyn std::fmt::Display) = match row.get(col) {
            None => {
                errs.push((col.to_string(), "amount column is missing".into()));
                return None;
            }
            Some(Cell::Null) => {
                errs.push((col.to_string(), "amount is null".into()));
                return None;
            }
            Some(Cell::Number(d)) => (*d, d),
            Some(Cell::Text(t)) => match parse_amount_text(t) {
                Ok(d) => (d, t),
                Err(AmountTextError::OutOfRange) => {
                    errs.push((col.to_string(), out_of_range(&t.trim(), max_abs)));
                    return None;
                }
                Err(AmountTextError::NotANumber) => {
                    errs.push((col.to_string(), format!("amount `{t}` is not a number")));
                    return None;
                }
            },
            Some(Cell::Bool(b)) => {
                errs.push((col.to_string(), format!("amount `{b}` is not a number")));
                return None;
            }
        };
        if value.abs() > max_abs {
            errs.push((col.to_string(), out_of_range(shown, max_abs)));
            return None;
        }
        Some(value)
    };
    match *rule {
        AmountRule::Signed { column, sign } => {
            let v = num(column, errs)?;
            Some(match sign {
                SignConvention::DebitPositive => v,
                SignConvention::CreditPositive => -v,
            })
        }
        AmountRule::DebitCredit { debit, credit } => {
            let d = num(debit, errs);
            let c = num(credit, errs);
            let (d, c) = (d?, c?);
            if d < Decimal::ZERO {
                errs.push((debit.to_string(), format!("debit `{d}` is negative")));
            }
            if c < Decimal::ZERO {
                errs.push((credit.to_string(), format!("credit `{c}` is negative")));
            }
            // Cannot overflow for the non-negative amounts the rule allows; a negative one is
            // already an error above.
            match money::sub(d, c) {
                Ok(a) => Some(a),
                Err(e) => {
                    errs.push((
                        debit.to_string(),
                        format!("debit `{d}` minus credit `{c}`: {e}"),
                    ));
                    None
                }
            }
        }
    }
}

/// A column the mapping reads, resolved once per extract to its position in the extract's
/// shared column list (rows from the parsers share one; others fall back to the name).
#[derive(Clone, Copy)]
struct Col<'a> {
    name: &'a str,
    pos: Option<usize>,
}

/// A value source with its column resolved.
struct ValuePlan<'a> {
    src: &'a ValueSource,
    col: Option<Col<'a>>,
}

/// One piece of the pre-parsed line-text template.
enum Piece<'a> {
    Literal(&'a str),
    /// `{period}`, `{period_start}`, `{period_end}`, `{run_date}`: the same for every row.
    Fixed(String),
    Column(Col<'a>),
}

/// What every row of one extract needs, worked out once: column positions, the line-text
/// template parsed, and interned dimension sets (a large extract repeats a handful, and each
/// line then holds a shared `Arc` instead of its own map).
struct RowPlan<'a> {
    shared: Option<std::sync::Arc<Columns>>,
    legal_entity: ValuePlan<'a>,
    currency: ValuePlan<'a>,
    /// The journal lines each row makes (one without `[[lines]]`).
    lines: Vec<LinePlan<'a>>,
    balancing_account: ValuePlan<'a>,
    balancing_dimensions: Vec<(&'a str, String, ValuePlan<'a>)>,
    trans_date: Option<Col<'a>>,
    interned: HashMap<String, Dimensions>,
    key_buf: String,
    /// Legal entities, currencies and accounts seen so far.
    tables: Tables,
    /// Scratch of `resolve_row`: each line's account and text.
    per_line: Vec<(Option<u32>, String)>,
    /// Scratch for rendering line texts.
    text_buf: String,
    /// The last currency id seen and its decimals.
    last_currency: Option<(u32, Option<u32>)>,
    /// Bytes a line text reserves for the lineage reference put in front of it when numbered.
    text_reserve: usize,
}

/// One journal line of a row, its rule resolved against the extract's columns.
struct LinePlan<'a> {
    rule: &'a LineRule<'a>,
    /// Config key of its account (`account`, `lines[1].account`).
    account_key: String,
    account: ValuePlan<'a>,
    dimensions: Vec<(&'a str, String, ValuePlan<'a>)>,
    text: Vec<Piece<'a>>,
    /// The field named by amount errors: its lineage column, or the single-line amount column.
    amount_field: String,
}

/// Which dimension list of the plan a value set is resolved from.
#[derive(Clone, Copy)]
enum DimList {
    Line(usize),
    Balancing,
}

impl<'a> RowPlan<'a> {
    fn new(extract: &Extract, ctx: &MappingContext<'a>, rules: &'a [LineRule<'a>]) -> Self {
        let cfg = ctx.config;
        let shared = extract
            .rows
            .first()
            .map(|r| std::sync::Arc::clone(r.columns()));
        let col = |name: &'a str| Col {
            name,
            pos: shared.as_ref().and_then(|c| c.position(name)),
        };
        let value = |src: &'a ValueSource| ValuePlan {
            src,
            col: src.column.as_deref().map(col),
        };
        let dims = |map: &'a BTreeMap<String, ValueSource>, prefix: &str| {
            map.iter()
                .map(|(dim, src)| (dim.as_str(), format!("{prefix}{dim}"), value(src)))
                .collect::<Vec<_>>()
        };
        let trans_date = match cfg.journal.trans_date.resolve() {
            Ok(TransDate::Column(c)) => Some(col(c)),
            _ => None,
        };
        let lines = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let overrides = cfg.lines.get(i).map(|l| &l.dimensions);
                LinePlan {
                    rule,
                    account_key: rule.field("account"),
                    account: value(rule.account),
                    dimensions: rule
                        .dimensions
                        .iter()
                        .map(|(dim, src)| {
                            let field = if overrides.is_some_and(|o| o.contains_key(*dim)) {
                                rule.field(&format!("dimensions.{dim}"))
                            } else {
                                format!("dimensions.{dim}")
                            };
                            (*dim, field, value(src))
                        })
                        .collect(),
                    text: parse_template(rule.text, ctx, &col),
                    amount_field: match rule.lineage {
                        Some(c) => c.to_string(),
                        None => amount_field(cfg),
                    },
                }
            })
            .collect();
        Self {
            legal_entity: value(&cfg.journal.legal_entity),
            currency: value(&cfg.journal.currency),
            lines,
            balancing_account: value(&cfg.balancing.account),
            balancing_dimensions: dims(&cfg.balancing.dimensions, "balancing.dimensions."),
            trans_date,
            interned: HashMap::new(),
            key_buf: String::new(),
            tables: Tables::default(),
            per_line: Vec::new(),
            text_buf: String::new(),
            last_currency: None,
            // `{run_key}.L{line_no:04} `, line numbers up to 9,999,999.
            text_reserve: ctx.run_key.len() + ".L ".len() + 7,
            shared,
        }
    }

    fn cell<'r>(&self, row: &'r SourceRow, col: Col<'_>) -> Option<&'r Cell> {
        match &self.shared {
            Some(shared) if std::sync::Arc::ptr_eq(shared, row.columns()) => row.get_at(col.pos?),
            _ => row.get(col.name),
        }
    }
}

/// Splits a template into literals, fixed values and columns, with the same rules as the
/// per-row rendering it replaces: an unknown `{name}` stays as written, an unclosed `{` is
/// literal text.
fn parse_template<'a>(
    template: &'a str,
    ctx: &MappingContext<'_>,
    col: &dyn Fn(&'a str) -> Col<'a>,
) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            break;
        };
        pieces.push(Piece::Literal(&rest[..open]));
        let name = &after[..close];
        pieces.push(match name {
            "period" => Piece::Fixed(ctx.period.label.clone()),
            "period_start" => Piece::Fixed(ctx.period.start.to_string()),
            "period_end" => Piece::Fixed(ctx.period.end.to_string()),
            "run_date" => Piece::Fixed(ctx.run_date.to_string()),
            _ => Piece::Column(col(name)),
        });
        rest = &after[close + 1..];
    }
    pieces.push(Piece::Literal(rest));
    pieces
}

/// The line text of a row, in a string sized to take its lineage reference later.
fn render_text(plan: &mut RowPlan<'_>, line: usize, row: &SourceRow) -> String {
    let mut buf = std::mem::take(&mut plan.text_buf);
    buf.clear();
    for piece in &plan.lines[line].text {
        match piece {
            Piece::Literal(s) => buf.push_str(s),
            Piece::Fixed(s) => buf.push_str(s),
            Piece::Column(c) => match plan.cell(row, *c) {
                Some(cell) => push_display(&mut buf, cell),
                None => {
                    buf.push('{');
                    buf.push_str(c.name);
                    buf.push('}');
                }
            },
        }
    }
    let mut out = String::with_capacity(plan.text_reserve + buf.len());
    out.push_str(&buf);
    plan.text_buf = buf;
    out
}

/// Appends [`Cell::display`] without its intermediate `String`.
fn push_display(out: &mut String, cell: &Cell) {
    match cell {
        Cell::Null => {}
        Cell::Number(d) => {
            // Writing to a String cannot fail.
            let _ = write!(out, "{d}");
        }
        Cell::Text(s) => out.push_str(s),
        Cell::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
    }
}

/// Resolves a value source for a row; the error names the field. Borrowed wherever the value
/// is already a string (constant, lookup entry, text cell).
fn resolve_value<'v>(
    plan: &RowPlan<'_>,
    value: &ValuePlan<'v>,
    row: &'v SourceRow,
    key: &str,
    errs: &mut Vec<(String, String)>,
) -> Option<Cow<'v, str>> {
    let src = value.src;
    if let Some(c) = &src.constant {
        return Some(Cow::Borrowed(c.as_str()));
    }
    let col = value.col?;
    let raw: Cow<'v, str> = match plan.cell(row, col) {
        None | Some(Cell::Null) => {
            errs.push((col.name.to_string(), format!("{key}: value is empty")));
            return None;
        }
        Some(Cell::Text(s)) => Cow::Borrowed(s.as_str()),
        Some(c) => Cow::Owned(c.display()),
    };
    match &src.lookup {
        None => {
            if raw.trim().is_empty() {
                errs.push((col.name.to_string(), format!("{key}: value is empty")));
                return None;
            }
            Some(match raw {
                Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
                Cow::Owned(s) => Cow::Owned(s.trim().to_string()),
            })
        }
        Some(table) => match table.get(raw.as_ref()).or(src.default.as_ref()) {
            Some(v) => Some(Cow::Borrowed(v.as_str())),
            None => {
                errs.push((
                    col.name.to_string(),
                    format!("{key}: no lookup entry for `{raw}` (add it to `{key}.lookup` or set a `default`)"),
                ));
                None
            }
        },
    }
}

fn parse_date(cell: Option<&Cell>) -> Result<NaiveDate, String> {
    let text = match cell {
        None | Some(Cell::Null) => return Err("date is empty".into()),
        Some(c) => c.display(),
    };
    let t = text.trim();
    let day = if t.len() > 10 && matches!(t.as_bytes()[10], b' ' | b'T') {
        &t[..10]
    } else {
        t
    };
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map_err(|_| format!("`{text}` is not a date (expected YYYY-MM-DD)"))
}

/// Cuts to `max` characters on a char boundary (the lineage reference comes first, so it stays).
pub fn truncate_chars(s: &str, max: usize) -> String {
    // One allocation: this runs for every line of a large journal.
    let end = s.char_indices().nth(max).map_or(s.len(), |(i, _)| i);
    s[..end].trim_end().to_string()
}

/// The dimension values of a row, interned: a hit costs no allocation.
fn resolve_dims(
    plan: &mut RowPlan<'_>,
    which: DimList,
    row: &SourceRow,
    errs: &mut Vec<(String, String)>,
) -> Dimensions {
    let list = match which {
        DimList::Balancing => &plan.balancing_dimensions,
        DimList::Line(i) => &plan.lines[i].dimensions,
    };
    if list.is_empty() {
        return Dimensions::new();
    }
    let mut key = std::mem::take(&mut plan.key_buf);
    key.clear();
    for (dim, field, v) in list {
        if let Some(value) = resolve_value(plan, v, row, field, errs) {
            // Length-prefixed, so no value can make two different sets share a key.
            let _ = write!(key, "{}:{dim}{}:{value}", dim.len(), value.len());
        }
    }
    let dims = match plan.interned.get(key.as_str()) {
        Some(d) => d.clone(),
        None => {
            // First time these values are seen: resolve them again, owned (issues were
            // recorded above).
            let mut again = Vec::new();
            let d: Dimensions = list
                .iter()
                .filter_map(|(dim, field, v)| {
                    resolve_value(plan, v, row, field, &mut again)
                        .map(|value| (dim.to_string(), value.into_owned()))
                })
                .collect();
            plan.interned.insert(key.clone(), d.clone());
            d
        }
    };
    plan.key_buf = key;
    dims
}

/// The lines of one row, appended to `out`, given the amounts read for each of its line rules
/// (`None` where the amount could not be read: `errs` says why). Zero amounts make no line (or
/// an error under `amount.zero = "reject"`). The caller drops what was appended when `errs`
/// is not empty.
fn resolve_row(
    row: &SourceRow,
    amounts: &[Option<Decimal>],
    ctx: &MappingContext<'_>,
    plan: &mut RowPlan<'_>,
    errs: &mut Vec<(String, String)>,
    out: &mut Vec<RowLine>,
) {
    let cfg = ctx.config;
    let entity = resolve_value(plan, &plan.legal_entity, row, "journal.legal_entity", errs)
        .map(|s| plan.tables.folded(&s, false));
    let currency = resolve_value(plan, &plan.currency, row, "journal.currency", errs)
        .map(|s| plan.tables.folded(&s, true));
    let decimals = currency.and_then(|id| {
        let c = plan.tables.str(id);
        let d = match plan.last_currency {
            Some((last, d)) if last == id => d,
            _ => ctx.precision.decimals(c),
        };
        plan.last_currency = Some((id, d));
        if d.is_none() {
            errs.push((
                "journal.currency".into(),
                format!("currency `{c}` has no known precision (declare it under [currencies])"),
            ));
        }
        d
    });
    let trans_date = match cfg.journal.trans_date.resolve() {
        Ok(TransDate::PeriodEnd) => Some(ctx.period.end),
        Ok(TransDate::RunDate) => Some(ctx.run_date),
        Ok(TransDate::Column(col)) => {
            match parse_date(plan.trans_date.and_then(|c| plan.cell(row, c))) {
                Ok(d) if d < ctx.period.start || d > ctx.period.end => {
                    errs.push((
                        col.to_string(),
                        format!(
                            "date {d} is outside the period {} ({} to {})",
                            ctx.period.label, ctx.period.start, ctx.period.end
                        ),
                    ));
                    None
                }
                Ok(d) => Some(d),
                Err(m) => {
                    errs.push((col.to_string(), m));
                    None
                }
            }
        }
        Err(_) => None,
    };
    // Per line: account, dimensions, text (in line order, so errors come out in that order).
    let mut per_line = std::mem::take(&mut plan.per_line);
    per_line.clear();
    for i in 0..plan.lines.len() {
        let line = &plan.lines[i];
        let main = resolve_value(plan, &line.account, row, &line.account_key, errs);
        let dims = resolve_dims(plan, DimList::Line(i), row, errs);
        let account = main.map(|m| plan.tables.account(&m, dims));
        let text = render_text(plan, i, row);
        per_line.push((account, text));
    }
    let bal_main = resolve_value(
        plan,
        &plan.balancing_account,
        row,
        "balancing.account",
        errs,
    );
    let bal_dims = resolve_dims(plan, DimList::Balancing, row, errs);
    let balancing = bal_main.map(|m| plan.tables.account(&m, bal_dims));

    for (i, (account, text)) in per_line.drain(..).enumerate() {
        let Some(amount) = amounts.get(i).copied().flatten() else {
            continue;
        };
        if amount.is_zero() {
            if cfg.amount.zero == ZeroAmounts::Reject {
                errs.push((plan.lines[i].amount_field.clone(), "amount is zero".into()));
            }
            continue;
        }
        let (
            Some(entity),
            Some(currency),
            Some(decimals),
            Some(trans_date),
            Some(account),
            Some(balancing),
        ) = (entity, currency, decimals, trans_date, account, balancing)
        else {
            continue;
        };
        out.push(RowLine {
            index: row.index,
            entity,
            currency,
            rule: i as u32,
            decimals,
            trans_date,
            account,
            balancing,
            exact: amount,
            text,
        });
    }
    plan.per_line = per_line;
}

fn amount_field(cfg: &InstanceConfig) -> String {
    cfg.amount
        .column
        .clone()
        .or_else(|| cfg.amount.debit_column.clone())
        .unwrap_or_else(|| "amount".into())
}

/// A voucher before numbering: its detail rows and generated lines.
struct DraftVoucher {
    /// Ids into [`Tables::strings`].
    legal_entity: u32,
    currency: u32,
    trans_date: NaiveDate,
    lines: Vec<JournalLine>,
}

/// A sum over row amounts that overflowed while building a voucher: the row whose amount was
/// being added (or, for sums over a voucher's totals, its first row).
#[derive(Debug)]
struct RowOverflow {
    row: usize,
    /// The amount column, when the overflow is one line's (`[[lines]]`).
    field: Option<String>,
    amount: Decimal,
    /// What it could not be added to, for the row error.
    what: &'static str,
}

/// What building vouchers reads besides the rows: the run's context and the extract's tables.
struct Build<'b> {
    ctx: &'b MappingContext<'b>,
    tables: &'b Tables,
    lineage: &'b [Option<String>],
}

impl Build<'_> {
    /// For `map_err`: the overflow happened adding `row`'s amount to `what`.
    fn overflow_at(
        &self,
        row: &RowLine,
        what: &'static str,
    ) -> impl FnOnce(Overflow) -> RowOverflow {
        let (r, amount) = (row.index, row.exact);
        let field = self.lineage[row.rule as usize].clone();
        move |_| RowOverflow {
            row: r,
            field,
            amount,
            what,
        }
    }

    /// The detail line of a row; its text moves into the line.
    fn detail_line(
        &self,
        r: &mut RowLine,
        rounded: Decimal,
        offset: Option<LedgerAccount>,
    ) -> JournalLine {
        JournalLine {
            line_no: 0,
            voucher: 0,
            trans_date: r.trans_date,
            account: self.tables.acct(r.account).clone(),
            offset_account: offset,
            currency: self.tables.str(r.currency).to_string(),
            amount: rounded,
            text: std::mem::take(&mut r.text),
            kind: LineKind::Detail,
            source_rows: vec![r.index],
            source_column: self.lineage[r.rule as usize].clone(),
        }
    }
}

/// Journals built from the resolved rows, with the run's mapped total and rounding residue.
struct Built {
    journals: Vec<Journal>,
    mapped_total: Decimal,
    residue: Decimal,
    /// Vouchers left out because a sum overflowed: where, and the rows of the voucher.
    overflows: Vec<(RowOverflow, Vec<usize>)>,
}

/// Numbers vouchers and lines across the whole run as the vouchers arrive (in legal-entity
/// order) and puts each legal entity's vouchers into parts of at most `max_lines` lines, the
/// greedy rule of [`partition_vouchers`] applied as they come: no journal is built whole and
/// then copied into its parts.
struct Numbering<'n> {
    b: &'n Build<'n>,
    journals: Vec<Journal>,
    entity: Option<u32>,
    parts: Vec<Vec<JournalLine>>,
    part_lines: usize,
    voucher_no: u32,
    line_no: u32,
    prefix: String,
}

impl<'n> Numbering<'n> {
    fn new(b: &'n Build<'n>) -> Self {
        Numbering {
            b,
            journals: Vec::new(),
            entity: None,
            parts: Vec::new(),
            part_lines: 0,
            voucher_no: 0,
            line_no: 0,
            prefix: String::new(),
        }
    }

    fn push(&mut self, v: DraftVoucher) {
        if self.entity != Some(v.legal_entity) {
            self.finish_entity();
            self.entity = Some(v.legal_entity);
        }
        self.voucher_no += 1;
        let n = v.lines.len();
        if n == 0 {
            return;
        }
        let max_lines = self.b.ctx.config.journal.max_journal_lines;
        if self.parts.is_empty() || (self.part_lines > 0 && self.part_lines + n > max_lines) {
            self.parts.push(Vec::new());
            self.part_lines = 0;
        }
        self.part_lines += n;
        let (run_key, max) = (self.b.ctx.run_key, self.b.ctx.config.journal.max_text_len);
        let Some(part) = self.parts.last_mut() else {
            return;
        };
        part.reserve(n);
        for mut l in v.lines {
            self.line_no += 1;
            l.line_no = self.line_no;
            l.voucher = self.voucher_no;
            number_text(&mut l.text, run_key, self.line_no, max, &mut self.prefix);
            part.push(l);
        }
    }

    /// Closes the current legal entity's journal: one header, or one per part.
    fn finish_entity(&mut self) {
        let Some(entity) = self.entity.take() else {
            return;
        };
        let ctx = self.b.ctx;
        let cfg = ctx.config;
        let mut parts = std::mem::take(&mut self.parts);
        self.part_lines = 0;
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let of = parts.len() as u32;
        let legal_entity = self.b.tables.str(entity);
        for (i, lines) in parts.into_iter().enumerate() {
            let part = JournalPart {
                part: i as u32 + 1,
                of,
            };
            let key = if of == 1 {
                // A journal within the limit stays one unsplit header.
                ctx.run_key.to_string()
            } else {
                part_key(ctx.run_key, part)
            };
            self.journals.push(Journal {
                legal_entity: legal_entity.to_string(),
                journal_name: cfg.journal.journal_name.clone(),
                description: render_description(cfg, &key, None, &ctx.period.label),
                part: if of == 1 {
                    JournalPart::default()
                } else {
                    part
                },
                lines,
            });
        }
    }

    fn finish(mut self) -> Vec<Journal> {
        self.finish_entity();
        self.journals
    }
}

fn build_journals(mut rows: Vec<RowLine>, b: &Build<'_>, issues: &mut Vec<Issue>) -> Built {
    let cfg = b.ctx.config;
    let mut mapped_total = Decimal::ZERO;
    let mut residue_total = Decimal::ZERO;
    let mut overflows = Vec::new();
    // Adds a voucher's sums to the run's; a voucher whose sums do not fit is left out.
    // `first` is the voucher's first row, named when its total does not fit the run's.
    let mut add_totals = |detail_sum: Decimal, residue: Decimal, first: usize| match (
        money::add(mapped_total, detail_sum),
        money::add(residue_total, residue),
    ) {
        (Ok(m), Ok(r)) => {
            mapped_total = m;
            residue_total = r;
            Ok(())
        }
        _ => Err(RowOverflow {
            row: first,
            field: None,
            amount: detail_sum,
            what: "the mapped total of the run (the amount is the total of this row's voucher)",
        }),
    };

    // Vouchers group rows by (legal entity, currency, date), and by row under `voucher_by =
    // "row"`; style `offset` groups by (legal entity, currency, date, balancing account) with
    // the rows in row order. Sorted by string rank, stably: rows keep their extract order
    // within a group, as in the map of groups this replaces.
    let offset = cfg.balancing.style == BalancingStyle::Offset;
    let per_row = offset || cfg.journal.voucher_by == VoucherBy::Row;
    let ranks = b.tables.string_ranks();
    let account_ranks = if offset {
        b.tables.account_ranks()
    } else {
        vec![]
    };
    let group_key = |r: &RowLine| {
        (
            ranks[r.entity as usize],
            ranks[r.currency as usize],
            r.trans_date,
            if offset {
                account_ranks[r.balancing as usize]
            } else {
                0
            },
            if per_row && !offset { r.index } else { 0 },
        )
    };
    rows.sort_by_key(|r| (group_key(r), if offset { r.index } else { 0 }));

    // Consumed from the back (the groups reversed), so the resolved rows shrink while the
    // journal lines grow: the two are never both alive in full.
    rows.reverse();
    let mut numbering = Numbering::new(b);
    let mut chunk: Vec<RowLine> = Vec::new();
    while let Some(last) = rows.last() {
        let key = group_key(last);
        let len = rows
            .iter()
            .rev()
            .position(|r| group_key(r) != key)
            .unwrap_or(rows.len());
        let group = &rows[rows.len() - len..];
        let (le, cur, date) = (last.entity, last.currency, last.trans_date);
        if offset {
            // Each row is its own self-balancing voucher; residue is computed per
            // (entity, currency, date, balancing account) and booked once per such group.
            let bal = last.balancing;
            take_back(&mut rows, len, &mut chunk);
            let members: Vec<usize> = chunk.iter().map(|r| r.index).collect();
            let built = offset_group((le, cur, date, bal), &mut chunk, b, issues).and_then(
                |(g, sum, residue)| {
                    add_totals(sum, residue, members[0])?;
                    Ok(g)
                },
            );
            match built {
                Ok(vouchers) => vouchers.into_iter().for_each(|v| numbering.push(v)),
                Err(o) => overflows.push((o, members)),
            }
            continue;
        }
        // Split each group into vouchers that leave room for their balancing and rounding
        // lines within `max_voucher_lines`.
        let mut balancing_accounts: Vec<u32> = group.iter().map(|r| r.balancing).collect();
        balancing_accounts.sort_unstable();
        balancing_accounts.dedup();
        let reserve =
            balancing_accounts.len() + usize::from(cfg.rounding.book_to == RoundingTarget::Account);
        let per_voucher = cfg.journal.max_voucher_lines.saturating_sub(reserve).max(1);
        let mut left = len;
        while left > 0 {
            let n = left.min(per_voucher);
            left -= n;
            take_back(&mut rows, n, &mut chunk);
            let first = chunk[0].index;
            let v = DraftVoucher {
                legal_entity: le,
                currency: cur,
                trans_date: date,
                lines: Vec::with_capacity(chunk.len() + reserve),
            };
            let built = lines_voucher(v, &mut chunk, b, issues).and_then(|(v, sum, residue)| {
                add_totals(sum, residue, first)?;
                Ok(v)
            });
            match built {
                Ok(v) if v.lines.is_empty() => {}
                Ok(v) => numbering.push(v),
                Err(o) => overflows.push((o, chunk.iter().map(|r| r.index).collect())),
            }
        }
    }
    Built {
        journals: numbering.finish(),
        mapped_total,
        residue: residue_total,
        overflows,
    }
}

/// Moves the last `n` rows of `rows` (stored back to front) into `into`, front to back, and
/// gives memory back once `rows` is less than half full.
fn take_back(rows: &mut Vec<RowLine>, n: usize, into: &mut Vec<RowLine>) {
    into.clear();
    into.extend((0..n).map_while(|_| rows.pop()));
    if rows.capacity() > 4096 && rows.len() < rows.capacity() / 2 {
        rows.shrink_to_fit();
    }
}

/// The draft voucher `v` of balancing style `lines` from its rows: a detail line per row, a
/// balancing line per balancing account for the rounded total, the residue booked. Returns the
/// voucher, the sum of its rounded detail lines and the residue; every sum is checked.
fn lines_voucher(
    mut v: DraftVoucher,
    rows: &mut [RowLine],
    b: &Build<'_>,
    issues: &mut Vec<Issue>,
) -> Result<(DraftVoucher, Decimal, Decimal), RowOverflow> {
    let ctx = b.ctx;
    let decimals = rows[0].decimals;
    // Exact total per balancing account, and its first row (named if the rounded totals do
    // not add up). A voucher has a handful: a list, put in account order below.
    let mut balancing: Vec<(u32, Decimal, usize)> = Vec::new();
    for r in rows.iter() {
        match balancing.iter_mut().find(|(a, _, _)| *a == r.balancing) {
            Some((_, total, _)) => money::add_to(total, r.exact)
                .map_err(b.overflow_at(r, "the voucher's balancing total"))?,
            None => balancing.push((r.balancing, r.exact, r.index)),
        }
    }
    balancing.sort_by(|x, y| b.tables.acct(x.0).cmp(b.tables.acct(y.0)));
    let mut balancing_total = Decimal::ZERO;
    for (_, total, first) in &balancing {
        balancing_total =
            money::add(balancing_total, round(*total, decimals)).map_err(|_| RowOverflow {
                row: *first,
                field: None,
                amount: *total,
                what: "the voucher's other balancing totals",
            })?;
    }
    let first = rows[0].index;
    let mut detail_sum = Decimal::ZERO;
    for r in rows.iter_mut() {
        let rounded = round(r.exact, decimals);
        if rounded.is_zero() {
            continue;
        }
        detail_sum =
            money::add(detail_sum, rounded).map_err(b.overflow_at(r, "the voucher's lines"))?;
        v.lines.push(b.detail_line(r, rounded, None));
    }
    let residue = money::sub(balancing_total, detail_sum).map_err(|_| RowOverflow {
        row: first,
        field: None,
        amount: balancing_total,
        what: "the voucher's rounding residue (the amount is the voucher's balancing total)",
    })?;
    book_residue(&mut v, residue, None, b, issues)?;
    for (acct, total, _) in balancing {
        // Negating a decimal cannot overflow.
        let amt = -round(total, decimals);
        if amt.is_zero() {
            continue;
        }
        v.lines.push(JournalLine {
            line_no: 0,
            voucher: 0,
            trans_date: v.trans_date,
            account: b.tables.acct(acct).clone(),
            offset_account: None,
            currency: b.tables.str(v.currency).to_string(),
            amount: amt,
            text: format!("Balancing {}", ctx.period.label),
            kind: LineKind::Balancing,
            source_rows: vec![],
            source_column: None,
        });
    }
    Ok((v, detail_sum, residue))
}

/// The single-line vouchers of balancing style `offset` for one (entity, currency, date,
/// balancing account), the group's residue booked once. Returns them, the sum of their rounded
/// detail lines and the residue; every sum is checked.
fn offset_group(
    (le, cur, date, bal): (u32, u32, NaiveDate, u32),
    rows: &mut [RowLine],
    b: &Build<'_>,
    issues: &mut Vec<Issue>,
) -> Result<(Vec<DraftVoucher>, Decimal, Decimal), RowOverflow> {
    let cfg = b.ctx.config;
    let decimals = rows[0].decimals;
    let mut exact = Decimal::ZERO;
    for r in rows.iter() {
        money::add_to(&mut exact, r.exact)
            .map_err(b.overflow_at(r, "the total of its balancing account"))?;
    }
    let first = rows[0].index;
    let bal = b.tables.acct(bal);
    let mut group: Vec<DraftVoucher> = Vec::new();
    let mut detail_sum = Decimal::ZERO;
    for r in rows.iter_mut() {
        let rounded = round(r.exact, decimals);
        if rounded.is_zero() {
            continue;
        }
        detail_sum = money::add(detail_sum, rounded)
            .map_err(b.overflow_at(r, "the lines of its balancing account"))?;
        group.push(DraftVoucher {
            legal_entity: le,
            currency: cur,
            trans_date: date,
            lines: vec![b.detail_line(r, rounded, Some(bal.clone()))],
        });
    }
    let residue = money::sub(round(exact, decimals), detail_sum).map_err(|_| RowOverflow {
        row: first,
        field: None,
        amount: exact,
        what: "the rounding residue of its balancing account (the amount is the account's total)",
    })?;
    if !residue.is_zero() {
        match cfg.rounding.book_to {
            RoundingTarget::LargestLine => {
                if let Some(v) = group.iter_mut().max_by(|a, b| {
                    a.lines[0]
                        .amount
                        .abs()
                        .cmp(&b.lines[0].amount.abs())
                        .then(b.lines[0].source_rows.cmp(&a.lines[0].source_rows))
                }) {
                    let line = &mut v.lines[0];
                    let row = line.source_rows.first().copied().unwrap_or(first);
                    money::add_to(&mut line.amount, residue).map_err(|_| RowOverflow {
                        row,
                        field: None,
                        amount: residue,
                        what: "the largest line of its balancing account (rounding residue)",
                    })?;
                }
            }
            RoundingTarget::Account => {
                let mut v = DraftVoucher {
                    legal_entity: le,
                    currency: cur,
                    trans_date: date,
                    lines: vec![],
                };
                book_residue(&mut v, residue, Some(bal.clone()), b, issues)?;
                group.push(v);
            }
        }
    }
    Ok((group, detail_sum, residue))
}

/// Every line the run would write is within `amount.max_abs`: detail lines (a row in range can
/// still round or take a residue past it) and balancing lines (a voucher's total). Otherwise an
/// issue naming the line, its row for a detail line, "out of range".
fn check_line_amounts(journals: &[Journal], cfg: &InstanceConfig, issues: &mut Vec<Issue>) {
    let max_abs = cfg.amount.max_abs;
    for j in journals {
        for l in j.lines.iter().filter(|l| l.amount.abs() > max_abs) {
            let (field, what) = match l.kind {
                LineKind::Detail => (
                    l.source_column.clone().unwrap_or_else(|| amount_field(cfg)),
                    "line amount",
                ),
                LineKind::Balancing => ("balancing".to_string(), "balancing line amount"),
                LineKind::Rounding => ("rounding".to_string(), "rounding line amount"),
            };
            let hint = match l.kind {
                LineKind::Detail => "",
                _ => " (a voucher's total: raise amount.max_abs, or make vouchers smaller with journal.max_voucher_lines)",
            };
            issues.push(Issue {
                row: l.source_rows.first().copied(),
                line: Some(l.line_no),
                legal_entity: Some(j.legal_entity.clone()),
                field,
                message: format!(
                    "{what} `{}` of voucher {} is out of range: its absolute value exceeds amount.max_abs = {max_abs}{hint}",
                    l.amount, l.voucher
                ),
            });
        }
    }
}

/// Groups consecutive vouchers, given as line counts in voucher order, into parts of at most
/// `max_lines` lines. A voucher is never split (each part balances on its own); one larger than
/// the limit gets a part of its own. Greedy in voucher order, so the same vouchers always give
/// the same parts and a retry finds the headers an earlier attempt created.
pub fn partition_vouchers(sizes: &[usize], max_lines: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut lines = 0;
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && lines + n > max_lines {
            parts.push(start..i);
            start = i;
            lines = 0;
        }
        lines += n;
    }
    if start < sizes.len() {
        parts.push(start..sizes.len());
    }
    parts
}

/// Puts `{line_ref} ` in front of `text` and cuts it to `max` characters, in place (the text
/// was allocated with room for it): runs for every line.
fn number_text(text: &mut String, run_key: &str, line_no: u32, max: usize, prefix: &mut String) {
    prefix.clear();
    // The same reference as `line_ref` (the mapping tests check every line starts with it).
    let _ = write!(prefix, "{run_key}.L{line_no:04} ");
    text.insert_str(0, prefix);
    if let Some((end, _)) = text.char_indices().nth(max) {
        text.truncate(end);
    }
    text.truncate(text.trim_end().len());
}

/// Books `residue` in voucher `v`: onto its largest detail line, or as a rounding line.
fn book_residue(
    v: &mut DraftVoucher,
    residue: Decimal,
    offset: Option<LedgerAccount>,
    b: &Build<'_>,
    issues: &mut Vec<Issue>,
) -> Result<(), RowOverflow> {
    if residue.is_zero() {
        return Ok(());
    }
    let (ctx, cfg) = (b.ctx, b.ctx.config);
    match cfg.rounding.book_to {
        RoundingTarget::LargestLine => {
            // Largest absolute amount; ties go to the earliest source row.
            let target = v
                .lines
                .iter_mut()
                .filter(|l| l.kind == LineKind::Detail)
                .max_by(|a, b| {
                    a.amount
                        .abs()
                        .cmp(&b.amount.abs())
                        .then(b.source_rows.cmp(&a.source_rows))
                });
            match target {
                Some(l) => {
                    let row = l.source_rows.first().copied().unwrap_or_default();
                    money::add_to(&mut l.amount, residue).map_err(|_| RowOverflow {
                        row,
                        field: None,
                        amount: residue,
                        what: "the voucher's largest line (rounding residue)",
                    })?
                }
                None => issues.push(Issue::config(
                    "rounding.book_to",
                    format!(
                        "a rounding residue of {residue} has no detail line to go to; book it to an account"
                    ),
                )),
            }
        }
        RoundingTarget::Account => {
            let Some(acct) = cfg.rounding.account.clone() else {
                return Ok(());
            };
            v.lines.push(JournalLine {
                line_no: 0,
                voucher: 0,
                trans_date: v.trans_date,
                account: LedgerAccount {
                    main_account: acct,
                    dimensions: cfg.rounding.dimensions.clone().into(),
                },
                offset_account: offset,
                currency: b.tables.str(v.currency).to_string(),
                amount: residue,
                text: format!("Rounding residue {}", ctx.period.label),
                kind: LineKind::Rounding,
                source_rows: vec![],
                source_column: None,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::config::PeriodKind;
    use crate::domain::source::SourceRef;

    const EXAMPLE: &str = include_str!("../../infra/config/weekly-marketplace-fees.toml");

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn row(i: usize, date: &str, channel: &str, cc: &str, fee: &str, amt: Cell) -> SourceRow {
        let mut c = BTreeMap::new();
        c.insert(
            "marketplace_fees.week_end_date".into(),
            Cell::Text(date.into()),
        );
        c.insert(
            "marketplace_fees.channel".into(),
            Cell::Text(channel.into()),
        );
        c.insert("marketplace_fees.cost_center".into(), Cell::Text(cc.into()));
        c.insert("marketplace_fees.fee_type".into(), Cell::Text(fee.into()));
        c.insert("marketplace_fees.total_amount".into(), amt);
        SourceRow::new(i, c)
    }

    fn extract(rows: Vec<SourceRow>) -> Extract {
        Extract {
            source: SourceRef::Look {
                look_id: "42".into(),
            },
            columns: vec![],
            rows,
        }
    }

    fn run(cfg: &InstanceConfig, ex: &Extract) -> Mapped {
        let period = PeriodKind::Week.period_for(NaiveDate::from_ymd_opt(2026, 11, 26).unwrap());
        let prec = CurrencyPrecision::default();
        let ctx = MappingContext {
            config: cfg,
            period: &period,
            run_date: NaiveDate::from_ymd_opt(2026, 11, 26).unwrap(),
            run_key: "abcdef0123-a1b2c3",
            precision: &prec,
        };
        map_extract(ex, &ctx)
    }

    fn voucher_sums(m: &Mapped) -> BTreeMap<u32, Decimal> {
        let mut s = BTreeMap::new();
        for j in &m.journals {
            for l in &j.lines {
                *s.entry(l.voucher).or_insert(Decimal::ZERO) += l.amount;
            }
        }
        s
    }

    #[test]
    fn maps_example_with_balancing_line_and_rounding_account() {
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        let ex = extract(vec![
            row(
                0,
                "2026-11-22",
                "Amazon",
                "022",
                "Marketplace fee",
                Cell::Number(d("100.005")),
            ),
            row(
                1,
                "2026-11-22",
                "eBay",
                "031",
                "Commission",
                Cell::Number(d("0.30000000000000004")),
            ),
            row(
                2,
                "2026-11-22",
                "Shopify",
                "022",
                "Commission",
                Cell::Number(d("200.004")),
            ),
        ]);
        let m = run(&cfg, &ex);
        assert!(m.issues.is_empty(), "{:?}", m.issues);
        assert_eq!(m.journals.len(), 1);
        let j = &m.journals[0];
        assert_eq!(j.legal_entity, "usmf");
        assert!(j
            .description
            .starts_with("MLC abcdef0123-a1b2c3 Marketplace fees 2026-W47"));
        // exact total 300.30900000000000004 -> 300.31; details 100.01 + 0.30 + 200.00 = 300.31
        let amounts: Vec<Decimal> = j.lines.iter().map(|l| l.amount).collect();
        assert_eq!(
            amounts,
            vec![d("100.01"), d("0.30"), d("200.00"), d("-300.31")]
        );
        assert_eq!(m.rounding_residue, Decimal::ZERO);
        assert_eq!(j.lines[0].account.display_value(&fmt()), "618100--022-AMZ");
        assert_eq!(j.lines[3].account.main_account, "200150");
        assert_eq!(j.lines[3].kind, LineKind::Balancing);
        assert!(j.lines[0]
            .text
            .starts_with("abcdef0123-a1b2c3.L0001 Marketplace fee Amazon 022"));
        assert!(voucher_sums(&m).values().all(|s| s.is_zero()));
        assert_eq!(m.source_total, d("300.30900000000000004"));
    }

    fn fmt() -> crate::domain::reference::DimensionFormat {
        crate::domain::reference::DimensionFormat {
            name: "x".into(),
            segments: ["MainAccount", "Department", "CostCenter", "Channel"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            delimiter: '-',
        }
    }

    #[test]
    fn residue_goes_to_rounding_account_deterministically() {
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        // Three thirds: each rounds to 33.33, total 100.00 -> residue 0.01.
        let ex = extract(
            (0..3)
                .map(|i| {
                    row(
                        i,
                        "2026-11-22",
                        "Amazon",
                        "022",
                        "Commission",
                        Cell::Number(d("33.333333333")),
                    )
                })
                .collect(),
        );
        // 33.333333333 * 3 = 99.999999999 -> 100.00; details 99.99; residue 0.01
        let m = run(&cfg, &ex);
        assert!(m.issues.is_empty(), "{:?}", m.issues);
        let lines = &m.journals[0].lines;
        let rounding: Vec<_> = lines
            .iter()
            .filter(|l| l.kind == LineKind::Rounding)
            .collect();
        assert_eq!(rounding.len(), 1);
        assert_eq!(rounding[0].amount, d("0.01"));
        assert_eq!(rounding[0].account.main_account, "618900");
        assert_eq!(m.rounding_residue, d("0.01"));
        assert!(voucher_sums(&m).values().all(|s| s.is_zero()));
        // Same input, same output.
        assert_eq!(run(&cfg, &ex).journals, m.journals);
    }

    #[test]
    fn residue_to_largest_line_ties_to_earliest_row() {
        let mut cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        cfg.rounding.book_to = RoundingTarget::LargestLine;
        let ex = extract(
            (0..3)
                .map(|i| {
                    row(
                        i,
                        "2026-11-22",
                        "Amazon",
                        "022",
                        "Commission",
                        Cell::Number(d("33.333333333")),
                    )
                })
                .collect(),
        );
        let m = run(&cfg, &ex);
        let lines = &m.journals[0].lines;
        assert_eq!(lines[0].amount, d("33.34"));
        assert_eq!(lines[1].amount, d("33.33"));
        assert_eq!(lines[3].amount, d("-100.00"));
        assert!(voucher_sums(&m).values().all(|s| s.is_zero()));
    }

    #[test]
    fn bad_rows_are_named() {
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        let ex = extract(vec![
            row(0, "2026-11-22", "Amazon", "022", "Commission", Cell::Null),
            row(
                1,
                "2026-11-22",
                "Walmart",
                "022",
                "Commission",
                Cell::Number(d("1")),
            ),
            row(
                2,
                "2026-11-22",
                "Amazon",
                "022",
                "Commission",
                Cell::Text("12,50".into()),
            ),
            row(
                3,
                "2026-11-29",
                "Amazon",
                "022",
                "Commission",
                Cell::Number(d("1")),
            ),
            row(
                4,
                "2026-11-22",
                "Amazon",
                "022",
                "Refund",
                Cell::Number(d("1")),
            ),
            row(
                5,
                "2026-11-22",
                "Amazon",
                "022",
                "Commission",
                Cell::Number(d("5")),
            ),
        ]);
        let m = run(&cfg, &ex);
        let text: Vec<String> = m.issues.iter().map(|i| i.to_string()).collect();
        assert!(
            text[0].contains("row 0") && text[0].contains("amount is null"),
            "{text:?}"
        );
        assert!(
            text[1].contains("row 1") && text[1].contains("`Walmart`"),
            "{text:?}"
        );
        assert!(
            text[2].contains("row 2") && text[2].contains("`12,50` is not a number"),
            "{text:?}"
        );
        assert!(
            text[3].contains("row 3") && text[3].contains("outside the period"),
            "{text:?}"
        );
        assert!(
            text[4].contains("row 4") && text[4].contains("`Refund`"),
            "{text:?}"
        );
        assert_eq!(m.issues.len(), 5);
        assert_eq!(m.rows[5].status, RowStatus::Mapped);
        assert_eq!(m.rows[0].status, RowStatus::Rejected);
    }

    /// The issues of `row`, as displayed.
    fn issues_of(m: &Mapped, row: usize) -> Vec<String> {
        m.issues
            .iter()
            .filter(|i| i.row == Some(row))
            .map(|i| i.to_string())
            .collect()
    }

    #[test]
    fn huge_amounts_are_out_of_range_not_a_crash() {
        // Issue 10: two rows of 5e28 panicked ("Addition overflowed"), 9e27 was posted.
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        let amt = |i: usize, cc: &str, cell: Cell| {
            let channel = ["Amazon", "eBay", "Shopify"][i % 3];
            row(i, "2026-11-22", channel, cc, "Commission", cell)
        };
        let ex = extract(vec![
            amt(0, "022", Cell::from_json_number_literal("5e28")),
            amt(1, "022", Cell::from_json_number_literal("5e28")),
            amt(2, "022", Cell::from_json_number_literal("9e27")),
            // Too large for a decimal at all: the parser keeps the literal as text.
            amt(3, "031", Cell::from_json_number_literal("1e400")),
            // A CSV cell, negative.
            amt(
                4,
                "031",
                Cell::Text("-100000000000000000000000000000".into()),
            ),
            // Exactly at the default limit of 10^12: fine.
            amt(5, "031", Cell::Number(d("1000000000000.00"))),
            amt(6, "044", Cell::Number(d("-1000000000000.01"))),
        ]);
        let m = run(&cfg, &ex);
        for r in [0, 1, 2, 3, 4, 6] {
            let text = issues_of(&m, r);
            assert_eq!(text.len(), 1, "row {r}: {text:?}");
            let t = &text[0];
            assert!(
                t.starts_with(&format!(
                    "row {r}, `marketplace_fees.total_amount`: amount `"
                )),
                "{t}"
            );
            assert!(
                t.contains(
                    "is out of range: its absolute value exceeds amount.max_abs = 1000000000000"
                ),
                "{t}"
            );
            assert!(!t.contains("not a number"), "{t}");
            assert_eq!(m.rows[r].status, RowStatus::Rejected, "row {r}");
        }
        assert!(issues_of(&m, 2)[0].contains("`9000000000000000000000000000`"));
        assert!(issues_of(&m, 3)[0].contains("`1e400`"));
        assert_eq!(m.issues.len(), 6, "{:?}", m.issues);
        assert_eq!(m.rows[5].status, RowStatus::Mapped);
        // Only the row within range counts and becomes lines.
        assert_eq!(m.source_total, d("1000000000000"));
        let amounts: Vec<Decimal> = m.journals[0].lines.iter().map(|l| l.amount).collect();
        assert_eq!(amounts, vec![d("1000000000000.00"), d("-1000000000000.00")]);
    }

    #[test]
    fn amount_overflow_is_a_row_error_naming_row_and_field() {
        // With the limit raised to the largest decimal, amounts in range can still overflow a
        // sum: each such sum is checked and the row it happened at is named.
        let mut cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        cfg.amount.max_abs = Decimal::MAX;
        let big = || Cell::from_json_number_literal("5e28");
        let neg = || Cell::from_json_number_literal("-5e28");
        // The Looker total of the rows: 5e28 + 5e28.
        let ex = extract(vec![
            row(0, "2026-11-22", "Amazon", "022", "Commission", big()),
            row(1, "2026-11-22", "eBay", "022", "Commission", big()),
        ]);
        let m = run(&cfg, &ex);
        let text = issues_of(&m, 1);
        assert_eq!(m.issues.len(), 1, "{:?}", m.issues);
        assert!(
            text[0].starts_with("row 1, `marketplace_fees.total_amount`: amount `50000000000000000000000000000` cannot be added to the Looker total of the rows before it: amount overflow: a total is out of range"),
            "{text:?}"
        );
        assert_eq!(m.rows[1].status, RowStatus::Rejected);
        assert_eq!(m.rows[0].status, RowStatus::Mapped);
        assert_eq!(m.source_total, d("50000000000000000000000000000"));

        // A voucher's total: the Looker total never overflows (5e28, 0, 5e28), but the rows of
        // the 20th (rows 0 and 2) form one voucher whose balancing total does.
        let ex = extract(vec![
            row(0, "2026-11-20", "Amazon", "022", "Commission", big()),
            row(1, "2026-11-22", "eBay", "022", "Commission", neg()),
            row(2, "2026-11-20", "Shopify", "022", "Commission", big()),
        ]);
        for style in [BalancingStyle::Lines, BalancingStyle::Offset] {
            cfg.balancing.style = style;
            let m = run(&cfg, &ex);
            assert_eq!(m.issues.len(), 1, "{style:?}: {:?}", m.issues);
            let text = issues_of(&m, 2);
            assert!(
                text[0].starts_with("row 2, `marketplace_fees.total_amount`: amount `50000000000000000000000000000` cannot be added to the")
                    && text[0].contains("amount overflow"),
                "{style:?}: {text:?}"
            );
            // Its voucher is left out; the other row of it says why.
            assert_eq!(m.rows[2].status, RowStatus::Rejected);
            assert_eq!(m.rows[0].status, RowStatus::Rejected);
            assert!(
                m.rows[0].errors[0].contains("its voucher could not be totalled (see row 2)"),
                "{:?}",
                m.rows[0].errors
            );
            assert_eq!(m.rows[1].status, RowStatus::Mapped);
            let lines: Vec<&JournalLine> = m.journals.iter().flat_map(|j| &j.lines).collect();
            assert!(lines
                .iter()
                .all(|l| l.trans_date == NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()));
            if style == BalancingStyle::Lines {
                assert!(voucher_sums(&m).values().all(|s| s.is_zero()));
            }
        }
    }

    #[test]
    fn a_balancing_line_beyond_max_abs_is_out_of_range() {
        // Two rows within the limit whose voucher total is not.
        let mut cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        let ex = extract(vec![
            row(
                0,
                "2026-11-22",
                "Amazon",
                "022",
                "Commission",
                Cell::Number(d("600000000000")),
            ),
            row(
                1,
                "2026-11-22",
                "eBay",
                "022",
                "Commission",
                Cell::Number(d("600000000000")),
            ),
        ]);
        let m = run(&cfg, &ex);
        let text: Vec<String> = m.issues.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            text,
            vec!["line 3, legal entity usmf, `balancing`: balancing line amount `-1200000000000` of voucher 1 is out of range: its absolute value exceeds amount.max_abs = 1000000000000 (a voucher's total: raise amount.max_abs, or make vouchers smaller with journal.max_voucher_lines)".to_string()]
        );
        // The configured limit decides.
        cfg.amount.max_abs = d("1200000000000");
        assert!(run(&cfg, &ex).issues.is_empty());
    }

    #[test]
    fn missing_column_is_one_issue() {
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        let mut ex = extract(vec![row(
            0,
            "2026-11-22",
            "Amazon",
            "022",
            "Commission",
            Cell::Number(d("1")),
        )]);
        ex.columns = vec!["marketplace_fees.channel".into()];
        let m = run(&cfg, &ex);
        assert!(m.journals.is_empty());
        assert!(m
            .issues
            .iter()
            .any(|i| i.field == "marketplace_fees.total_amount"));
    }

    #[test]
    fn offset_style_and_zero_skip_and_credit_positive() {
        let mut cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        cfg.balancing.style = BalancingStyle::Offset;
        cfg.amount.sign = SignConvention::CreditPositive;
        let ex = extract(vec![
            row(
                0,
                "2026-11-22",
                "Amazon",
                "022",
                "Commission",
                Cell::Number(d("10.004")),
            ),
            row(
                1,
                "2026-11-22",
                "Amazon",
                "022",
                "Commission",
                Cell::Number(d("0")),
            ),
            row(
                2,
                "2026-11-22",
                "Amazon",
                "022",
                "Commission",
                Cell::Number(d("10.004")),
            ),
        ]);
        let m = run(&cfg, &ex);
        assert!(m.issues.is_empty(), "{:?}", m.issues);
        assert_eq!(m.rows[1].status, RowStatus::Skipped);
        let lines = &m.journals[0].lines;
        assert_eq!(lines[0].amount, d("-10.00"));
        assert_eq!(
            lines[0].offset_account.as_ref().unwrap().main_account,
            "200150"
        );
        // -20.008 -> -20.01 ; details -20.00 ; residue -0.01 on a rounding line with the offset.
        let r: Vec<_> = lines
            .iter()
            .filter(|l| l.kind == LineKind::Rounding)
            .collect();
        assert_eq!(r[0].amount, d("-0.01"));
        assert!(r[0].offset_account.is_some());
        assert_ne!(lines[0].voucher, lines[1].voucher);
    }

    #[test]
    fn large_groups_split_into_balanced_vouchers_within_the_limit() {
        let mut cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        cfg.journal.max_voucher_lines = 10;
        let rows: Vec<SourceRow> = (0..25)
            .map(|i| {
                row(
                    i,
                    "2026-11-22",
                    "Amazon",
                    "022",
                    "Commission",
                    Cell::Number(d("1.005")),
                )
            })
            .collect();
        let m = run(&cfg, &extract(rows));
        assert!(m.issues.is_empty(), "{:?}", m.issues);
        let sums = voucher_sums(&m);
        assert_eq!(
            sums.len(),
            4,
            "25 rows, 8 per voucher (+ balancing + rounding)"
        );
        assert!(sums.values().all(|s| s.is_zero()));
        let mut per_voucher: BTreeMap<u32, usize> = BTreeMap::new();
        for l in &m.journals[0].lines {
            *per_voucher.entry(l.voucher).or_default() += 1;
        }
        assert!(per_voucher.values().all(|n| *n <= 10), "{per_voucher:?}");
        // Every row still became exactly one line.
        assert!(m.rows.iter().all(|r| r.line_nos.len() == 1));
    }

    #[test]
    fn partition_keeps_vouchers_whole_within_the_limit() {
        assert!(partition_vouchers(&[], 10).is_empty());
        assert_eq!(partition_vouchers(&[4, 4, 4], 12), vec![0..3]);
        assert_eq!(partition_vouchers(&[4, 4, 4], 8), vec![0..2, 2..3]);
        assert_eq!(partition_vouchers(&[4, 4, 4], 7), vec![0..1, 1..2, 2..3]);
        // A voucher above the limit is never split: it gets a part of its own.
        assert_eq!(partition_vouchers(&[2, 9, 2], 5), vec![0..1, 1..2, 2..3]);
        let sizes: Vec<usize> = (0..500).map(|i| 1 + (i * 7) % 10).collect();
        let parts = partition_vouchers(&sizes, 37);
        assert_eq!(parts, partition_vouchers(&sizes, 37), "deterministic");
        let mut next = 0;
        for r in &parts {
            assert_eq!(r.start, next, "contiguous, nothing skipped");
            next = r.end;
            assert!(sizes[r.clone()].iter().sum::<usize>() <= 37);
        }
        assert_eq!(next, sizes.len());
    }

    fn many_rows(n: usize) -> Extract {
        let channels = ["Amazon", "eBay", "Shopify"];
        extract(
            (0..n)
                .map(|i| {
                    row(
                        i,
                        "2026-11-22",
                        channels[i % 3],
                        if i % 2 == 0 { "022" } else { "031" },
                        "Commission",
                        Cell::Number(d(&format!("{}.{:03}", 1 + i % 17, (i * 37) % 1000))),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn large_journals_split_into_balanced_parts_of_whole_vouchers() {
        let mut cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        cfg.journal.max_voucher_lines = 10;
        cfg.journal.max_journal_lines = 25;
        let ex = many_rows(250);
        let m = run(&cfg, &ex);
        assert!(m.issues.is_empty(), "{:?}", m.issues);
        let total_lines: usize = m.journals.iter().map(|j| j.lines.len()).sum();
        let of = m.journals.len() as u32;
        assert!(of >= 12, "{total_lines} lines in {of} parts");
        let mut voucher_part: BTreeMap<u32, u32> = BTreeMap::new();
        let mut next_line = 1;
        for (i, j) in m.journals.iter().enumerate() {
            let part = JournalPart {
                part: i as u32 + 1,
                of,
            };
            assert_eq!(j.part, part);
            assert_eq!(j.legal_entity, "usmf");
            assert!(
                !j.lines.is_empty() && j.lines.len() <= 25,
                "{}",
                j.lines.len()
            );
            // Its own natural key, found again from the description.
            let key = format!("abcdef0123-a1b2c3/P{}of{of}", i + 1);
            assert!(
                j.description
                    .starts_with(&format!("MLC {key} Marketplace fees")),
                "{}",
                j.description
            );
            assert_eq!(description_key(&j.description), Some(key.as_str()));
            assert_eq!(
                header_of_run(&j.description, "abcdef0123-a1b2c3"),
                Some(part)
            );
            // Each part balances on its own, voucher by voucher and in total.
            let mut sums: BTreeMap<u32, Decimal> = BTreeMap::new();
            for l in &j.lines {
                *sums.entry(l.voucher).or_default() += l.amount;
                assert_eq!(l.line_no, next_line, "line numbers run on across parts");
                next_line += 1;
                assert!(l
                    .text
                    .starts_with(&line_ref("abcdef0123-a1b2c3", l.line_no)));
                if let Some(p) = voucher_part.insert(l.voucher, part.part) {
                    assert_eq!(p, part.part, "voucher {} spans two parts", l.voucher);
                }
            }
            assert!(sums.values().all(|s| s.is_zero()), "{sums:?}");
        }
        assert!(m.rows.iter().all(|r| r.line_nos.len() == 1));
        // Same extract, same parts.
        assert_eq!(run(&cfg, &ex).journals, m.journals);
        // At or under the limit: one unsplit header with the plain run key.
        cfg.journal.max_journal_lines = total_lines;
        let one = run(&cfg, &ex);
        assert_eq!(one.journals.len(), 1);
        assert_eq!(one.journals[0].part, JournalPart::default());
        assert_eq!(
            description_key(&one.journals[0].description),
            Some("abcdef0123-a1b2c3")
        );
    }

    #[test]
    fn part_keys_do_not_collide() {
        let k = "abcdef0123-a1b2c3";
        let p = |part, of| JournalPart { part, of };
        assert_eq!(part_key(k, p(1, 1)), k);
        assert_eq!(part_key(k, p(2, 12)), format!("{k}/P2of12"));
        for (part, of) in [(1, 1), (1, 3), (10, 12), (1, 10)] {
            let key = part_key(k, p(part, of));
            assert_eq!(parse_part_key(&key), (k, p(part, of)));
        }
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        let d1 = render_description(&cfg, &part_key(k, p(1, 3)), Some("0a1b2c3d"), "2026-W47");
        let d10 = render_description(&cfg, &part_key(k, p(1, 30)), None, "2026-W47");
        let plain = render_description(&cfg, k, Some("0a1b2c3d"), "2026-W47");
        // `MLC k/P1of3` is a string prefix of `MLC k/P1of30 …` and `MLC k` of every part: the
        // whole key token decides.
        assert_eq!(header_of_run(&d1, k), Some(p(1, 3)));
        assert_eq!(header_of_run(&d10, k), Some(p(1, 30)));
        assert_eq!(header_of_run(&plain, k), Some(p(1, 1)));
        assert_eq!(header_of_run(&d1, "abcdef0123-a1b2c4"), None);
        assert_eq!(header_of_run("MLC abcdef0123-a1b2c3x Looker", k), None);
        assert_eq!(header_of_run("MLC-R abcdef0123-a1b2c3 00012 x", k), None);
        // The key is never cut, even by a short field length.
        let mut short = cfg.clone();
        short.journal.max_text_len = 30;
        let d = render_description(
            &short,
            &part_key(k, p(100, 120)),
            Some("0a1b2c3d"),
            "2026-W47",
        );
        assert_eq!(description_key(&d), Some(format!("{k}/P100of120").as_str()));
    }

    #[test]
    fn rows_sharing_columns_map_like_rows_with_their_own() {
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        let own: Vec<SourceRow> = (0..30)
            .map(|i| {
                row(
                    i,
                    "2026-11-22",
                    ["Amazon", "eBay"][i % 2],
                    if i % 3 == 0 { "022" } else { "031" },
                    "Commission",
                    Cell::Number(Decimal::new(1000 + i as i64 * 37, 3)),
                )
            })
            .collect();
        // The same rows as the parsers build them: one shared column list, read by position.
        let mut builder = crate::domain::source::RowsBuilder::default();
        for r in &own {
            for (k, v) in r.iter() {
                builder.push(k, v.clone()).unwrap();
            }
            builder.finish_row();
        }
        let (_, shared) = builder.finish();
        let a = run(&cfg, &extract(own));
        let b = run(&cfg, &extract(shared));
        assert!(a.issues.is_empty(), "{:?}", a.issues);
        assert_eq!(a.journals, b.journals);
        assert_eq!(a.rows, b.rows);
        // Detail lines with the same dimension values share one interned set.
        let detail: Vec<&JournalLine> = b
            .journals
            .iter()
            .flat_map(|j| &j.lines)
            .filter(|l| l.kind == LineKind::Detail)
            .collect();
        let first = &detail[0].account.dimensions;
        assert!(!first.is_empty());
        let same: Vec<_> = detail
            .iter()
            .filter(|l| l.account.dimensions == *first)
            .collect();
        assert!(same.len() > 1);
        assert!(same.iter().all(|l| l.account.dimensions.shares_with(first)));
    }

    #[test]
    fn line_refs_round_trip() {
        assert_eq!(line_ref("abc-12", 7), "abc-12.L0007");
        assert_eq!(
            parse_line_ref("abc-12.L0007 Commission x"),
            Some(("abc-12", 7))
        );
        assert_eq!(parse_line_ref("abc-12.L12345"), Some(("abc-12", 12345)));
        assert_eq!(parse_line_ref("Manual entry"), None);
        assert_eq!(parse_line_ref("x.L12"), None);
    }

    const SIDE_BY_SIDE: &str = include_str!("../../infra/config/weekly-fees-and-commissions.toml");

    fn cost_row(i: usize, channel: &str, cc: &str, fee: Cell, commission: Cell) -> SourceRow {
        let mut c = BTreeMap::new();
        c.insert(
            "channel_costs.week_end_date".into(),
            Cell::Text("2026-11-22".into()),
        );
        c.insert("channel_costs.channel".into(), Cell::Text(channel.into()));
        c.insert("channel_costs.cost_center".into(), Cell::Text(cc.into()));
        c.insert("channel_costs.fee_amount".into(), fee);
        c.insert("channel_costs.commission_amount".into(), commission);
        SourceRow::new(i, c)
    }

    #[test]
    fn one_row_makes_a_line_per_measure_in_one_balanced_journal() {
        let cfg = InstanceConfig::from_toml(SIDE_BY_SIDE).unwrap();
        let num = |s: &str| Cell::Number(d(s));
        let ex = extract(vec![
            cost_row(0, "Amazon", "022", num("100.00"), num("12.50")),
            cost_row(1, "eBay", "031", num("40.10"), num("0")),
            cost_row(2, "Shopify", "022", num("0"), num("0")),
            cost_row(3, "Shopify", "031", num("7.25"), num("3.00")),
        ]);
        let m = run(&cfg, &ex);
        assert!(m.issues.is_empty(), "{:?}", m.issues);
        assert_eq!(m.journals.len(), 1, "one run, one journal");
        let j = &m.journals[0];
        let got: Vec<(String, Decimal, Vec<usize>, Option<&str>)> = j
            .lines
            .iter()
            .map(|l| {
                (
                    l.account.display_value(&fmt()),
                    l.amount,
                    l.source_rows.clone(),
                    l.source_column.as_deref(),
                )
            })
            .collect();
        let fee = Some("channel_costs.fee_amount");
        let com = Some("channel_costs.commission_amount");
        assert_eq!(
            got,
            vec![
                ("600150--022-AMZ".into(), d("100.00"), vec![0], fee),
                ("600170-010-022-AMZ".into(), d("12.50"), vec![0], com),
                // Zero commission of row 1 and both zeros of row 2 make no line.
                ("600160--031-EBY".into(), d("40.10"), vec![1], fee),
                ("600165--031-SHP".into(), d("7.25"), vec![3], fee),
                ("600170-010-031-SHP".into(), d("3.00"), vec![3], com),
                ("200150---".into(), d("-162.85"), vec![], None),
            ]
        );
        assert!(voucher_sums(&m).values().all(|s| s.is_zero()));
        assert_eq!(m.source_total, d("162.85"));
        assert_eq!(m.mapped_total, d("162.85"));
        // Line numbers (the natural key of each line in D365) distinguish the lines of a row.
        let nos: Vec<u32> = j.lines.iter().map(|l| l.line_no).collect();
        assert_eq!(nos, vec![1, 2, 3, 4, 5, 6]);
        assert!(j.lines[1]
            .text
            .starts_with("abcdef0123-a1b2c3.L0002 Commission Amazon 022"));
        assert!(j.lines[0]
            .text
            .starts_with("abcdef0123-a1b2c3.L0001 Fees Amazon 022"));
        let rows: Vec<(RowStatus, Vec<u32>)> = m
            .rows
            .iter()
            .map(|r| (r.status, r.line_nos.clone()))
            .collect();
        assert_eq!(
            rows,
            vec![
                (RowStatus::Mapped, vec![1, 2]),
                (RowStatus::Mapped, vec![3]),
                (RowStatus::Skipped, vec![]),
                (RowStatus::Mapped, vec![4, 5]),
            ]
        );
        // The same extract maps to the same journal (what a retry relies on).
        let again = run(&cfg, &ex);
        assert_eq!(again.journals, m.journals);
    }

    #[test]
    fn side_by_side_errors_name_the_row_and_the_column() {
        let cfg = InstanceConfig::from_toml(SIDE_BY_SIDE).unwrap();
        let ex = extract(vec![
            cost_row(
                0,
                "Amazon",
                "022",
                Cell::Number(d("1")),
                Cell::Number(d("2")),
            ),
            cost_row(
                1,
                "eBay",
                "031",
                Cell::Number(d("1")),
                Cell::Text("n/a".into()),
            ),
            cost_row(2, "Etsy", "022", Cell::Number(d("5")), Cell::Number(d("1"))),
        ]);
        let m = run(&cfg, &ex);
        assert_eq!(
            issues_of(&m, 1),
            vec!["row 1, `channel_costs.commission_amount`: amount `n/a` is not a number"]
        );
        // The fee account lookup fails; the error names the line's key and the column.
        let row2 = issues_of(&m, 2);
        assert_eq!(row2.len(), 2, "{row2:?}");
        assert!(
            row2[0].contains("`channel_costs.channel`")
                && row2[0].contains("lines[0].account: no lookup entry for `Etsy`"),
            "{row2:?}"
        );
        assert!(row2[1].contains("dimensions.Channel"), "{row2:?}");
        assert_eq!(m.rows[1].status, RowStatus::Rejected);
        assert_eq!(m.rows[0].status, RowStatus::Mapped);

        // Under `zero = "reject"` a zero amount is an error naming its column.
        let strict = SIDE_BY_SIDE.replace("zero = \"skip\"", "zero = \"reject\"");
        let cfg = InstanceConfig::from_toml(&strict).unwrap();
        let ex = extract(vec![cost_row(
            0,
            "Amazon",
            "022",
            Cell::Number(d("1")),
            Cell::Number(d("0")),
        )]);
        let m = run(&cfg, &ex);
        assert_eq!(
            issues_of(&m, 0),
            vec!["row 0, `channel_costs.commission_amount`: amount is zero"]
        );
        assert!(m.journals.is_empty());
    }

    #[test]
    fn side_by_side_offset_style_keeps_every_voucher_balanced() {
        let text = SIDE_BY_SIDE.replace("style = \"lines\"", "style = \"offset\"");
        let cfg = InstanceConfig::from_toml(&text).unwrap();
        let ex = extract(vec![cost_row(
            0,
            "Amazon",
            "022",
            Cell::Number(d("10.004")),
            Cell::Number(d("1.004")),
        )]);
        let m = run(&cfg, &ex);
        assert!(m.issues.is_empty(), "{:?}", m.issues);
        let j = &m.journals[0];
        // Each line balances itself against the offset account; the residue of the group
        // (11.008 -> 11.01 vs 10.00 + 1.00) goes to the rounding account, also offset.
        assert!(j.lines.iter().all(|l| l.offset_account.is_some()));
        assert_eq!(j.lines.len(), 3);
        assert_eq!(j.lines[2].kind, LineKind::Rounding);
        assert_eq!(j.lines[2].amount, d("0.01"));
        let total: Decimal = j.lines.iter().map(|l| l.amount).sum();
        assert_eq!(total, d("11.01"));
        let t = j.totals().unwrap();
        assert_eq!(t["USD"].0, t["USD"].1);
    }
}
