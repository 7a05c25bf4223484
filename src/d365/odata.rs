//! The OData wire layer: URLs and query encoding, headers, bearer tokens with one refresh on
//! 401, server paging, and mapping of HTTP outcomes to [`D365Error`].
//!
//! Rows are kept as raw JSON per field ([`Row`]) so amounts are read from the exact digits F&O
//! sent, never through `f64`.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::NaiveDate;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Client, Method, Response, StatusCode};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use super::entra::TokenCache;
use super::error::{parse_error_body, summarize_body, D365Error};
use super::names;
use crate::http::{send_with_retry_paced, Idempotency, RetryPolicy};
use crate::rate::RateLimiter;
use crate::secrets::Secret;

/// Dates F&O uses for "no date" (`1900-01-01`) and "never ends" (`2154-12-31`).
const EMPTY_DATE: (i32, u32, u32) = (1900, 1, 1);
const NEVER_DATE: (i32, u32, u32) = (2154, 12, 31);

/// One entity row; field values kept as the raw JSON text F&O sent.
#[derive(Debug)]
pub(crate) struct Row {
    entity: &'static str,
    fields: BTreeMap<String, Box<RawValue>>,
}

impl Row {
    /// A row from a JSON object (an entity as F&O returns it, e.g. inside a `$batch` answer).
    pub fn from_json(entity: &'static str, json: &[u8]) -> Result<Row, D365Error> {
        let fields: BTreeMap<String, Box<RawValue>> =
            serde_json::from_slice(json).map_err(|e| D365Error::Protocol {
                entity: entity.into(),
                detail: format!("the record is not a JSON object ({e})"),
            })?;
        Ok(Row { entity, fields })
    }

    fn raw(&self, field: &str) -> Result<&str, D365Error> {
        self.fields
            .get(field)
            .map(|r| r.get().trim())
            .ok_or_else(|| self.bad(field, "is missing (check the field name against $metadata)"))
    }

    fn bad(&self, field: &str, what: &str) -> D365Error {
        D365Error::Protocol {
            entity: self.entity.to_string(),
            detail: format!("field `{field}` {what}"),
        }
    }

    /// A string field; `null` reads as empty, numbers as their literal text.
    pub fn str(&self, field: &str) -> Result<String, D365Error> {
        let raw = self.raw(field)?;
        if raw == "null" {
            return Ok(String::new());
        }
        if raw.starts_with('"') {
            return serde_json::from_str::<String>(raw)
                .map_err(|e| self.bad(field, &format!("is not a valid string ({e})")));
        }
        Ok(raw.to_string())
    }

    /// A string field that may be absent, null or empty.
    pub fn opt_str(&self, field: &str) -> Option<String> {
        self.str(field).ok().filter(|s| !s.is_empty())
    }

    /// A `NoYes` enum (`"Yes"`/`"No"`), tolerating JSON booleans.
    pub fn yes_no(&self, field: &str) -> Result<bool, D365Error> {
        match self.raw(field)? {
            "true" => return Ok(true),
            "false" => return Ok(false),
            _ => {}
        }
        let s = self.str(field)?;
        if s.eq_ignore_ascii_case(names::YES) {
            Ok(true)
        } else if s.eq_ignore_ascii_case(names::NO) {
            Ok(false)
        } else {
            Err(self.bad(field, &format!("has `{s}`, expected Yes or No")))
        }
    }

    /// An `Edm.DateTimeOffset` date (`YYYY-MM-DDT12:00:00Z`); F&O's 1900-01-01 / 2154-12-31
    /// sentinels and null read as `None`.
    pub fn date(&self, field: &str) -> Result<Option<NaiveDate>, D365Error> {
        let s = self.str(field)?;
        if s.is_empty() {
            return Ok(None);
        }
        let d = s
            .get(..10)
            .and_then(|p| NaiveDate::parse_from_str(p, "%Y-%m-%d").ok())
            .ok_or_else(|| self.bad(field, &format!("has `{s}`, expected a date")))?;
        if is_sentinel(d) {
            Ok(None)
        } else {
            Ok(Some(d))
        }
    }

