//! Extracts beyond Looker's 5,000-row cap: the async query-task path (create query → task →
//! bounded polling → results), against the Looker simulator over real loopback sockets, plus
//! the streaming parser on a large body.
#![cfg(feature = "sandbox")]

mod common;

use std::time::{Duration, Instant};

use common::looker_settings;
use ml_connector::domain::source::{Cell, SourceRef};
use ml_connector::looker::{
    parse_json_rows_streaming, ExtractPath, LookerClient, LookerError, LookerSettings,
};
use ml_connector::sandbox::looker::seed::{
    generated_amount, generated_fields, generated_query, GENERATED_ACCOUNTS,
};
use ml_connector::sandbox::looker::{
    LoggedRequest, LookerSeed, LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};
use rust_decimal::Decimal;

const MODEL: &str = "scale";
const EXPLORE: &str = "ledger_lines";
const LOOK: &str = "500";

/// Sync settings as the connector builds them by default (max_rows 5,000).
fn sync_settings(sim: &LookerSim) -> LookerSettings {
    looker_settings(sim, Duration::from_secs(30))
}

/// Async settings with fast polling and room for 20,000 rows.
fn async_settings(sim: &LookerSim) -> LookerSettings {
    let mut s = sync_settings(sim);
    s.extract_path = ExtractPath::Async;
    s.max_rows = 20_000;
    s.poll_interval = Duration::from_millis(10);
    s.max_poll_interval = Duration::from_millis(40);
    s.max_wait = Duration::from_secs(60);
    s
}

fn client(s: LookerSettings) -> LookerClient {
    LookerClient::new(s).unwrap()
}

/// A sim with a generated explore of `n` rows and Look 500 selecting all of its fields.
async fn sim_with(n: usize) -> LookerSim {
    let seed = LookerSeed::empty()
        .with_generated_explore(MODEL, EXPLORE, n)
        .with_look(LOOK, "All ledger lines", generated_query(MODEL, EXPLORE));
    LookerSim::start(seed).await.unwrap()
}

fn field(suffix: &str) -> String {
    format!("{EXPLORE}.{suffix}")
}

fn amount(row: &ml_connector::domain::source::SourceRow) -> Decimal {
    match row.get(&field("amount")) {
        Some(Cell::Number(d)) => *d,
        other => panic!("amount of row {}: {other:?}", row.index),
    }
}

fn expected_sum(n: usize) -> Decimal {
    (0..n)
        .map(|i| generated_amount(i).parse::<Decimal>().unwrap())
        .sum()
}

fn task_polls(log: &[LoggedRequest]) -> Vec<&LoggedRequest> {
    log.iter()
        .filter(|r| {
            r.method == "GET"
                && r.path.starts_with("/api/4.0/query_tasks/")
                && !r.path.ends_with("/results")
        })
        .collect()
}

fn results_calls(log: &[LoggedRequest]) -> Vec<&LoggedRequest> {
    log.iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/results"))
        .collect()
}

