//! The webhook Lambda (Function URL): `POST /ingest/{instance}/{secret}` with a Looker
//! scheduled-plan delivery.
//!
//! The same Function URL serves the Looker action hub under `/actions` when the function has
//! one ([`super::action_hub`]).
//!
//! 1. Anything but `POST /ingest/{instance}/{secret}`, an unknown instance or a wrong secret →
//!    **404 with an empty body** (no hint which instances exist), a warn log and an audit event
//!    under [`REJECTED_AUDIT_ID`]. The presented secret is compared in constant time and never
//!    logged, and neither is the request path. An instance whose secret holds a
//!    `looker_webhook_token` also needs that value in `X-Looker-Webhook-Token` (same 404
//!    otherwise, same constant-time check): the path is visible to anyone who can see the
//!    schedule, the token only to Looker admins.
//! 2. Body larger than [`Settings::max_body_bytes`](super::Settings) → 413 saying to make the
//!    instance's delivery a trigger (`[webhook] delivery = "trigger"`). A body over the Function
//!    URL's 6 MB never reaches the function at all.
//! 3. The delivery is parsed ([`crate::looker::delivery`]); malformed → 400 naming what is wrong.
//! 4. Idempotency: a lock on `webhook#{instance}#{sha256(body)}` held until the invocation's
//!    deadline. A delivery already completed returns its recorded answer (200) without running
//!    again; one being handled right now → 429 with `Retry-After`.
//! 5. `Engine::run_extract` on the delivered rows (or `Engine::run` for trigger-only instances).
//!    The run date is the UTC date the Function URL received the request
//!    (`requestContext.timeEpoch`; now if absent or implausible) and the period is derived from it by the
//!    instance's `period.kind`, exactly as for scheduled and CLI runs.
//! 6. The answer comes after the run is recorded: 200 `{run_id, status, journals, …}` for
//!    posted/already posted, 422 rejected by validation (with the issues), 409 conflict,
//!    503 busy (`Retry-After`) or store unavailable, 500 failed — so Looker's schedule history
//!    shows what happened.

