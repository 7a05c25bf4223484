//! CSV and tab-separated attachments → rows of [`Cell::Text`].
//!
//! The [`csv`] crate splits the records (RFC 4180: quoted fields, `""` escapes, CRLF or LF line
//! ends, blank lines skipped). It is lenient where a ledger must not be: `"1,5"0` reads as
//! `1,50`, and a quote left open swallows the rest of the file into one field. Either would
//! post a wrong amount or drop rows without a word, so each record's raw text is checked
//! against the strict grammar ([`check_quoting`]) and a record that breaks it is refused with
//! its row, line and column named.

use std::sync::Arc;

use crate::domain::source::{Cell, Columns, SourceRow};

use super::{short, DeliveryError};

/// Parses `text` (header row first) into the query's columns and the rows.
pub(super) fn csv_rows(
    text: &str,
    delimiter: u8,
    query_fields: Option<&[String]>,
) -> Result<(Vec<String>, Vec<SourceRow>), DeliveryError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Records::new(text, delimiter);
    let header = match records.next_record(None)? {
        Some((header, _)) => header,
        None => return Err(rows_err("empty (no header row)")),
    };
    let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
    let columns = resolve_columns(header, query_fields)?;
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Err(rows_err(format!("duplicate column `{}`", short(c))));
        }
    }
    let shared = Columns::new(columns.clone());
    let mut rows = Vec::new();
    let mut index = 0usize;
    while let Some((record, line)) = records.next_record(Some((index, &columns)))? {
        if record.len() != columns.len() {
            return Err(rows_err(format!(
                "row {index} has {} values but the header has {} columns (line {line})",
                record.len(),
                columns.len()
            )));
        }
        let cells = record
            .iter()
            .map(|v| Some(Cell::Text(v.to_string())))
            .collect();
        rows.push(SourceRow::from_cells(index, Arc::clone(&shared), cells));
        index += 1;
    }
    Ok((columns, rows))
}

fn rows_err(message: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Rows(format!("csv: {message}"))
}

/// The csv reader plus the raw text, so that each record's own bytes can be checked.
struct Records<'a> {
    text: &'a [u8],
    delimiter: u8,
    reader: ::csv::Reader<&'a [u8]>,
    record: ::csv::StringRecord,
}

impl<'a> Records<'a> {
    fn new(text: &'a str, delimiter: u8) -> Self {
        let reader = ::csv::ReaderBuilder::new()
            .has_headers(false)
            .delimiter(delimiter)
            // Rows of the wrong width get this module's message (row and counts), not the
            // crate's.
            .flexible(true)
            .quoting(true)
            .double_quote(true)
            .escape(None)
            .comment(None)
            .trim(::csv::Trim::None)
            .from_reader(text.as_bytes());
        Records {
            text: text.as_bytes(),
            delimiter,
            reader,
            record: ::csv::StringRecord::new(),
        }
    }

    /// The next record and the line it starts on, after checking its quoting. `row` is the
    /// data row index and the columns (None for the header), for the error message.
    fn next_record(
        &mut self,
        row: Option<(usize, &[String])>,
    ) -> Result<Option<(&::csv::StringRecord, u64)>, DeliveryError> {
        let start = self.reader.position().byte();
        let what = |line: u64| match row {
            Some((index, _)) => format!("row {index}, line {line}"),
            None => format!("the header row, line {line}"),
        };
        let more = self
            .reader
            .read_record(&mut self.record)
            .map_err(|e| rows_err(format!("{}: {e}", what(start_line(&e)))))?;
        if !more {
            return Ok(None);
        }
        let line = self.record.position().map_or(0, |p| p.line());
        let end = self.reader.position().byte();
        let raw = usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.text.get(s..e))
            .unwrap_or_default();
        if let Err((column, problem)) = check_quoting(raw, self.delimiter) {
            let name = row
                .and_then(|(_, cols)| cols.get(column))
                .map_or_else(|| format!("{}", column + 1), |c| format!("`{}`", short(c)));
            return Err(rows_err(format!(
                "{}, column {name}: {problem}; nothing is posted (fix the quoting in the Look's export, or deliver JSON)",
                what(line)
            )));
        }
        Ok(Some((&self.record, line)))
    }
}

fn start_line(e: &::csv::Error) -> u64 {
    e.position().map_or(0, |p| p.line())
}

/// Checks one record's raw text against RFC 4180 quoting: a field that opens with `"` must
/// close with `"` directly followed by the delimiter or the end of the record. On failure:
/// the 0-based column and what is wrong. (A `"` inside an unquoted field is plain text, as the
/// csv crate reads it.)
fn check_quoting(raw: &[u8], delimiter: u8) -> Result<(), (usize, &'static str)> {
    #[derive(PartialEq)]
    enum State {
        FieldStart,
        Unquoted,
        Quoted,
        /// A `"` inside a quoted field: the closing quote, or the first of `""`.
        QuoteInQuoted,
    }
    let mut state = State::FieldStart;
    let mut column = 0usize;
    for &b in raw {
        let ends_field = b == delimiter || b == b'\n' || b == b'\r';
        state = match state {
            State::FieldStart | State::Unquoted if ends_field => State::FieldStart,
            State::FieldStart if b == b'"' => State::Quoted,
            State::FieldStart | State::Unquoted => State::Unquoted,
            State::Quoted if b == b'"' => State::QuoteInQuoted,
            State::Quoted => State::Quoted,
            State::QuoteInQuoted if b == b'"' => State::Quoted,
            State::QuoteInQuoted if ends_field => State::FieldStart,
            State::QuoteInQuoted => return Err((column, "text after a closing quote")),
        };
        if state == State::FieldStart && b == delimiter {
            column += 1;
        }
        if state == State::FieldStart && (b == b'\n' || b == b'\r') {
            // The record ends here; what follows is the next record's (or blank lines).
            column = 0;
        }
    }
    if state == State::Quoted {
        return Err((column, "a quoted field is not closed"));
    }
    Ok(())
}

