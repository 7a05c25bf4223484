//! Every command a message of the binary suggests works exactly as printed: each test makes
//! the binary print a suggestion, then runs it (real process, simulators on loopback).
#![cfg(feature = "sandbox")]

mod cli_support;
mod common;

use cli_support::{args, cli, run_id, sandbox_env, suggested, text, write_config};
use common::World;
use ml_connector::domain::reference::PeriodStatus;

/// Runs each suggested command; returns (command, exit code, output).
async fn run_suggestions(out: &str) -> Vec<(String, Option<i32>, String)> {
    let mut done = Vec::new();
    for cmd in suggested(out) {
        let o = cli(cmd.clone(), sandbox_env()).await;
        done.push((cmd.join(" "), o.status.code(), text(&o)));
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_looker_login_failure_the_suggested_commands_work() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let mut env = sandbox_env();
    env.retain(|(k, _)| *k != "MLC_LOOKER_CLIENT_SECRET");
    env.push(("MLC_LOOKER_CLIENT_SECRET", "wrong-secret".into()));
    let out = cli(
        args(&[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ]),
        env,
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    let ran = run_suggestions(&t).await;
    assert!(!ran.is_empty(), "no command suggested: {t}");
    assert!(
        ran.iter().any(|(c, _, _)| c.starts_with("run ")),
        "a new run is suggested: {t}"
    );
    for (cmd, code, o) in &ran {
        // With the secret fixed, each suggestion does what it says.
        assert_eq!(
            *code,
            Some(0),
            "`ml-connector {cmd}` failed:\n{o}\n--- after:\n{t}"
        );
    }
    assert_eq!(w.d365.headers().len(), 1, "the new run posted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_preview_suggests_nothing_that_looks_for_a_stored_run() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    w.d365
        .set_period_status("usmf", w.period_end(), PeriodStatus::Closed);
    let out = cli(
        args(&[
            "preview",
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
    assert!(
        !t.contains("ml-connector show"),
        "preview runs are not stored: {t}"
    );
    let ran = run_suggestions(&t).await;
    assert!(!ran.is_empty(), "no command suggested: {t}");
    for (cmd, code, o) in &ran {
        // The period is still closed: the preview rejects again (2), but runs as printed.
        assert_eq!(*code, Some(2), "`ml-connector {cmd}`:\n{o}");
        assert!(
            !o.contains("not found") && !o.contains("error:"),
            "{cmd}: {o}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_run_suggests_undo_commands_that_work_and_repeat_safely() {
    let w = World::start().await;
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
    assert_eq!(out.status.code(), Some(0), "{t}");
    let id = run_id(&t);
    let ran = run_suggestions(&t).await;
    assert!(
        ran.iter()
            .any(|(c, _, _)| c.starts_with(&format!("reverse {id} --config"))),
        "undo is suggested with its config: {t}"
    );
    for (cmd, code, o) in &ran {
        assert_eq!(
            *code,
            Some(0),
            "`ml-connector {cmd}`:\n{o}\n--- after:\n{t}"
        );
    }
    // The unposted journal was deleted by the first suggestion; the second found nothing
    // left to reverse, which is success for an idempotent command.
    assert!(w.d365.headers().is_empty());
}
