//! General journal headers and lines (`LedgerJournalHeaders` / `LedgerJournalLines`): reading
//! them back for reconciliation, and creating them one request at a time.
//!
//! Amounts go on the wire as JSON numbers printed from `Decimal`, never through `f64`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::value::RawValue;

use super::names::{self, header as h, line as l};
use super::odata::{quote, Row};
use super::{D365Client, D365Error};

/// A journal header as F&O has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalHeader {
    /// dataAreaId, lower case.
    pub legal_entity: String,
    /// Server-assigned `JournalBatchNumber`.
    pub batch_number: String,
    pub journal_name: String,
    pub description: String,
    pub is_posted: bool,
}

impl fmt::Display for JournalHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "journal {} ({}) in {}: {}",
            self.batch_number, self.journal_name, self.legal_entity, self.description
        )
    }
}

/// A journal line as F&O has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalLineRow {
    pub legal_entity: String,
    pub batch_number: String,
    /// `LineNumber` as F&O sent it (a number, e.g. `"3"`).
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

/// A line to create. `LineNumber` is assigned by F&O; `Voucher` only when the journal name
/// uses manual vouchers or the caller wants to force one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJournalLine {
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

/// `YYYY-MM-DDT12:00:00Z`: noon UTC keeps the date stable in every time zone.
pub(crate) fn odata_date(d: NaiveDate) -> String {
    format!("{}T12:00:00Z", d.format("%Y-%m-%d"))
}

fn raw_str(s: &str) -> Box<RawValue> {
    RawValue::from_string(serde_json::to_string(s).expect("string serializes"))
        .expect("serialized string is JSON")
}

/// The exact decimal as a JSON number literal.
fn raw_dec(d: Decimal) -> Box<RawValue> {
    RawValue::from_string(d.to_string()).expect("Decimal prints as a JSON number")
}

pub(crate) fn company(legal_entity: &str) -> Result<String, D365Error> {
    let c = legal_entity.trim().to_ascii_lowercase();
    if c.is_empty() {
        return Err(D365Error::InvalidInput("legal entity is empty".into()));
    }
    Ok(c)
}

fn parse_header(r: &Row) -> Result<JournalHeader, D365Error> {
    Ok(JournalHeader {
        legal_entity: r.str(names::DATA_AREA_ID)?.to_ascii_lowercase(),
        batch_number: r.str(h::BATCH_NUMBER)?,
        journal_name: r.str(h::JOURNAL_NAME)?,
        description: r.str(h::DESCRIPTION)?,
        is_posted: r.yes_no(h::IS_POSTED)?,
    })
}

pub(crate) fn parse_line(r: &Row) -> Result<JournalLineRow, D365Error> {
    let line_number = match r.decimal(l::LINE_NUMBER) {
        Ok(d) => d.normalize().to_string(),
        Err(_) => r.str(l::LINE_NUMBER)?,
    };
    Ok(JournalLineRow {
        legal_entity: r.str(names::DATA_AREA_ID)?.to_ascii_lowercase(),
        batch_number: r.str(l::BATCH_NUMBER)?,
        line_number,
        voucher: r.str(l::VOUCHER)?,
        trans_date: r.req_date(l::TRANS_DATE)?,
        account_display: r.str(l::ACCOUNT)?,
        offset_display: r.opt_str(l::OFFSET_ACCOUNT),
        debit: r.decimal(l::DEBIT)?,
        credit: r.decimal(l::CREDIT)?,
        currency: r.str(l::CURRENCY)?,
        text: r.str(l::TEXT)?,
    })
}

impl D365Client {
    /// Headers of `legal_entity` whose Description starts with `description_prefix` (F&O's `*`
    /// wildcard; F&O compares case-insensitively, so callers must check exact matches
    /// themselves). Used to find a run's journal before creating one.
    pub async fn find_headers(
        &self,
        legal_entity: &str,
        description_prefix: &str,
    ) -> Result<Vec<JournalHeader>, D365Error> {
        let c = company(legal_entity)?;
        if description_prefix.contains('*') {
            return Err(D365Error::InvalidInput(
                "a description prefix must not contain `*` (F&O's wildcard)".into(),
            ));
        }
        let filter = format!(
            "{} eq {} and {} eq {}",
            names::DATA_AREA_ID,
            quote(&c),
            h::DESCRIPTION,
            quote(&format!("{description_prefix}*"))
        );
        self.odata
            .get_all(h::SET, Some(filter), &[])
            .await?
            .iter()
            .map(parse_header)
            .collect()
    }

