//! Looker scheduled-plan deliveries (the body Looker POSTs to a webhook destination) →
//! [`Extract`]. The Lambda webhook ([`crate::lambda::webhook`]) and the action hub hand the
//! HTTP body here; everything about Looker's delivery format lives in this module.
//!
//! The body is a JSON object (Looker's webhook destination and the `looker-open-source/actions`
//! `ActionRequest` types):
//!
//! ```json
//! { "type": "query",
//!   "scheduled_plan": { "scheduled_plan_id": 123, "title": "…", "type": "Look",
//!                       "url": "https://x.cloud.looker.com/looks/42", "query_id": 456,
//!                       "query": { "model": "…", "view": "…", "fields": ["…"], "filters": {} } },
//!   "attachment": { "mimetype": "application/json", "extension": "json", "data": "…" } }
//! ```
//!
//! Accepted attachments:
//! - **json**: an array of row objects keyed by field name; `data` is either a JSON string holding
//!   that array or the array itself (inline JSON).
//! - **json_detail**: the json_detail object (`fields` + `data[i][field].value`), as a string or
//!   inline.
//! - **csv** (and tab-separated **txt**): a header row then one row per result row. All cells are
//!   [`Cell::Text`]; amounts are parsed by the mapping like any text amount. The header must be
//!   the field names (`view.field`); a header of Looker *labels* is accepted only when the
//!   delivery's `scheduled_plan.query.fields` lists the same number of fields and every label
//!   matches its field's name word for word (e.g. `Marketplace Fees Channel` ↔
//!   `marketplace_fees.channel`), so a column can never be silently attributed to the wrong field.
//! - a `;base64` mimetype (`text/csv;base64`, `application/json;base64`) is decoded first.
//!   Binary formats (xlsx, pdf, png, zip, html) are refused with a clear reason.
//! - with no `attachment`, a top-level `data` (inline_json) is read as json rows.
//!
//! JSON numbers are read from their literal text (never through `f64`) by the Looker result
//! parsers this module reuses ([`crate::looker::results`]); CSV is split by [`csv`].
//!
//! Every failure is a [`DeliveryError`], whose message says what is wrong and which field (the
//! webhook answers it as 400, or 422 for a delivery that may be truncated). Parsing never panics
//! on any input (property-tested in `tests/lambda.rs`).

mod delimited;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::results::{convert_json_rows, describe_json_error, parse_json_detail, RawRows};
use super::LookerError;
use crate::domain::source::{Extract, SourceRef, SourceRow};

/// Why a delivery body cannot be turned into rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The request body is not a JSON object of the expected shape.
    #[error("the request body is not a Looker webhook delivery: {0}")]
    Body(String),
    /// A field has the wrong type or value; `field` is its JSON path.
    #[error("`{field}`: {message}")]
    Field { field: String, message: String },
    /// The attachment is in a format the connector does not read.
    #[error("`attachment`: format `{format}` is not supported; set the schedule's format to JSON, JSON detail or CSV (without formatting)")]
    Unsupported { format: String },
    /// The attachment was read but its rows are not usable.
    #[error("`attachment.data`: {0}")]
    Rows(String),
    /// The delivery may be truncated: it has exactly as many rows as the query's row limit.
    #[error("the delivery has {rows} rows, exactly the query's row limit ({limit}): the result may be truncated, so nothing is posted. In the schedule choose \"All results\" (Looker then sends every row, more than the limit), or raise the Look's row limit, or set the instance's `[webhook] delivery = \"trigger\"` so the connector extracts through the API")]
    MaybeTruncated { rows: usize, limit: u64 },
}

impl DeliveryError {
    /// Whether the delivery was well formed but unusable (may be truncated), as opposed to
    /// malformed.
    pub fn is_unusable(&self) -> bool {
        matches!(self, DeliveryError::MaybeTruncated { .. })
    }

    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        DeliveryError::Field {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// The format an attachment was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFormat {
    Json,
    JsonDetail,
    Csv,
    Tsv,
    /// Top-level `data` (inline_json) without an attachment.
    InlineJson,
}

impl DeliveryFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryFormat::Json => "json",
            DeliveryFormat::JsonDetail => "json_detail",
            DeliveryFormat::Csv => "csv",
            DeliveryFormat::Tsv => "txt",
            DeliveryFormat::InlineJson => "inline_json",
        }
    }
}

/// A parsed delivery: the extract plus what the audit/log may want to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub extract: Extract,
    pub format: DeliveryFormat,
    /// `type` (`query`, `cell`, `dashboard`).
    pub kind: Option<String>,
    /// `scheduled_plan.title`.
    pub title: Option<String>,
}

