//! Credentials: where they come from, and a wrapper that keeps them out of logs.

use std::fmt;

#[cfg(feature = "aws")]
pub mod aws;

/// A secret string (client secret, access token). `Debug`/`Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself: only for putting on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        assert_eq!(s.expose(), "hunter2");
    }
}

/// Credentials for both systems. Never part of the instance config.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub looker_client_id: String,
    pub looker_client_secret: Secret,
    pub d365_tenant_id: String,
    pub d365_client_id: String,
    pub d365_client_secret: Secret,
}

/// Why credentials could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("missing credential {what}: set {env} or `{file_key}` in the credentials file")]
    Missing {
        what: &'static str,
        env: &'static str,
        file_key: &'static str,
    },
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCreds {
    #[serde(default)]
    looker: FileLooker,
    #[serde(default)]
    d365: FileD365,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLooker {
    client_id: Option<String>,
    client_secret: Option<Secret>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileD365 {
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
}

/// Environment variable names, one per credential.
pub const ENV_LOOKER_CLIENT_ID: &str = "MLC_LOOKER_CLIENT_ID";
pub const ENV_LOOKER_CLIENT_SECRET: &str = "MLC_LOOKER_CLIENT_SECRET";
pub const ENV_D365_TENANT_ID: &str = "MLC_D365_TENANT_ID";
pub const ENV_D365_CLIENT_ID: &str = "MLC_D365_CLIENT_ID";
pub const ENV_D365_CLIENT_SECRET: &str = "MLC_D365_CLIENT_SECRET";

impl Credentials {
    /// Environment first, then the optional credentials file; `tenant_from_config` is used when
    /// neither names a tenant (the tenant id is not secret and may live in the config).
    pub fn load(
        file: Option<&std::path::Path>,
        tenant_from_config: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CredentialsError> {
        let fc: FileCreds = match file {
            None => FileCreds::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| CredentialsError::File {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                toml::from_str(&text).map_err(|e| CredentialsError::File {
                    path: p.display().to_string(),
                    // toml's message quotes the offending line, which may hold a secret.
                    reason: format!(
                        "not valid credentials TOML (expected [looker] client_id/client_secret and [d365] tenant_id/client_id/client_secret){}",
                        e.span().map(|s| format!(" near byte {}", s.start)).unwrap_or_default()
                    ),
                })?
            }
        };
        let pick = |env_name: &'static str,
                    file_val: Option<String>,
                    what: &'static str,
                    file_key: &'static str|
         -> Result<String, CredentialsError> {
            env(env_name)
                .filter(|v| !v.is_empty())
                .or(file_val.filter(|v| !v.is_empty()))
                .ok_or(CredentialsError::Missing {
                    what,
                    env: env_name,
                    file_key,
                })
        };
        Ok(Credentials {
            looker_client_id: pick(
                ENV_LOOKER_CLIENT_ID,
                fc.looker.client_id,
                "Looker API client id",
                "looker.client_id",
            )?,
            looker_client_secret: Secret::new(pick(
                ENV_LOOKER_CLIENT_SECRET,
                fc.looker.client_secret.map(|s| s.expose().to_string()),
                "Looker API client secret",
                "looker.client_secret",
            )?),
            d365_tenant_id: pick(
                ENV_D365_TENANT_ID,
                fc.d365.tenant_id.or(tenant_from_config.map(str::to_string)),
                "Entra tenant id",
                "d365.tenant_id",
            )?,
            d365_client_id: pick(
                ENV_D365_CLIENT_ID,
                fc.d365.client_id,
                "Entra app client id",
                "d365.client_id",
            )?,
            d365_client_secret: Secret::new(pick(
                ENV_D365_CLIENT_SECRET,
                fc.d365.client_secret.map(|s| s.expose().to_string()),
                "Entra app client secret",
                "d365.client_secret",
            )?),
        })
    }
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_missing_is_named() {
        let dir = std::env::temp_dir().join(format!("mlc-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "[looker]\nclient_id='fid'\nclient_secret='fsecret'\n[d365]\nclient_id='did'\nclient_secret='dsecret'\n",
        )
        .unwrap();
        let env = |k: &str| (k == ENV_LOOKER_CLIENT_ID).then(|| "envid".to_string());
        let c = Credentials::load(Some(&f), Some("tenant-x"), env).unwrap();
        assert_eq!(c.looker_client_id, "envid");
        assert_eq!(c.looker_client_secret.expose(), "fsecret");
        assert_eq!(c.d365_tenant_id, "tenant-x");
        let e = Credentials::load(None, None, |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("MLC_LOOKER_CLIENT_ID"), "{e}");
        std::fs::write(&f, "[looker]\nclient_secret = hunter2 oops\n").unwrap();
        let e = Credentials::load(Some(&f), None, |_| None)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}

/// Everything secret about one instance: both credential sets and the webhook path secret.
#[derive(Debug, Clone)]
pub struct InstanceSecrets {
    pub credentials: Credentials,
    /// The secret segment of the webhook ingest path `/ingest/{instance}/{secret}`.
    pub webhook_secret: Secret,
    /// When set, a delivery must also carry this value in `X-Looker-Webhook-Token` (the token
    /// of Looker's *Admin > Webhooks* page), because the path is visible to every user who can
    /// see the schedule.
    pub looker_webhook_token: Option<Secret>,
    /// Slack/Teams incoming webhooks run notifications are sent to (optional).
    pub notify: crate::notify::ChatTargets,
}

/// The JSON document stored as one secret per instance (in AWS: Secrets Manager, KMS-encrypted,
/// named `{SECRET_PREFIX}{instance}`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretDocument {
    pub looker_client_id: String,
    pub looker_client_secret: Secret,
    pub d365_tenant_id: String,
    pub d365_client_id: String,
    pub d365_client_secret: Secret,
    pub webhook_secret: Secret,
    /// Optional: see [`InstanceSecrets::looker_webhook_token`].
    #[serde(default)]
    pub looker_webhook_token: Option<Secret>,
    /// Slack incoming-webhook URL for run notifications (optional).
    #[serde(default)]
    pub slack_webhook_url: Option<Secret>,
    /// Teams incoming-webhook URL for run notifications (optional).
    #[serde(default)]
    pub teams_webhook_url: Option<Secret>,
}

impl From<SecretDocument> for InstanceSecrets {
    fn from(d: SecretDocument) -> Self {
        InstanceSecrets {
            credentials: Credentials {
                looker_client_id: d.looker_client_id,
                looker_client_secret: d.looker_client_secret,
                d365_tenant_id: d.d365_tenant_id,
                d365_client_id: d.d365_client_id,
                d365_client_secret: d.d365_client_secret,
            },
            webhook_secret: d.webhook_secret,
            looker_webhook_token: d.looker_webhook_token,
            notify: crate::notify::ChatTargets {
                slack: d.slack_webhook_url,
                teams: d.teams_webhook_url,
            },
        }
    }
}

pub use crate::ports::{SecretSource, SecretsError};
