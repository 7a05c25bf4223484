//! Turning Looker result bodies (`json`, `json_detail`) into [`SourceRow`]s, exactly.
//!
//! Amounts are money: every cell is read from its raw JSON literal and numbers go straight to
//! [`Cell::from_json_number_literal`], never through `f64`. Row objects are read in document
//! order (not via a sorted map) so column order for Looks can follow what Looker sent.

use std::fmt;
use std::io::{BufReader, Read};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::LookerError;
use crate::domain::source::{Cell, RowsBuilder, SourceRow};

/// One result row as Looker sent it: `(field, raw JSON value)` in document order.
#[derive(Debug)]
pub(crate) struct RawRow(pub Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for RawRow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRow;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a row object keyed by field name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRow, A::Error> {
                let mut cells: Vec<(String, Box<RawValue>)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if cells.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!("duplicate field `{key}`")));
                    }
                    let value: Box<RawValue> = map.next_value()?;
                    cells.push((key, value));
                }
                Ok(RawRow(cells))
            }
        }
        d.deserialize_map(V)
    }
}

/// Rows of a `json` result, with the result-level error check applied.
#[derive(Debug)]
pub(crate) struct RawRows(pub Vec<RawRow>);

impl<'de> Deserialize<'de> for RawRows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRows;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON array of row objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRows, A::Error> {
                let mut rows = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(10_000));
                while let Some(row) = seq.next_element::<RawRow>()? {
                    rows.push(row);
                }
                Ok(RawRows(rows))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Converts one raw JSON literal into a [`Cell`]. `Err` carries a short description of what
/// was found instead of a scalar (pivoted measures arrive as objects).
pub(crate) fn raw_to_cell(raw: &RawValue) -> Result<Cell, String> {
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'n') if text == "null" => Ok(Cell::Null),
        Some(b't') if text == "true" => Ok(Cell::Bool(true)),
        Some(b'f') if text == "false" => Ok(Cell::Bool(false)),
        Some(b'"') => serde_json::from_str::<String>(text)
            .map(Cell::Text)
            .map_err(|e| format!("unreadable string ({e})")),
        Some(b'-' | b'0'..=b'9') => Ok(Cell::from_json_number_literal(text)),
        Some(b'{') => Err(
            "an object (pivoted measures are not supported; remove the pivot from the Look/query)"
                .into(),
        ),
        Some(b'[') => Err("an array (only scalar values are supported)".into()),
        _ => Err(format!("an unexpected value `{}`", truncate(text, 40))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn cell_error(what: &str, index: usize, field: &str, found: String) -> LookerError {
    LookerError::Parse {
        what: what.to_string(),
        message: format!("row {index}, field `{field}`: expected a number, text, boolean or null but found {found}"),
    }
}

/// Looker reports SQL errors of a `json` run as a 200 whose single row is `{"looker_error": …}`.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
fn looker_error_of(row: &RawRow) -> Option<String> {
    let (_, raw) = row.0.iter().find(|(k, _)| k == "looker_error")?;
    Some(serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_string()))
}

/// Converts raw `json` rows; also returns the field names in first-seen order. (The client
/// uses [`parse_json_rows_streaming`]; this serves the webhook's attachment parser.)
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
pub(crate) fn convert_json_rows(
    raw: RawRows,
) -> Result<(Vec<String>, Vec<SourceRow>), LookerError> {
    let mut rows = RowsBuilder::default();
    for (index, row) in raw.0.into_iter().enumerate() {
        if let Some(msg) = looker_error_of(&row) {
            return Err(LookerError::QueryFailed(msg));
        }
        for (field, value) in row.0 {
            let cell = raw_to_cell(&value)
                .map_err(|found| cell_error("json result", index, &field, found))?;
            rows.push(&field, cell).map_err(|e| LookerError::Parse {
                what: "json result".into(),
                message: e.to_string(),
            })?;
        }
        rows.finish_row();
    }
    Ok(rows.finish())
}

