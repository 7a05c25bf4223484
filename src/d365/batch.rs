//! Journal lines through OData `$batch`: one changeset per voucher, so each voucher is created
//! all-or-nothing, and as many vouchers per `$batch` request as the operation limit allows.
//!
//! **Request** (`POST {env}/data/$batch`, `Content-Type: multipart/mixed; boundary=batch_<hex>`,
//! `Accept: multipart/mixed`, `OData-Version: 4.0`): one nested `multipart/mixed` part
//! (`boundary=changeset_<hex>`) per voucher; inside it one `application/http` part per line
//! with `Content-Transfer-Encoding: binary`, a `Content-ID` unique within the batch (1, 2, …),
//! and the request `POST {env}/data/LedgerJournalLines HTTP/1.1` with a JSON body identical to
//! the single-line POST. The operation URL is absolute: OData 4.0 allows absolute URLs, absolute
//! paths and URLs relative to the service root, and the absolute form is the one a maintained
//! F&O client sends (d365fo.integrations, `Import-D365ODataEntityBatchMode`). All line endings
//! are CRLF. `Prefer: odata.continue-on-error` is not sent (undocumented for F&O): F&O stops at
//! the first failed changeset.
//!
//! **Answer** (200, `multipart/mixed`): one part per processed changeset, in order — a nested
//! multipart of `HTTP/1.1 201 Created` responses for a changeset that was applied, or a single
//! `application/http` error response for the changeset that failed (nothing of it was applied);
//! changesets after it are absent (not processed). Every part's status line, headers and JSON
//! body are read; created lines are matched to the sent lines by `Content-ID` (order as a
//! fallback) and read with exact decimals.
//!
//! **Outcomes** — the rules that keep a journal from being duplicated or half-posted:
//! - 429 on the `$batch`: refused before processing, resent after `Retry-After` (shared retry
//!   policy); still 429 after the last attempt → [`ChangesetOutcome::NotProcessed`].
//! - 5xx, timeout, dropped connection, unreadable or unexpected answer → every changeset of that
//!   request is [`ChangesetOutcome::Unknown`]. Never resent here: the caller must read the
//!   journal back and reconcile.
//! - Another 4xx on the whole request (e.g. too many operations) → every changeset of that
//!   request is [`ChangesetOutcome::Refused`] with F&O's messages (nothing was applied).
//! - Per journal, once a request did not create everything, the journal's later requests are not
//!   sent ([`ChangesetOutcome::NotProcessed`]): stop at the first failure, like F&O does inside
//!   one `$batch`.
//! - Requests for one journal are strictly sequential (F&O serializes line inserts on the
//!   journal header: parallel writers hit update conflicts). Different journals run in parallel,
//!   at most [`BatchSettings::max_in_flight`] `$batch` requests at a time.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use reqwest::StatusCode;
use tokio::sync::Semaphore;
use url::Url;

use super::error::{parse_error_body, summarize_body};
use super::journal::{company, line_body, parse_line};
use super::multipart::{
    http_part, multipart_boundary, nested_part, new_boundary, parse_multipart, write_multipart,
    HttpMessage, Part,
};
use super::names::line as l;
use super::odata::{Payload, Row};
use super::{D365Client, D365Error, JournalLineRow, NewJournalLine};

/// The `$batch` path under `/data/`.
pub const BATCH_PATH: &str = "$batch";
const ENTITY: &str = "$batch";

/// Limits for [`D365Client::create_lines_batched`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    /// Operations (lines) per `$batch` request. Microsoft documents 5,000; a maintained client
    /// measured 200 on a live environment, hence the default.
    pub max_operations: usize,
    /// `$batch` requests in flight at once, across different journals (one journal's requests
    /// are always sequential).
    pub max_in_flight: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            max_operations: 200,
            max_in_flight: 2,
        }
    }
}

