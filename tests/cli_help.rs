//! Help and wording of the real binary: every argument described, an example per command,
//! `--table` only where it applies, and messages that say each thing once.
#![cfg(feature = "sandbox")]

mod cli_support;
mod common;

use cli_support::{args, cli, run_id, sandbox_env, text, write_config};
use common::World;

async fn help(cmd: &[&str]) -> String {
    let mut a = args(cmd);
    a.push("--help".into());
    let out = cli(a, vec![]).await;
    assert_eq!(out.status.code(), Some(0), "{cmd:?}");
    text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_an_example_and_every_argument_a_description() {
    for cmd in [
        &["demo"][..],
        &["sandbox"],
        &["run"],
        &["preview"],
        &["check"],
        &["replay"],
        &["runs"],
        &["show"],
        &["reverse"],
        &["trace"],
        &["config", "push"],
    ] {
        let h = help(cmd).await;
        assert!(h.contains("Example"), "{cmd:?} has no example:\n{h}");
    }
    // Positional arguments and options that used to have no description.
    for (cmd, needle) in [
        (&["show"][..], "The run to show"),
        (&["replay"], "The run to finish"),
        (&["reverse"], "The run whose journals to undo"),
        (
            &["trace"],
            "The reference at the start of the D365 line's Text",
        ),
        (
            &["config", "push"],
            "Instance configuration (TOML) to validate",
        ),
        (&["runs"], "Only runs of this instance"),
        (&["runs"], "At most this many runs"),
        (&["preview"], "Run as if today were this date"),
        (&["run"], "Run as if today were this date"),
        (&["run"], "--config <FILE>"),
    ] {
        let h = help(cmd).await;
        assert!(h.contains(needle), "{cmd:?} --help lacks {needle:?}:\n{h}");
    }
    for cmd in ["demo", "sandbox", "check"] {
        let h = help(&[cmd]).await;
        assert!(!h.contains("--table"), "{cmd} does not use --table:\n{h}");
    }
    assert!(help(&["runs"]).await.contains("--table"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_says_each_status_once() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let (c, s) = (cfg.to_str().unwrap(), store.to_str().unwrap());
    let first = cli(args(&["run", "--config", c, "--store", s]), sandbox_env()).await;
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let again = cli(args(&["run", "--config", c, "--store", s]), sandbox_env()).await;
    let id = run_id(&text(&again));
    let out = cli(args(&["show", &id, "--store", s]), vec![]).await;
    let t = text(&out);
    assert!(t.contains("already posted"), "{t}");
    assert!(
        !t.contains("already_posted: already posted")
            && !t.contains("already posted: already posted"),
        "{t}"
    );

    // A rejected run (a closed period): "rejected" once.
    w.d365.set_period_status(
        "usmf",
        w.period_end(),
        ml_connector::domain::reference::PeriodStatus::Closed,
    );
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = dir2.path().join("audit.sqlite");
    let out = cli(
        args(&["run", "--config", c, "--store", s2.to_str().unwrap()]),
        sandbox_env(),
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    let id = run_id(&t);
    let out = cli(
        args(&["show", &id, "--store", s2.to_str().unwrap()]),
        vec![],
    )
    .await;
    let t = text(&out);
    assert!(t.contains("rejected"), "{t}");
    assert!(!t.contains("rejected: rejected"), "{t}");
}

#[test]
fn a_journal_of_one_voucher_says_voucher() {
    // Through the binary: the demo's journal table totals line.
    let out = std::process::Command::new(cli_support::bin())
        .args(["demo", "--store"])
        .arg(tempfile::tempdir().unwrap().path().join("a.sqlite"))
        .env_remove("MLC_STORE")
        .output()
        .unwrap();
    let t = text(&out);
    assert!(!t.contains(" 1 vouchers"), "{t}");
    assert!(t.contains("14 lines, 1 voucher "), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_fit_120_columns_unless_wide() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let (c, s) = (cfg.to_str().unwrap(), store.to_str().unwrap());
    let out = cli(args(&["run", "--config", c, "--store", s]), sandbox_env()).await;
    let id = run_id(&text(&out));
    let widest = |t: &str| t.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    for a in [
        args(&["preview", "--config", c, "--store", s]),
        args(&["runs", "--store", s]),
        args(&["show", &id, "--store", s]),
    ] {
        let out = cli(a.clone(), sandbox_env()).await;
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        // Table rows fit; prose lines (messages, hints) wrap in the terminal as text does.
        let rows: String = t
            .lines()
            .filter(|l| {
                (l.starts_with("  ") && !l.starts_with("  message"))
                    || l.starts_with("r-")
                    || l.starts_with("Run ")
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            widest(&rows) <= 120,
            "{a:?}: a table row is wider than 120:\n{t}"
        );
    }
    let mut a = args(&["show", &id, "--store", s, "--wide"]);
    let narrow = cli(args(&["show", &id, "--store", s]), vec![]).await;
    let wide = cli(std::mem::take(&mut a), vec![]).await;
    let (n, wd) = (
        String::from_utf8_lossy(&narrow.stdout).to_string(),
        String::from_utf8_lossy(&wide.stdout).to_string(),
    );
    assert!(widest(&wd) > 120, "--wide prints rows whole:\n{wd}");
    assert!(n.contains('…') && !wd.contains('…'), "{n}\n{wd}");
}
