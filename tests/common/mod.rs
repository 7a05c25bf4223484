//! Shared set-up for pipeline tests: both simulators on loopback, the example config pointed at
//! them, real clients, and a throwaway SQLite audit store.
#![allow(dead_code)]

use chrono::NaiveDate;
use ml_connector::domain::config::{InlineQuery, InstanceConfig};
use ml_connector::engine::{Engine, Mode, NoProgress, RunOptions, RunReport};
use ml_connector::sandbox::d365::{
    D365Seed, D365Sim, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use ml_connector::sandbox::looker::{
    LookerSeed, LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};
use ml_connector::secrets::{Credentials, Secret};
use ml_connector::store::sqlite::SqliteStore;
use ml_connector::wiring::{build_clients, Clients};
use rust_decimal::Decimal;

pub const EXAMPLE: &str = include_str!("../../infra/config/weekly-marketplace-fees.toml");

pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

pub struct World {
    pub looker: LookerSim,
    pub d365: D365Sim,
    pub config: InstanceConfig,
    pub creds: Credentials,
    pub store: SqliteStore,
    pub dir: tempfile::TempDir,
}

pub fn sandbox_creds() -> Credentials {
    Credentials {
        looker_client_id: SANDBOX_LOOKER_CLIENT_ID.into(),
        looker_client_secret: Secret::new(SANDBOX_LOOKER_CLIENT_SECRET),
        d365_tenant_id: SANDBOX_TENANT.into(),
        d365_client_id: SANDBOX_CLIENT_ID.into(),
        d365_client_secret: Secret::new(SANDBOX_CLIENT_SECRET),
    }
}

impl World {
    pub async fn start() -> World {
        Self::start_with(LookerSeed::demo(today())).await
    }

    pub async fn start_with(seed: LookerSeed) -> World {
        Self::start_seeded(seed, D365Seed::demo(today()), EXAMPLE).await
    }

    /// Both simulators from the given seeds, and instance config `config_toml` pointed at them.
    pub async fn start_seeded(seed: LookerSeed, d365_seed: D365Seed, config_toml: &str) -> World {
        let looker = LookerSim::start(seed).await.expect("looker sim");
        let d365 = D365Sim::start(d365_seed).await.expect("d365 sim");
        let mut config = InstanceConfig::from_toml(config_toml).expect("instance config");
        config.looker.base_url = looker.base_url();
        config.d365.environment_url = d365.environment_url();
        config.d365.authority = d365.authority_url();
        config.d365.tenant_id = Some(SANDBOX_TENANT.into());
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("audit.sqlite")).expect("store");
        World {
            looker,
            d365,
            config,
            creds: sandbox_creds(),
            store,
            dir,
        }
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

    /// A world whose configured source is Look `look_id`: `rows` fee rows of this period's week
    /// (see [`fee_rows_json`]), sorted by a `row_id` column. Returns the rows' exact total.
    pub async fn with_fee_rows_look(rows: usize, look_id: &str, title: &str) -> (World, Decimal) {
        let mut w = World::start_with(LookerSeed::empty()).await;
        let week = w.period_end().to_string();
        let (json, total) = fee_rows_json(rows, &week);
        w.looker.add_explore(
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
            &json,
        );
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

/// `rows` Looker rows of the week ending `week` as a JSON array, and their exact total. Amounts
/// have two decimals, so every row maps to exactly one detail line (no rounding residue).
pub fn fee_rows_json(rows: usize, week: &str) -> (String, Decimal) {
    let channels = ["Amazon", "eBay", "Shopify"];
    let ccs = ["022", "031"];
    let fees = ["Marketplace fee", "Commission"];
    let mut total = Decimal::ZERO;
    let mut out = String::with_capacity(rows * 200 + 2);
    out.push('[');
    for i in 0..rows {
        let amount = format!("{}.{:02}", 10 + (i * 7919) % 5000, (i * 31) % 100);
        total += amount.parse::<Decimal>().expect("generated amount");
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"marketplace_fees.row_id":{i},"marketplace_fees.week_end_date":"{week}","marketplace_fees.channel":"{}","marketplace_fees.cost_center":"{}","marketplace_fees.fee_type":"{}","marketplace_fees.total_amount":{amount}}}"#,
            channels[i % 3],
            ccs[i % 2],
            fees[(i / 2) % 2]
        ));
    }
    out.push(']');
    (out, total)
}

/// An in-memory config store (what `ml-connector config push` fills in AWS), for Lambda contexts
/// built in tests.
#[derive(Default)]
pub struct MemConfigs(std::sync::Mutex<std::collections::HashMap<String, (String, String)>>);

#[async_trait::async_trait]
impl ml_connector::store::ConfigStore for MemConfigs {
    async fn put_config(
        &self,
        instance: &str,
        version: &str,
        toml: &str,
    ) -> Result<(), ml_connector::store::StoreError> {
        self.0
            .lock()
            .unwrap()
            .insert(instance.into(), (version.into(), toml.into()));
        Ok(())
    }
    async fn get_config(
        &self,
        instance: &str,
    ) -> Result<Option<(String, String)>, ml_connector::store::StoreError> {
        Ok(self.0.lock().unwrap().get(instance).cloned())
    }
}

/// An in-memory secret source (what Secrets Manager holds in AWS), for Lambda contexts built in
/// tests.
#[derive(Default)]
pub struct MemSecrets(
    pub std::sync::Mutex<std::collections::HashMap<String, ml_connector::secrets::InstanceSecrets>>,
);

impl MemSecrets {
    /// A source holding `secrets` for `instance` only.
    pub fn with(instance: &str, secrets: ml_connector::secrets::InstanceSecrets) -> Self {
        let s = Self::default();
        s.insert(instance, secrets);
        s
    }

    pub fn insert(&self, instance: &str, secrets: ml_connector::secrets::InstanceSecrets) {
        self.0.lock().unwrap().insert(instance.into(), secrets);
    }
}

#[async_trait::async_trait]
impl ml_connector::secrets::SecretSource for MemSecrets {
    async fn instance_secrets(
        &self,
        instance: &str,
    ) -> Result<ml_connector::secrets::InstanceSecrets, ml_connector::secrets::SecretsError> {
        self.0
            .lock()
            .unwrap()
            .get(instance)
            .cloned()
            .ok_or_else(|| ml_connector::secrets::SecretsError::NotFound {
                instance: instance.into(),
                detail: "not in the test source".into(),
            })
    }
}