/// What happened to one changeset (the lines of one voucher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangesetOutcome {
    /// All lines were created, in the order sent.
    Created(Vec<JournalLineRow>),
    /// F&O refused this changeset inside a processed `$batch`; nothing of it was saved.
    Failed { status: u16, messages: Vec<String> },
    /// F&O refused the whole `$batch` request (4xx other than 429, e.g. too many operations, or
    /// an environment that does not take the request as built): nothing of it was applied.
    Refused { status: u16, messages: Vec<String> },
    /// Not applied and safe to send again: an earlier changeset of the same journal failed or
    /// has an unknown outcome, or the request was refused before processing (throttling
    /// exhausted, unreachable, authentication). `reason` says which.
    NotProcessed { reason: String },
    /// Not applied: the request was not sent, or was throttled and its retry would have outlived
    /// the client's deadline ([`D365Error::OutOfTime`]). Safe to send again later.
    OutOfTime { reason: String },
    /// The request's outcome is unknown (5xx, timeout, dropped connection, unreadable answer):
    /// the lines may or may not exist. Read the journal back before doing anything else.
    Unknown { detail: String },
}

impl ChangesetOutcome {
    pub fn is_created(&self) -> bool {
        matches!(self, ChangesetOutcome::Created(_))
    }
}

/// One `$batch` request: the changesets it carries, with their index in the caller's slice.
type Chunk<'a> = Vec<(usize, &'a [NewJournalLine])>;

impl D365Client {
    /// Posts `changesets` (each = the lines of one voucher, created atomically) in as few
    /// `$batch` requests as `settings` allow. Returns one outcome per changeset, in order.
    ///
    /// `Err` only for invalid input, before anything is sent: an empty changeset, a changeset
    /// mixing journals, a changeset larger than `max_operations` (a voucher is never split),
    /// or zero limits. Everything that happens on the wire is in the outcomes.
    pub async fn create_lines_batched(
        &self,
        changesets: &[Vec<NewJournalLine>],
        settings: &BatchSettings,
    ) -> Result<Vec<ChangesetOutcome>, D365Error> {
        let journals = plan(changesets, settings)?;
        let gate = Semaphore::new(settings.max_in_flight);
        let futs: Vec<_> = journals
            .into_iter()
            .map(|chunks| self.post_journal(chunks, &gate))
            .collect();
        let mut out: Vec<Option<ChangesetOutcome>> = vec![None; changesets.len()];
        for results in join_all(futs).await {
            for (i, o) in results {
                out[i] = Some(o);
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every changeset has an outcome"))
            .collect())
    }

    /// Sends one journal's chunks one after the other, stopping at the first that did not
    /// create everything.
    async fn post_journal(
        &self,
        chunks: Vec<Chunk<'_>>,
        gate: &Semaphore,
    ) -> Vec<(usize, ChangesetOutcome)> {
        let mut out = Vec::new();
        let mut stop: Option<String> = None;
        for chunk in chunks {
            if let Some(reason) = &stop {
                out.extend(chunk.iter().map(|(i, _)| {
                    (
                        *i,
                        ChangesetOutcome::NotProcessed {
                            reason: reason.clone(),
                        },
                    )
                }));
                continue;
            }
            let outcomes = {
                let _permit = gate.acquire().await.expect("semaphore is never closed");
                self.send_chunk(&chunk).await
            };
            if let Some(bad) = outcomes.iter().find(|o| !o.is_created()) {
                let what = match bad {
                    ChangesetOutcome::Failed { .. } => "a changeset was refused",
                    ChangesetOutcome::Refused { .. } => "the request was refused",
                    ChangesetOutcome::Unknown { .. } => "its outcome is unknown",
                    _ => "it was not processed",
                };
                stop = Some(format!(
                    "not sent: an earlier $batch request for this journal did not complete ({what})"
                ));
            }
            out.extend(chunk.iter().map(|(i, _)| *i).zip(outcomes));
        }
        out
    }

    /// One `$batch` request; one outcome per changeset of `chunk`.
    async fn send_chunk(&self, chunk: &Chunk<'_>) -> Vec<ChangesetOutcome> {
        let sets: Vec<&[NewJournalLine]> = chunk.iter().map(|(_, s)| *s).collect();
        let lines_url = self.odata.url_no_query(l::SET);
        let (content_type, bytes) = match build_request(&lines_url, &sets) {
            Ok(x) => x,
            Err(e) => {
                return all(&sets, || ChangesetOutcome::Failed {
                    status: 0,
                    messages: vec![e.to_string()],
                })
            }
        };
        let ops: usize = sets.iter().map(|s| s.len()).sum();
        tracing::debug!(target: "d365::batch", changesets = sets.len(), operations = ops, "sending $batch");
        let payload = Payload {
            bytes,
            content_type,
            accept: "multipart/mixed",
        };
        let resp = match self.odata.post_raw(BATCH_PATH, &payload, ENTITY).await {
            Ok(r) => r,
            Err(D365Error::OutcomeUnknown { detail, .. }) => {
                return all(&sets, || ChangesetOutcome::Unknown {
                    detail: detail.clone(),
                })
            }
            Err(e @ D365Error::OutOfTime { .. }) => {
                let reason = e.to_string();
                return all(&sets, || ChangesetOutcome::OutOfTime {
                    reason: reason.clone(),
                });
            }
            Err(e) => {
                // Unreachable, auth, configuration: refused before anything was processed.
                let reason = e.to_string();
                return all(&sets, || ChangesetOutcome::NotProcessed {
                    reason: reason.clone(),
                });
            }
        };
        let status = resp.status;
        let code = status.as_u16();
        let text = |b: &Result<Vec<u8>, String>| match b {
            Ok(b) => String::from_utf8_lossy(b).into_owned(),
            Err(e) => e.clone(),
        };
        if status == StatusCode::TOO_MANY_REQUESTS {
            let reason = format!(
                "D365 is still throttling $batch requests (HTTP 429) after all retries{}",
                resp.retry_after
                    .map(|d| format!("; it asks to wait {}s", d.as_secs()))
                    .unwrap_or_default()
            );
            return all(&sets, || ChangesetOutcome::NotProcessed {
                reason: reason.clone(),
            });
        }
        if status.is_server_error() {
            let detail = format!(
                "HTTP {code} on $batch: {}",
                summarize_body(code, &text(&resp.body))
            );
            return all(&sets, || ChangesetOutcome::Unknown {
                detail: detail.clone(),
            });
        }
        if !status.is_success() {
            let messages = parse_error_body(code, &text(&resp.body));
            return all(&sets, || ChangesetOutcome::Refused {
                status: code,
                messages: messages.clone(),
            });
        }
        let body = match resp.body {
            Ok(b) => b,
            Err(e) => {
                return all(&sets, || ChangesetOutcome::Unknown {
                    detail: format!("HTTP {code} on $batch but {e}"),
                })
            }
        };
        match parse_response(resp.content_type.as_deref(), &body, &sets) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::warn!(target: "d365::batch", "unreadable $batch answer: {e}");
                all(&sets, || ChangesetOutcome::Unknown {
                    detail: format!("HTTP {code} on $batch but the answer could not be read: {e}"),
                })
            }
        }
    }
}

