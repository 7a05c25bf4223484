//! The journal the connector intends to create: lines grouped into balanced vouchers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::money::{self, Overflow};
use super::reference::DimensionFormat;

/// Dimension name → value of a ledger account, sorted by name.
///
/// Shared behind an `Arc`: the lines of a 100,000-row extract use a handful of dimension
/// combinations, and mapping hands each line a clone of one interned value instead of a
/// `BTreeMap` node (~0.5 KiB) per line. Ordering, equality and the JSON shape (an object) are
/// those of the map it replaces.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dimensions(Arc<Vec<(String, String)>>);

impl Dimensions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.position(name).ok().map(|i| &self.0[i].1)
    }

    /// Sets `name` (copy-on-write when shared); returns the previous value.
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        match self.position(&name) {
            Ok(i) => Some(std::mem::replace(
                &mut Arc::make_mut(&mut self.0)[i].1,
                value,
            )),
            Err(i) => {
                Arc::make_mut(&mut self.0).insert(i, (name, value));
                None
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> + '_ {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> + '_ {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether both are the same interned set (not merely equal).
    pub fn shares_with(&self, other: &Dimensions) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }
}

impl<'a> IntoIterator for &'a Dimensions {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl FromIterator<(String, String)> for Dimensions {
    /// Later duplicates win, as with a map.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let map: BTreeMap<String, String> = iter.into_iter().collect();
        Self::from(map)
    }
}

impl From<BTreeMap<String, String>> for Dimensions {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(Arc::new(map.into_iter().collect()))
    }
}

impl fmt::Debug for Dimensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Dimensions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Dimensions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Self::from)
    }
}

/// A ledger account: main account plus financial dimension values by dimension name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LedgerAccount {
    pub main_account: String,
    /// Dimension name → value; dimensions not listed are blank segments.
    pub dimensions: Dimensions,
}

impl LedgerAccount {
    pub fn new(main_account: impl Into<String>) -> Self {
        Self {
            main_account: main_account.into(),
            dimensions: Dimensions::new(),
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
    /// The amount column of the row this line came from, when a row makes several lines
    /// (`[[lines]]`): with `source_rows` its lineage. Absent for one line per row, so those
    /// lines and their audit records are as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_column: Option<String>,
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

/// Which of a legal entity's journal headers a line belongs to: a large journal is split into
/// several headers (`journal.max_journal_lines`) of whole vouchers, each with its own natural key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JournalPart {
    /// 1-based.
    pub part: u32,
    /// How many parts the legal entity's journal has.
    pub of: u32,
}

impl Default for JournalPart {
    /// A journal that was not split (also what audit records from before splitting read as).
    fn default() -> Self {
        JournalPart { part: 1, of: 1 }
    }
}

impl JournalPart {
    pub fn is_split(&self) -> bool {
        self.of > 1
    }
}

impl std::fmt::Display for JournalPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "part {} of {}", self.part, self.of)
    }
}

/// One journal header and its lines, for one legal entity (or one part of its journal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// dataAreaId, lower case.
    pub legal_entity: String,
    pub journal_name: String,
    /// Header `Description`; starts with the part's natural key (see `mapping::part_key`).
    pub description: String,
    /// Which part of the legal entity's journal this header is.
    #[serde(default)]
    pub part: JournalPart,
    pub lines: Vec<JournalLine>,
}

impl Journal {
    /// Sum of debits and sum of credits (absolute), per currency; [`Overflow`] when a sum does
    /// not fit a decimal.
    pub fn totals(&self) -> Result<BTreeMap<String, (Decimal, Decimal)>, Overflow> {
        let mut t: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
        for l in &self.lines {
            let e = t.entry(l.currency.clone()).or_default();
            money::add_to(&mut e.0, l.debit())?;
            money::add_to(&mut e.1, l.credit())?;
            if l.offset_account.is_some() {
                // The offset side posts the opposite amount.
                money::add_to(&mut e.0, l.credit())?;
                money::add_to(&mut e.1, l.debit())?;
            }
        }
        Ok(t)
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
    fn dimensions_behave_like_the_map_they_replace() {
        let mut a = Dimensions::new();
        assert_eq!(a.insert("Department".into(), "OPS".into()), None);
        assert_eq!(a.insert("CostCenter".into(), "022".into()), None);
        let shared = a.clone();
        assert_eq!(
            a.insert("CostCenter".into(), "031".into()),
            Some("022".into())
        );
        assert_eq!(shared.get("CostCenter").map(String::as_str), Some("022"));
        assert!(!a.shares_with(&shared), "copy on write");
        let map: BTreeMap<String, String> = [
            ("Department".to_string(), "OPS".to_string()),
            ("CostCenter".to_string(), "031".to_string()),
        ]
        .into();
        assert_eq!(a, Dimensions::from(map.clone()));
        assert_eq!(a.keys().collect::<Vec<_>>(), map.keys().collect::<Vec<_>>());
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        let back: Dimensions = serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
        assert_eq!(back, a);
        // Ordered as the maps are (balancing lines are grouped by account in this order).
        let other: BTreeMap<String, String> = [("CostCenter".to_string(), "1".to_string())].into();
        assert_eq!(Dimensions::from(other.clone()).cmp(&a), other.cmp(&map));
    }

    #[test]
    fn totals_are_checked() {
        let line = |amount: &str, offset: bool| JournalLine {
            line_no: 1,
            voucher: 1,
            trans_date: NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
            account: LedgerAccount::new("618100"),
            offset_account: offset.then(|| LedgerAccount::new("200150")),
            currency: "USD".into(),
            amount: amount.parse().unwrap(),
            text: String::new(),
            kind: LineKind::Detail,
            source_rows: vec![0],
            source_column: None,
        };
        let j = |lines| Journal {
            legal_entity: "usmf".into(),
            journal_name: "GenJrn".into(),
            description: "x".into(),
            part: JournalPart::default(),
            lines,
        };
        let ok = j(vec![line("10.50", true), line("-4", false)]);
        let t = ok.totals().unwrap();
        assert_eq!(
            t["USD"],
            ("10.50".parse().unwrap(), "14.50".parse().unwrap())
        );
        let big = "50000000000000000000000000000";
        assert_eq!(
            j(vec![line(big, false), line(big, false)]).totals(),
            Err(Overflow)
        );
        assert_eq!(
            j(vec![line(big, true), line(big, false)]).totals(),
            Err(Overflow)
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
