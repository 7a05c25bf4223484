//! The simulator's data: explores with rows of exact values, and a tiny query engine that
//! behaves like Looker where the connector depends on it (field validation, filters, grouping,
//! sorts, row limits, `apply_formatting`).
//!
//! Numbers are kept as the JSON literal text they were given in and written back verbatim, so
//! a test can prove that the client never rounds through `f64`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::value::RawValue;

/// Looker's cap when a run request carries no `limit`.
pub const DEFAULT_ROW_CAP: usize = 5000;

/// One stored value. `Number` holds the JSON literal exactly as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum SimValue {
    Null,
    Number(String),
    Text(String),
    Bool(bool),
}

impl SimValue {
    fn from_raw(raw: &RawValue) -> Result<SimValue, String> {
        let t = raw.get().trim();
        match t.as_bytes().first() {
            Some(b'n') => Ok(SimValue::Null),
            Some(b't') => Ok(SimValue::Bool(true)),
            Some(b'f') => Ok(SimValue::Bool(false)),
            Some(b'"') => serde_json::from_str(t)
                .map(SimValue::Text)
                .map_err(|e| e.to_string()),
            Some(b'-' | b'0'..=b'9') => Ok(SimValue::Number(t.to_string())),
            _ => Err(format!("unsupported cell `{t}` (only scalars)")),
        }
    }

    fn decimal(&self) -> Option<Decimal> {
        match self {
            SimValue::Number(l) if l.contains(['e', 'E']) => Decimal::from_scientific(l).ok(),
            SimValue::Number(l) => l.parse().ok(),
            _ => None,
        }
    }

    /// The value as JSON text (numbers verbatim).
    pub(crate) fn json(&self) -> String {
        match self {
            SimValue::Null => "null".into(),
            SimValue::Number(l) => l.clone(),
            SimValue::Text(s) => json_str(s),
            SimValue::Bool(b) => b.to_string(),
        }
    }

    /// What `apply_formatting=true` shows for a measure: currency with separators.
    pub(crate) fn formatted(&self) -> SimValue {
        match self.decimal() {
            Some(d) => SimValue::Text(format_usd(d)),
            None => self.clone(),
        }
    }

    fn matches(&self, option: &str) -> bool {
        match self {
            SimValue::Null => option.eq_ignore_ascii_case("null"),
            SimValue::Text(s) => s == option,
            SimValue::Bool(b) => option == if *b { "Yes" } else { "No" } || option == b.to_string(),
            SimValue::Number(l) => match (self.decimal(), option.parse::<Decimal>().ok()) {
                (Some(a), Some(b)) => a == b,
                _ => l == option,
            },
        }
    }

    fn date(&self) -> Option<NaiveDate> {
        match self {
            SimValue::Text(s) => NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok(),
            _ => None,
        }
    }
}