fn all(sets: &[&[NewJournalLine]], f: impl Fn() -> ChangesetOutcome) -> Vec<ChangesetOutcome> {
    sets.iter().map(|_| f()).collect()
}

/// Validates the input and groups changesets per journal (first-appearance order), each journal
/// cut into requests of at most `max_operations` lines without splitting a changeset.
fn plan<'a>(
    changesets: &'a [Vec<NewJournalLine>],
    settings: &BatchSettings,
) -> Result<Vec<Vec<Chunk<'a>>>, D365Error> {
    if settings.max_operations == 0 || settings.max_in_flight == 0 {
        return Err(D365Error::InvalidInput(
            "$batch limits must be at least 1 (max_operations, max_in_flight)".into(),
        ));
    }
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut journals: Vec<Vec<Chunk<'a>>> = Vec::new();
    for (i, cs) in changesets.iter().enumerate() {
        let Some(first) = cs.first() else {
            return Err(D365Error::InvalidInput(format!(
                "changeset {} has no lines",
                i + 1
            )));
        };
        let key = (company(&first.legal_entity)?, first.batch_number.clone());
        if key.1.trim().is_empty() {
            return Err(D365Error::InvalidInput(format!(
                "changeset {} has no journal batch number",
                i + 1
            )));
        }
        for ln in cs {
            if company(&ln.legal_entity)? != key.0 || ln.batch_number != key.1 {
                return Err(D365Error::InvalidInput(format!(
                    "changeset {} mixes journals ({} {} and {} {}); a voucher belongs to one journal",
                    i + 1,
                    key.0,
                    key.1,
                    ln.legal_entity,
                    ln.batch_number
                )));
            }
        }
        if cs.len() > settings.max_operations {
            return Err(D365Error::InvalidInput(format!(
                "changeset {} (journal {}, {} lines) is larger than the $batch limit of {} operations; a voucher is never split across requests",
                i + 1,
                key.1,
                cs.len(),
                settings.max_operations
            )));
        }
        let j = match keys.iter().position(|k| *k == key) {
            Some(j) => j,
            None => {
                keys.push(key);
                journals.push(Vec::new());
                journals.len() - 1
            }
        };
        let chunks = &mut journals[j];
        let fits = chunks.last().is_some_and(|c: &Chunk<'_>| {
            c.iter().map(|(_, s)| s.len()).sum::<usize>() + cs.len() <= settings.max_operations
        });
        if fits {
            chunks.last_mut().expect("checked").push((i, cs));
        } else {
            chunks.push(vec![(i, cs)]);
        }
    }
    Ok(journals)
}

