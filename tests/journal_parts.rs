//! Large journals split across several journal headers (`journal.max_journal_lines`), each with
//! its own natural key, against the simulators over real sockets: every part balances, every row
//! is audited, a re-run posts nothing new, a crash between parts resumes without a second header
//! for any part, and `reverse` undoes every part once.
#![cfg(feature = "sandbox")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::World;
use ml_connector::controls::{reconcile, reverse, trace, ReverseOptions};
use ml_connector::domain::config::Posting;
use ml_connector::domain::journal::JournalPart;
use ml_connector::domain::mapping::{description_key, header_of_run, part_key};
use ml_connector::domain::run::{LineStatus, RowStatus, RunRecord, RunStatus};
use ml_connector::engine::{CrashPoint, Engine, EngineError, Mode, Outcome, Progress, RunReport};
use ml_connector::sandbox::d365::{CostModel, SimHeader, SimLine};
use ml_connector::store::Store;
use ml_connector::wiring::Clients;
use rust_decimal::Decimal;

/// A world whose Look returns `rows` rows, split at `max_journal_lines`.
async fn world(rows: usize, max_voucher_lines: usize, max_journal_lines: usize) -> World {
    let (mut w, _) = World::with_fee_rows_look(rows, "78", "Fees by row").await;
    w.config.journal.max_voucher_lines = max_voucher_lines;
    w.config.journal.max_journal_lines = max_journal_lines;
    w.config.check().expect("valid config");
    w
}

fn lines_of<'a>(lines: &'a [SimLine], batch: &str) -> Vec<&'a SimLine> {
    lines.iter().filter(|l| l.batch_number == batch).collect()
}

/// Checks what D365 holds for a completed split run: `parts` headers with their own keys, each
/// within the limit and balanced, no voucher across two headers, no duplicate line, every
/// planned line present.
async fn check_parts(w: &World, run: &RunRecord, parts: usize, max_journal_lines: usize) {
    let headers: Vec<SimHeader> = w.d365.headers();
    let lines = w.d365.lines();
    assert_eq!(headers.len(), parts, "one header per part, no duplicate");
    assert_eq!(run.journals.len(), parts, "{:?}", run.journals);
    let mut keys = BTreeSet::new();
    let mut voucher_batch: BTreeMap<String, String> = BTreeMap::new();
    for h in &headers {
        let part = header_of_run(&h.description, &run.keys.run_key).unwrap_or_else(|| {
            panic!(
                "header {} is not of the run: {}",
                h.batch_number, h.description
            )
        });
        assert_eq!(part.of as usize, parts);
        assert_eq!(
            description_key(&h.description),
            Some(part_key(&run.keys.run_key, part).as_str())
        );
        assert!(keys.insert(part.part), "part {} twice", part.part);
        assert!(run
            .journals
            .iter()
            .any(|(le, b)| le == "usmf" && *b == h.batch_number));
        let mine = lines_of(&lines, &h.batch_number);
        assert!(!mine.is_empty() && mine.len() <= max_journal_lines);
        let net: Decimal = mine.iter().map(|l| l.debit - l.credit).sum();
        assert!(net.is_zero(), "part {} nets {net}", part.part);
        for l in mine {
            if let Some(b) = voucher_batch.insert(l.voucher.clone(), h.batch_number.clone()) {
                assert_eq!(b, h.batch_number, "voucher {} spans two headers", l.voucher);
            }
        }
    }
    let refs: BTreeSet<&str> = lines
        .iter()
        .map(|l| l.text.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(refs.len(), lines.len(), "no duplicate lines");
    let audited = w.store.lines(&run.run_id).await.unwrap();
    assert_eq!(audited.len(), lines.len());
    assert!(audited.iter().all(|l| l.status == LineStatus::Created));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2500_row_journal_becomes_balanced_parts_and_a_rerun_posts_nothing() {
    let w = world(2500, 100, 1000).await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let run = report.run.clone();
    // 2,500 detail lines + a balancing line per voucher of up to 98 rows: 3 parts of ≤ 1,000.
    let parts = report.journals.len();
    assert_eq!(
        parts,
        3,
        "{:?}",
        report
            .journals
            .iter()
            .map(|j| j.lines.len())
            .collect::<Vec<_>>()
    );
    assert!(report.journals.iter().enumerate().all(|(i, j)| j.part
        == JournalPart {
            part: i as u32 + 1,
            of: 3
        }));
    check_parts(&w, &run, parts, 1000).await;

    // Every row audited, mapped to exactly one line.
    let rows = w.store.source_rows(&run.run_id).await.unwrap();
    assert_eq!(rows.len(), 2500);
    assert!(rows
        .iter()
        .all(|r| r.status == RowStatus::Mapped && r.line_nos.len() == 1));
    assert_eq!(
        run.totals.created_lines as usize,
        w.d365.lines().len(),
        "created totals count every part"
    );
    assert_eq!(run.totals.created_debit, run.totals.created_credit);

    // The reconciliation reads every part back.
    let clients = w.clients();
    let r = reconcile(&w.store, &clients.d365, &w.config, &run.run_id)
        .await
        .unwrap();
    assert!(r.is_clean(), "{:#?}", r.differences);
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].journals.len(), 3);
    assert_eq!(r.d365_debit, run.totals.created_debit);

    // A line of the last part traces back to its row.
    let last = w
        .d365
        .lines()
        .into_iter()
        .filter(|l| l.batch_number == run.journals[2].1)
        .find(|l| !l.account_display.starts_with("200150"))
        .unwrap();
    let t = trace(&w.store, &last.text).await.unwrap();
    assert_eq!(t.run.run_id, run.run_id);
    assert_eq!(t.source_rows.len(), 1);
    assert_eq!(t.line.part, JournalPart { part: 3, of: 3 });
    assert_eq!(
        t.line.journal_batch.as_deref(),
        Some(run.journals[2].1.as_str())
    );
    let text = t.render();
    assert!(
        text.contains(&format!(
            "journal part    part 3 of 3 (header Description key {}/P3of3)",
            run.keys.run_key
        )),
        "{text}"
    );

    // Same data again: every part is found, nothing new.
    let writes_before = w.d365.lines().len();
    let again = w.run(Mode::Post).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyPosted,
        "{:?}",
        again.run.message
    );
    assert_eq!(w.d365.headers().len(), 3);
    assert_eq!(w.d365.lines().len(), writes_before);
    assert_eq!(again.run.journals, run.journals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_line_path_splits_the_same_way() {
    let mut w = world(240, 10, 100).await;
    w.config.d365.posting = Posting::Lines;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let parts = report.journals.len();
    assert!(parts >= 3, "{parts} parts");
    check_parts(&w, &report.run, parts, 100).await;
    assert_eq!(w.d365.batch_request_count(), 0, "per-line path");
    let again = w.run(Mode::Post).await;
    assert_eq!(again.outcome, Outcome::AlreadyPosted);
    assert_eq!(w.d365.headers().len(), parts);
}

/// Crashes the engine (as a killed process would) the `nth` time it reaches `point`.
struct CrashNth {
    point: CrashPoint,
    nth: usize,
    seen: AtomicUsize,
}

impl Progress for CrashNth {
    fn crash_at(&self, point: CrashPoint) -> bool {
        point == self.point && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.nth
    }
}

/// Runs `w`'s instance until it reaches `point` for the `nth` time, where the process dies;
/// checks that it died there and returns the crashed run as the store holds it.
async fn run_until_crash(w: &World, clients: &Clients, point: CrashPoint, nth: usize) -> RunRecord {
    let crash = CrashNth {
        point,
        nth,
        seen: AtomicUsize::new(0),
    };
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &w.store,
        progress: &crash,
    };
    let err = engine
        .run(&w.config, &w.options(Mode::Post))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Crashed(p) if p == point),
        "{err}"
    );
    w.store
        .list_runs(None, 10)
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
}

