//! D365 F&O OData + Entra ID client (adapter).
//!
//! - [`entra`]: client-credentials tokens, cache, AADSTS classification.
//! - [`odata`]: URLs, headers, paging, 401-refresh, HTTP outcome → [`D365Error`].
//! - [`reference`]: reads master data into [`crate::domain::reference::ReferenceData`].
//! - [`journal`]: journal headers and lines (read, create, delete).
//! - [`batch`]: journal lines through OData `$batch`, one atomic changeset per voucher.
//! - `multipart`: `multipart/mixed` + `application/http` framing (shared with the simulator).
//! - [`names`]: every entity/field/enum name in one place.
//!
//! Writes are never retried except on 429: a 5xx or timeout on a POST is reported as
//! [`D365Error::OutcomeUnknown`] so the caller re-reads D365 before doing anything else.

pub(crate) mod batch;
mod entra;
pub(crate) mod error;
pub(crate) mod journal;
pub(crate) mod multipart;
// Some of the names are only read by the simulator, which serves the whole entities.
#[cfg_attr(not(feature = "sandbox"), allow(dead_code))]
pub(crate) mod names;
mod odata;
mod port;
pub(crate) mod reference;

use std::time::Duration;

use url::Url;

pub use batch::{BatchSettings, ChangesetOutcome, DeleteOutcome};
pub use error::{AuthError, D365Error};
pub use journal::{JournalHeader, JournalLineRow, NewJournalLine};

use crate::http::{endpoint, RetryPolicy};
use crate::secrets::Secret;

/// Microsoft's public-cloud authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// Connection settings for one F&O environment.
#[derive(Debug, Clone)]
pub struct D365Settings {
    /// Lower case, no trailing slash: it is also the token audience.
    pub environment_url: Url,
    /// Entra authority, default [`DEFAULT_AUTHORITY`].
    pub authority: Url,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// Per-request timeout (generous: F&O's first call after a restart is slow).
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Sent as `Prefer: odata.maxpagesize=N` on reads.
    pub page_size: Option<u32>,
    /// Refresh tokens this long before they expire.
    pub token_margin: Duration,
    /// Most F&O requests this client has open at a time (reads, writes and `$batch` alike,
    /// across every task sharing the client; default [`DEFAULT_MAX_CONCURRENT_REQUESTS`];
    /// 0 = no cap). F&O throttles per user/app under priority-based throttling; a cap keeps
    /// parallel reads (reference data, paging) and concurrent runs from causing 429s.
    pub max_concurrent_requests: usize,
    /// Most F&O requests this client starts within any [`Self::request_window`] (0 = no
    /// limit): throttle ourselves before F&O's service protection has to. Default
    /// [`DEFAULT_MAX_REQUESTS_PER_WINDOW`] per [`DEFAULT_REQUEST_WINDOW`] — a conservative
    /// guess, not a published F&O number (see Microsoft's "Service protection API limits" for F&O,
    /// <https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/data-entities/service-protection-api-limits>).
    pub max_requests_per_window: u32,
    pub request_window: Duration,
}

/// Default of [`D365Settings::max_concurrent_requests`].
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 8;
/// Default of [`D365Settings::max_requests_per_window`] (unverified; see its docs).
pub const DEFAULT_MAX_REQUESTS_PER_WINDOW: u32 = 600;
/// Default of [`D365Settings::request_window`].
pub const DEFAULT_REQUEST_WINDOW: Duration = Duration::from_secs(60);

