//! Looker client against the Looker simulator, over real loopback sockets.
#![cfg(feature = "sandbox")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use common::{fast_retry, looker_settings};
use ml_connector::domain::config::InlineQuery;
use ml_connector::domain::source::{Cell, SourceRef};
use ml_connector::looker::{parse_json_detail, LookerClient, LookerError, LookerSettings};
use ml_connector::sandbox::looker::seed::{previous_sunday, DEMO_TOTAL_AMOUNT, DEMO_WEEK_END_DATE};
use ml_connector::sandbox::looker::{
    LookerSeed, LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};
use ml_connector::secrets::Secret;
use rust_decimal::Decimal;

fn settings(sim: &LookerSim) -> LookerSettings {
    looker_settings(sim, Duration::from_secs(20))
}

fn client(sim: &LookerSim) -> LookerClient {
    LookerClient::new(settings(sim)).unwrap()
}

fn dec(s: &str) -> Cell {
    Cell::Number(s.parse::<Decimal>().unwrap().normalize())
}

/// Explore `t/rows` with `n` rows: `t.id` 0..n and `t.amount` = id + 0.0125.
fn add_numbered(sim: &LookerSim, n: usize) {
    let rows: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"t.id":{i},"t.amount":{i}.0125}}"#))
        .collect();
    sim.add_explore(
        "t",
        "rows",
        &["t.id"],
        &["t.amount"],
        &format!("[{}]", rows.join(",")),
    );
}

fn numbered_query() -> InlineQuery {
    query("t", "rows", &["t.id", "t.amount"])
}

fn query(model: &str, explore: &str, fields: &[&str]) -> InlineQuery {
    InlineQuery {
        model: model.into(),
        explore: explore.into(),
        fields: fields.iter().map(|s| s.to_string()).collect(),
        filters: BTreeMap::new(),
        sorts: vec![],
        query_timezone: None,
    }
}

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 3, 12).unwrap()
}

/// Logs in with reqwest directly, for probing the simulator itself.
async fn raw_token(sim: &LookerSim) -> String {
    let resp: serde_json::Value = reqwest::Client::new()
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
    assert_eq!(resp["token_type"], "Bearer");
    assert_eq!(resp["expires_in"], 3600);
    resp["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn login_sends_form_body_token_scheme_and_app_id() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let c = client(&sim);
    c.login_check().await.unwrap();
    c.explore_fields("finance", "marketplace_fees")
        .await
        .unwrap();
    let log = sim.request_log();
    assert_eq!(log.len(), 2, "{log:#?}");
    let login = &log[0];
    assert!(login.is_login());
    assert_eq!(
        login.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        login.form_param("client_id").as_deref(),
        Some(SANDBOX_LOOKER_CLIENT_ID)
    );
    assert_eq!(
        login.form_param("client_secret").as_deref(),
        Some(SANDBOX_LOOKER_CLIENT_SECRET)
    );
    assert!(
        !login.query.contains("client"),
        "credentials must not be in the URL: {}",
        login.query
    );
    assert_eq!(login.app_id.as_deref(), Some("ml-connector"));
    let call = &log[1];
    assert_eq!(
        call.path,
        "/api/4.0/lookml_models/finance/explores/marketplace_fees"
    );
    assert_eq!(call.auth_scheme.as_deref(), Some("token"));
    assert_eq!(call.app_id.as_deref(), Some("ml-connector"));
    assert_eq!(call.status, 200);
}

#[tokio::test]
async fn token_is_cached_across_calls_and_concurrent_callers() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let c = client(&sim);
    let c2 = c.clone();
    let (a, b) = tokio::join!(
        c.look("42"),
        c2.explore_fields("finance", "marketplace_fees")
    );
    a.unwrap();
    b.unwrap();
    c.run_look("42").await.unwrap();
    let logins = sim.request_log().iter().filter(|r| r.is_login()).count();
    assert_eq!(logins, 1, "{:#?}", sim.request_log());
}

#[tokio::test]
async fn expired_token_logs_in_again_once() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let c = client(&sim);
    c.look("42").await.unwrap();
    sim.expire_tokens();
    let info = c.look("42").await.unwrap();
    assert_eq!(info.title, "Weekly marketplace fees and commissions");
    let log = sim.request_log();
    let summary: Vec<(bool, u16)> = log.iter().map(|r| (r.is_login(), r.status)).collect();
    assert_eq!(
        summary,
        [
            (true, 200),
            (false, 200),
            (false, 401),
            (true, 200),
            (false, 200)
        ],
        "{log:#?}"
    );
}

