//! HTTP policy shared by the Looker and D365 clients: which endpoints are acceptable, and how to
//! back off when a service throttles.
//!
//! Retrying is only automatic where it cannot double-post: a 429 means the request was refused
//! before it was processed, so any method may be retried after `Retry-After`; a 5xx or a dropped
//! connection on a write leaves the outcome unknown, so writes are *not* retried here — the
//! caller reconciles against D365 first.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use url::Url;

/// Errors about configured endpoints.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{what} URL `{url}` is not a valid absolute URL: {reason}")]
    Invalid {
        what: &'static str,
        url: String,
        reason: String,
    },
    #[error("{what} URL `{url}` must use https (plain http is only allowed for loopback hosts such as 127.0.0.1 or localhost)")]
    InsecureScheme { what: &'static str, url: String },
}

/// Parses a configured endpoint and enforces https except for loopback hosts. Errors show the
/// URL without its userinfo ([`redact_url`]).
pub fn endpoint(what: &'static str, raw: &str) -> Result<Url, EndpointError> {
    let url = Url::parse(raw.trim()).map_err(|e| EndpointError::Invalid {
        what,
        url: redact_url(raw),
        reason: e.to_string(),
    })?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(EndpointError::InsecureScheme {
            what,
            url: redact_url(raw),
        }),
        other => Err(EndpointError::Invalid {
            what,
            url: redact_url(raw),
            reason: format!("unsupported scheme `{other}`"),
        }),
    }
}

/// `raw` for an error message or a log line: a URL's userinfo (`user:password@`) becomes `***@`;
/// everything else is kept. Works on strings that do not parse as URLs too (a mistyped endpoint
/// is still shown without its password).
pub fn redact_url(raw: &str) -> String {
    let raw = raw.trim();
    // Only URLs with a host can have userinfo; `user:pw@host` parses as scheme `user`.
    if let Some(mut url) = Url::parse(raw).ok().filter(Url::has_host) {
        if url.username().is_empty() && url.password().is_none() {
            return raw.to_string();
        }
        if url.set_password(None).is_ok() && url.set_username("***").is_ok() {
            return url.to_string();
        }
    }
    // Not a URL (or one whose userinfo cannot be set): cut the userinfo out of the text.
    let start = raw.find("://").map_or(0, |i| i + 3);
    let authority_end = raw[start..]
        .find(['/', '?', '#', '\\'])
        .map_or(raw.len(), |i| start + i);
    match raw[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &raw[..start], &raw[start + at..]),
        None => raw.to_string(),
    }
}

/// [`redact_url`] of a `Location` header, resolved against the request URL (so a relative or
/// network-path reference is shown as where it points), without its query and fragment (they may
/// carry one-time codes).
pub fn redact_location(request: &Url, location: &str) -> String {
    let shown = match request.join(location.trim()) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => location
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    redact_url(&shown)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// How hard to try when a service throttles or hiccups.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Never start a wait that would end after this instant (a Lambda's deadline minus a
    /// margin): the last answer is returned instead, marked with [`OutOfTime`]. `None` = no
    /// deadline.
    pub deadline: Option<tokio::time::Instant>,
    /// Total attempts including the first.
    pub max_attempts: u32,
    /// First exponential-backoff delay (doubles per attempt, with jitter).
    pub base_delay: Duration,
    /// Upper bound of any single wait, including an honoured `Retry-After`.
    pub max_delay: Duration,
    /// Wait used for a 429 without `Retry-After`.
    pub fallback_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            fallback_retry_after: Duration::from_secs(10),
            deadline: None,
        }
    }
}

/// Marker put in the extensions of a response that [`send_with_retry`] returned instead of
/// waiting past the policy's deadline (a 429 or 5xx that would otherwise have been retried).
/// Callers turn it into an "out of time" error rather than "retries exhausted".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfTime {
    /// The wait that would have been needed (a `Retry-After` capped at `max_delay`, a backoff).
    pub wanted: Duration,
    /// The service's own `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// Time that was left before the deadline.
    pub left: Duration,
}

impl std::fmt::Display for OutOfTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a retry needed a {:.1}s wait{} but only {:.1}s were left before the deadline",
            self.wanted.as_secs_f64(),
            self.retry_after
                .map(|d| format!(" (Retry-After: {:.1}s)", d.as_secs_f64()))
                .unwrap_or_default(),
            self.left.as_secs_f64()
        )
    }
}

