//! The ledger port: journal headers and lines in the general ledger (D365 F&O in production).
//!
//! The journal types it speaks are plain data in [`crate::domain::ledger`] (re-exported here).

use super::Cause;
use async_trait::async_trait;

pub use crate::domain::ledger::{LedgerHeader, LedgerLine, NewLedgerLine};
use crate::domain::reference::ReferenceData;

/// Why a ledger call failed, classified by what the engine must do about it.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// D365 refused the request (validation): permanent, the message says why.
    #[error(transparent)]
    Rejected(Cause),
    /// The request may or may not have been applied (timeout, dropped connection, 5xx on a
    /// write): reconcile by natural key before trying again.
    #[error(transparent)]
    OutcomeUnknown(Cause),
    /// Credentials/registration problem.
    #[error(transparent)]
    Auth(Cause),
    /// Anything else on a read (network, throttling exhausted, unexpected response).
    #[error(transparent)]
    Other(Cause),
    /// The caller's deadline came first: the request was not sent, or was refused before
    /// processing (429) and its retry would have outlived the deadline. Nothing was applied; the
    /// run stops resumably (`interrupted`), not as a failure.
    #[error(transparent)]
    OutOfTime(Cause),
}

/// What happened to one voucher posted atomically (an OData `$batch` changeset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoucherOutcome {
    /// Every line of the voucher was created, in the order sent.
    Created(Vec<LedgerLine>),
    /// D365 refused the voucher; none of its lines exist. Permanent until the cause is fixed.
    Failed(String),
    /// Not sent or not processed (an earlier voucher failed, or throttling persisted): nothing
    /// of it exists; safe to send again later.
    NotProcessed(String),
    /// Not sent, or refused before processing, because the caller's deadline came first: nothing
    /// of it exists; send it again in a later invocation.
    OutOfTime(String),
    /// The outcome is unknown (timeout, 5xx, dropped connection): read D365 before anything else.
    Unknown(String),
}

/// The general ledger as the engine and the controls use it.
///
/// No method has a default: a wrapper (fault injection, a naive poster) states for each one
/// whether it forwards, refuses or falls back, so none silently changes how a test posts.
#[async_trait]
pub trait LedgerGateway: Send + Sync {
    /// Posts `vouchers` (each created atomically, in order, at most `max_operations` lines per
    /// request). `Ok(None)` means the gateway cannot post atomically (no `$batch`): the caller
    /// posts line by line instead.
    async fn create_vouchers(
        &self,
        vouchers: &[Vec<NewLedgerLine>],
        max_operations: usize,
    ) -> Result<Option<Vec<VoucherOutcome>>, LedgerError>;

    async fn reference(&self, legal_entity: &str) -> Result<ReferenceData, LedgerError>;
    /// Headers of `legal_entity` whose Description starts with `description_prefix`.
    async fn find_headers(
        &self,
        legal_entity: &str,
        description_prefix: &str,
    ) -> Result<Vec<LedgerHeader>, LedgerError>;
    async fn create_header(
        &self,
        legal_entity: &str,
        journal_name: &str,
        description: &str,
    ) -> Result<LedgerHeader, LedgerError>;
    async fn lines(
        &self,
        legal_entity: &str,
        batch_number: &str,
    ) -> Result<Vec<LedgerLine>, LedgerError>;
    async fn create_line(&self, line: &NewLedgerLine) -> Result<LedgerLine, LedgerError>;

    /// One journal header by batch number; `None` if it does not exist (e.g. deleted).
    /// Used by the finance controls (reconciliation, reversal).
    async fn header(
        &self,
        legal_entity: &str,
        batch_number: &str,
    ) -> Result<Option<LedgerHeader>, LedgerError>;
    /// Deletes one line of an unposted journal; `Ok(false)`: no such line. Posted journals are
    /// refused (`Rejected`).
    async fn delete_line(
        &self,
        legal_entity: &str,
        batch_number: &str,
        line_number: &str,
    ) -> Result<bool, LedgerError>;
    /// Deletes lines of one unposted journal in one atomic changeset: all of them or none
    /// (`Rejected`: none, e.g. a line was already gone; `OutcomeUnknown`: read again).
    /// `Ok(false)`: this gateway cannot delete atomically; the caller deletes line by line.
    async fn delete_lines_atomic(
        &self,
        legal_entity: &str,
        batch_number: &str,
        line_numbers: &[String],
    ) -> Result<bool, LedgerError>;
    /// Deletes an unposted journal header (with any lines left); `Ok(false)`: no such journal.
    async fn delete_header(
        &self,
        legal_entity: &str,
        batch_number: &str,
    ) -> Result<bool, LedgerError>;
}