/// Parses a `json` result body (an array of flat objects keyed by `view.field`).
///
/// Row `index` is the position in the result. A result carrying `looker_error` (how Looker
/// reports a failed SQL query in this format) is an error, not a row. Streams like
/// [`parse_json_rows_streaming`].
pub fn parse_json_rows(body: &[u8]) -> Result<Vec<SourceRow>, LookerError> {
    parse_json_rows_streaming(body).map(|(_, rows)| rows)
}

/// Parses a `json` result body in one pass, building each [`SourceRow`] straight from the raw
/// literals in `body` (no intermediate `Value` or raw-row list), so peak memory is the body
/// plus the rows. Returns the field names in first-seen order and the rows.
///
/// Same rules as [`parse_json_rows`]: numbers exact, scalars only, duplicate fields and
/// `looker_error` rows refused, errors name the row and field.
pub fn parse_json_rows_streaming(
    body: &[u8],
) -> Result<(Vec<String>, Vec<SourceRow>), LookerError> {
    let mut state = StreamState::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let outcome = RowsSeed::<false> { state: &mut state }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some(failure) = state.failure.take() {
        return Err(failure);
    }
    outcome.map_err(|e| LookerError::Parse {
        what: "json result".into(),
        message: describe_json_error(body, &e),
    })?;
    Ok(state.rows.finish())
}

/// Parses a `json` result from a reader (the network body as it arrives), with the same rules
/// and errors as [`parse_json_rows_streaming`]; only the rows and a small read buffer are
/// held, never the whole body.
pub fn parse_json_rows_from_reader<R: Read>(
    reader: R,
) -> Result<(Vec<String>, Vec<SourceRow>), LookerError> {
    let mut head = HeadRecorder {
        inner: reader,
        head: Vec::new(),
    };
    let mut state = StreamState::default();
    let outcome = {
        let mut de =
            serde_json::Deserializer::from_reader(BufReader::with_capacity(64 * 1024, &mut head));
        RowsSeed::<true> { state: &mut state }
            .deserialize(&mut de)
            .and_then(|()| de.end())
    };
    if let Some(failure) = state.failure.take() {
        return Err(failure);
    }
    outcome.map_err(|e| {
        // The parser may have stopped within the first bytes: read up to what is quoted.
        let mut scratch = [0u8; HEAD_BYTES];
        while head.head.len() < HEAD_BYTES {
            match head.read(&mut scratch[..HEAD_BYTES - head.head.len()]) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        LookerError::Parse {
            what: "json result".into(),
            message: describe_json_error(&head.head, &e),
        }
    })?;
    Ok(state.rows.finish())
}

/// Keeps the first bytes read, for the "body starts with" part of error messages.
struct HeadRecorder<R> {
    inner: R,
    head: Vec<u8>,
}

impl<R: Read> Read for HeadRecorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let room = HEAD_BYTES.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..room]);
        Ok(n)
    }
}

/// How much of a body error messages quote.
const HEAD_BYTES: usize = 120;

/// A blocking [`Read`] over body chunks sent from the async side through a bounded channel.
struct ChunkReader<B> {
    rx: tokio::sync::mpsc::Receiver<B>,
    current: Option<B>,
    pos: usize,
}

impl<B: AsRef<[u8]>> Read for ChunkReader<B> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(chunk) = &self.current {
                let rest = &chunk.as_ref()[self.pos..];
                if !rest.is_empty() {
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.current = Some(chunk);
                    self.pos = 0;
                }
                // Sender dropped: the body ended (or the transfer failed; the caller knows).
                None => return Ok(0),
            }
        }
    }
}

/// Reads a `json` result body from the network into rows as it arrives: chunks go through a
/// small bounded channel to [`parse_json_rows_from_reader`] on a blocking thread, so at most
/// a few chunks of the body are in memory, never all of it. The outer error is a transfer
/// failure (`label` names the request), reported before any parse error it caused; the inner
/// result is the parse, like [`parse_json_rows_streaming`]'s.
pub(crate) async fn read_json_rows(
    mut resp: reqwest::Response,
    label: &str,
) -> Result<ParsedRows, LookerError> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let parser = tokio::task::spawn_blocking(move || {
        parse_json_rows_from_reader(ChunkReader {
            rx,
            current: None,
            pos: 0,
        })
    });
    let mut transfer = Ok(());
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(chunk).await.is_err() {
                    break; // the parser stopped early: its error says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                transfer = Err(LookerError::transport(label, e));
                break;
            }
        }
    }
    drop(tx);
    let parsed = parser.await.map_err(|e| LookerError::Parse {
        what: "json result".into(),
        message: format!("the row parser stopped: {e}"),
    });
    transfer?;
    Ok(parsed.and_then(|r| r))
}

