//! Master data the D365 simulator starts with. [`D365Seed::demo`] is a small but realistic
//! two-company setup (usmf/USD, demf/EUR) sharing one chart of accounts and calendar.

use std::collections::BTreeMap;

use chrono::{Datelike, Months, NaiveDate};

use crate::domain::reference::{PeriodStatus, VoucherAllocation};

use super::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};

#[derive(Debug, Clone)]
pub struct SeedLedger {
    /// dataAreaId, lower case.
    pub legal_entity: String,
    pub chart_of_accounts: String,
    pub fiscal_calendar: String,
    pub accounting_currency: String,
}

#[derive(Debug, Clone)]
pub struct SeedMainAccount {
    pub chart_of_accounts: String,
    pub id: String,
    pub name: String,
    pub account_type: String,
    pub suspended: bool,
    pub do_not_allow_manual_entry: bool,
    pub active_from: Option<NaiveDate>,
    pub active_to: Option<NaiveDate>,
}

#[derive(Debug, Clone)]
pub struct SeedDimensionValue {
    pub dimension: String,
    pub value: String,
    /// Empty for values shared by all companies.
    pub legal_entity: String,
    pub description: String,
    pub suspended: bool,
    pub blocked_for_manual_entry: bool,
    pub is_total: bool,
    pub active_from: Option<NaiveDate>,
    pub active_to: Option<NaiveDate>,
}

#[derive(Debug, Clone)]
pub struct SeedFormat {
    pub name: String,
    /// `DataEntityLedgerDimensionFormat` or `DataEntityDefaultDimensionFormat`.
    pub format_type: String,
    /// e.g. `MainAccount-Department-CostCenter-Channel`.
    pub format: String,
    pub active: bool,
}

#[derive(Debug, Clone)]
pub struct SeedJournalName {
    pub legal_entity: String,
    pub name: String,
    pub description: String,
    pub journal_type: String,
    pub new_voucher: VoucherAllocation,
    pub workflow_approval: bool,
    pub voucher_series: String,
}

#[derive(Debug, Clone)]
pub struct SeedPeriod {
    pub calendar: String,
    pub year: String,
    pub name: String,
    pub start: NaiveDate,
    pub end: NaiveDate,
    /// `Operating`, `Opening` or `Closing`.
    pub period_type: String,
}

#[derive(Debug, Clone)]
pub struct SeedApp {
    pub client_id: String,
    pub secret: String,
    /// Registered under System administration > Setup > Microsoft Entra applications.
    pub registered_in_fo: bool,
}

/// Everything the simulator serves at start.
#[derive(Debug, Clone)]
pub struct D365Seed {
    pub tenant: String,
    pub apps: Vec<SeedApp>,
    /// The mapped user's default company: the only one visible without `cross-company=true`.
    pub default_company: String,
    pub ledgers: Vec<SeedLedger>,
    pub main_accounts: Vec<SeedMainAccount>,
    pub dimension_values: Vec<SeedDimensionValue>,
    pub formats: Vec<SeedFormat>,
    pub delimiter: char,
    pub journal_names: Vec<SeedJournalName>,
    pub periods: Vec<SeedPeriod>,
    /// (legal entity, calendar, year, period) → status; missing means Open.
    pub period_status: BTreeMap<(String, String, String, String), PeriodStatus>,
    /// First `JournalBatchNumber` of each company's number sequence.
    pub first_batch_number: u64,
}

impl D365Seed {
    /// Only the sandbox app and tenant; no companies.
    pub fn empty() -> Self {
        Self {
            tenant: SANDBOX_TENANT.into(),
            apps: vec![SeedApp {
                client_id: SANDBOX_CLIENT_ID.into(),
                secret: SANDBOX_CLIENT_SECRET.into(),
                registered_in_fo: true,
            }],
            default_company: "usmf".into(),
            ledgers: vec![],
            main_accounts: vec![],
            dimension_values: vec![],
            formats: vec![],
            delimiter: '-',
            journal_names: vec![],
            periods: vec![],
            period_status: BTreeMap::new(),
            first_batch_number: 42,
        }
    }

