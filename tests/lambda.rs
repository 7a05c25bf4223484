//! The three Lambda handlers (webhook, scheduler, replay) as library functions, driven with the
//! sample events in `events/` against the Looker and D365 simulators over real sockets.
//!
//! The audit/idempotency store is the DynamoDB store on the local moto server when `.ci/test`
//! exports `AWS_ENDPOINT_URL`, else a SQLite file. Config and secrets come from small in-test
//! sources.
#![cfg(all(feature = "aws", feature = "sandbox"))]

mod common;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::Event as StreamEvent;
use chrono::Duration;
use common::events::*;
use common::{dec, sandbox_creds, Backend, World, WorldBuilder};
use lambda_http::RequestExt;
use ml_connector::domain::reference::ReferenceData;
use ml_connector::domain::run::{LineStatus, RunStatus};
use ml_connector::engine::{Engine, Mode, NoProgress, Outcome, RunOptions};
use ml_connector::lambda::payload::{decode_body, DeliveryStatus as _};
use ml_connector::lambda::replay::handle_replay;
use ml_connector::lambda::scheduler::{handle_schedule, ScheduleInput};
use ml_connector::lambda::webhook::{
    function_url_handler, handle_webhook, http_handler, WebhookRequest, REJECTED_AUDIT_ID,
};
use ml_connector::lambda::{Invocation, Settings};
use ml_connector::looker::delivery::{parse_delivery, DeliveryError};
use ml_connector::ports::{LedgerError, LedgerGateway, LedgerHeader, LedgerLine, NewLedgerLine};
use ml_connector::sandbox::looker::seed::{
    demo_amount, DEMO_CHANNELS, DEMO_COST_CENTERS, DEMO_FEE_TYPES,
};
use ml_connector::secrets::Secret;
use ml_connector::store::Store;
use ml_connector::wiring::build_clients;
use proptest::prelude::*;
use rust_decimal::Decimal;

