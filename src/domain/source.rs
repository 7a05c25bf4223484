//! What a Looker extract looks like once it has been read: rows of typed cells.
//!
//! Numbers are kept as exact decimals from the JSON text itself (never via f64), so a measure
//! such as `0.30000000000000004` arrives exactly as Looker wrote it.

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One value of a result row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", content = "v", rename_all = "snake_case")]
pub enum Cell {
    Null,
    Number(Decimal),
    Text(String),
    Bool(bool),
}

impl Cell {
    /// Parses a JSON number literal exactly. Literals that do not fit a 96-bit decimal
    /// (e.g. `1e40`) are kept as text so mapping can reject them with a row error.
    pub fn from_json_number_literal(literal: &str) -> Cell {
        let parsed = if literal.contains(['e', 'E']) {
            Decimal::from_scientific(literal)
        } else {
            literal.parse::<Decimal>()
        };
        match parsed {
            Ok(d) => Cell::Number(d.normalize()),
            Err(_) => Cell::Text(literal.to_string()),
        }
    }

    /// A short rendering for reports and templates (no quoting, `null` for nulls).
    pub fn display(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Number(d) => d.to_string(),
            Cell::Text(s) => s.clone(),
            Cell::Bool(b) => b.to_string(),
        }
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Null => f.write_str("null"),
            other => f.write_str(&other.display()),
        }
    }
}

/// One row of a Looker result, keyed by Looker field name (`view.field`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRow {
    /// 0-based position in the result as Looker returned it.
    pub index: usize,
    pub cells: BTreeMap<String, Cell>,
}

impl SourceRow {
    pub fn new(index: usize, cells: BTreeMap<String, Cell>) -> Self {
        Self { index, cells }
    }

    pub fn get(&self, column: &str) -> Option<&Cell> {
        self.cells.get(column)
    }

    /// A stable content hash of the row (independent of its position), used in the audit trail
    /// and to detect that a re-delivered extract is the same data.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for (k, v) in &self.cells {
            h.update(k.as_bytes());
            h.update([0u8]);
            // serde_json of Cell is deterministic (tagged enum, decimal as string).
            h.update(serde_json::to_vec(v).unwrap_or_default());
            h.update([0xffu8]);
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// Where an extract came from: what the audit trail and the run key name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceRef {
    /// A saved Look, run through the API.
    Look { look_id: String },
    /// An inline query (model + explore + fields + filters), run through the API.
    Query {
        model: String,
        explore: String,
        /// Looker's de-duplicated query id when known.
        query_id: Option<String>,
        /// Canonical JSON of the query definition, so the audit shows exactly what ran.
        definition: String,
    },
    /// Rows delivered by a Looker scheduled plan to the webhook.
    ScheduledPlan {
        scheduled_plan_id: Option<String>,
        query_id: Option<String>,
        look_url: Option<String>,
    },
}

impl SourceRef {
    /// A short identity used in natural keys and audit listings.
    pub fn identity(&self) -> String {
        match self {
            SourceRef::Look { look_id } => format!("look:{look_id}"),
            SourceRef::Query {
                model,
                explore,
                definition,
                ..
            } => {
                let mut h = Sha256::new();
                h.update(definition.as_bytes());
                format!(
                    "query:{model}/{explore}/{}",
                    hex::encode(&h.finalize()[..6])
                )
            }
            SourceRef::ScheduledPlan {
                scheduled_plan_id,
                query_id,
                ..
            } => format!(
                "plan:{}/q:{}",
                scheduled_plan_id.as_deref().unwrap_or("-"),
                query_id.as_deref().unwrap_or("-")
            ),
        }
    }
}

/// A complete extract: every row Looker returned, and the columns it declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extract {
    pub source: SourceRef,
    /// Column names in result order (from field metadata or the first row).
    pub columns: Vec<String>,
    pub rows: Vec<SourceRow>,
}

impl Extract {
    /// Hash over all row hashes in order: identifies the content of the extract.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        for r in &self.rows {
            h.update(r.hash().as_bytes());
        }
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_literals_are_exact() {
        assert_eq!(
            Cell::from_json_number_literal("0.30000000000000004"),
            Cell::Number("0.30000000000000004".parse().unwrap())
        );
        assert_eq!(
            Cell::from_json_number_literal("1.5e2"),
            Cell::Number(Decimal::from(150))
        );
        assert_eq!(
            Cell::from_json_number_literal("1e40"),
            Cell::Text("1e40".into())
        );
    }

    #[test]
    fn row_hash_depends_on_content_not_position() {
        let mut cells = BTreeMap::new();
        cells.insert("a.x".to_string(), Cell::Number(Decimal::new(1050, 2)));
        let r1 = SourceRow::new(0, cells.clone());
        let r2 = SourceRow::new(7, cells.clone());
        assert_eq!(r1.hash(), r2.hash());
        cells.insert("a.x".to_string(), Cell::Number(Decimal::new(1051, 2)));
        assert_ne!(r1.hash(), SourceRow::new(0, cells).hash());
    }
}
