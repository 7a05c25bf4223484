//! Publishing a finished run's [`RunNotification`]: to the stack's SNS topic (AWS) and to the
//! Slack and/or Teams incoming webhooks kept in the instance's secret.
//!
//! Best effort by design: a notification is sent after the run's final status is recorded,
//! every failure is only logged and audited (`notification` events), and nothing here can fail,
//! repeat or change a post. The webhook URLs are secrets (whoever has one can post into the
//! channel): they are never logged or put into an error, and redirects are not followed (a
//! redirect would hand the message, and the next hop the URL, to somewhere else).

#[cfg(feature = "aws")]
pub mod sns;

use std::time::Duration;

use serde_json::json;

use crate::controls::RunNotification;
use crate::domain::run::{AuditEvent, EventKind, EventLevel, RunRecord};
use crate::engine::{CrashPoint, Progress};
use crate::secrets::Secret;
use crate::store::Store;

/// Audit event kind of every notification attempt.
pub const KIND_NOTIFICATION: EventKind = EventKind::Notification;

/// How long one notification request may take (a run's report waits for it).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The chat webhooks of one instance (from its secret); both optional.
#[derive(Clone, Default)]
pub struct ChatTargets {
    /// Slack incoming-webhook URL (`https://hooks.slack.com/services/…`).
    pub slack: Option<Secret>,
    /// Teams incoming-webhook URL (a Workflows "post to a channel when a webhook request is
    /// received" URL, or a legacy connector URL).
    pub teams: Option<Secret>,
}

impl std::fmt::Debug for ChatTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only whether they are set: the URLs are secrets.
        f.debug_struct("ChatTargets")
            .field("slack", &self.slack.is_some())
            .field("teams", &self.teams.is_some())
            .finish()
    }
}

/// Why one notification was not delivered. Never carries a webhook URL.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "{channel} webhook URL is not a valid https URL (the URL is a secret and is not shown)"
    )]
    BadUrl { channel: &'static str },
    #[error("{channel} did not answer: {reason}")]
    Unreachable {
        channel: &'static str,
        reason: String,
    },
    #[error("{channel} answered HTTP {status}{detail}")]
    Refused {
        channel: &'static str,
        status: u16,
        detail: String,
    },
    #[error("SNS publish failed: {0}")]
    Sns(String),
}

/// Where a run's notification goes; one per process (Lambda cold start).
pub struct Notifier {
    #[cfg(feature = "aws")]
    topic: Option<sns::SnsTopic>,
    /// Built on the first chat webhook send, not at init: building a TLS client loads the
    /// root certificates (~2 ms of every Lambda cold start, for a channel most runs never use).
    http: std::sync::OnceLock<reqwest::Client>,
    /// The deployed table, so the `show` command in the message works as printed.
    table: Option<String>,
}

impl Notifier {
    /// Chat webhooks only (no SNS topic); `table` names the deployed audit table, if any.
    pub fn new(table: Option<String>) -> Self {
        Notifier {
            #[cfg(feature = "aws")]
            topic: None,
            http: std::sync::OnceLock::new(),
            table,
        }
    }

