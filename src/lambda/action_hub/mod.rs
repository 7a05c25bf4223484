//! A custom Looker Action Hub on the webhook function's Function URL, beside `/ingest/…`: the
//! action "Post to Dynamics 365 journal" in Looker's Send and Schedule menus, run by the same
//! engine and store as the webhook.
//!
//! - `POST /actions` (list), `POST /actions/d365_journal/form`, `POST
//!   /actions/d365_journal/execute` ([`protocol`]).
//! - Every route needs `Authorization: Token token="<hub token>"`; the token is read from
//!   Secrets Manager ([`token`]) and compared in constant time. A wrong or missing token gets
//!   403, a warn log and an audit event under [`REJECTED_AUDIT_ID`] (kind `action_refused`),
//!   and nothing else is written.
//! - Execute answers in Looker's shape (`{"looker": {success, message, validation_errors}}`):
//!   form problems per field, a rejected journal with its rows and fields in `message`, a dry run
//!   with the exact journal preview (nothing written), a post with its journal number.
//! - `X-Looker-Webhook-Id` is the delivery's idempotency key: a redelivery gets the recorded
//!   answer and writes nothing.
//! - Looker waits long, a Lambda at most 900 s: a post runs inline for at most
//!   [`ActionHubSettings::inline_budget`]; one that needs longer is recorded as interrupted and
//!   continued by the replay function ([`super::continuation`]), and its answer says it was
//!   accepted. Its outcome reaches people through the run notifications.
//! - Who sent a post: the action's `sender` param, bound to a Looker user attribute (e.g.
//!   `email`), is recorded in the run's audit trail; an instance's `[action]` settings may
//!   require it and restrict who may post.

pub mod protocol;
pub mod token;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

use self::protocol::{field, ActionAnswer, ActionParams, InstanceOption, Route};
use self::token::HubTokenSource;
use super::context::{Instance, Invocation, LambdaContext};
use super::payload::decode_body;
use super::webhook::{ct_matches, shown_user_agent, WebhookRequest, WebhookResponse};
use super::{acquire, complete, outcome_is_final, release, Idempotency, LambdaError, RunSummary};
use crate::domain::config::{DeliveryMode, InstanceConfig, Period, PeriodKind};
use crate::domain::run::{AuditEvent, EventKind, EventLevel};
use crate::engine::{Engine, EngineError, Mode, Outcome, RunOptions, RunReport};
use crate::looker::delivery;

/// Audit "run id" under which refused action-hub requests are recorded: the webhook
/// function's refused requests (kind `action_refused`), which the store keeps small and lets
/// expire (junk traffic to the public URL cannot grow the table).
pub const REJECTED_AUDIT_ID: &str = super::webhook::REJECTED_AUDIT_ID;
/// Audit event kind of "who sent this post through the action" on a run.
pub const SENDER_KIND: EventKind = EventKind::ActionRequest;

/// Environment variable: the instances the hub offers, comma-separated (the form's select).
pub const ENV_ACTION_HUB_INSTANCES: &str = "ACTION_HUB_INSTANCES";
/// Environment variable: the hub's origin as Looker reaches it (default: `https://` and the
/// request's host, i.e. the Function URL).
pub const ENV_ACTION_HUB_BASE_URL: &str = "ACTION_HUB_BASE_URL";
/// Environment variable: the Looker user attribute the `sender` param is bound to by default
/// (default `email`; an admin can bind it to another in the action's settings).
pub const ENV_ACTION_HUB_SENDER_ATTRIBUTE: &str = "ACTION_HUB_SENDER_ATTRIBUTE";
/// Environment variable: seconds a post may run inline before it is handed to the continuation
/// path (default 120).
pub const ENV_ACTION_HUB_INLINE_SECS: &str = "ACTION_HUB_INLINE_SECS";

/// Tunables of the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionHubSettings {
    /// See [`ENV_ACTION_HUB_INSTANCES`].
    pub instances: Vec<String>,
    /// See [`ENV_ACTION_HUB_BASE_URL`].
    pub base_url: Option<String>,
    /// See [`ENV_ACTION_HUB_SENDER_ATTRIBUTE`].
    pub sender_attribute: String,
    /// See [`ENV_ACTION_HUB_INLINE_SECS`].
    pub inline_budget: std::time::Duration,
}

