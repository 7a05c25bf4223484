//! The Looker action hub on the webhook function (`/actions`): list and form shapes, the hub
//! token on every route, dry run, a real post, a redelivery, form and row rejections, the
//! body limit, sender restrictions, and the sandbox flow through the action client over a
//! real socket.
//!
//! The audit/idempotency store is DynamoDB on the local moto server when `.ci/test` exports
//! `AWS_ENDPOINT_URL`, else SQLite.
#![cfg(all(feature = "aws", feature = "sandbox"))]

mod common;

use common::{env_store, Backend, World, EXAMPLE};
use std::sync::Arc;

use ml_connector::domain::config::InstanceConfig;
use ml_connector::lambda::action_hub::protocol::{EXECUTE_PATH, FORM_PATH, LIST_PATH};
use ml_connector::lambda::action_hub::token::StaticHubToken;
use ml_connector::lambda::action_hub::{
    ActionHub, ActionHubSettings, REJECTED_AUDIT_ID, SENDER_KIND,
};
use ml_connector::lambda::local::{action_demo, MemConfigs, MemSecrets};
use ml_connector::lambda::webhook::{handle_webhook, WebhookRequest, WebhookResponse};
use ml_connector::lambda::{Invocation, LambdaContext, Settings};
use ml_connector::sandbox::looker::action_client::{execute_body, run_look_json_detail};
use ml_connector::sandbox::looker::seed::{DEMO_LOOK_ID, DEMO_LOOK_TITLE};
use ml_connector::sandbox::looker::{SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET};
use ml_connector::secrets::Secret;
use ml_connector::store::Store;
use rust_decimal::Decimal;
use serde_json::{json, Value};

const TOKEN: &str = "hub-token-7f3a9c21d4e8b605";
const HOST: &str = "abc123.lambda-url.eu-west-1.on.aws";

/// The action hub tests' world: the common world with the hub on (token [`TOKEN`]), and the
/// Look's rows as Looker pushes them (json_detail).
struct Hub {
    world: World,
    rows: String,
}

impl std::ops::Deref for Hub {
    type Target = World;
    fn deref(&self) -> &World {
        &self.world
    }
}

impl std::ops::DerefMut for Hub {
    fn deref_mut(&mut self) -> &mut World {
        &mut self.world
    }
}

impl Hub {
    async fn start() -> Hub {
        Self::start_with(Settings::default(), |_| {}).await
    }

    async fn start_with<'a>(
        settings: Settings,
        adjust: impl FnOnce(&mut InstanceConfig) + Send + 'a,
    ) -> Hub {
        let world = World::builder()
            .adjust(adjust)
            .store(Backend::from_env())
            .settings(settings)
            .action_hub(TOKEN)
            .build()
            .await;
        let rows = run_look_json_detail(
            &world.looker.base_url(),
            SANDBOX_LOOKER_CLIENT_ID,
            SANDBOX_LOOKER_CLIENT_SECRET,
            DEMO_LOOK_ID,
        )
        .await
        .expect("the Look's json_detail");
        Hub { world, rows }
    }

    async fn call(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        webhook_id: Option<&str>,
    ) -> WebhookResponse {
        let req = WebhookRequest {
            method: "POST".into(),
            path: path.into(),
            body: body.map(|b| b.to_string()),
            authorization: token.map(|t| format!("Token token=\"{t}\"")),
            webhook_id: webhook_id.map(str::to_string),
            host: Some(HOST.into()),
            user_agent: Some("LookerOutgoingWebhook/25.20.32".into()),
            ..WebhookRequest::default()
        };
        let inv = Invocation::with_timeout(
            format!("inv-{:08x}", fastrand::u32(..)),
            chrono::Duration::minutes(5),
        );
        handle_webhook(&self.ctx, req, &inv).await
    }

    fn execute_body(&self, form: Value) -> Value {
        execute_body(
            &format!("{}/looks/{DEMO_LOOK_ID}", self.looker.base_url()),
            DEMO_LOOK_TITLE,
            &self.rows,
            &json!({"sender": "ana@example.com"}),
            &form,
        )
    }

    fn form(&self, dry_run: &str) -> Value {
        json!({"instance": self.config.instance, "period": "", "dry_run": dry_run, "note": "month-end accrual"})
    }

    async fn runs(&self) -> usize {
        self.store.list_runs(None, 100).await.unwrap().len()
    }
}

