//! What a cold start builds once and every invocation shares: the audit store, the config
//! store, the secret source, settings from the environment, and a per-instance cache of the
//! Looker/D365 clients (so access tokens and connection pools survive across invocations).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use sha2::{Digest, Sha256};

use super::error::LambdaError;
use crate::domain::config::InstanceConfig;
use crate::secrets::{InstanceSecrets, SecretSource};
use crate::store::{ConfigStore, ReplayRequests, Store};
use crate::wiring::{build_clients, Clients};

/// Environment variable: largest accepted webhook body in bytes (default 6 MiB, the Function
/// URL payload limit).
pub const ENV_WEBHOOK_MAX_BODY_BYTES: &str = "WEBHOOK_MAX_BODY_BYTES";
/// Environment variable: how long a completed idempotency record is kept, in seconds
/// (default 86400).
pub const ENV_IDEMPOTENCY_TTL_SECS: &str = "IDEMPOTENCY_TTL_SECS";

/// Environment variable: seconds kept back from an invocation's deadline (default 10): the
/// clients start no wait and the engine no write that would end later, so a run that runs out
/// of time still records where it stopped and releases its lock before Lambda kills it.
pub const ENV_DEADLINE_MARGIN_SECS: &str = "DEADLINE_MARGIN_SECS";

/// Environment variable: how many times a run that runs out of time is continued by the replay
/// function before it waits for a person (default 16; see [`super::continuation`]).
pub const ENV_MAX_CONTINUATIONS: &str = "MAX_CONTINUATIONS";

/// Tunables read once at cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub max_body_bytes: usize,
    pub idempotency_ttl: Duration,
    /// See [`ENV_DEADLINE_MARGIN_SECS`].
    pub deadline_margin: std::time::Duration,
    /// See [`ENV_MAX_CONTINUATIONS`]. 16 invocations of 15 minutes post about 100,000 lines
    /// at the cost model's slowest line cost with parts in parallel (BENCHMARKS.md).
    pub max_continuations: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_body_bytes: 6 * 1024 * 1024,
            idempotency_ttl: Duration::hours(24),
            deadline_margin: std::time::Duration::from_secs(10),
            max_continuations: 16,
        }
    }
}

impl Settings {
    /// Reads the settings through `env` (e.g. `|k| std::env::var(k).ok()`); unset → default.
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, LambdaError> {
        let mut s = Settings::default();
        let number = |key: &str| -> Result<Option<u64>, LambdaError> {
            match env(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
            {
                None => Ok(None),
                Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                    LambdaError::Environment(format!("{key} must be a whole number, not `{v}`"))
                }),
            }
        };
        if let Some(n) = number(ENV_WEBHOOK_MAX_BODY_BYTES)? {
            s.max_body_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = number(ENV_DEADLINE_MARGIN_SECS)? {
            s.deadline_margin = std::time::Duration::from_secs(n.min(900));
        }
        if let Some(n) = number(ENV_MAX_CONTINUATIONS)? {
            s.max_continuations = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = number(ENV_IDEMPOTENCY_TTL_SECS)? {
            s.idempotency_ttl = Duration::seconds(
                i64::try_from(n)
                    .unwrap_or(i64::MAX)
                    .min(i64::from(i32::MAX)),
            );
        }
        Ok(s)
    }

    /// [`Settings::from_lookup`] on the process environment.
    pub fn from_env() -> Result<Self, LambdaError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

/// `Lambda-Runtime-Deadline-Ms` as a point in time. AWS sends epoch milliseconds; the local
/// emulator of `cargo lambda watch` sends the function's timeout instead (600000 = 10 minutes),
/// which read as epoch time is 1970 and would leave every invocation out of time. A value
/// before 2001 (below 10^12 ms) is therefore read as a duration from now.
fn deadline_from_header(ms: u64, now: DateTime<Utc>) -> DateTime<Utc> {
    const EPOCH_MS_FLOOR: u64 = 1_000_000_000_000;
    if ms < EPOCH_MS_FLOOR {
        return now + Duration::milliseconds(i64::try_from(ms).unwrap_or(60_000));
    }
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or_else(|| now + Duration::minutes(1))
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[test]
    fn epoch_deadlines_are_kept_and_emulator_timeouts_count_from_now() {
        let now = Utc
            .timestamp_millis_opt(1_795_000_000_000)
            .single()
            .unwrap();
        // AWS: an absolute epoch deadline 15 minutes ahead.
        assert_eq!(
            deadline_from_header(1_795_000_900_000, now),
            now + Duration::minutes(15)
        );
        // cargo lambda watch: the 10-minute timeout itself.
        assert_eq!(
            deadline_from_header(600_000, now),
            now + Duration::minutes(10)
        );
    }
}

/// The invocation being served: its id (idempotency lock owner) and its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub request_id: String,
    pub deadline: DateTime<Utc>,
}

impl Invocation {
    /// From the runtime's context (`deadline` is epoch milliseconds).
    pub fn from_lambda(ctx: &lambda_runtime::Context) -> Self {
        let deadline = deadline_from_header(ctx.deadline, Utc::now());
        Invocation {
            request_id: ctx.request_id.clone(),
            deadline,
        }
    }

