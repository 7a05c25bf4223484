//! API-key login and the cached access token.
//!
//! Looker API keys get no refresh token, so "refreshing" is logging in again. The token is
//! reused until `expires_in - token_margin` (as the official SDKs do) and held behind a tokio
//! `Mutex` so concurrent calls wait for one login instead of each logging in. The token and the
//! client secret are kept in [`Secret`] and never appear in errors or logs.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::error::LookerError;
use super::rate::RateLimiter;
use super::settings::LookerSettings;
use crate::http::{send_with_retry, Idempotency};
use crate::secrets::Secret;

/// Sent on every request so API use shows up attributed in Looker's System Activity.
pub const LOOKER_APP_ID: &str = "ml-connector";

/// Where API keys are made, for every credential error message.
const API_KEYS_HINT: &str =
    "API keys are created in Looker under Admin > Users > Edit (the API user) > API keys";

#[derive(Clone)]
pub(crate) struct Token {
    pub(crate) value: Secret,
    valid_until: Instant,
}

impl Token {
    /// The `Authorization` header value (`token <access_token>`, the scheme Looker documents).
    pub(crate) fn header(&self) -> String {
        format!("token {}", self.value.expose())
    }
}

#[derive(Deserialize)]
struct AccessToken {
    access_token: String,
    #[serde(default)]
    expires_in: Option<i64>,
}

/// The cached token of one client.
#[derive(Default)]
pub(crate) struct TokenCache {
    slot: Mutex<Option<Token>>,
}

impl TokenCache {
    /// A token that is still valid, logging in if there is none.
    pub(crate) async fn get(
        &self,
        http: &reqwest::Client,
        settings: &LookerSettings,
        limiter: &RateLimiter,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Token, LookerError> {
        let mut slot = self.slot.lock().await;
        if let Some(t) = slot.as_ref().filter(|t| Instant::now() < t.valid_until) {
            return Ok(t.clone());
        }
        *slot = None;
        limiter
            .acquire_until(deadline)
            .await
            .map_err(|e| LookerError::OutOfTime {
                what: "login".into(),
                detail: e.to_string(),
            })?;
        let token = match deadline {
            None => login(http, settings).await?,
            Some(d) => {
                let mut s = settings.clone();
                s.retry = s.retry.with_deadline(d);
                login(http, &s).await?
            }
        };
        *slot = Some(token.clone());
        Ok(token)
    }

    /// Forgets `stale` (after Looker answered 401 to it) unless another task already replaced it.
    pub(crate) async fn invalidate(&self, stale: &Token) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|t| t.value == stale.value) {
            *slot = None;
        }
    }

    /// Drops whatever is cached (the next call logs in).
    pub(crate) async fn clear(&self) {
        *self.slot.lock().await = None;
    }
}

/// `POST /api/4.0/login` with the credentials form-encoded in the body (query-string
/// credentials are deprecated by Looker).
pub(crate) async fn login(
    http: &reqwest::Client,
    settings: &LookerSettings,
) -> Result<Token, LookerError> {
    let url = settings.api_url(&["login"]);
    let path = url.path().to_string();
    let form = [
        ("client_id", settings.client_id.as_str()),
        ("client_secret", settings.client_secret.expose()),
    ];
    let issued = Instant::now();
    let resp = send_with_retry(
        || {
            http.post(url.clone())
                .header("x-looker-appid", LOOKER_APP_ID)
                .form(&form)
        },
        &settings.retry,
        // Logging in twice is harmless.
        Idempotency::Safe,
        |msg| tracing::warn!(target: "looker", "Looker login: {msg}"),
    )
    .await
    .map_err(|e| LookerError::transport(&format!("POST {path}"), e))?;
    let status = resp.status();
    match status {
        StatusCode::OK => {}
        StatusCode::BAD_REQUEST
        | StatusCode::UNAUTHORIZED
        | StatusCode::FORBIDDEN
        | StatusCode::NOT_FOUND => {
            return Err(LookerError::Auth(format!(
                "Looker rejected the API client id/secret (HTTP {} from POST {path}). Check \
                 client_id and client_secret in the configuration and that the API user is not \
                 disabled; {API_KEYS_HINT}",
                status.as_u16()
            )));
        }
        StatusCode::TOO_MANY_REQUESTS => {
            return Err(LookerError::Throttled {
                path: format!("POST {path}"),
                attempts: settings.retry.max_attempts,
            })
        }
        s if s.is_redirection() => {
            // The client follows no redirect (`LookerClient::new`): the form carries the secret.
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| crate::http::redact_location(&url, l))
                .unwrap_or_else(|| "(no Location header)".into());
            return Err(LookerError::Status {
                status: s.as_u16(),
                message: format!(
                    "login (POST {path}) was answered with a redirect to `{location}`; redirects are not followed because the login carries the client secret. The configured base URL is probably not the Looker API host (check Admin > Platform > API for the API Host URL)"
                ),
            });
        }
        other => {
            return Err(LookerError::Status {
                status: other.as_u16(),
                message: format!("login (POST {path}) failed"),
            })
        }
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| LookerError::transport(&format!("POST {path}"), e))?;
    // Deliberately no body excerpt in this error: the body would contain the token.
    let tok: AccessToken = serde_json::from_slice(&body).map_err(|e| LookerError::Parse {
        what: "login response".into(),
        message: format!(
            "not an AccessToken object ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    })?;
    if tok.access_token.is_empty() {
        return Err(LookerError::Parse {
            what: "login response".into(),
            message: "empty access_token".into(),
        });
    }
    let lifetime = Duration::from_secs(tok.expires_in.unwrap_or(3600).max(0) as u64);
    tracing::info!(target: "looker", expires_in_s = lifetime.as_secs(), "logged in to Looker");
    Ok(Token {
        value: Secret::new(tok.access_token),
        valid_until: issued + lifetime.saturating_sub(settings.token_margin),
    })
}

/// Message for an API call that is still refused after a fresh login.
pub(crate) fn refused_after_relogin(status: StatusCode, what: &str) -> LookerError {
    if status == StatusCode::FORBIDDEN {
        LookerError::Auth(format!(
            "the Looker API user is not allowed to access {what} (HTTP 403); give the API user's role access to this model/content, or use an API key of a user that has it"
        ))
    } else {
        LookerError::Auth(format!(
            "Looker refused a freshly issued API token for {what} (HTTP {}); check that the API user is active; {API_KEYS_HINT}",
            status.as_u16()
        ))
    }
}