/// The `$batch` body for `sets` and its `Content-Type`. Content-IDs run 1..n across the batch.
pub(crate) fn build_request(
    lines_url: &Url,
    sets: &[&[NewJournalLine]],
) -> Result<(String, Vec<u8>), D365Error> {
    let mut id = 0usize;
    let mut parts = Vec::with_capacity(sets.len());
    for set in sets {
        let mut ops = Vec::with_capacity(set.len());
        for line in *set {
            id += 1;
            let body = line_body(line)?;
            let msg = HttpMessage {
                start_line: format!("POST {lines_url} HTTP/1.1"),
                headers: vec![
                    (
                        "Content-Type".into(),
                        "application/json; charset=utf-8".into(),
                    ),
                    ("Accept".into(), "application/json".into()),
                    ("Content-Length".into(), body.len().to_string()),
                ],
                body,
            };
            ops.push(http_part(Some(&id.to_string()), &msg));
        }
        parts.push(ops);
    }
    // Boundaries are random; regenerate in the (astronomically unlikely) case a body has one.
    loop {
        let batch = new_boundary("batch");
        let changesets: Vec<(String, &Vec<Part>)> = parts
            .iter()
            .map(|p| (new_boundary("changeset"), p))
            .collect();
        let top: Vec<Part> = changesets
            .iter()
            .map(|(b, ops)| nested_part(b, ops))
            .collect();
        let clash = top
            .iter()
            .any(|p| p.body.windows(batch.len()).any(|w| w == batch.as_bytes()))
            || changesets.iter().any(|(b, ops)| {
                ops.iter()
                    .any(|o| o.body.windows(b.len()).any(|w| w == b.as_bytes()))
            });
        if !clash {
            return Ok((
                format!("multipart/mixed; boundary={batch}"),
                write_multipart(&batch, &top),
            ));
        }
    }
}

/// Reads a 2xx `$batch` answer into one outcome per changeset of `sets`.
///
/// `Err` (→ all `Unknown`) when the answer cannot be trusted as a whole: not multipart, bad
/// framing, more parts than changesets.
pub(crate) fn parse_response(
    content_type: Option<&str>,
    body: &[u8],
    sets: &[&[NewJournalLine]],
) -> Result<Vec<ChangesetOutcome>, String> {
    let boundary = content_type.and_then(multipart_boundary).ok_or_else(|| {
        format!("Content-Type {content_type:?} is not multipart/mixed with a boundary")
    })?;
    let parts = parse_multipart(body, &boundary).map_err(|e| e.to_string())?;
    if parts.len() > sets.len() {
        return Err(format!(
            "{} parts for {} changesets",
            parts.len(),
            sets.len()
        ));
    }
    // Content-ID → (changeset, line) for the ids we sent.
    let mut first_id = Vec::with_capacity(sets.len());
    let mut next = 1usize;
    for s in sets {
        first_id.push(next);
        next += s.len();
    }
    let mut out = Vec::with_capacity(sets.len());
    let mut failed = false;
    for (k, set) in sets.iter().enumerate() {
        let Some(part) = parts.get(k) else {
            out.push(if failed {
                ChangesetOutcome::NotProcessed {
                    reason: "D365 stopped the $batch at an earlier failed changeset".into(),
                }
            } else {
                // Fewer parts without an error part: nothing says what happened.
                ChangesetOutcome::Unknown {
                    detail: format!(
                        "the $batch answer has no part for changeset {} and no error before it",
                        k + 1
                    ),
                }
            });
            continue;
        };
        let o = changeset_outcome(part, set, first_id[k]);
        failed |= matches!(o, ChangesetOutcome::Failed { .. });
        out.push(o);
    }
    Ok(out)
}

