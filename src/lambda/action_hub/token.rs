//! Where the hub token comes from: the value an admin enters as the hub's authorization token
//! in Looker (Admin > Actions > Add Action Hub, or `authorization_token` of
//! `POST /integration_hubs`). Looker sends it on every call as `Authorization: Token
//! token="…"`; it is a bearer secret (Looker signs nothing), so it lives in Secrets Manager and
//! is never logged.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::secrets::{Secret, SecretsError};

/// Environment variable: name or ARN of the Secrets Manager secret holding the hub token (a
/// plain string, or JSON `{"token": "…"}`). Unset: the webhook function serves no hub routes.
pub const ENV_ACTION_HUB_TOKEN_SECRET: &str = "ACTION_HUB_TOKEN_SECRET";

/// The current hub token.
#[async_trait::async_trait]
pub trait HubTokenSource: Send + Sync {
    async fn hub_token(&self) -> Result<Secret, SecretsError>;
}

/// A fixed token (tests, the local sandbox).
pub struct StaticHubToken(pub Secret);

#[async_trait::async_trait]
impl HubTokenSource for StaticHubToken {
    async fn hub_token(&self) -> Result<Secret, SecretsError> {
        Ok(self.0.clone())
    }
}

/// The token in Secrets Manager, cached for `ttl` so a rotation takes effect within it.
pub struct SecretsManagerHubToken {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Secret)>>,
}

impl SecretsManagerHubToken {
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String, ttl: Duration) -> Self {
        SecretsManagerHubToken {
            client,
            secret_id,
            ttl,
            cached: Mutex::new(None),
        }
    }
}

/// A plain token, or `{"token": "…"}`.
pub fn token_from_secret_string(s: &str) -> Result<Secret, String> {
    let s = s.trim();
    let token = if s.starts_with('{') {
        #[derive(serde::Deserialize)]
        struct Doc {
            token: String,
        }
        serde_json::from_str::<Doc>(s)
            .map_err(|_| "expected a string or {\"token\": \"…\"}".to_string())?
            .token
    } else {
        s.to_string()
    };
    if token.trim().is_empty() || token.contains('"') {
        return Err("the token is empty or contains a double quote".into());
    }
    Ok(Secret::new(token.trim()))
}

#[async_trait::async_trait]
impl HubTokenSource for SecretsManagerHubToken {
    async fn hub_token(&self) -> Result<Secret, SecretsError> {
        if let Ok(c) = self.cached.lock() {
            if let Some((at, s)) = c.as_ref() {
                if at.elapsed() < self.ttl {
                    return Ok(s.clone());
                }
            }
        }
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .map_err(|e| {
                crate::secrets::aws::sdk_failure(
                    format!("GetSecretValue {} (hub token)", self.secret_id),
                    e,
                )
            })?;
        let text = out.secret_string().ok_or_else(|| SecretsError::Malformed {
            instance: "action hub".into(),
            detail: "the hub token secret has no string value".into(),
        })?;
        let token = token_from_secret_string(text).map_err(|detail| SecretsError::Malformed {
            instance: "action hub".into(),
            detail,
        })?;
        if let Ok(mut c) = self.cached.lock() {
            *c = Some((Instant::now(), token.clone()));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_string_forms() {
        assert_eq!(token_from_secret_string(" abc \n").unwrap().expose(), "abc");
        assert_eq!(
            token_from_secret_string(r#"{"token":"xyz"}"#)
                .unwrap()
                .expose(),
            "xyz"
        );
        assert!(token_from_secret_string("").is_err());
        assert!(token_from_secret_string(r#"{"other":"x"}"#).is_err());
    }
}