/// A parse result: the columns seen and the rows, or why the body is not a result.
pub(crate) type ParsedRows = Result<(Vec<String>, Vec<SourceRow>), LookerError>;

#[derive(Default)]
struct StreamState {
    rows: RowsBuilder,
    /// A row-level failure with its proper [`LookerError`] kind; serde only carries text.
    failure: Option<LookerError>,
}

impl StreamState {
    fn fail<E: de::Error>(&mut self, e: LookerError) -> E {
        let text = e.to_string();
        self.failure = Some(e);
        E::custom(text)
    }
}

/// `OWNED`: cells are read as owned raw literals (a reader cannot lend its buffer); otherwise
/// they are borrowed from the body slice.
struct RowsSeed<'a, const OWNED: bool> {
    state: &'a mut StreamState,
}

impl<'de, const OWNED: bool> DeserializeSeed<'de> for RowsSeed<'_, OWNED> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, const OWNED: bool> Visitor<'de> for RowsSeed<'_, OWNED> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of row objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(RowSeed::<OWNED> {
                state: &mut *self.state,
            })?
            .is_some()
        {}
        Ok(())
    }
}

struct RowSeed<'a, const OWNED: bool> {
    state: &'a mut StreamState,
}

impl<'de, const OWNED: bool> DeserializeSeed<'de> for RowSeed<'_, OWNED> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const OWNED: bool> Visitor<'de> for RowSeed<'_, OWNED> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row object keyed by field name")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.state;
        let index = state.rows.len();
        while let Some(field) = map.next_key::<String>()? {
            let owned: Box<RawValue>;
            let raw: &RawValue = if OWNED {
                owned = map.next_value()?;
                &owned
            } else {
                map.next_value::<&'de RawValue>()?
            };
            if field == "looker_error" {
                let msg = serde_json::from_str::<String>(raw.get())
                    .unwrap_or_else(|_| raw.get().to_string());
                return Err(state.fail(LookerError::QueryFailed(msg)));
            }
            let cell = match raw_to_cell(raw) {
                Ok(c) => c,
                Err(found) => {
                    return Err(state.fail(cell_error("json result", index, &field, found)))
                }
            };
            state.rows.push(&field, cell).map_err(de::Error::custom)?;
        }
        state.rows.finish_row();
        Ok(())
    }
}

/// A short, useful description of why a body is not the JSON we expected (Looker sometimes
/// answers an error object, or an HTML page from a proxy).
pub(crate) fn describe_json_error(body: &[u8], e: &serde_json::Error) -> String {
    let start = String::from_utf8_lossy(&body[..body.len().min(120)]).replace(['\n', '\r'], " ");
    format!("{e} (body starts with `{start}`)")
}

#[derive(Deserialize)]
struct DetailField {
    name: String,
}

#[derive(Deserialize, Default)]
struct DetailFields {
    #[serde(default)]
    dimensions: Option<Vec<DetailField>>,
    #[serde(default)]
    measures: Option<Vec<DetailField>>,
    #[serde(default)]
    table_calculations: Option<Vec<DetailField>>,
    #[serde(default)]
    pivots: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(Deserialize)]
struct DetailError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    message_details: Option<String>,
}

#[derive(Deserialize)]
struct DetailBody {
    #[serde(default)]
    fields: DetailFields,
    #[serde(default)]
    data: Option<RawRows>,
    #[serde(default)]
    errors: Option<Vec<DetailError>>,
}

