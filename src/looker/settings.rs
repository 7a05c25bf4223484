//! Where Looker is and how the client behaves, validated before any request is made so a
//! misconfiguration fails at start-up with a clear message instead of mid-run.

use std::time::{Duration, Instant};

use url::Url;

use super::error::LookerError;
use crate::http::{endpoint, RetryPolicy};
use crate::secrets::Secret;

/// Looker's own row cap for API runs without an explicit limit (and for Explores/Looks).
pub const LOOKER_DEFAULT_ROW_CAP: usize = 5000;

/// Default client-side rate limit (requests per minute) of [`LookerSettings`].
pub const DEFAULT_MAX_REQUESTS_PER_MINUTE: u32 = 60;

/// How an extract is fetched from Looker.
///
/// - [`ExtractPath::Sync`] (default): one blocking run call (`GET /looks/{id}/run/json`,
///   `POST /queries/run/json`). Simple and one API call, but Looker may silently cap the result
///   at its 5,000-row limit (see [`LookerSettings::server_row_cap`]) and a slow query holds the
///   HTTP request open until [`LookerSettings::timeout`].
/// - [`ExtractPath::Async`]: Looker's query-task path. The query id is resolved
///   (`GET /looks/{id}` → `query_id`, or `POST /queries` for an inline query), a task is
///   started (`POST /query_tasks`), its status is polled (`GET /query_tasks/{id}`) with backoff
///   until it completes or the deadline passes, and the results are downloaded once
///   (`GET /query_tasks/{id}/results`) and parsed as a stream. This lifts the 5,000-row cap;
///   [`LookerSettings::max_rows`] still applies unless [`LookerSettings::unlimited_rows`] is set.
///
/// Each poll is an API call: on Looker (Google Cloud core) Standard, with its 1,000 query calls
/// per month, keep `poll_interval`/`max_poll_interval` generous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtractPath {
    #[default]
    Sync,
    Async,
}

/// Connection settings for one Looker instance. `Debug` is safe to log (the secret is redacted).
#[derive(Debug, Clone)]
pub struct LookerSettings {
    /// Host root, e.g. `https://acme.cloud.looker.com` (or `https://host:19999` on old AWS
    /// instances, or `http://127.0.0.1:PORT` for the simulator). The client appends `/api/4.0`.
    pub base_url: Url,
    /// API key client id (Admin > Users > Edit > API keys).
    pub client_id: String,
    pub client_secret: Secret,
    /// Per-request timeout (the Looker SDKs default to 120 s).
    pub timeout: Duration,
    /// Retries for 429 (honouring `Retry-After`), 5xx and transport errors; all Looker calls
    /// made here are reads.
    pub retry: RetryPolicy,
    /// Most rows an extract may have (at least 1; default 5,000). We ask Looker for
    /// `max_rows + 1` so that "more than `max_rows`" is detectable; such a result is refused,
    /// never truncated. Applies to both paths; only [`Self::unlimited_rows`] lifts it.
    pub max_rows: usize,
    /// A cap the server may apply silently. Exactly this many rows, when we asked for more, is
    /// treated as truncated. `0` means no such cap is assumed. Sync path only: query tasks run
    /// with an explicit limit are not subject to Looker's 5,000-row cap.
    pub server_row_cap: usize,
    /// Log in again this long before the token's `expires_in` runs out (SDKs use 10 s).
    pub token_margin: Duration,
    /// Sync run call or async query task (default [`ExtractPath::Sync`]).
    pub extract_path: ExtractPath,
    /// Async path only: accept any number of rows. The task is then started with `limit=-1`
    /// and `max_rows` is not enforced. Off by default; refused with the sync path (where "no
    /// limit" still means Looker's silent 5,000-row cap). Memory use grows with the result.
    pub unlimited_rows: bool,
    /// Async path: first wait between status polls (default 2 s). Each further wait is 1.5×
    /// the previous one, up to `max_poll_interval`.
    pub poll_interval: Duration,
    /// Async path: longest wait between status polls (default 10 s).
    pub max_poll_interval: Duration,
    /// Async path: longest time one extract may take, from the first request to the parsed
    /// result (default 10 minutes). When it runs out the task is cancelled and the run fails.
    pub max_wait: Duration,
    /// Async path: an absolute deadline as well (e.g. a Lambda's deadline minus a margin for
    /// posting). The earlier of this and `max_wait` applies. See also
    /// [`crate::looker::LookerClient::with_deadline`] for a per-run deadline.
    pub poll_deadline: Option<Instant>,
    /// Client-side rate limit: at most this many API requests (logins, runs, polls, downloads)
    /// start within any 60 seconds, shared by all calls of one client and its clones
    /// (default 60; 0 = off). Keeps the connector under the instance's API quota instead of
    /// running into 429s.
    pub max_requests_per_minute: u32,
}