fn round2(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// The Lambda tests' world: the sample events' week and path secret, and the audit store from
/// the environment (DynamoDB on the local moto server under `.ci/test`).
fn world<'a>() -> WorldBuilder<'a> {
    World::sample_events().store(Backend::from_env())
}

impl World {
    /// The weekly journal for the sample week: one header, 12 detail lines with the simulator's
    /// amounts to the cent, balanced.
    fn assert_weekly_journal(&self, run_key_prefix: Option<&str>) {
        let headers = self.d365.headers();
        assert_eq!(headers.len(), 1, "exactly one header");
        assert_eq!(headers[0].legal_entity, "usmf");
        assert_eq!(headers[0].journal_name, "GenJrn");
        let lines = self.d365.lines();
        assert_eq!(lines.len(), 14, "12 detail lines, rounding, balancing");
        let week = week_end().format("%Y-%m-%d").to_string();
        let mut expected = BTreeMap::new();
        let mut exact = Decimal::ZERO;
        for ch in DEMO_CHANNELS {
            for cc in DEMO_COST_CENTERS {
                for fee in DEMO_FEE_TYPES {
                    let a = dec(&demo_amount(&week, ch, cc, fee));
                    exact += a;
                    let acct = if fee == "Commission" {
                        "618200"
                    } else {
                        "618100"
                    };
                    let code = match ch {
                        "Amazon" => "AMZ",
                        "eBay" => "EBY",
                        _ => "SHP",
                    };
                    expected.insert(format!("{acct}--{cc}-{code}"), round2(a));
                }
            }
        }
        let seen: BTreeMap<String, Decimal> = lines
            .iter()
            .filter(|l| {
                l.account_display.starts_with("6181") || l.account_display.starts_with("6182")
            })
            .map(|l| (l.account_display.clone(), l.debit))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(exact, dec("51579.7731"), "the sample's Looker total");
        let balancing: Vec<_> = lines
            .iter()
            .filter(|l| l.account_display == "200150---")
            .collect();
        assert_eq!(balancing.len(), 1);
        assert_eq!(balancing[0].credit, round2(exact));
        for l in &lines {
            assert_eq!(l.trans_date, week_end());
            assert_eq!(l.currency, "USD");
            if let Some(p) = run_key_prefix {
                assert!(l.text.starts_with(p), "{}", l.text);
            }
        }
        let debit: Decimal = lines.iter().map(|l| l.debit).sum();
        let credit: Decimal = lines.iter().map(|l| l.credit).sum();
        assert_eq!(debit, credit, "debits = credits");
    }
}

/// A Function URL event as the webhook binary receives it: `lambda_http`'s own conversion of
/// the event JSON into an `http::Request`.
fn http_request(event_json: &str) -> lambda_http::Request {
    let ev: lambda_http::request::LambdaRequest =
        serde_json::from_str(event_json).expect("Function URL sample event");
    lambda_http::Request::from(ev)
}

fn request(event_json: &str) -> WebhookRequest {
    WebhookRequest::from_http(http_request(event_json))
}

fn inv(id: &str) -> Invocation {
    Invocation::with_timeout(id, Duration::minutes(5))
}

/// A request like the sample with another body (and optionally path).
fn with_body(body: &str) -> WebhookRequest {
    WebhookRequest {
        body: Some(body.to_string()),
        ..request(EV_JSON)
    }
}

fn header<'a>(
    r: &'a ml_connector::lambda::webhook::WebhookResponse,
    name: &str,
) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_url_sample_posts_the_weekly_journal_and_a_redelivery_posts_nothing() {
    let w = world().build().await;
    // Through `lambda_http`'s conversion of the Function URL event and the HTTP handler, as
    // the binary runs it.
    let mut lctx = lambda_runtime::Context::default();
    lctx.request_id = "req-1".into();
    lctx.deadline = (chrono::Utc::now() + Duration::minutes(5)).timestamp_millis() as u64;
    let resp = http_handler(&w.ctx, http_request(EV_JSON).with_lambda_context(lctx))
        .await
        .expect("handler");
    assert_eq!(resp.status(), 200, "{:?}", resp.body());
    let body: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["period"], "2026-W47", "period from the request date");
    assert_eq!(body["journals"].as_array().unwrap().len(), 1);
    assert_eq!(body["lines_created"], 14);
    let run_id = body["run_id"].as_str().unwrap().to_string();

    let run = w
        .store
        .get_run(&run_id)
        .await
        .unwrap()
        .expect("run recorded");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.trigger, "webhook");
    assert_eq!(run.run_date, event_date());
    assert!(
        run.source.identity().starts_with("plan:1187/q:90211"),
        "{}",
        run.source.identity()
    );
    let prefix = format!("{}.L", run.keys.run_key);
    w.assert_weekly_journal(Some(&prefix));
    assert_eq!(
        body["journals"][0]["batch_number"],
        w.d365.headers()[0].batch_number.as_str()
    );

    // The idempotency record is in the store (DynamoDB under `.ci/test`), completed with the
    // answer.
    assert_eq!(
        w.backend.name(),
        if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|v| !v.is_empty()) {
            "dynamodb"
        } else {
            "sqlite"
        }
    );
    {
        use sha2::Digest;
        let key = format!(
            "webhook#{INSTANCE}#{}",
            hex::encode(sha2::Sha256::digest(
                request(EV_JSON).body.unwrap().as_bytes()
            ))
        );
        let now = chrono::Utc::now();
        match w
            .store
            .acquire_lock(
                &key,
                "probe",
                now,
                now + Duration::seconds(5),
                now + Duration::hours(1),
            )
            .await
            .unwrap()
        {
            ml_connector::store::LockOutcome::Completed { result } => {
                assert!(result.contains(&run_id), "{result}")
            }
            other => panic!("expected a completed idempotency record, got {other:?}"),
        }
    }

    // Looker sends the same delivery again: recorded answer, nothing new in D365.
    let again = handle_webhook(&w.ctx, request(EV_JSON), &inv("req-2")).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
    assert_eq!(again.json_body()["run_id"], run_id.as_str());
    assert_eq!(w.d365.lines().len(), 14);
    assert_eq!(w.d365.headers().len(), 1);
    assert_eq!(w.ctx.cached_instances(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_function_url_event_and_a_wrong_secret_through_lambda_http() {
    use base64::Engine as _;
    let w = world().build().await;
    // The Function URL base64-encodes a body it does not take for text; `lambda_http` decodes
    // it before the handler sees it.
    let mut ev: serde_json::Value = serde_json::from_str(EV_CSV).unwrap();
    let body = ev["body"].as_str().unwrap().to_string();
    ev["body"] = base64::engine::general_purpose::STANDARD
        .encode(body.as_bytes())
        .into();
    ev["isBase64Encoded"] = true.into();
    let req = http_request(&ev.to_string());
    assert_eq!(
        req.body().as_ref(),
        body.as_bytes(),
        "decoded by lambda_http"
    );
    let resp = http_handler(&w.ctx, req).await.expect("handler");
    assert_eq!(resp.status(), 200, "{:?}", resp.body());
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json"
    );
    w.assert_weekly_journal(None);

    // A wrong path secret: 404 with an empty body through the same adapter.
    let path = ev["rawPath"]
        .as_str()
        .unwrap()
        .replace(SECRET, "not-the-secret");
    ev["rawPath"] = path.into();
    let resp = http_handler(&w.ctx, http_request(&ev.to_string()))
        .await
        .expect("handler");
    assert_eq!(resp.status(), 404);
    assert!(resp.body().is_empty(), "{:?}", resp.body());
    // The same from the raw event to the payload-2.0 response: no body.
    let lr: lambda_http::request::LambdaRequest = serde_json::from_value(ev.clone()).unwrap();
    let resp = function_url_handler(
        &w.ctx,
        lambda_runtime::LambdaEvent::new(lr, lambda_runtime::Context::default()),
    )
    .await
    .expect("handler");
    assert_eq!(resp.status_code, 404);
    assert!(resp.body.is_none(), "{:?}", resp.body);
    assert_eq!(w.d365.lines().len(), 14, "nothing more posted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_rows_in_a_new_delivery_are_already_posted() {
    let w = world().build().await;
    let first = handle_webhook(&w.ctx, request(EV_JSON), &inv("a")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // Another plan id changes the body (new idempotency key) and the source identity; the
    // rows are the same, so D365's natural keys make it "already posted" or a recorded outcome
    // without a second journal.
    let body = request(EV_JSON)
        .body
        .unwrap()
        .replace("\"title\":\"Weekly", "\"title\":\"Resent weekly");
    let second = handle_webhook(&w.ctx, with_body(&body), &inv("b")).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(
        second.json_body()["status"],
        "already_posted",
        "{}",
        second.body
    );
    assert_eq!(header(&second, "idempotent-replayed"), None);
    assert_eq!(w.d365.lines().len(), 14);
}

/// Captures log output of code run on this thread.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_unknown_instance_and_other_routes_are_a_neutral_404() {
    let w = world().build().await;
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let wrong = "WRONG-secret-0123456789abcdefXYZ";
    let cases = [
        (
            "POST",
            format!("/ingest/{INSTANCE}/{wrong}"),
            "wrong or missing secret",
        ),
        (
            "POST",
            format!("/ingest/{INSTANCE}/{SECRET}x"),
            "wrong or missing secret",
        ),
        (
            "POST",
            format!("/ingest/no-such-instance/{SECRET}"),
            "unknown instance",
        ),
        ("POST", format!("/ingest/{INSTANCE}"), "not POST"),
        ("POST", format!("/ingest/{INSTANCE}/"), "not POST"),
        ("GET", format!("/ingest/{INSTANCE}/{SECRET}"), "not POST"),
        ("POST", format!("/other/{INSTANCE}/{SECRET}"), "not POST"),
        (
            "POST",
            format!("/ingest/{INSTANCE}/{SECRET}/extra"),
            "not POST",
        ),
    ];
    for (method, path, _) in &cases {
        let mut req = request(EV_JSON);
        req.method = method.to_string();
        req.path = path.clone();
        let r = handle_webhook(&w.ctx, req, &inv("x")).await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert!(r.body.is_empty(), "neutral body: {}", r.body);
    }
    w.assert_nothing_in_d365();
    assert!(w.store.list_runs(None, 10).await.unwrap().is_empty());

    let events = w.store.events(REJECTED_AUDIT_ID).await.unwrap();
    assert_eq!(events.len(), cases.len(), "one audit entry per refusal");
    for (event, (_, _, reason)) in events.iter().zip(&cases) {
        assert!(event.message.contains(reason), "{}", event.message);
        assert_eq!(event.level, "warn");
        assert!(!event.message.contains(wrong) && !event.message.contains(SECRET));
        assert!(event.message.contains("35.190.41.17"), "{}", event.message);
    }
    assert!(events[0].message.contains(INSTANCE));
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("webhook request refused"), "{logs}");
    assert!(logs.contains("unknown instance"), "{logs}");
    assert!(
        !logs.contains(wrong),
        "the presented secret is never logged"
    );
    assert!(!logs.contains(SECRET), "the real secret is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_deliveries_are_400_naming_the_problem() {
    let w = world()
        .settings(Settings {
            max_body_bytes: 64 * 1024,
            ..Settings::default()
        })
        .build()
        .await;
    let plan = r#""scheduled_plan":{"scheduled_plan_id":1187,"query_id":90211,"url":"https://acme.cloud.looker.com/looks/42"}"#;
    let cases: Vec<(String, &str)> = vec![
        ("not json at all".into(), "not a Looker webhook delivery"),
        ("[1,2,3]".into(), "expected a JSON object"),
        (
            r#"{"scheduled_plan":{"scheduled_plan_id":1187"#.into(),
            "invalid JSON",
        ),
        (
            r#"{"attachment":{"mimetype":"application/json","data":"[]"}}"#.into(),
            "`scheduled_plan`",
        ),
        (format!(r#"{{{plan}}}"#), "`attachment`"),
        (
            r#"{"scheduled_plan":{"scheduled_plan_id":{"id":1}},"attachment":{"data":"[]"}}"#
                .into(),
            "`scheduled_plan.scheduled_plan_id`",
        ),
        (
            format!(
                r#"{{{plan},"attachment":{{"mimetype":"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet;base64","extension":"xlsx","data":"UEsDBBQABgAIAAAAIQ=="}}}}"#
            ),
            "xlsx",
        ),
        (
            format!(
                r#"{{{plan},"attachment":{{"mimetype":"application/pdf;base64","extension":"wysiwyg_pdf","data":"JVBERi0xLjQK"}}}}"#
            ),
            "not supported",
        ),
        (
            format!(
                r#"{{{plan},"attachment":{{"mimetype":"application/json","extension":"json","data":42}}}}"#
            ),
            "`attachment.data`",
        ),
        (
            format!(
                r#"{{{plan},"attachment":{{"mimetype":"application/json","extension":"json","data":"[{{\"a.b\":1}}"}}}}"#
            ),
            "`attachment.data`",
        ),
        (
            format!(
                r#"{{{plan},"attachment":{{"mimetype":"text/csv;base64","extension":"csv","data":"%%%not base64"}}}}"#
            ),
            "base64",
        ),
        (
            format!(
                r#"{{{plan},"attachment":{{"mimetype":"text/csv","extension":"csv","data":"a.x,a.y\n1\n"}}}}"#
            ),
            "row 0 has 1 values",
        ),
        (
            // The csv crate alone would read `"1,5"0` as `1,50`.
            format!(
                r#"{{{plan},"attachment":{{"mimetype":"text/csv","extension":"csv","data":"a.x,a.y\nfee,\"1,5\"0\n"}}}}"#
            ),
            "row 0, line 2, column `a.y`: text after a closing quote",
        ),
        (
            format!(
                r#"{{{plan},"attachment":{{"mimetype":"application/json","data":"[{{\"a.m\":{{\"2024\":5}}}}]"}}}}"#
            ),
            "pivot",
        ),
    ];
    for (body, needle) in &cases {
        let r = handle_webhook(&w.ctx, with_body(body), &inv("m")).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let err = r.json_body()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            err.contains(needle),
            "expected `{needle}` in `{err}` for {body}"
        );
        assert!(!err.contains(SECRET));
    }
    // A body marked base64 that is not.
    let mut req = request(EV_JSON);
    req.is_base64_encoded = true;
    req.body = Some("this is *not* base64!".into());
    let r = handle_webhook(&w.ctx, req, &inv("m")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("base64"), "{}", r.body);
    // Empty body.
    let r = handle_webhook(&w.ctx, with_body(""), &inv("m")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("empty"), "{}", r.body);
    // Too large (limit lowered to 64 KiB for the test).
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let r = handle_webhook(&w.ctx, with_body(&big), &inv("m")).await;
    assert_eq!(r.status, 413, "{}", r.body);
    // A delivery cut at the query's row limit is refused as possibly truncated.
    let cut = request(EV_JSON)
        .body
        .unwrap()
        .replace("\"limit\":\"5000\"", "\"limit\":\"12\"");
    let r = handle_webhook(&w.ctx, with_body(&cut), &inv("m")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("truncated"), "{}", r.body);

    w.assert_nothing_in_d365();
    assert!(w.store.list_runs(None, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looker_webhook_token_is_required_when_the_instance_has_one() {
    let w = world().build().await;
    let token = "looker-admin-webhook-token-5f1c9e";
    assert!(w.secrets.update(INSTANCE, |s| {
        s.looker_webhook_token = Some(Secret::new(token));
    }));
    // The right path secret alone is not enough: no token, a wrong one, a longer one.
    for presented in [None, Some("wrong-token"), Some(&format!("{token}x")[..])] {
        let mut req = request(EV_JSON);
        req.looker_token = presented.map(str::to_string);
        let r = handle_webhook(&w.ctx, req, &inv("t")).await;
        assert_eq!(r.status, 404, "{presented:?}");
        assert!(r.body.is_empty(), "neutral body: {}", r.body);
    }
    w.assert_nothing_in_d365();
    let events = w.store.events(REJECTED_AUDIT_ID).await.unwrap();
    assert_eq!(events.len(), 3);
    for e in &events {
        assert!(
            e.message.contains("X-Looker-Webhook-Token"),
            "{}",
            e.message
        );
        assert!(!e.message.contains(token) && !e.message.contains(SECRET));
    }
    // Looker sends the token as a header: through lambda_http, it is read and accepted.
    let mut ev: serde_json::Value = serde_json::from_str(EV_JSON).unwrap();
    ev["headers"]["x-looker-webhook-token"] = token.into();
    let resp = http_handler(&w.ctx, http_request(&ev.to_string()))
        .await
        .expect("handler");
    assert_eq!(resp.status(), 200, "{:?}", resp.body());
    w.assert_weekly_journal(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_delivery_is_413_pointing_to_trigger_delivery() {
    use base64::Engine as _;
    let w = world()
        .settings(Settings {
            max_body_bytes: 64 * 1024,
            ..Settings::default()
        })
        .build()
        .await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let mut encoded = request(EV_JSON);
    encoded.is_base64_encoded = true;
    encoded.body = Some(base64::engine::general_purpose::STANDARD.encode(&big));
    for req in [with_body(&big), encoded] {
        let r = handle_webhook(&w.ctx, req, &inv("big")).await;
        assert_eq!(r.status, 413, "{}", r.body);
        let err = r.json_body()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(err.contains("delivery = \"trigger\""), "{err}");
        assert!(err.contains("6 MB") && err.contains("65536"), "{err}");
    }
    w.assert_nothing_in_d365();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_results_delivery_with_more_rows_than_the_saved_limit_posts() {
    let w = world().build().await;
    // "All results": the payload names the Look's saved query (limit 10), the run ignored it
    // and delivered all 12 rows.
    let body = request(EV_JSON)
        .body
        .unwrap()
        .replace("\"limit\":\"5000\"", "\"limit\":\"10\"");
    assert!(body.contains("\"limit\":\"10\""));
    let r = handle_webhook(&w.ctx, with_body(&body), &inv("all")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    w.assert_weekly_journal(None);
    // Exactly the limit: may be cut there, refused before anything is posted.
    let w = world().build().await;
    let cut = body.replace("\"limit\":\"10\"", "\"limit\":12");
    let r = handle_webhook(&w.ctx, with_body(&cut), &inv("cut")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.contains("truncated") && r.body.contains("trigger"),
        "{}",
        r.body
    );
    w.assert_nothing_in_d365();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_detail_delivery_posts_the_weekly_journal() {
    let w = world().build().await;
    let r = handle_webhook(&w.ctx, request(EV_DETAIL), &inv("d")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json_body()["status"], "completed");
    w.assert_weekly_journal(None);
    let run_id = r.json_body()["run_id"].as_str().unwrap().to_string();
    let run = w.store.get_run(&run_id).await.unwrap().unwrap();
    assert!(
        run.source.identity().starts_with("plan:1188/"),
        "{}",
        run.source.identity()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_delivery_with_looker_labels_posts_the_weekly_journal() {
    let w = world().build().await;
    let r = handle_webhook(&w.ctx, request(EV_CSV), &inv("c")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json_body()["status"], "completed");
    w.assert_weekly_journal(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base64_body_and_base64_attachment_are_decoded() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let w = world().build().await;
    let inner: serde_json::Value = serde_json::from_str(&request(EV_CSV).body.unwrap()).unwrap();
    let mut body = inner.clone();
    let csv = inner["attachment"]["data"].as_str().unwrap();
    body["attachment"]["mimetype"] = "text/csv;base64".into();
    body["attachment"]["data"] = b64.encode(csv).into();
    let mut req = request(EV_CSV);
    req.is_base64_encoded = true;
    req.body = Some(b64.encode(body.to_string()));
    let r = handle_webhook(&w.ctx, req, &inv("b")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    w.assert_weekly_journal(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_only_instance_extracts_through_the_api() {
    let w = world()
        .adjust(|c| c.webhook.delivery = ml_connector::domain::config::DeliveryMode::Trigger)
        .build()
        .await;
    // The delivery's rows are ignored (here: none at all); the connector runs the configured query.
    let body = r#"{"type":"query","scheduled_plan":{"scheduled_plan_id":1187,"query_id":90211,"url":"https://acme.cloud.looker.com/looks/42"},"attachment":null}"#;
    let r = handle_webhook(&w.ctx, with_body(body), &inv("t")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        w.looker.request_log().iter().any(|q| !q.is_login()),
        "extracted through the Looker API"
    );
    let run_id = r.json_body()["run_id"].as_str().unwrap().to_string();
    let run = w.store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.trigger, "webhook");
    assert!(
        run.source
            .identity()
            .starts_with("query:finance/marketplace_fees"),
        "{}",
        run.source.identity()
    );
    w.assert_weekly_journal(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_delivery_is_422_with_the_issues_and_is_not_cached() {
    let w = world().build().await;
    w.d365.set_main_account_suspended("618200", true);
    let r = handle_webhook(&w.ctx, request(EV_JSON), &inv("r1")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let body = r.json_body();
    assert_eq!(body["status"], "rejected");
    assert!(
        body["issues"].as_array().is_some_and(|i| !i.is_empty()),
        "{body}"
    );
    assert!(body.to_string().contains("618200"), "{body}");
    w.assert_nothing_in_d365();
    // Finance fixes D365; Looker resends the same delivery: it runs again and posts.
    w.d365.set_main_account_suspended("618200", false);
    let r = handle_webhook(&w.ctx, request(EV_JSON), &inv("r2")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    w.assert_weekly_journal(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_in_progress_elsewhere_is_429_with_retry_after() {
    let w = world().build().await;
    let body = request(EV_JSON).body.unwrap();
    use sha2::Digest;
    let key = format!(
        "webhook#{INSTANCE}#{}",
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    );
    let now = chrono::Utc::now();
    w.store
        .acquire_lock(
            &key,
            "other-invocation",
            now,
            now + Duration::seconds(90),
            now + Duration::hours(1),
        )
        .await
        .unwrap();
    let r = handle_webhook(&w.ctx, request(EV_JSON), &inv("late")).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let retry: i64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=90).contains(&retry), "{retry}");
    w.assert_nothing_in_d365();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_event_posts_the_journal_for_the_scheduled_week_once() {
    let w = world().build().await;
    let input: ScheduleInput = serde_json::from_str(EV_SCHEDULE).expect("scheduler sample");
    let out = handle_schedule(&w.ctx, input.clone(), &inv("s1"))
        .await
        .expect("scheduled run");
    assert_eq!(out["status"], "completed", "{out}");
    assert_eq!(out["period"], "2026-W47");
    let run_id = out["run_id"].as_str().unwrap().to_string();
    let run = w.store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.trigger, "schedule");
    assert_eq!(
        run.run_date,
        event_date(),
        "the scheduled time's date, not today"
    );
    w.assert_weekly_journal(Some(&format!("{}.L", run.keys.run_key)));
    // EventBridge delivers the same firing twice: the recorded summary, no second run.
    let again = handle_schedule(&w.ctx, input, &inv("s2")).await.unwrap();
    assert_eq!(again["run_id"], run_id.as_str());
    assert_eq!(w.store.list_runs(None, 10).await.unwrap().len(), 1);
    assert_eq!(w.d365.lines().len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_retryable_and_permanent_failures() {
    let w = world().build().await;
    // Unknown instance: permanent, answered (not retried).
    let out = handle_schedule(
        &w.ctx,
        ScheduleInput {
            instance: "nope".into(),
            scheduled_time: "2026-11-23T06:00:00Z".parse().unwrap(),
            execution_id: None,
        },
        &inv("p"),
    )
    .await
    .expect("permanent problems are not Err");
    assert_eq!(out["status"], "error", "{out}");
    // D365 refuses every line write: the run fails after being recorded → Err, so the async
    // invoke retries; the retry (D365 healthy again) completes the journal.
    w.d365.fail_next_writes(100, 400, false);
    let input: ScheduleInput = serde_json::from_str(EV_SCHEDULE).unwrap();
    let err = handle_schedule(&w.ctx, input.clone(), &inv("f1"))
        .await
        .expect_err("a failed run is retryable");
    assert!(err.is_retryable(), "{err}");
    w.d365.fail_next_writes(0, 400, false);
    let out = handle_schedule(&w.ctx, input, &inv("f2"))
        .await
        .expect("retry");
    assert_eq!(out["status"], "completed", "{out}");
    assert_eq!(w.d365.headers().len(), 1);
    assert_eq!(w.d365.lines().len(), 14);
}

/// A ledger that refuses every line after the first `ok_lines`, to leave a run half-posted.
struct FailAfter<'a> {
    inner: &'a dyn LedgerGateway,
    ok_lines: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl LedgerGateway for FailAfter<'_> {
    // The refusal is injected per line (`create_line`): post line by line, as a D365 without
    // `$batch` would, so exactly `ok_lines` lines land before it.
    async fn create_vouchers(
        &self,
        _: &[Vec<NewLedgerLine>],
        _: usize,
    ) -> Result<Option<Vec<ml_connector::ports::VoucherOutcome>>, LedgerError> {
        Ok(None)
    }
    async fn reference(&self, le: &str) -> Result<ReferenceData, LedgerError> {
        self.inner.reference(le).await
    }
    async fn find_headers(&self, le: &str, p: &str) -> Result<Vec<LedgerHeader>, LedgerError> {
        self.inner.find_headers(le, p).await
    }
    async fn create_header(&self, le: &str, j: &str, d: &str) -> Result<LedgerHeader, LedgerError> {
        self.inner.create_header(le, j, d).await
    }
    async fn lines(&self, le: &str, b: &str) -> Result<Vec<LedgerLine>, LedgerError> {
        self.inner.lines(le, b).await
    }
    async fn create_line(&self, l: &NewLedgerLine) -> Result<LedgerLine, LedgerError> {
        use std::sync::atomic::Ordering;
        if self.ok_lines.load(Ordering::SeqCst) == 0 {
            return Err(LedgerError::Rejected("simulated refusal".into()));
        }
        self.ok_lines.fetch_sub(1, Ordering::SeqCst);
        self.inner.create_line(l).await
    }
    // Reads and deletes are D365's own.
    async fn header(&self, le: &str, b: &str) -> Result<Option<LedgerHeader>, LedgerError> {
        self.inner.header(le, b).await
    }
    async fn delete_line(&self, le: &str, b: &str, n: &str) -> Result<bool, LedgerError> {
        self.inner.delete_line(le, b, n).await
    }
    async fn delete_lines_atomic(
        &self,
        le: &str,
        b: &str,
        n: &[String],
    ) -> Result<bool, LedgerError> {
        self.inner.delete_lines_atomic(le, b, n).await
    }
    async fn delete_header(&self, le: &str, b: &str) -> Result<bool, LedgerError> {
        self.inner.delete_header(le, b).await
    }
}

/// Runs the weekly sync with a ledger that stops after 5 lines; returns the failed run id.
async fn half_posted_run(w: &World) -> String {
    let clients = build_clients(&w.config, &sandbox_creds()).unwrap();
    let failing = FailAfter {
        inner: &clients.d365,
        ok_lines: std::sync::atomic::AtomicUsize::new(5),
    };
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &failing,
        store: w.store.as_ref(),
        progress: &NoProgress,
    };
    let opts = RunOptions {
        run_date: event_date(),
        trigger: "test".into(),
        mode: Mode::Post,
        lease: Duration::minutes(5),
        deadline: None,
        supersede: false,
    };
    let report = engine.run(&w.config, &opts).await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed, "{:?}", report.run.message);
    assert_eq!(w.d365.lines().len(), 5);
    report.run.run_id
}

fn replay_event(run_id: &str) -> StreamEvent {
    serde_json::from_str(&EV_REPLAY.replace(SAMPLE_RUN_ID, run_id)).expect("stream sample")
}

fn sequence_number(ev: &StreamEvent) -> String {
    ev.records[0].change.sequence_number.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_record_reposts_exactly_the_missing_lines() {
    let w = world().build().await;
    let run_id = half_posted_run(&w).await;
    w.looker.clear_request_log();
    let resp = handle_replay(&w.ctx, replay_event(&run_id), &inv("rp1"))
        .await
        .expect("batch handled");
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    assert!(
        w.looker.request_log().is_empty(),
        "replay does not re-extract"
    );
    let run = w.store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed, "{:?}", run.message);
    assert!(w
        .store
        .lines(&run_id)
        .await
        .unwrap()
        .iter()
        .all(|l| l.status == LineStatus::Created));
    w.assert_weekly_journal(Some(&format!("{}.L", run.keys.run_key)));
    let mut texts: Vec<_> = w.d365.lines().iter().map(|l| l.text.clone()).collect();
    texts.sort();
    texts.dedup();
    assert_eq!(texts.len(), 14, "no duplicate line");
    let events = w.store.events(&run_id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("jane.doe@acme.example")),
        "requester recorded: {events:?}"
    );

    // The stream re-delivers the record after a checkpoint: handled once only.
    let resp = handle_replay(&w.ctx, replay_event(&run_id), &inv("rp2"))
        .await
        .unwrap();
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(w.d365.lines().len(), 14);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_replay_reports_its_sequence_number_and_a_retry_succeeds() {
    let w = world().build().await;
    let run_id = half_posted_run(&w).await;
    // A batch: the replay request (D365 will refuse the writes), a TTL REMOVE, a run-item
    // MODIFY without a replay flag, and a request for an unknown run (permanent: dropped).
    let mut ev = replay_event(&run_id);
    let seq = sequence_number(&ev);
    let mut remove = ev.records[0].clone();
    remove.event_name = "REMOVE".into();
    remove.event_id = "ttl-remove".into();
    remove.change.sequence_number = Some("4421584500000000017450439092".into());
    let mut modify: aws_lambda_events::event::dynamodb::EventRecord = serde_json::from_value(
        serde_json::json!({
            "eventID": "modify-1", "eventName": "MODIFY", "awsRegion": "eu-west-1",
            "dynamodb": {
                "Keys": {"pk": {"S": format!("RUN#{run_id}")}, "sk": {"S": "RUN"}},
                "NewImage": {"pk": {"S": format!("RUN#{run_id}")}, "sk": {"S": "RUN"}, "status": {"S": "failed"}, "rev": {"N": "3"}},
                "OldImage": {"pk": {"S": format!("RUN#{run_id}")}, "sk": {"S": "RUN"}, "status": {"S": "posting"}, "rev": {"N": "2"}},
                "SequenceNumber": "4421584500000000017450439093", "SizeBytes": 100,
                "StreamViewType": "NEW_AND_OLD_IMAGES"
            }
        }),
    )
    .unwrap();
    modify.event_source = Some("aws:dynamodb".into());
    let mut unknown = replay_event("r-20990101000000-dead").records.remove(0);
    unknown.event_id = "unknown-run".into();
    unknown.change.sequence_number = Some("4421584500000000017450439094".into());
    ev.records.extend([remove, modify, unknown]);

    // Single writes and `$batch` requests alike are refused.
    w.d365.fail_next_writes(100, 400, false);
    w.d365.fail_next_batches(100, 400, false);
    let resp = handle_replay(&w.ctx, ev.clone(), &inv("f1")).await.unwrap();
    let failed: Vec<_> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap())
        .collect();
    assert_eq!(
        failed,
        vec![seq.clone()],
        "only the failed replay is reported"
    );
    let json = serde_json::to_value(&resp).unwrap();
    assert_eq!(json["batchItemFailures"][0]["itemIdentifier"], seq.as_str());
    assert_eq!(w.d365.lines().len(), 5, "nothing new while D365 refuses");
    let unknown_events = w.store.events("r-20990101000000-dead").await.unwrap();
    assert!(unknown_events
        .iter()
        .any(|e| e.message.contains("not in the audit store")));

    // Lambda retries from the failed record; D365 is healthy again.
    w.d365.fail_next_writes(0, 400, false);
    w.d365.fail_next_batches(0, 400, false);
    let resp = handle_replay(&w.ctx, ev, &inv("f2")).await.unwrap();
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    w.assert_weekly_journal(None);
    let run = w.store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_item_modify_with_replay_requested_triggers_a_replay() {
    let w = world().build().await;
    let run_id = half_posted_run(&w).await;
    let rec = |old_flag: bool, seq: &str| -> serde_json::Value {
        let mut old = serde_json::json!({"pk": {"S": format!("RUN#{run_id}")}, "sk": {"S": "RUN"}, "run_id": {"S": run_id}});
        if old_flag {
            old["replay_requested"] = serde_json::json!({"BOOL": true});
        }
        serde_json::json!({
            "eventID": format!("ev-{seq}"), "eventName": "MODIFY", "awsRegion": "eu-west-1",
            "dynamodb": {
                "Keys": {"pk": {"S": format!("RUN#{run_id}")}, "sk": {"S": "RUN"}},
                "NewImage": {"pk": {"S": format!("RUN#{run_id}")}, "sk": {"S": "RUN"}, "run_id": {"S": run_id}, "replay_requested": {"BOOL": true}},
                "OldImage": old,
                "SequenceNumber": seq, "SizeBytes": 100, "StreamViewType": "NEW_AND_OLD_IMAGES"
            }
        })
    };
    // Flag already set before: not a new request.
    let ev: StreamEvent =
        serde_json::from_value(serde_json::json!({"Records": [rec(true, "100")]})).unwrap();
    let resp = handle_replay(&w.ctx, ev, &inv("m1")).await.unwrap();
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(w.d365.lines().len(), 5, "ignored");
    // Flag newly set: replayed.
    let ev: StreamEvent =
        serde_json::from_value(serde_json::json!({"Records": [rec(false, "101")]})).unwrap();
    let resp = handle_replay(&w.ctx, ev, &inv("m2")).await.unwrap();
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    w.assert_weekly_journal(None);
}

// ---- payload parser properties ----------------------------------------------------------

fn is_client_error(e: &DeliveryError) -> bool {
    (400..500).contains(&e.status_code())
}

fn sample_body() -> String {
    request(EV_JSON).body.unwrap()
}

fn attachment_body(mimetype: &str, data: &str) -> String {
    format!(
        r#"{{"type":"query","scheduled_plan":{{"scheduled_plan_id":1,"query_id":"2"}},"attachment":{{"mimetype":{},"data":{}}}}}"#,
        serde_json::to_string(mimetype).unwrap(),
        data
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        match parse_delivery(&bytes) {
            Ok(_) => {}
            Err(e) => prop_assert!(is_client_error(&e), "{e}"),
        }
    }

    #[test]
    fn truncated_sample_is_a_400(cut in 0usize..5000) {
        let body = sample_body();
        let cut = cut.min(body.len().saturating_sub(1));
        let e = parse_delivery(&body.as_bytes()[..cut]).expect_err("a truncated body is not a delivery");
        prop_assert_eq!(e.status_code(), 400);
    }

    #[test]
    fn huge_and_odd_numbers_are_exact_or_text(
        int in "-?[0-9]{1,60}",
        frac in proptest::option::of("[0-9]{1,40}"),
        exp in proptest::option::of(-400i32..400),
    ) {
        let mut lit = int.clone();
        if let Some(f) = &frac { lit.push('.'); lit.push_str(f); }
        if let Some(x) = exp { lit.push_str(&format!("e{x}")); }
        // Leading zeros are not JSON: the parser must refuse, not panic.
        let rows = format!(r#"[{{"a.amount":{lit},"a.k":"x"}}]"#);
        for data in [serde_json::to_string(&rows).unwrap(), rows.clone()] {
            match parse_delivery(attachment_body("application/json", &data).as_bytes()) {
                Ok(d) => {
                    let cell = d.extract.rows[0].get("a.amount").cloned();
                    prop_assert!(matches!(cell, Some(ml_connector::domain::source::Cell::Number(_)) | Some(ml_connector::domain::source::Cell::Text(_))), "{cell:?}");
                    if let Some(ml_connector::domain::source::Cell::Number(n)) = cell {
                        if exp.is_none() {
                            prop_assert_eq!(n, Decimal::from_str(&lit).unwrap().normalize());
                        }
                    }
                }
                Err(e) => prop_assert!(is_client_error(&e), "{e}"),
            }
        }
    }

    #[test]
    fn wrong_types_anywhere_are_400(
        slot in 0usize..8,
        value in prop_oneof![
            Just("null".to_string()), Just("true".to_string()), Just("[]".to_string()),
            Just("{}".to_string()), Just("\"\"".to_string()), Just("-1.5e999".to_string()),
            Just("[[1]]".to_string()), Just("\"x\"".to_string()), Just("123456789012345678901234567890".to_string()),
        ],
    ) {
        let slots = [
            format!(r#"{{"type":{value},"scheduled_plan":{{"scheduled_plan_id":1}},"attachment":{{"mimetype":"application/json","data":"[]"}}}}"#),
            format!(r#"{{"scheduled_plan":{value},"attachment":{{"mimetype":"application/json","data":"[]"}}}}"#),
            format!(r#"{{"scheduled_plan":{{"scheduled_plan_id":{value}}},"attachment":{{"mimetype":"application/json","data":"[]"}}}}"#),
            format!(r#"{{"scheduled_plan":{{"scheduled_plan_id":1,"query":{value}}},"attachment":{{"mimetype":"application/json","data":"[]"}}}}"#),
            format!(r#"{{"scheduled_plan":{{"scheduled_plan_id":1}},"attachment":{value}}}"#),
            format!(r#"{{"scheduled_plan":{{"scheduled_plan_id":1}},"attachment":{{"mimetype":{value},"data":"[]"}}}}"#),
            format!(r#"{{"scheduled_plan":{{"scheduled_plan_id":1}},"attachment":{{"mimetype":"application/json","data":{value}}}}}"#),
            format!(r#"{{"scheduled_plan":{{"scheduled_plan_id":1}},"attachment":{{"mimetype":"text/csv","data":{value}}}}}"#),
        ];
        match parse_delivery(slots[slot].as_bytes()) {
            Ok(_) => {}
            Err(e) => prop_assert!(is_client_error(&e), "{e}"),
        }
    }

    #[test]
    fn random_base64_never_panics(
        text in "[A-Za-z0-9+/=\\s%-]{0,400}",
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        mime in prop_oneof![Just("text/csv;base64"), Just("application/json;base64"), Just("text/tab-separated-values;base64")],
    ) {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        for data in [text.clone(), encoded.clone()] {
            let body = attachment_body(mime, &serde_json::to_string(&data).unwrap());
            match parse_delivery(body.as_bytes()) {
                Ok(_) => {}
                Err(e) => prop_assert!(is_client_error(&e), "{e}"),
            }
        }
        // The HTTP body itself marked base64.
        match decode_body(Some(&text), true) {
            Ok(b) => { let _ = parse_delivery(&b); }
            Err(e) => prop_assert_eq!(e.status_code(), 400),
        }
        let decoded = decode_body(Some(&encoded), true).expect("valid base64");
        prop_assert_eq!(&decoded, &bytes);
        if let Err(e) = parse_delivery(&decoded) {
            prop_assert!(is_client_error(&e), "{e}");
        }
    }

    #[test]
    fn csv_text_after_a_closing_quote_is_refused_never_mis_split(
        cell in "[^\u{0}\"]{0,12}",
        tail in "[^\u{0},\"\r\n]{1,6}",
    ) {
        let csv = format!("v.a,v.b\r\nok,1\r\n\"{cell}\"{tail},2\r\n");
        let body = attachment_body("text/csv", &serde_json::to_string(&csv).unwrap());
        let e = parse_delivery(body.as_bytes()).expect_err("a record with text after its closing quote");
        prop_assert!(e.to_string().contains("row 1") && e.to_string().contains("closing quote"), "{e}");
        prop_assert_eq!(e.status_code(), 400);
    }

    #[test]
    fn csv_round_trips_any_text(cells in proptest::collection::vec("[^\u{0}]{0,12}", 2..8)) {
        // Quote every cell RFC-4180 style; the parser must give the text back exactly.
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let header = (0..cells.len()).map(|i| format!("v.c{i}")).collect::<Vec<_>>().join(",");
        let row = cells.iter().map(|c| q(c)).collect::<Vec<_>>().join(",");
        let csv = format!("{header}\r\n{row}\r\n");
        let body = attachment_body("text/csv", &serde_json::to_string(&csv).unwrap());
        let d = parse_delivery(body.as_bytes()).expect("quoted csv");
        prop_assert_eq!(d.extract.rows.len(), 1);
        for (i, c) in cells.iter().enumerate() {
            prop_assert_eq!(d.extract.rows[0].get(&format!("v.c{i}")), Some(&ml_connector::domain::source::Cell::Text(c.clone())));
        }
    }
}
