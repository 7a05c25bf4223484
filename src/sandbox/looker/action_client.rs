//! Looker's side of a custom Action Hub, for the sandbox: what a Looker instance does when an
//! admin adds a hub and a user sends a Look to its action. It POSTs the hub's list endpoint,
//! then the action's form, runs the Look (here: through the sandbox Looker's API 4.0, as
//! `json_detail`) and POSTs execute with the rows pushed in `attachment`, with the headers
//! Looker sends (`Authorization: Token token="…"`, `X-Looker-Webhook-Id`, `X-Looker-Instance`,
//! `User-Agent: LookerOutgoingWebhook/<version>`).
//!
//! Protocol source: `looker-open-source/actions` (`docs/action_api.md`, `src/hub/*.ts`).

use serde_json::{json, Value};

/// The `User-Agent` Looker sends (its version is what hubs read; any current one will do).
pub const LOOKER_USER_AGENT: &str = "LookerOutgoingWebhook/25.20.32";

/// A hub's answer.
#[derive(Debug, Clone)]
pub struct HubReply {
    pub status: u16,
    pub body: Value,
    /// `idempotent-replayed: true`: the hub answered a redelivery from its record.
    pub replayed: bool,
}

impl HubReply {
    /// `looker.success` of an execute answer.
    pub fn success(&self) -> Option<bool> {
        self.body["looker"]["success"].as_bool()
    }

    /// `looker.message` of an execute answer.
    pub fn message(&self) -> &str {
        self.body["looker"]["message"].as_str().unwrap_or("")
    }
}

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ActionClientError {
    #[error("{what}: {message}")]
    Http { what: String, message: String },
    #[error("{what}: unexpected answer: {message}")]
    Answer { what: String, message: String },
}

/// Calls a hub as Looker does.
pub struct ActionClient {
    http: reqwest::Client,
    hub_url: String,
    token: String,
    instance: String,
}

impl ActionClient {
    /// `hub_url` is the list endpoint (what an admin enters under Add Action Hub); `token`
    /// the hub's authorization token.
    pub fn new(hub_url: impl Into<String>, token: impl Into<String>) -> Self {
        ActionClient {
            http: reqwest::Client::new(),
            hub_url: hub_url.into(),
            token: token.into(),
            instance: "sandbox.looker.local".into(),
        }
    }

    /// The same client presenting another token (to show a refusal).
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        ActionClient {
            http: self.http.clone(),
            hub_url: self.hub_url.clone(),
            token: token.into(),
            instance: self.instance.clone(),
        }
    }

    async fn post(
        &self,
        what: &str,
        url: &str,
        body: Option<&Value>,
        webhook_id: Option<&str>,
    ) -> Result<HubReply, ActionClientError> {
        let mut req = self
            .http
            .post(url)
            .header("authorization", format!("Token token=\"{}\"", self.token))
            .header("user-agent", LOOKER_USER_AGENT)
            .header("x-looker-instance", &self.instance)
            .header("content-type", "application/json");
        if let Some(id) = webhook_id {
            req = req.header("x-looker-webhook-id", id);
        }
        let req = match body {
            Some(b) => req.body(b.to_string()),
            None => req.body(""),
        };
        let resp = req.send().await.map_err(|e| ActionClientError::Http {
            what: what.into(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let text = resp.text().await.map_err(|e| ActionClientError::Http {
            what: what.into(),
            message: e.to_string(),
        })?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| ActionClientError::Answer {
                what: what.into(),
                message: format!("HTTP {status}, not JSON ({e})"),
            })?
        };
        Ok(HubReply {
            status,
            body,
            replayed,
        })
    }

    /// The list endpoint (Looker POSTs it with an empty body).
    pub async fn list(&self) -> Result<HubReply, ActionClientError> {
        self.post("list", &self.hub_url, None, None).await
    }

    /// An action's form, with the action's params in `data`.
    pub async fn form(&self, form_url: &str, data: &Value) -> Result<HubReply, ActionClientError> {
        let body = json!({ "data": data });
        self.post("form", form_url, Some(&body), None).await
    }

    /// An action's execute, as delivery `webhook_id`.
    pub async fn execute(
        &self,
        url: &str,
        webhook_id: &str,
        body: &Value,
    ) -> Result<HubReply, ActionClientError> {
        self.post("execute", url, Some(body), Some(webhook_id))
            .await
    }
}

/// The execute body of a Look sent to an action: the scheduled plan, the rows pushed as a
/// `json_detail` attachment (a JSON string, as Looker sends it), the action params and the
/// form answers.
pub fn execute_body(
    look_url: &str,
    look_title: &str,
    json_detail: &str,
    data: &Value,
    form_params: &Value,
) -> Value {
    json!({
        "type": "query",
        "scheduled_plan": {
            "scheduled_plan_id": null,
            "title": look_title,
            "type": "Look",
            "url": look_url,
            "query_id": 1,
            "filters_differ_from_look": false,
            "download_url": null,
        },
        "attachment": {
            "mimetype": "application/json",
            "extension": "json",
            "data": json_detail,
        },
        "data": data,
        "form_params": form_params,
    })
}

/// Runs Look `look_id` through a Looker API 4.0 (the sandbox's) as `json_detail`, logging in
/// with the API client credentials: the rows Looker would push to the action.
pub async fn run_look_json_detail(
    looker_base_url: &str,
    client_id: &str,
    client_secret: &str,
    look_id: &str,
) -> Result<String, ActionClientError> {
    let http = reqwest::Client::new();
    let base = looker_base_url.trim_end_matches('/');
    let err = |what: &str, e: reqwest::Error| ActionClientError::Http {
        what: what.into(),
        message: e.to_string(),
    };
    let login: Value = http
        .post(format!("{base}/api/4.0/login"))
        .form(&[("client_id", client_id), ("client_secret", client_secret)])
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| err("Looker login", e))?
        .json()
        .await
        .map_err(|e| err("Looker login", e))?;
    let token = login["access_token"]
        .as_str()
        .ok_or_else(|| ActionClientError::Answer {
            what: "Looker login".into(),
            message: "no access_token".into(),
        })?;
    http.get(format!("{base}/api/4.0/looks/{look_id}/run/json_detail"))
        .header("authorization", format!("token {token}"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| err("run Look", e))?
        .text()
        .await
        .map_err(|e| err("run Look", e))
}