impl RetryPolicy {
    /// This policy with `deadline` (the earlier one wins if it already has one).
    pub fn with_deadline(&self, deadline: tokio::time::Instant) -> Self {
        Self {
            deadline: Some(self.deadline.map_or(deadline, |d| d.min(deadline))),
            ..self.clone()
        }
    }

    /// `Some(left)` when waiting `wait` from now would end after the deadline.
    fn too_late(&self, wait: Duration) -> Option<Duration> {
        let d = self.deadline?;
        let now = tokio::time::Instant::now();
        (now + wait > d).then(|| d.saturating_duration_since(now))
    }

    /// Exponential backoff with full jitter for `attempt` (1-based), capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        // Full jitter in [capped/2, capped]: spreads retries of concurrent clients.
        let half = capped / 2;
        half + Duration::from_millis(fastrand::u64(0..=half.as_millis() as u64))
    }

    /// Wait before retrying a 429: `Retry-After` when present (capped), else the fallback with jitter.
    pub fn throttle_wait(&self, headers: &HeaderMap) -> Duration {
        match retry_after(headers) {
            Some(d) => d.min(self.max_delay),
            None => {
                let f = self.fallback_retry_after.min(self.max_delay);
                f + Duration::from_millis(fastrand::u64(0..=(f.as_millis() as u64 / 4)))
            }
        }
    }
}

/// `Retry-After` as delay-seconds (the form Looker and F&O send). HTTP-dates are ignored.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = v.parse().ok()?;
    if secs.is_finite() && secs >= 0.0 {
        Some(Duration::from_secs_f64(secs))
    } else {
        None
    }
}

/// Whether a request may be sent again without risking a duplicate write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Reads (GET) and logins: retried on 429, 5xx and transport errors.
    Safe,
    /// Writes: retried only on 429 (refused before processing).
    Unsafe,
}

/// Sends a request built by `build` (called once per attempt), retrying per `policy`.
///
/// Returns the final response whatever its status (the caller classifies it), or the transport
/// error of the last attempt. `on_retry` is told about every wait, for the audit trail/logs.
pub async fn send_with_retry<F>(
    build: F,
    policy: &RetryPolicy,
    idempotency: Idempotency,
    on_retry: impl FnMut(&str),
) -> Result<Response, reqwest::Error>
where
    F: Fn() -> RequestBuilder,
{
    send_with_retry_paced(build, policy, idempotency, on_retry, || async {
        Ok::<(), Duration>(())
    })
    .await
}

/// [`send_with_retry`] that also calls `pace` before every retry, after its wait (e.g. a
/// client-side rate limit, so each attempt counts, not only the first). `pace` answers
/// `Err(wait it would need)` when that wait would end past the deadline: the last answer is then
/// returned marked [`OutOfTime`], as for a wait of the retry policy itself.
pub async fn send_with_retry_paced<F, P, Fut>(
    build: F,
    policy: &RetryPolicy,
    idempotency: Idempotency,
    mut on_retry: impl FnMut(&str),
    mut pace: P,
) -> Result<Response, reqwest::Error>
where
    F: Fn() -> RequestBuilder,
    P: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Duration>>,
{
    let mut attempt = 1;
    loop {
        let result = build().send().await;
        let last = attempt >= policy.max_attempts;
        let (wait, why) = match result {
            Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS && !last => {
                let wait = policy.throttle_wait(resp.headers());
                (wait, Ok(resp))
            }
            Ok(resp)
                if resp.status().is_server_error() && idempotency == Idempotency::Safe && !last =>
            {
                (policy.backoff(attempt), Ok(resp))
            }
            Ok(resp) => return Ok(resp),
            // Logged, so dropped of its URL (callers only ever show it without one).
            Err(e) if idempotency == Idempotency::Safe && !last && !e.is_builder() => {
                (policy.backoff(attempt), Err(e.without_url()))
            }
            Err(e) => return Err(e),
        };
        let what = match &why {
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => "throttled (429)".to_string(),
            Ok(r) => format!("server error {}", r.status().as_u16()),
            Err(e) => format!("transport error ({e})"),
        };
        if let Some(left) = policy.too_late(wait) {
            // Sleeping would outlive the caller's time budget: hand back what we have.
            let retry_after = why.as_ref().ok().and_then(|r| retry_after(r.headers()));
            let mark = OutOfTime {
                wanted: wait,
                retry_after,
                left,
            };
            on_retry(&format!("{what}; not retrying: {mark}"));
            return why.map(|mut r| {
                r.extensions_mut().insert(mark);
                r
            });
        }
        on_retry(&format!(
            "{what}, waiting {:.1}s before attempt {}",
            wait.as_secs_f64(),
            attempt + 1
        ));
        tokio::time::sleep(wait).await;
        if let Err(needed) = pace().await {
            let left = policy
                .deadline
                .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
                .unwrap_or_default();
            let mark = OutOfTime {
                wanted: needed,
                retry_after: None,
                left,
            };
            on_retry(&format!(
                "{what}; not retrying: the client-side limit: {mark}"
            ));
            return why.map(|mut r| {
                r.extensions_mut().insert(mark);
                r
            });
        }
        attempt += 1;
    }
}

