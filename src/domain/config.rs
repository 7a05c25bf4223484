//! Per-instance configuration (TOML): source, mapping, balancing, rounding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An inline Looker query (`POST /queries/run/json` body). `explore` is sent as Looker's `view`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineQuery {
    pub model: String,
    pub explore: String,
    pub fields: Vec<String>,
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    #[serde(default)]
    pub sorts: Vec<String>,
    /// Pins how Looker interprets dates (e.g. `UTC`).
    #[serde(default)]
    pub query_timezone: Option<String>,
}
