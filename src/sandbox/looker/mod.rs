//! Looker API 4.0 simulator. Owned by the Looker work stream.
//!
//! A real HTTP server on `127.0.0.1:0` so the client is tested over real sockets: login with
//! the sandbox API key, token checks, 429s with `Retry-After`, row caps, `apply_formatting`,
//! 422 validation errors and exact decimal literals. Used by `ml-connector demo` and tests.
//!
//! - [`seed`]: initial data (empty, or the demo marketplace-fees model and Look 42).
//! - `model`: stored values and the query engine.
//! - `server`: routing, auth and quirks.

mod model;
pub mod seed;
mod server;

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::domain::config::InlineQuery;
pub use model::DEFAULT_ROW_CAP;
pub use seed::LookerSeed;
use seed::SeedLook;
use server::{lock, Shared, SimState};

/// The only API key the simulator accepts.
pub const SANDBOX_LOOKER_CLIENT_ID: &str = "sandbox-looker-client";
pub const SANDBOX_LOOKER_CLIENT_SECRET: &str = "sandbox-looker-secret";

/// One request the simulator received (in arrival order), for asserting what a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// Path as sent, e.g. `/api/4.0/queries/run/json`.
    pub path: String,
    /// Raw query string (empty if none).
    pub query: String,
    /// Scheme of the `Authorization` header (`token`, `Bearer`), if any.
    pub auth_scheme: Option<String>,
    /// The `x-looker-appid` header, if any.
    pub app_id: Option<String>,
    pub content_type: Option<String>,
    /// Request body as text (includes the login form: this is test equipment).
    pub body: String,
    /// Status the simulator answered.
    pub status: u16,
}

impl LoggedRequest {
    /// A decoded query-string parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// A decoded field of a form-encoded body (the login request).
    pub fn form_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Whether this is the login call.
    pub fn is_login(&self) -> bool {
        self.method == "POST" && self.path == "/api/4.0/login"
    }
}

/// A running simulator. The server task is aborted when the handle is dropped.
pub struct LookerSim {
    addr: std::net::SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

impl LookerSim {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    ///
    /// # Panics
    /// If the seed holds an explore whose `rows_json` is invalid (a bug in the test/demo).
    pub async fn start(seed: LookerSeed) -> std::io::Result<LookerSim> {
        let state: Shared = Arc::new(std::sync::Mutex::new(SimState {
            token_lifetime_secs: 3600,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(server::handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(target: "sandbox", "Looker simulator stopped: {e}");
            }
        });
        let sim = LookerSim { addr, state, task };
        for e in seed.explores {
            let dims: Vec<&str> = e.dimensions.iter().map(String::as_str).collect();
            let meas: Vec<&str> = e.measures.iter().map(String::as_str).collect();
            sim.add_explore(&e.model, &e.explore, &dims, &meas, &e.rows_json);
        }
        for l in seed.looks {
            sim.add_look(&l.id, &l.title, l.query);
        }
        Ok(sim)
    }

    /// `http://127.0.0.1:PORT` (the host root; clients append `/api/4.0`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds (or replaces) an explore. `rows_json` is a JSON array of objects keyed by field
    /// name; number literals are served back exactly as written.
    ///
    /// # Panics
    /// If `rows_json` is not such an array or names an undeclared field.
    pub fn add_explore(
        &self,
        model: &str,
        explore: &str,
        dimensions: &[&str],
        measures: &[&str],
        rows_json: &str,
    ) {
        let ex = model::SimExplore::new(dimensions, measures, rows_json)
            .unwrap_or_else(|e| panic!("LookerSim::add_explore({model}/{explore}): {e}"));
        lock(&self.state)
            .explores
            .insert((model.to_string(), explore.to_string()), ex);
    }

    /// Adds (or replaces) a saved Look running `query`.
    pub fn add_look(&self, id: &str, title: &str, query: InlineQuery) {
        lock(&self.state).looks.insert(
            id.to_string(),
            SeedLook {
                id: id.to_string(),
                title: title.to_string(),
                query,
            },
        );
    }

    /// The next `n` requests (login included) answer 429, with `Retry-After` if given.
    pub fn throttle_next(&self, n: usize, retry_after_secs: Option<u64>) {
        let mut st = lock(&self.state);
        st.throttle_remaining = n;
        st.throttle_retry_after = retry_after_secs;
    }

    /// Invalidates every token issued so far (as if Looker restarted or they timed out).
    pub fn expire_tokens(&self) {
        lock(&self.state).tokens.clear();
    }

    /// `expires_in` of tokens issued from now on (default 3600).
    pub fn set_token_lifetime(&self, secs: u64) {
        lock(&self.state).token_lifetime_secs = secs;
    }

    /// Every request received so far, oldest first.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        lock(&self.state).log.clone()
    }

    /// Forgets the request log (to assert on what a later step sends).
    pub fn clear_request_log(&self) {
        lock(&self.state).log.clear();
    }
}

impl Drop for LookerSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}