/// One top-level part of the answer → the outcome of the changeset it answers.
fn changeset_outcome(part: &Part, set: &[NewJournalLine], first_id: usize) -> ChangesetOutcome {
    let unknown = |detail: String| ChangesetOutcome::Unknown { detail };
    let responses: Vec<(Option<String>, HttpMessage)> = if let Some(b) = part.multipart_boundary() {
        let inner = match parse_multipart(&part.body, &b) {
            Ok(p) => p,
            Err(e) => return unknown(format!("changeset answer: {e}")),
        };
        let mut v = Vec::with_capacity(inner.len());
        for p in inner {
            match HttpMessage::parse(&p.body) {
                Ok(m) => v.push((p.header("Content-ID").map(str::to_string), m)),
                Err(e) => return unknown(format!("changeset answer: {e}")),
            }
        }
        v
    } else if part.is_http() {
        // A failed changeset answers with one error response instead of a multipart.
        match HttpMessage::parse(&part.body) {
            Ok(m) => vec![(part.header("Content-ID").map(str::to_string), m)],
            Err(e) => return unknown(format!("changeset answer: {e}")),
        }
    } else {
        return unknown(format!(
            "changeset answer has Content-Type {:?}",
            part.header("Content-Type")
        ));
    };
    // Any failed response decides the changeset (it is atomic).
    for (_, m) in &responses {
        let status = match m.status() {
            Ok(s) => s,
            Err(e) => return unknown(e.to_string()),
        };
        if (200..300).contains(&status) {
            continue;
        }
        let text = m.body_text();
        return match status {
            429 => ChangesetOutcome::NotProcessed {
                reason: format!(
                    "D365 throttled the changeset inside the $batch (HTTP 429): {}",
                    summarize_body(429, &text)
                ),
            },
            s if s >= 500 => unknown(format!(
                "HTTP {s} for a changeset inside the $batch: {}",
                summarize_body(s, &text)
            )),
            s => ChangesetOutcome::Failed {
                status: s,
                messages: parse_error_body(s, &text),
            },
        };
    }
    if responses.len() != set.len() {
        return unknown(format!(
            "{} responses for a changeset of {} lines",
            responses.len(),
            set.len()
        ));
    }
    // Match by Content-ID when every response has one of ours; otherwise by order.
    let mut slots: Vec<Option<JournalLineRow>> = vec![None; set.len()];
    let by_id = responses.iter().all(|(id, _)| {
        id.as_deref()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .is_some_and(|n| n >= first_id && n < first_id + set.len())
    });
    for (pos, (id, m)) in responses.iter().enumerate() {
        let slot = if by_id {
            id.as_deref()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .expect("checked")
                - first_id
        } else {
            pos
        };
        let row = match Row::from_json(l::SET, &m.body).and_then(|r| parse_line(&r)) {
            Ok(r) => r,
            Err(e) => return unknown(format!("created line could not be read: {e}")),
        };
        if slots[slot].replace(row).is_some() {
            return unknown(format!("two responses for Content-ID {}", first_id + slot));
        }
    }
    ChangesetOutcome::Created(slots.into_iter().map(|r| r.expect("filled")).collect())
}

