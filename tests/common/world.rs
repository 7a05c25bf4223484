//! The one test world: both simulators on loopback, an instance config pointed at them, real
//! clients, an audit store, and (AWS builds) a Lambda context over them with in-memory config
//! and secret sources. Built with [`World::builder`]; [`World::start`] and friends are the
//! pipeline tests' shorthands.

use std::sync::Arc;

use chrono::NaiveDate;
use ml_connector::domain::config::{InlineQuery, InstanceConfig};
use ml_connector::engine::{Engine, Mode, NoProgress, RunOptions, RunReport};
use ml_connector::sandbox::d365::{
    D365Seed, D365Sim, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use ml_connector::sandbox::looker::{
    LookerSeed, LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};
use ml_connector::secrets::{Credentials, InstanceSecrets, Secret};
use ml_connector::store::sqlite::SqliteStore;
use ml_connector::store::Store;
use ml_connector::wiring::{build_clients, Clients};
use rust_decimal::Decimal;

#[cfg(feature = "aws")]
use ml_connector::lambda::local::{MemConfigs, MemSecrets};
#[cfg(feature = "aws")]
use ml_connector::lambda::{LambdaContext, Settings};

use super::{fee_rows_json, today, EXAMPLE};

/// The sandbox's credentials for both services.
pub fn sandbox_creds() -> Credentials {
    Credentials {
        looker_client_id: SANDBOX_LOOKER_CLIENT_ID.into(),
        looker_client_secret: Secret::new(SANDBOX_LOOKER_CLIENT_SECRET),
        d365_tenant_id: SANDBOX_TENANT.into(),
        d365_client_id: SANDBOX_CLIENT_ID.into(),
        d365_client_secret: Secret::new(SANDBOX_CLIENT_SECRET),
    }
}

/// An instance's secrets: the sandbox's credentials and the webhook path secret `webhook_secret`.
pub fn sandbox_secrets(webhook_secret: &str) -> InstanceSecrets {
    InstanceSecrets {
        credentials: sandbox_creds(),
        webhook_secret: Secret::new(webhook_secret),
        looker_webhook_token: None,
        notify: Default::default(),
    }
}

/// Where a world keeps its audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// A SQLite file (what the CLI uses), `audit.sqlite` in the world's directory.
    Sqlite,
    /// A fresh DynamoDB table on the local moto server (what the Lambdas use).
    #[cfg(feature = "aws")]
    Dynamo,
}

impl Backend {
    /// DynamoDB on the local moto server when `AWS_ENDPOINT_URL` is set (see `.ci/test`), else
    /// SQLite.
    pub fn from_env() -> Backend {
        #[cfg(feature = "aws")]
        if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|v| !v.is_empty()) {
            return Backend::Dynamo;
        }
        Backend::Sqlite
    }

    /// `sqlite` or `dynamodb`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            #[cfg(feature = "aws")]
            Backend::Dynamo => "dynamodb",
        }
    }

    /// A fresh, empty store on this backend (SQLite files go into `dir`).
    pub async fn open(self, dir: &std::path::Path) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite => {
                Arc::new(SqliteStore::open(&dir.join("audit.sqlite")).expect("sqlite store"))
            }
            #[cfg(feature = "aws")]
            Backend::Dynamo => Arc::new(super::aws::dynamo_store("mlc-test").await),
        }
    }
}

/// A fresh store on [`Backend::from_env`] in `dir`.
pub async fn env_store(dir: &std::path::Path) -> Arc<dyn Store> {
    Backend::from_env().open(dir).await
}

/// One isolated case: fresh simulators, a fresh audit store, and (AWS builds) a Lambda context
/// over them whose config source holds `config` and whose secret source holds the sandbox's
/// secrets for it.
pub struct World {
    pub looker: LookerSim,
    pub d365: D365Sim,
    pub config: InstanceConfig,
    /// The credentials [`World::clients`] uses (tests may spoil them).
    pub creds: Credentials,
    pub store: Arc<dyn Store>,
    pub backend: Backend,
    /// The Lambda context over the world (its config and secret sources are in memory).
    #[cfg(feature = "aws")]
    pub ctx: LambdaContext,
    /// The secrets the context reads (tests may change them).
    #[cfg(feature = "aws")]
    pub secrets: Arc<MemSecrets>,
    pub dir: tempfile::TempDir,
}