    /// Creates a header; F&O assigns `JournalBatchNumber` from its number sequence.
    pub async fn create_header(
        &self,
        legal_entity: &str,
        journal_name: &str,
        description: &str,
    ) -> Result<JournalHeader, D365Error> {
        let c = company(legal_entity)?;
        let mut body: BTreeMap<&str, Box<RawValue>> = BTreeMap::new();
        body.insert(names::DATA_AREA_ID, raw_str(&c));
        body.insert(h::JOURNAL_NAME, raw_str(journal_name));
        body.insert(h::DESCRIPTION, raw_str(description));
        let bytes = serde_json::to_vec(&body).expect("map serializes");
        let row = self.odata.post(h::SET, bytes).await?;
        // The record exists now: failing to read it back must not look like "nothing saved".
        let header = parse_header(&row).map_err(|e| D365Error::OutcomeUnknown {
            entity: h::SET.into(),
            detail: format!("header created but its answer could not be read: {e}"),
        })?;
        if header.batch_number.is_empty() {
            return Err(D365Error::OutcomeUnknown {
                entity: h::SET.into(),
                detail: "header created but F&O returned no JournalBatchNumber".into(),
            });
        }
        Ok(header)
    }

    /// One header by batch number, `None` if it does not exist (e.g. deleted by finance).
    pub async fn header(
        &self,
        legal_entity: &str,
        batch: &str,
    ) -> Result<Option<JournalHeader>, D365Error> {
        let c = company(legal_entity)?;
        let filter = format!(
            "{} eq {} and {} eq {}",
            names::DATA_AREA_ID,
            quote(&c),
            h::BATCH_NUMBER,
            quote(batch)
        );
        let rows = self.odata.get_all(h::SET, Some(filter), &[]).await?;
        let mut found = rows
            .iter()
            .map(parse_header)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|hd| hd.batch_number.eq_ignore_ascii_case(batch));
        let first = found.next();
        if found.next().is_some() {
            return Err(D365Error::Protocol {
                entity: h::SET.into(),
                detail: format!("more than one header with batch number {batch} in {c}"),
            });
        }
        Ok(first)
    }

    /// All lines of a journal (every page), ordered by line number.
    pub async fn lines(
        &self,
        legal_entity: &str,
        batch: &str,
    ) -> Result<Vec<JournalLineRow>, D365Error> {
        let c = company(legal_entity)?;
        let filter = format!(
            "{} eq {} and {} eq {}",
            names::DATA_AREA_ID,
            quote(&c),
            l::BATCH_NUMBER,
            quote(batch)
        );
        let rows = self.odata.get_all(l::SET, Some(filter), &[]).await?;
        let mut lines = rows.iter().map(parse_line).collect::<Result<Vec<_>, _>>()?;
        lines.sort_by(|a, b| {
            let key = |s: &str| s.parse::<Decimal>().ok();
            key(&a.line_number)
                .cmp(&key(&b.line_number))
                .then_with(|| a.line_number.cmp(&b.line_number))
        });
        Ok(lines)
    }

    /// Creates one line. A 5xx/timeout gives `OutcomeUnknown`: re-read [`Self::lines`] before
    /// deciding to send it again.
    pub async fn create_line(&self, line: &NewJournalLine) -> Result<JournalLineRow, D365Error> {
        let bytes = line_body(line)?;
        let row = self.odata.post(l::SET, bytes).await?;
        parse_line(&row).map_err(|e| D365Error::OutcomeUnknown {
            entity: l::SET.into(),
            detail: format!("line created but its answer could not be read: {e}"),
        })
    }

    /// Deletes one line of an unposted journal by its full key. `Ok(true)`: deleted;
    /// `Ok(false)`: no such line. F&O refuses lines of posted journals (`Rejected`). A
    /// 5xx/timeout gives `OutcomeUnknown`: re-read [`Self::lines`] — F&O hands out `max + 1`
    /// line numbers, so after a delete the same number can belong to a new line.
    pub async fn delete_line(
        &self,
        legal_entity: &str,
        batch: &str,
        line_number: &str,
    ) -> Result<bool, D365Error> {
        let key = line_key_path(legal_entity, batch, line_number)?;
        self.odata.delete(l::SET, &key).await
    }

    /// Deletes an unposted journal (F&O deletes its lines with it). `Ok(false)`: no such
    /// journal. Posted journals are refused (`Rejected`); 5xx/timeout → `OutcomeUnknown`.
    pub async fn delete_header(&self, legal_entity: &str, batch: &str) -> Result<bool, D365Error> {
        let c = company(legal_entity)?;
        key_value(batch)?;
        let key = format!(
            "{}({}={},{}={})",
            h::SET,
            names::DATA_AREA_ID,
            quote(&c),
            h::BATCH_NUMBER,
            quote(batch)
        );
        self.odata.delete(h::SET, &key).await
    }
}