/// Replays the crashed run `run_id` with the same clients, nothing crashing this time.
async fn replay(w: &World, clients: &Clients, run_id: &str) -> RunReport {
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &w.store,
        progress: &ml_connector::engine::NoProgress,
    };
    engine
        .replay(&w.config, run_id, chrono::Duration::minutes(5))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_parts_resumes_with_only_the_missing_lines() {
    let mut w = world(2500, 100, 1000).await;
    // One part at a time, so "between parts" is a moment (the concurrent case is below).
    w.config.d365.max_concurrent_requests = 1;
    let clients = w.clients();
    // Part 1 complete, part 2's header created (and recorded), then the process dies.
    let crashed = run_until_crash(&w, &clients, CrashPoint::HeaderCreated, 2).await;
    let headers = w.d365.headers();
    assert_eq!(headers.len(), 2);
    let part1 = w.d365.lines();
    assert!(!part1.is_empty());
    assert!(part1
        .iter()
        .all(|l| l.batch_number == headers[0].batch_number));
    assert_eq!(crashed.status, RunStatus::Posting);
    assert_eq!(crashed.journals.len(), 2);

    // Replay: part 1 found whole, part 2's header reused, only the missing lines written.
    let replayed = replay(&w, &clients, &crashed.run_id).await;
    assert_eq!(
        replayed.outcome,
        Outcome::Posted,
        "{:?}",
        replayed.run.message
    );
    check_parts(&w, &replayed.run, 3, 1000).await;
    let after = w.d365.lines();
    for l in &part1 {
        assert!(
            after
                .iter()
                .any(|a| a.line_number == l.line_number && a.batch_number == l.batch_number),
            "part 1 line kept as is"
        );
    }
    let found: usize = replayed.posted.iter().map(|p| p.lines_found).sum();
    let created: usize = replayed.posted.iter().map(|p| p.lines_created).sum();
    assert_eq!(found, part1.len(), "{:?}", replayed.posted);
    assert_eq!(found + created, after.len());
    assert!(!replayed.posted[1].header_created, "part 2's header reused");
    let r = reconcile(&w.store, &clients.d365, &w.config, &crashed.run_id)
        .await
        .unwrap();
    assert!(r.is_clean(), "{:#?}", r.differences);

    // A fresh run of the same data finds all three parts.
    let again = w.run(Mode::Post).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyPosted,
        "{:?}",
        again.run.message
    );
    assert_eq!(w.d365.headers().len(), 3);
    assert_eq!(w.d365.lines().len(), after.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_of_a_split_run_reverses_every_part_once() {
    let w = world(240, 10, 100).await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let run = report.run.clone();
    let parts = run.journals.len();
    assert!(parts >= 3);
    for (le, batch) in &run.journals {
        w.d365.post_journal(le, batch);
    }
    let original = w.d365.lines();
    let clients = w.clients();
    let opts = ReverseOptions::default();
    let rep = reverse(&w.store, &clients.d365, &w.config, &run.run_id, &opts)
        .await
        .unwrap();
    assert!(!rep.nothing_new);
    assert_eq!(rep.reversed.len(), parts, "{}", rep.message);
    let originals: BTreeSet<&str> = rep
        .reversed
        .iter()
        .map(|r| r.original_batch.as_str())
        .collect();
    assert_eq!(originals.len(), parts);
    for r in &rep.reversed {
        assert_eq!(r.debit, r.credit);
        assert_eq!(
            r.lines_created,
            original
                .iter()
                .filter(|l| l.batch_number == r.original_batch)
                .count()
        );
    }
    assert_eq!(w.d365.headers().len(), 2 * parts);
    // Everything nets to zero per account.
    let mut net: BTreeMap<String, Decimal> = BTreeMap::new();
    for l in w.d365.lines() {
        *net.entry(l.account_display.clone()).or_default() += l.debit - l.credit;
    }
    assert!(net.values().all(|n| n.is_zero()), "{net:?}");

    // Again: nothing new.
    let total = w.d365.lines().len();
    let again = reverse(&w.store, &clients.d365, &w.config, &run.run_id, &opts)
        .await
        .unwrap();
    assert!(again.nothing_new, "{}", again.message);
    assert_eq!(w.d365.headers().len(), 2 * parts);
    assert_eq!(w.d365.lines().len(), total);

    // The period is free again: the same data posts anew into fresh parts, no conflict with
    // the reversed ones.
    let repost = w.run(Mode::Post).await;
    assert_eq!(repost.outcome, Outcome::Posted, "{:?}", repost.run.message);
    assert_eq!(repost.run.journals.len(), parts);
    // Same run key as the reversed run: each reconciliation reads only its own headers.
    for id in [&repost.run.run_id, &run.run_id] {
        let r = reconcile(&w.store, &clients.d365, &w.config, id)
            .await
            .unwrap();
        assert!(r.is_clean(), "{id}: {:#?}", r.differences);
        assert_eq!(r.groups[0].journals.len(), parts);
    }
}

/// Arms "commit, then drop the connection" on the next single write (a header POST under
/// `$batch` posting) the first time a header was created: part 2's header lands in D365 but the
/// connector cannot know it.
struct DropSecondHeader<'a> {
    d365: &'a ml_connector::sandbox::d365::D365Sim,
    armed: AtomicUsize,
}