/// Parses a `json_detail` result: columns from `fields.dimensions` + `measures` (+
/// `table_calculations`), cells from `data[i][field].value`.
pub fn parse_json_detail(body: &[u8]) -> Result<(Vec<String>, Vec<SourceRow>), LookerError> {
    const WHAT: &str = "json_detail result";
    let detail: DetailBody = serde_json::from_slice(body).map_err(|e| LookerError::Parse {
        what: WHAT.into(),
        message: describe_json_error(body, &e),
    })?;
    if let Some(errors) = detail.errors.filter(|e| !e.is_empty()) {
        let text: Vec<String> = errors
            .into_iter()
            .map(|e| match (e.message, e.message_details) {
                (Some(m), Some(d)) => format!("{m} ({d})"),
                (Some(m), None) => m,
                (None, Some(d)) => d,
                (None, None) => "unspecified error".into(),
            })
            .collect();
        return Err(LookerError::QueryFailed(text.join("; ")));
    }
    if detail.fields.pivots.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(LookerError::Parse {
            what: WHAT.into(),
            message: "the result is pivoted; pivoted measures are not supported, remove the pivot from the Look/query".into(),
        });
    }
    let f = detail.fields;
    let columns: Vec<String> = [f.dimensions, f.measures, f.table_calculations]
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.name)
        .collect();
    let data = detail.data.ok_or_else(|| LookerError::Parse {
        what: WHAT.into(),
        message: "no `data` array".into(),
    })?;
    let mut rows = RowsBuilder::with_columns(columns.clone());
    for (index, row) in data.0.into_iter().enumerate() {
        for (field, raw) in row.0 {
            let cell = detail_cell(&raw).map_err(|found| cell_error(WHAT, index, &field, found))?;
            rows.push(&field, cell).map_err(|e| LookerError::Parse {
                what: WHAT.into(),
                message: e.to_string(),
            })?;
        }
        rows.finish_row();
    }
    Ok((columns, rows.finish().1))
}

