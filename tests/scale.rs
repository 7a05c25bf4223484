//! Scale: a 12,000-row Look becomes complete journals through Looker's async query-task path and
//! batched posting, split into several journal headers at `journal.max_journal_lines`; the same
//! Look through a path capped at 5,000 rows is refused, not posted.
#![cfg(feature = "sandbox")]

mod common;

use std::collections::BTreeMap;

use common::World;
use ml_connector::domain::config::ExtractMode;
use ml_connector::domain::mapping::header_of_run;
use ml_connector::domain::run::{LineStatus, RowStatus};
use ml_connector::engine::{Mode, Outcome};
use ml_connector::store::Store;
use rust_decimal::Decimal;

const ROWS: usize = 12_000;

async fn big_world() -> (World, Decimal) {
    let (mut w, total) = World::with_fee_rows_look(ROWS, "77", "Daily fee summary by SKU").await;
    w.config.looker.max_rows = 20_000;
    w.config.looker.extract = ExtractMode::Async;
    w.config.looker.poll_interval_secs = 1;
    (w, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_12000_row_look_becomes_complete_journals_every_row_accounted_for() {
    let (w, total) = big_world().await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);

    // Every source row is audited as mapped to exactly one line.
    let rows = w.store.source_rows(&report.run.run_id).await.unwrap();
    assert_eq!(rows.len(), ROWS);
    assert!(rows
        .iter()
        .all(|r| r.status == RowStatus::Mapped && r.line_nos.len() == 1));
    let audited = w.store.lines(&report.run.run_id).await.unwrap();
    assert!(audited.iter().all(|l| l.status == LineStatus::Created));

    // D365 holds exactly the planned lines; every voucher balances; detail lines sum to Looker's total.
    let lines = w.d365.lines();
    assert_eq!(lines.len(), audited.len());
    let mut vouchers: BTreeMap<String, (Decimal, usize)> = BTreeMap::new();
    let mut detail = Decimal::ZERO;
    for l in &lines {
        let e = vouchers.entry(l.voucher.clone()).or_default();
        e.0 += l.debit - l.credit;
        e.1 += 1;
        if !l.account_display.starts_with("200150") {
            detail += l.debit - l.credit;
        }
    }
    assert_eq!(detail, total);
    assert!(vouchers.values().all(|(sum, n)| sum.is_zero() && *n <= 100));
    let refs: std::collections::BTreeSet<_> = lines.iter().map(|l| l.text.clone()).collect();
    assert_eq!(refs.len(), lines.len(), "no duplicate lines");

    // Split at journal.max_journal_lines (default 2,000): several headers, each its own part
    // key, within the limit, balanced, and no voucher across two of them.
    let max = w.config.journal.max_journal_lines;
    let headers = w.d365.headers();
    let parts = lines.len().div_ceil(max);
    assert!(
        headers.len() >= parts && headers.len() <= parts + 1,
        "{} headers for {} lines",
        headers.len(),
        lines.len()
    );
    assert_eq!(report.run.journals.len(), headers.len());
    let mut seen = std::collections::BTreeSet::new();
    let mut voucher_batch: BTreeMap<&str, &str> = BTreeMap::new();
    for h in &headers {
        let part = header_of_run(&h.description, &report.run.keys.run_key)
            .unwrap_or_else(|| panic!("not of the run: {}", h.description));
        assert_eq!(part.of as usize, headers.len());
        assert!(seen.insert(part.part));
        let mine: Vec<_> = lines
            .iter()
            .filter(|l| l.batch_number == h.batch_number)
            .collect();
        assert!(
            mine.len() <= max,
            "{} lines in part {}",
            mine.len(),
            part.part
        );
        assert!(mine
            .iter()
            .map(|l| l.debit - l.credit)
            .sum::<Decimal>()
            .is_zero());
        for l in mine {
            let b = voucher_batch.entry(&l.voucher).or_insert(&h.batch_number);
            assert_eq!(*b, h.batch_number, "voucher {} in two headers", l.voucher);
        }
    }

    // Batched: far fewer requests than lines (≤ lines/100 + 10).
    let batches = w.d365.batch_request_count();
    assert!(
        batches <= lines.len() / 100 + 10,
        "{batches} $batch requests for {} lines",
        lines.len()
    );
    // The async path was used (the sync run endpoints were not).
    assert!(w
        .looker
        .request_log()
        .iter()
        .all(|r| !r.path.contains("/run/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_look_through_a_path_capped_at_5000_is_refused() {
    let (mut w, _) = big_world().await;
    w.config.looker.extract = ExtractMode::Sync;
    // Looker's run endpoints cap results at 5,000 rows (silently).
    w.looker.set_sync_row_cap(Some(5000));
    let report = w.run(Mode::Post).await;
    assert_eq!(
        report.outcome,
        Outcome::Rejected,
        "{:?}",
        report.run.message
    );
    assert!(report.run.message.unwrap().contains("refused"));
    assert!(w.d365.headers().is_empty(), "nothing posted");
}
