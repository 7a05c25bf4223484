//! The whole pipeline (extract → map → validate → post → record) against the Looker and D365
//! simulators over real sockets, with the real clients and a real SQLite audit store.
#![cfg(feature = "sandbox")]

mod common;

use std::collections::BTreeMap;
use std::str::FromStr;

use async_trait::async_trait;
use common::{today, World};
use ml_connector::domain::reference::{PeriodStatus, ReferenceData};
use ml_connector::domain::run::{LineStatus, RowStatus, RunStatus};
use ml_connector::engine::{Engine, Mode, NoProgress, Outcome};
use ml_connector::ports::{LedgerError, LedgerGateway, LedgerHeader, LedgerLine, NewLedgerLine};
use ml_connector::sandbox::looker::seed::{
    demo_amount, DEMO_CHANNELS, DEMO_COST_CENTERS, DEMO_FEE_TYPES,
};
use ml_connector::sandbox::looker::LookerSeed;
use ml_connector::store::Store;
use rust_decimal::Decimal;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn round2(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// The journal the weekly-fee example must produce, computed independently from the
/// simulator's seed formula: account display → debit.
fn expected_detail_lines(week: &str) -> (BTreeMap<String, Decimal>, Decimal) {
    let mut lines = BTreeMap::new();
    let mut exact_total = Decimal::ZERO;
    for ch in DEMO_CHANNELS {
        for cc in DEMO_COST_CENTERS {
            for fee in DEMO_FEE_TYPES {
                let amt = d(&demo_amount(week, ch, cc, fee));
                exact_total += amt;
                let acct = if fee == "Commission" {
                    "618200"
                } else {
                    "618100"
                };
                let code = match ch {
                    "Amazon" => "AMZ",
                    "eBay" => "EBY",
                    _ => "SHP",
                };
                lines.insert(format!("{acct}--{cc}-{code}"), round2(amt));
            }
        }
    }
    (lines, exact_total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weekly_fee_example_posts_one_balanced_journal_and_a_rerun_posts_nothing() {
    let w = World::start().await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);

    let headers = w.d365.headers();
    assert_eq!(headers.len(), 1, "exactly one header");
    let h = &headers[0];
    assert_eq!(h.legal_entity, "usmf");
    assert_eq!(h.journal_name, "GenJrn");
    assert!(h
        .description
        .starts_with(&format!("MLC {}", report.run.keys.run_key)));
    assert!(!h.is_posted, "left unposted for finance");

    let lines = w.d365.lines();
    let week = w.period_end().format("%Y-%m-%d").to_string();
    let (expected, exact_total) = expected_detail_lines(&week);
    let mut seen = BTreeMap::new();
    for l in lines
        .iter()
        .filter(|l| l.account_display.starts_with("6181") || l.account_display.starts_with("6182"))
    {
        assert_eq!(l.credit, Decimal::ZERO);
        assert_eq!(l.trans_date, w.period_end());
        assert_eq!(l.currency, "USD");
        seen.insert(l.account_display.clone(), l.debit);
    }
    // Detail lines: right accounts, dimension segments in the active format, amounts to the cent
    // (the rounding residue may sit on the rounding account instead).
    assert_eq!(seen, expected);
    let balancing: Vec<_> = lines
        .iter()
        .filter(|l| l.account_display == "200150---")
        .collect();
    assert_eq!(balancing.len(), 1);
    assert_eq!(
        balancing[0].credit,
        round2(exact_total),
        "balancing line = Looker total, rounded"
    );
    let debit: Decimal = lines.iter().map(|l| l.debit).sum();
    let credit: Decimal = lines.iter().map(|l| l.credit).sum();
    assert_eq!(debit, credit, "debits = credits");
    // Every line carries its lineage reference.
    for l in &lines {
        assert!(
            l.text
                .starts_with(&format!("{}.L", report.run.keys.run_key)),
            "{}",
            l.text
        );
    }

    // Audit: every row mapped, every line created with its D365 line number.
    let rows = w.store.source_rows(&report.run.run_id).await.unwrap();
    assert_eq!(rows.len(), 12);
    assert!(rows
        .iter()
        .all(|r| r.status == RowStatus::Mapped && !r.line_nos.is_empty()));
    let audited = w.store.lines(&report.run.run_id).await.unwrap();
    assert_eq!(audited.len(), lines.len());
    assert!(audited
        .iter()
        .all(|l| l.status == LineStatus::Created && l.d365_line_number.is_some()));
    let run = w.store.get_run(&report.run.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.totals.source_total, exact_total);
    assert_eq!(run.totals.created_debit, debit);
    assert_eq!(run.totals.created_lines, lines.len() as u64);
    assert_eq!(
        run.journals,
        vec![("usmf".to_string(), h.batch_number.clone())]
    );

    // Same period again: nothing new.
    let again = w.run(Mode::Post).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyPosted,
        "{:?}",
        again.run.message
    );
    assert_eq!(again.outcome.exit_code(), 0);
    assert_eq!(w.d365.headers().len(), 1);
    assert_eq!(w.d365.lines().len(), lines.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_writes_nothing_and_shows_the_lines() {
    let w = World::start().await;
    let report = w.run(Mode::Preview).await;
    assert_eq!(report.outcome, Outcome::Previewed, "{:?}", report.issues);
    assert_eq!(report.journals.len(), 1);
    assert_eq!(report.journals[0].lines.len(), 14);
    assert!(w.d365.headers().is_empty());
    assert!(w.store.list_runs(None, 10).await.unwrap().is_empty());
}

async fn assert_rejected_nothing_written(
    w: &World,
    needle: &str,
) -> ml_connector::engine::RunReport {
    let report = w.run(Mode::Post).await;
    assert_eq!(
        report.outcome,
        Outcome::Rejected,
        "{:?}",
        report.run.message
    );
    assert_eq!(report.outcome.exit_code(), 2);
    let text: Vec<String> = report.issues.iter().map(|i| i.to_string()).collect();
    assert!(
        text.iter().any(|t| t.contains(needle)),
        "expected `{needle}` in {text:#?}"
    );
    assert!(w.d365.headers().is_empty(), "nothing may reach D365");
    assert!(w.d365.lines().is_empty());
    let run = w.store.get_run(&report.run.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Rejected);
    let events = w.store.events(&report.run.run_id).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.kind == "validation" && e.message.contains(needle)));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_main_account_is_rejected_with_the_row_named() {
    let mut w = World::start().await;
    let lookup = w.config.account.as_mut().unwrap().lookup.as_mut().unwrap();
    lookup.insert("Commission".into(), "618299".into());
    let report = assert_rejected_nothing_written(&w, "main account `618299` does not exist").await;
    // The audit names the source rows that carried it.
    let rows = w.store.source_rows(&report.run.run_id).await.unwrap();
    let bad: Vec<_> = rows
        .iter()
        .filter(|r| r.status == RowStatus::Rejected)
        .collect();
    assert_eq!(bad.len(), 6, "the six Commission rows");
    assert!(bad
        .iter()
        .all(|r| r.errors.iter().any(|e| e.contains("618299"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_dimension_value_is_rejected() {
    let w = World::start().await;
    w.d365
        .set_dimension_value_suspended("CostCenter", "031", true);
    assert_rejected_nothing_written(&w, "CostCenter value `031` is suspended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_period_is_rejected() {
    let w = World::start().await;
    w.d365
        .set_period_status("usmf", w.period_end(), PeriodStatus::Closed);
    assert_rejected_nothing_written(&w, "is closed for the general ledger").await;
}

fn small_explore_rows(week: &str, amounts: &[&str]) -> String {
    let rows: Vec<String> = amounts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            format!(
                r#"{{"marketplace_fees.week_end_date":"{week}","marketplace_fees.channel":"{}","marketplace_fees.cost_center":"022","marketplace_fees.fee_type":"Commission","marketplace_fees.total_amount":{a}}}"#,
                ["Amazon", "eBay", "Shopify"][i % 3]
            )
        })
        .collect();
    format!("[{}]", rows.join(","))
}

const DIMS: [&str; 4] = [
    "marketplace_fees.week_end_date",
    "marketplace_fees.channel",
    "marketplace_fees.cost_center",
    "marketplace_fees.fee_type",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_amount_is_rejected_naming_row_and_column() {
    let w = World::start_with(LookerSeed::empty()).await;
    let week = w.period_end().to_string();
    w.looker.add_explore(
        "finance",
        "marketplace_fees",
        &DIMS,
        &["marketplace_fees.total_amount"],
        &small_explore_rows(&week, &["null", "10.5", "3"]),
    );
    // Row 0 (Amazon) sorts first in any collation.
    assert_rejected_nothing_written(&w, "row 0, `marketplace_fees.total_amount`: amount is null")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_amounts_are_rejected_as_out_of_range_nothing_written_and_audited() {
    // Issue 10: two rows of 5e28 panicked the process (no audit record, lock left behind), 9e27
    // was posted as a 28-digit journal. Both are row errors now: rejected, exit 2, audited.
    let w = World::start_with(LookerSeed::empty()).await;
    let week = w.period_end().to_string();
    let add_rows = |amounts: &[&str]| {
        w.looker.add_explore(
            "finance",
            "marketplace_fees",
            &DIMS,
            &["marketplace_fees.total_amount"],
            &small_explore_rows(&week, amounts),
        )
    };
    add_rows(&["5e28", "5e28", "9e27"]);
    // Row 0 is Amazon in any collation.
    let report = assert_rejected_nothing_written(
        &w,
        "row 0, `marketplace_fees.total_amount`: amount `50000000000000000000000000000` is out of range: its absolute value exceeds amount.max_abs = 1000000000000",
    )
    .await;
    let text: Vec<String> = report.issues.iter().map(|i| i.to_string()).collect();
    assert_eq!(text.len(), 3, "{text:#?}");
    for (r, t) in text.iter().enumerate() {
        assert!(
            t.starts_with(&format!(
                "row {r}, `marketplace_fees.total_amount`: amount `"
            )),
            "{text:#?}"
        );
        assert!(t.contains("is out of range"), "{text:#?}");
    }
    assert!(
        text.iter()
            .any(|t| t.contains("`9000000000000000000000000000` is out of range")),
        "{text:#?}"
    );
    let rows = w.store.source_rows(&report.run.run_id).await.unwrap();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert_eq!(r.status, RowStatus::Rejected, "row {}", r.row_index);
        assert!(
            r.errors.iter().any(|e| e.contains("out of range")),
            "{:?}",
            r.errors
        );
    }
    // `show RUN_ID --config` reconciles the rejected run without tripping over the amounts.
    let clients = w.clients();
    let rec =
        ml_connector::controls::reconcile(&w.store, &clients.d365, &w.config, &report.run.run_id)
            .await
            .expect("reconciled");
    assert_eq!(rec.source_total, Decimal::ZERO);

    // Too large for a decimal at all: out of range as well, never "not a number".
    add_rows(&["1e400", "-1e29", "10.5"]);
    let report = assert_rejected_nothing_written(
        &w,
        "row 0, `marketplace_fees.total_amount`: amount `1e400` is out of range",
    )
    .await;
    let text: Vec<String> = report.issues.iter().map(|i| i.to_string()).collect();
    assert_eq!(text.len(), 2, "{text:#?}");
    // -1e29 is row 1 or 2, depending on how the collation orders eBay and Shopify.
    assert!(text[1].contains("`-1e29` is out of range"), "{text:#?}");
    assert!(
        text.iter().all(|t| !t.contains("not a number")),
        "{text:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_sum_that_overflows_is_a_row_error_not_a_crash() {
    // With `amount.max_abs` raised to the largest decimal, every 5e28 is in range, but their
    // sum is not: the rows that overflow the total are rejected, named; nothing is written.
    let mut w = World::start_with(LookerSeed::empty()).await;
    w.config.amount.max_abs = Decimal::MAX;
    let week = w.period_end().to_string();
    w.looker.add_explore(
        "finance",
        "marketplace_fees",
        &DIMS,
        &["marketplace_fees.total_amount"],
        &small_explore_rows(&week, &["5e28", "5e28", "5e28"]),
    );
    let report = assert_rejected_nothing_written(
        &w,
        "row 1, `marketplace_fees.total_amount`: amount `50000000000000000000000000000` cannot be added to the Looker total of the rows before it: amount overflow: a total is out of range",
    )
    .await;
    let text: Vec<String> = report.issues.iter().map(|i| i.to_string()).collect();
    assert_eq!(text.len(), 2, "{text:#?}");
    assert!(
        text[1].starts_with("row 2, `marketplace_fees.total_amount`"),
        "{text:#?}"
    );
    let rows = w.store.source_rows(&report.run.run_id).await.unwrap();
    let status: Vec<RowStatus> = rows.iter().map(|r| r.status).collect();
    assert_eq!(
        status,
        [RowStatus::Mapped, RowStatus::Rejected, RowStatus::Rejected]
    );
    assert!(
        rows[1].errors[0].contains("amount overflow"),
        "{:?}",
        rows[1].errors
    );
    let run = w.store.get_run(&report.run.run_id).await.unwrap().unwrap();
    assert_eq!(
        run.totals.source_total,
        Decimal::from_scientific("5e28").unwrap()
    );
    // The reconciliation totals the audited rows as mapping did: no panic, no difference.
    let clients = w.clients();
    let rec =
        ml_connector::controls::reconcile(&w.store, &clients.d365, &w.config, &report.run.run_id)
            .await
            .expect("reconciled");
    assert!(rec.differences.is_empty(), "{:#?}", rec.differences);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_extract_is_refused() {
    // Like real Looker, the simulator aggregates rows with equal dimension values, so the rows
    // here differ by channel: three distinct rows.
    let mut w = World::start_with(LookerSeed::empty()).await;
    w.config.looker.max_rows = 2;
    let week = w.period_end().to_string();
    w.looker.add_explore(
        "finance",
        "marketplace_fees",
        &DIMS,
        &["marketplace_fees.total_amount"],
        &small_explore_rows(&week, &["1.25", "2.25", "3.25"]),
    );
    let report = w.run(Mode::Post).await;
    assert_eq!(
        report.outcome,
        Outcome::Rejected,
        "{:?}",
        report.run.message
    );
    assert_eq!(report.outcome.exit_code(), 2);
    let msg = report.run.message.clone().unwrap();
    assert!(
        msg.contains("refused") && msg.contains("max_rows = 2"),
        "{msg}"
    );
    assert!(w.d365.headers().is_empty());
    let run = w.store.get_run(&report.run.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Rejected);
    // Exactly max_rows is complete (the connector asked for one more and got none).
    w.config.looker.max_rows = 3;
    assert_eq!(w.run(Mode::Post).await.outcome, Outcome::Posted);
    assert_eq!(w.d365.lines().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_looker_secret_fails_without_leaking_it() {
    let mut w = World::start().await;
    w.creds.looker_client_secret = ml_connector::secrets::Secret::new("not-the-secret-xyz");
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Failed);
    assert_eq!(report.outcome.exit_code(), 1);
    let msg = report.run.message.clone().unwrap();
    assert!(
        msg.contains("Looker") && msg.to_lowercase().contains("client"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret-xyz"));
    assert!(w.d365.headers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_entra_secret_fails_with_a_clear_message() {
    let mut w = World::start().await;
    w.creds.d365_client_secret = ml_connector::secrets::Secret::new("wrong-entra-secret-xyz");
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Failed);
    let msg = report.run.message.clone().unwrap();
    assert!(
        msg.contains("AADSTS7000215") && msg.contains("secret VALUE"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-entra-secret-xyz"));
    assert!(w.d365.headers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_data_for_a_posted_period_is_a_conflict() {
    let w = World::start_with(LookerSeed::empty()).await;
    let week = w.period_end().to_string();
    let add = |amounts: &[&str]| {
        w.looker.add_explore(
            "finance",
            "marketplace_fees",
            &DIMS,
            &["marketplace_fees.total_amount"],
            &small_explore_rows(&week, amounts),
        )
    };
    add(&["10.00", "20.00"]);
    let first = w.run(Mode::Post).await;
    assert_eq!(first.outcome, Outcome::Posted);
    add(&["10.00", "25.00"]);
    let second = w.run(Mode::Post).await;
    assert_eq!(second.outcome, Outcome::Conflict);
    let msg = second.run.message.clone().unwrap();
    assert!(
        msg.contains(&first.run.run_id) && msg.contains(&second.run.run_id),
        "{msg}"
    );
    assert!(
        msg.contains("30") && msg.contains("35"),
        "both totals named: {msg}"
    );
    assert_eq!(w.d365.headers().len(), 1);
    assert_eq!(w.d365.lines().len(), 3);

    // A fresh audit store (another machine) still sees the conflict, from D365 itself.
    let other = World {
        store: std::sync::Arc::new(
            ml_connector::store::sqlite::SqliteStore::open_in_memory().unwrap(),
        ),
        ..w
    };
    let third = other.run(Mode::Post).await;
    assert_eq!(third.outcome, Outcome::Conflict, "{:?}", third.run.message);
    assert_eq!(other.d365.lines().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_then_error_on_header_and_line_reconciles_without_duplicates() {
    let w = World::start().await;
    // D365 applies the next two writes (header, first line) but answers 500.
    w.d365.fail_next_writes(2, 500, true);
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    assert_eq!(w.d365.headers().len(), 1, "no duplicate header");
    let lines = w.d365.lines();
    assert_eq!(lines.len(), 14, "no duplicate line");
    let mut texts: Vec<_> = lines.iter().map(|l| l.text.clone()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_honoured() {
    let w = World::start().await;
    w.d365.throttle_next(2, Some(1));
    w.looker.throttle_next(1, Some(1));
    let started = std::time::Instant::now();
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "waited Retry-After"
    );
    assert_eq!(w.d365.lines().len(), 14);
}

/// A ledger that refuses every line after the first `ok_lines` (a fault D365 could raise that
/// validation cannot foresee), to leave a run half-posted.
struct FailAfter<'a> {
    inner: &'a dyn LedgerGateway,
    ok_lines: std::sync::atomic::AtomicUsize,
    /// Reading reference data (accounts, dimensions, periods) fails: nothing can be validated.
    reference_fails: bool,
}

#[async_trait]
impl LedgerGateway for FailAfter<'_> {
    // The refusal is injected per line (`create_line`): post line by line, as a D365 without
    // `$batch` would, so exactly `ok_lines` lines land before it (the reference-data outage
    // test never gets as far as posting).
    async fn create_vouchers(
        &self,
        _: &[Vec<NewLedgerLine>],
        _: usize,
    ) -> Result<Option<Vec<ml_connector::ports::VoucherOutcome>>, LedgerError> {
        Ok(None)
    }
    async fn reference(&self, le: &str) -> Result<ReferenceData, LedgerError> {
        if self.reference_fails {
            return Err(LedgerError::Other(
                "simulated outage while reading reference data".into(),
            ));
        }
        self.inner.reference(le).await
    }
    async fn find_headers(&self, le: &str, p: &str) -> Result<Vec<LedgerHeader>, LedgerError> {
        self.inner.find_headers(le, p).await
    }
    async fn create_header(&self, le: &str, j: &str, d: &str) -> Result<LedgerHeader, LedgerError> {
        self.inner.create_header(le, j, d).await
    }
    async fn lines(&self, le: &str, b: &str) -> Result<Vec<LedgerLine>, LedgerError> {
        self.inner.lines(le, b).await
    }
    async fn create_line(&self, l: &NewLedgerLine) -> Result<LedgerLine, LedgerError> {
        use std::sync::atomic::Ordering;
        if self.ok_lines.load(Ordering::SeqCst) == 0 {
            return Err(LedgerError::Rejected("simulated refusal".into()));
        }
        self.ok_lines.fetch_sub(1, Ordering::SeqCst);
        self.inner.create_line(l).await
    }
    // Reads and deletes are D365's own.
    async fn header(&self, le: &str, b: &str) -> Result<Option<LedgerHeader>, LedgerError> {
        self.inner.header(le, b).await
    }
    async fn delete_line(&self, le: &str, b: &str, n: &str) -> Result<bool, LedgerError> {
        self.inner.delete_line(le, b, n).await
    }
    async fn delete_lines_atomic(
        &self,
        le: &str,
        b: &str,
        n: &[String],
    ) -> Result<bool, LedgerError> {
        self.inner.delete_lines_atomic(le, b, n).await
    }
    async fn delete_header(&self, le: &str, b: &str) -> Result<bool, LedgerError> {
        self.inner.delete_header(le, b).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_failed_midway_is_replayed_posting_exactly_the_missing_lines() {
    let w = World::start().await;
    let clients = w.clients();
    let failing = FailAfter {
        inner: &clients.d365,
        ok_lines: std::sync::atomic::AtomicUsize::new(5),
        reference_fails: false,
    };
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &failing,
        store: &w.store,
        progress: &NoProgress,
    };
    let report = engine.run(&w.config, &w.options(Mode::Post)).await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed);
    let msg = report.run.message.clone().unwrap();
    assert!(msg.contains("line 6") && msg.contains("replay"), "{msg}");
    assert_eq!(w.d365.lines().len(), 5);
    let audited = w.store.lines(&report.run.run_id).await.unwrap();
    assert_eq!(
        audited
            .iter()
            .filter(|l| l.status == LineStatus::Created)
            .count(),
        5
    );
    assert_eq!(
        audited
            .iter()
            .filter(|l| l.status == LineStatus::Failed)
            .count(),
        1
    );

    // Replay with a healthy D365, from the audited lines (Looker is not asked again).
    w.looker.clear_request_log();
    let healthy = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &w.store,
        progress: &NoProgress,
    };
    let replayed = healthy
        .replay(&w.config, &report.run.run_id, chrono::Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(
        replayed.outcome,
        Outcome::Posted,
        "{:?}",
        replayed.run.message
    );
    assert_eq!(replayed.posted[0].lines_created, 9);
    assert_eq!(replayed.posted[0].lines_found, 5);
    assert!(
        w.looker.request_log().is_empty(),
        "replay does not re-extract"
    );
    assert_eq!(w.d365.headers().len(), 1);
    let lines = w.d365.lines();
    assert_eq!(lines.len(), 14);
    let debit: Decimal = lines.iter().map(|l| l.debit).sum();
    let credit: Decimal = lines.iter().map(|l| l.credit).sum();
    assert_eq!(debit, credit);
    let run = w.store.get_run(&report.run.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    assert!(w
        .store
        .lines(&report.run.run_id)
        .await
        .unwrap()
        .iter()
        .all(|l| l.status == LineStatus::Created));
    let _ = today();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_go_in_one_batch_per_request_and_per_line_mode_still_works() {
    let w = World::start().await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    assert_eq!(w.d365.lines().len(), 14);
    assert_eq!(w.d365.batch_request_count(), 1, "one voucher, one $batch");

    let mut w = World::start().await;
    w.config.d365.posting = ml_connector::domain::config::Posting::Lines;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    assert_eq!(w.d365.lines().len(), 14);
    assert_eq!(w.d365.batch_request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_committed_then_dropped_is_reconciled_not_resent() {
    let w = World::start().await;
    w.d365.fail_next_batches(1, 500, true);
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let lines = w.d365.lines();
    assert_eq!(lines.len(), 14, "exactly the planned lines, no duplicates");
    assert_eq!(
        w.d365.batch_request_count(),
        1,
        "the committed batch was not sent again"
    );
    let events = w.store.events(&report.run.run_id).await.unwrap();
    assert!(
        events.iter().any(|e| e.message.contains("reconciling")),
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_voucher_leaves_no_partial_voucher_and_replay_finishes() {
    let mut w = World::start().await;
    w.config.journal.voucher_by = ml_connector::domain::config::VoucherBy::Row;
    // Every row is its own voucher (detail + balancing line); refuse the ones for Shopify.
    w.d365.reject_changeset_containing("Shopify");
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Failed, "{:?}", report.run.message);
    let msg = report.run.message.clone().unwrap();
    assert!(msg.contains("replay run"), "{msg}");
    // Vouchers are whole or absent: every voucher present in D365 balances.
    let lines = w.d365.lines();
    let mut by_voucher: BTreeMap<String, Decimal> = BTreeMap::new();
    for l in &lines {
        *by_voucher.entry(l.voucher.clone()).or_default() += l.debit - l.credit;
    }
    assert!(by_voucher.values().all(|s| s.is_zero()), "{by_voucher:?}");
    assert!(lines.iter().all(|l| !l.text.contains("Shopify")));
    let posted_before = lines.len();
    assert!(posted_before > 0 && posted_before < 25);

    w.d365.clear_changeset_rejections();
    let clients = w.clients();
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &w.store,
        progress: &NoProgress,
    };
    let replayed = engine
        .replay(&w.config, &report.run.run_id, chrono::Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(
        replayed.outcome,
        Outcome::Posted,
        "{:?}",
        replayed.run.message
    );
    let lines = w.d365.lines();
    let planned = w.store.lines(&report.run.run_id).await.unwrap().len();
    assert_eq!(lines.len(), planned);
    let mut texts: Vec<_> = lines.iter().map(|l| l.text.clone()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), planned, "no duplicates after replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_refusing_the_batch_request_gets_lines_one_by_one() {
    let w = World::start().await;
    // The whole $batch request is refused (here: a 1-operation limit); nothing is applied, so
    // the connector posts line by line.
    w.d365.set_batch_max_operations(1);
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    assert_eq!(w.d365.lines().len(), 14);
    assert_eq!(
        w.d365.batch_request_count(),
        1,
        "one refused $batch, then single POSTs"
    );
}

/// A run that failed before validation (D365's reference data could not be read) has its lines
/// recorded but never checked: replaying it must refuse, not post unvalidated lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_failed_before_validation_is_not_replayed() {
    let w = World::start().await;
    let clients = w.clients();
    let outage = FailAfter {
        inner: &clients.d365,
        ok_lines: std::sync::atomic::AtomicUsize::new(usize::MAX),
        reference_fails: true,
    };
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &outage,
        store: &w.store,
        progress: &NoProgress,
    };
    let report = engine.run(&w.config, &w.options(Mode::Post)).await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed, "{:?}", report.run.message);
    let run_id = report.run.run_id.clone();
    let healthy = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &w.store,
        progress: &NoProgress,
    };
    let err = match healthy
        .replay(&w.config, &run_id, chrono::Duration::minutes(5))
        .await
    {
        Ok(r) => panic!("replay of an unvalidated run was accepted: {:?}", r.outcome),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("before its validation"), "{err}");
    assert!(w.d365.headers().is_empty() && w.d365.lines().is_empty());
    // A fresh run with D365 reachable validates and posts.
    let again = healthy
        .run(&w.config, &w.options(Mode::Post))
        .await
        .unwrap();
    assert_eq!(again.outcome, Outcome::Posted, "{:?}", again.run.message);
}

/// Issue 10: the key covers what is written. The same rows mapped to another account are a
/// conflict naming the line, with nothing written; `--supersede` replaces the unposted journal
/// in one safe sequence, leaving exactly one journal with the new lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_mapping_is_a_conflict_and_supersede_replaces_the_unposted_journal() {
    let mut w = World::start().await;
    let first = w.run(Mode::Post).await;
    assert_eq!(first.outcome, Outcome::Posted, "{:?}", first.run.message);
    let before_headers = w.d365.headers();
    let before_lines = w.d365.lines();
    assert!(before_lines
        .iter()
        .any(|l| l.account_display.starts_with("618200")));

    if let Some(l) = w.config.account.as_mut().unwrap().lookup.as_mut() {
        l.insert("Commission".into(), "618100".into());
    }
    let changed = w.run(Mode::Post).await;
    assert_eq!(
        changed.outcome,
        Outcome::Conflict,
        "{:?}",
        changed.run.message
    );
    assert_eq!(changed.outcome.exit_code(), 1);
    let msg = changed.run.message.clone().unwrap_or_default();
    assert!(msg.contains("account") && msg.contains("618200"), "{msg}");
    assert!(msg.contains("--supersede"), "{msg}");
    assert_eq!(
        w.d365.headers(),
        before_headers,
        "a conflict writes nothing"
    );
    assert_eq!(w.d365.lines(), before_lines, "a conflict writes nothing");

    let clients = w.clients();
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &w.store,
        progress: &NoProgress,
    };
    let mut opts = w.options(Mode::Post);
    opts.supersede = true;
    let replaced = engine.run(&w.config, &opts).await.expect("engine ran");
    assert_eq!(
        replaced.outcome,
        Outcome::Posted,
        "{:?}",
        replaced.run.message
    );
    let headers = w.d365.headers();
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert_ne!(headers[0].batch_number, before_headers[0].batch_number);
    let lines = w.d365.lines();
    assert_eq!(lines.len(), before_lines.len());
    assert!(lines
        .iter()
        .all(|l| !l.account_display.starts_with("618200")));
    // And the next run of the new mapping is "already posted".
    let again = w.run(Mode::Post).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyPosted,
        "{:?}",
        again.run.message
    );
}

const SIDE_BY_SIDE: &str = include_str!("../infra/config/weekly-fees-and-commissions.toml");

/// A Look with the fee and the commission side by side, per channel and cost center, posted
/// through one instance config (`[[lines]]`): one balanced journal, each measure on its own
/// account, every line traceable to its row and column; a rerun posts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_by_side_measures_post_as_one_balanced_journal() {
    use ml_connector::sandbox::d365::seed::SeedMainAccount;
    use ml_connector::sandbox::d365::D365Seed;

    let mut d365_seed = D365Seed::demo(today());
    for (id, name) in [
        ("600150", "Amazon fees"),
        ("600160", "eBay fees"),
        ("600165", "Shopify fees"),
        ("600170", "Channel commissions"),
    ] {
        d365_seed.main_accounts.push(SeedMainAccount {
            chart_of_accounts: "Shared".into(),
            id: id.into(),
            name: name.into(),
            account_type: "Expense".into(),
            suspended: false,
            do_not_allow_manual_entry: false,
            active_from: None,
            active_to: None,
        });
    }
    let w = World::start_seeded(LookerSeed::empty(), d365_seed, SIDE_BY_SIDE).await;
    let week = w.period_end().to_string();
    // (channel, cost center, fee, commission); eBay/031 has no commission this week.
    let data = [
        ("Amazon", "022", "1200.10", "144.01"),
        ("Amazon", "031", "310.00", "37.20"),
        ("eBay", "022", "95.55", "9.56"),
        ("eBay", "031", "20.00", "0"),
        ("Shopify", "022", "45.00", "4.50"),
        ("Shopify", "031", "12.34", "1.23"),
    ];
    let rows: Vec<String> = data
        .iter()
        .map(|(ch, cc, fee, com)| {
            format!(
                r#"{{"channel_costs.week_end_date":"{week}","channel_costs.channel":"{ch}","channel_costs.cost_center":"{cc}","channel_costs.fee_amount":{fee},"channel_costs.commission_amount":{com}}}"#
            )
        })
        .collect();
    w.looker.add_explore(
        "finance",
        "channel_costs",
        &[
            "channel_costs.week_end_date",
            "channel_costs.channel",
            "channel_costs.cost_center",
        ],
        &[
            "channel_costs.fee_amount",
            "channel_costs.commission_amount",
        ],
        &format!("[{}]", rows.join(",")),
    );

    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.issues);
    let headers = w.d365.headers();
    assert_eq!(headers.len(), 1, "one run, one journal");
    let lines = w.d365.lines();
    // Expected detail lines, computed from the data: account display → debit.
    let mut expected: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut total = Decimal::ZERO;
    for (ch, cc, fee, com) in data {
        let (acct, code) = match ch {
            "Amazon" => ("600150", "AMZ"),
            "eBay" => ("600160", "EBY"),
            _ => ("600165", "SHP"),
        };
        expected.insert(format!("{acct}--{cc}-{code}"), d(fee));
        if !d(com).is_zero() {
            expected.insert(format!("600170-010-{cc}-{code}"), d(com));
        }
        total += d(fee) + d(com);
    }
    let details: BTreeMap<String, Decimal> = lines
        .iter()
        .filter(|l| l.account_display.starts_with("6001"))
        .map(|l| (l.account_display.clone(), l.debit))
        .collect();
    assert_eq!(details, expected, "each measure on its mapped account");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.account_display.starts_with("6001"))
            .count(),
        11,
        "6 fees + 5 non-zero commissions, each once"
    );
    let balancing: Vec<_> = lines
        .iter()
        .filter(|l| l.account_display == "200150---")
        .collect();
    assert_eq!(balancing.len(), 1);
    assert_eq!(balancing[0].credit, total);
    let debit: Decimal = lines.iter().map(|l| l.debit).sum();
    let credit: Decimal = lines.iter().map(|l| l.credit).sum();
    assert_eq!(debit, credit, "the voucher balances");
    assert_eq!(lines.len(), 12);

    // Lineage: every detail line names its source row and amount column.
    let audited = w.store.lines(&report.run.run_id).await.unwrap();
    assert_eq!(audited.len(), 12);
    let src_rows = w.store.source_rows(&report.run.run_id).await.unwrap();
    for rec in audited.iter().filter(|r| r.line.source_rows.len() == 1) {
        let column = rec.line.source_column.as_deref().expect("a lineage column");
        let row = &src_rows[rec.line.source_rows[0]];
        let cell = row.cells.get(column).expect("the column is in the row");
        assert_eq!(
            cell.display().parse::<Decimal>().unwrap(),
            rec.line.amount,
            "{column} of row {}",
            row.row_index
        );
        assert_eq!(
            rec.line.kind,
            ml_connector::domain::journal::LineKind::Detail
        );
    }
    assert_eq!(
        audited
            .iter()
            .filter(|r| r.line.source_column.is_some())
            .count(),
        11
    );
    assert!(src_rows.iter().all(|r| r.status == RowStatus::Mapped));
    // Each row made a line per non-zero measure (Looker sorts the rows its own way).
    for r in &src_rows {
        let zero = r
            .cells
            .get("channel_costs.commission_amount")
            .map(|c| c.display())
            == Some("0".to_string());
        assert_eq!(r.line_nos.len(), if zero { 1 } else { 2 }, "{r:?}");
    }
    assert_eq!(src_rows.iter().map(|r| r.line_nos.len()).sum::<usize>(), 11);

    // The controller's tie-out reads each line's amount from its row and column.
    let clients = w.clients();
    let r = ml_connector::controls::reconcile::reconcile(
        &w.store,
        &clients.d365,
        &w.config,
        &report.run.run_id,
    )
    .await
    .unwrap();
    assert!(r.is_clean(), "{:#?}", r.differences);
    assert_eq!(r.source_total, total);
    assert_eq!(r.d365_debit, total);

    // The same week again: nothing new.
    let again = w.run(Mode::Post).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyPosted,
        "{:?}",
        again.run.message
    );
    assert_eq!(w.d365.lines().len(), 12);
}
