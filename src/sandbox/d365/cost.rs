//! How long F&O takes to answer, and what it refuses under load: a cost model for benches and
//! load tests. Off by default, so functional tests stay fast.
//!
//! Sources (nobody publishes a measured per-line cost, so the numbers are a model, not a
//! measurement; every part is a knob):
//! - The OData journal entities default and validate row by row; Microsoft steers high volume to
//!   the Data Management Framework ("Integration overview", learn.microsoft.com,
//!   fin-ops-core/dev-itpro/data-entities/integration-overview), whose OData examples move only
//!   thousands of records per hour. The model charges a per-request overhead (default 250 ms in
//!   [`CostModel::realistic`]) plus a per-line server time (default 80 ms, plausible range
//!   40–200 ms).
//! - A changeset is one transaction, and each line insert updates the journal header
//!   (optimistic concurrency on `LedgerJournalTable`): writes to one journal that overlap fail
//!   with "Cannot edit a record in Ledger journal table (LedgerJournalTable). An update conflict
//!   occurred…" and the changeset rolls back. The status code of that answer is not documented;
//!   the model answers 500 (an X++ exception), which a client must treat as "outcome unknown".
//! - Resource-based service protection answers 429 with `Retry-After` when the web servers are
//!   busy ("Service protection API limits", learn.microsoft.com, fin-ops-core/dev-itpro/
//!   data-entities/api-limits). The old per-user limits (6,000 requests per 5 minutes, 52
//!   concurrent) are gone since 10.0.36; the model uses a concurrency knee instead.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::Method;

use super::batch;
use super::fno;
use super::SimRequest;
use crate::d365::names::{self, header as h, line as l};

/// Server time and load limits of the simulated F&O environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CostModel {
    /// Server time of every F&O request before any record (routing, authorisation, entity
    /// set-up, the `$batch` envelope).
    pub request_overhead: Duration,
    /// Server time per record written by a single `POST`/`DELETE`.
    pub line_cost: Duration,
    /// Server time per record written inside a `$batch` changeset.
    pub batch_line_cost: Duration,
    /// Writes to one journal must not overlap: a write that arrives while another write to the
    /// same journal is in progress gets F&O's update-conflict error and nothing of it is saved.
    pub serialise_journal_writes: bool,
    /// Requests in flight above which F&O answers 429 with `Retry-After` (`None`: no knee).
    pub max_in_flight: Option<usize>,
    /// `Retry-After` (seconds) of a 429 at the knee.
    pub retry_after_secs: u64,
}

impl CostModel {
    /// The default model of BENCHMARKS.md: 250 ms per request, `line_ms` per line (single and in
    /// `$batch`), serialised writes per journal, 429 above 32 requests in flight (a tenant-sized
    /// guess; the real limit depends on the environment's resources).
    pub fn realistic(line_ms: u64) -> Self {
        Self {
            request_overhead: Duration::from_millis(250),
            line_cost: Duration::from_millis(line_ms),
            batch_line_cost: Duration::from_millis(line_ms),
            serialise_journal_writes: true,
            max_in_flight: Some(32),
            retry_after_secs: 1,
        }
    }

    /// Same model, every duration divided by `factor` (benches run the model in compressed
    /// time and scale the result back).
    pub fn scaled(self, factor: u32) -> Self {
        let f = factor.max(1);
        Self {
            request_overhead: self.request_overhead / f,
            line_cost: self.line_cost / f,
            batch_line_cost: self.batch_line_cost / f,
            ..self
        }
    }

    /// Server time of a request with this footprint.
    pub(super) fn service_time(&self, fp: &Footprint) -> Duration {
        let per = if fp.batch {
            self.batch_line_cost
        } else {
            self.line_cost
        };
        self.request_overhead + per * u32::try_from(fp.records).unwrap_or(u32::MAX)
    }
}

/// What one request writes: the journals it changes (company, batch number) and how many
/// records it writes. A new header belongs to no existing journal, so it conflicts with nothing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Footprint {
    pub journals: BTreeSet<(String, String)>,
    pub records: usize,
    pub batch: bool,
}

/// The footprint of a request, read from its URL and body without changing anything. A request
/// the simulator cannot read has an empty footprint (it will be refused by the handler anyway).
pub(super) fn footprint(env_url: &str, req: &SimRequest) -> Footprint {
    let mut fp = Footprint::default();
    if req.path == "/data/$batch" || req.path.eq_ignore_ascii_case("/data/%24batch") {
        fp.batch = true;
        for (method, target, body) in batch::operations(env_url, req) {
            add_write(&mut fp, &method, &target, &body);
        }
    } else if let Some(target) = req.path.strip_prefix("/data/") {
        add_write(&mut fp, req.method.as_str(), target, &req.body);
    }
    fp
}

/// Adds one operation on `target` (an entity set, or `Set(key)`, relative to `/data/`).
fn add_write(fp: &mut Footprint, method: &str, target: &str, body: &[u8]) {
    if method.eq_ignore_ascii_case(Method::POST.as_str()) {
        if target == h::SET {
            fp.records += 1;
        } else if target == l::SET {
            fp.records += 1;
            if let Some(j) = journal_of_body(body) {
                fp.journals.insert(j);
            }
        }
    } else if method.eq_ignore_ascii_case(Method::DELETE.as_str()) {
        let Some((set, rest)) = target.split_once('(') else {
            return;
        };
        if set != h::SET && set != l::SET {
            return;
        }
        fp.records += 1;
        let key = fno::percent_decode(rest.strip_suffix(')').unwrap_or(rest));
        if let Ok(pairs) = fno::parse_key(&key) {
            let get = |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.to_string())
            };
            if let (Some(c), Some(b)) = (get(names::DATA_AREA_ID), get(h::BATCH_NUMBER)) {
                fp.journals.insert((c.to_ascii_lowercase(), b));
            }
        }
    }
}

fn journal_of_body(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let company = v.get(names::DATA_AREA_ID)?.as_str()?.to_ascii_lowercase();
    let batch = v.get(l::BATCH_NUMBER)?.as_str()?.to_string();
    Some((company, batch))
}

/// [`super::LoggedRequest::note`] of an update conflict.
pub(super) const UPDATE_CONFLICT_NOTE: &str = "update conflict: overlapping writes to one journal";

/// F&O's answer to a write that overlapped another write to the same journal.
pub(super) fn update_conflict() -> super::SimResponse {
    fno::odata_error(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "An error has occurred.",
        Some((
            "Cannot edit a record in Ledger journal table (LedgerJournalTable). An update conflict occurred due to another user process deleting the record or changing one or more fields in the record.",
            "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException",
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_counts_overhead_and_records() {
        let m = CostModel::realistic(80);
        let fp = Footprint {
            journals: BTreeSet::new(),
            records: 10,
            batch: true,
        };
        assert_eq!(m.service_time(&fp), Duration::from_millis(250 + 800));
        assert_eq!(
            m.scaled(10).service_time(&fp),
            Duration::from_millis(25 + 80)
        );
        assert_eq!(CostModel::default().service_time(&fp), Duration::ZERO);
    }

    #[test]
    fn journal_of_a_line_body() {
        let body = br#"{"dataAreaId":"USMF","JournalBatchNumber":"00042","LineNumber":1}"#;
        assert_eq!(
            journal_of_body(body),
            Some(("usmf".to_string(), "00042".to_string()))
        );
        assert_eq!(journal_of_body(b"not json"), None);
    }
}