/// The header's columns: field names as they are, or Looker labels resolved against the
/// delivery's `scheduled_plan.query.fields` when every label names its field word for word.
fn resolve_columns(
    header: Vec<String>,
    query_fields: Option<&[String]>,
) -> Result<Vec<String>, DeliveryError> {
    if header.iter().all(|h| looks_like_field_name(h)) {
        return Ok(header);
    }
    match query_fields {
        Some(fields) if fields.len() == header.len() => {
            for (label, field) in header.iter().zip(fields) {
                if !(label == field || label_matches(label, field)) {
                    return Err(rows_err(format!(
                        "header `{}` does not name the query's field `{}` at the same position; deliver CSV with field names as headers, or use JSON",
                        short(label),
                        short(field)
                    )));
                }
            }
            Ok(fields.to_vec())
        }
        _ => {
            let bad = header
                .iter()
                .find(|h| !looks_like_field_name(h))
                .map(|h| short(h))
                .unwrap_or_default();
            Err(rows_err(format!(
                "header `{bad}` is not a field name (`view.field`), and the delivery's `scheduled_plan.query.fields` cannot resolve the labels; deliver JSON instead"
            )))
        }
    }
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

fn looks_like_field_name(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// `label` names `field` when its words are the field's words, or their tail (a label without
/// the view name).
fn label_matches(label: &str, field: &str) -> bool {
    let l = words(label);
    let f = words(field);
    !l.is_empty() && l.len() <= f.len() && f[f.len() - l.len()..] == l[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Result<Vec<Vec<String>>, String> {
        csv_rows(text, b',', None)
            .map(|(cols, rows)| {
                rows.iter()
                    .map(|r| {
                        cols.iter()
                            .map(|c| match r.get(c) {
                                Some(Cell::Text(t)) => t.clone(),
                                other => format!("{other:?}"),
                            })
                            .collect()
                    })
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn well_formed_records() {
        let r = rows("v.a,v.amount\r\n\"x, \"\"y\"\"\",1.50\n\nz,\"2\r\n0\"\rq,3").unwrap();
        assert_eq!(
            r,
            vec![
                vec!["x, \"y\"".to_string(), "1.50".into()],
                vec!["z".into(), "2\r\n0".into()],
                vec!["q".into(), "3".into()],
            ]
        );
        // A quote inside an unquoted field is text.
        assert_eq!(rows("v.a,v.b\nx\"y,1\n").unwrap()[0][0], "x\"y");
    }

    #[test]
    fn text_after_a_closing_quote_is_refused_with_row_line_and_column() {
        // The csv crate alone reads `"1,5"0` as `1,50`: a wrong amount.
        let e = rows("v.a,v.amount\nok,1\nfee,\"1,5\"0\n").unwrap_err();
        assert!(
            e.contains("row 1, line 3")
                && e.contains("`v.amount`")
                && e.contains("text after a closing quote"),
            "{e}"
        );
        let e = rows("v.a,\"v.b\"x\n1,2\n").unwrap_err();
        assert!(
            e.contains("header row, line 1") && e.contains("column 2"),
            "{e}"
        );
    }

    #[test]
    fn an_open_quote_is_refused_not_swallowed() {
        // The csv crate alone would read everything after the quote as one field.
        let e = rows("v.a,v.amount\nfee,\"10\nfee,20\nfee,30\n").unwrap_err();
        assert!(
            e.contains("row 0, line 2") && e.contains("not closed"),
            "{e}"
        );
    }

    #[test]
    fn wrong_width_names_the_row() {
        let e = rows("v.a,v.amount\nx,1\ny\n").unwrap_err();
        assert!(
            e.contains("row 1 has 1 values but the header has 2 columns (line 3)"),
            "{e}"
        );
        assert!(rows("").unwrap_err().contains("no header row"));
        assert!(rows("v.a,v.a\n1,2\n")
            .unwrap_err()
            .contains("duplicate column"));
    }

    #[test]
    fn check_quoting_grammar() {
        assert!(check_quoting(b"a,\"b\"\"c\",d\r\n", b',').is_ok());
        assert!(check_quoting(b"\"\",\"\"", b',').is_ok());
        assert_eq!(
            check_quoting(b"a,b,\"c\"d", b','),
            Err((2, "text after a closing quote"))
        );
        assert_eq!(
            check_quoting(b"a\t\"b", b'\t'),
            Err((1, "a quoted field is not closed"))
        );
    }
}
