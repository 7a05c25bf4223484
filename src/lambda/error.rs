//! Errors of the Lambda entry points, classified by what the caller should do about them.

use crate::engine::EngineError;
use crate::secrets::SecretsError;
use crate::store::StoreError;

/// Why a Lambda invocation could not do its work. Messages never carry secret material.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// The audit/idempotency store failed (retryable).
    #[error("audit store: {0}")]
    Store(#[from] StoreError),
    /// Secrets could not be read (backend errors are retryable, a missing/malformed secret not).
    #[error("secrets: {0}")]
    Secrets(#[from] SecretsError),
    /// No configuration for the instance in the config store.
    #[error("instance `{0}` has no configuration in the config store (push it with `ml-connector config push`)")]
    ConfigMissing(String),
    /// The stored configuration does not parse or is for another instance.
    #[error("the stored configuration of instance `{instance}` is unusable: {message}")]
    ConfigInvalid { instance: String, message: String },
    /// The Looker/D365 clients could not be built from the config and credentials.
    #[error("could not set up the Looker/D365 clients of instance `{instance}`: {message}")]
    Clients { instance: String, message: String },
    /// The engine stopped (store failure, configuration error, run not found).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The work did not finish and may succeed if tried again (run failed, period busy, the same
    /// event is being handled by another invocation).
    #[error("{0}")]
    Retryable(String),
    /// The event itself is unusable (wrong shape); retrying it cannot help.
    #[error("unusable event: {0}")]
    BadEvent(String),
    /// The Lambda environment is misconfigured (missing/invalid environment variable).
    #[error("environment: {0}")]
    Environment(String),
}

impl LambdaError {
    /// Whether trying the same event again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LambdaError::Store(_) | LambdaError::Retryable(_) => true,
            LambdaError::Secrets(SecretsError::Backend { .. }) => true,
            LambdaError::Secrets(_) => false,
            LambdaError::Engine(EngineError::Store(_)) => true,
            LambdaError::Engine(_) => false,
            LambdaError::ConfigMissing(_)
            | LambdaError::ConfigInvalid { .. }
            | LambdaError::Clients { .. }
            | LambdaError::BadEvent(_)
            | LambdaError::Environment(_) => false,
        }
    }

    /// A short, stable name for logs and the Lambda error type.
    pub fn kind(&self) -> &'static str {
        match self {
            LambdaError::Store(_) => "StoreError",
            LambdaError::Secrets(_) => "SecretsError",
            LambdaError::ConfigMissing(_) => "ConfigMissing",
            LambdaError::ConfigInvalid { .. } => "ConfigInvalid",
            LambdaError::Clients { .. } => "ClientsError",
            LambdaError::Engine(_) => "EngineError",
            LambdaError::Retryable(_) => "Retryable",
            LambdaError::BadEvent(_) => "BadEvent",
            LambdaError::Environment(_) => "EnvironmentError",
        }
    }
}

impl From<LambdaError> for lambda_runtime::Diagnostic {
    fn from(e: LambdaError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.kind().to_string(),
            error_message: e.to_string(),
        }
    }
}
