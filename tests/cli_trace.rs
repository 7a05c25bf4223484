//! `trace` through the real binary: a line reference leads to the run that wrote the line, not
//! to a later rerun of the same data, and the query definition is readable in both outputs.
#![cfg(feature = "sandbox")]

mod cli_support;
mod common;

use cli_support::{args, cli, run_id, sandbox_env, text, write_config};
use common::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_names_the_run_that_created_the_line() {
    let w = World::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&w, dir.path());
    let store = dir.path().join("audit.sqlite");
    let (c, s) = (cfg.to_str().unwrap(), store.to_str().unwrap());
    let first = cli(args(&["run", "--config", c, "--store", s]), sandbox_env()).await;
    let t = text(&first);
    assert_eq!(first.status.code(), Some(0), "{t}");
    let creator = run_id(&t);
    // A rerun of the same data: already posted, same run key, nothing written.
    let again = cli(args(&["run", "--config", c, "--store", s]), sandbox_env()).await;
    let t2 = text(&again);
    assert!(t2.contains("ALREADY POSTED"), "{t2}");
    let rerun = run_id(&t2);
    assert_ne!(creator, rerun);

    // The reference at the start of a line's Text, as D365 shows it.
    let show = cli(args(&["show", &creator, "--json", "--store", s]), vec![]).await;
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
    let text3 = v["lines"][2]["line"]["text"].as_str().unwrap().to_string();
    let reference = text3.split_whitespace().next().unwrap().to_string();

    let out = cli(args(&["trace", &reference, "--store", s]), vec![]).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&creator),
        "trace must name the creating run {creator}:\n{t}"
    );
    assert!(!t.contains(&rerun), "not the rerun {rerun}:\n{t}");
    assert!(!t.contains("{\""), "no raw JSON in the text output:\n{t}");
    assert!(t.contains("query fields"), "{t}");

    let out = cli(args(&["trace", &reference, "--json", "--store", s]), vec![]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["run"]["run_id"], creator.as_str());
    assert!(
        v["run"]["source"]["definition"].is_object(),
        "definition is an object, not JSON in a string: {}",
        v["run"]["source"]
    );
    assert!(v["source_definition"]["definition"].is_object());
}