/// Metadata only, for trigger-only instances (the rows are fetched through the API instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryMeta {
    pub source: SourceRef,
    pub kind: Option<String>,
    pub title: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default, rename = "type")]
    kind: Option<Box<RawValue>>,
    #[serde(default)]
    scheduled_plan: Option<Box<RawValue>>,
    #[serde(default)]
    attachment: Option<Box<RawValue>>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Plan {
    #[serde(default)]
    scheduled_plan_id: Option<Box<RawValue>>,
    #[serde(default)]
    title: Option<Box<RawValue>>,
    #[serde(default)]
    url: Option<Box<RawValue>>,
    #[serde(default)]
    query_id: Option<Box<RawValue>>,
    #[serde(default)]
    query: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct PlanQuery {
    #[serde(default)]
    fields: Option<Box<RawValue>>,
    #[serde(default)]
    limit: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Attachment {
    #[serde(default)]
    mimetype: Option<Box<RawValue>>,
    #[serde(default)]
    extension: Option<Box<RawValue>>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// Base64 as Looker and the Function URL send it (standard alphabet; line breaks ignored).
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact.as_bytes())
}

fn parse_object<'a, T: Deserialize<'a>>(raw: &'a str, field: &str) -> Result<T, DeliveryError> {
    serde_json::from_str(raw).map_err(|e| {
        DeliveryError::field(
            field,
            format!("expected an object with the documented fields ({e})"),
        )
    })
}

/// `null`/absent → None; a string → its content; anything else → an error naming `field`.
fn opt_string(raw: Option<&RawValue>, field: &str) -> Result<Option<String>, DeliveryError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get().trim();
    if text == "null" {
        return Ok(None);
    }
    serde_json::from_str::<String>(text).map(Some).map_err(|_| {
        DeliveryError::field(field, format!("expected a string, found `{}`", short(text)))
    })
}

/// An id Looker sends as a number or a string.
fn opt_id(raw: Option<&RawValue>, field: &str) -> Result<Option<String>, DeliveryError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'n') if text == "null" => Ok(None),
        Some(b'"') => {
            let s: String = serde_json::from_str(text)
                .map_err(|_| DeliveryError::field(field, "expected a number or a string"))?;
            let s = s.trim().to_string();
            if s.is_empty() || s.len() > 128 {
                return Err(DeliveryError::field(
                    field,
                    "expected a non-empty id of at most 128 characters",
                ));
            }
            Ok(Some(s))
        }
        Some(b'-' | b'0'..=b'9') if text.len() <= 64 => Ok(Some(text.to_string())),
        _ => Err(DeliveryError::field(
            field,
            format!("expected a number or a string, found `{}`", short(text)),
        )),
    }
}