impl Progress for DropSecondHeader<'_> {
    fn crash_at(&self, point: CrashPoint) -> bool {
        if point == CrashPoint::HeaderCreated && self.armed.fetch_add(1, Ordering::SeqCst) == 0 {
            self.d365.fail_next_writes(1, 0, true);
        }
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_on_a_later_part_header_finds_that_part_not_another() {
    let mut w = world(2500, 100, 1000).await;
    // One part at a time, so the second header created is part 2's.
    w.config.d365.max_concurrent_requests = 1;
    let clients = w.clients();
    let progress = DropSecondHeader {
        d365: &w.d365,
        armed: AtomicUsize::new(0),
    };
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &w.store,
        progress: &progress,
    };
    let report = engine.run(&w.config, &w.options(Mode::Post)).await.unwrap();
    assert!(w.d365.pending_faults().is_empty(), "the fault fired");
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    check_parts(&w, &report.run, 3, 1000).await;
    // Part 2's header was found again by its own key, not taken from part 1.
    assert!(report.posted[1].header_created);
    assert_ne!(report.posted[0].batch_number, report.posted[1].batch_number);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_data_split_another_way_stops_with_nothing_written() {
    let mut w = world(2500, 100, 1000).await;
    let first = w.run(Mode::Post).await;
    assert_eq!(first.outcome, Outcome::Posted, "{:?}", first.run.message);
    let (headers, lines) = (w.d365.headers().len(), w.d365.lines().len());
    assert_eq!(headers, 3);
    // Same extract (same run key), but now two parts: the three headers are not found as this
    // attempt's parts, and must not be taken for other data either.
    w.config.journal.max_journal_lines = 2000;
    let second = w.run(Mode::Post).await;
    assert_eq!(
        second.outcome,
        Outcome::Conflict,
        "{:?}",
        second.run.message
    );
    let msg = second.run.message.unwrap_or_default();
    assert!(msg.contains("max_journal_lines"), "{msg}");
    assert_eq!(w.d365.headers().len(), headers);
    assert_eq!(w.d365.lines().len(), lines);
}

/// Parts are different journals, so they are written concurrently (up to
/// `d365.max_concurrent_requests`), while the writes to each journal stay sequential: against an
/// F&O that refuses overlapping writes to one journal, no write meets an update conflict, several
/// journals are written at the same moment, and the result is exactly the sequential one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_are_written_concurrently_without_overlapping_writes_to_one_journal() {
    let mut w = world(1200, 50, 300).await;
    w.config.d365.batch_operations = 50;
    w.config.d365.max_concurrent_requests = 4;
    w.config.check().expect("valid config");
    w.d365.set_cost_model(CostModel {
        request_overhead: std::time::Duration::from_millis(20),
        batch_line_cost: std::time::Duration::from_millis(1),
        line_cost: std::time::Duration::from_millis(1),
        serialise_journal_writes: true,
        ..CostModel::default()
    });
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let run = report.run.clone();
    let parts = report.journals.len();
    assert!(parts >= 4, "{parts} parts");
    check_parts(&w, &run, parts, 300).await;
    assert_eq!(
        w.d365.update_conflicts(),
        0,
        "no two writes to one journal overlapped"
    );
    assert!(
        w.d365.peak_journals_writing() >= 2,
        "journals were written concurrently (peak {})",
        w.d365.peak_journals_writing()
    );
    // The period's reversal journals are looked up once per legal entity, not once per part.
    let reversal_lookups = w
        .d365
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/data/LedgerJournalHeaders")
        .filter(|r| r.decoded_query().contains("MLC-R "))
        .count();
    assert_eq!(reversal_lookups, 1, "reversals read once for {parts} parts");

    // A re-run converges on the same journals and writes nothing.
    let again = w.run(Mode::Post).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyPosted,
        "{:?}",
        again.run.message
    );
    check_parts(&w, &run, parts, 300).await;
}

