//! The store conformance suite against `DynamoStore` on a local moto server (started by
//! `.ci/test`), plus DynamoDB-specific behaviour: the table contract, item layout and limits,
//! operator attributes on the run item, replay requests, configuration items, and locks raced
//! from two clients. Each test gets a table of its own.
//!
//! Not tested here, because moto cannot show it: `update_run`'s optimistic concurrency under
//! parallel writers. moto 5.2.5 does not isolate concurrent `TransactWriteItems` (8 parallel
//! `update_run`s of one run applied 8 of 9 revisions: two passed the same `rev` condition), while
//! DynamoDB serialises them. Lock races use single conditional `PutItem`s, which moto handles.
#![cfg(feature = "aws")]

#[macro_use]
mod store_suite;
mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use aws_sdk_dynamodb::types::{AttributeValue, KeyType, StreamViewType, TimeToLiveStatus};
use chrono::{DateTime, Utc};
use ml_connector::domain::run::RunStatus;
use ml_connector::store::dynamodb::{DynamoStore, MAX_ITEM_BYTES};
use ml_connector::store::{ConfigStore, LockOutcome, ReplayRequests, Store, StoreError};
use store_suite::{at, event, fresh_run, json, line, row, run, uid};

/// A store on a new table of its own.
async fn fresh_store() -> DynamoStore {
    common::aws::dynamo_store("mlc-store").await
}

mod suite {
    store_suite!(|| async { Box::new(super::fresh_store().await) });
}

type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

async fn raw_get(store: &DynamoStore, pk: &str, sk: &str) -> Option<Item> {
    store
        .client()
        .get_item()
        .table_name(store.table())
        .key("pk", s(pk))
        .key("sk", s(sk))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
}

/// Every item of partition `pk`, in key order.
async fn raw_partition(store: &DynamoStore, pk: &str) -> Vec<Item> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = store
            .client()
            .query()
            .table_name(store.table())
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("Query");
        out.extend(page.items.unwrap_or_default());
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return out,
        }
    }
}

fn attr_s<'a>(item: &'a Item, name: &str) -> &'a str {
    match item.get(name) {
        Some(AttributeValue::S(v)) => v,
        other => panic!("{name}: expected S, got {other:?}"),
    }
}

fn attr_n(item: &Item, name: &str) -> i64 {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().expect("integer"),
        other => panic!("{name}: expected N, got {other:?}"),
    }
}

/// Rough DynamoDB item size: attribute names plus string/number values.
fn approx_size(item: &Item) -> usize {
    item.iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    AttributeValue::S(x) | AttributeValue::N(x) => x.len(),
                    _ => 1,
                }
        })
        .sum()
}

#[tokio::test]
async fn table_matches_the_contract() {
    let store = fresh_store().await;
    let table = store
        .client()
        .describe_table()
        .table_name(store.table())
        .send()
        .await
        .expect("DescribeTable")
        .table
        .expect("table");
    let keys: Vec<(String, KeyType)> = table
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name().to_string(), k.key_type().clone()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("pk".to_string(), KeyType::Hash),
            ("sk".to_string(), KeyType::Range)
        ]
    );
    assert!(table.global_secondary_indexes().is_empty(), "no GSIs");
    assert!(table.local_secondary_indexes().is_empty(), "no LSIs");
    let stream = table.stream_specification().expect("stream");
    assert!(stream.stream_enabled());
    assert_eq!(
        stream.stream_view_type(),
        Some(&StreamViewType::NewAndOldImages)
    );
    let ttl = store
        .client()
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .expect("DescribeTimeToLive")
        .time_to_live_description
        .expect("ttl");
    assert_eq!(ttl.attribute_name(), Some("expiration"));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
}

