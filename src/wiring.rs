//! Wiring: the concrete Looker and D365 clients an instance's config and credentials call for.
//! The CLI and the Lambdas both build their clients here, so neither depends on the other.

use std::time::Duration;

use crate::d365::{D365Client, D365Error, D365Settings};
use crate::domain::config::{ExtractMode, InstanceConfig};
use crate::looker::{ExtractPath, LookerClient, LookerError, LookerSettings};
use crate::secrets::Credentials;

/// Why the clients could not be built (a bad URL or setting in the config).
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Looker(#[from] LookerError),
    #[error(transparent)]
    D365(#[from] D365Error),
}

/// The two clients an instance needs.
#[derive(Clone)]
pub struct Clients {
    pub looker: LookerClient,
    pub d365: D365Client,
}

impl Clients {
    /// Views of both clients (sharing tokens, pools and limits) that start no wait ending after
    /// `deadline`: what one Lambda invocation uses, with its deadline minus a margin.
    pub fn with_deadline(&self, deadline: tokio::time::Instant) -> Clients {
        Clients {
            looker: self.looker.with_deadline(deadline.into_std()),
            d365: self.d365.with_deadline(deadline),
        }
    }
}

/// Builds both clients from a config and credentials.
pub fn build_clients(cfg: &InstanceConfig, creds: &Credentials) -> Result<Clients, WiringError> {
    let mut ls = LookerSettings::new(
        &cfg.looker.base_url,
        creds.looker_client_id.clone(),
        creds.looker_client_secret.clone(),
    )?;
    ls.max_rows = cfg.looker.max_rows;
    ls.timeout = Duration::from_secs(cfg.looker.timeout_secs.max(1));
    ls.max_requests_per_minute = cfg.looker.max_requests_per_minute;
    ls.retry.max_attempts = cfg.looker.max_retry_attempts.max(1);
    ls.retry.max_delay = Duration::from_secs(cfg.looker.max_retry_wait_secs.max(1));
    if cfg.looker.extract == ExtractMode::Async {
        ls.extract_path = ExtractPath::Async;
        ls.max_wait = Duration::from_secs(cfg.looker.async_max_wait_secs.max(1));
        ls.poll_interval = Duration::from_secs(cfg.looker.poll_interval_secs.max(1));
        ls.max_poll_interval = ls.poll_interval * 5;
    }
    let mut ds = D365Settings::new(
        &cfg.d365.environment_url,
        &cfg.d365.authority,
        creds.d365_tenant_id.clone(),
        creds.d365_client_id.clone(),
        creds.d365_client_secret.clone(),
    )?;
    ds.timeout = Duration::from_secs(cfg.d365.timeout_secs.max(1));
    ds.max_concurrent_requests = cfg.d365.max_concurrent_requests;
    ds.max_requests_per_window = cfg.d365.max_requests_per_window;
    ds.request_window = Duration::from_secs(cfg.d365.window_secs.max(1));
    ds.retry.max_attempts = cfg.d365.max_retry_attempts.max(1);
    ds.retry.max_delay = Duration::from_secs(cfg.d365.max_retry_wait_secs.max(1));
    Ok(Clients {
        looker: LookerClient::new(ls)?,
        d365: D365Client::new(ds)?,
    })
}
