//! D365 master data the connector validates against before it writes anything.
//!
//! The D365 adapter reads these from OData entities (`MainAccounts`, `FinancialDimensionValues`,
//! `DimensionIntegrationFormats`, `JournalNames`, `Ledgers`, `FiscalPeriods`,
//! `LedgerFiscalPeriodsV2`); validation only ever sees this snapshot, so it stays pure.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// A main account of the legal entity's chart of accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainAccount {
    pub id: String,
    pub name: String,
    pub suspended: bool,
    /// `DoNotAllowManualEntry`: journals may not post to it.
    pub blocked_for_manual_entry: bool,
    pub active_from: Option<NaiveDate>,
    pub active_to: Option<NaiveDate>,
}

/// One value of one financial dimension (e.g. CostCenter = 022).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimensionValue {
    pub dimension: String,
    pub value: String,
    pub suspended: bool,
    pub blocked_for_manual_entry: bool,
    pub is_total: bool,
    pub active_from: Option<NaiveDate>,
    pub active_to: Option<NaiveDate>,
}

/// The active "Ledger dimension format for integrating applications".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimensionFormat {
    pub name: String,
    /// Segment names in order; the first is always `MainAccount`.
    pub segments: Vec<String>,
    /// Segment delimiter (`DimensionParameters.DimensionSegmentDelimiter`, usually `-`).
    pub delimiter: char,
}

/// How a journal name allocates voucher numbers (`JournalNames.NewVoucher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoucherAllocation {
    /// "In connection with balance": a new voucher starts when the running balance is zero.
    InConnectionWithBalance,
    /// "One voucher number only".
    OneVoucherNumberOnly,
    /// "Manual": the client must send `Voucher`.
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalName {
    pub name: String,
    pub description: String,
    /// `Type`, e.g. `Daily`.
    pub journal_type: String,
    pub voucher_allocation: VoucherAllocation,
    pub workflow_approval: bool,
}

/// Status of a ledger fiscal period for the General ledger module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeriodStatus {
    Open,
    OnHold,
    Closed,
}

/// One operating period of the ledger's fiscal calendar with its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiscalPeriod {
    pub calendar: String,
    pub year: String,
    pub name: String,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub status: PeriodStatus,
}

/// The ledger (`Ledgers`) of one legal entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub legal_entity: String,
    pub chart_of_accounts: String,
    pub fiscal_calendar: String,
    pub accounting_currency: String,
}

/// Everything validation needs for one legal entity (dataAreaId, lower case).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceData {
    pub legal_entity: String,
    pub ledger: Ledger,
    pub format: DimensionFormat,
    /// Keyed by main account id.
    pub main_accounts: BTreeMap<String, MainAccount>,
    /// Keyed by (dimension name, value).
    pub dimension_values: BTreeMap<(String, String), DimensionValue>,
    /// Keyed by journal name.
    pub journal_names: BTreeMap<String, JournalName>,
    pub periods: Vec<FiscalPeriod>,
}

impl ReferenceData {
    /// The operating period containing `date`, if the calendar has one.
    pub fn period_for(&self, date: NaiveDate) -> Option<&FiscalPeriod> {
        self.periods
            .iter()
            .find(|p| p.start <= date && date <= p.end)
    }
}

/// Whether `date` lies in `[from, to]`, treating missing bounds as open.
pub fn active_on(from: Option<NaiveDate>, to: Option<NaiveDate>, date: NaiveDate) -> bool {
    from.is_none_or(|f| f <= date) && to.is_none_or(|t| date <= t)
}
