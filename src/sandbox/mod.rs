//! Simulators of Looker, D365 F&O and Entra ID, served over real HTTP on loopback.
//!
//! Test and demo equipment only: compiled with the `sandbox` feature, never linked into the
//! Lambda binaries.

pub mod converge;
pub mod d365;
pub mod looker;