/// A change to a world's config before anything reads it.
type Adjust<'a> = Box<dyn FnOnce(&mut InstanceConfig) + Send + 'a>;

/// How to build a [`World`]: by default today's demo seeds, the example config, SQLite, the
/// default Lambda settings and no action hub.
pub struct WorldBuilder<'a> {
    date: NaiveDate,
    looker_seed: Option<LookerSeed>,
    d365_seed: Option<D365Seed>,
    config_toml: &'a str,
    adjust: Option<Adjust<'a>>,
    backend: Backend,
    webhook_secret: &'a str,
    #[cfg(feature = "aws")]
    settings: Settings,
    #[cfg(feature = "aws")]
    hub_token: Option<&'a str>,
}

impl<'a> WorldBuilder<'a> {
    /// The day the demo seeds are built for (unless a seed is given).
    pub fn date(mut self, date: NaiveDate) -> Self {
        self.date = date;
        self
    }

    pub fn looker_seed(mut self, seed: LookerSeed) -> Self {
        self.looker_seed = Some(seed);
        self
    }

    pub fn d365_seed(mut self, seed: D365Seed) -> Self {
        self.d365_seed = Some(seed);
        self
    }

    /// The instance config (TOML) instead of the example.
    pub fn config(mut self, toml: &'a str) -> Self {
        self.config_toml = toml;
        self
    }

    /// Changes the config after it is pointed at the simulators, before anything reads it.
    pub fn adjust(mut self, adjust: impl FnOnce(&mut InstanceConfig) + Send + 'a) -> Self {
        self.adjust = Some(Box::new(adjust));
        self
    }