#[tokio::test]
async fn a_thousand_rows_and_lines_are_one_item_each_and_round_trip() {
    const N: usize = 1000;
    let store = fresh_store().await;
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    let rows: Vec<_> = (0..N)
        .map(|i| row(&r.run_id, i, &format!("{i}.01")))
        .collect();
    // Two legal entities, interleaved, out of order.
    let lines: Vec<_> = (1..=N as u32)
        .rev()
        .map(|i| {
            let le = if i % 2 == 0 { "usmf" } else { "demf" };
            line(&r.run_id, le, i, &format!("-{i}.5"))
        })
        .collect();
    store.put_source_rows(&rows).await.expect("1000 rows");
    store.put_lines(&lines).await.expect("1000 lines");
    for i in 0..3 {
        store
            .append_event(&event(&r.run_id, at(i), "progress"))
            .await
            .expect("event");
    }

    let got_rows = store.source_rows(&r.run_id).await.expect("rows");
    assert_eq!(got_rows.len(), N);
    assert!(got_rows.iter().zip(&rows).all(|(a, b)| json(a) == json(b)));
    let got_lines = store.lines(&r.run_id).await.expect("lines");
    assert_eq!(got_lines.len(), N);
    let mut expected = lines.clone();
    expected.sort_by(|a, b| {
        (a.legal_entity.as_str(), a.line.line_no).cmp(&(b.legal_entity.as_str(), b.line.line_no))
    });
    assert!(got_lines
        .iter()
        .zip(&expected)
        .all(|(a, b)| json(a) == json(b)));
    let l999 = store
        .find_line_by_ref(&r.keys.run_key, 999)
        .await
        .expect("find")
        .expect("line 999");
    assert_eq!(json(&l999), json(&line(&r.run_id, "demf", 999, "-999.5")));

    // One item per row, line and event (plus the run item and the event counter).
    let items = raw_partition(&store, &format!("RUN#{}", r.run_id)).await;
    let kinds = items.iter().fold(HashMap::new(), |mut m, i| {
        *m.entry(attr_s(i, "kind").to_string()).or_insert(0) += 1;
        m
    });
    assert_eq!(
        kinds,
        HashMap::from([
            ("run".to_string(), 1),
            ("source_row".to_string(), N),
            ("line".to_string(), N),
            ("event".to_string(), 3),
            ("event_seq".to_string(), 1),
        ])
    );
    let largest = items.iter().map(approx_size).max().expect("items");
    assert!(largest < 4096, "items stay small: largest {largest} bytes");
}

#[tokio::test]
async fn an_oversized_row_is_refused_before_anything_is_written() {
    let store = fresh_store().await;
    let r = fresh_run(at(0));
    let mut big = row(&r.run_id, 1, "1");
    big.errors = vec!["x".repeat(MAX_ITEM_BYTES)];
    let batch = [row(&r.run_id, 0, "1"), big];
    match store.put_source_rows(&batch).await {
        Err(e @ StoreError::Backend { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("source row 1"), "{msg}")
        }
        other => panic!("expected Backend, got {other:?}"),
    }
    assert!(store.source_rows(&r.run_id).await.expect("rows").is_empty());
    // Just below the limit is fine.
    let mut large = row(&r.run_id, 2, "1");
    large.errors = vec!["y".repeat(MAX_ITEM_BYTES - 2048)];
    store
        .put_source_rows(std::slice::from_ref(&large))
        .await
        .expect("a large row");
    assert_eq!(
        store.source_rows(&r.run_id).await.expect("rows"),
        vec![large]
    );
}

#[tokio::test]
async fn run_item_keeps_the_operators_replay_requested_flag_across_updates() {
    let store = fresh_store().await;
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    let pk = format!("RUN#{}", r.run_id);
    // What an operator does in the console.
    store
        .client()
        .update_item()
        .table_name(store.table())
        .key("pk", s(&pk))
        .key("sk", s("RUN"))
        .update_expression("SET replay_requested = :t")
        .expression_attribute_values(":t", AttributeValue::Bool(true))
        .send()
        .await
        .expect("operator update");

    let mut done = r.clone();
    done.status = RunStatus::Failed;
    done.message = Some("D365 timed out".to_string());
    done.finished_at = Some(at(90));
    store.update_run(&done).await.expect("update");
    done.status = RunStatus::Completed;
    store.update_run(&done).await.expect("second update");

    let item = raw_get(&store, &pk, "RUN").await.expect("run item");
    assert_eq!(
        item.get("replay_requested"),
        Some(&AttributeValue::Bool(true))
    );
    assert_eq!(attr_s(&item, "status"), "completed");
    assert_eq!(attr_s(&item, "kind"), "run");
    assert_eq!(attr_n(&item, "rev"), 3);
    assert_eq!(
        store.get_run(&r.run_id).await.expect("get"),
        Some(done.clone())
    );
    // The index copies follow the update.
    assert_eq!(
        store.list_runs(Some(&r.instance), 5).await.expect("list"),
        vec![done]
    );
}

