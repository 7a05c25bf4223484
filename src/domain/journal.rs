//! The journal the connector intends to create: lines grouped into balanced vouchers.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::reference::DimensionFormat;

/// A ledger account: main account plus financial dimension values by dimension name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LedgerAccount {
    pub main_account: String,
    /// Dimension name → value; dimensions not listed are blank segments.
    pub dimensions: BTreeMap<String, String>,
}

impl LedgerAccount {
    pub fn new(main_account: impl Into<String>) -> Self {
        Self {
            main_account: main_account.into(),
            dimensions: BTreeMap::new(),
        }
    }

    /// `AccountDisplayValue` in the active ledger dimension format: main account first, then each
    /// segment in format order, blank where unused; a value containing the delimiter (or a
    /// backslash) is escaped with a backslash. Trailing blank segments are kept, as in MS's
    /// `401100---` example, so the string always has the format's full shape.
    pub fn display_value(&self, format: &DimensionFormat) -> String {
        let esc = |v: &str| -> String {
            let mut out = String::with_capacity(v.len());
            for c in v.chars() {
                if c == format.delimiter || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        };
        let mut parts = Vec::with_capacity(format.segments.len());
        for (i, seg) in format.segments.iter().enumerate() {
            if i == 0 {
                parts.push(esc(&self.main_account));
            } else {
                parts.push(esc(self
                    .dimensions
                    .get(seg)
                    .map(String::as_str)
                    .unwrap_or("")));
            }
        }
        parts.join(&format.delimiter.to_string())
    }
}

/// Why a line exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Mapped from one source row.
    Detail,
    /// Balances a voucher against the configured balancing account.
    Balancing,
    /// Carries the rounding residue to the configured rounding account.
    Rounding,
}

/// One line the connector will create in `LedgerJournalLines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalLine {
    /// 1-based, unique within the journal; written into `Text` as the lineage reference.
    pub line_no: u32,
    /// 1-based voucher index within the journal; lines of one voucher balance to zero.
    pub voucher: u32,
    pub trans_date: NaiveDate,
    pub account: LedgerAccount,
    /// Set when the line balances itself against an offset account (single-line voucher).
    pub offset_account: Option<LedgerAccount>,
    pub currency: String,
    /// Signed, already rounded to the currency: positive = debit, negative = credit.
    pub amount: Decimal,
    /// The `Text` sent to D365 (already includes the lineage reference).
    pub text: String,
    pub kind: LineKind,
    /// Source row indexes this line came from (empty for balancing lines).
    pub source_rows: Vec<usize>,
}

impl JournalLine {
    pub fn debit(&self) -> Decimal {
        if self.amount > Decimal::ZERO {
            self.amount
        } else {
            Decimal::ZERO
        }
    }

    pub fn credit(&self) -> Decimal {
        if self.amount < Decimal::ZERO {
            -self.amount
        } else {
            Decimal::ZERO
        }
    }
}

/// One journal header and its lines, for one legal entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// dataAreaId, lower case.
    pub legal_entity: String,
    pub journal_name: String,
    /// Header `Description`; starts with the run's natural key.
    pub description: String,
    pub lines: Vec<JournalLine>,
}

impl Journal {
    /// Sum of debits and sum of credits (absolute), per currency.
    pub fn totals(&self) -> BTreeMap<String, (Decimal, Decimal)> {
        let mut t: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
        for l in &self.lines {
            let e = t.entry(l.currency.clone()).or_default();
            e.0 += l.debit();
            e.1 += l.credit();
            if l.offset_account.is_some() {
                // The offset side posts the opposite amount.
                e.0 += l.credit();
                e.1 += l.debit();
            }
        }
        t
    }

    pub fn voucher_count(&self) -> usize {
        let mut v: Vec<u32> = self.lines.iter().map(|l| l.voucher).collect();
        v.dedup();
        v.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(segments: &[&str]) -> DimensionFormat {
        DimensionFormat {
            name: "Default".into(),
            segments: segments.iter().map(|s| s.to_string()).collect(),
            delimiter: '-',
        }
    }

    #[test]
    fn display_value_follows_format_order_with_blanks() {
        let mut a = LedgerAccount::new("618100");
        a.dimensions.insert("CostCenter".into(), "022".into());
        a.dimensions.insert("Channel".into(), "AMZ".into());
        let f = fmt(&["MainAccount", "Department", "CostCenter", "Channel"]);
        assert_eq!(a.display_value(&f), "618100--022-AMZ");
        let f = fmt(&["MainAccount", "Channel", "CostCenter"]);
        assert_eq!(a.display_value(&f), "618100-AMZ-022");
        assert_eq!(
            LedgerAccount::new("401100").display_value(&fmt(&["MainAccount", "A", "B", "C"])),
            "401100---"
        );
    }

    #[test]
    fn display_value_escapes_delimiter() {
        let mut a = LedgerAccount::new("110180");
        a.dimensions.insert("Customer".into(), "US-108".into());
        let f = fmt(&["MainAccount", "Customer"]);
        assert_eq!(a.display_value(&f), "110180-US\\-108");
    }
}