    /// A required date (sentinels are an error).
    pub fn req_date(&self, field: &str) -> Result<NaiveDate, D365Error> {
        self.date(field)?
            .ok_or_else(|| self.bad(field, "is empty, expected a date"))
    }

    /// An exact decimal from the JSON literal (numbers, or strings when IEEE754Compatible).
    pub fn decimal(&self, field: &str) -> Result<Decimal, D365Error> {
        let raw = self.raw(field)?;
        if raw == "null" {
            return Ok(Decimal::ZERO);
        }
        let text = if raw.starts_with('"') {
            self.str(field)?
        } else {
            raw.to_string()
        };
        Decimal::from_str(&text)
            .or_else(|_| Decimal::from_scientific(&text))
            .map_err(|e| self.bad(field, &format!("has `{text}`, not a decimal ({e})")))
    }
}

fn is_sentinel(d: NaiveDate) -> bool {
    let ymd = |(y, m, dd): (i32, u32, u32)| NaiveDate::from_ymd_opt(y, m, dd);
    Some(d) == ymd(EMPTY_DATE) || Some(d) == ymd(NEVER_DATE)
}

/// `'x'` as an OData string literal (single quotes doubled).
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Percent-encodes a query key or value. Spaces become `%20` (F&O does not read `+` as a space).
pub(crate) fn encode_query_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'$'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b','
                    | b':'
                    | b'@'
                    | b'/'
                    | b'!'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<BTreeMap<String, Box<RawValue>>>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// A request body with its media types.
pub(crate) struct Payload {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub accept: &'static str,
}

/// A response handed back unclassified (see [`OData::post_raw`]).
pub(crate) struct RawResponse {
    pub status: StatusCode,
    pub content_type: Option<String>,
    /// `Retry-After` of a final 429 (after retries were exhausted).
    pub retry_after: Option<std::time::Duration>,
    pub body: Result<Vec<u8>, String>,
}

/// The OData transport shared by all entity-specific calls. Clones share the token cache, the
/// concurrency cap and the rate limiter; only the retry policy (its deadline) is per clone.
#[derive(Clone)]
pub(crate) struct OData {
    pub http: Client,
    /// Environment URL, lower case, no trailing slash.
    pub env: Url,
    pub retry: RetryPolicy,
    pub page_size: Option<u32>,
    pub tokens: std::sync::Arc<TokenCache>,
    /// Caps the requests open at a time ([`super::D365Settings::max_concurrent_requests`]).
    /// A permit is held from sending until the answer's body is read (retries and the 401
    /// refresh included); token requests to Entra are not counted.
    pub gate: std::sync::Arc<tokio::sync::Semaphore>,
    /// Requests per window ([`super::D365Settings::max_requests_per_window`]), counted for
    /// every attempt, retries included.
    pub limiter: std::sync::Arc<RateLimiter>,
}

impl OData {
    /// Waits for a free request slot, but not past the deadline. (The semaphore is never
    /// closed, so `Ok(None)` cannot happen in practice; it would only mean "no cap".)
    async fn slot(
        &self,
        entity: &'static str,
    ) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, D365Error> {
        let permit = match self.retry.deadline {
            None => self.gate.acquire().await.ok(),
            Some(d) => tokio::time::timeout_at(d, self.gate.acquire())
                .await
                .map_err(|_| D365Error::OutOfTime {
                    entity: entity.into(),
                    detail: "the deadline passed while waiting for a free request slot \
                             (max_concurrent_requests)"
                        .into(),
                })?
                .ok(),
        };
        Ok(permit)
    }

    /// `{env}/data/{entity}?cross-company=true&...`
    fn url(&self, entity: &str, params: &[(&str, String)]) -> Url {
        let mut u = self.env.clone();
        u.set_path(&format!(
            "{}/data/{entity}",
            self.env.path().trim_end_matches('/')
        ));
        let mut q = format!("{}=true", names::CROSS_COMPANY);
        for (k, v) in params {
            q.push('&');
            q.push_str(&encode_query_part(k));
            q.push('=');
            q.push_str(&encode_query_part(v));
        }
        u.set_query(Some(&q));
        u
    }

