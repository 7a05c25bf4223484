//! Run notifications, published for real: the engine's finished-run hook, the Slack and Teams
//! webhooks against a loopback receiver, and the SNS topic on the local moto server (`.ci/test`),
//! whose HTTP subscription delivers to the same receiver.
#![cfg(all(feature = "aws", feature = "sandbox"))]
mod cli_support;
mod common;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::World;
use ml_connector::domain::run::AuditEvent;
use ml_connector::engine::{Engine, Mode, NoProgress, Outcome, RunReport};
use ml_connector::notify::{ChatTargets, Notifier, PublishingProgress, KIND_NOTIFICATION};
use ml_connector::secrets::Secret;
use ml_connector::store::Store;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: String,
    body: String,
}

/// A loopback HTTP server standing in for Slack, Teams and an SNS HTTP subscriber. Paths
/// starting `/fail` answer 500, `/redirect` answer 302 to `/landed`; everything else 200.
struct Receiver {
    base: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = got.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let path = uri.path().to_string();
                log.lock().unwrap().push(Received {
                    path: path.clone(),
                    content_type: headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                let r: Response = if path.starts_with("/fail") {
                    (StatusCode::INTERNAL_SERVER_ERROR, "no_service").into_response()
                } else if path.starts_with("/redirect") {
                    (StatusCode::FOUND, [("location", "/landed")], "").into_response()
                } else {
                    (StatusCode::OK, "ok").into_response()
                };
                r
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { base, got }
    }

    fn url(&self, path: &str) -> Secret {
        Secret::new(format!("{}{path}", self.base))
    }

    fn at(&self, path: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

/// Runs the world's instance once with notifications published through `notifier`.
async fn run_notified(w: &World, notifier: &Notifier, chat: ChatTargets) -> RunReport {
    let clients = w.clients();
    let progress = PublishingProgress {
        inner: NoProgress,
        notifier: Some(notifier),
        chat,
        store: &w.store,
    };
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &w.store,
        progress: &progress,
    };
    engine
        .run(&w.config, &w.options(Mode::Post))
        .await
        .expect("engine ran")
}

async fn notification_events(w: &World, run_id: &str) -> Vec<AuditEvent> {
    w.store
        .events(run_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == KIND_NOTIFICATION)
        .collect()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_journal_is_announced_on_slack_and_teams_as_ready_for_review() {
    let w = World::start().await;
    let rx = Receiver::start().await;
    let notifier = Notifier::new(None);
    let chat = ChatTargets {
        slack: Some(rx.url("/services/T0/B0/slack-secret")),
        teams: Some(rx.url("/workflows/teams-secret")),
    };
    let report = run_notified(&w, &notifier, chat).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let (le, batch) = report.run.journals[0].clone();
    let ready = format!("journal {le}/{batch} ready for review");
    let run_id = &report.run.run_id;

    let slack = rx.at("/services/T0/B0/slack-secret");
    assert_eq!(slack.len(), 1, "one Slack message");
    assert!(slack[0].content_type.starts_with("application/json"));
    let text = json(&slack[0].body)["text"]
        .as_str()
        .expect("Slack `text`")
        .to_string();
    for want in [
        ready.as_str(),
        "Status: completed",
        &format!("Instance: {}", w.config.instance),
        &format!("Period: {}", report.run.period),
        &format!("Journals: {le}/{batch}"),
        &format!("Totals: Looker total {}", report.run.totals.source_total),
        &format!("Details: ml-connector show {run_id}"),
    ] {
        assert!(text.contains(want), "{want:?} in Slack text:\n{text}");
    }

    let teams = rx.at("/workflows/teams-secret");
    assert_eq!(teams.len(), 1, "one Teams message");
    let card = json(&teams[0].body);
    assert_eq!(card["type"], "message");
    let content = &card["attachments"][0]["content"];
    assert_eq!(
        card["attachments"][0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(content["type"], "AdaptiveCard");
    assert!(content["body"][0]["text"]
        .as_str()
        .unwrap()
        .contains(&ready));
    assert!(content["body"][1]["text"]
        .as_str()
        .unwrap()
        .contains("Status: completed"));

    // Both deliveries are in the audit trail, without the (secret) URLs.
    let events = notification_events(&w, run_id).await;
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        vec!["notification sent to Slack", "notification sent to Teams"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_notification_never_fails_or_repeats_the_post_and_is_audited() {
    let w = World::start().await;
    let rx = Receiver::start().await;
    let notifier = Notifier::new(None);
    let chat = ChatTargets {
        slack: Some(rx.url("/fail/slack-secret")),
        teams: Some(rx.url("/redirect/teams-secret")),
    };
    let report = run_notified(&w, &notifier, chat).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let lines = w.d365.lines().len();
    assert!(lines > 0);
    assert_eq!(
        rx.at("/fail/slack-secret").len(),
        1,
        "tried once, not retried"
    );
    assert_eq!(rx.at("/redirect/teams-secret").len(), 1);
    assert!(rx.at("/landed").is_empty(), "a redirect is never followed");

    let events = notification_events(&w, &report.run.run_id).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(events.iter().all(|e| e.level == "warn"));
    assert!(
        events[0].message.contains("Slack")
            && events[0].message.contains("HTTP 500")
            && events[0].message.contains("the run is unaffected"),
        "{}",
        events[0].message
    );
    assert!(
        events[1].message.contains("Teams")
            && events[1].message.contains("HTTP 302")
            && events[1].message.contains("not followed"),
        "{}",
        events[1].message
    );
    // The webhook URLs are secrets: never in the audit trail.
    let all = w.store.events(&report.run.run_id).await.unwrap();
    for e in &all {
        assert!(
            !e.message.contains("secret") && !e.message.contains(&rx.base),
            "{}",
            e.message
        );
    }
    // The run stands as posted; nothing was written twice.
    let run = w.store.get_run(&report.run.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, ml_connector::domain::run::RunStatus::Completed);
    assert_eq!(w.d365.lines().len(), lines);

    // The same week again: already posted, nothing to announce, nothing sent.
    let again = run_notified(&w, &notifier, ChatTargets::default()).await;
    assert_eq!(again.outcome, Outcome::AlreadyPosted);
    assert!(notification_events(&w, &again.run.run_id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_run_and_an_unreachable_webhook() {
    let mut w = World::start().await;
    // An account D365 does not have: the run is rejected before anything is written.
    w.config
        .account
        .as_mut()
        .unwrap()
        .lookup
        .as_mut()
        .unwrap()
        .insert("Commission".into(), "618299".into());
    let rx = Receiver::start().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/services/closed-secret")
    };
    let notifier = Notifier::new(Some("mlc-audit".into()));
    let chat = ChatTargets {
        slack: Some(rx.url("/services/slack-secret")),
        teams: Some(Secret::new(closed)),
    };
    let report = run_notified(&w, &notifier, chat).await;
    assert_eq!(report.outcome, Outcome::Rejected);
    let slack = rx.at("/services/slack-secret");
    assert_eq!(slack.len(), 1);
    let text = json(&slack[0].body)["text"].as_str().unwrap().to_string();
    let id = &report.run.run_id;
    for want in [
        format!("run {id} rejected: nothing was written"),
        "Status: rejected".to_string(),
        "Journals: none".to_string(),
        format!("Fix: Nothing was written. `ml-connector show {id} --table mlc-audit`"),
        format!("Details: ml-connector show {id} --table mlc-audit"),
    ] {
        assert!(text.contains(&want), "{want:?} in:\n{text}");
    }
    let events = notification_events(&w, id).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0].level, "info");
    assert_eq!(events[1].level, "warn");
    assert!(
        events[1].message.contains("Teams did not answer")
            && !events[1].message.contains("closed-secret")
            && !events[1].message.contains("127.0.0.1"),
        "{}",
        events[1].message
    );
}

/// SNS on moto: the topic's HTTP subscription (our receiver) gets the subject and the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_published_to_the_sns_topic() {
    let sdk = common::aws::sdk_config().await;
    let sns = aws_sdk_sns::Client::new(&sdk);
    let topic = sns
        .create_topic()
        .name(common::aws::unique("mlc-notify"))
        .send()
        .await
        .expect("create topic")
        .topic_arn
        .expect("topic arn");
    let rx = Receiver::start().await;
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("http")
        .endpoint(format!("{}/sns-subscriber", rx.base))
        .send()
        .await
        .expect("subscribe");

    let w = World::start().await;
    let notifier = Notifier::new(Some("mlc-audit".into())).with_topic(
        ml_connector::notify::sns::SnsTopic::new(sns.clone(), topic.clone()),
    );
    let report = run_notified(&w, &notifier, ChatTargets::default()).await;
    assert_eq!(report.outcome, Outcome::Posted, "{:?}", report.run.message);
    let (le, batch) = report.run.journals[0].clone();

    let got = rx.at("/sns-subscriber");
    assert_eq!(got.len(), 1, "one SNS delivery: {got:#?}");
    let n = json(&got[0].body);
    assert_eq!(n["Type"], "Notification");
    assert_eq!(n["TopicArn"], topic.as_str());
    let subject = n["Subject"].as_str().unwrap();
    let full = format!(
        "ml-connector: journal {le}/{batch} ready for review ({} {}, run {})",
        w.config.instance, report.run.period, report.run.run_id
    );
    // SNS subjects are at most 100 characters: cut at the end, the headline kept.
    let want = if full.len() > 100 {
        format!("{}...", &full[..97])
    } else {
        full
    };
    assert_eq!(subject, want);
    let message = n["Message"].as_str().unwrap();
    for want in [
        format!("journal {le}/{batch} ready for review\n"),
        "Status: completed".to_string(),
        format!("Journals: {le}/{batch}"),
        format!(
            "Details: ml-connector show {} --table mlc-audit",
            report.run.run_id
        ),
    ] {
        assert!(message.contains(&want), "{want:?} in:\n{message}");
    }
    let events = notification_events(&w, &report.run.run_id).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert!(
        events[0]
            .message
            .starts_with("notification sent to SNS topic (message id "),
        "{}",
        events[0].message
    );

    // A topic that does not exist: audited as failed, the run unaffected.
    let w = World::start().await;
    let missing = topic.replace("mlc-notify", "mlc-missing");
    let notifier =
        Notifier::new(None).with_topic(ml_connector::notify::sns::SnsTopic::new(sns, missing));
    let report = run_notified(&w, &notifier, ChatTargets::default()).await;
    assert_eq!(report.outcome, Outcome::Posted);
    let events = notification_events(&w, &report.run.run_id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].level, "warn");
    assert!(
        events[0].message.contains("SNS publish failed"),
        "{}",
        events[0].message
    );
}

/// Runs `w`'s instance once against `store` with notifications through `notifier`.
async fn run_notified_in(
    w: &World,
    store: &dyn Store,
    notifier: &Notifier,
    chat: ChatTargets,
) -> RunReport {
    let clients = w.clients();
    let progress = PublishingProgress {
        inner: NoProgress,
        notifier: Some(notifier),
        chat,
        store,
    };
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store,
        progress: &progress,
    };
    engine
        .run(&w.config, &w.options(Mode::Post))
        .await
        .expect("engine ran")
}

/// The `Fix:` line of the last Slack message at `path`.
fn slack_fix(rx: &Receiver, path: &str) -> String {
    let got = rx.at(path);
    let body = &got.last().expect("a Slack message").body;
    let text = json(body)["text"].as_str().unwrap().to_string();
    text.lines()
        .find(|l| l.starts_with("Fix: "))
        .unwrap_or_else(|| panic!("no Fix line in:\n{text}"))
        .to_string()
}

/// A Lambda's notification (runs in the deployed table) suggests the fix that works for the
/// run's state: a run that stopped before its validation finished is not sent to replay
/// (replay refuses it); a run that failed while posting is, with a command that runs as
/// printed (the real binary, against the table on moto) and a replay that then finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_runs_notification_suggests_the_fix_that_works_for_its_state() {
    use ml_connector::store::dynamodb::{create_table_for_tests, DynamoStore};
    let client = common::aws::dynamodb().await;
    let table = common::aws::unique("mlc-notify-fix");
    create_table_for_tests(&client, &table).await.unwrap();
    let store = DynamoStore::new(client.clone(), &table);
    let rx = Receiver::start().await;
    let notifier = Notifier::new(Some(table.clone()));
    let chat = || ChatTargets {
        slack: Some(rx.url("/services/fix-secret")),
        teams: None,
    };

    // Looker refuses the login: the run stops before its validation.
    let mut w = World::start().await;
    w.creds.looker_client_secret = Secret::new("wrong-secret");
    let report = run_notified_in(&w, &store, &notifier, chat()).await;
    assert_eq!(report.outcome, Outcome::Failed, "{:?}", report.run.message);
    let id = report.run.run_id.clone();
    let fix = slack_fix(&rx, "/services/fix-secret");
    assert!(
        cli_support::suggested(&fix)
            .iter()
            .all(|c| c.first().map(String::as_str) != Some("replay")),
        "replay refuses this run: {fix}"
    );
    assert!(
        fix.contains(&format!("`ml-connector run --config FILE --table {table}`")),
        "{fix}"
    );
    // What the notification used to suggest is indeed refused.
    let clients = w.clients();
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &store,
        progress: &NoProgress,
    };
    let refused = engine
        .replay(&w.config, &id, chrono::Duration::minutes(5))
        .await
        .map(|r| r.outcome);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("before its validation finished")),
        "{refused:?}"
    );
    // The commands without a placeholder run as printed.
    for cmd in cli_support::suggested(&fix) {
        if cmd.iter().any(|a| a == "FILE") {
            continue;
        }
        let out = cli_support::cli(cmd.clone(), vec![]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "`ml-connector {}`:\n{}",
            cmd.join(" "),
            cli_support::text(&out)
        );
    }

