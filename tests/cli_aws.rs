//! Operator commands against the deployed-table layout, on the local moto server `.ci/test`
//! starts: `config push`, `replay --request`, `runs`/`show --table`.
#![cfg(feature = "aws")]

mod common;

use std::process::Output;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use common::EXAMPLE;
use ml_connector::domain::run::{RunKeys, RunRecord, RunStatus, RunTotals};
use ml_connector::domain::source::SourceRef;
use ml_connector::store::dynamodb::DynamoStore;
use ml_connector::store::{ConfigStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_ml-connector");

async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .env_remove("MLC_TABLE")
            .output()
            .expect("run ml-connector")
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_push_validates_and_stores_a_version() {
    let (client, table) = common::aws::fresh_table("cli-config").await;
    let dir = tempfile::tempdir().unwrap();

    let good = dir.path().join("good.toml");
    std::fs::write(&good, EXAMPLE).unwrap();
    let out = cli(s(&[
        "config",
        "push",
        good.to_str().unwrap(),
        "--table",
        &table,
    ]))
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let expected = ml_connector::domain::config::InstanceConfig::from_toml(EXAMPLE)
        .unwrap()
        .version();
    assert!(t.contains(&expected), "{t}");
    let store = DynamoStore::new(client.clone(), &table);
    let (version, toml) = store
        .get_config("weekly-marketplace-fees")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(version, expected);
    assert_eq!(toml, EXAMPLE);

    // An invalid config is refused (exit 2) and the stored one is unchanged.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, EXAMPLE.replace("journal_name", "journal_nam")).unwrap();
    let out = cli(s(&[
        "config",
        "push",
        bad.to_str().unwrap(),
        "--table",
        &table,
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("journal_nam"));
    let (still, _) = store
        .get_config("weekly-marketplace-fees")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still, expected);

    // Without a table it says what to do.
    let out = cli(s(&["config", "push", good.to_str().unwrap()])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--table"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_request_writes_the_item_the_replay_function_listens_for() {
    let (client, table) = common::aws::fresh_table("cli-replay").await;
    let store = DynamoStore::new(client.clone(), &table);
    let run_id = format!("r-test-{:06x}", fastrand::u32(..0xffffff));
    store
        .insert_run(&RunRecord {
            run_id: run_id.clone(),
            instance: "weekly-marketplace-fees".into(),
            keys: RunKeys::derive("weekly-marketplace-fees", "2026-W47", "x"),
            source: SourceRef::Look {
                look_id: "42".into(),
            },
            period: "2026-W47".into(),
            run_date: Utc::now().date_naive(),
            config_version: "abc".into(),
            trigger: "schedule".into(),
            status: RunStatus::Failed,
            totals: RunTotals::default(),
            journals: vec![("usmf".into(), "00042".into())],
            message: Some("D365 did not accept line 6".into()),
            started_at: Utc::now(),
            finished_at: Some(Utc::now()),
        })
        .await
        .unwrap();

    let out = cli(s(&["replay", &run_id, "--request", "--table", &table])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let items = client
        .query()
        .table_name(&table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("REPLAY#{run_id}")))
        .send()
        .await
        .unwrap();
    let items = items.items();
    assert_eq!(items.len(), 1, "one replay request item");
    assert_eq!(
        items[0].get("run_id"),
        Some(&AttributeValue::S(run_id.clone()))
    );
    assert!(items[0]
        .get("sk")
        .and_then(|v| v.as_s().ok())
        .is_some_and(|sk| sk.starts_with("REQUEST#")));

    // Unknown run: refused, nothing written.
    let out = cli(s(&["replay", "r-nope", "--request", "--table", &table])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not in table"), "{}", text(&out));

    // The audit trail of the deployed table reads like the local one.
    let out = cli(s(&["runs", "--table", &table])).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).contains(&run_id) && text(&out).contains("failed"));
    let out = cli(s(&["show", &run_id, "--table", &table])).await;
    assert!(
        text(&out).contains("D365 did not accept line 6"),
        "{}",
        text(&out)
    );
}