#[tokio::test]
async fn short_lived_tokens_are_renewed_before_they_expire() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    // expires_in 10 with a 10 s margin: every call needs a fresh login, and none may 401.
    sim.set_token_lifetime(10);
    let c = client(&sim);
    c.explore_fields("finance", "marketplace_fees")
        .await
        .unwrap();
    c.explore_fields("finance", "marketplace_fees")
        .await
        .unwrap();
    let log = sim.request_log();
    assert_eq!(log.iter().filter(|r| r.is_login()).count(), 2, "{log:#?}");
    assert!(log.iter().all(|r| r.status == 200), "{log:#?}");
}

#[tokio::test]
async fn wrong_secret_is_an_auth_error_that_hides_the_secret() {
    let sim = LookerSim::start(LookerSeed::empty()).await.unwrap();
    let secret = "wrong-Secret-1234567890";
    let mut s = settings(&sim);
    s.client_secret = Secret::new(secret);
    assert!(!format!("{s:?}").contains(secret));
    let c = LookerClient::new(s).unwrap();
    let err = c.login_check().await.unwrap_err();
    assert!(matches!(err, LookerError::Auth(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("rejected the API client id/secret"), "{msg}");
    assert!(msg.contains("Admin > Users > Edit"), "{msg}");
    assert!(
        !msg.contains(secret) && !format!("{err:?}").contains(secret),
        "{msg}"
    );
    // The sim answered like Looker: 404 to bad credentials.
    assert_eq!(sim.request_log()[0].status, 404);
    // And a run with bad credentials fails the same way instead of trying the query.
    let err = c.run_look("42").await.unwrap_err();
    assert!(matches!(err, LookerError::Auth(_)), "{err:?}");
    assert!(sim.request_log().iter().all(|r| r.is_login()));
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let c = client(&sim);
    c.login_check().await.unwrap();
    sim.throttle_next(1, Some(1));
    let started = Instant::now();
    let ex = c
        .run_inline_query(&query("finance", "marketplace_fees", &[DEMO_WEEK_END_DATE]))
        .await;
    let elapsed = started.elapsed();
    ex.unwrap();
    assert!(
        elapsed >= Duration::from_secs(1),
        "retried after {elapsed:?}"
    );
    let statuses: Vec<u16> = sim.request_log().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 429, 200]);
}

#[tokio::test]
async fn persistent_throttling_is_reported() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let c = client(&sim);
    c.login_check().await.unwrap();
    sim.throttle_next(10, Some(0));
    let err = c.look("42").await.unwrap_err();
    assert!(
        matches!(err, LookerError::Throttled { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(
        sim.request_log().iter().filter(|r| r.status == 429).count(),
        3
    );
}

#[tokio::test]
async fn login_is_retried_when_throttled() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    sim.throttle_next(1, None);
    client(&sim).login_check().await.unwrap();
    let statuses: Vec<u16> = sim.request_log().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200]);
}