use chrono::{DateTime, TimeZone, Utc};
use lambda_http::http::{HeaderName, HeaderValue, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, RequestExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::context::{Invocation, LambdaContext};
use super::payload::{self, DeliveryStatus as _};
use super::{acquire, complete, outcome_is_final, release, Idempotency, LambdaError, RunSummary};
use crate::domain::config::DeliveryMode;
use crate::domain::run::{AuditEvent, EventKind, EventLevel};
use crate::engine::{Engine, EngineError, Mode, Outcome, RunOptions};
use crate::looker::delivery::{self, DeliveryError};
use crate::secrets::{InstanceSecrets, SecretsError};

/// The header in which Looker sends the webhook token of its *Admin > Webhooks* page.
pub const LOOKER_TOKEN_HEADER: &str = "x-looker-webhook-token";

/// Audit "run id" under which refused webhook requests are recorded.
pub const REJECTED_AUDIT_ID: &str = "webhook#rejected";

/// The transport-neutral request the handler needs.
#[derive(Debug, Clone, Default)]
pub struct WebhookRequest {
    pub method: String,
    /// Raw path (contains the secret: never log it).
    pub path: String,
    pub body: Option<String>,
    pub is_base64_encoded: bool,
    /// When the Function URL received the request.
    pub received_at: Option<DateTime<Utc>>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    /// `X-Looker-Webhook-Token` as sent (a credential: never log it).
    pub looker_token: Option<String>,
    /// `Authorization` as sent (the action hub's token: never log it).
    pub authorization: Option<String>,
    /// `X-Looker-Webhook-Id`: the id of a Looker delivery (the action hub's idempotency key).
    pub webhook_id: Option<String>,
    /// The host the request was sent to (the Function URL's domain).
    pub host: Option<String>,
}

impl WebhookRequest {
    /// From the `http::Request` that `lambda_http` builds out of a Function URL event (payload
    /// format 2.0, the API Gateway HTTP API shape). The route is matched on the raw path (no
    /// stage prefix); the time, source address and user agent come from the request context.
    pub fn from_http(req: lambda_http::Request) -> Self {
        let (parts, body) = req.into_parts();
        let path = match parts.raw_http_path() {
            "" => parts.uri.path().to_string(),
            raw => raw.to_string(),
        };
        let (received_at, source_ip, context_ua, domain) = match parts.request_context_ref() {
            Some(RequestContext::ApiGatewayV2(c)) => (
                plausible_time(c.time_epoch),
                c.http.source_ip.clone(),
                c.http.user_agent.clone(),
                c.domain_name.clone(),
            ),
            _ => (None, None, None, None),
        };
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        // `lambda_http` has decoded a base64 body already; bytes that are not UTF-8 are handed
        // on base64-encoded again so the handler sees exactly what was sent.
        let (body, is_base64_encoded) = match body {
            Body::Text(s) => (Some(s), false),
            Body::Binary(b) => match String::from_utf8(b) {
                Ok(s) => (Some(s), false),
                Err(e) => {
                    use base64::Engine as _;
                    let b64 = base64::engine::general_purpose::STANDARD;
                    (Some(b64.encode(e.into_bytes())), true)
                }
            },
            _ => (None, false),
        };
        WebhookRequest {
            method: parts.method.as_str().to_string(),
            path,
            body,
            is_base64_encoded,
            received_at,
            source_ip,
            user_agent: context_ua.or_else(|| header("user-agent")),
            looker_token: header(LOOKER_TOKEN_HEADER),
            authorization: header("authorization"),
            webhook_id: header("x-looker-webhook-id"),
            host: header("host").or(domain),
        }
    }
}

/// `requestContext.timeEpoch` when plausible. Emulators (e.g. `cargo lambda watch`) send
/// placeholder epochs; only a time after 2000-01-01 and not more than a day ahead is trusted
/// over "now".
fn plausible_time(epoch_ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(epoch_ms)
        .single()
        .filter(|t| t.timestamp() > 946_684_800 && *t < Utc::now() + chrono::Duration::days(1))
}

/// The answer, before it is put in the Function URL response shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl WebhookResponse {
    pub(crate) fn json(status: u16, body: serde_json::Value) -> Self {
        WebhookResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    fn not_found() -> Self {
        WebhookResponse {
            status: 404,
            headers: vec![],
            body: String::new(),
        }
    }

    pub(crate) fn error(status: u16, status_text: &str, message: impl Into<String>) -> Self {
        Self::json(
            status,
            json!({ "status": status_text, "error": message.into() }),
        )
    }

    pub(crate) fn with_header(mut self, name: &str, value: String) -> Self {
        self.headers.push((name.into(), value));
        self
    }

    /// The body parsed as JSON (tests, logs); `Null` when empty or not JSON.
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// As the `http::Response` that `lambda_http` turns into the Function URL response.
    pub fn into_http(self) -> lambda_http::Response<Body> {
        let body = if self.body.is_empty() {
            Body::Empty
        } else {
            Body::Text(self.body)
        };
        let mut r = lambda_http::Response::new(body);
        *r.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (k, v) in self.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                r.headers_mut().insert(k, v);
            }
        }
        r
    }
}

/// Why a request was refused with 404 (logged and audited; never sent to the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Route,
    UnknownInstance,
    WrongSecret,
    WrongToken,
}

impl Refusal {
    fn as_str(&self) -> &'static str {
        match self {
            Refusal::Route => "not POST /ingest/{instance}/{secret}",
            Refusal::UnknownInstance => "unknown instance",
            Refusal::WrongSecret => "wrong or missing secret",
            Refusal::WrongToken => "wrong or missing X-Looker-Webhook-Token",
        }
    }
}

/// Instance names as the connector allows them (also keeps odd names away from the secret
/// store).
fn valid_instance(s: &str) -> bool {
    s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `(instance, secret)` of `POST /ingest/{instance}/{secret}`.
fn route<'a>(method: &str, path: &'a str) -> Option<(&'a str, &'a str)> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let rest = path.strip_prefix("/ingest/")?;
    let mut parts = rest.split('/');
    let instance = parts.next()?;
    let secret = parts.next()?;
    if parts.next().is_some() || secret.is_empty() || !valid_instance(instance) {
        return None;
    }
    Some((instance, secret))
}

/// Constant-time comparison of a presented credential with the stored one (both hashed first
/// so the comparison does not depend on their lengths). An empty stored value matches nothing.
pub(crate) fn ct_matches(presented: &str, expected: &str) -> bool {
    if expected.is_empty() {
        return false;
    }
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.as_slice().ct_eq(b.as_slice()))
}

/// The path secret.
fn secret_matches(presented: &str, expected: &InstanceSecrets) -> bool {
    ct_matches(presented, expected.webhook_secret.expose())
}

/// `X-Looker-Webhook-Token`, when the instance expects one (in addition to the path secret,
/// which every user who can see the schedule can read).
fn token_matches(presented: Option<&str>, expected: &InstanceSecrets) -> bool {
    match &expected.looker_webhook_token {
        None => true,
        Some(token) => presented.is_some_and(|p| ct_matches(p.trim(), token.expose())),
    }
}