impl D365Settings {
    /// Validates both URLs (https except loopback) and normalizes the environment URL.
    pub fn new(
        environment_url: &str,
        authority: &str,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Secret,
    ) -> Result<Self, D365Error> {
        let env = endpoint("D365 environment", environment_url)
            .map_err(|e| D365Error::Config(e.to_string()))?;
        if env.query().is_some() || env.fragment().is_some() {
            return Err(D365Error::Config(format!(
                "D365 environment URL `{}` must not have a query or fragment",
                crate::http::redact_url(environment_url)
            )));
        }
        // The token audience must be the environment URL in lower case without trailing slash.
        let normalized = env.as_str().trim_end_matches('/').to_ascii_lowercase();
        let environment_url = Url::parse(&normalized)
            .map_err(|e| D365Error::Config(format!("D365 environment URL: {e}")))?;
        let authority = endpoint("Microsoft Entra authority", authority)
            .map_err(|e| D365Error::Config(e.to_string()))?;
        let tenant_id = tenant_id.into().trim().to_string();
        let client_id = client_id.into().trim().to_string();
        if tenant_id.is_empty() || tenant_id.contains('/') {
            return Err(D365Error::Config(
                "tenant id must be the Directory (tenant) ID, e.g. a GUID".into(),
            ));
        }
        if client_id.is_empty() {
            return Err(D365Error::Config("client id is empty".into()));
        }
        if client_secret.is_empty() {
            return Err(D365Error::Config("client secret is empty".into()));
        }
        Ok(Self {
            environment_url,
            authority,
            tenant_id,
            client_id,
            client_secret,
            timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            page_size: None,
            token_margin: Duration::from_secs(120),
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_requests_per_window: DEFAULT_MAX_REQUESTS_PER_WINDOW,
            request_window: DEFAULT_REQUEST_WINDOW,
        })
    }

    /// `{environment_url}/.default`
    pub fn scope(&self) -> String {
        format!(
            "{}/.default",
            self.environment_url.as_str().trim_end_matches('/')
        )
    }
}

/// Client for one F&O environment. Cheap to share (`&self` methods) and to clone: clones share
/// the token cache, the concurrency cap and the request throttle.
#[derive(Clone)]
pub struct D365Client {
    odata: odata::OData,
}

impl D365Client {
    pub fn new(s: D365Settings) -> Result<Self, D365Error> {
        let http = reqwest::Client::builder()
            // Every request of this client carries the client secret (Entra) or an access
            // token (F&O): a redirect is reported, never followed (see `odata`, `entra`).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| D365Error::Config(format!("HTTP client: {e}")))?;
        let tokens = entra::TokenCache::new(entra::TokenRequest {
            authority: s.authority.clone(),
            tenant_id: s.tenant_id.clone(),
            client_id: s.client_id.clone(),
            client_secret: s.client_secret.clone(),
            scope: s.scope(),
            margin: s.token_margin,
        });
        Ok(Self {
            odata: odata::OData {
                http,
                env: s.environment_url,
                retry: s.retry,
                page_size: s.page_size,
                tokens: std::sync::Arc::new(tokens),
                gate: std::sync::Arc::new(tokio::sync::Semaphore::new(
                    match s.max_concurrent_requests {
                        0 => tokio::sync::Semaphore::MAX_PERMITS,
                        n => n.min(tokio::sync::Semaphore::MAX_PERMITS),
                    },
                )),
                limiter: std::sync::Arc::new(crate::rate::RateLimiter::for_service(
                    "d365",
                    s.max_requests_per_window as usize,
                    s.request_window,
                )),
            },
        })
    }

    /// A clone (same token, connections, cap and throttle) that never starts a wait ending
    /// after `deadline` — retries, `Retry-After`, the request slot, the throttle, the Entra
    /// token — and answers [`D365Error::OutOfTime`] instead. For a Lambda invocation: its
    /// deadline minus a margin. An earlier deadline already set is kept.
    pub fn with_deadline(&self, deadline: tokio::time::Instant) -> Self {
        let mut c = self.clone();
        c.odata.retry = self.odata.retry.with_deadline(deadline);
        c
    }

    /// Gets a token and does one cheap authorized read (`DimensionParameters`, one row), so
    /// configuration errors surface before a run starts.
    pub async fn token_check(&self) -> Result<(), D365Error> {
        self.odata
            .get_all(
                names::dimension_parameters::SET,
                None,
                &[("$top", "1".to_string())],
            )
            .await
            .map(|_| ())
    }
}
