//! What the simulator starts with: nothing, or the demo marketplace-fees model.
//!
//! The demo amounts are derived from a hash of the row's dimensions, so every run (and every
//! machine) sees the same numbers, with third/fourth decimals that make rounding matter.

use std::collections::BTreeMap;

use chrono::{Datelike, Duration, NaiveDate};
use sha2::{Digest, Sha256};

use super::model::{json_str, SimExplore, SimValue, StoredRow};
use crate::domain::config::InlineQuery;

/// Demo model name.
pub const DEMO_MODEL: &str = "finance";
/// Demo explore name.
pub const DEMO_EXPLORE: &str = "marketplace_fees";
/// The demo Look: last week's fees and commissions.
pub const DEMO_LOOK_ID: &str = "42";
pub const DEMO_LOOK_TITLE: &str = "Weekly marketplace fees and commissions";
pub const DEMO_WEEK_END_DATE: &str = "marketplace_fees.week_end_date";
pub const DEMO_CHANNEL: &str = "marketplace_fees.channel";
pub const DEMO_COST_CENTER: &str = "marketplace_fees.cost_center";
pub const DEMO_FEE_TYPE: &str = "marketplace_fees.fee_type";
pub const DEMO_TOTAL_AMOUNT: &str = "marketplace_fees.total_amount";
pub const DEMO_CHANNELS: [&str; 3] = ["Amazon", "eBay", "Shopify"];
pub const DEMO_COST_CENTERS: [&str; 2] = ["022", "031"];
pub const DEMO_FEE_TYPES: [&str; 2] = ["Marketplace fee", "Commission"];

#[derive(Debug, Clone)]
pub(crate) struct SeedExplore {
    pub(crate) model: String,
    pub(crate) explore: String,
    pub(crate) dimensions: Vec<String>,
    pub(crate) measures: Vec<String>,
    pub(crate) rows_json: String,
    /// Instead of `rows_json`: [`generated_explore`] rows (fast, for large explores).
    pub(crate) generated_rows: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct SeedLook {
    pub(crate) id: String,
    pub(crate) title: String,
    pub(crate) query: InlineQuery,
}

/// Initial content of a [`super::LookerSim`].
#[derive(Debug, Clone, Default)]
pub struct LookerSeed {
    pub(crate) explores: Vec<SeedExplore>,
    pub(crate) looks: Vec<SeedLook>,
}

impl LookerSeed {
    /// No models, explores or Looks.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds an explore (same arguments as [`super::LookerSim::add_explore`]).
    pub fn with_explore(
        mut self,
        model: &str,
        explore: &str,
        dimensions: &[&str],
        measures: &[&str],
        rows_json: &str,
    ) -> Self {
        self.explores.push(SeedExplore {
            model: model.into(),
            explore: explore.into(),
            dimensions: dimensions.iter().map(|s| s.to_string()).collect(),
            measures: measures.iter().map(|s| s.to_string()).collect(),
            rows_json: rows_json.into(),
            generated_rows: None,
        });
        self
    }

    /// Adds a generated explore of `n_rows` distinct rows (see
    /// [`super::LookerSim::add_generated_explore`]).
    pub fn with_generated_explore(mut self, model: &str, explore: &str, n_rows: usize) -> Self {
        let fields = generated_fields(explore);
        self.explores.push(SeedExplore {
            model: model.into(),
            explore: explore.into(),
            dimensions: fields[..4].to_vec(),
            measures: fields[4..].to_vec(),
            rows_json: String::new(),
            generated_rows: Some(n_rows),
        });
        self
    }

    /// Adds a saved Look.
    pub fn with_look(mut self, id: &str, title: &str, query: InlineQuery) -> Self {
        self.looks.push(SeedLook {
            id: id.into(),
            title: title.into(),
            query,
        });
        self
    }

