//! Exactly once even without a shared lock: a seeded concurrency simulation.
//!
//! Each seed runs 2–4 posters at once against one sandbox — engines with separate SQLite
//! stores, engines sharing one, and (under `.ci/test`, which sets `AWS_ENDPOINT_URL` to a local
//! moto server) DynamoDB tables — with random F&O latency, crash points, faults (429, 5xx and
//! commit-then-drop on the header, a line and `$batch`) and sometimes a mapping change between
//! posts; then one fault-free final run, then the invariants against D365's own state (see
//! `ml_connector::sandbox::converge`). A failure prints the seed, its scenario and how to run it
//! again.
//!
//! Seeds: `CONVERGE_SEEDS=START..END` (or a count `N` for `0..N`); default `0..200`.
//! Long runs: the `converge` binary (BENCHMARKS.md, "Convergence simulation").
#![cfg(feature = "sandbox")]

use std::ops::Range;

use ml_connector::sandbox::converge::{
    dynamo_available, reproduce_command, run_seed, Options, Summary,
};

fn seeds() -> Range<u64> {
    let Ok(v) = std::env::var("CONVERGE_SEEDS") else {
        return 0..200;
    };
    let v = v.trim();
    let parsed = match v.split_once("..") {
        Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
        None => v.parse().ok().map(|n| (0, n)),
    };
    match parsed {
        Some((a, b)) if a < b => a..b,
        _ => panic!("CONVERGE_SEEDS={v}: expected START..END or a count"),
    }
}

/// Runs `seeds` two at a time; returns the summary and the failing seeds' reports.
async fn run_all(seeds: Range<u64>, opts: &Options) -> (Summary, Vec<String>) {
    let mut summary = Summary::default();
    let mut failures = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    let mut next = seeds.clone();
    loop {
        while set.len() < 2 {
            let Some(seed) = next.next() else { break };
            let o = opts.clone();
            set.spawn(async move { run_seed(seed, &o).await });
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        let r = r.expect("seed task");
        summary.add(&r);
        if !r.passed() {
            failures.push(format!(
                "{}  reproduce: CONVERGE_SEEDS={}..{} .ci/test --test convergence \n         or: {}\n",
                r.describe(),
                r.scenario.seed,
                r.scenario.seed + 1,
                reproduce_command(r.scenario.seed, opts)
            ));
        }
    }
    (summary, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posters_converge_to_exactly_once() {
    let opts = Options {
        dynamo: dynamo_available(),
        ..Options::default()
    };
    let seeds = seeds();
    let (summary, failures) = run_all(seeds.clone(), &opts).await;
    let line = summary.line();
    println!("convergence: seeds {seeds:?}: {line}");
    if opts.dynamo {
        assert!(summary.dynamo > 0, "no seed used DynamoDB: {line}");
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds broke an invariant ({line}):\n\n{}",
        failures.len(),
        summary.seeds,
        failures.join("\n")
    );
}

/// The control: posters that never find D365's journals by natural key (and a final run that
/// does not either) must be caught on every seed — the harness sees duplicates end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_posters_are_caught_on_every_seed() {
    let opts = Options {
        naive: true,
        ..Options::default()
    };
    for seed in 0..6 {
        let r = run_seed(seed, &opts).await;
        let kinds: Vec<&str> = r.violations.iter().map(|v| v.kind()).collect();
        assert!(
            kinds.contains(&"duplicate-header")
                && kinds.contains(&"duplicate-line")
                && kinds.contains(&"total-mismatch"),
            "naive seed {seed} was not caught:\n{}",
            r.describe()
        );
        // Only what the naive posters cause: no harness trouble.
        assert!(
            !kinds
                .iter()
                .any(|k| matches!(*k, "engine-error" | "timeout" | "not-settled")),
            "naive seed {seed}:\n{}",
            r.describe()
        );
    }
}
