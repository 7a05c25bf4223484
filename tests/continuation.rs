//! Runs that outgrow one Lambda invocation finish by themselves, on DynamoDB (the local moto
//! server of `.ci/test`): a scheduled run far larger than one invocation's deadline stops in time,
//! queues a replay request item, and the replay function (fed the request items as the stream
//! would feed them) continues it, invocation after invocation, until every line is in D365 exactly
//! once, with no manual step. The chain is bounded: at its maximum the run waits for a person,
//! and the audit says so.
#![cfg(all(feature = "aws", feature = "sandbox"))]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use chrono::{Duration, Utc};
use common::{sandbox_secrets, World};
use ml_connector::domain::run::RunStatus;
use ml_connector::lambda::continuation::KIND;
use ml_connector::lambda::local::{MemConfigs, MemSecrets};
use ml_connector::lambda::replay::handle_replay;
use ml_connector::lambda::scheduler::{handle_schedule, ScheduleInput};
use ml_connector::lambda::{Invocation, LambdaContext, Settings};
use ml_connector::sandbox::d365::CostModel;
use ml_connector::store::dynamodb::DynamoStore;
use ml_connector::store::{ConfigStore, Store};

/// One invocation's time: long enough for a few `$batch` requests of the slow D365 below, far
/// too short for the whole run.
const INVOCATION: i64 = 25;

