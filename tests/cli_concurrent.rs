//! Exactly once without a shared lock, as a user would see it: twelve
//! rounds of two `ml-connector run` processes started together with separate `--store` files,
//! each round a different week, against one sandbox D365; then a rerun after a mapping change.
//!
//! The processes are the real binary; the simulators run in this test process (as in
//! `tests/cli.rs`), so D365's state is read from the simulator itself and checked with the
//! convergence harness's invariant checker (`ml_connector::sandbox::converge::check`).
#![cfg(feature = "sandbox")]

mod cli_support;
mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use cli_support::{args, cli, pointed_at_sandbox, sandbox_env};
use common::World;
use ml_connector::domain::mapping::{description_key, parse_line_ref};
use ml_connector::sandbox::converge::{check, D365State, Expectation, RunClaim, Violation};
use ml_connector::sandbox::looker::seed::{
    demo_amount, DEMO_CHANNELS, DEMO_COST_CENTERS, DEMO_FEE_TYPES,
};
use ml_connector::store::{SqliteStore, Store};
use rust_decimal::{Decimal, RoundingStrategy};

const ROUNDS: i64 = 12;

/// Starts `ml-connector run` for each store at once (one thread per process) and waits for all.
async fn run_together(cfg: &Path, stores: &[PathBuf], run_date: &str) -> Vec<Output> {
    let handles: Vec<_> = stores
        .iter()
        .map(|store| {
            let run = args(&[
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--store",
                store.to_str().unwrap(),
                "--run-date",
                run_date,
            ]);
            tokio::spawn(cli(run, sandbox_env()))
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What the demo Look's week ending `week_end` posts, to the cent: one voucher, balanced on the
/// rounded total of its exact amounts.
fn week_total(week_end: &str) -> Decimal {
    let mut exact = Decimal::ZERO;
    for ch in DEMO_CHANNELS {
        for cc in DEMO_COST_CENTERS {
            for fee in DEMO_FEE_TYPES {
                exact += demo_amount(week_end, ch, cc, fee)
                    .parse::<Decimal>()
                    .unwrap();
            }
        }
    }
    exact.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

async fn claims(stores: &[PathBuf]) -> Vec<RunClaim> {
    let mut out = Vec::new();
    for p in stores {
        let store = SqliteStore::open(p).unwrap();
        for run in store.list_runs(None, 1000).await.unwrap() {
            let lines = store.lines(&run.run_id).await.unwrap();
            out.push(RunClaim {
                store: p.file_name().unwrap().to_string_lossy().into_owned(),
                run,
                lines,
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_separate_stores_post_each_week_once() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("instance.toml");
    std::fs::write(&cfg, pointed_at_sandbox(&w, common::EXAMPLE)).unwrap();
    let stores = vec![dir.path().join("a.sqlite"), dir.path().join("b.sqlite")];

    // Twelve rounds, each a different week (the run date a week apart; the period is the week
    // before it), the two processes started together.
    let mut looker_total = Decimal::ZERO;
    let mut rounds = Vec::new();
    let last_monday = w.period_end() + chrono::Duration::days(1);
    for k in 0..ROUNDS {
        let run_date = last_monday - chrono::Duration::weeks(k);
        let week_end = run_date - chrono::Duration::days(1);
        looker_total += week_total(&week_end.to_string());
        let outs = run_together(&cfg, &stores, &run_date.to_string()).await;
        for o in &outs {
            // Each process posted, found it posted, or (with the convergent writer) reports
            // what it did; none may fail or be rejected.
            assert_eq!(o.status.code(), Some(0), "round {k}: {}", text(o));
        }
        rounds.push((run_date, outs));
    }

    let state = D365State {
        headers: w.d365.headers(),
        lines: w.d365.lines(),
    };
    // The counts the issue names, as plain numbers.
    let mut keys = std::collections::BTreeMap::<String, usize>::new();
    for h in &state.headers {
        *keys
            .entry(description_key(&h.description).unwrap_or("").to_string())
            .or_default() += 1;
    }
    let dup_headers = keys.values().filter(|n| **n > 1).count();
    let mut refs = std::collections::BTreeMap::<String, usize>::new();
    for l in &state.lines {
        if let Some((k, n)) = parse_line_ref(&l.text) {
            *refs.entry(format!("{k}.L{n:04}")).or_default() += 1;
        }
    }
    let dup_lines = refs.values().filter(|n| **n > 1).count();
    let expect = Expectation {
        looker_total,
        balancing_account: "200150".into(),
        delimiter: '-',
    };
    let violations = check(&state, &expect, &claims(&stores).await);
    let unbalanced = violations
        .iter()
        .filter(|v| matches!(v, Violation::Unbalanced { .. }))
        .count();
    println!(
        "{ROUNDS} rounds: {} headers, {} lines; {dup_headers} duplicate header keys, {dup_lines} duplicate line references, {unbalanced} unbalanced vouchers",
        state.headers.len(),
        state.lines.len()
    );
    assert_eq!(
        keys.len(),
        ROUNDS as usize,
        "one journal key per week: {keys:?}"
    );
    assert!(
        violations.is_empty(),
        "{dup_headers} duplicate header keys, {dup_lines} duplicate line references, {unbalanced} unbalanced vouchers; every violation:\n{}",
        violations
            .iter()
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // A rerun of the first week after a mapping change (commissions to another account): both
    // from a store that posted it and from a fresh one it must exit non-zero and write nothing.
    let changed = common::EXAMPLE.replace(
        r#"lookup = { "Marketplace fee" = "618100", "Commission" = "618200" }"#,
        r#"lookup = { "Marketplace fee" = "618100", "Commission" = "618100" }"#,
    );
    assert_ne!(
        changed,
        common::EXAMPLE,
        "the example's account mapping moved"
    );
    let changed_cfg = dir.path().join("changed.toml");
    std::fs::write(&changed_cfg, pointed_at_sandbox(&w, &changed)).unwrap();
    let writes = |w: &World| {
        w.d365
            .request_log()
            .iter()
            .filter(|r| r.service == ml_connector::sandbox::d365::SimService::FinOps)
            .filter(|r| r.method == "POST" || r.method == "DELETE")
            .count()
    };
    let before = (writes(&w), w.d365.headers(), w.d365.lines());
    let first_week = rounds[0].0.to_string();
    for store in [stores[0].clone(), dir.path().join("fresh.sqlite")] {
        let out = run_together(&changed_cfg, std::slice::from_ref(&store), &first_week).await;
        assert_ne!(
            out[0].status.code(),
            Some(0),
            "rerun after a mapping change with {}: {}",
            store.display(),
            text(&out[0])
        );
    }
    assert_eq!(
        (writes(&w), w.d365.headers(), w.d365.lines()),
        before,
        "the reruns after the mapping change wrote to D365"
    );
}
