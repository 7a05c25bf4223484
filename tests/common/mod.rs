//! The tests' one world and their small shared helpers.
//!
//! - [`World`] (`world.rs`): both simulators on loopback, an instance config pointed at them, an
//!   audit store (SQLite, or DynamoDB on the local moto server), and a Lambda context over them
//!   with in-memory config and secret sources. Every pipeline, CLI, Lambda, action-hub and
//!   fault test starts from it.
//! - `aws`: the moto connection helpers for the AWS adapters' tests.
//! - `events`: the sample events in `events/` and what they share (date, path secret).
//! - `sims`: the simulators' clients as the client tests set them up (`sim`, `d365_client`, …).
//! - `today`, `dec`, `fast_retry`, `fee_rows_json`: one copy each.
#![allow(dead_code)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod events;
#[cfg(feature = "sandbox")]
mod sims;
#[cfg(feature = "sandbox")]
mod world;

// Each test binary uses only part of the world.
#[cfg(feature = "sandbox")]
#[allow(unused_imports)]
pub use sims::*;
#[cfg(feature = "sandbox")]
#[allow(unused_imports)]
pub use world::*;

use std::time::Duration;

use chrono::NaiveDate;
use ml_connector::http::RetryPolicy;
use rust_decimal::Decimal;

/// The example instance config (the weekly marketplace fees).
pub const EXAMPLE: &str = include_str!("../../infra/config/weekly-marketplace-fees.toml");

pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

/// An exact decimal from a literal.
pub fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal literal")
}

/// Three attempts with millisecond back-off: retries without slowing the suite down.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
        fallback_retry_after: Duration::from_millis(50),
        deadline: None,
    }
}

/// `rows` Looker rows of the week ending `week` as a JSON array, and their exact total. Amounts
/// have two decimals, so every row maps to exactly one detail line (no rounding residue).
pub fn fee_rows_json(rows: usize, week: &str) -> (String, Decimal) {
    let channels = ["Amazon", "eBay", "Shopify"];
    let ccs = ["022", "031"];
    let fees = ["Marketplace fee", "Commission"];
    let mut total = Decimal::ZERO;
    let mut out = String::with_capacity(rows * 200 + 2);
    out.push('[');
    for i in 0..rows {
        let amount = format!("{}.{:02}", 10 + (i * 7919) % 5000, (i * 31) % 100);
        total += amount.parse::<Decimal>().expect("generated amount");
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"marketplace_fees.row_id":{i},"marketplace_fees.week_end_date":"{week}","marketplace_fees.channel":"{}","marketplace_fees.cost_center":"{}","marketplace_fees.fee_type":"{}","marketplace_fees.total_amount":{amount}}}"#,
            channels[i % 3],
            ccs[i % 2],
            fees[(i / 2) % 2]
        ));
    }
    out.push(']');
    (out, total)
}
