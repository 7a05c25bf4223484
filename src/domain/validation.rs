//! Validation before anything is written: accounts, dimension values, journal name, fiscal
//! period, currency precision and voucher balance, checked against a D365 reference snapshot.
//!
//! F&O itself lets an unbalanced voucher into an unposted journal and only complains at posting
//! time; finance wants that caught here, with every bad row named, and nothing written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::journal::{Journal, JournalLine, LedgerAccount, LineKind};
use super::money::{self, CurrencyPrecision};
use super::reference::{active_on, DimensionValue, PeriodStatus, ReferenceData, VoucherAllocation};

/// One problem, naming where it is: a source row, a journal line, or a config key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// Source row index (0-based, as Looker returned it).
    pub row: Option<usize>,
    /// Journal line number (for generated lines such as balancing lines).
    pub line: Option<u32>,
    pub legal_entity: Option<String>,
    /// The Looker column or config key the problem is about.
    pub field: String,
    pub message: String,
}

impl Issue {
    pub fn row(row: usize, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            row: Some(row),
            line: None,
            legal_entity: None,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            row: None,
            line: None,
            legal_entity: None,
            field: field.into(),
            message: message.into(),
        }
    }

    fn for_line(
        line: &JournalLine,
        legal_entity: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            row: line.source_rows.first().copied(),
            line: Some(line.line_no),
            legal_entity: Some(legal_entity.to_string()),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut place = Vec::new();
        if let Some(r) = self.row {
            place.push(format!("row {r}"));
        }
        if let Some(l) = self.line {
            place.push(format!("line {l}"));
        }
        if let Some(le) = &self.legal_entity {
            place.push(format!("legal entity {le}"));
        }
        if place.is_empty() {
            write!(f, "`{}`: {}", self.field, self.message)
        } else {
            write!(
                f,
                "{}, `{}`: {}",
                place.join(", "),
                self.field,
                self.message
            )
        }
    }
}

/// Which config key produced an account on a line, so issues point at the right setting.
fn account_field(line: &JournalLine, offset: bool) -> &'static str {
    match (line.kind, offset) {
        (LineKind::Detail, false) => "account",
        (LineKind::Detail, true) | (LineKind::Balancing, _) => "balancing.account",
        (LineKind::Rounding, false) => "rounding.account",
        (LineKind::Rounding, true) => "balancing.account",
    }
}

/// `field`, followed by the line's amount column when a row makes several lines: the issue
/// then names the row (from the line) and the column.
fn with_column(line: &JournalLine, offset: bool, field: String) -> String {
    match (&line.source_column, line.kind, offset) {
        (Some(c), LineKind::Detail, false) => format!("{field} (amount column {c})"),
        _ => field,
    }
}