    /// An invocation with `timeout` left (tests, local runs).
    pub fn with_timeout(request_id: impl Into<String>, timeout: Duration) -> Self {
        Invocation {
            request_id: request_id.into(),
            deadline: Utc::now() + timeout,
        }
    }

    /// The instant this invocation's clients and engine must be done by: its deadline minus
    /// `margin` (now, if that has passed already).
    pub fn work_deadline(&self, margin: std::time::Duration) -> tokio::time::Instant {
        let left = (self.deadline - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(margin);
        tokio::time::Instant::now() + left
    }

    /// Time left before the deadline, at least one second.
    pub fn remaining(&self) -> Duration {
        (self.deadline - Utc::now()).max(Duration::seconds(1))
    }

    /// The period lock's lease of a run in this invocation: the smaller of
    /// [`crate::engine::lease::DEFAULT_LEASE`] and the time left. The engine renews it while
    /// posting, so a long invocation keeps its lock, and one that is killed leaves a lock that
    /// expires soon after.
    pub fn period_lease(&self) -> Duration {
        self.remaining().min(crate::engine::lease::DEFAULT_LEASE)
    }
}

/// An instance ready to run: its config, secrets and (cached) clients.
pub struct Instance {
    pub config: InstanceConfig,
    pub secrets: InstanceSecrets,
    pub clients: Arc<Clients>,
}

struct CachedClients {
    config_version: String,
    secrets_hash: String,
    clients: Arc<Clients>,
}

/// Shared state of one Lambda execution environment.
pub struct LambdaContext {
    pub store: Arc<dyn Store>,
    pub configs: Arc<dyn ConfigStore>,
    pub secrets: Arc<dyn SecretSource>,
    pub settings: Settings,
    /// Where a run that ran out of time queues its continuation (the replay requests of the
    /// audit table); `None`: interrupted runs wait for their invocation's retry or a person.
    pub continuations: Option<Arc<dyn ReplayRequests>>,
    clients: Mutex<HashMap<String, CachedClients>>,
    /// Publishes finished runs' notifications (none: only logged).
    notifier: Option<crate::notify::Notifier>,
    /// The Looker action hub served beside the webhook (none: no `/actions` routes).
    pub action_hub: Option<super::action_hub::ActionHub>,
}

/// A digest of every secret of an instance (never logged; only compared), so a rotated secret
/// rebuilds the clients.
fn secrets_hash(s: &InstanceSecrets) -> String {
    let c = &s.credentials;
    let mut h = Sha256::new();
    for part in [
        c.looker_client_id.as_str(),
        c.looker_client_secret.expose(),
        c.d365_tenant_id.as_str(),
        c.d365_client_id.as_str(),
        c.d365_client_secret.expose(),
        s.webhook_secret.expose(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

impl LambdaContext {
    pub fn new(
        store: Arc<dyn Store>,
        configs: Arc<dyn ConfigStore>,
        secrets: Arc<dyn SecretSource>,
        settings: Settings,
    ) -> Self {
        LambdaContext {
            store,
            configs,
            secrets,
            settings,
            continuations: None,
            clients: Mutex::new(HashMap::new()),
            notifier: None,
            action_hub: None,
        }
    }

    /// Serves the Looker action hub beside the webhook.
    pub fn with_action_hub(mut self, hub: super::action_hub::ActionHub) -> Self {
        self.action_hub = Some(hub);
        self
    }

    /// Publishes every finished run's notification through `notifier`.
    pub fn with_notifier(mut self, notifier: crate::notify::Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Engine progress for a run of `inst`: log lines, and the notification when it finishes
    /// (to the SNS topic and the instance's Slack/Teams webhooks).
    pub fn progress<'a>(
        &'a self,
        inst: &Instance,
    ) -> crate::notify::PublishingProgress<'a, super::LogProgress> {
        crate::notify::PublishingProgress {
            inner: super::LogProgress,
            notifier: self.notifier.as_ref(),
            chat: inst.secrets.notify.clone(),
            store: self.store.as_ref(),
        }
    }

    /// Interrupted runs queue their continuation here (see [`super::continuation`]).
    pub fn with_continuations(mut self, queue: Arc<dyn ReplayRequests>) -> Self {
        self.continuations = Some(queue);
        self
    }

    /// The instance's current configuration from the config store, parsed and checked.
    pub async fn load_config(&self, instance: &str) -> Result<InstanceConfig, LambdaError> {
        let (_version, toml) = self
            .configs
            .get_config(instance)
            .await?
            .ok_or_else(|| LambdaError::ConfigMissing(instance.to_string()))?;
        let config = InstanceConfig::from_toml(&toml).map_err(|e| LambdaError::ConfigInvalid {
            instance: instance.to_string(),
            message: e.to_string(),
        })?;
        if config.instance != instance {
            return Err(LambdaError::ConfigInvalid {
                instance: instance.to_string(),
                message: format!(
                    "it names instance `{}`; a config is stored under its own instance name",
                    config.instance
                ),
            });
        }
        Ok(config)
    }

    /// Clients for `config` + `secrets`, built once per (instance, config version, secrets).
    pub fn clients_for(
        &self,
        config: &InstanceConfig,
        secrets: &InstanceSecrets,
    ) -> Result<Arc<Clients>, LambdaError> {
        let version = config.version();
        let hash = secrets_hash(secrets);
        let mut cache = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(c) = cache.get(&config.instance) {
            if c.config_version == version && c.secrets_hash == hash {
                return Ok(c.clients.clone());
            }
        }
        let clients = Arc::new(build_clients(config, &secrets.credentials).map_err(|e| {
            LambdaError::Clients {
                instance: config.instance.clone(),
                message: format!("{e:#}"),
            }
        })?);
        tracing::info!(
            instance = %config.instance,
            config_version = %version,
            "built Looker/D365 clients for this instance"
        );
        cache.insert(
            config.instance.clone(),
            CachedClients {
                config_version: version,
                secrets_hash: hash,
                clients: clients.clone(),
            },
        );
        Ok(clients)
    }

    /// Config, secrets and clients of `instance`. Pass `secrets` when already loaded.
    pub async fn instance(
        &self,
        instance: &str,
        secrets: Option<InstanceSecrets>,
    ) -> Result<Instance, LambdaError> {
        let secrets = match secrets {
            Some(s) => s,
            None => self.secrets.instance_secrets(instance).await?,
        };
        let config = self.load_config(instance).await?;
        let clients = self.clients_for(&config, &secrets)?;
        Ok(Instance {
            config,
            secrets,
            clients,
        })
    }

    /// How many instances have cached clients (for tests and logs).
    pub fn cached_instances(&self) -> usize {
        self.clients
            .lock()
            .map(|c| c.len())
            .unwrap_or_else(|p| p.into_inner().len())
    }
}

/// Environment variable: the DynamoDB table (audit store, config store, idempotency records).
pub const ENV_TABLE_NAME: &str = "TABLE_NAME";
/// Environment variable: prefix of the per-instance secret names (`{prefix}{instance}`),
/// default `ml-connector/`.
pub const ENV_SECRET_PREFIX: &str = "SECRET_PREFIX";
/// Environment variable: how long a read secret is cached, in seconds (default 300).
pub const ENV_SECRETS_CACHE_TTL_SECS: &str = "SECRETS_CACHE_TTL_SECS";

impl LambdaContext {
    /// What each binary builds once at cold start: the AWS SDK configuration (loaded once), the
    /// DynamoDB store (audit + config + idempotency, table `TABLE_NAME`), Secrets Manager
    /// (`SECRET_PREFIX`, `SECRETS_CACHE_TTL_SECS`) and [`Settings::from_env`].
    pub async fn from_env() -> Result<Self, LambdaError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let table = env(ENV_TABLE_NAME)
            .ok_or_else(|| LambdaError::Environment(format!("{ENV_TABLE_NAME} is not set")))?;
        let prefix = env(ENV_SECRET_PREFIX).unwrap_or_else(|| "ml-connector/".to_string());
        let ttl_secs = match env(ENV_SECRETS_CACHE_TTL_SECS) {
            None => 300,
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                LambdaError::Environment(format!(
                    "{ENV_SECRETS_CACHE_TTL_SECS} must be a whole number of seconds, not `{v}`"
                ))
            })?,
        };
        let settings = Settings::from_env()?;
        // Init time is billed and delays the first event: its steps are logged at DEBUG.
        let started = std::time::Instant::now();
        let sdk = crate::aws::aws_sdk_config().await;
        let sdk_loaded = started.elapsed();
        let store = Arc::new(crate::store::dynamodb::DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            table.clone(),
        ));
        let mut notifier = crate::notify::Notifier::new(Some(table));
        if let Some(arn) = env(crate::notify::sns::ENV_NOTIFY_TOPIC_ARN) {
            notifier = notifier.with_topic(crate::notify::sns::SnsTopic::new(
                aws_sdk_sns::Client::new(&sdk),
                arn,
            ));
        }
        let secrets = crate::secrets::aws::SecretsManagerSource::new(
            aws_sdk_secretsmanager::Client::new(&sdk),
            prefix,
            std::time::Duration::from_secs(ttl_secs),
        );
        tracing::debug!(
            sdk_config_us = sdk_loaded.as_micros() as u64,
            clients_us = (started.elapsed() - sdk_loaded).as_micros() as u64,
            "cold-start init steps"
        );
        let mut ctx = LambdaContext::new(store.clone(), store.clone(), Arc::new(secrets), settings)
            .with_notifier(notifier)
            .with_continuations(store);
        if let Some(secret_id) = env(super::action_hub::token::ENV_ACTION_HUB_TOKEN_SECRET) {
            let token = super::action_hub::token::SecretsManagerHubToken::new(
                aws_sdk_secretsmanager::Client::new(&sdk),
                secret_id,
                std::time::Duration::from_secs(ttl_secs),
            );
            ctx = ctx.with_action_hub(super::action_hub::ActionHub {
                token: Arc::new(token),
                settings: super::action_hub::ActionHubSettings::from_lookup(env)?,
            });
        }
        Ok(ctx)
    }
}
