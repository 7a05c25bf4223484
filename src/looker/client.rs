//! The Looker endpoints the connector uses, with auth, retries and error mapping in one place.
//!
//! Every call here is a read (running a query reads data), so [`send_with_retry`] may repeat it
//! on 429 (honouring `Retry-After`), 5xx and transport errors. A 401 means the token went stale
//! (expired early, logged out, instance restarted): log in again once and repeat once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, LOCATION};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Deserializer};
use url::Url;

use super::auth::{refused_after_relogin, TokenCache, LOOKER_APP_ID};
use super::error::LookerError;
use super::rate::RateLimiter;
use super::results::{
    describe_json_error, parse_json_detail, parse_json_rows_streaming, read_json_rows, ParsedRows,
};
use super::settings::{ExtractPath, LookerSettings};
use crate::domain::config::InlineQuery;
use crate::domain::source::{Extract, SourceRef, SourceRow};
use crate::http::{send_with_retry_paced, Idempotency};

/// A saved Look and the query behind it (`GET /looks/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LookInfo {
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub title: String,
    /// The id of the Look's query (also in `query.id`).
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub query_id: Option<String>,
    pub query: LookQuery,
}

/// The query of a Look. `view` is Looker's name for the explore.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LookQuery {
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub id: Option<String>,
    pub model: String,
    pub view: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub fields: Vec<String>,
    #[serde(default, deserialize_with = "filters_map")]
    pub filters: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub sorts: Vec<String>,
    #[serde(default)]
    pub query_timezone: Option<String>,
}

impl LookInfo {
    /// The Look's query as an inline query (e.g. to let a config pin a Look's definition).
    pub fn to_inline_query(&self) -> InlineQuery {
        InlineQuery {
            model: self.query.model.clone(),
            explore: self.query.view.clone(),
            fields: self.query.fields.clone(),
            filters: self.query.filters.clone(),
            sorts: self.query.sorts.clone(),
            query_timezone: self.query.query_timezone.clone(),
        }
    }
}

/// One field of an explore (`GET /lookml_models/{m}/explores/{e}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExploreField {
    pub name: String,
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub field_type: String,
}

/// The dimensions and measures an explore offers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ExploreInfo {
    #[serde(default, deserialize_with = "null_as_default")]
    pub dimensions: Vec<ExploreField>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub measures: Vec<ExploreField>,
}

#[derive(Deserialize)]
struct ExploreBody {
    #[serde(default)]
    fields: Option<ExploreInfo>,
}

/// Looker API 4.0 client. Cheap to clone; clones share the HTTP pool and the cached token.
#[derive(Clone)]
pub struct LookerClient {
    inner: Arc<Inner>,
    /// Per-run deadline for the async path (see [`LookerClient::with_deadline`]).
    deadline: Option<Instant>,
}

struct Inner {
    settings: LookerSettings,
    http: reqwest::Client,
    tokens: TokenCache,
    /// [`LookerSettings::max_requests_per_minute`], shared by every call (and clone).
    limiter: RateLimiter,
}