struct Setup {
    world: World,
    ctx: LambdaContext,
    store: Arc<DynamoStore>,
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// 300 fee rows (334 lines in vouchers of 10), 20 lines per `$batch`, and an F&O that takes
/// 500 ms per request and 100 ms per line: 17 writes of 2.5 s, about 42 s of writing, several
/// invocations' worth (few audit items, so the time goes to D365, not to the local DynamoDB).
async fn setup(max_continuations: u32) -> Setup {
    let (mut world, _) = World::with_fee_rows_look(300, "91", "Fees, large").await;
    world.config.journal.max_voucher_lines = 10;
    world.config.d365.batch_operations = 20;
    world.config.check().expect("valid config");
    world.d365.set_cost_model(CostModel {
        request_overhead: StdDuration::from_millis(500),
        batch_line_cost: StdDuration::from_millis(100),
        serialise_journal_writes: true,
        ..CostModel::default()
    });
    let (client, table) = common::aws::fresh_table("continuation").await;
    let store = Arc::new(DynamoStore::new(client.clone(), table.clone()));
    let configs = MemConfigs::default();
    let toml = toml::to_string(&world.config).expect("config to toml");
    configs
        .put_config(&world.config.instance, &world.config.version(), &toml)
        .await
        .unwrap();
    let settings = Settings {
        deadline_margin: StdDuration::from_secs(1),
        max_continuations,
        ..Settings::default()
    };
    let ctx = LambdaContext::new(
        store.clone(),
        Arc::new(configs),
        Arc::new(MemSecrets::with(
            &world.config.instance,
            sandbox_secrets("unused-webhook-secret-0123456789abcdef"),
        )),
        settings,
    )
    .with_continuations(store.clone());
    Setup {
        world,
        ctx,
        store,
        client,
        table,
    }
}

fn invocation(n: usize) -> Invocation {
    Invocation::with_timeout(format!("inv-{n}"), Duration::seconds(INVOCATION))
}

/// The replay request items of `run_id` in the table, as (sort key, stream event) pairs: what
/// the DynamoDB stream would deliver for each item's INSERT.
async fn requests(s: &Setup, run_id: &str) -> Vec<(String, StreamEvent)> {
    let out = s
        .client
        .query()
        .table_name(&s.table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(
            ":pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("REPLAY#{run_id}")),
        )
        .send()
        .await
        .expect("query replay requests");
    let mut v = Vec::new();
    for (i, item) in out.items().iter().enumerate() {
        let text = |k: &str| {
            item.get(k)
                .and_then(|a| a.as_s().ok())
                .cloned()
                .unwrap_or_default()
        };
        let sk = text("sk");
        let ev = serde_json::json!({ "Records": [{
            "eventID": format!("{run_id}-{sk}"),
            "eventName": "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "eu-west-1",
            "dynamodb": {
                "Keys": { "pk": { "S": text("pk") }, "sk": { "S": sk.clone() } },
                "NewImage": {
                    "pk": { "S": text("pk") },
                    "sk": { "S": sk.clone() },
                    "kind": { "S": text("kind") },
                    "run_id": { "S": text("run_id") },
                    "requested_by": { "S": text("requested_by") }
                },
                "SequenceNumber": format!("{:021}", i + 1),
                "SizeBytes": 200,
                "StreamViewType": "NEW_AND_OLD_IMAGES"
            }
        }]});
        v.push((sk, serde_json::from_value(ev).expect("stream event")));
    }
    v
}

/// Fires the schedule once, then plays the stream: every new replay request item goes to the
/// replay function, each in its own short invocation. Returns the run id and the number of
/// replay invocations.
async fn schedule_and_follow(s: &Setup) -> (String, usize) {
    let input = ScheduleInput {
        instance: s.world.config.instance.clone(),
        scheduled_time: Utc::now(),
        execution_id: Some("exec-1".into()),
    };
    let answer = handle_schedule(&s.ctx, input, &invocation(0))
        .await
        .expect("the schedule is handed on, not retried");
    assert_eq!(answer["status"], "interrupted", "{answer}");
    assert!(
        answer["continuation"]
            .as_str()
            .is_some_and(|c| c.contains("continuation 1 of at most")),
        "{answer}"
    );
    let run_id = answer["run_id"].as_str().expect("run id").to_string();
    let mut seen = BTreeSet::new();
    let mut replays = 0;
    for round in 1..=40 {
        let fresh: Vec<_> = requests(s, &run_id)
            .await
            .into_iter()
            .filter(|(sk, _)| !seen.contains(sk))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for (sk, ev) in fresh {
            seen.insert(sk);
            replays += 1;
            // The stream delivers the record, and delivers it again while the function reports
            // it failed (a transient problem, say the store timing out), like Lambda's event
            // source mapping. A continuation is a new item, never such a retry.
            let mut attempt = 0;
            loop {
                attempt += 1;
                let r = handle_replay(&s.ctx, ev.clone(), &invocation(round * 10 + attempt))
                    .await
                    .expect("replay batch");
                if r.batch_item_failures.is_empty() {
                    break;
                }
                if attempt == 3 {
                    let events = s.store.events(&run_id).await.unwrap();
                    let tail: Vec<String> = events
                        .iter()
                        .rev()
                        .take(6)
                        .map(|e| format!("{} {} {}", e.level, e.kind, e.message))
                        .collect();
                    panic!(
                        "the replay record failed {attempt} times; latest audit events: {tail:#?}"
                    );
                }
            }
        }
    }
    (run_id, replays)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_larger_than_one_invocation_finishes_by_itself_exactly_once() {
    let s = setup(16).await;
    let (run_id, replays) = schedule_and_follow(&s).await;

    let run = s.store.get_run(&run_id).await.unwrap().expect("run");
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.message);
    assert!(
        replays >= 2,
        "the run needed several invocations ({replays} continuation(s))"
    );
    // Exactly once: every planned line once, one header, nothing else.
    let lines = s.world.d365.lines();
    let audited = s.store.lines(&run_id).await.unwrap();
    assert_eq!(lines.len(), audited.len(), "every planned line in D365");
    let refs: BTreeSet<&str> = lines
        .iter()
        .map(|l| l.text.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(refs.len(), lines.len(), "no line twice");
    assert_eq!(s.world.d365.headers().len(), 1);
    let net: rust_decimal::Decimal = lines.iter().map(|l| l.debit - l.credit).sum();
    assert!(net.is_zero(), "the journal balances");
    // Every continuation is in the audit, numbered.
    let chain: Vec<String> = s
        .store
        .events(&run_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == KIND)
        .map(|e| e.message)
        .collect();
    assert_eq!(chain.len(), replays, "{chain:#?}");
    for (i, m) in chain.iter().enumerate() {
        assert!(
            m.contains(&format!("continuation {} of at most 16", i + 1)),
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_is_bounded_and_says_so() {
    let s = setup(1).await;
    let (run_id, replays) = schedule_and_follow(&s).await;
    assert_eq!(replays, 1, "one continuation at most");
    let run = s.store.get_run(&run_id).await.unwrap().expect("run");
    assert_eq!(
        run.status,
        RunStatus::Interrupted,
        "the rest waits for a person"
    );
    let gave_up = s
        .store
        .events(&run_id)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == KIND && e.level == "error")
        .expect("the audit says the chain gave up");
    assert!(
        gave_up.message.contains("maximum")
            && gave_up.message.contains(&format!(
                "ml-connector replay {run_id} --request --table TABLE"
            )),
        "{}",
        gave_up.message
    );
    // What was written is in D365 once; nothing twice.
    let lines = s.world.d365.lines();
    let refs: BTreeSet<&str> = lines
        .iter()
        .map(|l| l.text.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(refs.len(), lines.len(), "no line twice");
}