    fn http(&self) -> &reqwest::Client {
        self.http.get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(SEND_TIMEOUT)
                .build()
                .unwrap_or_default()
        })
    }

    /// Also publishes to this SNS topic.
    #[cfg(feature = "aws")]
    pub fn with_topic(mut self, topic: sns::SnsTopic) -> Self {
        self.topic = Some(topic);
        self
    }

    /// Publishes `run`'s notification (if it has one) to every target, audits each attempt,
    /// and returns how many were delivered. Never fails.
    pub async fn publish(&self, run: &RunRecord, chat: &ChatTargets, store: &dyn Store) -> usize {
        // Which fix works depends on whether the run got through validation.
        let validation = crate::controls::notify::validation(store, &run.run_id)
            .await
            .unwrap_or(crate::controls::notify::Validation::NotFinished);
        let Some(n) = RunNotification::to_publish(run, validation, self.table.as_deref()) else {
            return 0;
        };
        let mut delivered = 0;
        #[cfg(feature = "aws")]
        if let Some(topic) = &self.topic {
            let r = topic
                .publish(&n)
                .await
                .map(|id| format!(" (message id {id})"));
            delivered += audit(store, run, "SNS topic", r).await;
        }
        if let Some(url) = &chat.slack {
            let r = self.post("Slack", url, &slack_payload(&n)).await;
            delivered += audit(store, run, "Slack", r.map(|()| String::new())).await;
        }
        if let Some(url) = &chat.teams {
            let r = self.post("Teams", url, &teams_payload(&n)).await;
            delivered += audit(store, run, "Teams", r.map(|()| String::new())).await;
        }
        delivered
    }

    async fn post(
        &self,
        channel: &'static str,
        url: &Secret,
        body: &serde_json::Value,
    ) -> Result<(), NotifyError> {
        let url = crate::http::endpoint("notification webhook", url.expose())
            .map_err(|_| NotifyError::BadUrl { channel })?;
        let resp = self
            .http()
            .post(url)
            .json(body)
            .send()
            .await
            // `without_url`: reqwest puts the URL into its errors.
            .map_err(|e| NotifyError::Unreachable {
                channel,
                reason: e.without_url().to_string(),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = if status.is_redirection() {
            " (a redirect; not followed)".to_string()
        } else {
            let text = resp.text().await.unwrap_or_default();
            let short: String = text.trim().chars().take(200).collect();
            if short.is_empty() {
                String::new()
            } else {
                format!(": {short}")
            }
        };
        Err(NotifyError::Refused {
            channel,
            status: status.as_u16(),
            detail,
        })
    }
}

/// Engine progress that reports like `inner` and, when the run has finished, publishes its
/// notification through `notifier` (none: nothing is sent).
pub struct PublishingProgress<'a, P> {
    pub inner: P,
    pub notifier: Option<&'a Notifier>,
    pub chat: ChatTargets,
    pub store: &'a dyn Store,
}

impl<P: Progress> Progress for PublishingProgress<'_, P> {
    fn step(&self, message: &str) {
        self.inner.step(message)
    }
    fn line_posted(&self, done: usize, total: usize) {
        self.inner.line_posted(done, total)
    }
    fn crash_at(&self, point: CrashPoint) -> bool {
        self.inner.crash_at(point)
    }
    fn finished<'b>(
        &'b self,
        run: &'b RunRecord,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'b>> {
        Box::pin(async move {
            self.inner.finished(run).await;
            if let Some(n) = self.notifier {
                n.publish(run, &self.chat, self.store).await;
            }
        })
    }
}

/// Logs and audits one attempt; 1 if it was delivered.
async fn audit(
    store: &dyn Store,
    run: &RunRecord,
    target: &str,
    result: Result<String, NotifyError>,
) -> usize {
    let (level, message, ok) = match result {
        Ok(extra) => {
            tracing::info!(run_id = %run.run_id, target, "notification sent");
            (
                EventLevel::Info,
                format!("notification sent to {target}{extra}"),
                1,
            )
        }
        Err(e) => {
            tracing::warn!(run_id = %run.run_id, target, error = %e, "notification not sent (the run is unaffected)");
            (
                EventLevel::Warn,
                format!("notification to {target} failed (the run is unaffected): {e}"),
                0,
            )
        }
    };
    let ev = AuditEvent::new(&run.run_id, level, KIND_NOTIFICATION, message);
    if let Err(e) = store.append_event(&ev).await {
        tracing::error!(run_id = %run.run_id, "could not record audit event: {e}");
    }
    ok
}

/// Slack incoming webhook body: `text` is the message (mrkdwn), shown as sent.
pub fn slack_payload(n: &RunNotification) -> serde_json::Value {
    json!({ "text": format!("*{}*\n{}", n.subject, n.text()) })
}

/// Teams incoming webhook body: a message with one Adaptive Card (what Teams Workflows
/// webhooks expect), title and text blocks.
pub fn teams_payload(n: &RunNotification) -> serde_json::Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    { "type": "TextBlock", "text": n.subject, "weight": "Bolder", "wrap": true },
                    { "type": "TextBlock", "text": n.text(), "wrap": true }
                ]
            }
        }]
    })
}
