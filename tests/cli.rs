//! The `ml-connector` binary as a user runs it: real process, real config file, credentials from
//! the environment, simulators on loopback. Checks exit codes, output and that no secret leaks.
#![cfg(feature = "sandbox")]

mod cli_support;
mod common;

use cli_support::{args, cli, sandbox_env, text, write_config};
use common::World;
use ml_connector::domain::reference::PeriodStatus;
use ml_connector::sandbox::d365::SANDBOX_CLIENT_SECRET;
use ml_connector::sandbox::looker::SANDBOX_LOOKER_CLIENT_SECRET;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_balanced_journal_and_posts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("a.sqlite");
    let out = cli(args(&["demo", "--store", store.to_str().unwrap()]), vec![]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("POSTED  run "), "{t}");
    assert!(t.contains("balanced") && !t.contains("NOT BALANCED"), "{t}");
    assert!(t.contains("already posted, nothing new written"), "{t}");
    assert!(
        t.contains("Sandbox D365 still holds 1 journal(s) and 14 line(s)"),
        "{t}"
    );
    // The audit trail it points to exists.
    let runs = cli(args(&["runs", "--store", store.to_str().unwrap()]), vec![]).await;
    let r = text(&runs);
    assert!(
        r.contains("completed") && r.contains("already_posted"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_preview_check_show_with_exit_codes() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let base = |cmd: &str| {
        args(&[
            cmd,
            "--config",
            cfg.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ])
    };

    let out = cli(base("check"), sandbox_env()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("check passed"), "{t}");
    assert!(t.contains("journal name GenJrn"), "{t}");

    let out = cli(base("preview"), sandbox_env()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("PREVIEW (nothing written)"));
    assert!(w.d365.headers().is_empty());

    let out = cli(base("run"), sandbox_env()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("POSTED") && t.contains("usmf/00042"), "{t}");
    let run_id = t
        .split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .unwrap()
        .to_string();

    let out = cli(base("run"), sandbox_env()).await;
    assert_eq!(out.status.code(), Some(0), "already posted is success");
    assert!(text(&out).contains("ALREADY POSTED"));
    assert_eq!(w.d365.headers().len(), 1);

    let out = cli(
        args(&["show", &run_id, "--store", store.to_str().unwrap()]),
        vec![],
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("status          completed") && t.contains("Source rows (12)"),
        "{t}"
    );
    let out = cli(
        args(&[
            "show",
            &run_id,
            "--json",
            "--store",
            store.to_str().unwrap(),
        ]),
        vec![],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["run"]["status"], "completed");
    assert_eq!(v["lines"].as_array().unwrap().len(), 14);

    // A closed period: rejected, exit 2, nothing new in D365. (That week has not ended yet,
    // so posting it needs --allow-open-period.)
    let next_week = w.period_end() + chrono::Duration::days(7);
    w.d365
        .set_period_status("usmf", next_week, PeriodStatus::Closed);
    let mut a = base("run");
    a.extend(args(&[
        "--run-date",
        &(next_week + chrono::Duration::days(3)).to_string(),
        "--allow-open-period",
    ]));
    let out = cli(a, sandbox_env()).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("REJECTED (nothing written)") && t.contains("closed"),
        "{t}"
    );
    assert_eq!(w.d365.headers().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_exit_1_and_are_never_printed() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    for (var, bad, needle) in [
        (
            "MLC_LOOKER_CLIENT_SECRET",
            "bad-looker-secret-123",
            "Looker",
        ),
        (
            "MLC_D365_CLIENT_SECRET",
            "bad-entra-secret-456",
            "AADSTS7000215",
        ),
    ] {
        let mut env = sandbox_env();
        env.retain(|(k, _)| *k != var);
        env.push((var, bad.to_string()));
        for cmd in ["run", "check"] {
            let out = cli(
                args(&[
                    cmd,
                    "--config",
                    cfg.to_str().unwrap(),
                    "--store",
                    store.to_str().unwrap(),
                    "-vv",
                ]),
                env.clone(),
            )
            .await;
            let t = text(&out);
            assert_eq!(out.status.code(), Some(1), "{cmd}: {t}");
            assert!(t.contains(needle), "{cmd}: {t}");
            assert!(!t.contains(bad), "secret leaked by {cmd}: {t}");
            assert!(
                !t.contains(SANDBOX_CLIENT_SECRET) && !t.contains(SANDBOX_LOOKER_CLIENT_SECRET),
                "{t}"
            );
        }
    }
    assert!(w.d365.headers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_credentials_and_bad_config_are_explained() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let out = cli(args(&["run", "--config", cfg.to_str().unwrap()]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("MLC_LOOKER_CLIENT_ID"),
        "{}",
        text(&out)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "instance = \"x\"\n[looker]\nbase_url = \"http://looker.example.com\"\n",
    )
    .unwrap();
    let out = cli(
        args(&["preview", "--config", bad.to_str().unwrap()]),
        sandbox_env(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("missing field"), "{}", text(&out));

    // Plain http to a non-loopback host is refused.
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&w.looker.base_url(), "http://looker.example.com");
    std::fs::write(&bad, text_cfg).unwrap();
    let out = cli(
        args(&["check", "--config", bad.to_str().unwrap()]),
        sandbox_env(),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("must use https"), "{}", text(&out));
}
