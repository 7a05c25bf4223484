//! The sample events in `events/` (what Looker, EventBridge and the DynamoDB stream send) and
//! the facts they share.

use chrono::NaiveDate;

pub const EV_JSON: &str = include_str!("../../events/webhook-function-url.json");
pub const EV_DETAIL: &str = include_str!("../../events/webhook-json-detail.json");
pub const EV_CSV: &str = include_str!("../../events/webhook-csv.json");
pub const EV_SCHEDULE: &str = include_str!("../../events/scheduler.json");
pub const EV_REPLAY: &str = include_str!("../../events/replay-stream.json");
/// The path secret in the sample events.
pub const SECRET: &str = "f3Xq9LmV2pT7sK4wZ8nB6yH1cJ5dR0aE";
pub const INSTANCE: &str = "weekly-marketplace-fees";
/// The run id in `events/replay-stream.json`, replaced by a real one in tests.
pub const SAMPLE_RUN_ID: &str = "r-20261123060004-3fa1";

/// The date the sample events were sent (Monday, 2026-11-23): they cover 2026-W47.
pub fn event_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
}

/// The end (Sunday) of the week the sample events cover.
pub fn week_end() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 22).expect("date")
}
