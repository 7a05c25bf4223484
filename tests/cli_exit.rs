//! Exit codes of the real binary: each means one thing (table in `--help` and the README),
//! and an empty or unfinished period is never reported as posted.
#![cfg(feature = "sandbox")]

mod cli_support;
mod common;

use cli_support::{args, cli, sandbox_env, text, write_config};
use common::World;
use ml_connector::domain::reference::PeriodStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_have_their_own_code_and_help_lists_the_table() {
    for bad in [
        args(&["run", "--no-such-flag"]),
        args(&["reverse", "r-1"]), // --config missing
        args(&["runs", "--limit", "many"]),
        args(&["frobnicate"]),
    ] {
        let out = cli(bad.clone(), vec![]).await;
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {}", text(&out));
    }
    let out = cli(args(&["--help"]), vec![]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("Exit codes:"), "{t}");
    for line in ["  0 ", "  1 ", "  2 ", "  3 ", "  64 "] {
        assert!(t.contains(line), "{line:?} missing from --help:\n{t}");
    }
    let out = cli(args(&["--version"]), vec![]).await;
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_reverse_is_idempotent_and_exits_0() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let (c, s) = (cfg.to_str().unwrap(), store.to_str().unwrap());
    let out = cli(args(&["run", "--config", c, "--store", s]), sandbox_env()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let id = cli_support::run_id(&t);
    let reverse = args(&[
        "reverse",
        &id,
        "--config",
        c,
        "--store",
        s,
        "--delete-unposted",
    ]);
    let first = cli(reverse.clone(), sandbox_env()).await;
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    assert!(w.d365.headers().is_empty());
    let again = cli(reverse, sandbox_env()).await;
    let t = text(&again);
    assert_eq!(again.status.code(), Some(0), "{t}");
    assert!(t.contains("nothing left to reverse"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_unfinished_periods_are_never_reported_as_posted() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let (c, s) = (cfg.to_str().unwrap(), store.to_str().unwrap());
    let future = (common::today() + chrono::Duration::days(200)).to_string();

    // A run date in the future: refused before anything runs.
    let out = cli(
        args(&["run", "--config", c, "--store", s, "--run-date", &future]),
        sandbox_env(),
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(64), "{t}");
    assert!(
        t.contains("in the future") && t.contains("--allow-open-period"),
        "{t}"
    );
    assert!(!t.contains("POSTED"), "{t}");

    // Explicitly allowed, the future period has no rows: its own outcome, code and message.
    let out = cli(
        args(&[
            "run",
            "--config",
            c,
            "--store",
            s,
            "--run-date",
            &future,
            "--allow-open-period",
        ]),
        sandbox_env(),
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(3), "{t}");
    assert!(
        t.contains("NOTHING TO POST") && t.contains("no rows"),
        "{t}"
    );
    assert!(!t.contains("POSTED ") && !t.contains("zero amounts"), "{t}");

    // A past week without data: the same, for run and preview.
    for cmd in ["run", "preview"] {
        let out = cli(
            args(&[cmd, "--config", c, "--store", s, "--run-date", "2020-01-08"]),
            sandbox_env(),
        )
        .await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(3), "{cmd}: {t}");
        assert!(
            t.contains("NOTHING TO POST") && t.contains("no rows"),
            "{cmd}: {t}"
        );
    }
    assert!(w.d365.headers().is_empty());
}

/// `reverse` of a run that wrote no journal: D365 holds nothing of it, so the state asked for
/// already holds. Done (0), said plainly, the same on a repeat; nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reversing_a_run_that_wrote_no_journal_is_done_not_rejected() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let (c, s) = (cfg.to_str().unwrap(), store.to_str().unwrap());

    // Rejected at validation (the period is closed in D365): nothing written.
    w.d365
        .set_period_status("usmf", w.period_end(), PeriodStatus::Closed);
    let out = cli(args(&["run", "--config", c, "--store", s]), sandbox_env()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    let rejected = cli_support::run_id(&t);

    // Stopped before validation (Looker refuses the login): nothing written either.
    let mut env = sandbox_env();
    env.retain(|(k, _)| *k != "MLC_LOOKER_CLIENT_SECRET");
    env.push(("MLC_LOOKER_CLIENT_SECRET", "wrong-secret".into()));
    let out = cli(args(&["run", "--config", c, "--store", s]), env).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let failed = cli_support::run_id(&t);

    for id in [&rejected, &failed] {
        for attempt in ["first", "repeat"] {
            let out = cli(
                args(&["reverse", id, "--config", c, "--store", s]),
                sandbox_env(),
            )
            .await;
            let t = text(&out);
            assert_eq!(out.status.code(), Some(0), "{attempt} reverse of {id}: {t}");
            assert!(
                t.contains(&format!("run {id} wrote no journal"))
                    && t.contains("nothing to reverse"),
                "{attempt} reverse of {id}: {t}"
            );
            assert!(!t.contains("refused"), "{t}");
        }
    }
    assert!(w.d365.headers().is_empty() && w.d365.lines().is_empty());
}
