//! The secret source port: where an instance's credentials come from.

use super::Cause;
use crate::secrets::InstanceSecrets;

/// Why an instance's secrets could not be read. Never contains secret material.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("no secret for instance `{instance}` ({detail})")]
    NotFound { instance: String, detail: String },
    #[error("the secret of instance `{instance}` is malformed: {detail}")]
    Malformed { instance: String, detail: String },
    /// The secret store could not be read: what was asked for, and the backend's own error
    /// (kept as the source).
    #[error("secrets backend: {}", .source.in_context(.context))]
    Backend {
        context: String,
        #[source]
        source: Cause,
    },
}

/// Where instance secrets come from (Secrets Manager in AWS; fixed values in tests).
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    async fn instance_secrets(&self, instance: &str) -> Result<InstanceSecrets, SecretsError>;
}