impl Default for ActionHubSettings {
    fn default() -> Self {
        ActionHubSettings {
            instances: vec![],
            base_url: None,
            sender_attribute: "email".into(),
            inline_budget: std::time::Duration::from_secs(120),
        }
    }
}

impl ActionHubSettings {
    /// Reads the settings through `env`; unset → default.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, LambdaError> {
        let get = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut s = ActionHubSettings::default();
        if let Some(list) = get(ENV_ACTION_HUB_INSTANCES) {
            s.instances = list
                .split(',')
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .map(str::to_string)
                .collect();
        }
        s.base_url = get(ENV_ACTION_HUB_BASE_URL);
        if let Some(a) = get(ENV_ACTION_HUB_SENDER_ATTRIBUTE) {
            s.sender_attribute = a;
        }
        if let Some(v) = get(ENV_ACTION_HUB_INLINE_SECS) {
            let n = v.parse::<u64>().map_err(|_| {
                LambdaError::Environment(format!(
                    "{ENV_ACTION_HUB_INLINE_SECS} must be a whole number of seconds, not `{v}`"
                ))
            })?;
            s.inline_budget = std::time::Duration::from_secs(n.min(900));
        }
        Ok(s)
    }
}

/// The hub: its token and settings.
pub struct ActionHub {
    pub token: Arc<dyn HubTokenSource>,
    pub settings: ActionHubSettings,
}

/// Handles one hub request (auth first, on every route). Never fails: every problem is an
/// HTTP answer.
pub async fn handle(
    ctx: &LambdaContext,
    hub: &ActionHub,
    route: Option<Route>,
    req: &WebhookRequest,
    inv: &Invocation,
) -> WebhookResponse {
    let expected = match hub.token.hub_token().await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "could not read the action hub token");
            return WebhookResponse::error(503, "unavailable", "temporarily unavailable")
                .with_header("retry-after", "30".into());
        }
    };
    let presented = protocol::bearer_token(req.authorization.as_deref());
    if !presented.is_some_and(|p| ct_matches(p, expected.expose())) {
        refuse(ctx, route, req, "wrong or missing hub token").await;
        return WebhookResponse::json(
            403,
            json!({"success": false, "error": "Invalid 'Authorization' header."}),
        );
    }
    let Some(route) = route else {
        return WebhookResponse::json(404, json!({"success": false, "error": "no such route"}));
    };
    match route {
        Route::List => WebhookResponse::json(
            200,
            protocol::list_response(&base_url(hub, req), &hub.settings.sender_attribute),
        ),
        Route::Form => form(ctx, hub, req).await,
        Route::Execute => execute(ctx, hub, req, inv).await,
    }
}

fn base_url(hub: &ActionHub, req: &WebhookRequest) -> String {
    match (&hub.settings.base_url, &req.host) {
        (Some(b), _) => b.clone(),
        (None, Some(h)) => format!("https://{h}"),
        (None, None) => String::new(),
    }
}

/// Audits and logs a refused request (never the token, never the body).
async fn refuse(ctx: &LambdaContext, route: Option<Route>, req: &WebhookRequest, why: &str) {
    let ip = req.source_ip.as_deref().unwrap_or("-");
    let ua = shown_user_agent(req);
    let id = shown_webhook_id(req);
    let route = route.map_or("unknown route", |r| r.as_str());
    tracing::warn!(reason = why, route, source_ip = ip, user_agent = %ua, webhook_id = %id, "action hub request refused");
    let event = AuditEvent::new(
        REJECTED_AUDIT_ID,
        EventLevel::Warn,
        EventKind::ActionRefused,
        format!(
            "refused action hub request ({why}): route {route}, webhook id {id}, source {ip}, user agent `{ua}`"
        ),
    );
    if let Err(e) = ctx.store.append_event(&event).await {
        tracing::error!(error = %e, "could not record the refused action hub request");
    }
}

/// `X-Looker-Webhook-Id` when it is a plausible id (printable, at most 128 characters).
fn webhook_id(req: &WebhookRequest) -> Option<&str> {
    req.webhook_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic()))
}

fn shown_webhook_id(req: &WebhookRequest) -> String {
    webhook_id(req).unwrap_or("-").to_string()
}