/// A `json_detail` cell is `{value, rendered?, html?, links?}`; a pivoted measure is an object
/// of such cells keyed by pivot value, which has no `value` key.
fn detail_cell(raw: &RawValue) -> Result<Cell, String> {
    let obj: RawRow = serde_json::from_str(raw.get()).map_err(|_| {
        format!(
            "`{}` instead of a {{\"value\": …}} cell",
            truncate(raw.get(), 40)
        )
    })?;
    match obj.0.iter().find(|(k, _)| k == "value") {
        Some((_, v)) => raw_to_cell(v),
        None => Err("an object without `value` (pivoted measures are not supported; remove the pivot from the Look/query)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn dec(s: &str) -> Cell {
        Cell::Number(s.parse::<Decimal>().unwrap().normalize())
    }

    #[test]
    fn json_rows_keep_numbers_exact_and_types() {
        let body = br#"[
          {"a.amount": 0.30000000000000004, "a.name": "x\"y", "a.flag": true, "a.n": null},
          {"a.amount": 1234.5675, "a.name": "", "a.flag": false, "a.n": -0.0001},
          {"a.amount": 1.5e2, "a.name": "z", "a.flag": false, "a.n": 12345678901234567890123}
        ]"#;
        let rows = parse_json_rows(body).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].index, 0);
        assert_eq!(rows[2].index, 2);
        assert_eq!(rows[0].get("a.amount"), Some(&dec("0.30000000000000004")));
        assert_eq!(rows[0].get("a.name"), Some(&Cell::Text("x\"y".into())));
        assert_eq!(rows[0].get("a.flag"), Some(&Cell::Bool(true)));
        assert_eq!(rows[0].get("a.n"), Some(&Cell::Null));
        assert_eq!(rows[1].get("a.amount"), Some(&dec("1234.5675")));
        assert_eq!(rows[1].get("a.n"), Some(&dec("-0.0001")));
        assert_eq!(rows[2].get("a.amount"), Some(&dec("150")));
        assert_eq!(rows[2].get("a.n"), Some(&dec("12345678901234567890123")));
    }

    #[test]
    fn huge_numbers_parse_without_panic_and_are_never_rounded_through_f64() {
        // Within the decimal range: exact numbers (mapping then applies `amount.max_abs`).
        // Beyond it: the literal as text, which mapping reports "out of range".
        let body = br#"[{"a.amount": 5e28}, {"a.amount": 9e27}, {"a.amount": 1e400},
            {"a.amount": -1E+29}, {"a.amount": 79228162514264337593543950336}]"#;
        let want = [
            dec("50000000000000000000000000000"),
            dec("9000000000000000000000000000"),
            Cell::Text("1e400".into()),
            Cell::Text("-1E+29".into()),
            Cell::Text("79228162514264337593543950336".into()),
        ];
        let rows = parse_json_rows(body).unwrap();
        let (_, streamed) = parse_json_rows_streaming(body).unwrap();
        for (i, want) in want.iter().enumerate() {
            assert_eq!(rows[i].get("a.amount"), Some(want), "row {i}");
            assert_eq!(streamed[i].get("a.amount"), Some(want), "row {i}");
        }
        let detail = br#"{"fields": {"dimensions": [], "measures": [{"name": "a.amount"}]},
            "data": [{"a.amount": {"value": 1e400}}, {"a.amount": {"value": 5e28}}]}"#;
        let (_, rows) = parse_json_detail(detail).unwrap();
        assert_eq!(rows[0].get("a.amount"), Some(&Cell::Text("1e400".into())));
        assert_eq!(rows[1].get("a.amount"), Some(&want[0]));
    }

    #[test]
    fn json_rows_column_order_follows_document() {
        let raw: RawRows =
            serde_json::from_str(r#"[{"z.b":1,"a.a":2},{"z.b":3,"a.a":4,"m.c":5}]"#).unwrap();
        let (cols, _) = convert_json_rows(raw).unwrap();
        assert_eq!(cols, ["z.b", "a.a", "m.c"]);
    }

    #[test]
    fn streaming_matches_the_raw_row_parser() {
        let body = br#"[{"z.b":1.10,"a.a":"x"},{"a.a":"y","z.b":-0.0001,"m.c":null},{"z.b":1e2}]"#;
        let (cols, rows) = parse_json_rows_streaming(body).unwrap();
        let raw: RawRows = serde_json::from_slice(body).unwrap();
        let (cols2, rows2) = convert_json_rows(raw).unwrap();
        assert_eq!((cols, rows), (cols2, rows2));
        let (cols, rows) = parse_json_rows_streaming(b" [ ] ").unwrap();
        assert!(cols.is_empty() && rows.is_empty());
        assert!(
            parse_json_rows_streaming(b"[{}] x").is_err(),
            "trailing text"
        );
    }

    #[test]
    fn empty_result_is_empty() {
        assert!(parse_json_rows(b"[]").unwrap().is_empty());
        assert!(parse_json_rows(b" [ ] ").unwrap().is_empty());
    }

    #[test]
    fn pivoted_or_nested_values_name_row_and_field() {
        let body =
            br#"[{"a.x": 1, "a.m": 2}, {"a.x": 2, "a.m": {"2024": 5, "$$$_row_total_$$$": 5}}]"#;
        let e = parse_json_rows(body).unwrap_err().to_string();
        assert!(
            e.contains("row 1") && e.contains("`a.m`") && e.contains("pivot"),
            "{e}"
        );
        let e = parse_json_rows(br#"[{"a.m": [1,2]}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 0") && e.contains("array"), "{e}");
    }

    #[test]
    fn non_array_bodies_are_parse_errors() {
        let e = parse_json_rows(br#"{"message":"Not found","documentation_url":"x"}"#).unwrap_err();
        assert!(matches!(e, LookerError::Parse { .. }), "{e:?}");
        assert!(e.to_string().contains("Not found"), "{e}");
        assert!(parse_json_rows(b"<html>proxy error</html>").is_err());
        assert!(parse_json_rows(b"[1,2]").is_err());
        assert!(parse_json_rows(br#"[{"a":1}"#).is_err());
        let e = parse_json_rows(br#"[{"a":1,"a":2}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate field `a`"), "{e}");
    }

    /// Hands out one byte per read: the reader parser must not depend on chunk boundaries.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    fn without_position(message: &str) -> String {
        match (message.find(" at line "), message.find(" (body starts")) {
            (Some(at), Some(body)) if at < body => {
                format!("{}{}", &message[..at], &message[body..])
            }
            _ => message.to_string(),
        }
    }

    #[test]
    fn reader_parser_matches_the_slice_parser() {
        let bodies: [&[u8]; 9] = [
            br#"[
              {"a.amount": 0.30000000000000004, "a.name": "x\"y\u00e9", "a.flag": true, "a.n": null},
              {"a.name": "", "a.amount": 1e3, "a.extra": -0.0001}
            ]"#,
            b"[]",
            br#"{"message":"Not found","documentation_url":"x"}"#,
            b"<html>proxy error</html>",
            b"[1,2]",
            br#"[{"a":1}"#,
            br#"[{"a":1,"a":2}]"#,
            br#"[{"a":{"pivot":1}}]"#,
            br#"[{"looker_error":"SQL Error: invalid identifier"}]"#,
        ];
        for body in bodies {
            let from_slice = parse_json_rows_streaming(body);
            let from_reader = parse_json_rows_from_reader(Trickle(body));
            match (&from_slice, &from_reader) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                // The same error and quote; a reader may report the column one byte apart.
                (Err(a), Err(b)) => assert_eq!(
                    without_position(&a.to_string()),
                    without_position(&b.to_string())
                ),
                _ => panic!("{from_slice:?} vs {from_reader:?}"),
            }
        }
        let (columns, rows) = parse_json_rows_from_reader(Trickle(bodies[0])).unwrap();
        assert_eq!(columns, ["a.amount", "a.name", "a.flag", "a.n", "a.extra"]);
        assert_eq!(rows[1].get("a.amount"), Some(&dec("1000")));
        assert_eq!(
            rows[0].get("a.name"),
            Some(&Cell::Text("x\"y\u{e9}".into()))
        );
        assert_eq!(rows[1].get("a.flag"), None);
    }

    #[test]
    fn looker_error_row_is_a_query_failure() {
        let body = br#"[{"looker_error":"SQL Error: invalid identifier 'FEES.AMOUNT'"}]"#;
        match parse_json_rows(body) {
            Err(LookerError::QueryFailed(m)) => assert!(m.contains("invalid identifier")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_detail_minimal_and_table_calcs() {
        let body = br#"{"fields":{"dimensions":[{"name":"a.d"}],"measures":[{"name":"a.m"}],
            "table_calculations":[{"name":"calc"}],"pivots":[]},
            "data":[{"a.d":{"value":"2024-01-07","links":[]},"a.m":{"value":0.1,"rendered":"$0.10"},"calc":{"value":null}}]}"#;
        let (cols, rows) = parse_json_detail(body).unwrap();
        assert_eq!(cols, ["a.d", "a.m", "calc"]);
        assert_eq!(rows[0].get("a.m"), Some(&dec("0.1")));
        assert_eq!(rows[0].get("calc"), Some(&Cell::Null));
    }

    #[test]
    fn json_detail_errors_and_pivots() {
        let body = br#"{"fields":{"dimensions":[],"measures":[]},"data":[],"errors":[{"message":"SQL Error","message_details":"bad column"}]}"#;
        let e = parse_json_detail(body).unwrap_err();
        assert!(
            matches!(&e, LookerError::QueryFailed(m) if m.contains("bad column")),
            "{e:?}"
        );
        let body = br#"{"fields":{"dimensions":[{"name":"a.d"}],"measures":[{"name":"a.m"}],"pivots":[{"name":"a.p"}]},"data":[]}"#;
        assert!(parse_json_detail(body)
            .unwrap_err()
            .to_string()
            .contains("pivot"));
        let body = br#"{"fields":{"dimensions":[{"name":"a.d"}],"measures":[{"name":"a.m"}]},
            "data":[{"a.d":{"value":"x"},"a.m":{"2024":{"value":1}}}]}"#;
        let e = parse_json_detail(body).unwrap_err().to_string();
        assert!(e.contains("row 0") && e.contains("`a.m`"), "{e}");
        let body = br#"{"fields":{"dimensions":[{"name":"a.d"}]},"data":[{"a.d":5}]}"#;
        assert!(parse_json_detail(body).is_err());
        assert!(parse_json_detail(br#"{"fields":{}}"#).is_err());
    }
}
