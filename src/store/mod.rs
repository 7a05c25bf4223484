//! Audit and idempotency persistence: the embedded SQLite store (and DynamoDB with `aws`).
//! The `Store` port itself lives in [`crate::ports`].
//!
//! A store persists the audit trail of every run (the run record, each source row, each journal
//! line, and the events recorded along the way) and the idempotency locks that stop two
//! invocations from posting the same thing twice.
//!
//! Records are stored whole, as JSON (decimals serialize as strings, so nothing loses precision);
//! backends only lift out the few fields they need to index.
//!
//! Every implementation must pass the conformance suite in `tests/store_suite/mod.rs`.

#[cfg(feature = "aws")]
pub mod dynamodb;
pub mod sqlite;

pub use sqlite::SqliteStore;

pub use crate::ports::{ConfigStore, LockOutcome, ReplayRequests, Store, StoreError};