/// An SDK retry of `insert_run` whose first attempt succeeded (its answer lost to a timeout)
/// finds the run item already there. DynamoDB dedupes the retry by the SDK's
/// `ClientRequestToken`; a local server such as moto does not, so the adapter reads the item
/// back: its own record at revision 1 is this insert, anything else a duplicate.
#[tokio::test]
async fn a_retried_run_insert_is_the_same_insert_not_a_duplicate() {
    let store = fresh_store().await;
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("first insert");
    store.insert_run(&r).await.expect("the same record again");
    assert_eq!(
        store.get_run(&r.run_id).await.expect("get"),
        Some(r.clone())
    );
    let mut updated = r.clone();
    updated.status = RunStatus::Failed;
    store.update_run(&updated).await.expect("update");
    match store.insert_run(&r).await {
        Err(StoreError::Duplicate(_)) => {}
        other => panic!("a stale record is a duplicate, got {other:?}"),
    }
    assert_eq!(store.get_run(&r.run_id).await.expect("get"), Some(updated));
}

/// A lock `PutItem` the SDK retried after its answer was lost finds the very item it wrote: that
/// is this caller's lock. The same owner asking again later (other times) is still told it is
/// in progress, and so is anyone else.
#[tokio::test]
async fn a_retried_lock_acquire_is_the_same_acquire() {
    let store = fresh_store().await;
    let key = uid("lock");
    let first = store.acquire_lock(&key, "owner-a", at(0), at(60), at(3600));
    assert_eq!(first.await.expect("acquire"), LockOutcome::Acquired);
    let retried = store.acquire_lock(&key, "owner-a", at(0), at(60), at(3600));
    assert_eq!(retried.await.expect("retry"), LockOutcome::Acquired);
    let held = LockOutcome::InProgress {
        owner: "owner-a".to_string(),
        until: at(60),
    };
    let later = store.acquire_lock(&key, "owner-a", at(5), at(65), at(3605));
    assert_eq!(later.await.expect("later"), held);
    let other = store.acquire_lock(&key, "owner-b", at(0), at(60), at(3600));
    assert_eq!(other.await.expect("other"), held);
}

#[tokio::test]
async fn update_run_moves_index_items_when_keys_change() {
    let store = fresh_store().await;
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    store
        .put_lines(&[line(&r.run_id, "usmf", 1, "1")])
        .await
        .expect("lines");
    let mut moved = r.clone();
    moved.started_at = at(500);
    moved.keys.period_key = uid("pk");
    moved.keys.run_key = uid("rk");
    store.update_run(&moved).await.expect("update");

    assert!(store
        .runs_for_period(&r.instance, &r.keys.period_key)
        .await
        .expect("old period")
        .is_empty());
    assert_eq!(
        store
            .runs_for_period(&r.instance, &moved.keys.period_key)
            .await
            .expect("new period"),
        vec![moved.clone()]
    );
    assert_eq!(
        store
            .find_line_by_ref(&r.keys.run_key, 1)
            .await
            .expect("old"),
        None
    );
    assert!(store
        .find_line_by_ref(&moved.keys.run_key, 1)
        .await
        .expect("new")
        .is_some());
    let index = raw_partition(&store, &format!("INSTANCE#{}", r.instance)).await;
    assert_eq!(index.len(), 1, "the old index item is gone");
}

#[tokio::test]
async fn listing_breaks_ties_by_run_id_across_pages() {
    let store = fresh_store().await;
    let inst = uid("inst");
    let mut runs: Vec<_> = (0..30)
        .map(|i| run(&uid(&format!("run{i:02}")), &inst, ("pk", "rk"), at(0)))
        .collect();
    runs.push(run(&uid("newest"), &inst, ("pk", "rk"), at(1)));
    for r in &runs {
        store.insert_run(r).await.expect("insert");
    }
    let mut expected: Vec<_> = runs[..30].iter().map(|r| r.run_id.clone()).collect();
    expected.sort();
    expected.insert(0, runs[30].run_id.clone());
    for limit in [1, 2, 5, 17, 31, 100] {
        let got: Vec<_> = store
            .list_runs(Some(&inst), limit)
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(got, expected[..limit.min(31)], "limit {limit}");
    }
    let period = store.runs_for_period(&inst, "pk").await.expect("period");
    assert_eq!(
        period.into_iter().map(|r| r.run_id).collect::<Vec<_>>(),
        expected
    );
    let all = store.list_runs(None, 4).await.expect("all");
    assert_eq!(
        all.into_iter().map(|r| r.run_id).collect::<Vec<_>>(),
        expected[..4]
    );
}

