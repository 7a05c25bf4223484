//! Where Looker is and how the client behaves, validated before any request is made so a
//! misconfiguration fails at start-up with a clear message instead of mid-run.

use std::time::Duration;

use url::Url;

use super::error::LookerError;
use crate::http::{endpoint, RetryPolicy};
use crate::secrets::Secret;

/// Looker's own row cap for API runs without an explicit limit (and for Explores/Looks).
pub const LOOKER_DEFAULT_ROW_CAP: usize = 5000;

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
    /// Most rows an extract may have. We ask Looker for `max_rows + 1` so that "more than
    /// `max_rows`" is detectable; such a result is refused, never truncated.
    pub max_rows: usize,
    /// A cap the server may apply silently. Exactly this many rows, when we asked for more, is
    /// treated as truncated. `0` means no such cap is assumed.
    pub server_row_cap: usize,
    /// Log in again this long before the token's `expires_in` runs out (SDKs use 10 s).
    pub token_margin: Duration,
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
