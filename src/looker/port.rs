//! `Extractor` port implemented by the Looker client.

use async_trait::async_trait;

use super::{LookerClient, LookerError};
use crate::domain::source::Extract;
use crate::ports::{Cause, ExtractError, ExtractRequest, Extractor};

impl From<LookerError> for ExtractError {
    fn from(e: LookerError) -> Self {
        match e {
            LookerError::Truncated { .. } => ExtractError::Truncated(Cause::error(e)),
            LookerError::Auth(_) => ExtractError::Auth(Cause::error(e)),
            LookerError::NotFound(_) | LookerError::Invalid(_) | LookerError::Config(_) => {
                ExtractError::Invalid(Cause::error(e))
            }
            other => ExtractError::Other(Cause::error(other)),
        }
    }
}

#[async_trait]
impl Extractor for LookerClient {
    async fn extract(&self, request: &ExtractRequest) -> Result<Extract, ExtractError> {
        Ok(match request {
            ExtractRequest::Look(id) => self.run_look(id).await?,
            ExtractRequest::Query(q) => self.run_inline_query(q).await?,
        })
    }
}
