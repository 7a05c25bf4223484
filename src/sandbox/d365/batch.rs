//! Simulated OData `$batch` (`POST /data/$batch`, `multipart/mixed`).
//!
//! Behaves like F&O as far as the reference notes go:
//! - every part is checked (`application/http`, `Content-Transfer-Encoding: binary`, a unique
//!   `Content-ID` for each operation in a changeset, CRLF framing — a client that gets the
//!   framing wrong gets a 400, not a lenient guess);
//! - more operations than the limit (default 200) → 400 for the whole request, nothing applied;
//! - each changeset is applied atomically with the same validation as single POSTs: if any of
//!   its operations fails, everything it did is rolled back (lines, totals, number sequences);
//! - processing stops at the first failed changeset or request: the answer has one part per
//!   processed item — a nested multipart of `201 Created` responses per applied changeset, one
//!   `application/http` error response for the failed one — and nothing for the rest;
//! - operation URLs may be absolute (`{env}/data/X`), absolute paths (`/data/X`) or relative to
//!   the service root (`X`).

use axum::http::{Method, StatusCode};

use super::fno::{self, bad_body, odata_error, write_failed, EntityDef, ENTITIES};
use super::{SimRequest, SimResponse, State, WriteFailure};
use crate::d365::multipart::{
    http_part, multipart_boundary, nested_part, new_boundary, parse_multipart, reason_phrase,
    write_multipart, HttpMessage, Part,
};
use crate::d365::names::{header as h, line as l};

/// One operation of the request.
struct Op {
    content_id: Option<String>,
    method: String,
    target: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

enum Item {
    Changeset(Vec<Op>),
    Single(Op),
}

pub(super) fn handle(st: &mut State, req: &SimRequest) -> SimResponse {
    if req.method != Method::POST {
        return odata_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "The HTTP method is not allowed for $batch; use POST.",
            None,
        );
    }
    let failure = if st.batch_failures.is_empty() {
        None
    } else {
        Some(st.batch_failures.remove(0))
    };
    match failure {
        Some(WriteFailure {
            status,
            commit: false,
        }) => fno::gateway_failure(status),
        Some(WriteFailure {
            status,
            commit: true,
        }) => {
            let r = process(st, req);
            if r.status.is_success() {
                fno::gateway_failure(status)
            } else {
                r
            }
        }
        None => process(st, req),
    }
}

/// Every operation of a `$batch` as (method, target relative to `/data/`, body), without
/// applying anything; empty when the request cannot be read.
pub(super) fn operations(env_url: &str, req: &SimRequest) -> Vec<(String, String, Vec<u8>)> {
    let Ok(items) = read_items(req) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let ops = match item {
            Item::Changeset(ops) => ops,
            Item::Single(op) => vec![op],
        };
        for op in ops {
            let path = op.target.split('?').next().unwrap_or("");
            let rel = path
                .strip_prefix(env_url)
                .unwrap_or(path)
                .trim_start_matches('/');
            let rel = rel.strip_prefix("data/").unwrap_or(rel);
            out.push((op.method, rel.to_string(), op.body));
        }
    }
    out
}

/// The answer to a `$batch` whose first changeset (or operation) failed with `error` and of
/// which nothing was applied (F&O stops at the first failed changeset).
pub(super) fn failed_first_changeset(req: &SimRequest, error: SimResponse) -> SimResponse {
    let first_id = read_items(req).ok().and_then(|items| {
        items.into_iter().next().and_then(|i| match i {
            Item::Changeset(ops) => ops.into_iter().next().and_then(|o| o.content_id),
            Item::Single(o) => o.content_id,
        })
    });
    let out = vec![http_part(first_id.as_deref(), &as_http(&error))];
    batch_answer(&out)
}

fn batch_answer(out: &[Part]) -> SimResponse {
    let boundary = new_boundary("batchresponse");
    let body = write_multipart(&boundary, out);
    SimResponse {
        status: StatusCode::OK,
        headers: vec![
            (
                "content-type",
                format!("multipart/mixed; boundary={boundary}"),
            ),
            ("odata-version", "4.0".into()),
        ],
        body: String::from_utf8(body).expect("parts are UTF-8"),
        drop_connection: false,
    }
}

fn bad_batch(msg: &str) -> SimResponse {
    odata_error(
        StatusCode::BAD_REQUEST,
        "The batch request is not valid.",
        Some((msg, "Microsoft.OData.ODataException")),
    )
}