/// Polls all futures concurrently on the current task (no spawning, so they may borrow).
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("ready")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn ln(batch: &str, acct: &str, d: &str, c: &str) -> NewJournalLine {
        NewJournalLine {
            legal_entity: "USMF".into(),
            batch_number: batch.into(),
            trans_date: NaiveDate::from_ymd_opt(2026, 3, 31).unwrap(),
            account_display: acct.into(),
            offset_display: None,
            debit: Decimal::from_str(d).unwrap(),
            credit: Decimal::from_str(c).unwrap(),
            currency: "USD".into(),
            text: "t".into(),
            voucher: None,
        }
    }

    fn created_json(n: u32, debit: &str) -> String {
        format!(
            r#"{{"@odata.etag":"W/\"x\"","dataAreaId":"usmf","JournalBatchNumber":"00042","LineNumber":{n},"Voucher":"GNJL000001","TransDate":"2026-03-31T12:00:00Z","AccountDisplayValue":"618100","OffsetAccountDisplayValue":"","DebitAmount":{debit},"CreditAmount":0,"CurrencyCode":"USD","Text":"t"}}"#
        )
    }

    fn op_response(id: Option<&str>, status: &str, body: &str) -> Part {
        http_part(
            id,
            &HttpMessage {
                start_line: format!("HTTP/1.1 {status}"),
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: body.as_bytes().to_vec(),
            },
        )
    }

    #[test]
    fn request_has_one_changeset_per_voucher_and_content_ids() {
        let url = Url::parse("https://env.example/data/LedgerJournalLines").unwrap();
        let a = [
            ln("1", "618100", "1.10", "0"),
            ln("1", "200150", "0", "1.10"),
        ];
        let b = [ln("1", "618200", "2", "0")];
        let (ct, body) = build_request(&url, &[&a, &b]).unwrap();
        let boundary = multipart_boundary(&ct).unwrap();
        assert!(boundary.starts_with("batch_"));
        let top = parse_multipart(&body, &boundary).unwrap();
        assert_eq!(top.len(), 2);
        let mut ids = vec![];
        for (p, n) in top.iter().zip([2usize, 1]) {
            let cb = p.multipart_boundary().unwrap();
            assert!(cb.starts_with("changeset_") && cb != boundary);
            let ops = parse_multipart(&p.body, &cb).unwrap();
            assert_eq!(ops.len(), n);
            for o in ops {
                assert!(o.is_http());
                assert_eq!(o.header("Content-Transfer-Encoding"), Some("binary"));
                ids.push(o.header("Content-ID").unwrap().to_string());
                let m = HttpMessage::parse(&o.body).unwrap();
                assert_eq!(
                    m.request_line().unwrap(),
                    ("POST", "https://env.example/data/LedgerJournalLines")
                );
                let json: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
                assert_eq!(json["dataAreaId"], "usmf");
            }
        }
        assert_eq!(ids, ["1", "2", "3"]);
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains("\"DebitAmount\":1.10"), "{text}");
        assert!(!text.replace("\r\n", "").contains('\n'), "bare LF");
    }

    #[test]
    fn response_created_failed_and_not_processed() {
        let a = [ln("1", "618100", "1", "0"), ln("1", "200150", "0", "1")];
        let b = [ln("1", "618200", "2", "0")];
        let c = [ln("1", "618200", "3", "0")];
        // Changeset 1 answered out of order (matched by Content-ID); changeset 2 fails.
        let cs1 = nested_part(
            "changesetresponse_1",
            &[
                op_response(Some("2"), "201 Created", &created_json(2, "0")),
                op_response(Some("1"), "201 Created", &created_json(1, "1.00")),
            ],
        );
        let err = r#"{"error":{"code":"","message":"An error has occurred.","innererror":{"message":"Write failed for table row of type 'LedgerJournalLineEntity'. Infolog: Warning: The value '999998' in field 'Main account' is not found in the related table 'Main accounts'.; Warning: validateField failed on field 'LedgerJournalLineEntity.AccountDisplayValue'.","type":"x"}}}"#;
        let cs2 = op_response(None, "400 Bad Request", err);
        let body = write_multipart("batchresponse_z", &[cs1, cs2]);
        let out = parse_response(
            Some("multipart/mixed; boundary=batchresponse_z"),
            &body,
            &[&a, &b, &c],
        )
        .unwrap();
        match &out[0] {
            ChangesetOutcome::Created(rows) => {
                assert_eq!(rows[0].line_number, "1");
                assert_eq!(rows[0].debit.to_string(), "1.00");
                assert_eq!(rows[1].line_number, "2");
            }
            o => panic!("{o:?}"),
        }
        match &out[1] {
            ChangesetOutcome::Failed { status, messages } => {
                assert_eq!(*status, 400);
                assert!(messages[0].contains("'999998'"), "{messages:?}");
            }
            o => panic!("{o:?}"),
        }
        assert!(matches!(out[2], ChangesetOutcome::NotProcessed { .. }));
    }

    #[test]
    fn anomalies_are_unknown_not_guessed() {
        let a = [ln("1", "618100", "1", "0")];
        let b = [ln("1", "618100", "1", "0")];
        // Not multipart at all.
        assert!(parse_response(Some("application/json"), b"{}", &[&a]).is_err());
        // More parts than changesets.
        let p = || {
            nested_part(
                "c",
                &[op_response(Some("1"), "201 Created", &created_json(1, "1"))],
            )
        };
        let body = write_multipart("b", &[p(), p()]);
        assert!(parse_response(Some("multipart/mixed; boundary=b"), &body, &[&a]).is_err());
        // Fewer parts and no error: the missing one is Unknown, not NotProcessed.
        let body = write_multipart("b", &[p()]);
        let out = parse_response(Some("multipart/mixed; boundary=b"), &body, &[&a, &b]).unwrap();
        assert!(out[0].is_created());
        assert!(
            matches!(out[1], ChangesetOutcome::Unknown { .. }),
            "{out:?}"
        );
        // A 201 whose body is not a line, and a 5xx part.
        let bad = nested_part("c", &[op_response(Some("1"), "201 Created", "{}")]);
        let five = op_response(None, "500 Internal Server Error", "oops");
        let body = write_multipart("b", &[bad, five]);
        let out = parse_response(Some("multipart/mixed; boundary=b"), &body, &[&a, &b]).unwrap();
        assert!(
            matches!(out[0], ChangesetOutcome::Unknown { .. }),
            "{out:?}"
        );
        assert!(
            matches!(out[1], ChangesetOutcome::Unknown { .. }),
            "{out:?}"
        );
        // Wrong number of responses in a changeset.
        let two = [ln("1", "618100", "1", "0"), ln("1", "618100", "0", "1")];
        let body = write_multipart("b", &[p()]);
        let out = parse_response(Some("multipart/mixed; boundary=b"), &body, &[&two]).unwrap();
        assert!(
            matches!(out[0], ChangesetOutcome::Unknown { .. }),
            "{out:?}"
        );
    }

    #[test]
    fn planning_groups_journals_and_never_splits_a_voucher() {
        let s = BatchSettings {
            max_operations: 5,
            max_in_flight: 2,
        };
        let v = |b: &str, n: usize| vec![ln(b, "618100", "1", "0"); n];
        let sets = vec![v("1", 3), v("2", 2), v("1", 2), v("1", 1), v("1", 4)];
        let plan = plan(&sets, &s).unwrap();
        let idx = |j: &Vec<Chunk<'_>>| -> Vec<Vec<usize>> {
            j.iter()
                .map(|c| c.iter().map(|(i, _)| *i).collect())
                .collect()
        };
        assert_eq!(plan.len(), 2);
        assert_eq!(idx(&plan[0]), vec![vec![0, 2], vec![3, 4]]);
        assert_eq!(idx(&plan[1]), vec![vec![1]]);
        let e = super::plan(&[v("1", 6)], &s).unwrap_err();
        assert!(e.to_string().contains("never split"), "{e}");
        assert!(super::plan(&[vec![]], &s).is_err());
        let mut mixed = v("1", 2);
        mixed[1].batch_number = "2".into();
        assert!(super::plan(&[mixed], &s)
            .unwrap_err()
            .to_string()
            .contains("mixes journals"));
    }
}