pub(crate) fn short(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Reads the envelope's `type` and `scheduled_plan` into a [`SourceRef`] (shared by
/// [`parse_delivery`] and [`parse_delivery_meta`]).
fn read_meta(env: &Envelope) -> Result<(DeliveryMeta, Option<PlanQuery>), DeliveryError> {
    let kind = opt_string(env.kind.as_deref(), "type")?;
    let plan_raw = env
        .scheduled_plan
        .as_deref()
        .filter(|r| r.get().trim() != "null")
        .ok_or_else(|| {
            DeliveryError::field(
                "scheduled_plan",
                "missing: a Looker scheduled-plan delivery names its plan",
            )
        })?;
    let plan: Plan = parse_object(plan_raw.get(), "scheduled_plan")?;
    let scheduled_plan_id = opt_id(
        plan.scheduled_plan_id.as_deref(),
        "scheduled_plan.scheduled_plan_id",
    )?;
    let query_id = opt_id(plan.query_id.as_deref(), "scheduled_plan.query_id")?;
    let look_url = opt_string(plan.url.as_deref(), "scheduled_plan.url")?;
    let title = opt_string(plan.title.as_deref(), "scheduled_plan.title")?;
    if scheduled_plan_id.is_none() && query_id.is_none() {
        return Err(DeliveryError::field(
            "scheduled_plan",
            "neither `scheduled_plan_id` nor `query_id` is set: the delivery cannot be traced to its source",
        ));
    }
    let query = match plan.query.as_deref() {
        Some(q) if q.get().trim() != "null" => {
            Some(parse_object::<PlanQuery>(q.get(), "scheduled_plan.query")?)
        }
        _ => None,
    };
    Ok((
        DeliveryMeta {
            source: SourceRef::ScheduledPlan {
                scheduled_plan_id,
                query_id,
                look_url,
            },
            kind,
            title,
        },
        query,
    ))
}

fn parse_envelope(body: &[u8]) -> Result<Envelope, DeliveryError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(DeliveryError::Body(
            "expected a JSON object (`{\"scheduled_plan\": …, \"attachment\": …}`)".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| DeliveryError::Body(format!("invalid JSON: {e}")))
}

/// Reads only the delivery's metadata (for instances where the delivery is just a trigger).
pub fn parse_delivery_meta(body: &[u8]) -> Result<DeliveryMeta, DeliveryError> {
    let env = parse_envelope(body)?;
    read_meta(&env).map(|(m, _)| m)
}

/// Parses a whole delivery into an [`Extract`].
pub fn parse_delivery(body: &[u8]) -> Result<Delivery, DeliveryError> {
    let env = parse_envelope(body)?;
    let (meta, query) = read_meta(&env)?;
    let query_fields = match query.as_ref().and_then(|q| q.fields.as_deref()) {
        Some(f) if f.get().trim() != "null" => {
            Some(serde_json::from_str::<Vec<String>>(f.get()).map_err(|_| {
                DeliveryError::field(
                    "scheduled_plan.query.fields",
                    "expected an array of strings",
                )
            })?)
        }
        _ => None,
    };
    // With no `scheduled_plan.query` (dashboards) there is no limit to compare with.
    let limit = match query.as_ref() {
        Some(q) => read_limit(q.limit.as_deref())?,
        None => None,
    };

    let attachment = env
        .attachment
        .as_deref()
        .filter(|r| r.get().trim() != "null");
    let (format, columns, rows) = match attachment {
        Some(raw) => {
            let att: Attachment = parse_object(raw.get(), "attachment")?;
            read_attachment(&att, query_fields.as_deref())?
        }
        None => match env.data.as_deref().filter(|r| r.get().trim() != "null") {
            Some(data) => {
                let bytes = json_text(data, "data")?;
                let (columns, rows) = json_rows(&bytes)?;
                (DeliveryFormat::InlineJson, columns, rows)
            }
            None => {
                return Err(DeliveryError::field(
                    "attachment",
                    "missing: the delivery carries no data (set the schedule's format to JSON, JSON detail or CSV)",
                ))
            }
        },
    };
    if let Some(limit) = limit {
        check_row_limit(rows.len(), limit)?;
    }
    Ok(Delivery {
        extract: Extract {
            source: meta.source,
            columns,
            rows,
        },
        format,
        kind: meta.kind,
        title: meta.title,
    })
}

/// Looker's row cap for a query saved without a limit (Explores and Looks: 5,000 rows).
pub const LOOKER_DEFAULT_ROW_LIMIT: u64 = 5000;

/// Whether a delivery of `rows` rows may have been cut at the query's row `limit`.
///
/// `scheduled_plan.query` is the query the plan delivers (`query_id`), so its `limit` is the
/// Look's saved limit even when the schedule sends "All results": that run ignores the limit
/// (`send_all_results` "will run an unlimited query"), and the delivery may hold more rows.
/// So fewer rows than the limit: complete; more: the limit was not applied, complete; exactly
/// the limit: Looker may have stopped there, refused.
pub fn check_row_limit(rows: usize, limit: u64) -> Result<(), DeliveryError> {
    if rows as u64 == limit {
        return Err(DeliveryError::MaybeTruncated { rows, limit });
    }
    Ok(())
}

/// `scheduled_plan.query.limit` (a number or a numeric string) → the row limit the query ran
/// under: absent, `null` or empty → Looker's default cap [`LOOKER_DEFAULT_ROW_LIMIT`]; a
/// negative number (`-1`: "unlimited results") or 0 → none.
fn read_limit(raw: Option<&RawValue>) -> Result<Option<u64>, DeliveryError> {
    const FIELD: &str = "scheduled_plan.query.limit";
    let text = raw.map_or("null", |r| r.get().trim());
    let inner = if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .map_err(|_| DeliveryError::field(FIELD, "expected a number"))?
    } else {
        text.to_string()
    };
    let inner = inner.trim();
    if inner.is_empty() || inner == "null" {
        return Ok(Some(LOOKER_DEFAULT_ROW_LIMIT));
    }
    if inner.starts_with('-') {
        return inner.parse::<i64>().map(|_| None).map_err(|_| {
            DeliveryError::field(
                FIELD,
                format!("expected a whole number, found `{}`", short(inner)),
            )
        });
    }
    match inner.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(DeliveryError::field(
            FIELD,
            format!("expected a whole number, found `{}`", short(inner)),
        )),
    }
}