    /// All rows of `entity` matching `filter`, following `@odata.nextLink`.
    pub async fn get_all(
        &self,
        entity: &'static str,
        filter: Option<String>,
        extra: &[(&str, String)],
    ) -> Result<Vec<Row>, D365Error> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(f) = filter {
            params.push(("$filter", f));
        }
        params.extend(extra.iter().cloned());
        let mut url = self.url(entity, &params);
        let mut rows = Vec::new();
        loop {
            let _slot = self.slot(entity).await?;
            let resp = self.send(Method::GET, &url, None, entity).await?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| D365Error::Unreachable {
                entity: entity.into(),
                detail: format!("reading the response failed: {}", e.without_url()),
            })?;
            if !status.is_success() {
                return Err(read_error(status, &String::from_utf8_lossy(&body), entity));
            }
            let page: Page = serde_json::from_slice(&body).map_err(|e| D365Error::Protocol {
                entity: entity.into(),
                detail: format!("response is not an OData collection ({e})"),
            })?;
            rows.extend(page.value.into_iter().map(|fields| Row { entity, fields }));
            match page.next_link {
                None => return Ok(rows),
                Some(next) => {
                    let next = Url::parse(&next).map_err(|e| D365Error::Protocol {
                        entity: entity.into(),
                        detail: format!("invalid @odata.nextLink ({e})"),
                    })?;
                    if next.origin() != self.env.origin() {
                        return Err(D365Error::Protocol {
                            entity: entity.into(),
                            detail: format!(
                                "@odata.nextLink points to another host ({}); refusing to send the token there",
                                next.origin().ascii_serialization()
                            ),
                        });
                    }
                    if next == url {
                        return Err(D365Error::Protocol {
                            entity: entity.into(),
                            detail: "@odata.nextLink repeats the current page".into(),
                        });
                    }
                    url = next;
                }
            }
        }
    }

    /// POSTs one entity. Outcome rules: 201 → the created row; 4xx → `Rejected` (nothing saved);
    /// 5xx, timeout or an unreadable 201 → `OutcomeUnknown` (never resent here).
    pub async fn post(&self, entity: &'static str, body: Vec<u8>) -> Result<Row, D365Error> {
        let url = self.url_no_query(entity);
        let payload = Payload {
            bytes: body,
            content_type: "application/json; charset=utf-8".into(),
            accept: "application/json",
        };
        let _slot = self.slot(entity).await?;
        let resp = self
            .send(Method::POST, &url, Some(&payload), entity)
            .await?;
        let status = resp.status();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) if status.is_success() => {
                return Err(D365Error::OutcomeUnknown {
                    entity: entity.into(),
                    detail: format!(
                        "HTTP {} but the response could not be read: {}",
                        status.as_u16(),
                        e.without_url()
                    ),
                })
            }
            Err(_) => String::new(),
        };
        if status.is_success() {
            let fields: BTreeMap<String, Box<RawValue>> =
                serde_json::from_str(&text).map_err(|e| D365Error::OutcomeUnknown {
                    entity: entity.into(),
                    detail: format!(
                        "HTTP {} but the created record could not be read ({e})",
                        status.as_u16()
                    ),
                })?;
            return Ok(Row { entity, fields });
        }
        if status.is_server_error() {
            return Err(D365Error::OutcomeUnknown {
                entity: entity.into(),
                detail: format!(
                    "HTTP {}: {}",
                    status.as_u16(),
                    summarize_body(status.as_u16(), &text)
                ),
            });
        }
        Err(read_error(status, &text, entity))
    }

    /// POSTs a non-JSON payload (a `$batch`) and hands back the raw answer, whatever its status,
    /// for the caller to classify. 429 is retried (after `Retry-After`) like every write; a 401
    /// refreshes the token once. Transport errors: `Unreachable` when nothing was sent,
    /// `OutcomeUnknown` otherwise. A body that cannot be read is reported in `body`.
    pub async fn post_raw(
        &self,
        path: &str,
        payload: &Payload,
        entity: &'static str,
    ) -> Result<RawResponse, D365Error> {
        let url = self.url_no_query(path);
        let _slot = self.slot(entity).await?;
        let resp = self.send(Method::POST, &url, Some(payload), entity).await?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry_after = crate::http::retry_after(resp.headers());
        let body = resp
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| format!("reading the response failed: {}", e.without_url()));
        Ok(RawResponse {
            status,
            content_type,
            retry_after,
            body,
        })
    }

    /// DELETE by key path (`Entity(key=…)`). `Ok(true)`: deleted (2xx); `Ok(false)`: no such
    /// record (404). 4xx → `Rejected`; 5xx/timeout → `OutcomeUnknown` (never resent here: F&O
    /// reuses line numbers, so a blind second DELETE could remove a different line).
    pub async fn delete(&self, entity: &'static str, key_path: &str) -> Result<bool, D365Error> {
        let url = self.url_no_query(key_path);
        let _slot = self.slot(entity).await?;
        let resp = self.send(Method::DELETE, &url, None, entity).await?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(true);
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if status.is_server_error() {
            return Err(D365Error::OutcomeUnknown {
                entity: entity.into(),
                detail: format!(
                    "HTTP {} on DELETE: {}",
                    status.as_u16(),
                    summarize_body(status.as_u16(), &text)
                ),
            });
        }
        Err(read_error(status, &text, entity))
    }

    pub(crate) fn url_no_query(&self, entity: &str) -> Url {
        let mut u = self.env.clone();
        u.set_path(&format!(
            "{}/data/{entity}",
            self.env.path().trim_end_matches('/')
        ));
        u.set_query(None);
        u
    }

    /// Sends with the cached token; on 401 gets a fresh token once and resends once.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Payload>,
        entity: &'static str,
    ) -> Result<Response, D365Error> {
        let token = self.tokens.token(&self.http, &self.retry).await?;
        self.limiter
            .acquire_until(self.retry.deadline)
            .await
            .map_err(|e| D365Error::OutOfTime {
                entity: entity.into(),
                detail: e.to_string(),
            })?;
        let resp = self.send_once(&method, url, body, &token, entity).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        drop(resp);
        tracing::info!(target: "d365::odata", entity, "401 from D365, getting a fresh token once");
        let fresh = self.tokens.refresh(&token, &self.http, &self.retry).await?;
        let resp = self.send_once(&method, url, body, &fresh, entity).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(D365Error::NotAuthorized {
                client_id: self.tokens.client_id().to_string(),
            });
        }
        Ok(resp)
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Payload>,
        token: &Secret,
        entity: &'static str,
    ) -> Result<Response, D365Error> {
        let idempotency = if *method == Method::GET {
            Idempotency::Safe
        } else {
            Idempotency::Unsafe
        };
        let build = || {
            let mut rb = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, format!("Bearer {}", token.expose()))
                .header("OData-Version", "4.0")
                .header("OData-MaxVersion", "4.0")
                .header(ACCEPT, body.map_or("application/json", |b| b.accept));
            if let (true, Some(n)) = (*method == Method::GET, self.page_size) {
                rb = rb.header("Prefer", format!("odata.maxpagesize={n}"));
            }
            if let Some(b) = body {
                rb = rb
                    .header(CONTENT_TYPE, b.content_type.as_str())
                    .body(b.bytes.clone());
            }
            rb
        };
        // Every retry counts against the request throttle too (the first attempt was counted
        // in `send`).
        let pace = || async {
            self.limiter
                .acquire_until(self.retry.deadline)
                .await
                .map(|_| ())
                .map_err(|e| e.wait)
        };
        let result = send_with_retry_paced(
            build,
            &self.retry,
            idempotency,
            |msg| tracing::warn!(target: "d365::odata", entity, method = %method, "{msg}"),
            pace,
        )
        .await;
        match result {
            Ok(r) if r.status().is_redirection() => {
                // Not followed (the request carries the token; see `D365Client::new`).
                let location = r
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(|l| crate::http::redact_location(url, l))
                    .unwrap_or_else(|| "(no Location header)".into());
                let status = r.status().as_u16();
                tracing::warn!(target: "d365::odata", entity, method = %method, status, location = %location, "redirect not followed");
                if idempotency == Idempotency::Safe {
                    Err(D365Error::Redirected {
                        entity: entity.into(),
                        status,
                        location,
                    })
                } else {
                    Err(D365Error::OutcomeUnknown {
                        entity: entity.into(),
                        detail: format!(
                            "D365 answered HTTP {status}, a redirect to `{location}`, which is not followed because the request carries the access token; check that the environment URL (d365.environment_url) is the environment's exact URL"
                        ),
                    })
                }
            }
            Ok(r) => {
                if let Some(mark) = crate::http::out_of_time(&r) {
                    // A 429 (nothing written) or a 5xx on a read that would have been retried,
                    // but the wait would outlive the deadline.
                    return Err(D365Error::OutOfTime {
                        entity: entity.into(),
                        detail: format!("HTTP {} and {mark}", r.status().as_u16()),
                    });
                }
                tracing::debug!(target: "d365::odata", entity, method = %method, status = r.status().as_u16(), "response");
                Ok(r)
            }
            Err(e) if idempotency == Idempotency::Safe || e.is_connect() || e.is_builder() => {
                Err(D365Error::Unreachable {
                    entity: entity.into(),
                    detail: e.without_url().to_string(),
                })
            }
            Err(e) => Err(D365Error::OutcomeUnknown {
                entity: entity.into(),
                detail: with_sources(&e.without_url()),
            }),
        }
    }
}