/// What happened to an atomic delete of journal lines ([`D365Client::delete_lines_atomic`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Every line is gone.
    Deleted,
    /// F&O refused the changeset (a line was no longer there, the journal was posted…):
    /// nothing of it was applied.
    Failed { status: u16, messages: Vec<String> },
    /// F&O refused the `$batch` request as a whole (e.g. an environment without `$batch`):
    /// nothing was applied; the caller may delete line by line instead.
    Refused { status: u16, messages: Vec<String> },
    /// Not applied and safe to try again (throttling, unreachable, out of time).
    NotProcessed { reason: String },
    /// Unknown (5xx, timeout, unreadable answer): read the journal again.
    Unknown { detail: String },
}

impl D365Client {
    /// Deletes `line_numbers` of one unposted journal in one `$batch` changeset: all or none.
    /// Used to remove a duplicate or incomplete voucher without ever leaving half of it.
    pub async fn delete_lines_atomic(
        &self,
        legal_entity: &str,
        batch: &str,
        line_numbers: &[String],
    ) -> Result<DeleteOutcome, D365Error> {
        if line_numbers.is_empty() {
            return Ok(DeleteOutcome::Deleted);
        }
        let mut ops = Vec::with_capacity(line_numbers.len());
        for (i, n) in line_numbers.iter().enumerate() {
            let key = super::journal::line_key_path(legal_entity, batch, n)?;
            let msg = HttpMessage {
                start_line: format!("DELETE {} HTTP/1.1", self.odata.url_no_query(&key)),
                headers: vec![("Accept".into(), "application/json".into())],
                body: Vec::new(),
            };
            ops.push(http_part(Some(&(i + 1).to_string()), &msg));
        }
        let top = vec![nested_part(&new_boundary("changeset"), &ops)];
        let boundary = new_boundary("batch");
        let payload = Payload {
            bytes: write_multipart(&boundary, &top),
            content_type: format!("multipart/mixed; boundary={boundary}"),
            accept: "multipart/mixed",
        };
        let resp = match self.odata.post_raw(BATCH_PATH, &payload, ENTITY).await {
            Ok(r) => r,
            Err(D365Error::OutcomeUnknown { detail, .. }) => {
                return Ok(DeleteOutcome::Unknown { detail })
            }
            Err(e) => {
                return Ok(DeleteOutcome::NotProcessed {
                    reason: e.to_string(),
                })
            }
        };
        let code = resp.status.as_u16();
        let text = |b: &Result<Vec<u8>, String>| match b {
            Ok(b) => String::from_utf8_lossy(b).into_owned(),
            Err(e) => e.clone(),
        };
        if resp.status == StatusCode::TOO_MANY_REQUESTS {
            return Ok(DeleteOutcome::NotProcessed {
                reason: "D365 is still throttling $batch requests (HTTP 429) after all retries"
                    .into(),
            });
        }
        if resp.status.is_server_error() {
            return Ok(DeleteOutcome::Unknown {
                detail: format!(
                    "HTTP {code} on $batch: {}",
                    summarize_body(code, &text(&resp.body))
                ),
            });
        }
        if !resp.status.is_success() {
            return Ok(DeleteOutcome::Refused {
                status: code,
                messages: parse_error_body(code, &text(&resp.body)),
            });
        }
        let unknown = |detail: String| Ok(DeleteOutcome::Unknown { detail });
        let body = match resp.body {
            Ok(b) => b,
            Err(e) => return unknown(format!("HTTP {code} on $batch but {e}")),
        };
        let Some(b) = resp.content_type.as_deref().and_then(multipart_boundary) else {
            return unknown("the $batch answer is not multipart".into());
        };
        let parts = match parse_multipart(&body, &b) {
            Ok(p) if p.len() == 1 => p,
            Ok(p) => return unknown(format!("{} parts for one changeset", p.len())),
            Err(e) => return unknown(e.to_string()),
        };
        let part = &parts[0];
        let responses = if let Some(cb) = part.multipart_boundary() {
            match parse_multipart(&part.body, &cb) {
                Ok(inner) => inner
                    .iter()
                    .map(|p| HttpMessage::parse(&p.body))
                    .collect::<Result<Vec<_>, _>>(),
                Err(e) => return unknown(e.to_string()),
            }
        } else {
            HttpMessage::parse(&part.body).map(|m| vec![m])
        };
        let responses = match responses {
            Ok(r) => r,
            Err(e) => return unknown(e.to_string()),
        };
        for m in &responses {
            let status = match m.status() {
                Ok(s) => s,
                Err(e) => return unknown(e.to_string()),
            };
            if (200..300).contains(&status) {
                continue;
            }
            let t = m.body_text();
            return Ok(match status {
                429 => DeleteOutcome::NotProcessed {
                    reason: format!("D365 throttled the changeset: {}", summarize_body(429, &t)),
                },
                s if s >= 500 => DeleteOutcome::Unknown {
                    detail: format!("HTTP {s} inside the $batch: {}", summarize_body(s, &t)),
                },
                s => DeleteOutcome::Failed {
                    status: s,
                    messages: parse_error_body(s, &t),
                },
            });
        }
        if responses.len() != line_numbers.len() {
            return unknown(format!(
                "{} responses for {} deletions",
                responses.len(),
                line_numbers.len()
            ));
        }
        Ok(DeleteOutcome::Deleted)
    }
}