const BINARY_FORMATS: &[&str] = &[
    "xlsx",
    "xls",
    "pdf",
    "png",
    "jpg",
    "jpeg",
    "zip",
    "html",
    "htm",
    "wysiwyg_pdf",
    "assembled_pdf",
    "wysiwyg_png",
    "csv_zip",
];

fn read_attachment(
    att: &Attachment,
    query_fields: Option<&[String]>,
) -> Result<(DeliveryFormat, Vec<String>, Vec<SourceRow>), DeliveryError> {
    let mimetype = opt_string(att.mimetype.as_deref(), "attachment.mimetype")?
        .unwrap_or_default()
        .to_ascii_lowercase();
    let extension = opt_string(att.extension.as_deref(), "attachment.extension")?
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut parts = mimetype.split(';').map(str::trim);
    let base_type = parts.next().unwrap_or("").to_string();
    let base64 = parts.any(|p| p == "base64");

    let format = if BINARY_FORMATS.contains(&extension.as_str()) {
        None
    } else if extension == "csv" || base_type == "text/csv" {
        Some(DeliveryFormat::Csv)
    } else if extension == "txt"
        || extension == "tsv"
        || base_type == "text/tab-separated-values"
        || base_type == "text/plain"
    {
        Some(DeliveryFormat::Tsv)
    } else if extension == "json_detail" {
        Some(DeliveryFormat::JsonDetail)
    } else if extension == "json" || base_type == "application/json" || base_type.ends_with("+json")
    {
        Some(DeliveryFormat::Json)
    } else if extension.is_empty() && base_type.is_empty() {
        // No declared type: sniff JSON, else refuse.
        Some(DeliveryFormat::Json)
    } else {
        None
    };
    let Some(format) = format else {
        let shown = if extension.is_empty() {
            mimetype.clone()
        } else {
            format!("{extension} ({mimetype})")
        };
        return Err(DeliveryError::Unsupported {
            format: short(&shown),
        });
    };

    let data = att
        .data
        .as_deref()
        .filter(|r| r.get().trim() != "null")
        .ok_or_else(|| DeliveryError::field("attachment.data", "missing"))?;

    match format {
        DeliveryFormat::Csv | DeliveryFormat::Tsv => {
            let text = string_data(data, base64)?;
            let delimiter = if format == DeliveryFormat::Csv {
                b','
            } else {
                b'\t'
            };
            let (columns, rows) = delimited::csv_rows(&text, delimiter, query_fields)?;
            Ok((format, columns, rows))
        }
        _ => {
            let bytes = if base64 {
                let s: String = serde_json::from_str(data.get()).map_err(|_| {
                    DeliveryError::field(
                        "attachment.data",
                        "the mimetype says base64, so `data` must be a base64 string",
                    )
                })?;
                decode_base64(&s).map_err(|e| {
                    DeliveryError::field("attachment.data", format!("not valid base64 ({e})"))
                })?
            } else {
                json_text(data, "attachment.data")?
            };
            // json_detail is an object with `fields`/`data`; json is an array of rows.
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
            match first {
                Some(b'{') => {
                    let (columns, rows) = parse_json_detail(&bytes).map_err(rows_error)?;
                    Ok((DeliveryFormat::JsonDetail, columns, rows))
                }
                Some(b'[') => {
                    let (columns, rows) = json_rows(&bytes)?;
                    Ok((DeliveryFormat::Json, columns, rows))
                }
                _ => Err(DeliveryError::field(
                    "attachment.data",
                    format!(
                        "expected JSON rows (an array) or a json_detail object, found `{}`",
                        short(&String::from_utf8_lossy(&bytes[..bytes.len().min(60)]))
                    ),
                )),
            }
        }
    }
}

/// JSON `data`: a string holding JSON text, or inline JSON (array/object) → the JSON text.
fn json_text(data: &RawValue, field: &str) -> Result<Vec<u8>, DeliveryError> {
    let text = data.get().trim();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(text)
            .map(String::into_bytes)
            .map_err(|e| DeliveryError::field(field, format!("unreadable string ({e})"))),
        Some(b'[' | b'{') => Ok(text.as_bytes().to_vec()),
        _ => Err(DeliveryError::field(
            field,
            format!(
                "expected JSON rows (a string or inline JSON), found `{}`",
                short(text)
            ),
        )),
    }
}

