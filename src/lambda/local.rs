//! The webhook function on loopback without AWS: an HTTP server on 127.0.0.1 that hands each
//! request to the same handler the Function URL runs ([`super::webhook::handle_webhook`]), and
//! `ml-connector action-demo`, which shows the Looker action flow (list → form → execute)
//! against it with the sandbox Looker and D365. Sandbox builds only: the Lambda binaries never
//! link this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::action_hub::token::StaticHubToken;
use super::action_hub::{ActionHub, ActionHubSettings};
use super::webhook::{handle_webhook, WebhookRequest};
use super::{Invocation, LambdaContext, Settings};
use crate::domain::config::InstanceConfig;
use crate::sandbox::d365::{
    D365Seed, D365Sim, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use crate::sandbox::looker::action_client::{execute_body, run_look_json_detail, ActionClient};
use crate::sandbox::looker::seed::{DEMO_LOOK_ID, DEMO_LOOK_TITLE};
use crate::sandbox::looker::{
    LookerSeed, LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};
use crate::secrets::{Credentials, InstanceSecrets, Secret, SecretSource, SecretsError};
use crate::store::{ConfigStore, StoreError};

/// Serves `ctx` on `listener` (bound to 127.0.0.1) until the task is dropped.
pub fn serve(
    ctx: Arc<LambdaContext>,
    listener: tokio::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new().fallback(function).with_state(ctx);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "local function server stopped");
        }
    })
}

async fn function(
    State(ctx): State<Arc<LambdaContext>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (body, is_base64_encoded) = match String::from_utf8(body.to_vec()) {
        Ok(s) => (Some(s), false),
        Err(e) => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            (Some(b64.encode(e.into_bytes())), true)
        }
    };
    let req = WebhookRequest {
        method: method.as_str().to_string(),
        path: uri.path().to_string(),
        body,
        is_base64_encoded,
        received_at: Some(chrono::Utc::now()),
        source_ip: Some("127.0.0.1".into()),
        user_agent: header("user-agent"),
        looker_token: header(super::webhook::LOOKER_TOKEN_HEADER),
        authorization: header("authorization"),
        webhook_id: header("x-looker-webhook-id"),
        host: header("host"),
    };
    let inv = Invocation::with_timeout(
        format!("local-{:016x}", fastrand::u64(..)),
        chrono::Duration::minutes(15),
    );
    let r = handle_webhook(&ctx, req, &inv).await;
    let mut resp = (
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        r.body,
    )
        .into_response();
    for (k, v) in r.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// The config store `ml-connector config push` fills in AWS, in memory (the local function
/// here, and the Lambda contexts the tests build).
#[derive(Default)]
pub struct MemConfigs(Mutex<HashMap<String, (String, String)>>);

#[async_trait::async_trait]
impl ConfigStore for MemConfigs {
    async fn put_config(
        &self,
        instance: &str,
        version: &str,
        toml: &str,
    ) -> Result<(), StoreError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(instance.into(), (version.into(), toml.into()));
        Ok(())
    }
    async fn get_config(&self, instance: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance)
            .cloned())
    }
}

/// What Secrets Manager holds in AWS, in memory: instance secrets by instance name. Tests may
/// change an instance's secrets while a context reads them ([`MemSecrets::update`]).
#[derive(Default)]
pub struct MemSecrets(Mutex<HashMap<String, InstanceSecrets>>);

impl MemSecrets {
    /// A source holding `secrets` for `instance` only.
    pub fn with(instance: &str, secrets: InstanceSecrets) -> Self {
        let s = Self::default();
        s.insert(instance, secrets);
        s
    }

    /// Sets `instance`'s secrets.
    pub fn insert(&self, instance: &str, secrets: InstanceSecrets) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(instance.into(), secrets);
    }

    /// Changes `instance`'s secrets in place; false when it has none.
    pub fn update(&self, instance: &str, change: impl FnOnce(&mut InstanceSecrets)) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(instance).map(change).is_some()
    }
}

#[async_trait::async_trait]
impl SecretSource for MemSecrets {
    async fn instance_secrets(&self, instance: &str) -> Result<InstanceSecrets, SecretsError> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(instance)
            .cloned()
            .ok_or_else(|| SecretsError::NotFound {
                instance: instance.into(),
                detail: "not in the in-memory source".into(),
            })
    }
}

/// The sandbox's credentials for both services, and a random webhook path secret.
pub fn sandbox_secrets() -> InstanceSecrets {
    InstanceSecrets {
        credentials: Credentials {
            looker_client_id: SANDBOX_LOOKER_CLIENT_ID.into(),
            looker_client_secret: Secret::new(SANDBOX_LOOKER_CLIENT_SECRET),
            d365_tenant_id: SANDBOX_TENANT.into(),
            d365_client_id: SANDBOX_CLIENT_ID.into(),
            d365_client_secret: Secret::new(SANDBOX_CLIENT_SECRET),
        },
        webhook_secret: Secret::new(format!("{:032x}", fastrand::u128(..))),
        looker_webhook_token: None,
        notify: Default::default(),
    }
}