impl std::fmt::Debug for LookerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LookerClient")
            .field("base_url", &self.inner.settings.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl LookerClient {
    pub fn new(settings: LookerSettings) -> Result<Self, LookerError> {
        settings.validate()?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(15)))
            // A redirect means the URL is not the API host (SSO page, http→https, old port);
            // say so instead of following it with credentials.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ml-connector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LookerError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                tokens: TokenCache::default(),
                limiter: RateLimiter::per_minute(settings.max_requests_per_minute),
                settings,
            }),
            deadline: None,
        })
    }

    pub fn settings(&self) -> &LookerSettings {
        &self.inner.settings
    }

    /// A clone (same HTTP pool, token and rate limit) that starts no wait ending after
    /// `deadline` (retries, `Retry-After`, the rate limit: [`LookerError::OutOfTime`]) and
    /// whose async extracts must finish by it (e.g. a Lambda's deadline minus a margin). The earliest of this,
    /// [`LookerSettings::poll_deadline`] and `max_wait` from the start of the run applies.
    pub fn with_deadline(&self, deadline: Instant) -> Self {
        Self {
            inner: self.inner.clone(),
            deadline: Some(self.deadline.map_or(deadline, |d| d.min(deadline))),
        }
    }

    /// When an async extract starting at `started` must be finished.
    fn deadline_from(&self, started: Instant) -> Instant {
        let s = self.settings();
        let by_wait = started
            .checked_add(s.max_wait)
            .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600));
        [s.poll_deadline, self.deadline]
            .into_iter()
            .flatten()
            .fold(by_wait, Instant::min)
    }

    /// Logs in now (discarding any cached token): proves URL and credentials work.
    pub async fn login_check(&self) -> Result<(), LookerError> {
        self.inner.tokens.clear().await;
        self.inner
            .tokens
            .get(
                &self.inner.http,
                &self.inner.settings,
                &self.inner.limiter,
                self.deadline.map(tokio::time::Instant::from_std),
            )
            .await
            .map(|_| ())
    }

    /// Runs a saved Look (`GET /looks/{id}/run/json`) and returns every row, or an error.
    ///
    /// The Look is fetched first so the extract's columns are the Look's fields even when the
    /// result is empty, and so a missing Look gets a clear message.
    ///
    /// With [`ExtractPath::Async`] the Look's query runs as a query task instead (see
    /// [`LookerClient::run_query_task`]).
    pub async fn run_look(&self, look_id: &str) -> Result<Extract, LookerError> {
        let look_id = check_id("Look id", look_id)?;
        if self.settings().extract_path == ExtractPath::Async {
            let started = Instant::now();
            let mut task = TaskTrack::default();
            let outcome = tokio::time::timeout_at(
                self.deadline_from(started).into(),
                self.look_via_task(look_id, &mut task),
            )
            .await;
            return self.settle_task(outcome, task, started).await;
        }
        let info = self.look(look_id).await?;
        let mut url = self.settings().api_url(&["looks", look_id, "run", "json"]);
        self.add_run_params(&mut url);
        let body = self
            .call_rows(Method::GET, url, None, &format!("Look {look_id}"))
            .await?;
        let (seen, rows) = self.complete_rows(body)?;
        Ok(Extract {
            source: SourceRef::Look {
                look_id: look_id.to_string(),
            },
            columns: merge_columns(info.query.fields, seen),
            rows,
        })
    }

    /// Runs an inline query (`POST /queries/run/json`) and returns every row, or an error.
    ///
    /// With [`ExtractPath::Async`] the query is created (`POST /queries`, which gives its
    /// de-duplicated id, recorded in the extract's source) and run as a query task.
    pub async fn run_inline_query(&self, q: &InlineQuery) -> Result<Extract, LookerError> {
        check_query(q)?;
        if self.settings().extract_path == ExtractPath::Async {
            let started = Instant::now();
            let mut task = TaskTrack::default();
            let outcome = tokio::time::timeout_at(
                self.deadline_from(started).into(),
                self.query_via_task(q, &mut task),
            )
            .await;
            return self.settle_task(outcome, task, started).await;
        }
        let body = query_body(q, self.settings().requested_limit().to_string());
        let mut url = self.settings().api_url(&["queries", "run", "json"]);
        self.add_run_params(&mut url);
        let what = format!("Model `{}` or explore `{}`", q.model, q.explore);
        let result = self
            .call_rows(Method::POST, url, Some(&body), &what)
            .await?;
        let (seen, rows) = self.complete_rows(result)?;
        let definition =
            serde_json::to_string(q).map_err(|e| LookerError::Config(e.to_string()))?;
        Ok(Extract {
            source: SourceRef::Query {
                model: q.model.clone(),
                explore: q.explore.clone(),
                query_id: None,
                definition,
            },
            columns: merge_columns(q.fields.clone(), seen),
            rows,
        })
    }

    /// A Look's title and query (`GET /looks/{id}`).
    pub async fn look(&self, look_id: &str) -> Result<LookInfo, LookerError> {
        let look_id = check_id("Look id", look_id)?;
        let url = self.settings().api_url(&["looks", look_id]);
        let body = self
            .call(Method::GET, url, None, &format!("Look {look_id}"))
            .await?;
        parse_body(&body, "Look")
    }

    /// Dimensions and measures (with types) of an explore.
    pub async fn explore(&self, model: &str, explore: &str) -> Result<ExploreInfo, LookerError> {
        let model = check_id("model name", model)?;
        let explore = check_id("explore name", explore)?;
        let mut url = self
            .settings()
            .api_url(&["lookml_models", model, "explores", explore]);
        // Explore metadata can be megabytes; ask only for what is used.
        url.query_pairs_mut().append_pair(
            "fields",
            "fields(dimensions(name,type),measures(name,type))",
        );
        let what = format!("Explore `{explore}` of model `{model}`");
        let body = self.call(Method::GET, url, None, &what).await?;
        let parsed: ExploreBody = parse_body(&body, "explore")?;
        Ok(parsed.fields.unwrap_or_default())
    }

    /// Names of an explore's dimensions, then its measures.
    pub async fn explore_fields(
        &self,
        model: &str,
        explore: &str,
    ) -> Result<Vec<String>, LookerError> {
        let info = self.explore(model, explore).await?;
        Ok(info
            .dimensions
            .into_iter()
            .chain(info.measures)
            .map(|f| f.name)
            .collect())
    }

    /// Creates (or finds: queries are de-duplicated) the query `q` (`POST /queries`) and
    /// returns its id. `limit` is the query's own limit (a string, `-1` = unlimited).
    pub async fn create_query(&self, q: &InlineQuery, limit: &str) -> Result<String, LookerError> {
        check_query(q)?;
        let body = query_body(q, limit.to_string());
        let mut url = self.settings().api_url(&["queries"]);
        url.query_pairs_mut().append_pair("fields", "id");
        let what = format!("Model `{}` or explore `{}`", q.model, q.explore);
        let bytes = self.call(Method::POST, url, Some(&body), &what).await?;
        let created: CreatedQuery = parse_body(&bytes, "created query")?;
        created.id.ok_or_else(|| LookerError::Parse {
            what: "created query".into(),
            message: "Looker answered without a query id".into(),
        })
    }

    /// Runs the saved query `query_id` as an asynchronous query task and returns the columns
    /// Looker sent and every row — never a partial result. Polls with backoff (honouring 429
    /// `Retry-After`), up to the deadline (see [`LookerSettings::max_wait`]); on the deadline
    /// the task is cancelled (`DELETE /running_queries/{id}`) and
    /// [`LookerError::DeadlineExceeded`] is returned.
    pub async fn run_query_task(
        &self,
        query_id: &str,
    ) -> Result<(Vec<String>, Vec<SourceRow>), LookerError> {
        let query_id = check_id("query id", query_id)?;
        let started = Instant::now();
        let mut task = TaskTrack::default();
        let outcome = tokio::time::timeout_at(
            self.deadline_from(started).into(),
            self.task_rows(query_id, None, &mut task),
        )
        .await;
        self.settle_task(outcome, task, started).await
    }

    async fn look_via_task(
        &self,
        look_id: &str,
        task: &mut TaskTrack,
    ) -> Result<Extract, LookerError> {
        let info = self.look(look_id).await?;
        let query_id = info
            .query_id
            .clone()
            .or_else(|| info.query.id.clone())
            .ok_or_else(|| LookerError::Parse {
                what: "Look".into(),
                message: format!(
                    "Look {look_id} has no query id, so it cannot run as a query task"
                ),
            })?;
        let (seen, rows) = self.task_rows(&query_id, Some(look_id), task).await?;
        Ok(Extract {
            source: SourceRef::Look {
                look_id: look_id.to_string(),
            },
            columns: merge_columns(info.query.fields, seen),
            rows,
        })
    }

    async fn query_via_task(
        &self,
        q: &InlineQuery,
        task: &mut TaskTrack,
    ) -> Result<Extract, LookerError> {
        let query_id = self.create_query(q, &self.settings().task_limit()).await?;
        let (seen, rows) = self.task_rows(&query_id, None, task).await?;
        let definition =
            serde_json::to_string(q).map_err(|e| LookerError::Config(e.to_string()))?;
        Ok(Extract {
            source: SourceRef::Query {
                model: q.model.clone(),
                explore: q.explore.clone(),
                query_id: Some(query_id),
                definition,
            },
            columns: merge_columns(q.fields.clone(), seen),
            rows,
        })
    }

    /// Starts a task for `query_id`, polls it to completion and reads its rows. `task` is
    /// kept up to date so the caller can cancel it when this future is dropped or fails.
    async fn task_rows(
        &self,
        query_id: &str,
        look_id: Option<&str>,
        task: &mut TaskTrack,
    ) -> Result<(Vec<String>, Vec<SourceRow>), LookerError> {
        let s = self.settings();
        let mut url = s.api_url(&["query_tasks"]);
        url.query_pairs_mut()
            .append_pair("limit", &s.task_limit())
            .append_pair("apply_formatting", "false")
            .append_pair("apply_vis", "false");
        let mut body = serde_json::json!({"query_id": query_id, "result_format": "json"});
        if let (Some(look), Some(obj)) = (look_id, body.as_object_mut()) {
            obj.insert("look_id".into(), look.into());
        }
        let what = format!("Query {query_id}");
        let bytes = self.call(Method::POST, url, Some(&body), &what).await?;
        let created: QueryTaskBody = parse_body(&bytes, "query task")?;
        let id = created.id.ok_or_else(|| LookerError::Parse {
            what: "query task".into(),
            message: "Looker answered without a query task id".into(),
        })?;
        check_id("query task id", &id)?;
        task.id = Some(id.clone());
        tracing::info!(target: "looker", "query task {id} started for query {query_id}");
        let mut status = created.status.unwrap_or_default();
        let mut interval = s.poll_interval;
        let mut polls = 0u32;
        loop {
            match TaskState::of(&status) {
                TaskState::Pending => {}
                TaskState::Complete => {
                    if let Some(body) = self.task_results(&id).await? {
                        task.finished = true;
                        let (seen, rows) = body.into_rows()?;
                        tracing::info!(target: "looker", "query task {id}: {} rows of results after {polls} polls", rows.len());
                        check_task_complete(s, rows.len())?;
                        return Ok((seen, rows));
                    }
                }
                TaskState::Ended => {
                    task.finished = true;
                    return Err(self.task_ended(&id, &status).await);
                }
            }
            tokio::time::sleep(interval).await;
            interval = interval.mul_f64(1.5).min(s.max_poll_interval);
            polls += 1;
            let url = s.api_url(&["query_tasks", &id]);
            match self
                .call(Method::GET, url, None, &format!("Query task {id}"))
                .await
            {
                Ok(bytes) => {
                    let polled: QueryTaskBody = parse_body(&bytes, "query task status")?;
                    status = polled.status.unwrap_or_default();
                }
                // The task keeps running while Looker throttles us; try again after the next
                // interval (the deadline bounds this).
                Err(LookerError::Throttled { .. }) => {
                    tracing::warn!(target: "looker", "query task {id}: status poll throttled, polling again later");
                    status = String::new();
                }
                Err(LookerError::NotFound(_)) => {
                    task.finished = true;
                    return Err(LookerError::TaskEnded {
                        task_id: id.clone(),
                        status: "missing".into(),
                        detail: "Looker no longer knows the task (GET /query_tasks answered 404); run again".into(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `GET /query_tasks/{id}/results`: `Some(body)` when ready, `None` on 202 (not yet).
    async fn task_results(&self, id: &str) -> Result<Option<Body>, LookerError> {
        let url = self.settings().api_url(&["query_tasks", id, "results"]);
        match self
            .call_body(Method::GET, url, None, &format!("Query task {id}"), true)
            .await
        {
            Ok((StatusCode::ACCEPTED, _)) => Ok(None),
            // Still throttled after the retry policy: the results stay; poll again later.
            Err(LookerError::Throttled { .. }) => {
                tracing::warn!(target: "looker", "query task {id}: results request throttled, trying again later");
                Ok(None)
            }
            Ok((_, body)) => Ok(Some(body)),
            Err(LookerError::NotFound(_)) => Err(LookerError::TaskEnded {
                task_id: id.to_string(),
                status: "expired".into(),
                detail: format!("its results are no longer available (GET /query_tasks/{id}/results answered 404: unknown or expired); run again"),
            }),
            Err(LookerError::Invalid(m)) => Err(LookerError::QueryFailed(format!(
                "query task {id}: {m}"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The error for a task that ended in `status`, with Looker's own message when the
    /// results endpoint gives one (it answers 400 with the SQL error for `json`).
    async fn task_ended(&self, id: &str, status: &str) -> LookerError {
        let detail = match status {
            "error" | "failure" => {
                let url = self.settings().api_url(&["query_tasks", id, "results"]);
                match self
                    .call_status(Method::GET, url, None, &format!("Query task {id}"))
                    .await
                {
                    Err(LookerError::Invalid(m)) => format!("the query failed: {m}"),
                    Ok((StatusCode::OK, body)) => match parse_json_rows_streaming(&body) {
                        Err(LookerError::QueryFailed(m)) => format!("the query failed: {m}"),
                        _ => match parse_json_detail(&body) {
                            Err(LookerError::QueryFailed(m)) => format!("the query failed: {m}"),
                            _ => "the query failed; Looker gave no further detail".into(),
                        },
                    },
                    _ => "the query failed; Looker gave no further detail".into(),
                }
            }
            "expired" => "its results expired before they were read; run again".into(),
            "killed" => "it was cancelled in Looker before it finished".into(),
            other => format!("Looker reported `{other}`"),
        };
        LookerError::TaskEnded {
            task_id: id.to_string(),
            status: status.to_string(),
            detail,
        }
    }

    /// Best-effort `DELETE /running_queries/{id}`; returns what happened, for the error.
    async fn cancel_task(&self, id: &str) -> String {
        let url = self.settings().api_url(&["running_queries", id]);
        let wait = self.settings().timeout.min(Duration::from_secs(10));
        let what = format!("Running query {id}");
        let call = self.call(Method::DELETE, url, None, &what);
        match tokio::time::timeout(wait, call).await {
            Ok(Ok(_)) => {
                tracing::info!(target: "looker", "query task {id} cancelled");
                format!("query task {id} was cancelled (DELETE /running_queries/{id})")
            }
            Ok(Err(LookerError::NotFound(_))) => format!(
                "query task {id} was no longer running when cancelled (DELETE /running_queries/{id} answered 404)"
            ),
            Ok(Err(e)) => format!(
                "cancelling query task {id} (DELETE /running_queries/{id}) failed: {e}; Looker will drop it on its own"
            ),
            Err(_) => format!(
                "cancelling query task {id} (DELETE /running_queries/{id}) timed out; Looker will drop it on its own"
            ),
        }
    }

    /// Turns the outcome of a deadline-bounded async run into the result, cancelling a task
    /// that was started but did not finish.
    async fn settle_task<T>(
        &self,
        outcome: Result<Result<T, LookerError>, tokio::time::error::Elapsed>,
        task: TaskTrack,
        started: Instant,
    ) -> Result<T, LookerError> {
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if let (Some(id), false) = (&task.id, task.finished) {
                    let how = self.cancel_task(id).await;
                    tracing::warn!(target: "looker", "query task {id} abandoned after an error: {how}");
                }
                Err(e)
            }
            Err(_) => {
                let waited_secs = started.elapsed().as_secs();
                let detail = match (&task.id, task.finished) {
                    (Some(id), false) => self.cancel_task(id).await,
                    (Some(id), true) => format!(
                        "query task {id} had finished but its results were not read and checked in time"
                    ),
                    (None, _) => "no query task had been started yet".into(),
                };
                Err(LookerError::DeadlineExceeded {
                    waited_secs,
                    task_id: task.id,
                    detail,
                })
            }
        }
    }

    /// Raw results as numbers, not formatted strings, and without visualization settings.
    fn add_run_params(&self, url: &mut Url) {
        url.query_pairs_mut()
            .append_pair("apply_formatting", "false")
            .append_pair("apply_vis", "false")
            .append_pair("limit", &self.settings().requested_limit().to_string());
    }

    /// Parses a `json` result and refuses it unless it is provably complete. (Conversion runs
    /// first so a `looker_error` result is reported as the query failure it is.)
    fn complete_rows(&self, body: Body) -> Result<(Vec<String>, Vec<SourceRow>), LookerError> {
        let (cols, rows) = body.into_rows()?;
        check_complete(self.settings(), rows.len())?;
        Ok((cols, rows))
    }

    /// Sends one API call with the cached token; on 401 logs in again once and repeats once.
    /// `what` names the resource for a 404 ("Look 42").
    async fn call(
        &self,
        method: Method,
        url: Url,
        json: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<Vec<u8>, LookerError> {
        self.call_status(method, url, json, what)
            .await
            .map(|(_, body)| body)
    }

    /// [`Self::call`], also returning the (2xx) status, e.g. to tell 202 from 200.
    async fn call_status(
        &self,
        method: Method,
        url: Url,
        json: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<(StatusCode, Vec<u8>), LookerError> {
        match self.call_body(method, url, json, what, false).await? {
            (status, Body::Bytes(bytes)) => Ok((status, bytes)),
            // Not asked for: `rows` is false.
            (status, Body::Rows(_)) => Ok((status, Vec::new())),
        }
    }

    /// A call whose 200 answer is a `json` result: its rows, parsed while the body arrives.
    async fn call_rows(
        &self,
        method: Method,
        url: Url,
        json: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<Body, LookerError> {
        self.call_body(method, url, json, what, true)
            .await
            .map(|(_, body)| body)
    }

    /// [`Self::call_status`]; with `rows`, a 200 body is streamed into the row parser
    /// ([`read_json_rows`]) instead of being read whole.
    async fn call_body(
        &self,
        method: Method,
        url: Url,
        json: Option<&serde_json::Value>,
        what: &str,
        rows: bool,
    ) -> Result<(StatusCode, Body), LookerError> {
        let inner = &*self.inner;
        let label = format!("{method} {}", url.path());
        let mut relogged = false;
        // Every wait of this call (backoff, Retry-After) ends before the run's deadline.
        let deadline = self.deadline.map(tokio::time::Instant::from_std);
        let retry = match deadline {
            Some(d) => inner.settings.retry.with_deadline(d),
            None => inner.settings.retry.clone(),
        };
        loop {
            let token = inner
                .tokens
                .get(&inner.http, &inner.settings, &inner.limiter, deadline)
                .await?;
            let mut auth =
                HeaderValue::from_str(&token.header()).map_err(|_| LookerError::Parse {
                    what: "login response".into(),
                    message: "the access token contains characters not allowed in a header".into(),
                })?;
            auth.set_sensitive(true);
            inner
                .limiter
                .acquire_until(deadline)
                .await
                .map_err(|e| LookerError::OutOfTime {
                    what: label.clone(),
                    detail: e.to_string(),
                })?;
            let resp = send_with_retry_paced(
                || {
                    let rb = inner
                        .http
                        .request(method.clone(), url.clone())
                        .header(AUTHORIZATION, auth.clone())
                        .header("x-looker-appid", LOOKER_APP_ID)
                        .header(ACCEPT, "application/json");
                    match json {
                        Some(b) => rb.json(b),
                        None => rb,
                    }
                },
                &retry,
                Idempotency::Safe,
                |msg| tracing::warn!(target: "looker", "{label}: {msg}"),
                // Retries count against the rate limit too, not only the first attempt.
                || async {
                    inner
                        .limiter
                        .acquire_until(deadline)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.wait)
                },
            )
            .await
            .map_err(|e| LookerError::transport(&label, e))?;
            let status = resp.status();
            if let Some(mark) = crate::http::out_of_time(&resp) {
                return Err(LookerError::OutOfTime {
                    what: label,
                    detail: format!("HTTP {} and {mark}", status.as_u16()),
                });
            }
            if status == StatusCode::UNAUTHORIZED && !relogged {
                tracing::info!(target: "looker", "{label}: token refused (401), logging in again");
                inner.tokens.invalidate(&token).await;
                relogged = true;
                continue;
            }
            let location = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if rows && status == StatusCode::OK {
                let parsed = read_json_rows(resp, &label).await?;
                tracing::debug!(target: "looker", "{label}: {status}, rows read while streaming");
                return Ok((status, Body::Rows(parsed)));
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| LookerError::transport(&label, e))?;
            if status.is_success() {
                tracing::debug!(target: "looker", "{label}: {status} {} bytes", body.len());
                return Ok((status, Body::Bytes(body.into())));
            }
            return Err(classify(
                status,
                &body,
                what,
                &label,
                location,
                &inner.settings,
            ));
        }
    }
}

/// A successful answer: the bytes, or (for a `json` result read while streaming) its rows.
enum Body {
    Bytes(Vec<u8>),
    Rows(ParsedRows),
}

impl Body {
    /// The result's columns and rows, parsing the bytes when the body was not streamed.
    fn into_rows(self) -> ParsedRows {
        match self {
            Body::Bytes(bytes) => parse_json_rows_streaming(&bytes),
            Body::Rows(parsed) => parsed,
        }
    }
}

/// Looker's `Error` / `ValidationError` bodies.
#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    errors: Option<Vec<ApiErrorDetail>>,
}

#[derive(Deserialize)]
struct ApiErrorDetail {
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// A readable summary of an error body: Looker's message plus every validation detail.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => {
            let mut out = e.message.unwrap_or_default();
            let details: Vec<String> = e
                .errors
                .unwrap_or_default()
                .into_iter()
                .map(|d| {
                    let mut s = String::new();
                    if let Some(f) = d.field.filter(|f| !f.is_empty()) {
                        s.push_str(&format!("field `{f}`: "));
                    }
                    s.push_str(d.message.as_deref().unwrap_or("invalid"));
                    if let Some(c) = d.code.filter(|c| !c.is_empty()) {
                        s.push_str(&format!(" ({c})"));
                    }
                    s
                })
                .collect();
            if !details.is_empty() {
                if !out.is_empty() {
                    out.push_str(": ");
                }
                out.push_str(&details.join("; "));
            }
            if out.is_empty() {
                "no message".into()
            } else {
                out
            }
        }
        Err(_) => {
            let text =
                String::from_utf8_lossy(&body[..body.len().min(200)]).replace(['\n', '\r'], " ");
            if text.trim().is_empty() {
                "empty response body".into()
            } else {
                format!("unexpected response `{}`", text.trim())
            }
        }
    }
}

fn classify(
    status: StatusCode,
    body: &[u8],
    what: &str,
    label: &str,
    location: Option<String>,
    settings: &LookerSettings,
) -> LookerError {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => refused_after_relogin(status, what),
        StatusCode::NOT_FOUND => LookerError::NotFound(format!(
            "{what} not found or not visible to the API user ({label})"
        )),
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
            LookerError::Invalid(format!("{} ({label})", error_message(body)))
        }
        StatusCode::TOO_MANY_REQUESTS => LookerError::Throttled {
            path: label.to_string(),
            attempts: settings.retry.max_attempts,
        },
        s if s.is_redirection() => LookerError::Status {
            status: s.as_u16(),
            message: format!(
                "{label} was redirected to `{}`; the configured base URL is probably not the Looker API host (check Admin > Platform > API for the API Host URL)",
                location
                    .as_deref()
                    .map(|l| crate::http::redact_url(strip_query(l)))
                    .unwrap_or_default()
            ),
        },
        s => LookerError::Status {
            status: s.as_u16(),
            message: format!("{label}: {}", error_message(body)),
        },
    }
}

fn strip_query(u: &str) -> &str {
    u.split(['?', '#']).next().unwrap_or(u)
}

/// Refuses results that may have been cut off: more than `max_rows`, or exactly the server's
/// silent cap when we asked for more.
pub(crate) fn check_complete(
    settings: &LookerSettings,
    received: usize,
) -> Result<(), LookerError> {
    let max_rows = settings.max_rows;
    let requested_limit = settings.requested_limit();
    let cap = settings.server_row_cap;
    let detail = if received > max_rows {
        format!("Looker returned more than max_rows = {max_rows} rows (asked for {requested_limit} to detect this, got {received})")
    } else if cap > 0 && received == cap && requested_limit > cap {
        format!("Looker returned exactly {cap} rows, its row cap, although up to {requested_limit} were asked for, so the result was probably cut off")
    } else {
        return Ok(());
    };
    Err(LookerError::Truncated {
        max_rows,
        requested_limit,
        received,
        detail,
    })
}

/// The async path's completeness rule: more than `max_rows` is refused (unless unlimited).
/// Looker's silent 5,000-row cap does not apply to query tasks run with an explicit limit, so
/// `server_row_cap` is not used here.
pub(crate) fn check_task_complete(
    settings: &LookerSettings,
    received: usize,
) -> Result<(), LookerError> {
    match settings.row_limit() {
        Some(max_rows) if received > max_rows => Err(LookerError::Truncated {
            max_rows,
            requested_limit: settings.requested_limit(),
            received,
            detail: format!(
                "the Looker query task returned more than max_rows = {max_rows} rows (asked for {} to detect this, got {received})",
                settings.requested_limit()
            ),
        }),
        _ => Ok(()),
    }
}

/// Where an async run stands, so an abandoned task can be cancelled.
#[derive(Debug, Default)]
struct TaskTrack {
    id: Option<String>,
    /// Looker is done with it (results read, or it ended): nothing to cancel.
    finished: bool,
}

/// How to treat a query task `status` (a free-form string in the spec).
enum TaskState {
    Pending,
    Complete,
    Ended,
}

impl TaskState {
    fn of(status: &str) -> Self {
        match status {
            "complete" => TaskState::Complete,
            "error" | "failure" | "expired" | "killed" | "missing" => TaskState::Ended,
            // `added`, `running`, and anything unknown: keep polling (the deadline bounds it).
            _ => TaskState::Pending,
        }
    }
}

/// `POST /queries` answer (only the id is asked for).
#[derive(Deserialize)]
struct CreatedQuery {
    #[serde(default, deserialize_with = "opt_string_or_number")]
    id: Option<String>,
}

/// `QueryTask` (only what is read).
#[derive(Deserialize)]
struct QueryTaskBody {
    #[serde(default, deserialize_with = "opt_string_or_number")]
    id: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// The writable `Query` body for `q` (`limit` is a string in the API).
fn query_body(q: &InlineQuery, limit: String) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": q.model,
        "view": q.explore,
        "fields": q.fields,
        "filters": q.filters,
        "sorts": q.sorts,
        "limit": limit,
    });
    if let (Some(tz), Some(obj)) = (&q.query_timezone, body.as_object_mut()) {
        obj.insert("query_timezone".into(), tz.clone().into());
    }
    body
}

/// The declared fields first, then any field Looker returned that was not declared.
fn merge_columns(mut declared: Vec<String>, seen: Vec<String>) -> Vec<String> {
    for c in seen {
        if !declared.contains(&c) {
            declared.push(c);
        }
    }
    declared
}

fn check_id<'a>(what: &str, id: &'a str) -> Result<&'a str, LookerError> {
    let id = id.trim();
    if id.is_empty() || id.chars().any(char::is_control) {
        return Err(LookerError::Config(format!(
            "the {what} `{id}` is empty or invalid"
        )));
    }
    Ok(id)
}

fn check_query(q: &InlineQuery) -> Result<(), LookerError> {
    check_id("model name", &q.model)?;
    check_id("explore name", &q.explore)?;
    if q.fields.is_empty() {
        return Err(LookerError::Config(format!(
            "the query on {}/{} selects no fields",
            q.model, q.explore
        )));
    }
    if let Some(f) = q.fields.iter().find(|f| f.trim().is_empty()) {
        return Err(LookerError::Config(format!(
            "the query on {}/{} has an empty field name `{f}`",
            q.model, q.explore
        )));
    }
    Ok(())
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T, LookerError> {
    serde_json::from_slice(body).map_err(|e| LookerError::Parse {
        what: what.to_string(),
        message: describe_json_error(body, &e),
    })
}

/// Looker API 4.0 ids are strings but older instances and webhooks send numbers.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    opt_string_or_number(d)?.ok_or_else(|| serde::de::Error::custom("id is null"))
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a string or number id, found {other}"
        ))),
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Filter values are strings; a null value means "no filter" and is dropped.
fn filters_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m = Option::<BTreeMap<String, Option<String>>>::deserialize(d)?.unwrap_or_default();
    Ok(m.into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;

    fn settings(max_rows: usize, cap: usize) -> LookerSettings {
        let mut s = LookerSettings::new("https://x.looker.com", "id", Secret::new("s")).unwrap();
        s.max_rows = max_rows;
        s.server_row_cap = cap;
        s
    }

    #[test]
    fn completeness_rules() {
        let s = settings(5000, 5000);
        assert!(check_complete(&s, 0).is_ok());
        assert!(check_complete(&s, 4999).is_ok());
        assert!(matches!(
            check_complete(&s, 5000),
            Err(LookerError::Truncated {
                received: 5000,
                requested_limit: 5001,
                ..
            })
        ));
        assert!(matches!(
            check_complete(&s, 5001),
            Err(LookerError::Truncated { .. })
        ));
        let s = settings(10, 5000);
        assert!(check_complete(&s, 10).is_ok());
        assert!(check_complete(&s, 11).is_err());
        // Asked for fewer than the cap: hitting exactly the cap cannot happen silently.
        let s = settings(100, 100);
        assert!(
            check_complete(&s, 100).is_err(),
            "asked 101, got exactly the cap"
        );
        let s = settings(99, 100);
        assert!(check_complete(&s, 99).is_ok());
        let s = settings(5000, 0);
        assert!(check_complete(&s, 5000).is_ok());
        let e = check_complete(&settings(10, 5000), 11)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refused") && e.contains("nothing was posted") && e.contains("max_rows"),
            "{e}"
        );
    }

    #[test]
    fn deadline_is_the_earliest_of_max_wait_settings_and_per_run() {
        let mut s = settings(10, 5000);
        s.max_wait = Duration::from_secs(600);
        let c = LookerClient::new(s.clone()).unwrap();
        let t0 = Instant::now();
        assert_eq!(c.deadline_from(t0), t0 + Duration::from_secs(600));
        let soon = t0 + Duration::from_secs(30);
        let c2 = c.with_deadline(soon);
        assert_eq!(c2.deadline_from(t0), soon);
        // A later per-run deadline does not extend an earlier one.
        assert_eq!(
            c2.with_deadline(t0 + Duration::from_secs(90))
                .deadline_from(t0),
            soon
        );
        s.poll_deadline = Some(t0 + Duration::from_secs(5));
        let c3 = LookerClient::new(s).unwrap().with_deadline(soon);
        assert_eq!(c3.deadline_from(t0), t0 + Duration::from_secs(5));
        // The original client keeps no deadline of its own.
        assert_eq!(c.deadline_from(t0), t0 + Duration::from_secs(600));
    }

    #[test]
    fn task_statuses_and_async_completeness() {
        assert!(matches!(TaskState::of("complete"), TaskState::Complete));
        for s in ["error", "failure", "expired", "killed", "missing"] {
            assert!(matches!(TaskState::of(s), TaskState::Ended), "{s}");
        }
        for s in ["added", "running", "", "queued"] {
            assert!(matches!(TaskState::of(s), TaskState::Pending), "{s}");
        }
        let mut s = settings(10, 5000);
        s.extract_path = ExtractPath::Async;
        assert!(check_task_complete(&s, 10).is_ok());
        assert!(matches!(
            check_task_complete(&s, 11),
            Err(LookerError::Truncated {
                received: 11,
                requested_limit: 11,
                ..
            })
        ));
        // The sync cap rule does not apply to tasks: exactly 5,000 of 20,000 allowed is fine.
        let mut s = settings(20_000, 5000);
        s.extract_path = ExtractPath::Async;
        assert!(check_task_complete(&s, 5000).is_ok());
        s.unlimited_rows = true;
        assert!(check_task_complete(&s, 1_000_000).is_ok());
    }

    #[test]
    fn validation_error_names_every_field() {
        let body = br#"{"message":"Validation Failed","errors":[{"field":"fields","code":"invalid","message":"Unknown field `a.nope`","documentation_url":"x"},{"field":"sorts","code":"invalid","message":"bad sort"}],"documentation_url":"x"}"#;
        let m = error_message(body);
        assert!(
            m.contains("Validation Failed")
                && m.contains("`a.nope`")
                && m.contains("field `sorts`"),
            "{m}"
        );
        assert_eq!(error_message(b""), "empty response body");
        assert!(error_message(b"<html>oops</html>").contains("<html>oops"));
    }

    #[test]
    fn look_info_accepts_numeric_ids_and_null_filters() {
        let j = r#"{"id":42,"title":"T","query":{"id":7,"model":"m","view":"v","fields":["v.a"],"filters":{"v.a":"x","v.b":null},"sorts":null}}"#;
        let l: LookInfo = serde_json::from_str(j).unwrap();
        assert_eq!(l.id, "42");
        assert_eq!(l.query.id.as_deref(), Some("7"));
        assert_eq!(l.query.filters.len(), 1);
        assert!(l.query.sorts.is_empty());
        assert_eq!(l.to_inline_query().explore, "v");
    }

    #[test]
    fn columns_merge_declared_first() {
        let c = merge_columns(vec!["a".into(), "b".into()], vec!["b".into(), "c".into()]);
        assert_eq!(c, ["a", "b", "c"]);
    }

    #[test]
    fn ids_and_queries_checked() {
        assert!(check_id("Look id", " ").is_err());
        assert_eq!(check_id("Look id", " 42 ").unwrap(), "42");
        let q = InlineQuery {
            model: "m".into(),
            explore: "e".into(),
            fields: vec![],
            filters: Default::default(),
            sorts: vec![],
            query_timezone: None,
        };
        assert!(check_query(&q).is_err());
    }
}