fn cmp_values(a: &SimValue, b: &SimValue) -> Ordering {
    use SimValue::*;
    let rank = |v: &SimValue| match v {
        Null => 0,
        Bool(_) => 1,
        Number(_) => 2,
        Text(_) => 3,
    };
    match (a, b) {
        (Number(x), Number(y)) => match (a.decimal(), b.decimal()) {
            (Some(p), Some(q)) => p.cmp(&q),
            _ => x.cmp(y),
        },
        (Text(x), Text(y)) => x.cmp(y),
        (Bool(x), Bool(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

pub(crate) fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `$1,234.50` / `-$0.10`: Looker's `usd` value format.
pub(crate) fn format_usd(d: Decimal) -> String {
    let r = d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    let neg = r.is_sign_negative() && !r.is_zero();
    let s = format!("{:.2}", r.abs());
    let (int, frac) = s.split_once('.').unwrap_or((&s, "00"));
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("{}${grouped}.{frac}", if neg { "-" } else { "" })
}

/// A stored explore row: field → value.
pub(crate) type StoredRow = BTreeMap<String, SimValue>;

/// An explore: declared fields and its rows (field → value).
#[derive(Debug, Clone)]
pub(crate) struct SimExplore {
    pub(crate) dimensions: Vec<String>,
    pub(crate) measures: Vec<String>,
    pub(crate) rows: Vec<StoredRow>,
}

impl SimExplore {
    /// Builds an explore from a JSON array of row objects; fields missing from a row are null.
    pub(crate) fn new(
        dimensions: &[&str],
        measures: &[&str],
        rows_json: &str,
    ) -> Result<Self, String> {
        let raw: Vec<BTreeMap<String, Box<RawValue>>> = serde_json::from_str(rows_json)
            .map_err(|e| format!("rows_json is not an array of objects: {e}"))?;
        let mut rows = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let mut row = BTreeMap::new();
            for (k, v) in r {
                if !dimensions.contains(&k.as_str()) && !measures.contains(&k.as_str()) {
                    return Err(format!(
                        "row {i}: `{k}` is not a declared dimension or measure"
                    ));
                }
                row.insert(
                    k,
                    SimValue::from_raw(&v).map_err(|e| format!("row {i}: {e}"))?,
                );
            }
            rows.push(row);
        }
        Ok(Self {
            dimensions: dimensions.iter().map(|s| s.to_string()).collect(),
            measures: measures.iter().map(|s| s.to_string()).collect(),
            rows,
        })
    }

    fn is_measure(&self, f: &str) -> bool {
        self.measures.iter().any(|m| m == f)
    }

    fn knows(&self, f: &str) -> bool {
        self.is_measure(f) || self.dimensions.iter().any(|d| d == f)
    }

    /// Looker field type for metadata.
    pub(crate) fn field_type(&self, f: &str) -> &'static str {
        if self.is_measure(f) {
            "sum"
        } else if f.ends_with("_date") {
            "date_date"
        } else {
            "string"
        }
    }
}

/// A query as the run endpoints receive it.
#[derive(Debug, Clone, Default)]
pub(crate) struct QuerySpec {
    pub(crate) fields: Vec<String>,
    pub(crate) filters: BTreeMap<String, String>,
    pub(crate) sorts: Vec<String>,
    /// `None` → the 5,000-row default cap; negative → unlimited.
    pub(crate) limit: Option<i64>,
    pub(crate) apply_formatting: bool,
}

/// A ValidationError detail: `(field, code, message)`.
pub(crate) type Invalid = (String, String, String);

/// A result row: `(field, value)` in the query's field order.
pub(crate) type OutRow = Vec<(String, SimValue)>;

enum Filter {
    DateRange(NaiveDate, NaiveDate),
    AnyOf(Vec<String>),
}

fn parse_filter(expr: &str) -> Option<Filter> {
    let e = expr.trim();
    if e.is_empty() {
        return None;
    }
    if let Some((a, b)) = e.split_once(" to ") {
        if let (Ok(a), Ok(b)) = (
            NaiveDate::parse_from_str(a.trim(), "%Y-%m-%d"),
            NaiveDate::parse_from_str(b.trim(), "%Y-%m-%d"),
        ) {
            return Some(Filter::DateRange(a, b));
        }
    }
    Some(Filter::AnyOf(
        e.split(',').map(|s| s.trim().to_string()).collect(),
    ))
}

fn passes(v: &SimValue, f: &Filter) -> bool {
    match f {
        // Looker date ranges include the start and exclude the end.
        Filter::DateRange(a, b) => v.date().is_some_and(|d| *a <= d && d < *b),
        Filter::AnyOf(opts) => opts.iter().any(|o| v.matches(o)),
    }
}

/// `field`, `field desc`, `field asc`, and Looker's `field desc 0` form.
fn parse_sort(s: &str) -> (String, bool) {
    let mut parts = s.split_whitespace();
    let field = parts.next().unwrap_or("").to_string();
    let desc = parts.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
    (field, desc)
}

/// Checks that every field, filter and sort names a field of the explore (what Looker's
/// ValidationError reports).
pub(crate) fn validate_query(ex: &SimExplore, q: &QuerySpec) -> Result<(), Vec<Invalid>> {
    let mut errors = Vec::new();
    let unknown = |kind: &str, f: &str| {
        (
            kind.to_string(),
            "invalid".to_string(),
            format!(
                "Unknown field `{f}` in {kind}: it is not a dimension or measure of this explore"
            ),
        )
    };
    if q.fields.is_empty() {
        errors.push((
            "fields".into(),
            "missing".into(),
            "A query needs at least one field".into(),
        ));
    }
    for f in &q.fields {
        if !ex.knows(f) {
            errors.push(unknown("fields", f));
        }
    }
    for f in q.filters.keys() {
        if !ex.knows(f) {
            errors.push(unknown("filters", f));
        }
    }
    let sorts: Vec<(String, bool)> = q
        .sorts
        .iter()
        .map(|s| parse_sort(s))
        .filter(|(f, _)| f != "__UNSORTED__")
        .collect();
    for (f, _) in &sorts {
        if !ex.knows(f) {
            errors.push(unknown("sorts", f));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Runs `q` like Looker: filter dimensions, group by the selected dimensions summing measures,
/// filter measures, sort, limit. Unknown fields anywhere → validation errors naming them.
pub(crate) fn run_query(ex: &SimExplore, q: &QuerySpec) -> Result<Vec<OutRow>, Vec<Invalid>> {
    validate_query(ex, q)?;
    let sorts: Vec<(String, bool)> = q
        .sorts
        .iter()
        .map(|s| parse_sort(s))
        .filter(|(f, _)| f != "__UNSORTED__")
        .collect();

    let (measure_filters, dim_filters): (Vec<_>, Vec<_>) = q
        .filters
        .iter()
        .filter_map(|(f, e)| parse_filter(e).map(|p| (f.clone(), p)))
        .partition(|(f, _)| ex.is_measure(f));
    let null = SimValue::Null;
    let get = |row: &StoredRow, f: &str| row.get(f).cloned().unwrap_or(SimValue::Null);

    let dims: Vec<&String> = q.fields.iter().filter(|f| !ex.is_measure(f)).collect();
    let measures: Vec<&String> = q.fields.iter().filter(|f| ex.is_measure(f)).collect();
    // Group (first appearance order), keeping the member rows.
    // Keys compare number literals as text, like the SQL GROUP BY on the stored values.
    let mut groups: Vec<(Vec<&SimValue>, Vec<&StoredRow>)> = Vec::new();
    let mut index: HashMap<Vec<&SimValue>, usize> = HashMap::new();
    for row in &ex.rows {
        if !dim_filters
            .iter()
            .all(|(f, p)| passes(row.get(f).unwrap_or(&null), p))
        {
            continue;
        }
        let key: Vec<&SimValue> = dims
            .iter()
            .map(|d| row.get(d.as_str()).unwrap_or(&null))
            .collect();
        match index.get(&key) {
            Some(&i) => groups[i].1.push(row),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![row]));
            }
        }
    }
    let mut out: Vec<OutRow> = Vec::with_capacity(groups.len());
    for (key, members) in groups {
        // One member and no measure filter (every row distinct): the row as stored.
        if let ([only], true) = (members.as_slice(), measure_filters.is_empty()) {
            out.push(q.fields.iter().map(|f| (f.clone(), get(only, f))).collect());
            continue;
        }
        let mut vals: BTreeMap<&str, SimValue> = dims
            .iter()
            .map(|d| d.as_str())
            .zip(key.into_iter().cloned())
            .collect();
        for m in &measures {
            let v = if let [only] = members.as_slice() {
                get(only, m)
            } else {
                let nums: Vec<Decimal> =
                    members.iter().filter_map(|r| get(r, m).decimal()).collect();
                if nums.is_empty() {
                    SimValue::Null
                } else {
                    SimValue::Number(nums.into_iter().sum::<Decimal>().to_string())
                }
            };
            vals.insert(m.as_str(), v);
        }
        if !measure_filters
            .iter()
            .all(|(f, p)| passes(vals.get(f.as_str()).unwrap_or(&null), p))
        {
            continue;
        }
        out.push(
            q.fields
                .iter()
                .map(|f| {
                    (
                        f.clone(),
                        vals.get(f.as_str()).cloned().unwrap_or(SimValue::Null),
                    )
                })
                .collect(),
        );
    }
    if !sorts.is_empty() {
        out.sort_by(|a, b| {
            for (f, desc) in &sorts {
                let va = a
                    .iter()
                    .find(|(k, _)| k == f)
                    .map(|(_, v)| v)
                    .unwrap_or(&null);
                let vb = b
                    .iter()
                    .find(|(k, _)| k == f)
                    .map(|(_, v)| v)
                    .unwrap_or(&null);
                let o = cmp_values(va, vb);
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
    }
    let cap = match q.limit {
        None => Some(DEFAULT_ROW_CAP),
        Some(n) if n < 0 => None,
        Some(n) => Some(n as usize),
    };
    if let Some(cap) = cap {
        out.truncate(cap);
    }
    if q.apply_formatting {
        for row in &mut out {
            for (f, v) in row.iter_mut() {
                if ex.is_measure(f) {
                    *v = v.formatted();
                }
            }
        }
    }
    Ok(out)
}

/// `json` result text: an array of objects in field order, numbers verbatim.
pub(crate) fn render_json(rows: &[OutRow]) -> String {
    // Field names repeat on every row: quote each once.
    let mut names: HashMap<&str, String> = HashMap::new();
    let mut s = String::with_capacity(2 + rows.len() * 16 * rows.first().map_or(1, Vec::len));
    s.push('[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('{');
        for (j, (f, v)) in row.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            s.push_str(names.entry(f.as_str()).or_insert_with(|| json_str(f)));
            s.push(':');
            match v {
                SimValue::Number(l) => s.push_str(l),
                SimValue::Null => s.push_str("null"),
                SimValue::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
                SimValue::Text(t) => s.push_str(&json_str(t)),
            }
        }
        s.push('}');
    }
    s.push(']');
    s
}

/// `json_detail` result text (the subset of keys the real one has that clients read).
pub(crate) fn render_json_detail(
    ex: &SimExplore,
    q: &QuerySpec,
    rows: &[OutRow],
    model: &str,
    explore: &str,
) -> String {
    let field_meta = |f: &String| {
        let measure = ex.is_measure(f);
        format!(
            r#"{{"name":{},"label":{},"type":{},"measure":{measure},"is_numeric":{measure},"value_format":{},"view":{}}}"#,
            json_str(f),
            json_str(f),
            json_str(ex.field_type(f)),
            if measure { r#""$#,##0.00""# } else { "null" },
            json_str(f.split('.').next().unwrap_or(f)),
        )
    };
    let dims: Vec<String> = q
        .fields
        .iter()
        .filter(|f| !ex.is_measure(f))
        .map(field_meta)
        .collect();
    let meas: Vec<String> = q
        .fields
        .iter()
        .filter(|f| ex.is_measure(f))
        .map(field_meta)
        .collect();
    let data: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .map(|(f, v)| {
                    let rendered = if q.apply_formatting && ex.is_measure(f) {
                        format!(r#","rendered":{}"#, v.json())
                    } else {
                        String::new()
                    };
                    format!(
                        r#"{}:{{"value":{}{rendered},"links":[]}}"#,
                        json_str(f),
                        v.json()
                    )
                })
                .collect();
            format!("{{{}}}", cells.join(","))
        })
        .collect();
    format!(
        r#"{{"status":"complete","from_cache":false,"id":"sim","result_source":"query","runtime":"0.001","fields":{{"measures":[{}],"dimensions":[{}],"table_calculations":[],"pivots":[]}},"fill_fields":[],"has_totals":false,"has_row_totals":false,"explore":{{"name":{},"model":{}}},"timezone":"UTC","data":[{}]}}"#,
        meas.join(","),
        dims.join(","),
        json_str(explore),
        json_str(model),
        data.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explore() -> SimExplore {
        SimExplore::new(
            &["t.d", "t.c"],
            &["t.amt"],
            r#"[{"t.d":"2024-01-07","t.c":"A","t.amt":0.30000000000000004},
                {"t.d":"2024-01-14","t.c":"B","t.amt":1.10},
                {"t.d":"2024-01-14","t.c":"A","t.amt":2.20},
                {"t.d":"2024-01-21","t.c":"B","t.amt":null}]"#,
        )
        .unwrap()
    }

    fn q(fields: &[&str]) -> QuerySpec {
        QuerySpec {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn exact_literals_round_trip() {
        let rows = run_query(&explore(), &q(&["t.d", "t.c", "t.amt"])).unwrap();
        assert_eq!(
            render_json(&rows[..1]),
            r#"[{"t.d":"2024-01-07","t.c":"A","t.amt":0.30000000000000004}]"#
        );
    }

    #[test]
    fn groups_sums_filters_sorts() {
        let mut spec = q(&["t.d", "t.amt"]);
        spec.filters
            .insert("t.d".into(), "2024-01-07 to 2024-01-21".into());
        spec.sorts = vec!["t.d desc".into()];
        let rows = run_query(&explore(), &spec).unwrap();
        assert_eq!(
            render_json(&rows),
            r#"[{"t.d":"2024-01-14","t.amt":3.30},{"t.d":"2024-01-07","t.amt":0.30000000000000004}]"#
        );
        let mut spec = q(&["t.c", "t.d"]);
        spec.filters.insert("t.c".into(), "B, C".into());
        assert_eq!(run_query(&explore(), &spec).unwrap().len(), 2);
        let mut spec = q(&["t.c", "t.amt"]);
        assert_eq!(
            render_json(&run_query(&explore(), &spec).unwrap()),
            r#"[{"t.c":"A","t.amt":2.50000000000000004},{"t.c":"B","t.amt":1.10}]"#
        );
        spec.filters.insert("t.amt".into(), "1.1".into());
        assert_eq!(
            render_json(&run_query(&explore(), &spec).unwrap()),
            r#"[{"t.c":"B","t.amt":1.10}]"#
        );
    }

    #[test]
    fn unknown_fields_and_limits() {
        let mut spec = q(&["t.d", "t.nope"]);
        spec.sorts = vec!["t.zzz".into()];
        let errs = run_query(&explore(), &spec).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].2.contains("`t.nope`") && errs[1].0 == "sorts");
        let mut spec = q(&["t.d", "t.c"]);
        spec.limit = Some(2);
        assert_eq!(run_query(&explore(), &spec).unwrap().len(), 2);
        spec.limit = Some(-1);
        assert_eq!(run_query(&explore(), &spec).unwrap().len(), 4);
    }

    #[test]
    fn currency_formatting() {
        assert_eq!(format_usd("1234.5".parse().unwrap()), "$1,234.50");
        assert_eq!(format_usd("1234567.005".parse().unwrap()), "$1,234,567.01");
        assert_eq!(format_usd("-0.1".parse().unwrap()), "-$0.10");
        assert_eq!(format_usd("999".parse().unwrap()), "$999.00");
        let mut spec = q(&["t.c", "t.amt"]);
        spec.apply_formatting = true;
        spec.filters.insert("t.c".into(), "B".into());
        assert_eq!(
            render_json(&run_query(&explore(), &spec).unwrap()),
            r#"[{"t.c":"B","t.amt":"$1.10"}]"#
        );
    }
}
