//! Lineage: a D365 line's reference (`{run_key}.L0007`, first in its Text) back to the run, the
//! Look/query and its filters, the source row(s) and the config version.

use std::fmt::Write;

use serde::Serialize;

use super::reconcile::rows_by_index;
use super::{ControlsError, TRIGGER_REVERSE};
use crate::domain::journal::LineKind;
use crate::domain::mapping::{parse_line_ref, part_key};
use crate::domain::run::{LineRecord, LineStatus, RunRecord, RunStatus, SourceRowRecord};
use crate::domain::source::SourceRef;
use crate::store::Store;

/// Where one journal line came from.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub reference: String,
    pub run: RunRecord,
    /// The Look/query as it ran (for an inline query: model, explore, fields, filters).
    pub source_definition: serde_json::Value,
    pub line: LineRecord,
    /// The rows this line was mapped from (detail lines).
    pub source_rows: Vec<SourceRowRecord>,
    /// For a balancing or rounding line: the rows of the detail lines of its voucher.
    pub voucher_rows: Vec<usize>,
    /// For a line of a reversal run: the trace of the line it reverses.
    pub reverses: Option<Box<Trace>>,
}

/// Resolves `reference` (e.g. `e809d1456a-161ac2.L0007`, or a whole D365 line Text starting
/// with it) through the audit store.
pub async fn trace(store: &dyn Store, reference: &str) -> Result<Trace, ControlsError> {
    trace_depth(store, reference, 0).await
}

