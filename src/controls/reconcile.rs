//! Reconciliation report of one run: what Looker said, what the connector mapped, the rounding
//! residue and where it went, what was planned for D365, and what D365 holds now (read back),
//! per legal entity × currency × voucher. Every difference is flagged, naming the line.
//!
//! Here: loading the inputs (audit store, D365) and recording the report. The comparison itself
//! is pure: [`crate::domain::reconcile`].

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;

use super::{record, ControlsError, EventLevel, KIND_RECONCILIATION};
use crate::domain::config::InstanceConfig;
use crate::domain::mapping::{description_prefix, header_of_run};
use crate::domain::reconcile::{compare, nothing_expected, reversal_of, JournalBack, ReconInputs};
use crate::domain::run::{LineRecord, RunRecord, SourceRowRecord};
use crate::ports::LedgerGateway;
use crate::store::Store;

pub use crate::domain::reconcile::{
    line_amounts, row_amount, Difference, DifferenceKind, GroupRecon, Reconciliation, VoucherRecon,
};

/// Reconciles run `run_id`: reads its journals back from D365 now, compares them with the
/// audited plan and source rows, records the report as an audit event of kind
/// [`KIND_RECONCILIATION`] and returns it. `config` supplies the amount rule and currency
/// precision (normally the version the run used; a different version is noted).
pub async fn reconcile(
    store: &dyn Store,
    ledger: &dyn LedgerGateway,
    config: &InstanceConfig,
    run_id: &str,
) -> Result<Reconciliation, ControlsError> {
    let inputs = load(store, ledger, config, run_id).await?;
    let r = compare(config, &inputs, Utc::now())?;
    let level = if r.is_clean() {
        EventLevel::Info
    } else {
        EventLevel::Warn
    };
    let json = serde_json::to_string(&r.for_storage()).unwrap_or_default();
    record(store, run_id, level, KIND_RECONCILIATION, json).await;
    if !r.is_clean() {
        tracing::warn!(
            run_id,
            instance = %r.instance,
            differences = r.differences.len(),
            "reconciliation found differences between the run and D365"
        );
    }
    Ok(r)
}

/// The last reconciliation stored with a run, if any.
pub async fn stored(
    store: &dyn Store,
    run_id: &str,
) -> Result<Option<Reconciliation>, ControlsError> {
    let events = store.events(run_id).await?;
    Ok(events
        .iter()
        .rev()
        .filter(|e| e.kind == KIND_RECONCILIATION)
        .find_map(|e| serde_json::from_str(&e.message).ok()))
}

/// Loads what a reconciliation compares: the run's audit (rows, lines, events) and its journals
/// as D365 holds them now.
async fn load(
    store: &dyn Store,
    ledger: &dyn LedgerGateway,
    config: &InstanceConfig,
    run_id: &str,
) -> Result<ReconInputs, ControlsError> {
    let run = store
        .get_run(run_id)
        .await?
        .ok_or_else(|| ControlsError::RunNotFound(run_id.to_string()))?;
    if run.instance != config.instance {
        return Err(ControlsError::Refused(format!(
            "run {run_id} belongs to instance `{}`, not `{}`",
            run.instance, config.instance
        )));
    }
    let lines = store.lines(run_id).await?;
    let events = store.events(run_id).await?;
    let rows = match reversal_of(&run, &events) {
        Some(orig) => store.source_rows(&orig).await?,
        None => store.source_rows(run_id).await?,
    };
    let journals = read_back(ledger, &run, &lines, nothing_expected(&run, &events)).await?;
    Ok(ReconInputs {
        run,
        lines,
        events,
        rows,
        journals,
    })
}

/// The run's journals as D365 holds them now, per entity.
async fn read_back(
    ledger: &dyn LedgerGateway,
    run: &RunRecord,
    lines: &[LineRecord],
    nothing_expected: bool,
) -> Result<Vec<JournalBack>, ControlsError> {
    let key = run.keys.run_key.as_str();
    let mut journals: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (le, b) in &run.journals {
        journals.entry(le.clone()).or_default().push(b.clone());
    }
    if !nothing_expected {
        let entities: BTreeSet<String> = lines.iter().map(|l| l.legal_entity.clone()).collect();
        for le in entities {
            // Fewer headers recorded than the run planned parts (it stopped right after creating
            // one, e.g. part 2 of a split journal): ask D365 for the headers carrying this run's
            // key. Not when all are recorded: a later run of the same data after a reversal
            // carries the same key, and its headers are not this run's.
            let planned = lines
                .iter()
                .filter(|l| l.legal_entity == le)
                .map(|l| l.part.of as usize)
                .max()
                .unwrap_or(1);
            if journals.get(&le).map_or(0, Vec::len) >= planned {
                continue;
            }
            let reversed = super::reversed_batches(ledger, &le, &run.keys.period_key).await?;
            let prefix = description_prefix(key);
            let found: Vec<String> = ledger
                .find_headers(&le, &prefix)
                .await?
                .into_iter()
                .filter(|h| header_of_run(&h.description, key).is_some())
                .filter(|h| !reversed.contains(&h.batch_number))
                .map(|h| h.batch_number)
                .collect();
            let known = journals.entry(le).or_default();
            for b in found {
                if !known.contains(&b) {
                    known.push(b);
                }
            }
        }
    }
    let mut out = Vec::new();
    for (le, batches) in journals {
        for batch in batches {
            let header = ledger.header(&le, &batch).await?;
            let lines = match &header {
                Some(_) => ledger.lines(&le, &batch).await?,
                None => Vec::new(),
            };
            out.push(JournalBack {
                legal_entity: le.clone(),
                batch,
                posted: header.map(|h| h.is_posted),
                lines,
            });
        }
    }
    Ok(out)
}

/// Source rows of a run by index (shared with trace).
pub(crate) fn rows_by_index(rows: Vec<SourceRowRecord>) -> BTreeMap<usize, SourceRowRecord> {
    rows.into_iter().map(|r| (r.row_index, r)).collect()
}