/// Why the action demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum ActionDemoError {
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error(transparent)]
    Client(#[from] crate::sandbox::looker::action_client::ActionClientError),
    #[error("the hub answered unexpectedly at {step}: {detail}")]
    Unexpected { step: String, detail: String },
}

/// What the demo found, for its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionDemoOutcome {
    /// The journal posted (legal entity/batch), when the post succeeded.
    pub journal: Option<String>,
    /// Whether the redelivery was answered from the record with nothing new in D365.
    pub redelivery_idempotent: bool,
}

fn step(ok: bool, step: &str, detail: impl Into<String>) -> Result<(), ActionDemoError> {
    if ok {
        Ok(())
    } else {
        Err(ActionDemoError::Unexpected {
            step: step.into(),
            detail: detail.into(),
        })
    }
}

/// The Looker action flow on loopback: sandbox Looker and D365, the webhook function with its
/// action hub on 127.0.0.1, and the sandbox action client doing what Looker does: list, form,
/// a wrong token, a dry run, the post, and a redelivery. `config_toml` is the instance config
/// (pointed at the sandbox here); `say` gets each line to print.
pub async fn action_demo(
    config_toml: &str,
    store: Arc<dyn crate::store::Store>,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<ActionDemoOutcome, ActionDemoError> {
    let LocalHub {
        looker,
        d365,
        base,
        token,
        server,
    } = start_local_hub(config_toml, store).await?;
    say(format!("Sandbox Looker {} and D365 {} on loopback; the webhook function with its action hub on {base}", looker.base_url(), d365.environment_url()));
    let outcome = play_looker(&looker, &d365, &base, token, say).await;
    server.abort();
    outcome
}

/// The sandbox and the function with its hub, running on loopback.
struct LocalHub {
    looker: LookerSim,
    d365: D365Sim,
    /// `http://127.0.0.1:<port>`.
    base: String,
    token: String,
    server: tokio::task::JoinHandle<()>,
}

/// Starts the sandbox, pushes `config_toml` (pointed at it) into an in-memory config store,
/// and serves the function with its action hub (a random token) on 127.0.0.1.
async fn start_local_hub(
    config_toml: &str,
    store: Arc<dyn crate::store::Store>,
) -> Result<LocalHub, ActionDemoError> {
    let sandbox = |e: std::io::Error| ActionDemoError::Sandbox(e.to_string());
    let today = chrono::Utc::now().date_naive();
    let looker = LookerSim::start(LookerSeed::demo(today))
        .await
        .map_err(sandbox)?;
    let d365 = D365Sim::start(D365Seed::demo(today))
        .await
        .map_err(sandbox)?;
    let mut cfg = InstanceConfig::from_toml(config_toml)
        .map_err(|e| ActionDemoError::Sandbox(e.to_string()))?;
    cfg.looker.base_url = looker.base_url();
    cfg.d365.environment_url = d365.environment_url();
    cfg.d365.authority = d365.authority_url();
    cfg.d365.tenant_id = Some(SANDBOX_TENANT.into());
    let toml = toml::to_string(&cfg).map_err(|e| ActionDemoError::Sandbox(e.to_string()))?;
    let configs = MemConfigs::default();
    configs
        .put_config(&cfg.instance, &cfg.version(), &toml)
        .await
        .map_err(|e| ActionDemoError::Sandbox(e.to_string()))?;
    let secrets = MemSecrets::with(&cfg.instance, sandbox_secrets());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(sandbox)?;
    let base = format!("http://{}", listener.local_addr().map_err(sandbox)?);
    let token = format!("{:032x}", fastrand::u128(..));
    let ctx = LambdaContext::new(
        store,
        Arc::new(configs),
        Arc::new(secrets),
        Settings::default(),
    )
    .with_action_hub(ActionHub {
        token: Arc::new(StaticHubToken(Secret::new(token.clone()))),
        settings: ActionHubSettings {
            instances: vec![cfg.instance.clone()],
            base_url: Some(base.clone()),
            ..ActionHubSettings::default()
        },
    });
    let server = serve(Arc::new(ctx), listener);
    Ok(LocalHub {
        looker,
        d365,
        base,
        token,
        server,
    })
}

/// Looker's calls against the hub, each step said and checked.
async fn play_looker(
    looker: &LookerSim,
    d365: &D365Sim,
    base: &str,
    token: String,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<ActionDemoOutcome, ActionDemoError> {
    let client = ActionClient::new(format!("{base}/actions"), token);
    say("\n1. Admin > Actions > Add Action Hub: Looker POSTs the hub URL (list)".into());
    let list = client.list().await?;
    let action = &list.body["integrations"][0];
    step(
        list.status == 200 && action["name"] == "d365_journal",
        "list",
        list.body.to_string(),
    )?;
    say(format!(
        "   {} `{}`: formats {}, downloads {}",
        list.status,
        action["label"].as_str().unwrap_or(""),
        action["supported_formats"],
        action["supported_download_settings"]
    ));
    let (Some(form_url), Some(url)) = (action["form_url"].as_str(), action["url"].as_str()) else {
        return Err(ActionDemoError::Unexpected {
            step: "list".into(),
            detail: "no form_url/url".into(),
        });
    };

    say("\n2. A wrong token is refused (and audited)".into());
    let wrong = client.with_token("not-the-token").list().await?;
    step(
        wrong.status == 403,
        "wrong token",
        format!("HTTP {}", wrong.status),
    )?;
    say(format!(
        "   {} {}",
        wrong.status,
        wrong.body["error"].as_str().unwrap_or("")
    ));

    let data = json!({ "sender": "ana@example.com" });
    say("\n3. A user picks the action in Send: Looker POSTs the form".into());
    let form = client.form(form_url, &data).await?;
    let fields = form.body["fields"].as_array().cloned().unwrap_or_default();
    step(
        form.status == 200 && !fields.is_empty(),
        "form",
        form.body.to_string(),
    )?;
    for f in &fields {
        say(format!(
            "   field `{}` ({}){}",
            f["name"].as_str().unwrap_or(""),
            f["type"].as_str().unwrap_or("string"),
            f["default"]
                .as_str()
                .map(|d| format!(", default `{d}`"))
                .unwrap_or_default()
        ));
    }
    let default = |name: &str| {
        fields
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["default"].as_str())
            .unwrap_or("")
            .to_string()
    };

    say(format!(
        "\n4. Looker runs Look {DEMO_LOOK_ID} (json_detail) and POSTs execute, dry run"
    ));
    let rows = run_look_json_detail(
        &looker.base_url(),
        SANDBOX_LOOKER_CLIENT_ID,
        SANDBOX_LOOKER_CLIENT_SECRET,
        DEMO_LOOK_ID,
    )
    .await?;
    let look_url = format!("{}/looks/{DEMO_LOOK_ID}", looker.base_url());
    let form_params = |dry: &str| {
        json!({
            "instance": default("instance"),
            "period": default("period"),
            "dry_run": dry,
            "note": "sent from ml-connector action-demo",
        })
    };
    let dry = client
        .execute(
            url,
            "demo-dry-run",
            &execute_body(
                &look_url,
                DEMO_LOOK_TITLE,
                &rows,
                &data,
                &form_params("yes"),
            ),
        )
        .await?;
    step(dry.success() == Some(true), "dry run", dry.body.to_string())?;
    let lines_before = d365.lines().len();
    step(
        lines_before == 0,
        "dry run",
        format!("D365 holds {lines_before} lines after a dry run"),
    )?;
    for l in dry.message().lines().take(8) {
        say(format!("   {l}"));
    }
    say(format!(
        "   … D365 holds {lines_before} journal lines: nothing was written"
    ));

    let body = execute_body(&look_url, DEMO_LOOK_TITLE, &rows, &data, &form_params("no"));
    post_and_redeliver(&client, url, &body, d365, say).await
}

/// Steps 5 and 6: the real post, then Looker's redelivery of the same execute.
async fn post_and_redeliver(
    client: &ActionClient,
    url: &str,
    body: &serde_json::Value,
    d365: &D365Sim,
    say: &mut (dyn FnMut(String) + Send),
) -> Result<ActionDemoOutcome, ActionDemoError> {
    say("\n5. The same with dry run = no: the journal is written".into());
    // Looker gives every delivery its own id; so does each demo, whose sandbox D365 starts
    // empty while the local store keeps earlier demos' answers.
    let delivery = format!("demo-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"));
    let post = client.execute(url, &delivery, body).await?;
    let lines = d365.lines().len();
    step(
        post.success() == Some(true) && !post.replayed && lines > 0,
        "post",
        post.body.to_string(),
    )?;
    say(format!("   {}", post.message()));
    let journal = post.body["run"]["journals"][0].as_object().map(|j| {
        format!(
            "{}/{}",
            j["legal_entity"].as_str().unwrap_or(""),
            j["batch_number"].as_str().unwrap_or("")
        )
    });

    say("\n6. Looker delivers the same execute again (same X-Looker-Webhook-Id)".into());
    let again = client.execute(url, &delivery, body).await?;
    let idempotent = again.replayed && d365.lines().len() == lines && again.body == post.body;
    say(format!(
        "   {} answered from the record: {}; D365 still holds {lines} lines",
        again.status, again.replayed
    ));
    Ok(ActionDemoOutcome {
        journal,
        redelivery_idempotent: idempotent,
    })
}