#[tokio::test]
async fn decimals_arrive_exactly_and_null_is_null() {
    let sim = LookerSim::start(LookerSeed::empty()).await.unwrap();
    sim.add_explore(
        "m",
        "e",
        &["e.k"],
        &["e.amount"],
        r#"[{"e.k":"a","e.amount":0.30000000000000004},
            {"e.k":"b","e.amount":1234.5675},
            {"e.k":"c","e.amount":null},
            {"e.k":"d","e.amount":-0.005}]"#,
    );
    let mut q = query("m", "e", &["e.k", "e.amount"]);
    q.sorts = vec!["e.k".into()];
    let ex = client(&sim).run_inline_query(&q).await.unwrap();
    let amounts: Vec<&Cell> = ex.rows.iter().map(|r| r.get("e.amount").unwrap()).collect();
    assert_eq!(
        amounts,
        [
            &dec("0.30000000000000004"),
            &dec("1234.5675"),
            &Cell::Null,
            &dec("-0.005")
        ]
    );
    assert_eq!(
        ex.rows.iter().map(|r| r.index).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert_eq!(ex.columns, ["e.k", "e.amount"]);
    match &ex.source {
        SourceRef::Query {
            model,
            explore,
            query_id,
            definition,
        } => {
            assert_eq!(
                (model.as_str(), explore.as_str(), query_id),
                ("m", "e", &None)
            );
            let back: InlineQuery = serde_json::from_str(definition).unwrap();
            assert_eq!(back, q);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn more_than_max_rows_is_refused() {
    let sim = LookerSim::start(LookerSeed::empty()).await.unwrap();
    add_numbered(&sim, 5001);
    let err = client(&sim)
        .run_inline_query(&numbered_query())
        .await
        .unwrap_err();
    match &err {
        LookerError::Truncated {
            max_rows,
            requested_limit,
            received,
            ..
        } => {
            assert_eq!((*max_rows, *requested_limit, *received), (5000, 5001, 5001));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("refused") && msg.contains("nothing was posted"),
        "{msg}"
    );
    assert!(msg.contains("max_rows") && msg.contains("filters"), "{msg}");
}

#[tokio::test]
async fn exactly_the_server_cap_is_refused_as_possibly_capped() {
    let sim = LookerSim::start(LookerSeed::empty()).await.unwrap();
    add_numbered(&sim, 5000);
    let err = client(&sim)
        .run_inline_query(&numbered_query())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LookerError::Truncated { received: 5000, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("row cap"), "{err}");
}

#[tokio::test]
async fn exactly_max_rows_is_complete() {
    let sim = LookerSim::start(LookerSeed::empty()).await.unwrap();
    add_numbered(&sim, 10);
    let mut s = settings(&sim);
    s.max_rows = 10;
    let ex = LookerClient::new(s)
        .unwrap()
        .run_inline_query(&numbered_query())
        .await
        .unwrap();
    assert_eq!(ex.rows.len(), 10);
    assert_eq!(ex.rows[9].get("t.amount"), Some(&dec("9.0125")));
    let run = sim
        .request_log()
        .into_iter()
        .find(|r| r.path.ends_with("/queries/run/json"))
        .unwrap();
    assert_eq!(run.query_param("limit").as_deref(), Some("11"));

    // One more row in the explore and the same settings refuse it.
    add_numbered(&sim, 11);
    let mut s = settings(&sim);
    s.max_rows = 10;
    let err = LookerClient::new(s)
        .unwrap()
        .run_inline_query(&numbered_query())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LookerError::Truncated { received: 11, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn simulator_caps_at_5000_without_limit_and_honours_minus_one() {
    let sim = LookerSim::start(LookerSeed::empty()).await.unwrap();
    add_numbered(&sim, 5003);
    let token = raw_token(&sim).await;
    let http = reqwest::Client::new();
    let count = |limit: Option<&'static str>| {
        let mut url = format!("{}/api/4.0/queries/run/json", sim.base_url());
        if let Some(l) = limit {
            url.push_str(&format!("?limit={l}"));
        }
        let req = http
            .post(url)
            .header("Authorization", format!("token {token}"))
            .json(&serde_json::json!({"model":"t","view":"rows","fields":["t.id"]}));
        async move {
            let rows: Vec<serde_json::Value> = req.send().await.unwrap().json().await.unwrap();
            rows.len()
        }
    };
    assert_eq!(count(None).await, 5000);
    assert_eq!(count(Some("-1")).await, 5003);
    assert_eq!(count(Some("7")).await, 7);
}

#[tokio::test]
async fn inline_query_sends_limit_and_unformatted_request() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let mut s = settings(&sim);
    s.max_rows = 250;
    let mut q = query(
        "finance",
        "marketplace_fees",
        &[DEMO_WEEK_END_DATE, DEMO_TOTAL_AMOUNT],
    );
    q.filters
        .insert(DEMO_WEEK_END_DATE.into(), "2025-03-02 to 2025-03-16".into());
    q.sorts = vec![format!("{DEMO_WEEK_END_DATE} desc")];
    q.query_timezone = Some("UTC".into());
    let ex = LookerClient::new(s)
        .unwrap()
        .run_inline_query(&q)
        .await
        .unwrap();
    // Grouped by week: two Sundays in the range, end exclusive.
    let weeks: Vec<String> = ex
        .rows
        .iter()
        .map(|r| r.get(DEMO_WEEK_END_DATE).unwrap().display())
        .collect();
    assert_eq!(weeks, ["2025-03-09", "2025-03-02"]);
    let run = sim
        .request_log()
        .into_iter()
        .find(|r| r.path == "/api/4.0/queries/run/json")
        .unwrap();
    assert_eq!(run.method, "POST");
    assert_eq!(run.query_param("limit").as_deref(), Some("251"));
    assert_eq!(
        run.query_param("apply_formatting").as_deref(),
        Some("false")
    );
    assert_eq!(run.query_param("apply_vis").as_deref(), Some("false"));
    let body: serde_json::Value = serde_json::from_str(&run.body).unwrap();
    assert_eq!(body["limit"], "251", "Query.limit is a string");
    assert_eq!(body["view"], "marketplace_fees");
    assert_eq!(body["model"], "finance");
    assert_eq!(body["query_timezone"], "UTC");
    assert_eq!(body["sorts"][0], format!("{DEMO_WEEK_END_DATE} desc"));
}

#[tokio::test]
async fn formatting_would_have_turned_amounts_into_text() {
    // Proves the sim distinguishes formatted from raw runs, so the test above can fail.
    let sim = LookerSim::start(LookerSeed::empty()).await.unwrap();
    sim.add_explore(
        "m",
        "e",
        &["e.k"],
        &["e.amount"],
        r#"[{"e.k":"a","e.amount":1234.5}]"#,
    );
    let token = raw_token(&sim).await;
    let body: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/api/4.0/queries/run/json?apply_formatting=true",
            sim.base_url()
        ))
        .header("Authorization", format!("Bearer {token}"))
        .json(&serde_json::json!({"model":"m","view":"e","fields":["e.k","e.amount"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body[0]["e.amount"], "$1,234.50");
}

#[tokio::test]
async fn unknown_field_is_invalid_and_named() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let c = client(&sim);
    let err = c
        .run_inline_query(&query(
            "finance",
            "marketplace_fees",
            &[DEMO_WEEK_END_DATE, "marketplace_fees.nope"],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, LookerError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("marketplace_fees.nope"), "{err}");

    let mut q = query("finance", "marketplace_fees", &[DEMO_WEEK_END_DATE]);
    q.filters
        .insert("marketplace_fees.region".into(), "EU".into());
    let err = c.run_inline_query(&q).await.unwrap_err();
    assert!(err.to_string().contains("marketplace_fees.region"), "{err}");
}

#[tokio::test]
async fn unknown_look_model_and_explore_are_not_found() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let c = client(&sim);
    let err = c.run_look("999").await.unwrap_err();
    assert!(matches!(err, LookerError::NotFound(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("Look 999 not found or not visible to the API user"),
        "{err}"
    );
    let err = c
        .run_inline_query(&query("nope", "marketplace_fees", &["x.y"]))
        .await
        .unwrap_err();
    assert!(matches!(err, LookerError::NotFound(_)), "{err:?}");
    let err = c.explore_fields("finance", "nope").await.unwrap_err();
    assert!(matches!(err, LookerError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn demo_look_returns_last_weeks_twelve_rows() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let c = client(&sim);
    let ex = c.run_look("42").await.unwrap();
    assert_eq!(
        ex.source,
        SourceRef::Look {
            look_id: "42".into()
        }
    );
    assert_eq!(
        ex.columns,
        [
            "marketplace_fees.week_end_date",
            "marketplace_fees.channel",
            "marketplace_fees.cost_center",
            "marketplace_fees.fee_type",
            "marketplace_fees.total_amount"
        ]
    );
    assert_eq!(ex.rows.len(), 12);
    let sunday = previous_sunday(today()).to_string();
    for r in &ex.rows {
        assert_eq!(r.get(DEMO_WEEK_END_DATE), Some(&Cell::Text(sunday.clone())));
        match r.get(DEMO_TOTAL_AMOUNT) {
            Some(Cell::Number(d)) => assert!(d.scale() <= 4 && *d >= Decimal::new(100, 0)),
            other => panic!("{other:?}"),
        }
    }
    let first: Vec<String> = [
        "marketplace_fees.channel",
        "marketplace_fees.cost_center",
        "marketplace_fees.fee_type",
    ]
    .iter()
    .map(|f| ex.rows[0].get(f).unwrap().display())
    .collect();
    assert_eq!(
        first,
        ["Amazon", "022", "Commission"],
        "sorted by channel, cost center, fee type"
    );
    let run = sim
        .request_log()
        .into_iter()
        .find(|r| r.path == "/api/4.0/looks/42/run/json")
        .unwrap();
    assert_eq!(run.method, "GET");
    assert_eq!(run.query_param("limit").as_deref(), Some("5001"));
    assert_eq!(
        run.query_param("apply_formatting").as_deref(),
        Some("false")
    );

    let info = c.look("42").await.unwrap();
    assert_eq!(info.query.filters[DEMO_WEEK_END_DATE], sunday);
    assert_eq!(info.to_inline_query().explore, "marketplace_fees");
    let fields = c
        .explore_fields("finance", "marketplace_fees")
        .await
        .unwrap();
    assert_eq!(fields.len(), 5);
    assert_eq!(fields.last().map(String::as_str), Some(DEMO_TOTAL_AMOUNT));
}

#[tokio::test]
async fn simulator_quirks_trailing_slash_and_bearer() {
    let sim = LookerSim::start(LookerSeed::demo(today())).await.unwrap();
    let token = raw_token(&sim).await;
    let http = reqwest::Client::new();
    let get = |path: &str, auth: String| {
        http.get(format!("{}/api/4.0/{path}", sim.base_url()))
            .header("Authorization", auth)
            .send()
    };
    assert_eq!(
        get("looks/42", format!("Bearer {token}"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get("looks/42/", format!("token {token}"))
            .await
            .unwrap()
            .status(),
        401
    );
    let resp = get("looks/42", "token nope".into()).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "Requires authentication.");
}

#[tokio::test]
async fn json_detail_from_the_simulator_parses_exactly() {
    let sim = LookerSim::start(LookerSeed::empty()).await.unwrap();
    sim.add_explore(
        "m",
        "e",
        &["e.k"],
        &["e.amount"],
        r#"[{"e.k":"a","e.amount":0.30000000000000004}]"#,
    );
    let token = raw_token(&sim).await;
    let body = reqwest::Client::new()
        .post(format!(
            "{}/api/4.0/queries/run/json_detail?limit=10",
            sim.base_url()
        ))
        .header("Authorization", format!("token {token}"))
        .json(&serde_json::json!({"model":"m","view":"e","fields":["e.amount","e.k"]}))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (cols, rows) = parse_json_detail(&body).unwrap();
    assert_eq!(cols, ["e.k", "e.amount"]);
    assert_eq!(rows[0].get("e.amount"), Some(&dec("0.30000000000000004")));
}

#[test]
fn json_detail_example_file_parses_exactly() {
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/looker-json-detail-example.json"
    ))
    .unwrap();
    let (cols, rows) = parse_json_detail(&body).unwrap();
    assert_eq!(cols, ["orders.created_month", "orders.count"]);
    assert_eq!(rows.len(), 13);
    assert_eq!(
        rows[0].get("orders.created_month"),
        Some(&Cell::Text("2017-07".into()))
    );
    assert_eq!(rows[0].get("orders.count"), Some(&dec("773")));
    assert_eq!(rows[12].index, 12);
    assert_eq!(
        rows[12].get("orders.created_month"),
        Some(&Cell::Text("2016-07".into()))
    );
    assert_eq!(rows[12].get("orders.count"), Some(&dec("80")));
    let total: Decimal = rows
        .iter()
        .map(|r| match r.get("orders.count") {
            Some(Cell::Number(d)) => *d,
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(
        total,
        Decimal::from(773 + 922 + 863 + 821 + 788 + 702 + 755 + 640 + 540 + 376 + 313 + 212 + 80)
    );
}

#[tokio::test]
async fn unreachable_looker_is_a_transport_error_with_its_cause() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = LookerSettings::new(
        &format!("http://127.0.0.1:{port}"),
        SANDBOX_LOOKER_CLIENT_ID,
        Secret::new(SANDBOX_LOOKER_CLIENT_SECRET),
    )
    .unwrap();
    s.retry = fast_retry();
    let err = LookerClient::new(s)
        .unwrap()
        .run_look("42")
        .await
        .unwrap_err();
    assert!(matches!(err, LookerError::Http { .. }), "{err:?}");
    assert!(err.is_transient());
    let msg = err.to_string();
    assert!(msg.contains("POST /api/4.0/login"), "{msg}");
    assert!(
        msg.to_lowercase().contains("connect"),
        "cause missing: {msg}"
    );
    assert!(!msg.contains(SANDBOX_LOOKER_CLIENT_SECRET), "{msg}");
}