#[tokio::test]
async fn request_replay_writes_exactly_the_documented_item() {
    let store = fresh_store().await;
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    let before = Utc::now();
    store
        .request_replay(&r.run_id, "alice@example.com")
        .await
        .expect("request");
    store
        .request_replay(&r.run_id, "bob@example.com")
        .await
        .expect("second request");
    let after = Utc::now();

    let items = raw_partition(&store, &format!("REPLAY#{}", r.run_id)).await;
    assert_eq!(items.len(), 2, "one item per request: {items:?}");
    let by: BTreeSet<&str> = items.iter().map(|i| attr_s(i, "requested_by")).collect();
    assert_eq!(by, BTreeSet::from(["alice@example.com", "bob@example.com"]));
    for item in &items {
        let names: BTreeSet<&str> = item.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            BTreeSet::from([
                "pk",
                "sk",
                "kind",
                "run_id",
                "requested_by",
                "requested_at",
                "expiration"
            ])
        );
        assert_eq!(attr_s(item, "kind"), "replay_request");
        assert_eq!(attr_s(item, "run_id"), r.run_id);
        let requested_at = attr_s(item, "requested_at");
        assert_eq!(attr_s(item, "sk"), format!("REQUEST#{requested_at}"));
        let t: DateTime<Utc> = DateTime::parse_from_rfc3339(requested_at)
            .expect("rfc3339")
            .with_timezone(&Utc);
        assert!(
            t >= before - chrono::Duration::milliseconds(1) && t <= after,
            "{t}"
        );
        let expiration = attr_n(item, "expiration");
        assert_eq!(expiration, t.timestamp() + 30 * 86_400);
    }
    // The run item itself is untouched.
    assert_eq!(store.get_run(&r.run_id).await.expect("get"), Some(r));

    // A run that does not exist: refused, nothing written.
    let missing = uid("run");
    match store.request_replay(&missing, "alice@example.com").await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(raw_partition(&store, &format!("REPLAY#{missing}"))
        .await
        .is_empty());
}

#[tokio::test]
async fn config_round_trip_and_overwrite() {
    let store = fresh_store().await;
    let inst = uid("inst");
    let other = uid("inst");
    assert_eq!(store.get_config(&inst).await.expect("get"), None);
    let v1 = "instance = \"fees\"\n# «ünïcode» ok\n";
    store
        .put_config(&inst, "cfg-0001", v1)
        .await
        .expect("put v1");
    assert_eq!(
        store.get_config(&inst).await.expect("get"),
        Some(("cfg-0001".to_string(), v1.to_string()))
    );
    let v2 = "instance = \"fees\"\nschedule = \"weekly\"\n";
    store
        .put_config(&inst, "cfg-0002", v2)
        .await
        .expect("put v2");
    assert_eq!(
        store.get_config(&inst).await.expect("get"),
        Some(("cfg-0002".to_string(), v2.to_string()))
    );
    assert_eq!(store.get_config(&other).await.expect("get"), None);
    // Earlier versions stay readable for the audit (each run records the version it used).
    let old = raw_get(&store, &format!("CONFIG#{inst}"), "VERSION#cfg-0001")
        .await
        .expect("history item");
    assert_eq!(attr_s(&old, "toml"), v1);
}

#[tokio::test]
async fn lock_items_carry_the_ttl_attribute() {
    let store = fresh_store().await;
    let key = uid("lock");
    store
        .acquire_lock(&key, "me", at(0), at(60), at(3600))
        .await
        .expect("acquire");
    let item = raw_get(&store, &format!("LOCK#{key}"), "LOCK")
        .await
        .expect("lock item");
    assert_eq!(attr_n(&item, "expiration"), at(3600).timestamp());
    assert_eq!(
        attr_n(&item, "in_progress_expiration"),
        at(60).timestamp_millis()
    );
    assert_eq!(attr_s(&item, "status"), "INPROGRESS");
    // A renewal moves the TTL with the lease, so TTL never deletes a renewed lock.
    store
        .renew_lock(&key, "me", at(30), at(90), at(5400))
        .await
        .expect("renew");
    let item = raw_get(&store, &format!("LOCK#{key}"), "LOCK")
        .await
        .expect("lock item");
    assert_eq!(attr_n(&item, "expiration"), at(5400).timestamp());
    assert_eq!(
        attr_n(&item, "in_progress_expiration"),
        at(90).timestamp_millis()
    );
    assert_eq!(attr_n(&item, "expires_at_ms"), at(5400).timestamp_millis());
    store
        .complete_lock(&key, "me", "done", at(7200))
        .await
        .expect("complete");
    let item = raw_get(&store, &format!("LOCK#{key}"), "LOCK")
        .await
        .expect("lock item");
    assert_eq!(attr_n(&item, "expiration"), at(7200).timestamp());
    assert_eq!(attr_s(&item, "status"), "COMPLETED");
}

