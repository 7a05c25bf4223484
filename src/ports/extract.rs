//! The source port: running a Look or an inline query (Looker in production).

use async_trait::async_trait;

use super::Cause;
use crate::domain::config::InlineQuery;
use crate::domain::source::Extract;

/// What to extract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtractRequest {
    Look(String),
    Query(InlineQuery),
}

/// Why an extract failed.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The result is (or may be) incomplete: refused, nothing is posted.
    #[error(transparent)]
    Truncated(Cause),
    /// Bad query, unknown Look/field: the configuration must change.
    #[error(transparent)]
    Invalid(Cause),
    /// Credentials rejected.
    #[error(transparent)]
    Auth(Cause),
    /// Anything else (network, throttling exhausted, unexpected response).
    #[error(transparent)]
    Other(Cause),
}

#[async_trait]
pub trait Extractor: Send + Sync {
    async fn extract(&self, request: &ExtractRequest) -> Result<Extract, ExtractError>;
}