impl LookerSettings {
    /// Validates the base URL (https, except loopback) and credentials and sets defaults.
    ///
    /// A base URL that already ends in `/api/4.0` is accepted and trimmed to the host root.
    pub fn new(
        base_url: &str,
        client_id: impl Into<String>,
        client_secret: Secret,
    ) -> Result<Self, LookerError> {
        let base_url = normalize_base_url(base_url)?;
        let s = Self {
            base_url,
            client_id: client_id.into().trim().to_string(),
            client_secret,
            timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            max_rows: LOOKER_DEFAULT_ROW_CAP,
            server_row_cap: LOOKER_DEFAULT_ROW_CAP,
            token_margin: Duration::from_secs(10),
            extract_path: ExtractPath::Sync,
            unlimited_rows: false,
            poll_interval: Duration::from_secs(2),
            max_poll_interval: Duration::from_secs(10),
            max_wait: Duration::from_secs(600),
            poll_deadline: None,
            max_requests_per_minute: DEFAULT_MAX_REQUESTS_PER_MINUTE,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the invariants [`LookerSettings::new`] establishes (fields are public, so the
    /// client re-checks them).
    pub fn validate(&self) -> Result<(), LookerError> {
        normalize_base_url(self.base_url.as_str())?;
        if self.client_id.is_empty() {
            return Err(LookerError::Config(
                "the Looker API client id is empty; create an API key in Looker under Admin > Users > Edit > API keys".into(),
            ));
        }
        if self.client_secret.is_empty() {
            return Err(LookerError::Config(
                "the Looker API client secret is empty; create an API key in Looker under Admin > Users > Edit > API keys".into(),
            ));
        }
        if self.max_rows == 0 {
            return Err(LookerError::Config("max_rows must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(LookerError::Config(
                "the Looker timeout must be more than 0 seconds".into(),
            ));
        }
        if self.unlimited_rows && self.extract_path != ExtractPath::Async {
            return Err(LookerError::Config(
                "unlimited_rows needs the asynchronous extract path (a synchronous run without a limit is still capped at 5,000 rows by Looker)".into(),
            ));
        }
        if self.extract_path == ExtractPath::Async {
            if self.poll_interval.is_zero() {
                return Err(LookerError::Config(
                    "the Looker poll interval must be more than 0".into(),
                ));
            }
            if self.max_poll_interval < self.poll_interval {
                return Err(LookerError::Config(
                    "the Looker max poll interval must not be shorter than the poll interval"
                        .into(),
                ));
            }
            if self.max_wait.is_zero() {
                return Err(LookerError::Config(
                    "the Looker max wait must be more than 0 seconds".into(),
                ));
            }
        }
        Ok(())
    }

    /// `<base>/api/4.0/<segments…>`, each segment percent-encoded (so an id such as `../x`
    /// cannot change the path).
    pub fn api_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut p) = url.path_segments_mut() {
            p.pop_if_empty().extend(["api", "4.0"]).extend(segments);
        }
        url
    }

    /// The `limit` sent to Looker: one more than we accept, so overflow is visible.
    pub fn requested_limit(&self) -> usize {
        self.max_rows.saturating_add(1)
    }

    /// The most rows an extract may have, or `None` when the async path runs unlimited.
    pub fn row_limit(&self) -> Option<usize> {
        if self.unlimited_rows && self.extract_path == ExtractPath::Async {
            None
        } else {
            Some(self.max_rows)
        }
    }

    /// The `limit` sent with a query task: `max_rows + 1`, or `-1` when unlimited.
    pub fn task_limit(&self) -> String {
        match self.row_limit() {
            Some(_) => self.requested_limit().to_string(),
            None => "-1".into(),
        }
    }
}

fn normalize_base_url(raw: &str) -> Result<Url, LookerError> {
    let mut url = endpoint("Looker", raw).map_err(|e| LookerError::Config(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(LookerError::Config(
            "the Looker URL must not contain credentials; use client_id/client_secret".into(),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(LookerError::Config(format!(
            "the Looker URL `{}` must be the host root (e.g. https://acme.cloud.looker.com) without a query or fragment",
            url.origin().ascii_serialization()
        )));
    }
    let path = url.path().trim_end_matches('/').to_string();
    let path = path
        .strip_suffix("/api/4.0")
        .map(str::to_string)
        .unwrap_or(path);
    if path.contains("/api/") || path.ends_with("/api") {
        return Err(LookerError::Config(format!(
            "the Looker URL path `{path}` looks like an API path; give the host root (e.g. https://acme.cloud.looker.com), the client adds /api/4.0"
        )));
    }
    url.set_path(if path.is_empty() { "/" } else { &path });
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(url: &str) -> Result<LookerSettings, LookerError> {
        LookerSettings::new(url, "id", Secret::new("sec"))
    }

    #[test]
    fn defaults_and_normalisation() {
        let st = s("https://acme.cloud.looker.com").unwrap();
        assert_eq!(st.max_rows, 5000);
        assert_eq!(st.server_row_cap, 5000);
        assert_eq!(st.token_margin, Duration::from_secs(10));
        assert_eq!(st.requested_limit(), 5001);
        assert_eq!(st.max_requests_per_minute, 60);
        assert_eq!(st.base_url.as_str(), "https://acme.cloud.looker.com/");
        let st = s("https://acme.cloud.looker.com:19999/api/4.0/").unwrap();
        assert_eq!(st.base_url.as_str(), "https://acme.cloud.looker.com:19999/");
        assert!(s("http://127.0.0.1:9999").is_ok());
        let st = s("https://h.example.com/looker/").unwrap();
        assert_eq!(
            st.api_url(&["looks", "4/2", "run", "json"]).as_str(),
            "https://h.example.com/looker/api/4.0/looks/4%2F2/run/json"
        );
    }

    #[test]
    fn async_settings_defaults_and_validation() {
        let mut st = s("https://acme.cloud.looker.com").unwrap();
        assert_eq!(st.extract_path, ExtractPath::Sync);
        assert!(!st.unlimited_rows);
        assert_eq!(st.poll_interval, Duration::from_secs(2));
        assert_eq!(st.max_poll_interval, Duration::from_secs(10));
        assert_eq!(st.max_wait, Duration::from_secs(600));
        assert_eq!(st.poll_deadline, None);
        assert_eq!(st.row_limit(), Some(5000));
        assert_eq!(st.task_limit(), "5001");
        st.unlimited_rows = true;
        let e = st.validate().unwrap_err().to_string();
        assert!(
            e.contains("unlimited_rows") && e.contains("asynchronous"),
            "{e}"
        );
        st.extract_path = ExtractPath::Async;
        st.validate().unwrap();
        assert_eq!(st.row_limit(), None);
        assert_eq!(st.task_limit(), "-1");
        st.max_poll_interval = Duration::from_secs(1);
        assert!(st.validate().is_err());
        st.max_poll_interval = Duration::from_secs(10);
        st.poll_interval = Duration::ZERO;
        assert!(st.validate().is_err());
    }

    #[test]
    fn rejects_bad_urls_and_credentials() {
        let e = s("http://acme.cloud.looker.com").unwrap_err().to_string();
        assert!(e.contains("https"), "{e}");
        assert!(s("https://u:p@acme.cloud.looker.com").is_err());
        assert!(s("https://acme.cloud.looker.com/?x=1").is_err());
        assert!(s("https://acme.cloud.looker.com/api/3.1").is_err());
        let e = LookerSettings::new("https://a.looker.com", "", Secret::new("x")).unwrap_err();
        assert!(e.to_string().contains("API keys"), "{e}");
        assert!(LookerSettings::new("https://a.looker.com", "id", Secret::new("")).is_err());
    }
}