/// CSV/TSV `data`: a string, base64-decoded when the mimetype says so.
fn string_data(data: &RawValue, base64: bool) -> Result<String, DeliveryError> {
    let s: String = serde_json::from_str(data.get()).map_err(|_| {
        DeliveryError::field(
            "attachment.data",
            format!(
                "expected a string of CSV text, found `{}`",
                short(data.get())
            ),
        )
    })?;
    if !base64 {
        return Ok(s);
    }
    let bytes = decode_base64(&s)
        .map_err(|e| DeliveryError::field("attachment.data", format!("not valid base64 ({e})")))?;
    String::from_utf8(bytes)
        .map_err(|_| DeliveryError::field("attachment.data", "the decoded CSV is not UTF-8 text"))
}

fn rows_error(e: LookerError) -> DeliveryError {
    match e {
        LookerError::QueryFailed(m) => {
            DeliveryError::Rows(format!("Looker reports that the query failed: {m}"))
        }
        LookerError::Parse { message, .. } => DeliveryError::Rows(message),
        other => DeliveryError::Rows(other.to_string()),
    }
}

fn json_rows(bytes: &[u8]) -> Result<(Vec<String>, Vec<SourceRow>), DeliveryError> {
    let raw: RawRows = serde_json::from_slice(bytes).map_err(|e| {
        DeliveryError::Rows(format!("json rows: {}", describe_json_error(bytes, &e)))
    })?;
    convert_json_rows(raw).map_err(rows_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::source::Cell;

    fn delivery(att: &str) -> String {
        format!(
            r#"{{"type":"query","scheduled_plan":{{"scheduled_plan_id":7,"title":"t","type":"Look","url":"https://x/looks/42","query_id":"99","query":{{"model":"m","view":"v","fields":["v.a","v.amount"]}}}},"attachment":{att}}}"#
        )
    }

    #[test]
    fn json_string_and_inline_and_exact_numbers() {
        let s = delivery(
            r#"{"mimetype":"application/json","extension":"json","data":"[{\"v.a\":\"x\",\"v.amount\":0.30000000000000004}]"}"#,
        );
        let d = parse_delivery(s.as_bytes()).unwrap();
        assert_eq!(d.format, DeliveryFormat::Json);
        assert_eq!(d.extract.columns, ["v.a", "v.amount"]);
        assert_eq!(
            d.extract.rows[0].get("v.amount"),
            Some(&Cell::Number("0.30000000000000004".parse().unwrap()))
        );
        assert_eq!(
            d.extract.source,
            SourceRef::ScheduledPlan {
                scheduled_plan_id: Some("7".into()),
                query_id: Some("99".into()),
                look_url: Some("https://x/looks/42".into())
            }
        );
        let s = delivery(
            r#"{"mimetype":"application/json","data":[{"v.a":"x","v.amount":12345678901234567890.12}]}"#,
        );
        let d = parse_delivery(s.as_bytes()).unwrap();
        assert_eq!(
            d.extract.rows[0].get("v.amount"),
            Some(&Cell::Number("12345678901234567890.12".parse().unwrap()))
        );
    }

    #[test]
    fn csv_quoted_and_labels() {
        let s = delivery(
            r#"{"mimetype":"text/csv","extension":"csv","data":"v.a,v.amount\r\n\"x, \"\"y\"\"\",1.50\nz,2\n"}"#,
        );
        let d = parse_delivery(s.as_bytes()).unwrap();
        assert_eq!(d.extract.rows.len(), 2);
        assert_eq!(
            d.extract.rows[0].get("v.a"),
            Some(&Cell::Text("x, \"y\"".into()))
        );
        assert_eq!(
            d.extract.rows[1].get("v.amount"),
            Some(&Cell::Text("2".into()))
        );
        let s =
            delivery(r#"{"mimetype":"text/csv","extension":"csv","data":"V A,V Amount\nz,2\n"}"#);
        let d = parse_delivery(s.as_bytes()).unwrap();
        assert_eq!(d.extract.columns, ["v.a", "v.amount"]);
        let s =
            delivery(r#"{"mimetype":"text/csv","extension":"csv","data":"Amount,Name\nz,2\n"}"#);
        let e = parse_delivery(s.as_bytes()).unwrap_err().to_string();
        assert!(e.contains("Amount") && e.contains("v.a"), "{e}");
    }

    #[test]
    fn base64_binary_and_errors() {
        use base64::Engine;
        let csv = base64::engine::general_purpose::STANDARD.encode("v.a,v.amount\nq,3\n");
        let s = delivery(&format!(
            r#"{{"mimetype":"text/csv;base64","extension":"csv","data":"{csv}"}}"#
        ));
        assert_eq!(parse_delivery(s.as_bytes()).unwrap().extract.rows.len(), 1);
        let s = delivery(
            r#"{"mimetype":"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet;base64","extension":"xlsx","data":"UEsDBA=="}"#,
        );
        let e = parse_delivery(s.as_bytes()).unwrap_err();
        assert!(matches!(e, DeliveryError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("xlsx"));
        let e = parse_delivery(br#"{"scheduled_plan":{"scheduled_plan_id":[1]}}"#).unwrap_err();
        assert!(
            e.to_string().contains("scheduled_plan.scheduled_plan_id"),
            "{e}"
        );
        let e = parse_delivery(br#"{"scheduled_plan":{"scheduled_plan_id":1}}"#).unwrap_err();
        assert!(e.to_string().contains("attachment"), "{e}");
        assert!(parse_delivery(b"[1]").is_err());
    }

    #[test]
    fn row_limit_is_truncation() {
        let s = r#"{"scheduled_plan":{"scheduled_plan_id":1,"query":{"limit":"2"}},"attachment":{"mimetype":"application/json","data":[{"v.a":1},{"v.a":2}]}}"#;
        let e = parse_delivery(s.as_bytes()).unwrap_err();
        assert!(e.is_unusable(), "{e}");
    }

    fn rows_with_limit(n: usize, limit: &str) -> String {
        let rows: Vec<String> = (0..n).map(|i| format!(r#"{{"v.a":{i}}}"#)).collect();
        let query = if limit == "absent" {
            String::from(r#"{"fields":["v.a"]}"#)
        } else {
            format!(r#"{{"fields":["v.a"],"limit":{limit}}}"#)
        };
        format!(
            r#"{{"scheduled_plan":{{"scheduled_plan_id":1,"query":{query}}},"attachment":{{"mimetype":"application/json","data":[{}]}}}}"#,
            rows.join(",")
        )
    }

    #[test]
    fn row_limit_both_ways() {
        // Fewer rows than the limit: complete.
        assert_eq!(
            parse_delivery(rows_with_limit(2, "\"3\"").as_bytes())
                .unwrap()
                .extract
                .rows
                .len(),
            2
        );
        // Exactly the limit (string or number): may be truncated.
        for limit in ["\"3\"", "3"] {
            let e = parse_delivery(rows_with_limit(3, limit).as_bytes()).unwrap_err();
            assert_eq!(e, DeliveryError::MaybeTruncated { rows: 3, limit: 3 });
            assert!(e.to_string().contains("trigger"), "{e}");
        }
        // More rows than the limit: an "All results" delivery (the Look's saved limit was not
        // applied), complete.
        let d = parse_delivery(rows_with_limit(4, "\"3\"").as_bytes()).unwrap();
        assert_eq!(d.extract.rows.len(), 4);
        // `-1` (unlimited) and 0: no limit to be cut at.
        for limit in ["\"-1\"", "-1", "0"] {
            assert!(parse_delivery(rows_with_limit(3, limit).as_bytes()).is_ok());
        }
        // A query without a limit ran under Looker's default cap of 5,000 rows.
        let n = LOOKER_DEFAULT_ROW_LIMIT as usize;
        for limit in ["absent", "null", "\"\""] {
            let e = parse_delivery(rows_with_limit(n, limit).as_bytes()).unwrap_err();
            assert_eq!(
                e,
                DeliveryError::MaybeTruncated {
                    rows: n,
                    limit: 5000
                },
                "{limit}"
            );
            assert!(parse_delivery(rows_with_limit(n - 1, limit).as_bytes()).is_ok());
            assert!(parse_delivery(rows_with_limit(n + 1, limit).as_bytes()).is_ok());
        }
        // No query (a dashboard delivery): nothing to compare with.
        let s = r#"{"scheduled_plan":{"scheduled_plan_id":1,"query":null},"attachment":{"mimetype":"application/json","data":[{"v.a":1}]}}"#;
        assert!(parse_delivery(s.as_bytes()).is_ok());
        // A limit that is not a number is named.
        let e = parse_delivery(rows_with_limit(1, "\"ten\"").as_bytes()).unwrap_err();
        assert!(e.to_string().contains("scheduled_plan.query.limit"), "{e}");
    }
}