/// The [`OutOfTime`] marker of a response, if [`send_with_retry`] stopped for the deadline.
pub fn out_of_time(resp: &Response) -> Option<OutOfTime> {
    resp.extensions().get::<OutOfTime>().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_required_except_loopback() {
        assert!(endpoint("Looker", "https://acme.cloud.looker.com").is_ok());
        assert!(endpoint("Looker", "http://127.0.0.1:8080").is_ok());
        assert!(endpoint("Looker", "http://localhost:8080").is_ok());
        assert!(endpoint("Looker", "http://[::1]:8080").is_ok());
        let e = endpoint("D365", "http://contoso.operations.dynamics.com").unwrap_err();
        assert!(e.to_string().contains("must use https"), "{e}");
        assert!(endpoint("D365", "ftp://x").is_err());
        assert!(endpoint("D365", "not a url").is_err());
    }

    #[test]
    fn userinfo_is_redacted_in_endpoint_errors() {
        let e = endpoint("D365", "http://svc:hunter2@contoso.operations.dynamics.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("must use https"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("svc:"), "{e}");
        assert!(
            e.contains("http://***@contoso.operations.dynamics.com"),
            "{e}"
        );
        let e = endpoint("Looker", "ftp://u:hunter2@x/y")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        // Not even a valid URL: still no password.
        let e = endpoint("Looker", "https://u:hunter2@bad host/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("https://***@bad host/"), "{e}");
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("https://a.b/c?d=1"), "https://a.b/c?d=1");
        assert_eq!(
            redact_url("https://u:p@a.b:8443/c"),
            "https://***@a.b:8443/c"
        );
        assert_eq!(redact_url("https://u@a.b/"), "https://***@a.b/");
        assert_eq!(redact_url("https://:p@a.b/"), "https://***@a.b/");
        assert_eq!(redact_url("u:p@host/x"), "***@host/x");
        assert_eq!(redact_url("not a url"), "not a url");
        // An `@` after the authority is not userinfo.
        assert_eq!(redact_url("https://a.b/x@y"), "https://a.b/x@y");
        let base = Url::parse("https://login.example/t/oauth2/v2.0/token").unwrap();
        assert_eq!(
            redact_location(&base, "https://u:p@evil.example/steal?code=1#f"),
            "https://***@evil.example/steal"
        );
        assert_eq!(
            redact_location(&base, "//u:p@evil.example/x"),
            "https://***@evil.example/x"
        );
        assert_eq!(
            redact_location(&base, "/other"),
            "https://login.example/other"
        );
    }

    #[test]
    fn retry_after_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let p = RetryPolicy {
            max_delay: Duration::from_secs(5),
            ..Default::default()
        };
        assert_eq!(p.throttle_wait(&h), Duration::from_secs(5));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..Default::default()
        };
        for _ in 0..50 {
            let d1 = p.backoff(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d10 = p.backoff(10);
            assert!(d10 >= Duration::from_millis(500) && d10 <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn deadline_refuses_long_waits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let now = tokio::time::Instant::now();
            let p = RetryPolicy::default().with_deadline(now + Duration::from_secs(3));
            assert!(p.too_late(Duration::from_secs(120)).is_some());
            assert!(p.too_late(Duration::from_millis(10)).is_none());
            // An earlier deadline is kept.
            let q = p.with_deadline(now + Duration::from_secs(60));
            assert_eq!(q.deadline, Some(now + Duration::from_secs(3)));
            assert!(RetryPolicy::default()
                .too_late(Duration::from_secs(3600))
                .is_none());
        });
    }
}
