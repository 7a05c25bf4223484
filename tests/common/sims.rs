//! Clients of the simulators as the client tests set them up: the sandbox's credentials,
//! [`super::fast_retry`], and a generous timeout.

use std::time::Duration;

use ml_connector::d365::{D365Client, D365Settings};
use ml_connector::looker::LookerSettings;
use ml_connector::sandbox::d365::{
    D365Seed, D365Sim, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use ml_connector::sandbox::looker::{
    LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};
use ml_connector::secrets::Secret;

use super::{fast_retry, today};

/// The D365 simulator with today's demo seed.
pub async fn sim() -> D365Sim {
    D365Sim::start(D365Seed::demo(today()))
        .await
        .expect("d365 sim")
}

/// Settings for `sim` with the sandbox's credentials, a 10 s timeout and fast retries.
pub fn d365_settings(sim: &D365Sim) -> D365Settings {
    let mut s = D365Settings::new(
        &sim.environment_url(),
        &sim.authority_url(),
        SANDBOX_TENANT,
        SANDBOX_CLIENT_ID,
        Secret::new(SANDBOX_CLIENT_SECRET),
    )
    .expect("d365 settings");
    s.timeout = Duration::from_secs(10);
    s.retry = fast_retry();
    s
}

/// A client of `sim` with [`d365_settings`].
pub fn d365_client(sim: &D365Sim) -> D365Client {
    D365Client::new(d365_settings(sim)).expect("d365 client")
}

/// Settings for `sim` with the sandbox's credentials, fast retries and `timeout`.
pub fn looker_settings(sim: &LookerSim, timeout: Duration) -> LookerSettings {
    let mut s = LookerSettings::new(
        &sim.base_url(),
        SANDBOX_LOOKER_CLIENT_ID,
        Secret::new(SANDBOX_LOOKER_CLIENT_SECRET),
    )
    .expect("looker settings");
    s.retry = fast_retry();
    s.timeout = timeout;
    s
}