/// Checks journals against reference data per legal entity. Empty result = safe to write.
pub fn validate(
    journals: &[Journal],
    refs: &BTreeMap<String, ReferenceData>,
    precision: &CurrencyPrecision,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    for j in journals {
        let Some(rd) = refs.get(&j.legal_entity) else {
            issues.push(Issue {
                row: None,
                line: None,
                legal_entity: Some(j.legal_entity.clone()),
                field: "journal.legal_entity".into(),
                message: format!("legal entity `{}` has no ledger in D365", j.legal_entity),
            });
            continue;
        };
        let le = &j.legal_entity;
        match rd.journal_names.get(&j.journal_name) {
            None => issues.push(Issue {
                row: None,
                line: None,
                legal_entity: Some(le.clone()),
                field: "journal.journal_name".into(),
                message: format!(
                    "journal name `{}` does not exist in {le} (known: {})",
                    j.journal_name,
                    rd.journal_names
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
            Some(jn) if jn.voucher_allocation == VoucherAllocation::OneVoucherNumberOnly => {
                let mut dates: Vec<NaiveDate> = j.lines.iter().map(|l| l.trans_date).collect();
                dates.sort();
                dates.dedup();
                if dates.len() > 1 {
                    issues.push(Issue {
                        row: None,
                        line: None,
                        legal_entity: Some(le.clone()),
                        field: "journal.journal_name".into(),
                        message: format!(
                            "journal name `{}` allocates one voucher number only, but the lines span {} dates; use a journal name with voucher allocation \"in connection with balance\"",
                            j.journal_name,
                            dates.len()
                        ),
                    });
                }
            }
            Some(_) => {}
        }

        check_lines(j, rd, precision, &mut issues);
    }
    issues
}

/// The line-by-line checks of one journal against its legal entity's reference data: accounts
/// and dimension values, voucher balance and dates, fiscal periods, currency decimals.
fn check_lines(
    j: &Journal,
    rd: &ReferenceData,
    precision: &CurrencyPrecision,
    issues: &mut Vec<Issue>,
) {
    let le = &j.legal_entity;
    let mut voucher_sums: BTreeMap<u32, Decimal> = BTreeMap::new();
    // Vouchers whose sum overflowed (reported once, at the line it happened).
    let mut overflowed: BTreeSet<u32> = BTreeSet::new();
    let mut voucher_dates: BTreeMap<u32, NaiveDate> = BTreeMap::new();
    // Dimension values by borrowed (dimension, value): no key copies per line.
    let dim_values: DimValues<'_> = rd
        .dimension_values
        .iter()
        .map(|((d, v), dv)| ((d.as_str(), v.as_str()), dv))
        .collect();
    // The last account (and offset account) found clean on a date: consecutive lines
    // mostly repeat them (one interned dimension set), and a clean account stays clean.
    let mut clean: Option<(&LedgerAccount, NaiveDate)> = None;
    let mut clean_offset: Option<(&LedgerAccount, NaiveDate)> = None;
    // The last currency and its decimals.
    let mut last_currency: Option<(&str, Option<u32>)> = None;
    for line in &j.lines {
        check_account_once(
            &mut clean,
            &line.account,
            line,
            false,
            rd,
            &dim_values,
            issues,
        );
        if let Some(off) = &line.offset_account {
            check_account_once(&mut clean_offset, off, line, true, rd, &dim_values, issues);
        } else if let Err(e) =
            money::add_to(voucher_sums.entry(line.voucher).or_default(), line.amount)
        {
            if overflowed.insert(line.voucher) {
                issues.push(Issue::for_line(
                    line,
                    le,
                    "balancing",
                    format!(
                        "voucher {} cannot be totalled at this line (amount {}): {e}",
                        line.voucher, line.amount
                    ),
                ));
            }
        }
        if let Some(prev) = voucher_dates.insert(line.voucher, line.trans_date) {
            if prev != line.trans_date {
                issues.push(Issue::for_line(
                    line,
                    le,
                    "journal.trans_date",
                    "lines of one voucher must share one transaction date",
                ));
            }
        }
        match rd.period_for(line.trans_date) {
            None => issues.push(Issue::for_line(
                line,
                le,
                "journal.trans_date",
                format!(
                    "{} is not in any period of fiscal calendar `{}`",
                    line.trans_date, rd.ledger.fiscal_calendar
                ),
            )),
            Some(p) if p.status != PeriodStatus::Open => issues.push(Issue::for_line(
                line,
                le,
                "journal.trans_date",
                format!(
                    "period {} {} ({} to {}) is {} for the general ledger in {le}",
                    p.year,
                    p.name,
                    p.start,
                    p.end,
                    match p.status {
                        PeriodStatus::OnHold => "on hold",
                        _ => "closed",
                    }
                ),
            )),
            Some(_) => {}
        }
        let decimals = match last_currency {
            Some((c, d)) if c == line.currency => d,
            _ => {
                let d = precision.decimals(&line.currency);
                last_currency = Some((&line.currency, d));
                d
            }
        };
        match decimals {
            None => issues.push(Issue::for_line(
                line,
                le,
                "journal.currency",
                format!("currency `{}` has no known precision", line.currency),
            )),
            // Normalizing only lowers the scale: no need when it is within already.
            Some(dp) if line.amount.scale() > dp && line.amount.normalize().scale() > dp => issues
                .push(Issue::for_line(
                    line,
                    le,
                    "amount",
                    format!(
                        "{} has more than {dp} decimals for {}",
                        line.amount, line.currency
                    ),
                )),
            Some(_) => {}
        }
        if line.amount.is_zero() {
            issues.push(Issue::for_line(line, le, "amount", "line amount is zero"));
        }
    }
    for (v, sum) in voucher_sums {
        if !sum.is_zero() && !overflowed.contains(&v) {
            issues.push(Issue {
                row: None,
                line: None,
                legal_entity: Some(le.clone()),
                field: "balancing".into(),
                message: format!("voucher {v} does not balance: debits − credits = {sum}"),
            });
        }
    }
}

type DimValues<'r> = HashMap<(&'r str, &'r str), &'r DimensionValue>;

/// [`check_account`], skipped when `acct` is the account `clean` last passed on the same date
/// (the checks depend on the account, its dimension values and the date only).
fn check_account_once<'j>(
    clean: &mut Option<(&'j LedgerAccount, NaiveDate)>,
    acct: &'j LedgerAccount,
    line: &JournalLine,
    offset: bool,
    rd: &ReferenceData,
    dim_values: &DimValues<'_>,
    issues: &mut Vec<Issue>,
) {
    if let Some((a, date)) = *clean {
        if date == line.trans_date
            && a.main_account == acct.main_account
            && a.dimensions == acct.dimensions
        {
            return;
        }
    }
    let before = issues.len();
    check_account(acct, line, offset, rd, dim_values, issues);
    *clean = (issues.len() == before).then_some((acct, line.trans_date));
}

fn check_account(
    acct: &LedgerAccount,
    line: &JournalLine,
    offset: bool,
    rd: &ReferenceData,
    dim_values: &DimValues<'_>,
    issues: &mut Vec<Issue>,
) {
    let le = &rd.legal_entity;
    // Only formatted when there is an issue to report (this runs for every line).
    let field = || with_column(line, offset, account_field(line, offset).to_string());
    let date = line.trans_date;
    match rd.main_accounts.get(&acct.main_account) {
        None => issues.push(Issue::for_line(
            line,
            le,
            field(),
            format!(
                "main account `{}` does not exist in chart of accounts `{}`",
                acct.main_account, rd.ledger.chart_of_accounts
            ),
        )),
        Some(ma) => {
            if ma.suspended {
                issues.push(Issue::for_line(
                    line,
                    le,
                    field(),
                    format!("main account `{}` ({}) is suspended", ma.id, ma.name),
                ));
            }
            if ma.blocked_for_manual_entry {
                issues.push(Issue::for_line(
                    line,
                    le,
                    field(),
                    format!(
                        "main account `{}` ({}) does not allow manual entry",
                        ma.id, ma.name
                    ),
                ));
            }
            if !active_on(ma.active_from, ma.active_to, date) {
                issues.push(Issue::for_line(
                    line,
                    le,
                    field(),
                    format!("main account `{}` is not active on {date}", ma.id),
                ));
            }
        }
    }
    for (dim, value) in &acct.dimensions {
        // Only formatted when there is an issue to report (this runs for every line).
        let dim_field = || {
            let field = match (line.kind, offset) {
                (LineKind::Detail, false) => format!("dimensions.{dim}"),
                (LineKind::Rounding, false) => format!("rounding.dimensions.{dim}"),
                _ => format!("balancing.dimensions.{dim}"),
            };
            with_column(line, offset, field)
        };
        if !rd.format.segments.iter().skip(1).any(|s| s == dim) {
            issues.push(Issue::for_line(
                line,
                le,
                dim_field(),
                format!(
                    "dimension `{dim}` is not in the active ledger dimension format `{}` ({})",
                    rd.format.name,
                    rd.format.segments.join(&rd.format.delimiter.to_string())
                ),
            ));
            continue;
        }
        match dim_values.get(&(dim.as_str(), value.as_str())) {
            None => issues.push(Issue::for_line(
                line,
                le,
                dim_field(),
                format!("{dim} value `{value}` does not exist"),
            )),
            Some(dv) => {
                let problem = if dv.suspended {
                    Some("is suspended")
                } else if dv.is_total {
                    Some("is a total value and cannot be posted to")
                } else if dv.blocked_for_manual_entry {
                    Some("is blocked for manual entry")
                } else if !active_on(dv.active_from, dv.active_to, date) {
                    Some("is not active on the transaction date")
                } else {
                    None
                };
                if let Some(p) = problem {
                    issues.push(Issue::for_line(
                        line,
                        le,
                        dim_field(),
                        format!("{dim} value `{value}` {p} ({date})"),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reference::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn reference() -> ReferenceData {
        let mut main_accounts = BTreeMap::new();
        for (id, suspended) in [("618100", false), ("200150", false), ("999999", true)] {
            main_accounts.insert(
                id.to_string(),
                MainAccount {
                    id: id.into(),
                    name: format!("acct {id}"),
                    suspended,
                    blocked_for_manual_entry: false,
                    active_from: None,
                    active_to: None,
                },
            );
        }
        let mut dimension_values = BTreeMap::new();
        for (dim, v, suspended, to) in [
            ("CostCenter", "022", false, None),
            ("CostCenter", "099", true, None),
            ("Channel", "OLD", false, Some(date("2025-01-01"))),
        ] {
            dimension_values.insert(
                (dim.to_string(), v.to_string()),
                DimensionValue {
                    dimension: dim.into(),
                    value: v.into(),
                    suspended,
                    blocked_for_manual_entry: false,
                    is_total: false,
                    active_from: None,
                    active_to: to,
                },
            );
        }
        let mut journal_names = BTreeMap::new();
        journal_names.insert(
            "GenJrn".to_string(),
            JournalName {
                name: "GenJrn".into(),
                description: "General".into(),
                journal_type: "Daily".into(),
                voucher_allocation: VoucherAllocation::InConnectionWithBalance,
                workflow_approval: false,
            },
        );
        ReferenceData {
            legal_entity: "usmf".into(),
            ledger: Ledger {
                legal_entity: "usmf".into(),
                chart_of_accounts: "Shared".into(),
                fiscal_calendar: "Fiscal".into(),
                accounting_currency: "USD".into(),
            },
            format: DimensionFormat {
                name: "Default".into(),
                segments: vec!["MainAccount".into(), "CostCenter".into(), "Channel".into()],
                delimiter: '-',
            },
            main_accounts,
            dimension_values,
            journal_names,
            periods: vec![
                FiscalPeriod {
                    calendar: "Fiscal".into(),
                    year: "2026".into(),
                    name: "Period 11".into(),
                    start: date("2026-11-01"),
                    end: date("2026-11-30"),
                    status: PeriodStatus::Open,
                },
                FiscalPeriod {
                    calendar: "Fiscal".into(),
                    year: "2026".into(),
                    name: "Period 10".into(),
                    start: date("2026-10-01"),
                    end: date("2026-10-31"),
                    status: PeriodStatus::Closed,
                },
            ],
        }
    }

    fn line(
        no: u32,
        voucher: u32,
        acct: &str,
        dims: &[(&str, &str)],
        amt: &str,
        d: &str,
    ) -> JournalLine {
        let mut a = LedgerAccount::new(acct);
        for (k, v) in dims {
            a.dimensions.insert(k.to_string(), v.to_string());
        }
        JournalLine {
            line_no: no,
            voucher,
            trans_date: date(d),
            account: a,
            offset_account: None,
            currency: "USD".into(),
            amount: amt.parse().unwrap(),
            text: String::new(),
            kind: LineKind::Detail,
            source_rows: vec![no as usize - 1],
            source_column: None,
        }
    }

    fn journal(lines: Vec<JournalLine>) -> Journal {
        Journal {
            legal_entity: "usmf".into(),
            journal_name: "GenJrn".into(),
            description: "x".into(),
            part: Default::default(),
            lines,
        }
    }

    fn refs() -> BTreeMap<String, ReferenceData> {
        [("usmf".to_string(), reference())].into()
    }

    #[test]
    fn clean_journal_passes() {
        let j = journal(vec![
            line(
                1,
                1,
                "618100",
                &[("CostCenter", "022")],
                "10.00",
                "2026-11-22",
            ),
            line(2, 1, "200150", &[], "-10.00", "2026-11-22"),
        ]);
        assert_eq!(
            validate(&[j], &refs(), &CurrencyPrecision::default()),
            vec![]
        );
    }

    #[test]
    fn each_problem_is_named() {
        let j = journal(vec![
            line(
                1,
                1,
                "618100",
                &[("CostCenter", "099")],
                "10.00",
                "2026-11-22",
            ),
            line(2, 1, "999999", &[], "-5.00", "2026-11-22"),
            line(
                3,
                1,
                "123456",
                &[("Channel", "OLD")],
                "-5.001",
                "2026-11-22",
            ),
            line(
                4,
                2,
                "618100",
                &[("Department", "010")],
                "1.00",
                "2026-10-15",
            ),
        ]);
        let issues: Vec<String> = validate(&[j], &refs(), &CurrencyPrecision::default())
            .iter()
            .map(|i| i.to_string())
            .collect();
        let has = |s: &str| issues.iter().any(|i| i.contains(s));
        assert!(has("row 0, line 1, legal entity usmf, `dimensions.CostCenter`: CostCenter value `099` is suspended"), "{issues:#?}");
        assert!(
            has("main account `999999` (acct 999999) is suspended"),
            "{issues:#?}"
        );
        assert!(has("main account `123456` does not exist"), "{issues:#?}");
        assert!(has("Channel value `OLD` is not active"), "{issues:#?}");
        assert!(has("-5.001 has more than 2 decimals"), "{issues:#?}");
        assert!(
            has("dimension `Department` is not in the active ledger dimension format"),
            "{issues:#?}"
        );
        assert!(
            has("Period 10 (2026-10-01 to 2026-10-31) is closed"),
            "{issues:#?}"
        );
        assert!(
            has("voucher 1 does not balance: debits − credits = -0.001"),
            "{issues:#?}"
        );
        assert!(has("voucher 2 does not balance"), "{issues:#?}");
    }

    #[test]
    fn a_voucher_sum_that_overflows_is_an_issue_not_a_panic() {
        let j = journal(vec![
            line(
                1,
                1,
                "618100",
                &[],
                "50000000000000000000000000000",
                "2026-11-22",
            ),
            line(
                2,
                1,
                "618100",
                &[],
                "50000000000000000000000000000",
                "2026-11-22",
            ),
            line(
                3,
                1,
                "200150",
                &[],
                "-50000000000000000000000000000",
                "2026-11-22",
            ),
            line(
                4,
                1,
                "200150",
                &[],
                "-50000000000000000000000000000",
                "2026-11-22",
            ),
        ]);
        let issues: Vec<String> = validate(&[j], &refs(), &CurrencyPrecision::default())
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            issues,
            vec!["row 1, line 2, legal entity usmf, `balancing`: voucher 1 cannot be totalled at this line (amount 50000000000000000000000000000): amount overflow: a total is out of range (beyond ±79228162514264337593543950335, the largest amount a decimal holds)".to_string()],
        );
    }

    #[test]
    fn unknown_journal_name_and_entity() {
        let mut j = journal(vec![]);
        j.journal_name = "Nope".into();
        let mut j2 = journal(vec![]);
        j2.legal_entity = "zzzz".into();
        let issues = validate(&[j, j2], &refs(), &CurrencyPrecision::default());
        assert!(issues[0]
            .to_string()
            .contains("journal name `Nope` does not exist in usmf"));
        assert!(issues[1].to_string().contains("`zzzz` has no ledger"));
    }
}
