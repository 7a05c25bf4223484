//! The domain core: money, source rows, mapping, journals, validation and the run model.
//!
//! Nothing in here does I/O. Adapters (Looker, D365, stores, CLI, Lambdas) feed it data and act on
//! what it decides, so every rule a finance team relies on can be unit-tested in isolation.

pub mod config;
pub mod converge;
pub mod journal;
pub mod ledger;
pub mod mapping;
pub mod money;
pub mod reconcile;
pub mod reference;
pub mod run;
pub mod source;
pub mod validation;