    /// The demo setup (see module docs and the D365 README section of the report).
    pub fn demo(today: NaiveDate) -> Self {
        let mut s = Self::empty();
        for (le, cur) in [("usmf", "USD"), ("demf", "EUR")] {
            s.ledgers.push(SeedLedger {
                legal_entity: le.into(),
                chart_of_accounts: "Shared".into(),
                fiscal_calendar: "Fiscal".into(),
                accounting_currency: cur.into(),
            });
            for (name, desc, nv, wf) in [
                (
                    "GenJrn",
                    "Daily general journal",
                    VoucherAllocation::InConnectionWithBalance,
                    false,
                ),
                (
                    "GJAppr",
                    "General journal with approval",
                    VoucherAllocation::InConnectionWithBalance,
                    true,
                ),
                (
                    "GJMan",
                    "General journal, manual vouchers",
                    VoucherAllocation::Manual,
                    false,
                ),
            ] {
                s.journal_names.push(SeedJournalName {
                    legal_entity: le.into(),
                    name: name.into(),
                    description: desc.into(),
                    journal_type: "Daily".into(),
                    new_voucher: nv,
                    workflow_approval: wf,
                    voucher_series: "Gene_18".into(),
                });
            }
        }
        for (id, name, ty, suspended) in [
            ("618100", "Marketplace fees", "Expense", false),
            ("618200", "Sales commissions", "Expense", false),
            ("200150", "Accrued marketplace fees", "Liability", false),
            ("618900", "Rounding differences", "Expense", false),
            ("110110", "Bank", "BalanceSheet", false),
            ("999999", "Legacy clearing", "BalanceSheet", true),
        ] {
            s.main_accounts.push(SeedMainAccount {
                chart_of_accounts: "Shared".into(),
                id: id.into(),
                name: name.into(),
                account_type: ty.into(),
                suspended,
                do_not_allow_manual_entry: false,
                active_from: None,
                active_to: None,
            });
        }
        let year_ago = today.checked_sub_months(Months::new(12)).unwrap_or(today);
        let dims: [(&str, &str, &str, bool, Option<NaiveDate>); 11] = [
            ("Department", "010", "Sales", false, None),
            ("Department", "020", "Operations", false, None),
            ("CostCenter", "011", "Marketplaces", false, None),
            ("CostCenter", "022", "Webshop", false, None),
            ("CostCenter", "031", "Retail", false, None),
            ("CostCenter", "099", "Closed cost center", true, None),
            ("Channel", "AMZ", "Amazon", false, None),
            ("Channel", "EBY", "eBay", false, None),
            ("Channel", "SHP", "Shopify", false, None),
            ("Channel", "WEB", "Own webshop", false, None),
            (
                "Channel",
                "OLD",
                "Discontinued channel",
                false,
                Some(year_ago),
            ),
        ];
        for (dim, value, desc, suspended, active_to) in dims {
            s.dimension_values.push(SeedDimensionValue {
                dimension: dim.into(),
                value: value.into(),
                legal_entity: String::new(),
                description: desc.into(),
                suspended,
                blocked_for_manual_entry: false,
                is_total: false,
                active_from: None,
                active_to,
            });
        }
        s.formats.push(SeedFormat {
            name: "Ledger".into(),
            format_type: "DataEntityLedgerDimensionFormat".into(),
            format: "MainAccount-Department-CostCenter-Channel".into(),
            active: true,
        });
        s.formats.push(SeedFormat {
            name: "Default".into(),
            format_type: "DataEntityDefaultDimensionFormat".into(),
            format: "Department-CostCenter-Channel".into(),
            active: true,
        });
        for year in today.year() - 1..=today.year() + 1 {
            s.periods.extend(calendar_year("Fiscal", year));
        }
        s
    }
}

/// A calendar year as F&O sets it up: an Opening period, 12 monthly operating periods, a
/// Closing period (opening/closing share a day with the first/last operating period).
pub fn calendar_year(calendar: &str, year: i32) -> Vec<SeedPeriod> {
    let jan1 = NaiveDate::from_ymd_opt(year, 1, 1).expect("valid year");
    let dec31 = NaiveDate::from_ymd_opt(year, 12, 31).expect("valid year");
    let p = |name: String, start, end, ty: &str| SeedPeriod {
        calendar: calendar.into(),
        year: year.to_string(),
        name,
        start,
        end,
        period_type: ty.into(),
    };
    let mut out = vec![p("Opening".into(), jan1, jan1, "Opening")];
    for m in 1..=12u32 {
        let start = NaiveDate::from_ymd_opt(year, m, 1).expect("valid month");
        let end = start
            .checked_add_months(Months::new(1))
            .and_then(|d| d.pred_opt())
            .expect("valid month end");
        out.push(p(format!("Period {m}"), start, end, "Operating"));
    }
    out.push(p("Closing".into(), dec31, dec31, "Closing"));
    out
}