#[tokio::test]
async fn async_look_returns_all_12000_rows_exactly_and_sync_is_refused() {
    let sim = sim_with(12_000).await;
    sim.set_task_latency(2);
    let ex = client(async_settings(&sim)).run_look(LOOK).await.unwrap();
    assert_eq!(
        ex.source,
        SourceRef::Look {
            look_id: LOOK.into()
        }
    );
    assert_eq!(ex.columns, generated_fields(EXPLORE));
    assert_eq!(ex.rows.len(), 12_000);
    for (i, r) in ex.rows.iter().enumerate() {
        assert_eq!(r.index, i);
        assert_eq!(
            r.get(&field("row_id")),
            Some(&Cell::Number(Decimal::from(i)))
        );
    }
    // Spot checks and the total, exactly (four decimals, negatives included).
    for i in [0usize, 9, 4_999, 5_000, 5_001, 11_999] {
        let want: Decimal = generated_amount(i).parse().unwrap();
        assert_eq!(amount(&ex.rows[i]), want.normalize(), "row {i}");
    }
    assert!(amount(&ex.rows[9]).is_sign_negative());
    let total: Decimal = ex.rows.iter().map(amount).sum();
    assert_eq!(total, expected_sum(12_000));
    assert_eq!(
        ex.rows[11_999].get(&field("account")),
        Some(&Cell::Text(GENERATED_ACCOUNTS[11_999 % 7].into()))
    );

    // What went over the wire: Look → its query id → task with our limit, no sync run.
    let log = sim.request_log();
    assert!(log.iter().all(|r| !r.path.contains("/run/")), "{log:#?}");
    assert!(log
        .iter()
        .any(|r| r.path == "/api/4.0/looks/500" && r.status == 200));
    let look = client(async_settings(&sim)).look(LOOK).await.unwrap();
    let look_query_id = look.query_id.clone().unwrap();
    assert_eq!(look.query.id.as_deref(), Some(look_query_id.as_str()));
    let create = log
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/4.0/query_tasks")
        .unwrap();
    assert_eq!(create.query_param("limit").as_deref(), Some("20001"));
    assert_eq!(
        create.query_param("apply_formatting").as_deref(),
        Some("false")
    );
    let body: serde_json::Value = serde_json::from_str(&create.body).unwrap();
    assert_eq!(body["result_format"], "json");
    assert_eq!(body["look_id"], LOOK);
    assert_eq!(body["query_id"], look_query_id.as_str());
    assert_eq!(
        task_polls(&log).len(),
        3,
        "two polls answered running, the third complete"
    );
    assert_eq!(results_calls(&log).len(), 1);

    // The same Look through the sync path with the default max_rows (5,000) is refused.
    let err = client(sync_settings(&sim))
        .run_look(LOOK)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LookerError::Truncated {
                received: 5001,
                requested_limit: 5001,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("asynchronous"), "{err}");

    // And with room for 20,000 rows, a Looker that caps sync runs at 5,000 is caught too.
    sim.set_sync_row_cap(Some(5000));
    let mut s = sync_settings(&sim);
    s.max_rows = 20_000;
    let err = client(s).run_look(LOOK).await.unwrap_err();
    assert!(
        matches!(err, LookerError::Truncated { received: 5000, .. }),
        "{err:?}"
    );
    // The async path is not affected by that cap.
    let ex = client(async_settings(&sim)).run_look(LOOK).await.unwrap();
    assert_eq!(ex.rows.len(), 12_000);
}

#[tokio::test]
async fn async_inline_query_creates_a_deduplicated_query_and_records_its_id() {
    let sim = sim_with(6_000).await;
    let c = client(async_settings(&sim));
    let q = generated_query(MODEL, EXPLORE);
    let first = c.run_inline_query(&q).await.unwrap();
    let second = c.run_inline_query(&q).await.unwrap();
    assert_eq!(first.rows.len(), 6_000);
    assert_eq!(first, second);
    let SourceRef::Query {
        query_id: Some(id),
        model,
        explore,
        ..
    } = &first.source
    else {
        panic!("{:?}", first.source)
    };
    assert_eq!((model.as_str(), explore.as_str()), (MODEL, EXPLORE));
    let log = sim.request_log();
    let creates: Vec<_> = log
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/4.0/queries")
        .collect();
    assert_eq!(creates.len(), 2);
    let body: serde_json::Value = serde_json::from_str(&creates[0].body).unwrap();
    assert_eq!(body["limit"], "20001", "Query.limit is a string");
    assert_eq!(body["view"], EXPLORE);
    let tasks: Vec<serde_json::Value> = log
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/4.0/query_tasks")
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    assert_eq!(tasks.len(), 2);
    assert!(
        tasks.iter().all(|t| t["query_id"] == id.as_str()),
        "identical queries share one id: {tasks:?}"
    );
    let total: Decimal = first.rows.iter().map(amount).sum();
    assert_eq!(total, expected_sum(6_000));
}

