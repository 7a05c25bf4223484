//! One store: every command of a user finds the same audit store wherever it runs, says which
//! store it read, and never answers from a silently created empty one.
#![cfg(feature = "sandbox")]

mod cli_support;
mod common;

use std::path::Path;
use std::process::Output;

use cli_support::{args, bin, run_id, sandbox_env, text, write_config};
use common::World;

/// Runs the binary in `cwd` with `home` as the user's home (no XDG override), only `env` set.
async fn cli_in(
    cwd: &Path,
    home: &Path,
    a: Vec<String>,
    env: Vec<(&'static str, String)>,
) -> Output {
    let (cwd, home) = (cwd.to_path_buf(), home.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new(bin());
        c.args(&a).current_dir(&cwd).env("HOME", &home);
        for k in [
            "RUST_LOG",
            "MLC_STORE",
            "MLC_TABLE",
            "XDG_DATA_HOME",
            "APPDATA",
        ] {
            c.env_remove(k);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("run ml-connector")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_from_another_directory_finds_the_per_user_store() {
    let w = World::start().await;
    let home = tempfile::tempdir().unwrap();
    let (here, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = write_config(&w, here.path());
    let out = cli_in(
        here.path(),
        home.path(),
        args(&["run", "--config", cfg.to_str().unwrap()]),
        sandbox_env(),
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let id = run_id(&t);
    let expected = home.path().join(".local/share/ml-connector/audit.sqlite");
    assert!(expected.exists(), "{t}");

    let out = cli_in(elsewhere.path(), home.path(), args(&["runs"]), vec![]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&id),
        "the run is listed from another directory: {t}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("store: {}", expected.display())),
        "says which store it read: {stderr}"
    );
    assert!(!elsewhere.path().join(".ml-connector").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_and_mlc_store_name_the_store_and_a_missing_one_is_not_created() {
    let w = World::start().await;
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let text_cfg = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("store = \"audit/fees.sqlite\"\n{text_cfg}")).unwrap();
    let out = cli_in(
        home.path(),
        home.path(),
        args(&["run", "--config", cfg.to_str().unwrap()]),
        sandbox_env(),
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let id = run_id(&t);
    let named = dir.path().join("audit/fees.sqlite");
    assert!(
        named.exists(),
        "the config's store, relative to the config: {t}"
    );

    // MLC_STORE names it for commands without a config.
    let out = cli_in(
        home.path(),
        home.path(),
        args(&["show", &id]),
        vec![("MLC_STORE", named.display().to_string())],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A store that does not exist: an error naming it, and no empty store is created.
    let missing = dir.path().join("nowhere.sqlite");
    let out = cli_in(
        home.path(),
        home.path(),
        args(&["runs", "--store", missing.to_str().unwrap()]),
        vec![],
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("no audit store at") && t.contains("nowhere.sqlite"),
        "{t}"
    );
    assert!(!t.contains("(no runs recorded)"), "{t}");
    assert!(!missing.exists());
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_file_readable_by_others_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let creds = dir.path().join("creds.toml");
    let env = sandbox_env();
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    std::fs::write(
        &creds,
        format!(
            "[looker]\nclient_id = \"{}\"\nclient_secret = \"{}\"\n[d365]\ntenant_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n",
            get("MLC_LOOKER_CLIENT_ID"),
            get("MLC_LOOKER_CLIENT_SECRET"),
            get("MLC_D365_TENANT_ID"),
            get("MLC_D365_CLIENT_ID"),
            get("MLC_D365_CLIENT_SECRET"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text_cfg = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("credentials_file = \"creds.toml\"\n{text_cfg}"),
    )
    .unwrap();
    let out = cli_in(
        dir.path(),
        dir.path(),
        args(&["check", "--config", cfg.to_str().unwrap()]),
        vec![],
    )
    .await;
    let t = text(&out);
    assert!(
        t.contains("readable by other users") && t.contains("chmod 600"),
        "{t}"
    );
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = cli_in(
        dir.path(),
        dir.path(),
        args(&["check", "--config", cfg.to_str().unwrap()]),
        vec![],
    )
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(!t.contains("readable by other users"), "{t}");
}
