//! Finance controls: what a controller needs at month-end to trust the integration.
//!
//! - [`reconcile`]: per legal entity × currency × voucher, Looker total → mapped total →
//!   rounding residue (and the line it was booked to) → planned debit/credit → what D365 holds
//!   *now* (read back, not remembered), with every difference flagged. Stored with the run as an
//!   audit event of kind [`KIND_RECONCILIATION`].
//! - [`reverse`]: the inverse journal of a posted run (same accounts and dimensions, amounts
//!   negated, dated on the first day of the next open period), recorded as its own run linked to
//!   the original; or, for a journal still unposted, deleting the connector's lines. Posted
//!   entries are never edited.
//! - [`trace`]: a line's lineage reference (`{run_key}.L0007`, first in its Text) back to the
//!   run, the Look/query and filters, the source row(s) and the config version.
//! - [`notify`]: one actionable, SNS-ready message for a failed/conflicting/rejected/busy run.
//!
//! Everything here works through the [`Store`] and [`LedgerGateway`] ports, so the CLI, the
//! Lambdas and tests share it.

pub mod notify;
pub mod reconcile;
pub mod reverse;
pub mod trace;

use crate::domain::run::RunRecord;
use crate::ports::LedgerError;
use crate::store::{Store, StoreError};

pub use notify::RunNotification;
pub use reconcile::{reconcile, Reconciliation};
pub use reverse::{reverse, ReverseOptions, ReverseReport};
pub use trace::{trace, Trace};

pub use crate::domain::run::{
    EventData, EventKind, EventLevel, KIND_DELETED_UNPOSTED, KIND_RECONCILIATION, KIND_REVERSAL,
    KIND_REVERSED, TRIGGER_REVERSE,
};
/// Header Description prefix of a reversal journal: `MLC-R {original run key} {original batch} …`.
/// Deliberately not `MLC {…}`, so the period lookup of the posting engine (`MLC {period_key}-`)
/// never mistakes a reversal for an earlier posting of the period.
pub const REVERSAL_PREFIX: &str = "MLC-R";

/// Why a control could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlsError {
    #[error("audit store: {0}")]
    Store(#[from] StoreError),
    #[error("run `{0}` not found in the audit store")]
    RunNotFound(String),
    #[error("D365: {0}")]
    Ledger(#[from] LedgerError),
    /// A precondition is not met; nothing was written. The message says what to do.
    #[error("{0}")]
    Refused(String),
    /// A total of a run's amounts (audited, or as D365 holds them) does not fit a decimal.
    #[error("cannot total the run's amounts: {0}")]
    Overflow(#[from] crate::domain::money::Overflow),
}

/// Appends an audit event (also logged): the engine's own recorder.
pub(crate) use crate::engine::record_event as record;
/// [`record`] with a typed payload.
pub(crate) use crate::engine::record_event_with as record_with;

/// Whether an earlier run of a period still counts for the engine's "period already posted with
/// other data" check. It does not when it is itself a reversal, when its journals were reversed,
/// or when its unposted journals were deleted: after any of those the period is free for a
/// corrected re-post.
pub async fn blocks_period(store: &dyn Store, run: &RunRecord) -> Result<bool, StoreError> {
    if run.trigger == TRIGGER_REVERSE {
        return Ok(false);
    }
    let events = store.events(&run.run_id).await?;
    Ok(!events
        .iter()
        .any(|e| e.kind == KIND_REVERSED || e.kind == KIND_DELETED_UNPOSTED))
}

/// Batch numbers of `legal_entity` whose journals carry a reversal journal made by
/// [`reverse()`], for runs of the period `period_key`. The posting engine ignores those journals
/// when it looks for earlier postings of the period in D365.
pub async fn reversed_batches(
    ledger: &dyn crate::ports::LedgerGateway,
    legal_entity: &str,
    period_key: &str,
) -> Result<std::collections::BTreeSet<String>, LedgerError> {
    let prefix = format!("{REVERSAL_PREFIX} {period_key}-");
    Ok(ledger
        .find_headers(legal_entity, &prefix)
        .await?
        .into_iter()
        .filter(|h| h.description.starts_with(&prefix))
        .filter_map(|h| parse_reversal_description(&h.description).map(|(_, b)| b.to_string()))
        .collect())
}

/// `MLC-R {run_key} {batch} …` → (original run key, original batch number).
pub fn parse_reversal_description(description: &str) -> Option<(&str, &str)> {
    let mut it = description.split_whitespace();
    if it.next()? != REVERSAL_PREFIX {
        return None;
    }
    Some((it.next()?, it.next()?))
}

/// Reversal header Description prefix for one original journal (trailing space included, so
/// batch `0001` never matches `00012`).
pub fn reversal_description_prefix(original_run_key: &str, original_batch: &str) -> String {
    format!("{REVERSAL_PREFIX} {original_run_key} {original_batch} ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversal_descriptions_round_trip() {
        let p = reversal_description_prefix("abc-123456", "00012");
        let d = format!("{p}reversal of r-1");
        assert_eq!(
            parse_reversal_description(&d),
            Some(("abc-123456", "00012"))
        );
        assert_eq!(parse_reversal_description("MLC abc-123456 x"), None);
        assert!(!d.starts_with("MLC abc-"));
    }
}