#[tokio::test]
async fn polling_waits_for_the_task_honours_429_retry_after_and_202() {
    let sim = sim_with(50).await;
    sim.set_task_latency(3);
    sim.set_results_lag(2);
    sim.throttle_task_polls(1, Some(1));
    let started = Instant::now();
    let ex = client(async_settings(&sim)).run_look(LOOK).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(ex.rows.len(), 50);
    assert!(
        elapsed >= Duration::from_secs(1),
        "Retry-After: 1 was honoured ({elapsed:?})"
    );
    let log = sim.request_log();
    // P = status poll, R = results; one 429 (retried after 1 s), three polls saying running,
    // complete; then the results were not ready twice (202) and the client polled again.
    let trace: Vec<String> = log
        .iter()
        .filter(|r| r.path.starts_with("/api/4.0/query_tasks/"))
        .map(|r| {
            let kind = if r.path.ends_with("/results") {
                'R'
            } else {
                'P'
            };
            format!("{kind}{}", r.status)
        })
        .collect();
    assert_eq!(
        trace.join(" "),
        "P429 P200 P200 P200 P200 R202 P200 R202 P200 R200",
        "{log:#?}"
    );
    let statuses: Vec<u16> = results_calls(&log).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [202, 202, 200]);
    assert!(log.iter().all(|r| r.method != "DELETE"));
}

