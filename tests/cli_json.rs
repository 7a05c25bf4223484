//! Scripting through the real binary: `--json` on `run`, `preview`, `check` and `runs` with the
//! documented shape, and `--quiet` keeping stderr free of progress.
#![cfg(feature = "sandbox")]

mod cli_support;
mod common;

use cli_support::{args, cli, sandbox_env, text, write_config};
use common::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_preview_and_runs_speak_json_and_quiet_is_quiet() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let (c, s) = (cfg.to_str().unwrap(), store.to_str().unwrap());

    let out = cli(
        args(&["preview", "--config", c, "--store", s, "--json", "--quiet"]),
        sandbox_env(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("preview json");
    assert_eq!(v["outcome"], "previewed");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["stored"], false);
    assert_eq!(v["journals"][0]["lines"].as_array().unwrap().len(), 14);
    assert!(
        out.stderr.is_empty(),
        "--quiet: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = cli(
        args(&["run", "--config", c, "--store", s, "--json"]),
        sandbox_env(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run json");
    assert_eq!(v["outcome"], "posted");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["posted"][0]["legal_entity"], "usmf");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    assert!(!out.stderr.is_empty(), "progress on stderr without --quiet");

    let out = cli(args(&["runs", "--store", s, "--json", "-q"]), vec![]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("runs json");
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["run_id"], run_id.as_str());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_for_bash_zsh_and_fish() {
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef ml-connector"),
        ("fish", "complete -c ml-connector"),
    ] {
        let out = cli(args(&["completions", shell]), vec![]).await;
        let t = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out));
        assert!(t.contains(needle) && t.contains("reverse"), "{shell}:\n{t}");
    }
    let out = cli(args(&["completions", "tcsh"]), vec![]).await;
    assert_eq!(out.status.code(), Some(64));
}

/// `check --json`: one object with the outcome, the exit code, the problem counts and every item
/// per service; a configuration problem (an unknown journal name) is an item of its own and
/// the exit code says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_speaks_json() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let c = cfg.to_str().unwrap();
    let out = cli(args(&["check", "--config", c, "--json"]), sandbox_env()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check json");
    assert_eq!(v["outcome"], "passed");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["connection_problems"], 0);
    let services: Vec<&str> = v["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["Looker", "D365"]);
    assert!(v["sections"][1]["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "ok"));

    let bad_cfg = dir.path().join("bad-journal.toml");
    let good = std::fs::read_to_string(&cfg).unwrap();
    let bad_text = good.replace(
        "journal_name = \"GenJrn\"",
        "journal_name = \"NoSuchJournal\"",
    );
    assert_ne!(bad_text, good, "the example names journal GenJrn");
    std::fs::write(&bad_cfg, bad_text).unwrap();
    let out = cli(
        args(&["check", "--config", bad_cfg.to_str().unwrap(), "--json"]),
        sandbox_env(),
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check json");
    assert_eq!(v["outcome"], "configuration_problems");
    assert_eq!(v["configuration_problems"], 1);
    let bad: Vec<&serde_json::Value> = v["sections"][1]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "configuration_problem")
        .collect();
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["message"]
        .as_str()
        .unwrap()
        .contains("journal name `NoSuchJournal` does not exist"));
}