    pub fn store(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The webhook path secret in the instance's secrets (default: random).
    pub fn webhook_secret(mut self, secret: &'a str) -> Self {
        self.webhook_secret = secret;
        self
    }

    #[cfg(feature = "aws")]
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Serves the Looker action hub for the instance, with hub token `token`.
    #[cfg(feature = "aws")]
    pub fn action_hub(mut self, token: &'a str) -> Self {
        self.hub_token = Some(token);
        self
    }

    pub async fn build(self) -> World {
        let looker_seed = self
            .looker_seed
            .unwrap_or_else(|| LookerSeed::demo(self.date));
        let d365_seed = self.d365_seed.unwrap_or_else(|| D365Seed::demo(self.date));
        let looker = LookerSim::start(looker_seed).await.expect("looker sim");
        let d365 = D365Sim::start(d365_seed).await.expect("d365 sim");
        let mut config = InstanceConfig::from_toml(self.config_toml).expect("instance config");
        config.looker.base_url = looker.base_url();
        config.d365.environment_url = d365.environment_url();
        config.d365.authority = d365.authority_url();
        config.d365.tenant_id = Some(SANDBOX_TENANT.into());
        if let Some(adjust) = self.adjust {
            adjust(&mut config);
        }
        // What `config push` stores: the adjusted config must survive the trip through TOML.
        let toml = toml::to_string(&config).expect("config to toml");
        assert_eq!(
            InstanceConfig::from_toml(&toml).expect("adjusted config is valid"),
            config,
            "the config survives the trip through TOML"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let store = self.backend.open(dir.path()).await;
        #[cfg(feature = "aws")]
        let (ctx, secrets) = {
            use ml_connector::store::ConfigStore as _;
            let configs = MemConfigs::default();
            configs
                .put_config(&config.instance, &config.version(), &toml)
                .await
                .expect("config into the in-memory source");
            let secrets = Arc::new(MemSecrets::with(
                &config.instance,
                sandbox_secrets(self.webhook_secret),
            ));
            let mut ctx = LambdaContext::new(
                store.clone(),
                Arc::new(configs),
                secrets.clone(),
                self.settings,
            );
            if let Some(token) = self.hub_token {
                use ml_connector::lambda::action_hub::{token::StaticHubToken, ActionHub};
                ctx = ctx.with_action_hub(ActionHub {
                    token: Arc::new(StaticHubToken(Secret::new(token))),
                    settings: ml_connector::lambda::action_hub::ActionHubSettings {
                        instances: vec![config.instance.clone()],
                        ..Default::default()
                    },
                });
            }
            (ctx, secrets)
        };
        World {
            looker,
            d365,
            config,
            creds: sandbox_creds(),
            store,
            backend: self.backend,
            #[cfg(feature = "aws")]
            ctx,
            #[cfg(feature = "aws")]
            secrets,
            dir,
        }
    }
}

impl World {
    pub fn builder<'a>() -> WorldBuilder<'a> {
        WorldBuilder {
            date: today(),
            looker_seed: None,
            d365_seed: None,
            config_toml: EXAMPLE,
            adjust: None,
            backend: Backend::Sqlite,
            webhook_secret: RANDOM_SECRET.get_or_init(|| format!("{:032x}", fastrand::u128(..))),
            #[cfg(feature = "aws")]
            settings: Settings::default(),
            #[cfg(feature = "aws")]
            hub_token: None,
        }
    }

    /// A world for the sample events in `events/`: their week's demo seeds and their path
    /// secret.
    pub fn sample_events<'a>() -> WorldBuilder<'a> {
        World::builder()
            .date(super::events::event_date())
            .webhook_secret(super::events::SECRET)
    }

    /// Today's demo seeds, the example config, SQLite.
    pub async fn start() -> World {
        World::builder().build().await
    }

    /// [`World::start`] with Looker seeded from `seed`.
    pub async fn start_with(seed: LookerSeed) -> World {
        World::builder().looker_seed(seed).build().await
    }

    /// Both simulators from the given seeds, and instance config `config_toml` pointed at them.
    pub async fn start_seeded(seed: LookerSeed, d365_seed: D365Seed, config_toml: &str) -> World {
        World::builder()
            .looker_seed(seed)
            .d365_seed(d365_seed)
            .config(config_toml)
            .build()
            .await
    }

    pub fn clients(&self) -> Clients {
        build_clients(&self.config, &self.creds).expect("clients")
    }

    pub fn options(&self, mode: Mode) -> RunOptions {
        RunOptions {
            run_date: today(),
            trigger: "test".into(),
            mode,
            lease: chrono::Duration::minutes(5),
            deadline: None,
            supersede: false,
        }
    }

    /// Runs the configured instance once with the real clients.
    pub async fn run(&self, mode: Mode) -> RunReport {
        let clients = self.clients();
        let engine = Engine {
            extractor: &clients.looker,
            ledger: &clients.d365,
            store: &self.store,
            progress: &NoProgress,
        };
        engine
            .run(&self.config, &self.options(mode))
            .await
            .expect("engine ran")
    }

    /// The period end (a Sunday) the example config covers today.
    pub fn period_end(&self) -> NaiveDate {
        self.config.period.kind.period_for(today()).end
    }

    /// Sets Looker's `finance/marketplace_fees` explore to fee rows `json` (the shape of
    /// [`fee_rows_json`]: a `row_id`, the example's dimensions and its measure).
    pub fn add_fee_explore(&self, json: &str) {
        self.looker.add_explore(
            "finance",
            "marketplace_fees",
            &[
                "marketplace_fees.row_id",
                "marketplace_fees.week_end_date",
                "marketplace_fees.channel",
                "marketplace_fees.cost_center",
                "marketplace_fees.fee_type",
            ],
            &["marketplace_fees.total_amount"],
            json,
        );
    }

    /// Nothing reached D365: no journal header, no line.
    pub fn assert_nothing_in_d365(&self) {
        assert!(self.d365.headers().is_empty(), "nothing may reach D365");
        assert!(self.d365.lines().is_empty(), "nothing may reach D365");
    }

    /// A world whose configured source is Look `look_id`: `rows` fee rows of this period's week
    /// (see [`fee_rows_json`]), sorted by a `row_id` column. Returns the rows' exact total.
    pub async fn with_fee_rows_look(rows: usize, look_id: &str, title: &str) -> (World, Decimal) {
        let mut w = World::start_with(LookerSeed::empty()).await;
        let week = w.period_end().to_string();
        let (json, total) = fee_rows_json(rows, &week);
        w.add_fee_explore(&json);
        let mut query: InlineQuery = w.config.source.query.clone().expect("example query");
        query.fields.insert(0, "marketplace_fees.row_id".into());
        query.sorts = vec!["marketplace_fees.row_id".into()];
        query
            .filters
            .insert("marketplace_fees.week_end_date".into(), week);
        w.looker.add_look(look_id, title, query);
        w.config.source.look_id = Some(look_id.into());
        w.config.source.query = None;
        (w, total)
    }
}

/// The default webhook path secret: random per test process.
static RANDOM_SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
