//! What a Looker extract looks like once it has been read: rows of typed cells.
//!
//! Numbers are kept as exact decimals from the JSON text itself (never via f64), so a measure
//! such as `0.30000000000000004` arrives exactly as Looker wrote it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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
    /// (e.g. `1e40`) are kept as text, as written, so mapping can reject them with a row error
    /// saying "out of range" (see `money::parse_amount_text`), never a panic or "not a number".
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

/// Column names of an extract, shared by all of its rows (one copy per extract instead of one
/// per cell), with a by-name index so `SourceRow::get` needs no per-row map.
#[derive(Debug, PartialEq, Eq)]
pub struct Columns {
    names: Vec<String>,
    /// Positions into `names`, ordered by name: binary search by name, and the name-ordered
    /// walk the row hash needs (so the hash does not depend on column order).
    by_name: Vec<usize>,
}

impl Columns {
    /// Shares `names` (in result order). A repeated name resolves to its first position.
    pub fn new(names: Vec<String>) -> Arc<Self> {
        let mut by_name: Vec<usize> = (0..names.len()).collect();
        by_name.sort_by(|&a, &b| names[a].cmp(&names[b]).then(a.cmp(&b)));
        by_name.dedup_by(|b, a| names[*a] == names[*b]);
        Arc::new(Self { names, by_name })
    }

    /// Names in result order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Position of `name`, so callers can resolve a column once per extract.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|&i| self.names[i].as_str().cmp(name))
            .ok()
            .map(|i| self.by_name[i])
    }
}

/// One row of a Looker result: cells by position in the extract's shared [`Columns`].
///
/// Compact on purpose: a 100,000-row extract must fit next to its journals in a Lambda's
/// memory, so a row holds no column names, only its cells (`None` = the field was absent
/// from this row, which differs from a JSON `null`).
#[derive(Debug, Clone)]
pub struct SourceRow {
    /// 0-based position in the result as Looker returned it.
    pub index: usize,
    columns: Arc<Columns>,
    cells: Box<[Option<Cell>]>,
}

impl SourceRow {
    /// Convenience for tests and the audit trail: a row from a name → cell map (its own
    /// column list; parsers share one list per extract with [`SourceRow::from_cells`]).
    pub fn new(index: usize, cells: BTreeMap<String, Cell>) -> Self {
        let (names, cells): (Vec<String>, Vec<Option<Cell>>) =
            cells.into_iter().map(|(k, v)| (k, Some(v))).unzip();
        Self::from_cells(index, Columns::new(names), cells)
    }

    /// A row whose `cells[i]` belongs to `columns.names()[i]`; missing trailing cells are
    /// absent, extra cells are dropped.
    pub fn from_cells(index: usize, columns: Arc<Columns>, mut cells: Vec<Option<Cell>>) -> Self {
        cells.resize(columns.len(), None);
        Self {
            index,
            columns,
            cells: cells.into_boxed_slice(),
        }
    }

    pub fn get(&self, column: &str) -> Option<&Cell> {
        self.get_at(self.columns.position(column)?)
    }

    /// The cell at a column position resolved once with [`Columns::position`].
    pub fn get_at(&self, position: usize) -> Option<&Cell> {
        self.cells.get(position)?.as_ref()
    }

    pub fn columns(&self) -> &Arc<Columns> {
        &self.columns
    }