async fn refuse(
    ctx: &LambdaContext,
    reason: Refusal,
    instance: Option<&str>,
    req: &WebhookRequest,
) -> WebhookResponse {
    let instance = instance.filter(|i| valid_instance(i)).unwrap_or("-");
    let ip = req.source_ip.as_deref().unwrap_or("-");
    let ua = shown_user_agent(req);
    tracing::warn!(
        reason = reason.as_str(),
        instance,
        source_ip = ip,
        user_agent = %ua,
        "webhook request refused (404)"
    );
    let event = AuditEvent::new(
        REJECTED_AUDIT_ID,
        EventLevel::Warn,
        EventKind::WebhookRefused,
        format!(
            "refused webhook request ({}): instance `{instance}`, source {ip}, user agent `{ua}`",
            reason.as_str()
        ),
    );
    if let Err(e) = ctx.store.append_event(&event).await {
        tracing::error!(error = %e, "could not record the refused webhook request");
    }
    WebhookResponse::not_found()
}

/// 413 for a delivery over `max` bytes. Deliveries over the Function URL's own 6 MB payload
/// limit never reach the function (Looker's schedule history shows the URL's error), so the
/// guidance is the same in both places: the README's "Large deliveries".
fn too_large(bytes: usize, max: usize) -> WebhookResponse {
    WebhookResponse::error(
        413,
        "too_large",
        format!(
            "the delivery is {bytes} bytes, over the {max}-byte limit (a Function URL takes at most 6 MB); set the instance's `[webhook] delivery = \"trigger\"` so the delivery only triggers the run and the connector extracts the rows through the Looker API, or deliver fewer rows"
        ),
    )
}

fn payload_error(e: &DeliveryError) -> WebhookResponse {
    let status = e.status_code();
    let text = if status == 422 {
        "rejected"
    } else {
        "bad_request"
    };
    WebhookResponse::error(status, text, e.to_string())
}

fn lambda_error(e: &LambdaError) -> WebhookResponse {
    if e.is_retryable() {
        WebhookResponse::error(503, "unavailable", e.to_string())
            .with_header("retry-after", "30".into())
    } else {
        WebhookResponse::error(500, "error", e.to_string())
    }
}

/// The answer for a finished run.
fn run_response(summary: &RunSummary, outcome: Outcome) -> WebhookResponse {
    let body = serde_json::to_value(summary).unwrap_or(serde_json::Value::Null);
    match outcome {
        Outcome::Posted | Outcome::AlreadyPosted | Outcome::Previewed | Outcome::NothingToPost => {
            WebhookResponse::json(200, body)
        }
        Outcome::Rejected => WebhookResponse::json(422, body),
        Outcome::Conflict | Outcome::DuplicatePosted => WebhookResponse::json(409, body),
        Outcome::Busy => WebhookResponse::json(503, body).with_header("retry-after", "60".into()),
        Outcome::Failed => WebhookResponse::json(500, body),
        // Recorded but not finished (out of time): 202, not a 5xx, since Looker need not send
        // anything again — the run is `interrupted`, its outcome line raises the alarm and
        // `replay` finishes it. The delivery's idempotency record is released, so should
        // Looker redeliver anyway, that run finds the journal by its natural key and posts only
        // the rest (never twice).
        Outcome::Interrupted => WebhookResponse::json(202, body),
    }
}

