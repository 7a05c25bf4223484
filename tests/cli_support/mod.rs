//! Running the real `ml-connector` binary in tests: the example config pointed at the
//! simulators, credentials from the environment, a store in a temp dir (never the user's).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use ml_connector::sandbox::d365::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT};
use ml_connector::sandbox::looker::{SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET};

use super::common::{World, EXAMPLE};

/// The binary under test: this build's, or the one `MLC_TEST_BIN` names (opt-in, to show that
/// a test fails on an older build of the binary).
pub fn bin() -> String {
    std::env::var("MLC_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ml-connector").into())
}

/// Writes the example config pointed at the simulators.
pub fn write_config(w: &World, dir: &Path) -> PathBuf {
    let p = dir.join("instance.toml");
    std::fs::write(&p, pointed_at_sandbox(w, EXAMPLE)).unwrap();
    p
}

/// Config `text` (written for the real services) with its URLs pointed at `w`'s simulators.
pub fn pointed_at_sandbox(w: &World, text: &str) -> String {
    text.replace("https://acme.cloud.looker.com", &w.looker.base_url())
        .replace(
            "https://contoso.operations.dynamics.com",
            &w.d365.environment_url(),
        )
        .replace("https://login.microsoftonline.com", &w.d365.authority_url())
}

/// Runs the binary with only `env` of the connector's variables set.
pub async fn cli(args: Vec<String>, env: Vec<(&'static str, String)>) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut c = std::process::Command::new(bin());
        c.args(&args).env_remove("RUST_LOG");
        for k in [
            "MLC_LOOKER_CLIENT_ID",
            "MLC_LOOKER_CLIENT_SECRET",
            "MLC_D365_TENANT_ID",
            "MLC_D365_CLIENT_ID",
            "MLC_D365_CLIENT_SECRET",
            "MLC_STORE",
            "MLC_TABLE",
            "MLC_LOOKER_URL",
            "MLC_D365_URL",
            "MLC_ENTRA_AUTHORITY",
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

pub fn sandbox_env() -> Vec<(&'static str, String)> {
    vec![
        ("MLC_LOOKER_CLIENT_ID", SANDBOX_LOOKER_CLIENT_ID.into()),
        (
            "MLC_LOOKER_CLIENT_SECRET",
            SANDBOX_LOOKER_CLIENT_SECRET.into(),
        ),
        ("MLC_D365_TENANT_ID", SANDBOX_TENANT.into()),
        ("MLC_D365_CLIENT_ID", SANDBOX_CLIENT_ID.into()),
        ("MLC_D365_CLIENT_SECRET", SANDBOX_CLIENT_SECRET.into()),
    ]
}

pub fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Every backtick-quoted `ml-connector …` command in `text`, as argument lists (without the
/// program name). Paths in these tests hold no spaces, so splitting on whitespace is exact.
pub fn suggested(text: &str) -> Vec<Vec<String>> {
    text.split('`')
        .enumerate()
        .filter(|(i, p)| i % 2 == 1 && p.starts_with("ml-connector "))
        .map(|(_, p)| p.split_whitespace().skip(1).map(str::to_string).collect())
        .collect()
}

/// The run id after "run " in a run report's first line.
pub fn run_id(text: &str) -> String {
    text.split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .expect("a run id")
        .to_string()
}
