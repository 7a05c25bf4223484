//! Journal headers and lines as the general ledger holds them: what the ledger port speaks and
//! what a reconciliation compares.
//!
//! These types mirror `crate::d365::journal` field for field on purpose: the engine and the
//! controls see a ledger, not OData; the adapter's types carry F&O's wire detail (its entity
//! names, `dataAreaId` casing, `$batch` changesets) and may grow with it without the engine,
//! the converge simulator or test doubles having to follow. `crate::d365::port` converts.

use chrono::NaiveDate;
use rust_decimal::Decimal;

/// A journal header as D365 holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerHeader {
    pub legal_entity: String,
    pub batch_number: String,
    pub journal_name: String,
    pub description: String,
    pub is_posted: bool,
}

/// A journal line as D365 holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerLine {
    pub batch_number: String,
    pub line_number: String,
    pub voucher: String,
    pub trans_date: NaiveDate,
    pub account_display: String,
    pub offset_display: Option<String>,
    pub debit: Decimal,
    pub credit: Decimal,
    pub currency: String,
    pub text: String,
}

/// A line to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLedgerLine {
    pub legal_entity: String,
    pub batch_number: String,
    pub trans_date: NaiveDate,
    pub account_display: String,
    pub offset_display: Option<String>,
    pub debit: Decimal,
    pub credit: Decimal,
    pub currency: String,
    pub text: String,
    pub voucher: Option<String>,
}
