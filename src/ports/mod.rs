//! Ports: what the engine and the finance controls need from the outside world, as traits.
//!
//! The engine depends on these, not on HTTP clients or databases, so the same pipeline runs from
//! the CLI, the Lambdas and tests, and fault injection can wrap any of them. Adapters implement
//! them: `looker` ([`Extractor`]), `d365` ([`LedgerGateway`]), `store` ([`Store`],
//! [`ConfigStore`], [`ReplayRequests`]), `secrets` ([`SecretSource`]); the CLI and the Lambdas
//! implement [`Progress`].

mod cause;
mod extract;
mod ledger;
mod progress;
mod secrets;
mod store;

pub use cause::Cause;
pub use extract::{ExtractError, ExtractRequest, Extractor};
pub use ledger::{
    LedgerError, LedgerGateway, LedgerHeader, LedgerLine, NewLedgerLine, VoucherOutcome,
};
pub use progress::{CrashPoint, NoProgress, Progress};
pub use secrets::{SecretSource, SecretsError};
pub use store::{ConfigStore, LockOutcome, ReplayRequests, Store, StoreError};
