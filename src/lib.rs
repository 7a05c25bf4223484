//! ml-connector: Looker results → Dynamics 365 F&O general journals.
//!
//! `domain` is the core with no I/O (money, source rows, mapping, journals, validation, run
//! model, the reconciliation comparison). `ports` are the traits the engine and the controls
//! need from the outside world. Around them sit the adapters: `looker` and `d365` (HTTP clients),
//! `store` (audit and idempotency persistence), `secrets` (credentials), `notify`; `engine` runs
//! the pipeline over the ports, `controls` holds the finance controls (reconciliation,
//! reversal, lineage). `wiring` builds the concrete clients for the two front ends, `cli` and
//! `lambda`. `sandbox` holds simulators for demos and tests and is feature-gated.
//!
//! Every module is public because the binaries, the benches or the integration tests use it;
//! what only the crate needs stays `pub(crate)` inside them.

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