/// An error with its causes ("error sending request: connection closed before …").
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// Maps a final non-success answer (401 already handled) to an error.
fn read_error(status: StatusCode, body: &str, entity: &str) -> D365Error {
    let code = status.as_u16();
    if status == StatusCode::TOO_MANY_REQUESTS {
        return D365Error::Throttled {
            entity: entity.into(),
        };
    }
    if status.is_server_error() {
        return D365Error::Unavailable {
            status: code,
            entity: entity.into(),
            detail: summarize_body(code, body),
        };
    }
    D365Error::Rejected {
        status: code,
        entity: entity.into(),
        messages: parse_error_body(code, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding_uses_percent_20() {
        assert_eq!(
            encode_query_part("dataAreaId eq 'usmf' and Description eq 'BI 50%+*'"),
            "dataAreaId%20eq%20'usmf'%20and%20Description%20eq%20'BI%2050%25%2B*'"
        );
        assert_eq!(quote("O'Neil"), "'O''Neil'");
    }

    fn row(json: &str) -> Row {
        Row {
            entity: "T",
            fields: serde_json::from_str(json).unwrap(),
        }
    }

    #[test]
    fn row_accessors() {
        let r = row(
            r#"{"a":"x","n":1234.57,"big":12345678901234567.89,"s":"2.5","y":"Yes","no":"No","d":"2026-03-31T12:00:00Z","e":"1900-01-01T12:00:00Z","never":"2154-12-31T23:59:59Z","nul":null}"#,
        );
        assert_eq!(r.str("a").unwrap(), "x");
        assert_eq!(r.decimal("n").unwrap().to_string(), "1234.57");
        assert_eq!(
            r.decimal("big").unwrap().to_string(),
            "12345678901234567.89"
        );
        assert_eq!(r.decimal("s").unwrap().to_string(), "2.5");
        assert!(r.yes_no("y").unwrap() && !r.yes_no("no").unwrap());
        assert!(r.yes_no("a").is_err());
        assert_eq!(r.date("d").unwrap(), NaiveDate::from_ymd_opt(2026, 3, 31));
        assert_eq!(r.date("e").unwrap(), None);
        assert_eq!(r.date("never").unwrap(), None);
        assert_eq!(r.opt_str("nul"), None);
        let e = r.str("missing").unwrap_err().to_string();
        assert!(e.contains("`missing`"), "{e}");
    }
}