fn read_op(p: &Part, in_changeset: bool) -> Result<Op, String> {
    if !p.is_http() {
        return Err(format!(
            "A batch operation must have Content-Type application/http, got {:?}.",
            p.header("Content-Type")
        ));
    }
    if !p
        .header("Content-Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("binary"))
    {
        return Err("A batch operation must have Content-Transfer-Encoding: binary.".into());
    }
    let content_id = p.header("Content-ID").map(str::to_string);
    if in_changeset && content_id.as_deref().is_none_or(|c| c.trim().is_empty()) {
        return Err("Every operation in a change set must have a Content-ID header.".into());
    }
    let msg = HttpMessage::parse(&p.body).map_err(|e| e.to_string())?;
    let (method, target) = msg.request_line().map_err(|e| e.to_string())?;
    Ok(Op {
        content_id,
        method: method.to_string(),
        target: target.to_string(),
        content_type: msg.header("Content-Type").map(str::to_string),
        body: msg.body.clone(),
    })
}

fn read_items(req: &SimRequest) -> Result<Vec<Item>, String> {
    let ct = req
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multipart_boundary(ct).ok_or_else(|| {
        format!("The content type '{ct}' is not valid for a batch request; expected multipart/mixed with a boundary.")
    })?;
    let parts = parse_multipart(&req.body, &boundary).map_err(|e| e.to_string())?;
    let mut items = Vec::with_capacity(parts.len());
    let mut ids: Vec<String> = Vec::new();
    for p in &parts {
        let item = if let Some(cb) = p.multipart_boundary() {
            let inner = parse_multipart(&p.body, &cb).map_err(|e| e.to_string())?;
            if inner.is_empty() {
                return Err("A change set must contain at least one operation.".into());
            }
            let mut ops = Vec::with_capacity(inner.len());
            for ip in &inner {
                if ip.multipart_boundary().is_some() {
                    return Err("Change sets cannot be nested.".into());
                }
                let op = read_op(ip, true)?;
                if !op.method.eq_ignore_ascii_case("POST")
                    && !op.method.eq_ignore_ascii_case("PATCH")
                    && !op.method.eq_ignore_ascii_case("DELETE")
                {
                    return Err(format!(
                        "A change set cannot contain a {} request.",
                        op.method
                    ));
                }
                ops.push(op);
            }
            Item::Changeset(ops)
        } else {
            Item::Single(read_op(p, false)?)
        };
        let item_ids: Vec<&Option<String>> = match &item {
            Item::Changeset(ops) => ops.iter().map(|o| &o.content_id).collect(),
            Item::Single(o) => vec![&o.content_id],
        };
        for id in item_ids.into_iter().flatten() {
            if ids.contains(id) {
                return Err(format!("The Content-ID '{id}' is used more than once."));
            }
            ids.push(id.clone());
        }
        items.push(item);
    }
    Ok(items)
}

fn process(st: &mut State, req: &SimRequest) -> SimResponse {
    let items = match read_items(req) {
        Ok(i) => i,
        Err(m) => return bad_batch(&m),
    };
    let ops: usize = items
        .iter()
        .map(|i| match i {
            Item::Changeset(o) => o.len(),
            Item::Single(_) => 1,
        })
        .sum();
    if ops > st.batch_max_operations {
        return bad_batch(&format!(
            "The batch request contains {ops} operations; the limit is {}.",
            st.batch_max_operations
        ));
    }
    let mut out: Vec<Part> = Vec::new();
    for item in &items {
        match item {
            Item::Changeset(ops) => {
                let saved = Snapshot::take(
                    st,
                    ops.iter().any(|o| o.method.eq_ignore_ascii_case("DELETE")),
                );
                let mut responses = Vec::with_capacity(ops.len());
                let mut failed = None;
                for op in ops {
                    let r = apply(st, op);
                    if r.status.is_success() {
                        responses.push(http_part(op.content_id.as_deref(), &as_http(&r)));
                    } else {
                        failed = Some((op, r));
                        break;
                    }
                }
                match failed {
                    None => out.push(nested_part(&new_boundary("changesetresponse"), &responses)),
                    Some((op, r)) => {
                        saved.restore(st);
                        out.push(http_part(op.content_id.as_deref(), &as_http(&r)));
                        break;
                    }
                }
            }
            Item::Single(op) => {
                let r = if op.method.eq_ignore_ascii_case("POST") {
                    apply(st, op)
                } else {
                    odata_error(
                        StatusCode::NOT_IMPLEMENTED,
                        &format!(
                            "The sandbox supports only POST inside $batch, not {}.",
                            op.method
                        ),
                        None,
                    )
                };
                let ok = r.status.is_success();
                out.push(http_part(op.content_id.as_deref(), &as_http(&r)));
                if !ok {
                    break;
                }
            }
        }
    }
    batch_answer(&out)
}

/// The entity set an operation's URL points at (absolute, `/data/…` or relative).
fn resolve<'a>(st: &State, target: &'a str) -> Option<&'a str> {
    let path = target.split('?').next().unwrap_or("");
    let rest = if let Some(r) = path.strip_prefix(st.env_url.as_str()) {
        r.strip_prefix("/data/")?
    } else if path.contains("://") {
        return None;
    } else if let Some(r) = path.strip_prefix("/data/") {
        r
    } else if path.starts_with('/') {
        return None;
    } else {
        path
    };
    Some(rest)
}