#[tokio::test]
async fn deadline_cancels_the_task_and_says_nothing_was_posted() {
    let sim = sim_with(10).await;
    sim.set_task_latency(usize::MAX);
    let mut s = async_settings(&sim);
    s.max_wait = Duration::from_millis(300);
    let started = Instant::now();
    let err = client(s).run_look(LOOK).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    let LookerError::DeadlineExceeded {
        task_id: Some(id), ..
    } = &err
    else {
        panic!("{err:?}")
    };
    let msg = err.to_string();
    assert!(
        msg.contains("nothing was posted")
            && msg.contains("cancelled")
            && msg.contains(&format!("DELETE /running_queries/{id}")),
        "{msg}"
    );
    assert!(err.is_transient());
    let log = sim.request_log();
    let delete = log
        .iter()
        .find(|r| r.method == "DELETE")
        .expect("the task was cancelled");
    assert_eq!(delete.path, format!("/api/4.0/running_queries/{id}"));
    assert_eq!(delete.status, 204);
    assert!(sim.task_cancelled(id));
    assert!(task_polls(&log).len() >= 2, "it did poll: {log:#?}");

    // A per-run deadline (e.g. a Lambda's) applies even with a long max_wait.
    sim.clear_request_log();
    let c = client(async_settings(&sim)).with_deadline(Instant::now() + Duration::from_millis(200));
    let started = Instant::now();
    let err = c
        .run_inline_query(&generated_query(MODEL, EXPLORE))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(
            err,
            LookerError::DeadlineExceeded {
                task_id: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        sim.request_log()
            .iter()
            .filter(|r| r.method == "DELETE" && r.status == 204)
            .count(),
        1
    );
}

#[tokio::test]
async fn task_error_failure_and_expired_are_clear_errors() {
    let sim = sim_with(10).await;
    sim.set_task_latency(1);
    let c = client(async_settings(&sim));

    sim.fail_next_task("error");
    let err = c.run_look(LOOK).await.unwrap_err();
    match &err {
        LookerError::TaskEnded { status, detail, .. } => {
            assert_eq!(status, "error");
            assert!(detail.contains("SQL Error"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("nothing was posted"), "{err}");
    assert!(!err.is_transient());

    sim.fail_next_task("failure");
    let err = c.run_look(LOOK).await.unwrap_err();
    assert!(
        matches!(&err, LookerError::TaskEnded { status, .. } if status == "failure"),
        "{err:?}"
    );

    sim.fail_next_task("expired");
    let err = c.run_look(LOOK).await.unwrap_err();
    assert!(
        matches!(&err, LookerError::TaskEnded { status, .. } if status == "expired"),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(err.is_transient(), "running again can succeed");
    // Ended tasks are not cancelled; nothing was left running.
    assert!(sim.request_log().iter().all(|r| r.method != "DELETE"));

    // A query naming an unknown field is refused when it is created, naming the field.
    let mut q = generated_query(MODEL, EXPLORE);
    q.fields.push(format!("{EXPLORE}.nope"));
    let err = c.run_inline_query(&q).await.unwrap_err();
    assert!(
        matches!(&err, LookerError::Invalid(m) if m.contains("nope")),
        "{err:?}"
    );
}

#[tokio::test]
async fn task_cancelled_in_looker_is_reported_as_killed() {
    let sim = sim_with(10).await;
    let c = client(async_settings(&sim));
    // A task cancelled behind the client's back (by an admin) ends as `killed`.
    sim.set_task_latency(usize::MAX);
    let run = tokio::spawn({
        let c = c.clone();
        async move { c.run_look(LOOK).await }
    });
    let id = loop {
        if let Some(id) = sim.task_ids().pop() {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let token: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/4.0/login", sim.base_url()))
        .form(&[
            ("client_id", SANDBOX_LOOKER_CLIENT_ID),
            ("client_secret", SANDBOX_LOOKER_CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = reqwest::Client::new()
        .delete(format!("{}/api/4.0/running_queries/{id}", sim.base_url()))
        .header(
            "Authorization",
            format!("token {}", token["access_token"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let err = run.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, LookerError::TaskEnded { status, .. } if status == "killed"),
        "{err:?}"
    );
}

#[tokio::test]
async fn max_rows_is_enforced_on_the_async_path() {
    let sim = sim_with(12_000).await;
    let mut s = async_settings(&sim);
    s.max_rows = 10_000;
    let err = client(s).run_look(LOOK).await.unwrap_err();
    match &err {
        LookerError::Truncated {
            max_rows,
            requested_limit,
            received,
            ..
        } => assert_eq!(
            (*max_rows, *requested_limit, *received),
            (10_000, 10_001, 10_001)
        ),
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("refused") && msg.contains("nothing was posted"),
        "{msg}"
    );

    // Exactly max_rows is complete.
    let mut s = async_settings(&sim);
    s.max_rows = 12_000;
    assert_eq!(client(s).run_look(LOOK).await.unwrap().rows.len(), 12_000);

    // 5,000 rows exactly is not mistaken for Looker's sync cap on the async path.
    let small = sim_with(5_000).await;
    let ex = client(async_settings(&small)).run_look(LOOK).await.unwrap();
    assert_eq!(ex.rows.len(), 5_000);

    // Unlimited is explicit, async only, and sends limit=-1.
    sim.clear_request_log();
    let mut s = async_settings(&sim);
    s.max_rows = 10;
    s.unlimited_rows = true;
    let ex = client(s).run_look(LOOK).await.unwrap();
    assert_eq!(ex.rows.len(), 12_000);
    let create = sim
        .request_log()
        .into_iter()
        .find(|r| r.path == "/api/4.0/query_tasks")
        .unwrap();
    assert_eq!(create.query_param("limit").as_deref(), Some("-1"));
    let mut s = sync_settings(&sim);
    s.unlimited_rows = true;
    assert!(matches!(
        LookerClient::new(s),
        Err(LookerError::Config(m)) if m.contains("unlimited_rows")
    ));
}

#[tokio::test]
async fn hundred_thousand_rows_through_the_async_path() {
    let sim = sim_with(100_000).await;
    let mut s = async_settings(&sim);
    s.unlimited_rows = true;
    let ex = client(s).run_look(LOOK).await.unwrap();
    assert_eq!(ex.rows.len(), 100_000);
    assert_eq!(
        amount(&ex.rows[99_999]),
        generated_amount(99_999)
            .parse::<Decimal>()
            .unwrap()
            .normalize()
    );
    let total: Decimal = ex.rows.iter().map(amount).sum();
    assert_eq!(total, expected_sum(100_000));
}

#[tokio::test]
async fn simulator_task_endpoints_and_multi_results() {
    let sim = sim_with(7_000).await;
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(format!("{}/api/4.0/login", sim.base_url()))
        .form(&[
            ("client_id", SANDBOX_LOOKER_CLIENT_ID),
            ("client_secret", SANDBOX_LOOKER_CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = format!("token {}", login["access_token"].as_str().unwrap());
    let url = |p: &str| format!("{}/api/4.0/{p}", sim.base_url());
    let q = serde_json::json!({"model": MODEL, "view": EXPLORE, "fields": [field("row_id")]});
    let created: serde_json::Value = http
        .post(url("queries"))
        .header("Authorization", &auth)
        .json(&q)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let qid = created["id"].as_str().unwrap().to_string();
    let again: serde_json::Value = http
        .post(url("queries"))
        .header("Authorization", &auth)
        .json(&q)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["id"], qid.as_str(), "de-duplicated");
    let got: serde_json::Value = http
        .get(url(&format!("queries/{qid}")))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["view"], EXPLORE);

    sim.set_task_latency(1);
    let start = |limit: &'static str| {
        let req = http
            .post(url(&format!("query_tasks?limit={limit}")))
            .header("Authorization", &auth)
            .json(&serde_json::json!({"query_id": qid, "result_format": "json"}));
        async move {
            let t: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
            assert_eq!(t["status"], "added");
            t["id"].as_str().unwrap().to_string()
        }
    };
    let unlimited = start("-1").await;
    // No limit on the task nor the query: Looker's default 5,000 cap.
    let defaulted = {
        let t: serde_json::Value = http
            .post(url("query_tasks"))
            .header("Authorization", &auth)
            .json(&serde_json::json!({"query_id": qid, "result_format": "json"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t["id"].as_str().unwrap().to_string()
    };
    let results = |id: String| {
        let req = http
            .get(url(&format!("query_tasks/{id}/results")))
            .header("Authorization", &auth);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    assert_eq!(results(unlimited.clone()).await.0, 202);
    let (status, body) = results(unlimited.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        parse_json_rows_streaming(body.as_bytes()).unwrap().1.len(),
        7_000
    );
    assert_eq!(results(defaulted.clone()).await.0, 202);
    let (_, body) = results(defaulted.clone()).await;
    assert_eq!(
        parse_json_rows_streaming(body.as_bytes()).unwrap().1.len(),
        5_000
    );

    let multi: serde_json::Value = http
        .get(url(&format!(
            "query_tasks/multi_results?query_task_ids={unlimited},nope"
        )))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(multi[&unlimited]["status"], "complete");
    assert_eq!(
        multi[&unlimited]["data"].as_array().map(Vec::len),
        Some(7_000)
    );
    assert_eq!(multi["nope"]["status"], "missing");

    let unknown = http
        .get(url("query_tasks/zzz/results"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(unknown, 404);
}

/// A `json` result body of `n` rows with every cell type.
fn json_body(n: usize) -> String {
    let mut body = String::with_capacity(n * 90);
    body.push('[');
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"g.id":{i},"g.name":"line \"{i}\"","g.amount":{},"g.flag":{},"g.note":null}}"#,
            generated_amount(i),
            i % 2 == 0
        ));
    }
    body.push(']');
    body
}

#[test]
fn streaming_parse_of_a_100k_row_body_is_exact() {
    let n = 100_000usize;
    let body = json_body(n);
    let (cols, rows) = parse_json_rows_streaming(body.as_bytes()).unwrap();
    assert_eq!(cols, ["g.id", "g.name", "g.amount", "g.flag", "g.note"]);
    assert_eq!(rows.len(), n);
    for i in [0usize, 1, 9, 50_000, 99_999] {
        let r = &rows[i];
        assert_eq!(r.index, i);
        assert_eq!(r.get("g.id"), Some(&Cell::Number(Decimal::from(i))));
        assert_eq!(r.get("g.name"), Some(&Cell::Text(format!("line \"{i}\""))));
        assert_eq!(
            r.get("g.amount"),
            Some(&Cell::Number(
                generated_amount(i).parse::<Decimal>().unwrap().normalize()
            ))
        );
        assert_eq!(r.get("g.flag"), Some(&Cell::Bool(i % 2 == 0)));
        assert_eq!(r.get("g.note"), Some(&Cell::Null));
    }
    let total: Decimal = rows
        .iter()
        .map(|r| match r.get("g.amount") {
            Some(Cell::Number(d)) => *d,
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(total, expected_sum(n));

    // A bad cell deep in the body names its row; a looker_error row is a query failure.
    let body = json_body(100_000 / 20);
    let bad = body.replacen(r#""g.note":null}]"#, r#""g.note":[1]}]"#, 1);
    let e = parse_json_rows_streaming(bad.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 4999") && e.contains("`g.note`"), "{e}");
    let failed = format!(
        "{},{{\"looker_error\":\"SQL Error: boom\"}}]",
        &body[..body.len() - 1]
    );
    assert!(matches!(
        parse_json_rows_streaming(failed.as_bytes()),
        Err(LookerError::QueryFailed(m)) if m.contains("boom")
    ));
    // Truncated bodies (a dropped connection mid-download) are errors, never partial results.
    assert!(parse_json_rows_streaming(&body.as_bytes()[..body.len() / 2]).is_err());
}