/// The request body, decoded, or the answer refusing it (too large, not base64).
fn body_of(ctx: &LambdaContext, req: &WebhookRequest) -> Result<Vec<u8>, WebhookResponse> {
    let max = ctx.settings.max_body_bytes;
    let too_large = |bytes: usize| {
        let a = ActionAnswer::failed(format!(
            "The delivery is {bytes} bytes, over this hub's {max}-byte limit (a Function URL takes at most 6 MB), so nothing was posted. Send fewer rows, or schedule the Look to the connector's webhook with `[webhook] delivery = \"trigger\"` so the connector extracts the rows through the Looker API."
        ));
        WebhookResponse::json(413, a.to_json())
    };
    let raw_len = req.body.as_deref().map_or(0, str::len);
    let estimate = if req.is_base64_encoded {
        raw_len / 4 * 3
    } else {
        raw_len
    };
    if estimate > max {
        return Err(too_large(estimate));
    }
    match decode_body(req.body.as_deref(), req.is_base64_encoded) {
        Ok(b) if b.len() > max => Err(too_large(b.len())),
        Ok(b) => Ok(b),
        Err(e) => Err(WebhookResponse::json(
            400,
            ActionAnswer::failed(e.to_string()).to_json(),
        )),
    }
}

/// The instance may be posted by `sender` under its `[action]` settings (None: allowed).
fn sender_refusal(config: &InstanceConfig, sender: Option<&str>) -> Option<String> {
    let a = &config.action;
    match sender {
        None if a.require_sender || !a.senders.is_empty() => Some(format!(
            "instance `{}` only takes posts that name their sender: bind the action's Sender setting to a user attribute (Admin > Actions > Post to Dynamics 365 journal > Settings)",
            config.instance
        )),
        Some(s) if !a.senders.is_empty() && !a.senders.iter().any(|x| x.eq_ignore_ascii_case(s)) => {
            Some(format!(
                "`{s}` may not post instance `{}` (not among its [action] senders)",
                config.instance
            ))
        }
        _ => None,
    }
}

async fn form(ctx: &LambdaContext, hub: &ActionHub, req: &WebhookRequest) -> WebhookResponse {
    let body = match body_of(ctx, req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let params = match ActionParams::parse(&body) {
        Ok(p) => p,
        Err(e) => return WebhookResponse::json(400, json!({ "error": e })),
    };
    let today = req.received_at.unwrap_or_else(Utc::now).date_naive();
    let mut options = Vec::new();
    for name in &hub.settings.instances {
        match ctx.load_config(name).await {
            Ok(config) if sender_refusal(&config, params.sender()).is_none() => {
                options.push(InstanceOption {
                    instance: name.clone(),
                    period_today: config.period.kind.period_for(today).label,
                })
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(instance = %name, error = %e, "instance not offered in the action form")
            }
        }
    }
    if options.is_empty() {
        return WebhookResponse::json(
            200,
            json!({"error": "no connector instance can be posted from here: none of ACTION_HUB_INSTANCES has a pushed config that lets this user post"}),
        );
    }
    WebhookResponse::json(200, protocol::form_response(&options))
}

/// The period `label` names for an instance with periods of `kind` (the same label a run on
/// some date derives), or None.
pub fn period_from_label(kind: PeriodKind, label: &str) -> Option<Period> {
    let label = label.trim();
    let run_date = match kind {
        PeriodKind::Week => {
            let (y, w) = label.split_once("-W")?;
            NaiveDate::from_isoywd_opt(y.parse().ok()?, w.parse().ok()?, chrono::Weekday::Mon)?
                + chrono::Duration::days(7)
        }
        PeriodKind::Month => {
            let first = NaiveDate::parse_from_str(&format!("{label}-01"), "%Y-%m-%d").ok()?;
            (first + chrono::Duration::days(32)).with_day(1)?
        }
        PeriodKind::Day => {
            NaiveDate::parse_from_str(label, "%Y-%m-%d").ok()? + chrono::Duration::days(1)
        }
    };
    let p = kind.period_for(run_date);
    (p.label == label).then_some(p)
}

fn period_example(kind: PeriodKind) -> &'static str {
    match kind {
        PeriodKind::Week => "a week like 2026-W47",
        PeriodKind::Month => "a month like 2026-11",
        PeriodKind::Day => "a day like 2026-11-22",
    }
}