    // D365 refuses some vouchers while posting: validated, failed, replayable. (A table of
    // its own: the same week's data, unrelated to the run above.)
    let table = common::aws::unique("mlc-notify-fix");
    create_table_for_tests(&client, &table).await.unwrap();
    let store = DynamoStore::new(client.clone(), &table);
    let notifier = Notifier::new(Some(table.clone()));
    let mut w = World::start().await;
    w.config.journal.voucher_by = ml_connector::domain::config::VoucherBy::Row;
    w.d365.reject_changeset_containing("Shopify");
    let report = run_notified_in(&w, &store, &notifier, chat()).await;
    assert_eq!(report.outcome, Outcome::Failed, "{:?}", report.run.message);
    let id = report.run.run_id.clone();
    let fix = slack_fix(&rx, "/services/fix-secret");
    let replay = format!("ml-connector replay {id} --request --table {table}");
    assert!(fix.contains(&format!("`{replay}`")), "{fix}");
    let commands = cli_support::suggested(&fix);
    assert!(!commands.is_empty(), "{fix}");
    // Every command runs exactly as printed: no placeholder, no local file needed.
    for cmd in commands {
        assert!(!cmd.iter().any(|a| a == "FILE"), "{fix}");
        let out = cli_support::cli(cmd.clone(), vec![]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "`ml-connector {}`:\n{}",
            cmd.join(" "),
            cli_support::text(&out)
        );
    }
    // The request is in the table for the replay Lambda, and such a replay finishes the run.
    let requests = client
        .query()
        .table_name(&table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(
            ":pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("REPLAY#{id}")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(requests.items().len(), 1, "one replay request for {id}");
    w.d365.clear_changeset_rejections();
    let clients = w.clients();
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &store,
        progress: &NoProgress,
    };
    let replayed = engine
        .replay(&w.config, &id, chrono::Duration::minutes(5))
        .await
        .expect("replay");
    assert_eq!(
        replayed.outcome,
        Outcome::Posted,
        "{:?}",
        replayed.run.message
    );
}
