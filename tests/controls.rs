//! Finance controls against the simulators over real sockets: reconciliation read back from
//! D365 (and tampering detected), reversal and deletion of unposted journals, lineage tracing
//! of every line, and a two-entity run.
#![cfg(feature = "sandbox")]

mod common;

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use common::World;
use ml_connector::controls::reconcile::{stored, DifferenceKind};
use ml_connector::controls::{
    blocks_period, reconcile, reverse, trace, ControlsError, ReverseOptions, KIND_DELETED_UNPOSTED,
    KIND_REVERSED,
};
use ml_connector::domain::config::InstanceConfig;
use ml_connector::domain::journal::LineKind;
use ml_connector::domain::mapping::parse_line_ref;
use ml_connector::domain::reference::PeriodStatus;
use ml_connector::domain::run::RunStatus;
use ml_connector::domain::source::{Cell, SourceRow};
use ml_connector::engine::{Mode, Outcome};
use ml_connector::sandbox::d365::SimLine;
use ml_connector::sandbox::looker::LookerSeed;
use ml_connector::store::Store;
use rust_decimal::Decimal;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn first_of_next_month(date: NaiveDate) -> NaiveDate {
    let (y, m) = if date.month() == 12 {
        (date.year() + 1, 1)
    } else {
        (date.year(), date.month() + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1).unwrap()
}

/// Net amount per (entity, account, offset) over `lines`.
fn net_by_account(lines: &[SimLine]) -> BTreeMap<(String, String, String), Decimal> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry((
            l.legal_entity.clone(),
            l.account_display.clone(),
            l.offset_display.clone(),
        ))
        .or_insert(Decimal::ZERO) += l.debit - l.credit;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_ties_out_and_flags_a_line_tampered_in_d365() {
    let w = World::start().await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let run = &report.run;
    let clients = w.clients();

    let r = reconcile(&w.store, &clients.d365, &w.config, &run.run_id)
        .await
        .unwrap();
    assert!(r.is_clean(), "{:#?}", r.differences);
    assert_eq!(r.groups.len(), 1);
    let g = &r.groups[0];
    assert_eq!(
        (g.legal_entity.as_str(), g.currency.as_str()),
        ("usmf", "USD")
    );
    assert_eq!(
        r.source_total, run.totals.source_total,
        "Looker total, exact"
    );
    assert_eq!(r.mapped_total, run.totals.mapped_total);
    assert_eq!(r.rounding_residue, run.totals.rounding_residue);
    assert_eq!(
        (r.d365_debit, r.d365_credit),
        (r.planned_debit, r.planned_credit)
    );
    assert_eq!(r.d365_debit, r.d365_credit);
    assert_eq!(g.d365_lines, w.d365.lines().len());
    // The example books residue to account 618900 on a rounding line; the report names it.
    if !g.rounding_residue.is_zero() {
        assert!(!g.residue_lines.is_empty());
        let rec = w.store.lines(&run.run_id).await.unwrap();
        for n in &g.residue_lines {
            let l = rec.iter().find(|l| l.line.line_no == *n).unwrap();
            assert_eq!(l.line.kind, LineKind::Rounding);
        }
    }
    assert!(r.render().contains("OK: D365 holds exactly"));

    // Someone edits line 3 of the unposted journal in D365.
    let sim_line = w
        .d365
        .lines()
        .into_iter()
        .find(|l| parse_line_ref(&l.text).map(|x| x.1) == Some(3))
        .unwrap();
    assert!(w.d365.tamper_line(
        "usmf",
        &sim_line.batch_number,
        sim_line.line_number,
        sim_line.debit + d("100.00"),
        sim_line.credit,
    ));
    let r = reconcile(&w.store, &clients.d365, &w.config, &run.run_id)
        .await
        .unwrap();
    assert!(!r.is_clean());
    let changed: Vec<_> = r
        .differences
        .iter()
        .filter(|x| x.kind == DifferenceKind::ChangedAmount)
        .collect();
    assert_eq!(changed.len(), 1, "{:#?}", r.differences);
    let reference = format!("{}.L0003", run.keys.run_key);
    assert_eq!(changed[0].reference.as_deref(), Some(reference.as_str()));
    assert!(
        changed[0].message.contains(&reference),
        "{}",
        changed[0].message
    );
    assert!(r
        .differences
        .iter()
        .any(|x| x.kind == DifferenceKind::UnbalancedVoucher));
    assert_eq!(r.d365_debit - r.planned_debit, d("100.00"));
    assert!(r.render().contains("DIFFERENCES"));

    // Stored with the run: the last reconciliation is the flagged one.
    let last = stored(&w.store, &run.run_id).await.unwrap().unwrap();
    assert_eq!(last.differences.len(), r.differences.len());
    let events = w.store.events(&run.run_id).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| e.kind == "reconciliation").count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_of_a_posted_run_nets_it_to_zero_in_the_next_open_period_once() {
    let w = World::start().await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let run = report.run.clone();
    let (le, batch) = run.journals[0].clone();
    w.d365.post_journal(&le, &batch);
    let original_lines = w.d365.lines();
    // The period right after the original's is closed: the reversal goes to the next open one.
    let next = first_of_next_month(w.period_end());
    w.d365.set_period_status("usmf", next, PeriodStatus::Closed);
    let expected_date = first_of_next_month(next);

    let clients = w.clients();
    let opts = ReverseOptions::default();
    let rep = reverse(&w.store, &clients.d365, &w.config, &run.run_id, &opts)
        .await
        .unwrap();
    assert!(!rep.nothing_new);
    assert_eq!(rep.reversed.len(), 1);
    let rv = &rep.reversed[0];
    assert_eq!(rv.original_batch, batch);
    assert_eq!(rv.reversal_date, expected_date);
    assert_eq!(rv.lines_created, original_lines.len());
    assert_eq!(rv.debit, rv.credit);

    let headers = w.d365.headers();
    assert_eq!(headers.len(), 2);
    let rh = headers
        .iter()
        .find(|h| h.batch_number == rv.reversal_batch)
        .unwrap();
    assert!(rh
        .description
        .starts_with(&format!("MLC-R {} {batch} ", run.keys.run_key)));
    assert!(!rh.is_posted, "reversal left unposted for finance");
    let all = w.d365.lines();
    let rev_lines: Vec<_> = all
        .iter()
        .filter(|l| l.batch_number == rv.reversal_batch)
        .cloned()
        .collect();
    assert_eq!(rev_lines.len(), original_lines.len());
    assert!(rev_lines.iter().all(|l| l.trans_date == expected_date));
    let rev_run = rep.reversal.clone().unwrap();
    for l in &rev_lines {
        let (k, n) = parse_line_ref(&l.text).unwrap();
        assert_eq!(k, rev_run.keys.run_key);
        assert!(
            l.text
                .contains(&format!("reversal of {}.L{n:04}", run.keys.run_key)),
            "{}",
            l.text
        );
    }
    // Nets to zero per account and dimension set (the display value holds both).
    let net = net_by_account(&all);
    assert!(net.values().all(|v| v.is_zero()), "{net:#?}");
    assert!(net_by_account(&original_lines)
        .values()
        .any(|v| !v.is_zero()));

    // Recorded as its own run, linked both ways.
    assert_eq!(rev_run.trigger, "reverse");
    assert_eq!(rev_run.status, RunStatus::Completed);
    assert_eq!(
        rev_run.journals,
        vec![(le.clone(), rv.reversal_batch.clone())]
    );
    let ev = w.store.events(&run.run_id).await.unwrap();
    assert!(ev
        .iter()
        .any(|e| e.kind == KIND_REVERSED && e.message.contains(&rev_run.run_id)));
    assert!(!blocks_period(&w.store, &run).await.unwrap());
    assert!(!blocks_period(&w.store, &rev_run).await.unwrap());
    // A reversal line traces to the reversal run and on to the original row.
    let t = trace(&w.store, &rev_lines[0].text).await.unwrap();
    assert_eq!(t.run.run_id, rev_run.run_id);
    let o = t.reverses.as_ref().expect("traces the original");
    assert_eq!(o.run.run_id, run.run_id);
    // Reconciling the reversal run ties out too: the original's Looker total, negated.
    let rr = reconcile(&w.store, &clients.d365, &w.config, &rev_run.run_id)
        .await
        .unwrap();
    assert!(rr.is_clean(), "{:#?}", rr.differences);
    assert_eq!(rr.source_total, -run.totals.source_total);
    assert_eq!(rr.rounding_residue, -run.totals.rounding_residue);
    assert_eq!(
        (rr.d365_debit, rr.d365_credit),
        (rr.planned_debit, rr.planned_credit)
    );

    // Second reverse: found, nothing new.
    let again = reverse(&w.store, &clients.d365, &w.config, &run.run_id, &opts)
        .await
        .unwrap();
    assert!(again.nothing_new, "{}", again.message);
    assert_eq!(again.reversal.unwrap().run_id, rev_run.run_id);
    assert_eq!(w.d365.headers().len(), 2);
    assert_eq!(w.d365.lines().len(), all.len());
    assert_eq!(
        w.store
            .events(&run.run_id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == KIND_REVERSED)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unposted_original_is_refused_then_deleted_on_request() {
    let w = World::start().await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted);
    let run = report.run.clone();
    let clients = w.clients();
    let before = w.d365.lines().len();

    let err = reverse(
        &w.store,
        &clients.d365,
        &w.config,
        &run.run_id,
        &ReverseOptions::default(),
    )
    .await
    .unwrap_err();
    match &err {
        ControlsError::Refused(m) => assert!(m.contains("--delete-unposted"), "{m}"),
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(w.d365.lines().len(), before);
    assert_eq!(w.d365.headers().len(), 1);
    assert!(blocks_period(&w.store, &run).await.unwrap());

    let opts = ReverseOptions {
        delete_unposted: true,
        ..ReverseOptions::default()
    };
    let rep = reverse(&w.store, &clients.d365, &w.config, &run.run_id, &opts)
        .await
        .unwrap();
    assert!(rep.reversal.is_none());
    assert_eq!(rep.deleted.len(), 1);
    assert_eq!(rep.deleted[0].lines_deleted, before);
    assert!(rep.deleted[0].header_deleted);
    assert!(w.d365.lines().is_empty());
    assert!(w.d365.headers().is_empty());
    let ev = w.store.events(&run.run_id).await.unwrap();
    assert!(ev.iter().any(|e| e.kind == KIND_DELETED_UNPOSTED));
    assert!(!blocks_period(&w.store, &run).await.unwrap());
    // The reconciliation says so instead of flagging a missing journal.
    let r = reconcile(&w.store, &clients.d365, &w.config, &run.run_id)
        .await
        .unwrap();
    assert!(r.is_clean(), "{:#?}", r.differences);
    assert!(r.notes.iter().any(|n| n.contains("deleted")));

    // The period is free again: the same data posts anew.
    let again = w.run(Mode::Post).await;
    assert_eq!(again.outcome, Outcome::Posted, "{:?}", again.run.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_the_demo_journal_traces_back_to_its_source_row() {
    let w = World::start().await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted);
    let run = &report.run;
    let lines = w.d365.lines();
    assert!(!lines.is_empty());
    let mut detail = 0;
    for l in &lines {
        let t = trace(&w.store, &l.text).await.unwrap();
        assert_eq!(t.run.run_id, run.run_id);
        assert_eq!(t.run.config_version, w.config.version());
        assert_eq!(t.line.account_display, l.account_display);
        assert_eq!(
            (t.line.line.debit(), t.line.line.credit()),
            (l.debit, l.credit)
        );
        assert_eq!(t.line.d365_line_number, Some(l.line_number.to_string()));
        assert_eq!(
            t.line.journal_batch.as_deref(),
            Some(l.batch_number.as_str())
        );
        let def = t.source_definition.to_string();
        assert!(def.contains("marketplace_fees.week_end_date"), "{def}");
        match t.line.line.kind {
            LineKind::Detail => {
                detail += 1;
                assert_eq!(t.source_rows.len(), 1, "{}", l.text);
                let row = &t.source_rows[0];
                let cell = |c: &str| row.cells.get(c).map(Cell::display).unwrap_or_default();
                // The row's cells are what the line says it is.
                assert!(
                    l.text.contains(&cell("marketplace_fees.fee_type")),
                    "{}",
                    l.text
                );
                assert!(
                    l.text.contains(&cell("marketplace_fees.channel")),
                    "{}",
                    l.text
                );
                assert!(
                    l.account_display
                        .contains(&format!("-{}-", cell("marketplace_fees.cost_center"))),
                    "{}",
                    l.account_display
                );
                let amount = d(&cell("marketplace_fees.total_amount"));
                let rounded = amount.round_dp_with_strategy(
                    2,
                    rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                );
                assert_eq!(l.debit - l.credit, rounded, "{}", l.text);
                assert!(row.line_nos.contains(&t.line.line.line_no));
                // The audited cells are the ones that were hashed when the row was extracted.
                let again = SourceRow::new(row.row_index, row.cells.clone()).hash();
                assert_eq!(row.row_hash, again);
            }
            _ => assert!(!t.voucher_rows.is_empty(), "{}", l.text),
        }
        assert!(t.render().contains(&t.reference));
    }
    assert_eq!(detail as u64, run.totals.source_rows);
    // Not a reference / unknown reference: clear refusals.
    assert!(trace(&w.store, "Manual entry").await.is_err());
    assert!(trace(&w.store, "0000000000-000000.L0001").await.is_err());
}

/// The example config with legal entity and currency per row.
fn two_entity_config(w: &World) -> InstanceConfig {
    let text = common::EXAMPLE
        .replace(
            r#"legal_entity = { constant = "usmf" }"#,
            r#"legal_entity = { column = "marketplace_fees.company", lookup = { "US" = "usmf", "DE" = "demf" } }"#,
        )
        .replace(
            r#"currency = { constant = "USD" }"#,
            r#"currency = { column = "marketplace_fees.currency" }"#,
        )
        .replace(
            "fields = [\n",
            "fields = [\n  \"marketplace_fees.company\",\n  \"marketplace_fees.currency\",\n",
        );
    let mut c = InstanceConfig::from_toml(&text).expect("two-entity config");
    assert!(c.journal.legal_entity.column.is_some());
    c.looker.base_url = w.config.looker.base_url.clone();
    c.d365 = w.config.d365.clone();
    c
}

fn two_entity_world_rows(w: &World) {
    let week = w.period_end().to_string();
    let rows: Vec<String> = [
        ("US", "USD", "Amazon", "Commission", "100.004"),
        ("US", "USD", "eBay", "Marketplace fee", "20.10"),
        ("DE", "EUR", "Amazon", "Commission", "55.555"),
        ("DE", "EUR", "Shopify", "Marketplace fee", "7.25"),
        ("DE", "EUR", "eBay", "Commission", "1.001"),
    ]
    .iter()
    .map(|(co, cur, ch, fee, a)| {
        format!(
            r#"{{"marketplace_fees.company":"{co}","marketplace_fees.currency":"{cur}","marketplace_fees.week_end_date":"{week}","marketplace_fees.channel":"{ch}","marketplace_fees.cost_center":"022","marketplace_fees.fee_type":"{fee}","marketplace_fees.total_amount":{a}}}"#
        )
    })
    .collect();
    w.looker.add_explore(
        "finance",
        "marketplace_fees",
        &[
            "marketplace_fees.company",
            "marketplace_fees.currency",
            "marketplace_fees.week_end_date",
            "marketplace_fees.channel",
            "marketplace_fees.cost_center",
            "marketplace_fees.fee_type",
        ],
        &["marketplace_fees.total_amount"],
        &format!("[{}]", rows.join(",")),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_entity_run_creates_two_balanced_journals_each_in_its_currency() {
    let mut w = World::start_with(LookerSeed::empty()).await;
    two_entity_world_rows(&w);
    w.config = two_entity_config(&w);
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let headers = w.d365.headers();
    assert_eq!(headers.len(), 2, "{headers:#?}");
    let lines = w.d365.lines();
    for (le, cur) in [("usmf", "USD"), ("demf", "EUR")] {
        let h = headers.iter().find(|h| h.legal_entity == le).unwrap();
        let ls: Vec<_> = lines
            .iter()
            .filter(|l| l.legal_entity == le && l.batch_number == h.batch_number)
            .collect();
        assert!(!ls.is_empty());
        assert!(ls.iter().all(|l| l.currency == cur), "{le}: {ls:#?}");
        let debit: Decimal = ls.iter().map(|l| l.debit).sum();
        let credit: Decimal = ls.iter().map(|l| l.credit).sum();
        assert_eq!(debit, credit, "{le} balanced");
    }
    let clients = w.clients();
    let r = reconcile(&w.store, &clients.d365, &w.config, &report.run.run_id)
        .await
        .unwrap();
    assert!(r.is_clean(), "{:#?}", r.differences);
    let groups: Vec<_> = r
        .groups
        .iter()
        .map(|g| (g.legal_entity.as_str(), g.currency.as_str(), g.source_total))
        .collect();
    assert_eq!(
        groups,
        vec![("demf", "EUR", d("63.806")), ("usmf", "USD", d("120.104"))]
    );

    // Each entity is validated against its own periods: closing the period only in demf
    // rejects the whole run, naming demf, and nothing is written in either entity.
    let mut w2 = World::start_with(LookerSeed::empty()).await;
    two_entity_world_rows(&w2);
    w2.config = two_entity_config(&w2);
    w2.d365
        .set_period_status("demf", w2.period_end(), PeriodStatus::Closed);
    let rejected = w2.run(Mode::Post).await;
    assert_eq!(rejected.outcome, Outcome::Rejected);
    assert!(!rejected.issues.is_empty());
    assert!(
        rejected
            .issues
            .iter()
            .all(|i| i.legal_entity.as_deref() == Some("demf")),
        "{:#?}",
        rejected.issues
    );
    assert!(w2.d365.headers().is_empty());
}

const BIN: &str = env!("CARGO_BIN_EXE_ml-connector");

async fn cli(args: Vec<String>) -> (Option<i32>, String, String) {
    use ml_connector::sandbox::d365::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
    use ml_connector::sandbox::looker::{SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET};
    tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new(BIN);
        c.args(&args).env_remove("RUST_LOG").env_remove("MLC_STORE");
        for k in [
            "MLC_LOOKER_URL",
            "MLC_D365_URL",
            "MLC_ENTRA_AUTHORITY",
            "MLC_TABLE",
        ] {
            c.env_remove(k);
        }
        c.env("MLC_LOOKER_CLIENT_ID", SANDBOX_LOOKER_CLIENT_ID)
            .env("MLC_LOOKER_CLIENT_SECRET", SANDBOX_LOOKER_CLIENT_SECRET)
            .env("MLC_D365_TENANT_ID", SANDBOX_TENANT)
            .env("MLC_D365_CLIENT_ID", SANDBOX_CLIENT_ID)
            .env("MLC_D365_CLIENT_SECRET", SANDBOX_CLIENT_SECRET);
        let o = c.output().expect("run ml-connector");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_show_reconciles_trace_resolves_and_reverse_refuses_then_reverses() {
    let w = World::start().await;
    let report = w.run(Mode::Post).await;
    assert_eq!(report.outcome, Outcome::Posted);
    let run_id = report.run.run_id.clone();
    let cfg = w.dir.path().join("instance.toml");
    std::fs::write(
        &cfg,
        common::EXAMPLE
            .replace("https://acme.cloud.looker.com", &w.looker.base_url())
            .replace(
                "https://contoso.operations.dynamics.com",
                &w.d365.environment_url(),
            )
            .replace("https://login.microsoftonline.com", &w.d365.authority_url()),
    )
    .unwrap();
    let store = w.dir.path().join("audit.sqlite");
    let (s, c) = (
        store.to_str().unwrap().to_string(),
        cfg.to_str().unwrap().to_string(),
    );
    let a = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let (code, out, err) = cli(a(&["show", &run_id, "--store", &s])).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Reconciliation: none stored yet"), "{out}");

    let (code, out, err) = cli(a(&["show", &run_id, "--config", &c, "--store", &s])).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("OK: D365 holds exactly"), "{out}");

    let l = w.d365.lines()[0].clone();
    w.d365.tamper_line(
        "usmf",
        &l.batch_number,
        l.line_number,
        l.debit,
        l.credit + d("1"),
    );
    let (code, out, err) = cli(a(&[
        "show", &run_id, "--config", &c, "--store", &s, "--json",
    ]))
    .await;
    // A fresh reconciliation that finds differences exits 1, the report still printed.
    assert_eq!(code, Some(1), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let diffs = v["reconciliation"]["differences"].as_array().unwrap();
    assert!(
        diffs.iter().any(|x| x["kind"] == "changed_amount"),
        "{diffs:#?}"
    );
    let (_, out, _) = cli(a(&["show", &run_id, "--store", &s])).await;
    assert!(out.contains("DIFFERENCES"), "{out}");
    assert!(out.contains("reconciled: "), "{out}");

    let (code, out, err) = cli(a(&["trace", &l.text, "--store", &s])).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&run_id) && out.contains("source row"), "{out}");

    let (code, out, err) = cli(a(&["reverse", &run_id, "--config", &c, "--store", &s])).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("--delete-unposted"), "{err}");

    // (An unbalanced journal cannot be posted, nor reversed: the tampering is undone first.)
    w.d365
        .tamper_line("usmf", &l.batch_number, l.line_number, l.debit, l.credit);
    let (le, batch) = report.run.journals[0].clone();
    w.d365.post_journal(&le, &batch);
    let (code, out, err) = cli(a(&["reverse", &run_id, "--config", &c, "--store", &s])).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("left unposted"), "{out}");
    assert_eq!(w.d365.headers().len(), 2);
}

/// The engine's conflict check ignores reversed/deleted runs and reversed journals
/// (`controls::blocks_period`, `controls::reversed_batches`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn corrected_repost_after_reversal_is_not_a_conflict() {
    let w = World::start_with(LookerSeed::empty()).await;
    let week = w.period_end().to_string();
    let add = |amounts: &[&str]| {
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
        w.looker.add_explore(
            "finance",
            "marketplace_fees",
            &[
                "marketplace_fees.week_end_date",
                "marketplace_fees.channel",
                "marketplace_fees.cost_center",
                "marketplace_fees.fee_type",
            ],
            &["marketplace_fees.total_amount"],
            &format!("[{}]", rows.join(",")),
        )
    };
    add(&["10.00", "20.00"]);
    let first = w.run(Mode::Post).await;
    assert_eq!(first.outcome, Outcome::Posted);
    add(&["10.00", "25.00"]);
    assert_eq!(w.run(Mode::Post).await.outcome, Outcome::Conflict);

    let (le, batch) = first.run.journals[0].clone();
    w.d365.post_journal(&le, &batch);
    let clients = w.clients();
    reverse(
        &w.store,
        &clients.d365,
        &w.config,
        &first.run.run_id,
        &ReverseOptions::default(),
    )
    .await
    .unwrap();
    let corrected = w.run(Mode::Post).await;
    assert_eq!(
        corrected.outcome,
        Outcome::Posted,
        "{:?}",
        corrected.run.message
    );
    // Original, its reversal, the corrected journal.
    assert_eq!(w.d365.headers().len(), 3);
    let net: Decimal = w
        .d365
        .lines()
        .iter()
        .filter(|l| l.account_display.starts_with("618200"))
        .map(|l| l.debit - l.credit)
        .sum();
    assert_eq!(net, d("35.00"));
}