    /// Present cells in column-name order (the order the former per-row map had).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Cell)> + '_ {
        self.columns.by_name.iter().filter_map(move |&i| {
            self.cells[i]
                .as_ref()
                .map(|c| (self.columns.names[i].as_str(), c))
        })
    }

    /// Names of the present cells, in name order.
    pub fn column_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// The row as a name → cell map (the audit record's shape).
    pub fn to_map(&self) -> BTreeMap<String, Cell> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// A stable content hash of the row (independent of its position and column order), used
    /// in the audit trail and to detect that a re-delivered extract is the same data.
    pub fn hash(&self) -> String {
        hex::encode(self.hash_bytes())
    }

    /// The first 16 bytes of SHA-256 over `name 0x00 cell-json 0xff` for each present cell in
    /// name order, where cell-json is the cell's tagged JSON (`{"t":"number","v":"10.5"}`).
    /// Those are the bytes earlier versions hashed through `serde_json`, written straight
    /// into the hasher instead: the same extract keeps the same run key across the upgrade.
    pub fn hash_bytes(&self) -> [u8; 16] {
        self.hash_bytes_with(&mut Vec::new())
    }

    /// [`Self::hash_bytes`] with a caller's scratch buffer: the row's bytes are gathered first
    /// and hashed in one call (many small `update` calls cost more than the hashing itself).
    pub fn hash_bytes_with(&self, buf: &mut Vec<u8>) -> [u8; 16] {
        buf.clear();
        for (k, v) in self.iter() {
            buf.extend_from_slice(k.as_bytes());
            buf.push(0);
            match v {
                Cell::Null => buf.extend_from_slice(br#"{"t":"null"}"#),
                Cell::Bool(b) => {
                    buf.extend_from_slice(br#"{"t":"bool","v":"#);
                    buf.extend_from_slice(if *b { b"true" } else { b"false" });
                    buf.push(b'}');
                }
                Cell::Text(s) => {
                    buf.extend_from_slice(br#"{"t":"text","v":""#);
                    push_json_string(buf, s);
                    buf.extend_from_slice(br#""}"#);
                }
                Cell::Number(d) => {
                    buf.extend_from_slice(br#"{"t":"number","v":""#);
                    // Writing to a Vec cannot fail. Display is the decimal's string form.
                    let _ = std::io::Write::write_fmt(buf, format_args!("{d}"));
                    buf.extend_from_slice(br#""}"#);
                }
            }
            buf.push(0xff);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&Sha256::digest(&buf[..])[..16]);
        out
    }
}

/// Builds rows that share one [`Columns`] while the parser learns the columns (first-seen
/// order), so no row ever holds its own copy of the field names.
#[derive(Debug, Default)]
pub struct RowsBuilder {
    columns: Vec<String>,
    rows: Vec<Vec<Option<Cell>>>,
    current: Vec<Option<Cell>>,
    /// Fields seen so far in the current row (the position hint for the next one).
    in_row: usize,
}

/// A field appeared twice in one row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duplicate field `{0}`")]
pub struct DuplicateField(pub String);

impl RowsBuilder {
    /// Starts from declared columns (e.g. `json_detail` field metadata); fields not declared
    /// are still kept, as extra columns.
    pub fn with_columns(columns: Vec<String>) -> Self {
        Self {
            columns,
            ..Self::default()
        }
    }

    /// Rows finished so far: the 0-based index of the row being read.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds one cell to the current row.
    pub fn push(&mut self, field: &str, cell: Cell) -> Result<(), DuplicateField> {
        // Rows almost always repeat the same field order: try the expected position first.
        let hint = self.in_row;
        let pos = if self.columns.get(hint).is_some_and(|c| c == field) {
            hint
        } else if let Some(p) = self.columns.iter().position(|c| c == field) {
            p
        } else {
            self.columns.push(field.to_string());
            self.columns.len() - 1
        };
        if self.current.len() <= pos {
            self.current.resize(pos + 1, None);
        }
        if self.current[pos].is_some() {
            return Err(DuplicateField(field.to_string()));
        }
        self.current[pos] = Some(cell);
        self.in_row = pos + 1;
        Ok(())
    }

    /// Ends the current row.
    pub fn finish_row(&mut self) {
        let width = self.columns.len().max(self.current.len());
        let mut cells = std::mem::replace(&mut self.current, Vec::with_capacity(width));
        cells.shrink_to_fit();
        self.rows.push(cells);
        self.in_row = 0;
    }

    /// The column names (first-seen order after any declared ones) and the rows.
    pub fn finish(self) -> (Vec<String>, Vec<SourceRow>) {
        let columns = Columns::new(self.columns.clone());
        let rows = self
            .rows
            .into_iter()
            .enumerate()
            .map(|(index, cells)| SourceRow::from_cells(index, Arc::clone(&columns), cells))
            .collect();
        (self.columns, rows)
    }
}

/// The inside of a JSON string literal for `s`, escaped exactly as `serde_json` does (`"`,
/// `\\`, the short escapes for b f n r t, `\u00xx` for other control characters; nothing else).
fn push_json_string(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                buf.extend_from_slice(&bytes[start..i]);
                buf.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(short);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// Rows compare by position and content, not by how their column lists are laid out.
impl PartialEq for SourceRow {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index && self.iter().eq(other.iter())
    }
}

impl Eq for SourceRow {}

/// The serialized shape stays `{index, cells: {name: cell}}`.
#[derive(Serialize, Deserialize)]
struct SourceRowRepr {
    index: usize,
    cells: BTreeMap<String, Cell>,
}

impl Serialize for SourceRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SourceRowRepr {
            index: self.index,
            cells: self.to_map(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SourceRow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let r = SourceRowRepr::deserialize(d)?;
        Ok(SourceRow::new(r.index, r.cells))
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
        let mut hex_buf = [0u8; 32];
        let mut scratch = Vec::with_capacity(512);
        for r in &self.rows {
            // Infallible: the buffer is exactly twice the 16 hashed bytes.
            let _ = hex::encode_to_slice(r.hash_bytes_with(&mut scratch), &mut hex_buf);
            h.update(hex_buf);
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

    #[test]
    fn shared_rows_hash_and_read_like_map_rows() {
        // The same content through the parser's builder, with the columns in another order.
        let mut b = RowsBuilder::default();
        b.push("a.y", Cell::Text("EUR".into())).unwrap();
        b.push("a.x", Cell::Number(Decimal::new(1050, 2))).unwrap();
        b.finish_row();
        b.push("a.x", Cell::Null).unwrap();
        b.finish_row();
        let (columns, rows) = b.finish();
        assert_eq!(columns, ["a.y", "a.x"]);
        let mut cells = BTreeMap::new();
        cells.insert("a.x".to_string(), Cell::Number(Decimal::new(1050, 2)));
        cells.insert("a.y".to_string(), Cell::Text("EUR".into()));
        let map_row = SourceRow::new(0, cells);
        assert_eq!(rows[0], map_row);
        assert_eq!(rows[0].hash(), map_row.hash());
        assert_eq!(rows[0].to_map(), map_row.to_map());
        // Absent is not null, and the second row lacks `a.y`.
        assert_eq!(rows[1].get("a.x"), Some(&Cell::Null));
        assert_eq!(rows[1].get("a.y"), None);
        assert_eq!(rows[1].get("a.z"), None);
        assert_ne!(rows[1].hash(), rows[0].hash());
        assert!(Arc::ptr_eq(rows[0].columns(), rows[1].columns()));
        // A field twice in one row is refused.
        let mut b = RowsBuilder::default();
        b.push("a.x", Cell::Null).unwrap();
        assert_eq!(b.push("a.x", Cell::Null), Err(DuplicateField("a.x".into())));
    }

    /// The hash earlier versions computed (serde_json per cell): run keys must not change.
    fn serde_json_hash(row: &SourceRow) -> String {
        let mut h = Sha256::new();
        for (k, v) in row.to_map() {
            h.update(k.as_bytes());
            h.update([0u8]);
            h.update(serde_json::to_vec(&v).unwrap());
            h.update([0xffu8]);
        }
        hex::encode(&h.finalize()[..16])
    }

    #[test]
    fn row_hash_is_the_earlier_serde_json_hash() {
        let texts = [
            "",
            "plain",
            "quote \" and backslash \\",
            "new\nline\r\ttab",
            "\u{0}\u{1}\u{8}\u{b}\u{c}\u{1f}\u{7f}",
            "ünïcödé € 😀 /slash",
        ];
        let numbers = [
            "0",
            "-0",
            "10.50",
            "-1234.5678",
            "0.30000000000000004",
            "1.5e2",
            "79228162514264337593543950335",
        ];
        let mut m = BTreeMap::new();
        for (i, t) in texts.iter().enumerate() {
            m.insert(format!("v.t{i}"), Cell::Text((*t).to_string()));
        }
        for (i, n) in numbers.iter().enumerate() {
            m.insert(format!("v.n{i}"), Cell::from_json_number_literal(n));
        }
        m.insert("v.null".into(), Cell::Null);
        m.insert("v.yes".into(), Cell::Bool(true));
        m.insert("v.no".into(), Cell::Bool(false));
        let row = SourceRow::new(0, m.clone());
        assert_eq!(row.hash(), serde_json_hash(&row));
        for (k, v) in m {
            let one = SourceRow::new(0, [(k, v)].into());
            assert_eq!(one.hash(), serde_json_hash(&one));
        }
    }

    #[test]
    fn row_hash_tells_cell_types_and_boundaries_apart() {
        let one = |c: Cell| {
            let mut m = BTreeMap::new();
            m.insert("a.x".to_string(), c);
            SourceRow::new(0, m).hash()
        };
        let hashes = [
            one(Cell::Number(Decimal::ONE)),
            one(Cell::Text("1".into())),
            one(Cell::Bool(true)),
            one(Cell::Text("true".into())),
            one(Cell::Null),
            one(Cell::Text(String::new())),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let two = |k1: &str, v1: &str, k2: &str, v2: &str| {
            let mut m = BTreeMap::new();
            m.insert(k1.to_string(), Cell::Text(v1.into()));
            m.insert(k2.to_string(), Cell::Text(v2.into()));
            SourceRow::new(0, m).hash()
        };
        assert_ne!(two("a", "bc", "d", "e"), two("a", "b", "cd", "e"));
        // Serialized shape is unchanged: `{index, cells: {name: cell}}`.
        let mut m = BTreeMap::new();
        m.insert("a.x".to_string(), Cell::Number(Decimal::new(105, 1)));
        let row = SourceRow::new(3, m);
        let json = serde_json::to_string(&row).unwrap();
        assert_eq!(
            json,
            r#"{"index":3,"cells":{"a.x":{"t":"number","v":"10.5"}}}"#
        );
        assert_eq!(serde_json::from_str::<SourceRow>(&json).unwrap(), row);
    }
}