/// What the form asked for, checked.
struct Request {
    inst: Instance,
    period: Period,
    dry_run: bool,
    note: Option<String>,
    run_date: NaiveDate,
}

/// Checks the form answers; problems per field in the answer's `validation_errors`.
async fn read_form(
    ctx: &LambdaContext,
    hub: &ActionHub,
    params: &ActionParams,
    received: DateTime<Utc>,
) -> Result<Request, WebhookResponse> {
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    let dry_run = match params.form(field::DRY_RUN) {
        None => {
            errors.insert(field::DRY_RUN.into(), "choose yes or no".into());
            None
        }
        Some(v) => protocol::parse_yes_no(v).or_else(|| {
            errors.insert(field::DRY_RUN.into(), format!("`{v}` is not yes or no"));
            None
        }),
    };
    let note = params
        .form(field::NOTE)
        .map(|n| n.chars().take(500).collect::<String>());
    let mut inst = None;
    match params.form(field::INSTANCE) {
        None => {
            errors.insert(
                field::INSTANCE.into(),
                "choose the connector instance".into(),
            );
        }
        Some(name) if !hub.settings.instances.iter().any(|i| i == name) => {
            errors.insert(
                field::INSTANCE.into(),
                format!("`{name}` is not offered by this hub"),
            );
        }
        Some(name) => match ctx.instance(name, None).await {
            Ok(i) => inst = Some(i),
            Err(e @ (LambdaError::ConfigMissing(_) | LambdaError::ConfigInvalid { .. })) => {
                errors.insert(field::INSTANCE.into(), e.to_string());
            }
            Err(e) => {
                tracing::error!(instance = name, error = %e, "action: instance not loaded");
                let status = if e.is_retryable() { 503 } else { 500 };
                return Err(WebhookResponse::json(
                    status,
                    ActionAnswer::failed(format!("Nothing was posted: {e}")).to_json(),
                ));
            }
        },
    }
    let run_date = received.date_naive();
    let period = inst.as_ref().and_then(|i| {
        let kind = i.config.period.kind;
        match params.form(field::PERIOD) {
            None => Some(kind.period_for(run_date)),
            Some(label) => period_from_label(kind, label).or_else(|| {
                errors.insert(
                    field::PERIOD.into(),
                    format!(
                        "`{label}` is not a period of instance `{}`: expected {}, or leave it empty for the period derived from today",
                        i.config.instance,
                        period_example(kind)
                    ),
                );
                None
            }),
        }
    });
    match (inst, period, dry_run) {
        (Some(inst), Some(period), Some(dry_run)) if errors.is_empty() => Ok(Request {
            inst,
            period,
            dry_run,
            note,
            run_date,
        }),
        _ => {
            let mut a = ActionAnswer::failed(format!(
                "Nothing was posted: the form has problems ({})",
                errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
            a.validation_errors = errors;
            Err(WebhookResponse::json(200, a.to_json()))
        }
    }
}

/// Whether the body carries an `attachment` (the action asks for `push` deliveries; its
/// top-level `data` holds the params, not rows).
fn has_attachment(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(default, borrow)]
        attachment: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_slice::<Probe>(body)
        .ok()
        .and_then(|p| p.attachment)
        .is_some_and(|a| a.get().trim() != "null")
}

async fn execute(
    ctx: &LambdaContext,
    hub: &ActionHub,
    req: &WebhookRequest,
    inv: &Invocation,
) -> WebhookResponse {
    let body = match body_of(ctx, req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let params = match ActionParams::parse(&body) {
        Ok(p) => p,
        Err(e) => return WebhookResponse::json(400, ActionAnswer::failed(e).to_json()),
    };
    let received = req.received_at.unwrap_or_else(Utc::now);
    let request = match read_form(ctx, hub, &params, received).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let sender = params.sender();
    if let Some(why) = sender_refusal(&request.inst.config, sender) {
        refuse(ctx, Some(Route::Execute), req, &why).await;
        return WebhookResponse::json(
            200,
            ActionAnswer::failed(format!("Nothing was posted: {why}")).to_json(),
        );
    }
    let trigger_only = request.inst.config.webhook.delivery == DeliveryMode::Trigger;
    let derived = request.inst.config.period.kind.period_for(request.run_date);
    if trigger_only && request.period != derived {
        let mut a = ActionAnswer::failed("Nothing was posted: the form has problems");
        a.validation_errors.insert(
            field::PERIOD.into(),
            format!(
                "instance `{instance}` extracts through the Looker API for the period derived from today ({}); leave the period empty",
                derived.label,
                instance = request.inst.config.instance
            ),
        );
        return WebhookResponse::json(200, a.to_json());
    }
    if !trigger_only && !has_attachment(&body) {
        return WebhookResponse::json(200, ActionAnswer::failed(
            "Nothing was posted: the request carries no rows (the action takes pushed JSON detail or CSV results; set the schedule's format accordingly)",
        ).to_json());
    }
    let work = if trigger_only {
        delivery::parse_delivery_meta(&body).map(|_| None)
    } else {
        delivery::parse_delivery(&body).map(Some)
    };
    let work = match work {
        Ok(w) => w,
        Err(e) => {
            return WebhookResponse::json(
                200,
                ActionAnswer::failed(format!("Nothing was posted: {e}")).to_json(),
            )
        }
    };
    let instance = request.inst.config.instance.clone();
    if request.dry_run {
        // No lock, no audit, no D365 write: a dry run is repeatable and leaves no trace.
        return match run(ctx, hub, &request, work, inv, Mode::Preview).await {
            Ok(report) => WebhookResponse::json(200, preview_answer(&report, &request).to_json()),
            Err(e) => engine_failure(&instance, e),
        };
    }

    let key = match webhook_id(req) {
        Some(id) => format!("action#{instance}#{id}"),
        None => format!("action#{instance}#{}", hex::encode(Sha256::digest(&body))),
    };
    let ttl = ctx.settings.idempotency_ttl;
    match acquire(ctx.store.as_ref(), &key, inv, ttl).await {
        Ok(Idempotency::Run) => {}
        Ok(Idempotency::Completed(result)) => {
            tracing::info!(%instance, "action delivery already handled; answering the recorded result");
            let body = serde_json::from_str::<serde_json::Value>(&result)
                .unwrap_or_else(|_| ActionAnswer::ok("already handled").to_json());
            return WebhookResponse::json(200, body)
                .with_header("idempotent-replayed", "true".into());
        }
        Ok(Idempotency::InProgress(until)) => {
            let secs = (until - Utc::now()).num_seconds().clamp(1, 900);
            return WebhookResponse::json(
                429,
                ActionAnswer::failed(
                    "The same delivery is being handled right now; nothing more was done.",
                )
                .to_json(),
            )
            .with_header("retry-after", secs.to_string());
        }
        Err(e) => return engine_failure(&instance, EngineError::Store(e)),
    }
    let report = match run(ctx, hub, &request, work, inv, Mode::Post).await {
        Ok(r) => r,
        Err(e) => {
            release(ctx.store.as_ref(), &key, inv).await;
            return engine_failure(&instance, e);
        }
    };
    let mut summary = RunSummary::of(&report);
    record_sender(ctx, &summary.run_id, req, sender, request.note.as_deref()).await;
    let mut queued = false;
    if report.outcome == Outcome::Interrupted {
        let c = super::continuation::continue_interrupted(ctx, &summary.run_id).await;
        queued = matches!(c, super::continuation::Continuation::Queued { .. });
        summary.continuation = Some(c.describe(&summary.run_id));
    }
    let answer = post_answer(&summary, report.outcome, queued).with("run", json!(summary));
    let response = WebhookResponse::json(200, answer.to_json());
    tracing::info!(%instance, run_id = %summary.run_id, status = %summary.status, "action post finished");
    if outcome_is_final(report.outcome) || queued {
        complete(ctx.store.as_ref(), &key, inv, &response.body, ttl).await;
    } else {
        release(ctx.store.as_ref(), &key, inv).await;
    }
    response
}

async fn run(
    ctx: &LambdaContext,
    hub: &ActionHub,
    request: &Request,
    rows: Option<delivery::Delivery>,
    inv: &Invocation,
    mode: Mode,
) -> Result<RunReport, EngineError> {
    let inline_end = tokio::time::Instant::now() + hub.settings.inline_budget;
    let deadline = inv
        .work_deadline(ctx.settings.deadline_margin)
        .min(inline_end);
    let inst = &request.inst;
    let clients = inst.clients.with_deadline(deadline);
    let progress = ctx.progress(inst);
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: ctx.store.as_ref(),
        progress: &progress,
    };
    let opts = RunOptions {
        run_date: request.run_date,
        trigger: "action".into(),
        mode,
        lease: inv.period_lease(),
        deadline: Some(deadline),
        supersede: false,
    };
    match rows {
        Some(d) => {
            engine
                .run_extract(&inst.config, &opts, &request.period, d.extract)
                .await
        }
        // A trigger-only instance extracts through the Looker API for the derived period.
        None => engine.run(&inst.config, &opts).await,
    }
}

/// Records who sent the post (and the note) in the run's audit trail.
async fn record_sender(
    ctx: &LambdaContext,
    run_id: &str,
    req: &WebhookRequest,
    sender: Option<&str>,
    note: Option<&str>,
) {
    // Only on a recorded run (a busy period, say, records none): never an orphan event.
    if !matches!(ctx.store.get_run(run_id).await, Ok(Some(_))) {
        return;
    }
    let mut message = format!(
        "sent through the Looker action `{}` by {} (X-Looker-Webhook-Id {})",
        protocol::ACTION_NAME,
        sender.map_or_else(
            || "an unnamed sender (no Sender user attribute bound)".to_string(),
            |s| format!("`{s}`")
        ),
        shown_webhook_id(req)
    );
    if let Some(n) = note {
        let _ = write!(message, "; note: {n}");
    }
    let event = AuditEvent::new(run_id, EventLevel::Info, SENDER_KIND, message);
    if let Err(e) = ctx.store.append_event(&event).await {
        tracing::error!(run_id, error = %e, "could not record the action's sender");
    }
}

fn engine_failure(instance: &str, e: EngineError) -> WebhookResponse {
    tracing::error!(instance, error = %e, "action not processed");
    let e = match e {
        EngineError::Store(s) => LambdaError::Store(s),
        other => LambdaError::Engine(other),
    };
    let status = if e.is_retryable() { 503 } else { 500 };
    WebhookResponse::json(
        status,
        ActionAnswer::failed(format!("Nothing was posted: {e}")).to_json(),
    )
}

fn journals_text(summary: &RunSummary) -> String {
    summary
        .journals
        .iter()
        .map(|j| format!("{}/{}", j.legal_entity, j.batch_number))
        .collect::<Vec<_>>()
        .join(", ")
}

fn issues_text(issues: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut s = issues
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if issues.len() > SHOWN {
        let _ = write!(s, "; and {} more", issues.len() - SHOWN);
    }
    s
}

fn post_answer(summary: &RunSummary, outcome: Outcome, queued: bool) -> ActionAnswer {
    let run = &summary.run_id;
    let period = &summary.period;
    let detail = summary.message.clone().unwrap_or_default();
    match outcome {
        // The connector creates journals and leaves them unposted for review; the run's own
        // message says so, where "posted" alone would claim a ledger posting.
        Outcome::Posted if !detail.is_empty() => {
            ActionAnswer::ok(format!("Period {period}: {detail} (run {run})."))
        }
        Outcome::Posted => ActionAnswer::ok(format!(
            "Journal {} for period {period}: {} lines written, unposted for review (run {run}).",
            journals_text(summary),
            summary.lines_created
        )),
        Outcome::AlreadyPosted => ActionAnswer::ok(format!(
            "Already posted as journal {} for period {period}: nothing new was written (run {run}).",
            journals_text(summary)
        )),
        Outcome::NothingToPost | Outcome::Previewed => {
            ActionAnswer::ok(format!("Nothing to post for period {period}: {detail} (run {run})."))
        }
        Outcome::Rejected => ActionAnswer::failed(format!(
            "Nothing was posted: {} problem(s) in the rows: {} (run {run}).",
            summary.issues.len(),
            issues_text(&summary.issues)
        )),
        Outcome::Interrupted if queued => ActionAnswer::ok(format!(
            "Accepted: run {run} is large and continues in the background ({}). The result is sent to the instance's notifications.",
            summary.continuation.clone().unwrap_or_default()
        )),
        _ => ActionAnswer::failed(format!(
            "Run {run} ended {}: {}",
            summary.status,
            if detail.is_empty() {
                summary.continuation.clone().unwrap_or_default()
            } else {
                detail
            }
        )),
    }
}

/// The dry run's answer: the journals exactly as they would be posted, as text in `message`
/// (what Looker shows) and as data in `preview`.
fn preview_answer(report: &RunReport, request: &Request) -> ActionAnswer {
    let summary = RunSummary::of(report);
    let period = &request.period.label;
    let mut answer = match report.outcome {
        Outcome::Previewed => {
            let mut text = format!(
                "Dry run for period {period}: nothing was written. The journal would be:\n"
            );
            text.push_str(&preview_text(report));
            ActionAnswer::ok(text)
        }
        Outcome::Rejected => ActionAnswer::failed(format!(
            "Dry run for period {period}: the journal would be refused, {} problem(s): {}",
            summary.issues.len(),
            issues_text(&summary.issues)
        )),
        Outcome::NothingToPost => ActionAnswer::ok(format!(
            "Dry run for period {period}: nothing to post ({}).",
            summary.message.clone().unwrap_or_default()
        )),
        _ => ActionAnswer::failed(format!(
            "Dry run for period {period} failed: {}",
            summary.message.clone().unwrap_or_default()
        )),
    };
    answer = answer.with(
        "preview",
        json!({
            "instance": request.inst.config.instance,
            "period": period,
            "dry_run": true,
            "journals": report.journals,
            "issues": summary.issues,
        }),
    );
    answer
}

/// One line per journal line: voucher, date, account, debit/credit, currency, text.
pub fn preview_text(report: &RunReport) -> String {
    const SHOWN: usize = 200;
    let mut out = String::new();
    let mut shown = 0usize;
    let mut hidden = 0usize;
    for j in &report.journals {
        let format = report.formats.get(&j.legal_entity);
        let _ = writeln!(
            out,
            "{} {} \"{}\" ({}, {} lines, {} vouchers)",
            j.legal_entity,
            j.journal_name,
            j.description,
            j.part,
            j.lines.len(),
            j.voucher_count()
        );
        for l in &j.lines {
            if shown >= SHOWN {
                hidden += 1;
                continue;
            }
            shown += 1;
            let account = match format {
                Some(f) => l.account.display_value(f),
                None => l.account.main_account.clone(),
            };
            let side = if l.amount.is_sign_negative() {
                format!("credit {}", l.credit())
            } else {
                format!("debit {}", l.debit())
            };
            let _ = writeln!(
                out,
                "  {:>4} v{} {} {} {} {} {}",
                l.line_no, l.voucher, l.trans_date, account, side, l.currency, l.text
            );
        }
        if let Ok(totals) = j.totals() {
            for (cur, (dr, cr)) in totals {
                let _ = writeln!(out, "  total {cur}: debit {dr}, credit {cr}");
            }
        }
    }
    if hidden > 0 {
        let _ = writeln!(
            out,
            "  … and {hidden} more lines (all of them are in `preview`)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_labels_round_trip() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        for kind in [PeriodKind::Week, PeriodKind::Month, PeriodKind::Day] {
            let p = kind.period_for(d);
            assert_eq!(
                period_from_label(kind, &p.label),
                Some(p.clone()),
                "{kind:?}"
            );
        }
        assert_eq!(period_from_label(PeriodKind::Week, "2026-11"), None);
        assert_eq!(period_from_label(PeriodKind::Month, "2026-13"), None);
        assert_eq!(period_from_label(PeriodKind::Week, "2026-W60"), None);
        assert_eq!(
            period_from_label(PeriodKind::Week, "2026-W01").map(|p| p.start),
            NaiveDate::from_ymd_opt(2025, 12, 29)
        );
    }

    #[test]
    fn settings_from_env() {
        let s = ActionHubSettings::from_lookup(|k| match k {
            ENV_ACTION_HUB_INSTANCES => Some(" a, b ,,".into()),
            ENV_ACTION_HUB_INLINE_SECS => Some("30".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.instances, ["a", "b"]);
        assert_eq!(s.inline_budget, std::time::Duration::from_secs(30));
        assert_eq!(s.sender_attribute, "email");
        assert!(ActionHubSettings::from_lookup(
            |k| (k == ENV_ACTION_HUB_INLINE_SECS).then(|| "soon".into())
        )
        .is_err());
    }
}