async fn crashed_id(w: &World) -> String {
    w.store.list_runs(None, 1).await.unwrap()[0].run_id.clone()
}

/// A crash while several parts are being written at once (the process dies with every part's
/// writes in flight): the next run finds each part by its own key and writes only what is
/// missing, so every part ends with each line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_with_parts_in_flight_resumes_with_only_the_missing_lines() {
    let mut w = world(2500, 100, 1000).await;
    w.config.d365.max_concurrent_requests = 4;
    w.config.d365.batch_operations = 100;
    // Server time, not CPU, sets the pace: a `$batch` of 100 lines takes 210 ms, so the
    // 526-line part ends its writes about 0.8 s before the two 1,000-line parts, however
    // loaded the machine is (with CPU-bound debug requests the three could end together).
    w.d365.set_cost_model(CostModel {
        request_overhead: std::time::Duration::from_millis(10),
        batch_line_cost: std::time::Duration::from_millis(2),
        serialise_journal_writes: true,
        ..CostModel::default()
    });
    let clients = w.clients();
    // The first part to finish its writes crashes the process; the others are mid-way (a
    // part's vouchers go in one write step of sequential `$batch` requests).
    let crashed = run_until_crash(&w, &clients, CrashPoint::LinesWritten, 1).await;
    let before = w.d365.lines().len();
    assert!(before > 0, "something was written before the crash");
    let planned = w.store.lines(&crashed_id(&w).await).await.unwrap().len();
    assert!(
        before < planned,
        "parts were in flight: {before} of {planned} lines written"
    );
    assert_eq!(crashed.status, RunStatus::Posting);
    let replayed = replay(&w, &clients, &crashed.run_id).await;
    assert_eq!(
        replayed.outcome,
        Outcome::Posted,
        "{:?}",
        replayed.run.message
    );
    check_parts(&w, &replayed.run, 3, 1000).await;
    let found: usize = replayed.posted.iter().map(|p| p.lines_found).sum();
    assert!(
        found >= before.min(1),
        "what was written before the crash was found, not rewritten"
    );
    assert_eq!(w.d365.update_conflicts(), 0);
}