async fn trace_depth(
    store: &dyn Store,
    reference: &str,
    depth: u8,
) -> Result<Trace, ControlsError> {
    let (key, n) = parse_line_ref(reference.trim()).ok_or_else(|| {
        ControlsError::Refused(format!(
            "`{reference}` is not a lineage reference (expected RUNKEY.L0001, as at the start of the D365 line Text)"
        ))
    })?;
    let found = store.find_line_by_ref(key, n).await?.ok_or_else(|| {
        ControlsError::Refused(format!(
            "no run with run key {key} and line {n} in this audit store (is it the store of the instance that posted it? try --table)"
        ))
    })?;
    let found_run = store
        .get_run(&found.run_id)
        .await?
        .ok_or_else(|| ControlsError::RunNotFound(found.run_id.clone()))?;
    let (run, line) = creator(store, found_run, found, key, n).await?;
    let source_definition = match &run.source {
        SourceRef::Query { definition, .. } => {
            let mut v = serde_json::to_value(&run.source).unwrap_or_default();
            if let (Some(obj), Ok(def)) = (
                v.as_object_mut(),
                serde_json::from_str::<serde_json::Value>(definition),
            ) {
                obj.insert("definition".into(), def);
            }
            v
        }
        other => serde_json::to_value(other).unwrap_or_default(),
    };
    let mut rows = rows_by_index(store.source_rows(&run.run_id).await?);
    let source_rows: Vec<SourceRowRecord> = line
        .line
        .source_rows
        .iter()
        .filter_map(|r| rows.remove(r))
        .collect();
    let voucher_rows = if line.line.kind == LineKind::Detail {
        vec![]
    } else {
        let mut v: Vec<usize> = store
            .lines(&run.run_id)
            .await?
            .iter()
            .filter(|l| l.legal_entity == line.legal_entity && l.line.voucher == line.line.voucher)
            .flat_map(|l| l.line.source_rows.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let reverses = if run.trigger == TRIGGER_REVERSE && depth == 0 {
        match line.line.text.split_once(" reversal of ") {
            Some((_, orig)) => Some(Box::new(
                Box::pin(trace_depth(store, orig, depth + 1)).await?,
            )),
            None => None,
        }
    } else {
        None
    };
    Ok(Trace {
        reference: format!("{key}.L{n:04}"),
        run,
        source_definition,
        line,
        source_rows,
        voucher_rows,
        reverses,
    })
}

/// The run that wrote the line into D365. Every run of the same data shares the run key (and so
/// the reference), and the store finds the latest one, which after a rerun is a run that wrote
/// nothing ("already posted"). The creator is the earliest run whose line D365 confirmed,
/// preferring runs that posted over runs that found it already there.
async fn creator(
    store: &dyn Store,
    found_run: RunRecord,
    found: LineRecord,
    key: &str,
    n: u32,
) -> Result<(RunRecord, LineRecord), ControlsError> {
    let mut runs: Vec<RunRecord> = store
        .runs_for_period(&found_run.instance, &found_run.keys.period_key)
        .await?
        .into_iter()
        .filter(|r| r.keys.run_key == key)
        .collect();
    runs.sort_by(|a, b| (a.started_at, &a.run_id).cmp(&(b.started_at, &b.run_id)));
    let mut best: Option<(u8, RunRecord, LineRecord)> = None;
    for r in runs {
        let Some(l) = store
            .lines(&r.run_id)
            .await?
            .into_iter()
            .find(|l| l.line.line_no == n && l.legal_entity == found.legal_entity)
        else {
            continue;
        };
        let rank = match (l.status, r.status) {
            (LineStatus::Created, s) if s != RunStatus::AlreadyPosted => 0,
            (LineStatus::Created, _) => 1,
            _ => 2,
        };
        if best.as_ref().is_none_or(|(b, _, _)| rank < *b) {
            best = Some((rank, r, l));
        }
    }
    Ok(match best {
        Some((rank, r, l)) if rank < 2 => (r, l),
        _ => (found_run, found),
    })
}

impl Trace {
    /// The trace as JSON, with each query definition as an object (the run record keeps it as
    /// canonical JSON text, which would otherwise appear as a string inside the JSON).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        fn parse_definitions(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(o) => {
                    if let Some(serde_json::Value::String(d)) = o.get("definition") {
                        if let Ok(parsed) = serde_json::from_str::<serde_json::Value>(d) {
                            o.insert("definition".into(), parsed);
                        }
                    }
                    o.values_mut().for_each(parse_definitions);
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(parse_definitions),
                _ => {}
            }
        }
        parse_definitions(&mut v);
        v
    }

    /// Human-readable lineage.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let r = &self.run;
        let l = &self.line;
        let _ = writeln!(s, "{}", self.reference);
        let _ = writeln!(
            s,
            "  run             {} ({}, trigger {}, status {})",
            r.run_id,
            r.instance,
            r.trigger,
            r.status.as_str()
        );
        let _ = writeln!(
            s,
            "  period          {} (run date {})",
            r.period, r.run_date
        );
        let _ = writeln!(s, "  config version  {}", r.config_version);
        let _ = writeln!(s, "  source          {}", r.source.identity());
        if let Some(def) = self.source_definition.get("definition") {
            for (k, v) in def.as_object().into_iter().flatten() {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    serde_json::Value::Object(o) => o
                        .iter()
                        .map(|(k, x)| {
                            format!(
                                "{k} = {}",
                                x.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| x.to_string())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    other => other.to_string(),
                };
                let _ = writeln!(s, "  query {k:<9} {v}");
            }
        }
        let _ = writeln!(
            s,
            "  journal line    {}/{} D365 line {} voucher {} ({:?}) {} {} debit {} credit {} {}",
            l.legal_entity,
            l.journal_batch.as_deref().unwrap_or("-"),
            l.d365_line_number.as_deref().unwrap_or("-"),
            l.line.voucher,
            l.line.kind,
            l.line.trans_date,
            l.account_display,
            l.line.debit(),
            l.line.credit(),
            l.line.currency
        );
        if l.part.is_split() {
            // A split journal: which header (and its Description key) holds the line.
            let _ = writeln!(
                s,
                "  journal part    {} (header Description key {})",
                l.part,
                part_key(&r.keys.run_key, l.part)
            );
        }
        let _ = writeln!(s, "  text            {}", l.line.text);
        if let Some(c) = &l.line.source_column {
            // One of several lines of its row (`[[lines]]`): the measure it carries.
            let _ = writeln!(s, "  amount column   {c}");
        }
        for row in &self.source_rows {
            let cells = row
                .cells
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                s,
                "  source row {:<4} hash {}  {}",
                row.row_index, row.row_hash, cells
            );
        }
        if !self.voucher_rows.is_empty() {
            let _ = writeln!(
                s,
                "  generated line of voucher {}; its detail lines came from source rows {:?}",
                l.line.voucher, self.voucher_rows
            );
        }
        if let Some(o) = &self.reverses {
            let _ = writeln!(s, "  reverses:");
            for line in o.render().lines() {
                let _ = writeln!(s, "    {line}");
            }
        }
        s
    }
}
