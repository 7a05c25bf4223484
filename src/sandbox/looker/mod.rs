//! Looker API 4.0 simulator.
//!
//! A real HTTP server on `127.0.0.1:0` so the client is tested over real sockets: login with
//! the sandbox API key, token checks, 429s with `Retry-After`, row caps, `apply_formatting`,
//! 422 validation errors and exact decimal literals. Used by `ml-connector demo` and tests.
//!
//! Async queries: `POST /queries` (de-duplicated ids), `GET /queries/{id}` (and
//! `…/run/{fmt}`), `POST /query_tasks`, `GET /query_tasks/{id}`, `…/results` (202 until done),
//! `GET /query_tasks/multi_results`, `DELETE /running_queries/{id}`. Knobs: task latency in
//! polls, results lag, forced end status, throttled polls, per-request latency, a sync row cap.
//!
//! - [`seed`]: initial data (empty, or the demo marketplace-fees model and Look 42).
//! - `model`: stored values and the query engine.
//! - `server`: routing, auth and quirks.

pub mod action_client;
mod model;
pub mod seed;
mod server;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::domain::config::InlineQuery;
pub use model::DEFAULT_ROW_CAP;
pub use seed::LookerSeed;
use seed::SeedLook;
use server::{lock, Shared, SimQuery, SimState};

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
            if let Some(n) = e.generated_rows {
                sim.add_generated_explore(&e.model, &e.explore, n);
                continue;
            }
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

    /// Adds (or replaces) an explore of `n_rows` generated, distinct rows (fast: no JSON):
    /// dimensions `<explore>.row_id` (0..n), `.posting_date`, `.account`, `.cost_center` and
    /// measure `.amount` = [`seed::generated_amount`]`(row_id)`, exact with four decimals.
    /// [`seed::generated_query`] selects all of them.
    pub fn add_generated_explore(&self, model: &str, explore: &str, n_rows: usize) {
        let ex = seed::generated_explore(explore, n_rows);
        lock(&self.state)
            .explores
            .insert((model.to_string(), explore.to_string()), ex);
    }

    /// Adds (or replaces) a saved Look running `query`.
    pub fn add_look(&self, id: &str, title: &str, query: InlineQuery) {
        let mut st = lock(&self.state);
        let query_id = st.intern_query(SimQuery {
            model: query.model.clone(),
            view: query.explore.clone(),
            fields: query.fields.clone(),
            filters: query.filters.clone(),
            sorts: query.sorts.clone(),
            limit: None,
            query_timezone: query.query_timezone.clone(),
        });
        st.look_query_ids.insert(id.to_string(), query_id);
        st.looks.insert(
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

    /// Query tasks created from now on answer "not finished" (`added`, then `running`; 202
    /// from results) to this many polls of `GET /query_tasks/{id}` or `…/results` before they
    /// end (default 0: the first poll sees the end status). `usize::MAX` never finishes.
    pub fn set_task_latency(&self, polls: usize) {
        lock(&self.state).task_latency = polls;
    }

    /// Results requests of a finished task that still answer 202 (default 0), for tasks
    /// created from now on: the status says `complete` but the results are not ready yet.
    pub fn set_results_lag(&self, requests: usize) {
        lock(&self.state).results_lag = requests;
    }

    /// The next query task ends with `status` (`error`, `failure`, `expired`, …) instead of
    /// `complete`. `error`/`failure` results answer 400 with an SQL error; `expired` answers 404.
    pub fn fail_next_task(&self, status: &str) {
        lock(&self.state).fail_next_task = Some(status.to_string());
    }

    /// The next `n` status polls (`GET /query_tasks/{id}` of a known task) answer 429, with
    /// `Retry-After` if given.
    pub fn throttle_task_polls(&self, n: usize, retry_after_secs: Option<u64>) {
        let mut st = lock(&self.state);
        st.throttle_polls = n;
        st.throttle_polls_retry_after = retry_after_secs;
    }

    /// Every request (login included) waits this long before it is answered (default 0).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.state).latency = latency;
    }

    /// The synchronous run endpoints return at most this many rows whatever `limit` asks for
    /// (like Looker's 5,000-row cap on Looks and Explores); `None` (default) honours `limit`.
    /// Query tasks are not affected.
    pub fn set_sync_row_cap(&self, cap: Option<usize>) {
        lock(&self.state).sync_row_cap = cap;
    }

    /// Ids of the query tasks created so far (any order).
    pub fn task_ids(&self) -> Vec<String> {
        lock(&self.state).tasks.keys().cloned().collect()
    }

    /// Whether query task `id` was cancelled (`DELETE /running_queries/{id}`).
    pub fn task_cancelled(&self, id: &str) -> bool {
        lock(&self.state).tasks.get(id).is_some_and(|t| t.cancelled)
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