/// `LedgerJournalLines(dataAreaId='…',JournalBatchNumber='…',LineNumber=n)`: the key path of
/// one line, for a DELETE on its own or inside a `$batch` changeset.
pub(crate) fn line_key_path(
    legal_entity: &str,
    batch: &str,
    line_number: &str,
) -> Result<String, D365Error> {
    let c = company(legal_entity)?;
    key_value(batch)?;
    let n: Decimal = line_number.trim().parse().map_err(|_| {
        D365Error::InvalidInput(format!("line number `{line_number}` is not a number"))
    })?;
    Ok(format!(
        "{}({}={},{}={},{}={})",
        l::SET,
        names::DATA_AREA_ID,
        quote(&c),
        l::BATCH_NUMBER,
        quote(batch),
        l::LINE_NUMBER,
        n.normalize()
    ))
}

/// A key value that can go into a URL path as-is (F&O mis-handles encoded `/`, T7).
fn key_value(v: &str) -> Result<(), D365Error> {
    if v.trim().is_empty() || v.contains(['/', '\\', '?', '#', '%']) {
        return Err(D365Error::InvalidInput(format!(
            "`{v}` cannot be used in a key URL (empty or contains / \\ ? # %)"
        )));
    }
    Ok(())
}

/// The JSON body F&O gets for a new line (single POST or one `$batch` operation).
pub(crate) fn line_body(line: &NewJournalLine) -> Result<Vec<u8>, D365Error> {
    let c = company(&line.legal_entity)?;
    let mut body: BTreeMap<&str, Box<RawValue>> = BTreeMap::new();
    body.insert(names::DATA_AREA_ID, raw_str(&c));
    body.insert(l::BATCH_NUMBER, raw_str(&line.batch_number));
    body.insert(l::TRANS_DATE, raw_str(&odata_date(line.trans_date)));
    body.insert(l::ACCOUNT_TYPE, raw_str(l::ACCOUNT_TYPE_LEDGER));
    body.insert(l::ACCOUNT, raw_str(&line.account_display));
    if let Some(off) = line.offset_display.as_deref().filter(|s| !s.is_empty()) {
        body.insert(l::OFFSET_ACCOUNT_TYPE, raw_str(l::ACCOUNT_TYPE_LEDGER));
        body.insert(l::OFFSET_ACCOUNT, raw_str(off));
    }
    body.insert(l::DEBIT, raw_dec(line.debit));
    body.insert(l::CREDIT, raw_dec(line.credit));
    body.insert(l::CURRENCY, raw_str(&line.currency));
    body.insert(l::TEXT, raw_str(&line.text));
    if let Some(v) = line.voucher.as_deref().filter(|s| !s.is_empty()) {
        body.insert(l::VOUCHER, raw_str(v));
    }
    Ok(serde_json::to_vec(&body).expect("map serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn decimals_are_exact_json_numbers() {
        let d = Decimal::from_str("1234.57").unwrap();
        assert_eq!(raw_dec(d).get(), "1234.57");
        assert_eq!(raw_dec(Decimal::ZERO).get(), "0");
        assert_eq!(raw_dec(Decimal::from_str("-0.10").unwrap()).get(), "-0.10");
        assert_eq!(
            raw_dec(Decimal::from_str("98765432109876.01").unwrap()).get(),
            "98765432109876.01"
        );
        assert_eq!(
            odata_date(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()),
            "2026-03-01T12:00:00Z"
        );
        assert_eq!(raw_str("a\"b").get(), r#""a\"b""#);
    }
}