    /// Model `finance`, explore `marketplace_fees` (12 rows per week for every Sunday from 60
    /// weeks before `today` to 8 weeks after) and Look `42` filtered on the most recent Sunday
    /// strictly before `today`.
    pub fn demo(today: NaiveDate) -> Self {
        let mut rows = Vec::new();
        let mut week = first_sunday_on_or_after(today - Duration::weeks(60));
        let last = today + Duration::weeks(8);
        while week <= last {
            let w = week.format("%Y-%m-%d").to_string();
            for ch in DEMO_CHANNELS {
                for cc in DEMO_COST_CENTERS {
                    for fee in DEMO_FEE_TYPES {
                        rows.push(format!(
                            "{{{}:{},{}:{},{}:{},{}:{},{}:{}}}",
                            json_str(DEMO_WEEK_END_DATE),
                            json_str(&w),
                            json_str(DEMO_CHANNEL),
                            json_str(ch),
                            json_str(DEMO_COST_CENTER),
                            json_str(cc),
                            json_str(DEMO_FEE_TYPE),
                            json_str(fee),
                            json_str(DEMO_TOTAL_AMOUNT),
                            demo_amount(&w, ch, cc, fee),
                        ));
                    }
                }
            }
            week += Duration::weeks(1);
        }
        let mut filters = BTreeMap::new();
        filters.insert(
            DEMO_WEEK_END_DATE.to_string(),
            previous_sunday(today).format("%Y-%m-%d").to_string(),
        );
        let look_query = InlineQuery {
            model: DEMO_MODEL.into(),
            explore: DEMO_EXPLORE.into(),
            fields: [
                DEMO_WEEK_END_DATE,
                DEMO_CHANNEL,
                DEMO_COST_CENTER,
                DEMO_FEE_TYPE,
                DEMO_TOTAL_AMOUNT,
            ]
            .map(String::from)
            .to_vec(),
            filters,
            sorts: [DEMO_CHANNEL, DEMO_COST_CENTER, DEMO_FEE_TYPE]
                .map(String::from)
                .to_vec(),
            query_timezone: Some("UTC".into()),
        };
        Self::empty()
            .with_explore(
                DEMO_MODEL,
                DEMO_EXPLORE,
                &[
                    DEMO_WEEK_END_DATE,
                    DEMO_CHANNEL,
                    DEMO_COST_CENTER,
                    DEMO_FEE_TYPE,
                ],
                &[DEMO_TOTAL_AMOUNT],
                &format!("[{}]", rows.join(",")),
            )
            .with_look(DEMO_LOOK_ID, DEMO_LOOK_TITLE, look_query)
    }
}

/// Field suffixes of a generated explore: four dimensions, then the measure.
pub const GENERATED_FIELDS: [&str; 5] =
    ["row_id", "posting_date", "account", "cost_center", "amount"];
/// Accounts a generated row cycles through.
pub const GENERATED_ACCOUNTS: [&str; 7] = [
    "600100", "600200", "610300", "620000", "630500", "640100", "650900",
];

/// `<explore>.row_id`, `.posting_date`, `.account`, `.cost_center` (dimensions) and
/// `.amount` (the measure) of a generated explore.
pub fn generated_fields(explore: &str) -> Vec<String> {
    GENERATED_FIELDS
        .iter()
        .map(|f| format!("{explore}.{f}"))
        .collect()
}

/// A query selecting every field of a generated explore, unsorted (result order = row order).
pub fn generated_query(model: &str, explore: &str) -> InlineQuery {
    InlineQuery {
        model: model.into(),
        explore: explore.into(),
        fields: generated_fields(explore),
        filters: BTreeMap::new(),
        sorts: vec![],
        query_timezone: None,
    }
}

/// The amount of generated row `i`: a JSON literal with exactly four decimals in
/// -9999.9999..=9999.9999 (every tenth row negative), e.g. `"1234.5678"`.
pub fn generated_amount(i: usize) -> String {
    let units = (i as u64).wrapping_mul(2_654_435_761).wrapping_add(12_345) % 100_000_000;
    let sign = if i % 10 == 9 { "-" } else { "" };
    format!("{sign}{}.{:04}", units / 10_000, units % 10_000)
}

/// Generated row `i` as `(field suffix, value)`: `row_id` = i (so all rows are distinct and
/// Looker-style grouping keeps them apart), a date in 2024, an account, a cost center, and
/// [`generated_amount`].
pub(crate) fn generated_values(i: usize) -> [SimValue; 5] {
    let day =
        NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default() + Duration::days((i % 366) as i64);
    [
        SimValue::Number(i.to_string()),
        SimValue::Text(day.format("%Y-%m-%d").to_string()),
        SimValue::Text(GENERATED_ACCOUNTS[i % GENERATED_ACCOUNTS.len()].to_string()),
        SimValue::Text(format!("{:03}", i % 40)),
        SimValue::Number(generated_amount(i)),
    ]
}

/// Builds a generated explore directly (no JSON round trip).
pub(crate) fn generated_explore(explore: &str, n_rows: usize) -> SimExplore {
    let fields = generated_fields(explore);
    let rows = (0..n_rows)
        .map(|i| {
            fields
                .iter()
                .cloned()
                .zip(generated_values(i))
                .collect::<StoredRow>()
        })
        .collect();
    SimExplore {
        dimensions: fields[..4].to_vec(),
        measures: fields[4..].to_vec(),
        rows,
    }
}

/// The most recent Sunday strictly before `today` (a week later if `today` is a Sunday).
pub fn previous_sunday(today: NaiveDate) -> NaiveDate {
    let back = match today.weekday().num_days_from_sunday() {
        0 => 7,
        n => n,
    };
    today - Duration::days(i64::from(back))
}

fn first_sunday_on_or_after(d: NaiveDate) -> NaiveDate {
    let ahead = (7 - d.weekday().num_days_from_sunday()) % 7;
    d + Duration::days(i64::from(ahead))
}

/// Deterministic amount in 100.0000..=9999.9999 with four decimals, as a JSON literal.
pub fn demo_amount(week: &str, channel: &str, cost_center: &str, fee_type: &str) -> String {
    let digest = Sha256::digest(format!("{week}|{channel}|{cost_center}|{fee_type}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    let units = 1_000_000 + u64::from_be_bytes(b) % 99_000_000;
    format!("{}.{:04}", units / 10_000, units % 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Weekday;

    #[test]
    fn sundays_and_amounts() {
        let wed = NaiveDate::from_ymd_opt(2025, 3, 12).unwrap();
        assert_eq!(
            previous_sunday(wed),
            NaiveDate::from_ymd_opt(2025, 3, 9).unwrap()
        );
        let sun = NaiveDate::from_ymd_opt(2025, 3, 9).unwrap();
        assert_eq!(
            previous_sunday(sun),
            NaiveDate::from_ymd_opt(2025, 3, 2).unwrap()
        );
        assert_eq!(first_sunday_on_or_after(sun), sun);
        assert_eq!(first_sunday_on_or_after(wed).weekday(), Weekday::Sun);
        let a = demo_amount("2025-03-09", "Amazon", "022", "Commission");
        assert_eq!(a, demo_amount("2025-03-09", "Amazon", "022", "Commission"));
        let d: rust_decimal::Decimal = a.parse().unwrap();
        assert!(
            d >= rust_decimal::Decimal::new(1_000_000, 4)
                && d <= rust_decimal::Decimal::new(99_999_999, 4)
        );
        assert_eq!(a.split('.').nth(1).map(str::len), Some(4));
    }

    #[test]
    fn generated_rows_are_distinct_and_exact() {
        let ex = generated_explore("g", 1000);
        assert_eq!(ex.rows.len(), 1000);
        assert_eq!(ex.dimensions[0], "g.row_id");
        assert_eq!(ex.measures, ["g.amount"]);
        assert_eq!(
            ex.rows[9]["g.amount"],
            SimValue::Number(generated_amount(9))
        );
        assert!(generated_amount(9).starts_with('-'));
        for i in [0, 1, 99_999, 123_456] {
            let a = generated_amount(i);
            assert_eq!(a.split('.').nth(1).map(str::len), Some(4), "{a}");
        }
        let seed = LookerSeed::empty().with_generated_explore("m", "g", 5);
        assert_eq!(seed.explores[0].generated_rows, Some(5));
    }

    #[test]
    fn demo_covers_the_weeks() {
        let today = NaiveDate::from_ymd_opt(2025, 3, 12).unwrap();
        let seed = LookerSeed::demo(today);
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&seed.explores[0].rows_json).unwrap();
        // 60 weeks back is Wed 2024-01-17 (first Sunday 01-21); 8 weeks ahead is Wed 2025-05-07.
        assert_eq!(rows.len() % 12, 0);
        assert_eq!(rows[0][DEMO_WEEK_END_DATE], "2024-01-21");
        assert_eq!(rows[rows.len() - 1][DEMO_WEEK_END_DATE], "2025-05-04");
        assert_eq!(
            seed.looks[0].query.filters[DEMO_WEEK_END_DATE],
            "2025-03-09"
        );
    }
}