/// Handles one webhook request. Never fails: every problem is an HTTP answer.
pub async fn handle_webhook(
    ctx: &LambdaContext,
    req: WebhookRequest,
    inv: &Invocation,
) -> WebhookResponse {
    if let Some(hub) = &ctx.action_hub {
        if super::action_hub::protocol::Route::is_hub_path(&req.path) {
            let route = super::action_hub::protocol::Route::of(&req.method, &req.path);
            return super::action_hub::handle(ctx, hub, route, &req, inv).await;
        }
    }
    let Some((instance, presented)) = route(&req.method, &req.path) else {
        return refuse(ctx, Refusal::Route, None, &req).await;
    };
    let secrets = match ctx.secrets.instance_secrets(instance).await {
        Ok(s) => s,
        Err(SecretsError::NotFound { .. }) => {
            return refuse(ctx, Refusal::UnknownInstance, Some(instance), &req).await
        }
        Err(e) => {
            // Same answer whatever the instance, so it reveals nothing.
            tracing::error!(instance, error = %e, "could not read the instance's secrets");
            return WebhookResponse::error(503, "unavailable", "temporarily unavailable")
                .with_header("retry-after", "30".into());
        }
    };
    if !secret_matches(presented, &secrets) {
        return refuse(ctx, Refusal::WrongSecret, Some(instance), &req).await;
    }
    if !token_matches(req.looker_token.as_deref(), &secrets) {
        return refuse(ctx, Refusal::WrongToken, Some(instance), &req).await;
    }
    let instance = instance.to_string();

    let max = ctx.settings.max_body_bytes;
    let raw_len = req.body.as_deref().map_or(0, str::len);
    let decoded_estimate = if req.is_base64_encoded {
        raw_len / 4 * 3
    } else {
        raw_len
    };
    if decoded_estimate > max {
        tracing::warn!(%instance, bytes = decoded_estimate, max, "webhook body too large");
        return too_large(decoded_estimate, max);
    }
    let body = match payload::decode_body(req.body.as_deref(), req.is_base64_encoded) {
        Ok(b) if b.len() > max => {
            tracing::warn!(%instance, bytes = b.len(), max, "webhook body too large");
            return too_large(b.len(), max);
        }
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => {
            return WebhookResponse::error(400, "bad_request", "the request body is empty")
        }
        Ok(b) => b,
        Err(e) => return payload_error(&e),
    };
    let received = req.received_at.unwrap_or_else(Utc::now);
    match ingest(ctx, &instance, secrets, &body, received, inv).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(%instance, error = %e, "webhook delivery not processed");
            lambda_error(&e)
        }
    }
}

enum Work {
    Rows(delivery::Delivery),
    Trigger(delivery::DeliveryMeta),
}

async fn ingest(
    ctx: &LambdaContext,
    instance: &str,
    secrets: InstanceSecrets,
    body: &[u8],
    received: DateTime<Utc>,
    inv: &Invocation,
) -> Result<WebhookResponse, LambdaError> {
    let inst = ctx.instance(instance, Some(secrets)).await?;
    let trigger_only = inst.config.webhook.delivery == DeliveryMode::Trigger;
    let work = if trigger_only {
        delivery::parse_delivery_meta(body).map(Work::Trigger)
    } else {
        delivery::parse_delivery(body).map(Work::Rows)
    };
    let work = match work {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(instance, error = %e, "webhook delivery refused");
            return Ok(payload_error(&e));
        }
    };
    let key = format!("webhook#{instance}#{}", hex::encode(Sha256::digest(body)));
    let ttl = ctx.settings.idempotency_ttl;
    match acquire(ctx.store.as_ref(), &key, inv, ttl).await? {
        Idempotency::Run => {}
        Idempotency::Completed(result) => {
            tracing::info!(
                instance,
                "delivery already processed; answering the recorded result"
            );
            let body = serde_json::from_str::<serde_json::Value>(&result)
                .unwrap_or_else(|_| json!({ "status": "completed" }));
            return Ok(
                WebhookResponse::json(200, body).with_header("idempotent-replayed", "true".into())
            );
        }
        Idempotency::InProgress(until) => {
            let secs = (until - Utc::now()).num_seconds().clamp(1, 900);
            return Ok(WebhookResponse::error(
                429,
                "in_progress",
                "the same delivery is being processed right now; try again later",
            )
            .with_header("retry-after", secs.to_string()));
        }
    }

    // Every wait of the clients and every write of the engine ends before this.
    let deadline = inv.work_deadline(ctx.settings.deadline_margin);
    tracing::info!(
        time_left_ms = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .as_millis() as u64,
        invocation_deadline = %inv.deadline,
        "work deadline: the invocation's deadline minus DEADLINE_MARGIN_SECS"
    );
    let clients = inst.clients.with_deadline(deadline);
    let progress = ctx.progress(&inst);
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: ctx.store.as_ref(),
        progress: &progress,
    };
    let opts = RunOptions {
        run_date: received.date_naive(),
        trigger: "webhook".into(),
        mode: Mode::Post,
        lease: inv.period_lease(),
        deadline: Some(deadline),
        supersede: false,
    };
    let result = match work {
        Work::Rows(delivery) => {
            tracing::info!(
                instance,
                format = delivery.format.as_str(),
                rows = delivery.extract.rows.len(),
                source = %delivery.extract.source.identity(),
                run_date = %opts.run_date,
                "webhook delivery received"
            );
            let period = inst.config.period.kind.period_for(opts.run_date);
            engine
                .run_extract(&inst.config, &opts, &period, delivery.extract)
                .await
        }
        Work::Trigger(meta) => {
            tracing::info!(
                instance,
                source = %meta.source.identity(),
                run_date = %opts.run_date,
                "webhook trigger received; extracting through the Looker API"
            );
            engine.run(&inst.config, &opts).await
        }
    };
    match result {
        Ok(report) => {
            let mut summary = RunSummary::of(&report);
            if report.outcome == Outcome::Interrupted {
                let c = super::continuation::continue_interrupted(ctx, &summary.run_id).await;
                summary.continuation = Some(c.describe(&summary.run_id));
            }
            let response = run_response(&summary, report.outcome);
            tracing::info!(
                instance,
                run_id = %summary.run_id,
                status = %summary.status,
                http_status = response.status,
                "webhook run finished"
            );
            if outcome_is_final(report.outcome) {
                complete(ctx.store.as_ref(), &key, inv, &response.body, ttl).await;
            } else {
                release(ctx.store.as_ref(), &key, inv).await;
            }
            Ok(response)
        }
        Err(e) => {
            release(ctx.store.as_ref(), &key, inv).await;
            Err(match e {
                EngineError::Store(s) => LambdaError::Store(s),
                other => LambdaError::Engine(other),
            })
        }
    }
}

