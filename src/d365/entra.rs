//! Microsoft Entra ID client-credentials tokens for F&O: acquisition, caching, and turning
//! AADSTS errors into messages that say what to fix.
//!
//! Tokens live only inside [`Secret`] and are never logged or put in errors.

use std::time::{Duration, Instant};

use reqwest::header::LOCATION;
use reqwest::Client;
use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use super::error::AuthError;
use crate::http::{redact_location, redact_url, send_with_retry, Idempotency, RetryPolicy};
use crate::secrets::Secret;

/// What is needed to ask Entra for a token.
#[derive(Debug, Clone)]
pub(crate) struct TokenRequest {
    pub authority: Url,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// `{environment_url}/.default`
    pub scope: String,
    /// Refresh this long before `expires_in` runs out.
    pub margin: Duration,
}

#[derive(Clone)]
struct Cached {
    token: Secret,
    /// When we stop using it (expiry minus margin).
    refresh_at: Instant,
}

/// Caches one token; concurrent callers wait on the same acquisition.
pub(crate) struct TokenCache {
    req: TokenRequest,
    cached: Mutex<Option<Cached>>,
}

impl TokenCache {
    pub fn new(req: TokenRequest) -> Self {
        Self {
            req,
            cached: Mutex::new(None),
        }
    }

    pub fn client_id(&self) -> &str {
        &self.req.client_id
    }