fn entity(set: &str) -> Option<&'static EntityDef> {
    ENTITIES.iter().find(|e| e.set == set)
}

/// Applies one operation (same validation as a single POST), plus the on-demand rejection.
fn apply(st: &mut State, op: &Op) -> SimResponse {
    let Some(set) = resolve(st, &op.target) else {
        return odata_error(
            StatusCode::NOT_FOUND,
            &format!(
                "No HTTP resource was found that matches the request URI '{}'.",
                op.target
            ),
            None,
        );
    };
    // `DELETE LedgerJournalLines(key)` inside a changeset: the same delete as on its own
    // (F&O removes lines of unposted journals only, and 404 for a line that is gone).
    if op.method.eq_ignore_ascii_case("DELETE") {
        if let Some((name, rest)) = set.split_once('(') {
            if let (Some(def), Some(key)) = (
                entity(name).filter(|d| d.set == h::SET || d.set == l::SET),
                rest.strip_suffix(')'),
            ) {
                return fno::delete(st, def, &fno::percent_decode(key));
            }
        }
        return odata_error(
            StatusCode::NOT_FOUND,
            &format!(
                "No HTTP resource was found that matches the request URI '{}'.",
                op.target
            ),
            None,
        );
    }
    let Some(def) = entity(set).filter(|d| d.set == h::SET || d.set == l::SET) else {
        return odata_error(
            StatusCode::NOT_FOUND,
            &format!("Resource not found for the segment '{set}' (the sandbox $batch creates journal headers and lines)."),
            None,
        );
    };
    if !op.method.eq_ignore_ascii_case("POST") {
        return odata_error(
            StatusCode::NOT_IMPLEMENTED,
            &format!(
                "The sandbox supports only POST inside $batch, not {}.",
                op.method
            ),
            None,
        );
    }
    if let Some(ct) = &op.content_type {
        if !ct.to_ascii_lowercase().starts_with("application/json") {
            return bad_body(&format!(
                "The content type '{ct}' is not supported; send application/json."
            ));
        }
    }
    let text = String::from_utf8_lossy(&op.body);
    if let Some(t) = st
        .reject_containing
        .iter()
        .find(|t| text.contains(t.as_str()))
    {
        return write_failed(
            l::ENTITY_TYPE,
            &[format!(
                "The sandbox was told to reject lines containing '{t}'."
            )],
        );
    }
    fno::create(st, &op.body, def)
}

/// An answer as an embedded HTTP response.
fn as_http(r: &SimResponse) -> HttpMessage {
    let code = r.status.as_u16();
    HttpMessage {
        start_line: format!("HTTP/1.1 {code} {}", reason_phrase(code)),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (header_case(k), v.clone()))
            .collect(),
        body: r.body.as_bytes().to_vec(),
    }
}

fn header_case(k: &str) -> String {
    match k {
        "content-type" => "Content-Type".into(),
        "location" => "Location".into(),
        "odata-version" => "OData-Version".into(),
        other => other.to_string(),
    }
}

/// What a changeset can change, to undo it when one of its operations fails.
struct Snapshot {
    lines: usize,
    /// A full copy when the changeset deletes (a delete is not undone by truncating).
    all_lines: Option<Vec<super::SimLine>>,
    headers: Vec<super::SimHeader>,
    next_batch: std::collections::BTreeMap<String, u64>,
    next_voucher: std::collections::BTreeMap<String, u64>,
}

impl Snapshot {
    fn take(st: &State, deletes: bool) -> Self {
        Snapshot {
            lines: st.lines.len(),
            all_lines: deletes.then(|| st.lines.clone()),
            headers: st.headers.clone(),
            next_batch: st.next_batch.clone(),
            next_voucher: st.next_voucher.clone(),
        }
    }

    fn restore(self, st: &mut State) {
        match self.all_lines {
            Some(all) => st.lines = all,
            None => st.lines.truncate(self.lines),
        }
        st.headers = self.headers;
        st.next_batch = self.next_batch;
        st.next_voucher = self.next_voucher;
    }
}
