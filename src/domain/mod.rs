//! The domain core: money, source rows, mapping, journals, validation and the run model.
//!
//! Nothing in here does I/O. Adapters (Looker, D365, stores, CLI, Lambdas) feed it data and act on
//! what it decides, so every rule a finance team relies on can be unit-tested in isolation.

pub mod config;
pub(crate) mod converge;
pub mod journal;
pub(crate) mod ledger;
pub mod mapping;
pub mod money;
pub(crate) mod reconcile;
pub mod reference;
pub mod run;
pub mod source;
pub mod validation;
