//! One clear message per problem through the real binary: no repeats, no log noise, no
//! terminal escapes, no unbounded echo of bad values, no panic on a closed pipe.
#![cfg(feature = "sandbox")]

mod cli_support;
mod common;

use std::process::Stdio;

use cli_support::{args, bin, cli, sandbox_env, text, write_config};
use common::World;
use ml_connector::sandbox::looker::LookerSeed;

/// A world whose Looker explore holds the demo week plus one row with `fee_type` = `bad`.
async fn world_with_bad_fee_type(bad: &str) -> World {
    let w = World::start_with(LookerSeed::empty()).await;
    let week = w.period_end().to_string();
    let (rows, _) = common::fee_rows_json(3, &week);
    let bad_row = serde_json::json!({
        "marketplace_fees.row_id": 99,
        "marketplace_fees.week_end_date": week,
        "marketplace_fees.channel": "Amazon",
        "marketplace_fees.cost_center": "022",
        "marketplace_fees.fee_type": bad,
        "marketplace_fees.total_amount": 12.5,
    });
    let mut all: Vec<serde_json::Value> = serde_json::from_str(&rows).unwrap();
    all.push(bad_row);
    w.add_fee_explore(&serde_json::to_string(&all).unwrap());
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_is_echoed_truncated_and_escaped() {
    let long = "Q".repeat(10_000);
    let bidi = "Fee\u{202E}txt.exe";
    for (bad, needle) in [(long.as_str(), "QQQQ"), (bidi, "Fee")] {
        let w = world_with_bad_fee_type(bad).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(&w, dir.path());
        let store = dir.path().join("audit.sqlite");
        let out = cli(
            args(&[
                "run",
                "--config",
                cfg.to_str().unwrap(),
                "--store",
                store.to_str().unwrap(),
            ]),
            sandbox_env(),
        )
        .await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(t.contains(needle), "the value is named: {t}");
        assert!(!t.contains('\u{202E}'), "bidi override printed raw: {t}");
        assert!(!t.contains('\u{1b}'), "terminal escape in output: {t}");
        assert!(
            t.len() < 8_000,
            "a 10,000-character value must be truncated, output is {} bytes",
            t.len()
        );
        if bad == bidi {
            assert!(t.contains("\\u{202e}"), "escaped visibly: {t}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_states_its_error_once_without_log_noise() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let mut env = sandbox_env();
    env.retain(|(k, _)| *k != "MLC_LOOKER_CLIENT_SECRET");
    env.push(("MLC_LOOKER_CLIENT_SECRET", "wrong-secret".into()));
    let c = cfg.to_str().unwrap();
    let out = cli(
        args(&["run", "--config", c, "--store", store.to_str().unwrap()]),
        env.clone(),
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("notification="), "{stderr}");
    assert!(!t.contains('\u{1b}'), "no colour codes off a terminal: {t}");
    let needle = "Looker rejected the API client id/secret";
    assert!(
        t.matches(needle).count() <= 2,
        "the error at most as message and problem, not {} times:\n{t}",
        t.matches(needle).count()
    );

    // `check` with the same wrong secret: one message, not one per check item.
    let out = cli(args(&["check", "--config", c]), env).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert_eq!(t.matches(needle).count(), 1, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_does_not_panic_after_the_run_is_recorded() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let (c, s) = (
        cfg.to_str().unwrap().to_string(),
        store.to_str().unwrap().to_string(),
    );
    let env = sandbox_env();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["run", "--config", &c, "--store", &s])
            .env_remove("RUST_LOG")
            .env_remove("MLC_STORE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        drop(child.stdout.take()); // as `| head -0` would
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(w.d365.headers().len(), 1);
}

/// `check` against a Looker that never answers: the login is tried once (with its own retry
/// budget), the later Looker items are skipped as not checked, and the problem is said once;
/// no retry warnings. Bounded by the connection attempts Looker sees, not by wall time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_against_an_unreachable_looker_logs_in_once_and_says_so_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    // A "Looker" that accepts each connection and closes it without a word.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    std::thread::spawn(move || {
        for conn in dead.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    let mut env = sandbox_env();
    env.push(("MLC_LOOKER_URL", url));
    let out = cli(args(&["check", "--config", cfg.to_str().unwrap()]), env).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");

    // One login, with its retries: at most the attempts of one request.
    let attempts = connections.load(Ordering::SeqCst);
    let budget = ml_connector::http::RetryPolicy::default().max_attempts as usize;
    assert!(
        (1..=budget).contains(&attempts),
        "{attempts} connections to Looker; one login makes at most {budget}:\n{t}"
    );
    // One message for the problem; the rest of Looker is marked as not checked.
    let looker: Vec<&str> = t
        .lines()
        .skip_while(|l| !l.starts_with("Looker ("))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    let fails: Vec<&&str> = looker.iter().filter(|l| l.contains("FAIL")).collect();
    assert_eq!(fails.len(), 1, "one Looker problem, once: {looker:#?}\n{t}");
    assert!(fails[0].contains("/login"), "{t}");
    assert!(
        looker
            .iter()
            .any(|l| l.contains("skip") && l.contains("not logged in")),
        "the other Looker items are marked not checked: {t}"
    );
    assert_eq!(t.matches("/login").count(), 1, "{t}");
    for noise in ["retry", "waiting", "WARN"] {
        assert!(!t.contains(noise), "{noise:?} in output:\n{t}");
    }
    // D365 is still checked.
    assert!(t.contains("D365"), "{t}");
}