    /// A usable token: the cached one, or a new one.
    pub async fn token(&self, http: &Client, retry: &RetryPolicy) -> Result<Secret, AuthError> {
        let mut guard = self.cached.lock().await;
        if let Some(c) = guard.as_ref() {
            if Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        let fresh = self.acquire(http, retry).await?;
        let token = fresh.token.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    /// Drops `rejected` (if it is still the cached token) and gets a new one. Used once after
    /// F&O answered 401; if another caller already refreshed, its token is reused.
    pub async fn refresh(
        &self,
        rejected: &Secret,
        http: &Client,
        retry: &RetryPolicy,
    ) -> Result<Secret, AuthError> {
        let mut guard = self.cached.lock().await;
        if let Some(c) = guard.as_ref() {
            if &c.token != rejected && Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        *guard = None;
        let fresh = self.acquire(http, retry).await?;
        let token = fresh.token.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    async fn acquire(&self, http: &Client, retry: &RetryPolicy) -> Result<Cached, AuthError> {
        let r = &self.req;
        let url = token_url(&r.authority, &r.tenant_id);
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", r.client_id.as_str()),
            ("client_secret", r.client_secret.expose()),
            ("scope", r.scope.as_str()),
        ];
        let started = Instant::now();
        let resp = send_with_retry(
            || http.post(url.clone()).form(&form),
            retry,
            Idempotency::Safe,
            |msg| tracing::warn!(target: "d365::entra", "token request: {msg}"),
        )
        .await
        .map_err(|e| AuthError::Unreachable {
            authority: redact_url(r.authority.as_str()),
            detail: e.without_url().to_string(),
        })?;
        let status = resp.status();
        if let Some(m) = crate::http::out_of_time(&resp) {
            // Throttled or failing, and no time left to wait it out (see RetryPolicy::deadline).
            return Err(AuthError::Unreachable {
                authority: redact_url(r.authority.as_str()),
                detail: format!("HTTP {} and {m}", status.as_u16()),
            });
        }
        if status.is_redirection() {
            // The client follows no redirect (the form carries the secret): say where it led.
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| redact_location(&url, l))
                .unwrap_or_else(|| "(no Location header)".into());
            return Err(AuthError::Redirected {
                authority: redact_url(r.authority.as_str()),
                status: status.as_u16(),
                location,
            });
        }
        let body = resp.text().await.map_err(|e| AuthError::Unreachable {
            authority: redact_url(r.authority.as_str()),
            detail: e.without_url().to_string(),
        })?;
        if status.is_success() {
            let ok: TokenResponse =
                serde_json::from_str(&body).map_err(|e| AuthError::Unexpected {
                    status: status.as_u16(),
                    detail: format!("token response is not the expected JSON ({e})"),
                })?;
            if ok.access_token.is_empty() {
                return Err(AuthError::Unexpected {
                    status: status.as_u16(),
                    detail: "token response without access_token".into(),
                });
            }
            let lifetime = Duration::from_secs(ok.expires_in.as_secs());
            tracing::debug!(target: "d365::entra", expires_in = lifetime.as_secs(), "got token");
            return Ok(Cached {
                token: Secret::new(ok.access_token),
                refresh_at: started + lifetime.saturating_sub(r.margin),
            });
        }
        Err(classify(
            status.as_u16(),
            &body,
            &r.client_id,
            &r.tenant_id,
            &r.scope,
            &r.client_secret,
        ))
    }
}

/// `{authority}/{tenant}/oauth2/v2.0/token`
pub(crate) fn token_url(authority: &Url, tenant: &str) -> Url {
    let mut u = authority.clone();
    {
        let mut segs = u.path_segments_mut().expect("http(s) URL has a path");
        segs.pop_if_empty();
        segs.extend([tenant, "oauth2", "v2.0", "token"]);
    }
    u
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: ExpiresIn,
}

/// `expires_in` is a number in v2 responses but a string in some v1 ones.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Num(u64),
    Str(String),
}

impl ExpiresIn {
    fn as_secs(&self) -> u64 {
        match self {
            ExpiresIn::Num(n) => *n,
            ExpiresIn::Str(s) => s.trim().parse().unwrap_or(0),
        }
    }
}

#[derive(Deserialize, Default)]
struct EntraError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

/// Classifies an Entra error answer on its AADSTS codes (the HTTP status is not reliable).
pub(crate) fn classify(
    status: u16,
    body: &str,
    client_id: &str,
    tenant: &str,
    scope: &str,
    secret: &Secret,
) -> AuthError {
    let parsed: Option<EntraError> = serde_json::from_str(body).ok();
    let Some(e) = parsed else {
        let text: String = body.chars().take(200).collect();
        return AuthError::Unexpected {
            status,
            detail: redact(&text, secret),
        };
    };
    let mut codes = e.error_codes.clone();
    if codes.is_empty() {
        codes.extend(aadsts_in(&e.error_description));
    }
    for &code in &codes {
        match code {
            7000215 => {
                return AuthError::InvalidSecret {
                    client_id: client_id.into(),
                }
            }
            7000222 => {
                return AuthError::ExpiredSecret {
                    client_id: client_id.into(),
                }
            }
            700016 => {
                return AuthError::AppNotFound {
                    client_id: client_id.into(),
                    tenant: tenant.into(),
                }
            }
            90002 | 50034 | 900023 => {
                return AuthError::WrongTenant {
                    tenant: tenant.into(),
                    code,
                }
            }
            70011 | 500011 => {
                return AuthError::WrongScope {
                    scope: scope.into(),
                    code,
                }
            }
            _ => {}
        }
    }
    let first_line = e.error_description.lines().next().unwrap_or("").trim();
    AuthError::Other {
        error: if e.error.is_empty() {
            format!("HTTP {status}")
        } else {
            e.error
        },
        codes,
        description: redact(first_line, secret),
    }
}

/// AADSTS codes mentioned in a description (`AADSTS7000215: ...`).
fn aadsts_in(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find("AADSTS") {
        let digits: String = rest[pos + 6..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
        rest = &rest[pos + 6..];
    }
    out
}

/// Belt and braces: a secret must never end up in an error, even if a service echoes it.
fn redact(text: &str, secret: &Secret) -> String {
    if secret.expose().len() >= 4 {
        text.replace(secret.expose(), "***")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(body: &str) -> AuthError {
        classify(
            400,
            body,
            "cid",
            "tid",
            "https://x/.default",
            &Secret::new("s3cr3t-value"),
        )
    }

    #[test]
    fn classifies_on_codes_not_status() {
        assert!(matches!(
            c(
                r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#
            ),
            AuthError::InvalidSecret { .. }
        ));
        assert!(matches!(
            c(
                r#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys are expired."}"#
            ),
            AuthError::ExpiredSecret { .. }
        ));
        assert!(matches!(
            c(r#"{"error":"unauthorized_client","error_codes":[700016]}"#),
            AuthError::AppNotFound { .. }
        ));
        assert!(matches!(
            c(r#"{"error":"invalid_request","error_codes":[90002]}"#),
            AuthError::WrongTenant { code: 90002, .. }
        ));
        assert!(matches!(
            c(r#"{"error":"invalid_resource","error_codes":[500011]}"#),
            AuthError::WrongScope { code: 500011, .. }
        ));
        let other = c(
            r#"{"error":"temporarily_unavailable","error_description":"AADSTS50000: echo s3cr3t-value\r\nTrace ID: x"}"#,
        );
        let s = other.to_string();
        assert!(s.contains("50000") && !s.contains("s3cr3t-value"), "{s}");
        assert!(matches!(c("<html>"), AuthError::Unexpected { .. }));
    }

    #[test]
    fn token_url_joins_tenant() {
        let a = Url::parse("https://login.microsoftonline.com").unwrap();
        assert_eq!(
            token_url(&a, "t-1").as_str(),
            "https://login.microsoftonline.com/t-1/oauth2/v2.0/token"
        );
        let a = Url::parse("http://127.0.0.1:9/").unwrap();
        assert_eq!(
            token_url(&a, "x").as_str(),
            "http://127.0.0.1:9/x/oauth2/v2.0/token"
        );
    }
}
