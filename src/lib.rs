//! ml-connector: Looker results → Dynamics 365 F&O general journals.
//!
//! `domain` is the core with no I/O (money, source rows, mapping, journals, validation, run
//! model). Around it sit the adapters: `looker` and `d365` (HTTP clients), `store` (audit and
//! idempotency persistence), `secrets` (credentials), `engine` (the run pipeline wiring them
//! together), `controls` (finance controls: reconciliation, reversal, lineage) and `cli`.
//! `sandbox` holds simulators for demos and tests and is feature-gated.

#[cfg(feature = "aws")]
pub mod aws;
pub mod cli;
pub mod controls;
pub mod d365;
pub mod domain;
pub mod engine;
pub mod http;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod looker;
pub mod notify;
pub mod ports;
pub(crate) mod rate;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod secrets;
pub mod store;
pub mod wiring;