/// The HTTP handler the `webhook` binary runs under `lambda_http::run`: the Function URL event
/// arrives as an `http::Request` carrying the Lambda context; every answer is an HTTP response
/// (this never returns `Err`).
pub async fn http_handler(
    ctx: &LambdaContext,
    req: lambda_http::Request,
) -> Result<lambda_http::Response<Body>, LambdaError> {
    let inv = match req.lambda_context_ref() {
        Some(c) => Invocation::from_lambda(c),
        // Only outside the runtime (a request built by hand): one minute.
        None => Invocation::with_timeout("local", chrono::Duration::minutes(1)),
    };
    let req = WebhookRequest::from_http(req);
    Ok(handle_webhook(ctx, req, &inv).await.into_http())
}

/// A raw Function URL event through [`http_handler`]: `lambda_http`'s own conversion of the
/// event into an `http::Request` (with the Lambda context), and the `http::Response` as the
/// payload-2.0 response, as `lambda_http::run` (the `webhook` binary's entry point) does it.
/// For callers that hold the raw event (tests); it builds the response itself instead of going
/// through `lambda_http`'s `IntoResponse`, which re-decodes text bodies for their charset.
pub async fn function_url_handler(
    ctx: &LambdaContext,
    event: lambda_runtime::LambdaEvent<lambda_http::request::LambdaRequest>,
) -> Result<lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse, LambdaError> {
    let lambda_runtime::LambdaEvent { payload, context } = event;
    let req = lambda_http::Request::from(payload).with_lambda_context(context);
    let (parts, body) = http_handler(ctx, req).await?.into_parts();
    let mut r = lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse::default();
    r.status_code = i64::from(parts.status.as_u16());
    r.headers = parts.headers;
    r.body = match body {
        Body::Empty => None,
        other => Some(other),
    };
    r.is_base64_encoded = false;
    Ok(r)
}

/// The caller's `User-Agent` as it goes into logs and refusal audits: at most 120 characters,
/// `-` when absent (it is caller-controlled text).
pub(crate) fn shown_user_agent(req: &WebhookRequest) -> String {
    req.user_agent
        .as_deref()
        .unwrap_or("-")
        .chars()
        .take(120)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("POST", "/ingest/a-b/s3cr3t"), Some(("a-b", "s3cr3t")));
        assert_eq!(route("post", "/ingest/a/s"), Some(("a", "s")));
        assert_eq!(route("GET", "/ingest/a/s"), None);
        assert_eq!(route("POST", "/ingest/a/"), None);
        assert_eq!(route("POST", "/ingest/a/s/x"), None);
        assert_eq!(route("POST", "/ingest//s"), None);
        assert_eq!(route("POST", "/ingest/../s"), None);
        assert_eq!(route("POST", "/other/a/s"), None);
    }

    #[test]
    fn an_interrupted_run_is_accepted_not_a_server_error() {
        let summary = RunSummary {
            run_id: "r-1".into(),
            instance: "fees".into(),
            status: "interrupted".into(),
            period: "2026-W47".into(),
            journals: vec![],
            lines_created: 3,
            message: Some("stopped before the deadline; ml-connector replay r-1".into()),
            issues: vec![],
            continuation: None,
        };
        let r = run_response(&summary, Outcome::Interrupted);
        assert_eq!(r.status, 202);
        assert!(r.body.contains("interrupted") && r.body.contains("replay r-1"));
        // Failed stays a 500 (Looker may redeliver; the run converges by natural key).
        assert_eq!(run_response(&summary, Outcome::Failed).status, 500);
    }
}
