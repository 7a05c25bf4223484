//! Shared set-up for pipeline tests: both simulators on loopback, the example config pointed at
//! them, real clients, and a throwaway SQLite audit store.
#![allow(dead_code)]

use chrono::NaiveDate;
use ml_connector::cli::{build_clients, Clients};
use ml_connector::domain::config::InstanceConfig;
use ml_connector::engine::{Engine, Mode, NoProgress, RunOptions, RunReport};
use ml_connector::sandbox::d365::{
    D365Seed, D365Sim, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use ml_connector::sandbox::looker::{
    LookerSeed, LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};
use ml_connector::secrets::{Credentials, Secret};
use ml_connector::store::sqlite::SqliteStore;

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
        let looker = LookerSim::start(seed).await.expect("looker sim");
        let d365 = D365Sim::start(D365Seed::demo(today()))
            .await
            .expect("d365 sim");
        let mut config = InstanceConfig::from_toml(EXAMPLE).expect("example config");
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
}