/// Refused webhook requests can be made by anyone: each must be one small item that expires,
/// with no per-request counter item (bounded cost, no unbounded growth).
#[tokio::test]
async fn refused_webhook_requests_are_one_small_expiring_item_each() {
    use ml_connector::lambda::webhook::REJECTED_AUDIT_ID;
    use ml_connector::store::dynamodb::{MAX_REFUSAL_MESSAGE_CHARS, REFUSED_REQUEST_TTL_DAYS};
    let store = fresh_store().await;
    let long = "x".repeat(5_000);
    let messages = ["first refusal", long.as_str(), "third refusal"];
    let before = Utc::now().timestamp();
    for (i, m) in messages.iter().enumerate() {
        let mut e = event(REJECTED_AUDIT_ID, at(i as i64), m);
        e.level = "warn".into();
        e.kind = "webhook_refused".into();
        store.append_event(&e).await.expect("append refusal");
    }
    let after = Utc::now().timestamp();
    let pk = format!("RUN#{REJECTED_AUDIT_ID}");
    let items = raw_partition(&store, &pk).await;
    assert_eq!(
        items.len(),
        3,
        "one item per refused request, no counter item"
    );
    let ttl = REFUSED_REQUEST_TTL_DAYS * 86_400;
    for item in &items {
        assert!(attr_s(item, "sk").starts_with("EVENT#"));
        let exp = attr_n(item, "expiration");
        assert!(
            exp >= before + ttl && exp <= after + ttl + 1,
            "expiration {exp} not {REFUSED_REQUEST_TTL_DAYS} days from now"
        );
        assert!(approx_size(item) <= 1024, "{} bytes", approx_size(item));
    }
    let events = store.events(REJECTED_AUDIT_ID).await.expect("events");
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].message, "first refusal");
    assert_eq!(events[2].message, "third refusal");
    assert_eq!(
        events[1].message.chars().count(),
        MAX_REFUSAL_MESSAGE_CHARS + 1
    );
    assert!(events[1].message.ends_with('…'));
    assert_eq!(events[0].kind, "webhook_refused");

    // A run's own events still take the counter and do not expire.
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert run");
    store
        .append_event(&event(&r.run_id, at(1), "step"))
        .await
        .expect("append");
    let run_items = raw_partition(&store, &format!("RUN#{}", r.run_id)).await;
    let ev = run_items
        .iter()
        .find(|i| attr_s(i, "sk").starts_with("EVENT#"))
        .expect("event item");
    assert!(!ev.contains_key("expiration"));
    assert!(run_items.iter().any(|i| attr_s(i, "sk") == "SEQ#EVENT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clients_race_for_a_lock() {
    const TASKS: usize = 16;
    let first = fresh_store().await;
    // A second store with a client of its own (its own connection pool), on the same table.
    let second = DynamoStore::new(common::aws::dynamodb().await, first.table());
    let stores = Arc::new([first, second]);
    for round in 0..5 {
        let key = uid("lock");
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..TASKS {
            let (stores, barrier, key) = (Arc::clone(&stores), Arc::clone(&barrier), key.clone());
            tasks.spawn(async move {
                let owner = format!("owner-{i:02}");
                barrier.wait().await;
                let got = stores[i % 2]
                    .acquire_lock(&key, &owner, at(0), at(60), at(3600))
                    .await
                    .expect("acquire");
                (owner, got)
            });
        }
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("task") {
                (owner, LockOutcome::Acquired) => winners.push(owner),
                (_, LockOutcome::InProgress { owner, .. }) => losers.push(owner),
                (_, other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert!(losers.iter().all(|o| *o == winners[0]), "round {round}");
        // The winner completes through the other client; both see it completed.
        let i: usize = winners[0]["owner-".len()..].parse().expect("owner number");
        stores[(i + 1) % 2]
            .complete_lock(&key, &winners[0], "posted", at(3600))
            .await
            .expect("complete");
        for store in stores.iter() {
            assert_eq!(
                store
                    .acquire_lock(&key, "late", at(1), at(61), at(3601))
                    .await
                    .expect("acquire"),
                LockOutcome::Completed {
                    result: "posted".to_string()
                }
            );
        }
    }
}

#[tokio::test]
async fn corrupt_items_are_reported_not_panicked_on() {
    let store = fresh_store().await;
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    store
        .put_lines(&[line(&r.run_id, "usmf", 1, "1")])
        .await
        .expect("lines");
    let key = uid("lock");
    store
        .acquire_lock(&key, "a", at(0), at(60), at(3600))
        .await
        .expect("lock");
    let set = |pk: String, sk: &'static str, attr: &'static str, v: AttributeValue| {
        let store = &store;
        async move {
            store
                .client()
                .update_item()
                .table_name(store.table())
                .key("pk", s(&pk))
                .key("sk", s(sk))
                .update_expression("SET #a = :v")
                .expression_attribute_names("#a", attr)
                .expression_attribute_values(":v", v)
                .send()
                .await
                .expect("corrupt");
        }
    };
    let run_pk = format!("RUN#{}", r.run_id);
    set(run_pk.clone(), "RUN", "record", s("{\"run_id\": 42")).await;
    set(
        run_pk.clone(),
        "LINE#0000000001#usmf",
        "record",
        AttributeValue::N("1".into()),
    )
    .await;
    set(format!("LOCK#{key}"), "LOCK", "status", s("BOGUS")).await;

    let corrupt = |what: &str, r: Result<(), StoreError>| match r {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    };
    corrupt("get_run", store.get_run(&r.run_id).await.map(drop));
    corrupt("lines", store.lines(&r.run_id).await.map(drop));
    corrupt(
        "find_line_by_ref",
        store.find_line_by_ref(&r.keys.run_key, 1).await.map(drop),
    );
    corrupt("update_run", store.update_run(&r).await);
    corrupt(
        "acquire_lock",
        store
            .acquire_lock(&key, "b", at(1), at(61), at(3601))
            .await
            .map(drop),
    );
}

/// Event items written before level, kind and payload were typed (including a kind and a level
/// this version does not know), laid out exactly as that version wrote them (counter item and
/// `EVENT#{seq:020}` keys), read back with nothing lost.
#[tokio::test]
async fn old_format_event_items_read_back_unchanged() {
    let store = fresh_store().await;
    let run_id = store_suite::uid("run");
    let rows = store_suite::old_event_rows(&run_id);
    for (i, json) in rows.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(json).expect("json");
        let level = v["level"].as_str().expect("level").to_string();
        let when = DateTime::parse_from_rfc3339(v["at"].as_str().expect("at"))
            .expect("rfc3339")
            .with_timezone(&Utc)
            .format("%Y-%m-%dT%H:%M:%S%.9fZ")
            .to_string();
        store
            .client()
            .put_item()
            .table_name(store.table())
            .item("pk", s(&format!("RUN#{run_id}")))
            .item("sk", s(&format!("EVENT#{:020}", i + 1)))
            .item("kind", s("event"))
            .item("run_id", s(&run_id))
            .item("at", s(&when))
            .item("level", s(&level))
            .item("record", s(json))
            .send()
            .await
            .expect("raw PutItem");
    }
    store
        .client()
        .put_item()
        .table_name(store.table())
        .item("pk", s(&format!("RUN#{run_id}")))
        .item("sk", s("SEQ#EVENT"))
        .item("kind", s("event_seq"))
        .item("seq", AttributeValue::N(rows.len().to_string()))
        .send()
        .await
        .expect("raw PutItem counter");
    let events = store.events(&run_id).await.expect("events");
    store_suite::assert_old_events_read(&run_id, &events);

    // New events after the old ones keep their order and their typed payload.
    let mut next = event(&run_id, at(10), "reversed by run r-9 (run key k-9)");
    next.kind = ml_connector::domain::run::EventKind::Reversed;
    next.payload = Some(
        ml_connector::domain::run::EventData::Reversed {
            by_run_id: "r-9".into(),
            by_run_key: "k-9".into(),
        }
        .into(),
    );
    store.append_event(&next).await.expect("append");
    let events = store.events(&run_id).await.expect("events");
    assert_eq!(events.len(), rows.len() + 1);
    store_suite::assert_old_events_read(&run_id, &events[..rows.len()]);
    assert_eq!(events[rows.len()], next);
    assert!(events[rows.len()].reversed_by("r-9"));
}
