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
//! The modules below are public because the binaries (`src/bin`), the bench or the integration
//! tests use them; inside each, what only the crate needs is `pub(crate)` (e.g. the D365 OData
//! and `$batch` plumbing, the Looker client's parts, the engine's writer and lease).

/// Shared AWS SDK set-up, which the tests against moto use too.
#[cfg(feature = "aws")]
pub mod aws;
/// The `ml-connector` command (its `main`, and the config loading the bench shares).
pub mod cli;
/// Finance controls (reconcile, reverse, trace), driven by the CLI and the tests.
pub mod controls;
/// The D365 client, for the wiring and the tests that drive it against the simulator.
pub mod d365;
/// The pure core: config, money, mapping, journals, validation, run model.
pub mod domain;
/// The pipeline over the ports, run by both front ends and the tests.
pub mod engine;
/// The retry policy that the client tests tune.
pub mod http;
/// The three Lambda handlers, for their binaries and the tests that invoke them.
#[cfg(feature = "aws")]
pub mod lambda;
/// The Looker client and delivery parsing.
pub mod looker;
/// Run notifications (chat, SNS).
pub mod notify;
/// The traits the engine needs; tests wrap them to inject faults.
pub mod ports;
pub(crate) mod rate;
/// Simulators of Looker, D365 and Entra ID for the demo, the bench and the tests.
#[cfg(feature = "sandbox")]
pub mod sandbox;
/// Credentials and where they come from.
pub mod secrets;
/// The audit stores (SQLite, DynamoDB).
pub mod store;
/// Builds the concrete clients for the CLI, the Lambdas and the tests.
pub mod wiring;