fn looker(r: &WebhookResponse) -> Value {
    r.json_body()["looker"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_form_have_lookers_shapes() {
    let w = Hub::start().await;
    let r = w.call(LIST_PATH, Some(TOKEN), None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b = r.json_body();
    assert_eq!(b["label"], "ml-connector");
    let a = &b["integrations"][0];
    assert_eq!(b["integrations"].as_array().map(Vec::len), Some(1));
    assert_eq!(a["name"], "d365_journal");
    assert_eq!(a["label"], "Post to Dynamics 365 journal");
    assert_eq!(a["url"], format!("https://{HOST}{EXECUTE_PATH}"));
    assert_eq!(a["form_url"], format!("https://{HOST}{FORM_PATH}"));
    assert_eq!(a["supported_action_types"], json!(["query"]));
    assert_eq!(a["supported_formats"], json!(["json_detail", "csv"]));
    assert_eq!(a["supported_formattings"], json!(["unformatted"]));
    assert_eq!(a["supported_download_settings"], json!(["push"]));
    assert_eq!(a["params"][0]["name"], "sender");
    assert_eq!(a["params"][0]["user_attribute_name"], "email");
    assert_eq!(a["params"][0]["sensitive"], false);

    let r = w
        .call(
            FORM_PATH,
            Some(TOKEN),
            Some(&json!({"data": {"sender": "ana@example.com"}})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fields = r.json_body()["fields"].as_array().cloned().expect("fields");
    let names: Vec<&str> = fields.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["instance", "period", "dry_run", "note"]);
    assert_eq!(fields[0]["type"], "select");
    assert_eq!(
        fields[0]["options"],
        json!([{"name": w.config.instance, "label": w.config.instance}])
    );
    let today = chrono::Utc::now().date_naive();
    assert_eq!(
        fields[1]["default"],
        w.config.period.kind.period_for(today).label
    );
    assert_eq!(fields[2]["default"], "yes");
    assert_eq!(fields[3]["type"], "textarea");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_on_every_route_and_audited_with_nothing_written() {
    let w = Hub::start().await;
    let body = w.execute_body(w.form("no"));
    for (path, token) in [
        (LIST_PATH, None),
        (FORM_PATH, Some("wrong")),
        (EXECUTE_PATH, Some("wrong")),
        (EXECUTE_PATH, None),
        (EXECUTE_PATH, Some(&TOKEN[..TOKEN.len() - 1])),
    ] {
        let r = w.call(path, token, Some(&body), Some("wh-1")).await;
        assert_eq!(r.status, 403, "{path} {token:?}: {}", r.body);
        assert_eq!(r.json_body()["success"], false);
    }
    // A header in another scheme is no token either.
    let req = WebhookRequest {
        method: "POST".into(),
        path: LIST_PATH.into(),
        authorization: Some(format!("Bearer {TOKEN}")),
        ..WebhookRequest::default()
    };
    let r = handle_webhook(
        &w.ctx,
        req,
        &Invocation::with_timeout("x", chrono::Duration::minutes(1)),
    )
    .await;
    assert_eq!(r.status, 403);
    let refused = w.store.events(REJECTED_AUDIT_ID).await.unwrap();
    assert_eq!(refused.len(), 6, "{refused:?}");
    assert!(refused
        .iter()
        .all(|e| e.kind == "action_refused" && !e.message.contains(TOKEN)));
    assert!(w.d365.lines().is_empty());
    assert_eq!(w.runs().await, 0);
    // The right token then works.
    assert_eq!(w.call(LIST_PATH, Some(TOKEN), None, None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_returns_the_exact_journal_and_writes_nothing_then_the_post_matches_it() {
    let w = Hub::start().await;
    let r = w
        .call(
            EXECUTE_PATH,
            Some(TOKEN),
            Some(&w.execute_body(w.form("yes"))),
            Some("wh-dry"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let l = looker(&r);
    assert_eq!(l["success"], true, "{l}");
    let message = l["message"].as_str().unwrap();
    assert!(
        message.contains("Dry run") && message.contains("nothing was written"),
        "{message}"
    );
    let preview = r.json_body()["preview"].clone();
    let journals = preview["journals"].as_array().cloned().expect("journals");
    assert!(!journals.is_empty());
    // Nothing in D365, no run, no idempotency record: the same delivery id may post later.
    assert!(w.d365.lines().is_empty());
    assert_eq!(w.runs().await, 0);

    let r = w
        .call(
            EXECUTE_PATH,
            Some(TOKEN),
            Some(&w.execute_body(w.form("no"))),
            Some("wh-dry"),
        )
        .await;
    assert_eq!(looker(&r)["success"], true, "{}", r.body);
    let lines = w.d365.lines();
    let previewed: Vec<&Value> = journals
        .iter()
        .flat_map(|j| j["lines"].as_array().unwrap())
        .collect();
    assert_eq!(lines.len(), previewed.len());
    for (posted, planned) in lines.iter().zip(&previewed) {
        let amount: Decimal = planned["amount"].as_str().unwrap().parse().unwrap();
        assert_eq!(posted.debit - posted.credit, amount, "{planned}");
        assert_eq!(posted.text, planned["text"].as_str().unwrap());
        // Every line is in the dry run's message too.
        assert!(
            message.contains(planned["text"].as_str().unwrap()),
            "{planned}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_names_its_journal_and_sender_and_a_redelivery_gets_the_recorded_answer() {
    let w = Hub::start().await;
    let body = w.execute_body(w.form("no"));
    let r = w
        .call(
            EXECUTE_PATH,
            Some(TOKEN),
            Some(&body),
            Some("6c1f0d2e9a8b4c7d"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let l = looker(&r);
    assert_eq!(l["success"], true, "{l}");
    let b = r.json_body();
    let journal = format!(
        "{}/{}",
        b["run"]["journals"][0]["legal_entity"].as_str().unwrap(),
        b["run"]["journals"][0]["batch_number"].as_str().unwrap()
    );
    assert!(l["message"].as_str().unwrap().contains(&journal), "{l}");
    let lines = w.d365.lines();
    assert!(!lines.is_empty());
    let debit: Decimal = lines.iter().map(|x| x.debit).sum();
    let credit: Decimal = lines.iter().map(|x| x.credit).sum();
    assert_eq!(debit, credit, "balanced");
    let run_id = b["run"]["run_id"].as_str().unwrap();
    let events = w.store.events(run_id).await.unwrap();
    let sent = events
        .iter()
        .find(|e| e.kind == SENDER_KIND)
        .expect("sender recorded");
    assert!(
        sent.message.contains("ana@example.com")
            && sent.message.contains("6c1f0d2e9a8b4c7d")
            && sent.message.contains("month-end accrual"),
        "{}",
        sent.message
    );

    // Looker delivers the same execute again: the recorded answer, nothing new anywhere.
    let again = w
        .call(
            EXECUTE_PATH,
            Some(TOKEN),
            Some(&body),
            Some("6c1f0d2e9a8b4c7d"),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json_body(), r.json_body());
    assert!(again
        .headers
        .iter()
        .any(|(k, v)| k == "idempotent-replayed" && v == "true"));
    assert_eq!(w.d365.lines().len(), lines.len());
    assert_eq!(w.runs().await, 1);

    // Another delivery of the same rows (a new id) posts nothing either: the run key finds
    // the journal.
    let third = w
        .call(
            EXECUTE_PATH,
            Some(TOKEN),
            Some(&body),
            Some("another-delivery"),
        )
        .await;
    let l = looker(&third);
    assert_eq!(l["success"], true, "{l}");
    assert!(
        l["message"].as_str().unwrap().contains("Already posted"),
        "{l}"
    );
    assert_eq!(w.d365.lines().len(), lines.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn form_problems_come_back_as_validation_errors_and_bad_rows_are_named() {
    let w = Hub::start().await;
    let r = w
        .call(
            EXECUTE_PATH,
            Some(TOKEN),
            Some(&w.execute_body(json!({"instance": "", "dry_run": "maybe"}))),
            Some("wh-v1"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let l = looker(&r);
    assert_eq!(l["success"], false);
    assert!(l["validation_errors"]["instance"].is_string(), "{l}");
    assert!(
        l["validation_errors"]["dry_run"]
            .as_str()
            .unwrap()
            .contains("maybe"),
        "{l}"
    );
    let r = w
        .call(
            EXECUTE_PATH,
            Some(TOKEN),
            Some(&w.execute_body(
                json!({"instance": w.config.instance, "period": "2026-13", "dry_run": "no"}),
            )),
            Some("wh-v2"),
        )
        .await;
    let l = looker(&r);
    assert_eq!(l["success"], false);
    assert!(
        l["validation_errors"]["period"]
            .as_str()
            .unwrap()
            .contains("2026-13"),
        "{l}"
    );
    assert!(l["validation_errors"].get("instance").is_none(), "{l}");

    // Rows the mapping refuses: the row and column named, nothing written. The Look's
    // first row as CSV, with its amount made unreadable.
    let amount_col = w.config.amount.column.clone().expect("amount column");
    let detail: Value = serde_json::from_str(&w.rows).unwrap();
    let first = detail["data"][0].as_object().cloned().expect("a row");
    let columns: Vec<String> = first.keys().cloned().collect();
    let cells = |amount: &str| -> String {
        columns
            .iter()
            .map(|c| {
                if *c == amount_col {
                    amount.to_string()
                } else {
                    match &first[c]["value"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let csv = format!("{}\n{}\n", columns.join(","), cells("12.5x"));
    let mut body = w.execute_body(w.form("no"));
    body["attachment"] = json!({"mimetype": "text/csv", "extension": "csv", "data": csv});
    let r = w
        .call(EXECUTE_PATH, Some(TOKEN), Some(&body), Some("wh-v3"))
        .await;
    let l = looker(&r);
    assert_eq!(l["success"], false, "{l}");
    let m = l["message"].as_str().unwrap();
    assert!(
        m.contains("Nothing was posted") && m.contains(&amount_col),
        "{m}"
    );
    assert!(w.d365.lines().is_empty());

    // A CSV whose quoting is broken is refused with its row, not mis-split.
    body["attachment"]["data"] = json!(format!("{}\n{}\n", columns.join(","), cells("\"1,5\"0")));
    let r = w
        .call(EXECUTE_PATH, Some(TOKEN), Some(&body), Some("wh-v4"))
        .await;
    let m = looker(&r)["message"].as_str().unwrap().to_string();
    assert!(
        m.contains("row 0, line 2") && m.contains("closing quote"),
        "{m}"
    );
    assert!(w.d365.lines().is_empty());
    assert_eq!(
        w.runs().await,
        1,
        "the refused mapping is recorded as a rejected run; the broken CSV is not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_in_lookers_shape() {
    let settings = Settings {
        max_body_bytes: 4096,
        ..Settings::default()
    };
    let w = Hub::start_with(settings, |_| {}).await;
    let body = w.execute_body(w.form("no"));
    assert!(body.to_string().len() > 4096);
    let r = w
        .call(EXECUTE_PATH, Some(TOKEN), Some(&body), Some("wh-big"))
        .await;
    assert_eq!(r.status, 413, "{}", r.body);
    let l = looker(&r);
    assert_eq!(l["success"], false);
    assert!(l["message"].as_str().unwrap().contains("trigger"), "{l}");
    assert!(w.d365.lines().is_empty());
    assert_eq!(w.runs().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_may_restrict_who_posts() {
    let w = Hub::start_with(Settings::default(), |c| {
        c.action.senders = vec!["controller@example.com".into()];
    })
    .await;
    let r = w
        .call(
            EXECUTE_PATH,
            Some(TOKEN),
            Some(&w.execute_body(w.form("no"))),
            Some("wh-s1"),
        )
        .await;
    let l = looker(&r);
    assert_eq!(l["success"], false, "{l}");
    assert!(
        l["message"].as_str().unwrap().contains("ana@example.com"),
        "{l}"
    );
    assert!(w.d365.lines().is_empty());
    assert_eq!(w.store.events(REJECTED_AUDIT_ID).await.unwrap().len(), 1);
    // Ana is not offered the instance in the form either.
    let r = w
        .call(
            FORM_PATH,
            Some(TOKEN),
            Some(&json!({"data": {"sender": "ana@example.com"}})),
            None,
        )
        .await;
    assert!(r.json_body()["error"].is_string(), "{}", r.body);
    // The controller posts.
    let mut body = w.execute_body(w.form("no"));
    body["data"]["sender"] = json!("Controller@example.com");
    let r = w
        .call(EXECUTE_PATH, Some(TOKEN), Some(&body), Some("wh-s2"))
        .await;
    assert_eq!(looker(&r)["success"], true, "{}", r.body);
    assert!(!w.d365.lines().is_empty());
}

/// Replay requests as the replay function's queue receives them.
#[derive(Default)]
struct Queue(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl ml_connector::store::ReplayRequests for Queue {
    async fn request_replay(
        &self,
        run_id: &str,
        _by: &str,
    ) -> Result<(), ml_connector::store::StoreError> {
        self.0.lock().unwrap().push(run_id.to_string());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_longer_than_the_inline_budget_is_accepted_and_continued() {
    let mut w = Hub::start().await;
    // Every D365 request takes 400 ms; the action may run inline for 1 s.
    w.d365
        .set_cost_model(ml_connector::sandbox::d365::CostModel {
            request_overhead: std::time::Duration::from_millis(400),
            ..Default::default()
        });
    let queue = Arc::new(Queue::default());
    let hub = w.ctx.action_hub.take().expect("hub");
    let ctx = std::mem::replace(
        &mut w.world.ctx,
        LambdaContext::new(
            w.world.store.clone(),
            Arc::new(MemConfigs::default()),
            Arc::new(MemSecrets::default()),
            Settings::default(),
        ),
    );
    w.ctx = ctx
        .with_continuations(queue.clone())
        .with_action_hub(ActionHub {
            settings: ActionHubSettings {
                inline_budget: std::time::Duration::from_secs(1),
                ..hub.settings
            },
            ..hub
        });
    let body = w.execute_body(w.form("no"));
    let r = w
        .call(EXECUTE_PATH, Some(TOKEN), Some(&body), Some("wh-large"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let l = looker(&r);
    assert_eq!(l["success"], true, "{l}");
    assert!(
        l["message"].as_str().unwrap().starts_with("Accepted"),
        "{l}"
    );
    let b = r.json_body();
    assert_eq!(b["run"]["status"], "interrupted", "{b}");
    let run_id = b["run"]["run_id"].as_str().unwrap().to_string();
    // Queued for the replay function, which takes the run on from where it stopped.
    assert_eq!(*queue.0.lock().unwrap(), vec![run_id.clone()]);
    let posted = w.d365.lines().len();
    assert!(
        posted < 14,
        "the run stopped before its end: {posted} lines"
    );
    // Looker's redelivery gets the same answer; nothing runs again.
    let again = w
        .call(EXECUTE_PATH, Some(TOKEN), Some(&body), Some("wh-large"))
        .await;
    assert_eq!(again.json_body(), b);
    assert_eq!(queue.0.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_function_url_event_reaches_the_hub_with_its_headers() {
    use lambda_http::RequestExt;
    const EVENT: &str = include_str!("../events/action-hub-list.json");
    const SAMPLE_TOKEN: &str = "sample-hub-token-5d0b8e61c2a94f37";
    let dir = tempfile::tempdir().unwrap();
    let store = env_store(dir.path()).await;
    let ctx = LambdaContext::new(
        store.clone(),
        Arc::new(MemConfigs::default()),
        Arc::new(MemSecrets::default()),
        Settings::default(),
    );
    let hub = |token: &str| ActionHub {
        token: Arc::new(StaticHubToken(Secret::new(token))),
        settings: ActionHubSettings::default(),
    };
    let event = || {
        let ev: lambda_http::request::LambdaRequest = serde_json::from_str(EVENT).unwrap();
        let mut lc = lambda_runtime::Context::default();
        lc.request_id = "7c9d1e2f".into();
        lc.deadline = (chrono::Utc::now().timestamp_millis() + 60_000) as u64;
        lambda_runtime::LambdaEvent::new(ev, lc)
    };
    // The raw event through lambda_http's conversion, as the webhook binary runs it.
    let ctx = ctx.with_action_hub(hub(SAMPLE_TOKEN));
    let r = ml_connector::lambda::webhook::function_url_handler(&ctx, event())
        .await
        .unwrap();
    assert_eq!(r.status_code, 200);
    let body: Value = match r.body {
        Some(lambda_http::Body::Text(t)) => serde_json::from_str(&t).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        body["integrations"][0]["url"],
        "https://x7k2p4q9r1s3t5v8w0y6z2a4b6c8d0e2.lambda-url.eu-west-1.on.aws/actions/d365_journal/execute"
    );
    // The headers the hub reads survive the conversion.
    let req = WebhookRequest::from_http(
        lambda_http::Request::from(
            serde_json::from_str::<lambda_http::request::LambdaRequest>(EVENT).unwrap(),
        )
        .with_lambda_context(lambda_runtime::Context::default()),
    );
    assert_eq!(req.webhook_id.as_deref(), Some("9e4a7c1b3d5f8a20"));
    assert_eq!(
        req.authorization.as_deref(),
        Some(r#"Token token="sample-hub-token-5d0b8e61c2a94f37""#)
    );
    // Another token: 403, audited with the source address, never the token.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = env_store(dir2.path()).await;
    let ctx2 = LambdaContext::new(
        store2.clone(),
        Arc::new(MemConfigs::default()),
        Arc::new(MemSecrets::default()),
        Settings::default(),
    )
    .with_action_hub(hub("another-token-entirely"));
    let r = ml_connector::lambda::webhook::function_url_handler(&ctx2, event())
        .await
        .unwrap();
    assert_eq!(r.status_code, 403);
    let refused = store2.events(REJECTED_AUDIT_ID).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].message.contains("35.190.41.17")
            && refused[0].message.contains("9e4a7c1b3d5f8a20")
    );
    assert!(!refused[0].message.contains(SAMPLE_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_flow_posts_one_journal_and_the_redelivery_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = env_store(dir.path()).await;
    let mut said = Vec::new();
    let mut say = |l: String| said.push(l);
    let outcome = action_demo(EXAMPLE, store.clone(), &mut say)
        .await
        .expect("action demo");
    let text = said.join("\n");
    assert!(outcome.journal.is_some(), "{text}");
    assert!(outcome.redelivery_idempotent, "{text}");
    assert!(text.contains("403") && text.contains("Dry run"), "{text}");
    assert_eq!(store.list_runs(None, 10).await.unwrap().len(), 1, "{text}");
    // A second demo on the same store (a new sandbox D365) writes its journal again: its
    // delivery is a new one, not answered from the first demo's record.
    let mut said = Vec::new();
    let mut say = |l: String| said.push(l);
    let again = action_demo(EXAMPLE, store.clone(), &mut say)
        .await
        .expect("second action demo");
    let text = said.join("\n");
    assert!(
        again.journal.is_some() && again.redelivery_idempotent,
        "{text}"
    );
    assert_eq!(store.list_runs(None, 10).await.unwrap().len(), 2, "{text}");
}
