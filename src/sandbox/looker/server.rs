//! The simulator's HTTP surface: one handler that logs every request and routes it the way
//! Looker API 4.0 does, including its quirks (404 for bad login credentials, 401 for a
//! trailing slash, the 5,000-row default cap).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::model::{
    json_str, render_json, render_json_detail, run_query, validate_query, Invalid, OutRow,
    QuerySpec, SimExplore,
};
use super::seed::SeedLook;
use super::{LoggedRequest, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET};

const DOCS: &str = "https://cloud.google.com/looker/docs/";

/// Everything the simulator knows; behind a std `Mutex` (never held across an await).
#[derive(Default)]
pub(crate) struct SimState {
    pub(crate) explores: BTreeMap<(String, String), SimExplore>,
    pub(crate) looks: BTreeMap<String, SeedLook>,
    pub(crate) tokens: HashMap<String, Instant>,
    pub(crate) token_lifetime_secs: u64,
    pub(crate) throttle_remaining: usize,
    pub(crate) throttle_retry_after: Option<u64>,
    pub(crate) log: Vec<LoggedRequest>,
    pub(crate) issued: u64,
    /// Saved queries by id (`POST /queries`, and the queries of Looks).
    pub(crate) queries: BTreeMap<String, SimQuery>,
    /// Canonical query JSON → id (queries are de-duplicated like Looker's).
    pub(crate) query_ids: HashMap<String, String>,
    /// Look id → its query id.
    pub(crate) look_query_ids: BTreeMap<String, String>,
    pub(crate) tasks: HashMap<String, SimTask>,
    /// Status polls a new task answers "not finished" to before it ends.
    pub(crate) task_latency: usize,
    /// Results requests of a finished task that still answer 202.
    pub(crate) results_lag: usize,
    /// The next task ends with this status instead of `complete`.
    pub(crate) fail_next_task: Option<String>,
    /// The next n `GET /query_tasks/{id}` answer 429.
    pub(crate) throttle_polls: usize,
    pub(crate) throttle_polls_retry_after: Option<u64>,
    /// Slept before answering every request.
    pub(crate) latency: Duration,
    /// Most rows the synchronous run endpoints return whatever the limit (None = honour it).
    pub(crate) sync_row_cap: Option<usize>,
    pub(crate) next_id: u64,
}

/// A saved query: the writable part of Looker's `Query`.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SimQuery {
    pub(crate) model: String,
    pub(crate) view: String,
    pub(crate) fields: Vec<String>,
    pub(crate) filters: BTreeMap<String, String>,
    pub(crate) sorts: Vec<String>,
    pub(crate) limit: Option<String>,
    pub(crate) query_timezone: Option<String>,
}

/// An async query task. Its result is computed when it is created.
#[derive(Debug)]
pub(crate) struct SimTask {
    pub(crate) query_id: String,
    /// Polls still to answer "not finished" (`added` first, then `running`).
    pub(crate) polls_left: usize,
    pub(crate) polled: bool,
    /// Results requests still to answer 202 once finished.
    pub(crate) results_lag: usize,
    /// `complete`, `error`, `failure`, `expired`, … once finished.
    pub(crate) final_status: String,
    /// The rendered result, or the error message.
    pub(crate) outcome: Result<String, String>,
    pub(crate) cancelled: bool,
}

impl SimTask {
    /// The status as it stands (no poll): `added` until polled, `running` while polls are
    /// left, then the end status; `killed` once cancelled.
    fn status(&self) -> &str {
        if self.cancelled {
            "killed"
        } else if self.polls_left > 0 {
            if self.polled {
                "running"
            } else {
                "added"
            }
        } else {
            &self.final_status
        }
    }

    /// One poll: answers "not finished" (and uses up one poll) while polls are left, else the
    /// end status.
    fn poll(&mut self) -> String {
        self.polled = true;
        if self.polls_left > 0 && !self.cancelled {
            self.polls_left -= 1;
            return "running".into();
        }
        self.status().to_string()
    }
}

impl SimState {
    /// The id of `q`, saving it first if it is new (identical queries share an id).
    pub(crate) fn intern_query(&mut self, q: SimQuery) -> String {
        let key = serde_json::to_string(&q).unwrap_or_default();
        if let Some(id) = self.query_ids.get(&key) {
            return id.clone();
        }
        self.next_id += 1;
        let id = (1000 + self.next_id).to_string();
        self.query_ids.insert(key, id.clone());
        self.queries.insert(id.clone(), q);
        id
    }
}

pub(crate) type Shared = Arc<Mutex<SimState>>;

pub(crate) fn lock(s: &Shared) -> MutexGuard<'_, SimState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

struct Reply {
    status: StatusCode,
    retry_after: Option<u64>,
    body: String,
}

impl Reply {
    fn json(status: StatusCode, body: String) -> Self {
        Reply {
            status,
            retry_after: None,
            body,
        }
    }
    fn error(status: StatusCode, message: &str) -> Self {
        Self::json(
            status,
            format!(
                r#"{{"message":{},"documentation_url":"{DOCS}"}}"#,
                json_str(message)
            ),
        )
    }
    fn not_found() -> Self {
        Self::error(StatusCode::NOT_FOUND, "Not found")
    }
    fn unauthenticated() -> Self {
        Self::error(StatusCode::UNAUTHORIZED, "Requires authentication.")
    }
    fn validation(errors: &[Invalid]) -> Self {
        let details: Vec<String> = errors
            .iter()
            .map(|(field, code, message)| {
                format!(
                    r#"{{"field":{},"code":{},"message":{},"documentation_url":"{DOCS}"}}"#,
                    json_str(field),
                    json_str(code),
                    json_str(message)
                )
            })
            .collect();
        Self::json(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                r#"{{"message":"Validation Failed","errors":[{}],"documentation_url":"{DOCS}"}}"#,
                details.join(",")
            ),
        )
    }
}

struct Incoming<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    /// `(scheme, token)` from `Authorization`.
    auth: Option<(String, String)>,
    body: &'a str,
}

impl Incoming<'_> {
    fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

pub(crate) async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let auth = text(header::AUTHORIZATION).and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        Some((scheme.to_string(), token.trim().to_string()))
    });
    let latency = lock(&shared).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let incoming = Incoming {
        method: &method,
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        auth: auth.clone(),
        body: &body,
    };
    let mut st = lock(&shared);
    let reply = route(&mut st, &incoming);
    st.log.push(LoggedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        auth_scheme: auth.map(|(s, _)| s),
        app_id: headers
            .get("x-looker-appid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        content_type: text(header::CONTENT_TYPE),
        body,
        status: reply.status.as_u16(),
    });
    drop(st);
    let mut resp = (
        reply.status,
        [(header::CONTENT_TYPE, "application/json")],
        reply.body,
    )
        .into_response();
    if let Some(secs) = reply.retry_after {
        if let Ok(v) = secs.to_string().parse() {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

fn route(st: &mut SimState, req: &Incoming) -> Reply {
    if st.throttle_remaining > 0 {
        st.throttle_remaining -= 1;
        let mut r = Reply::error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
        r.retry_after = st.throttle_retry_after;
        return r;
    }
    let Some(rest) = req.path.strip_prefix("/api/4.0/") else {
        return Reply::not_found();
    };
    // Real Looker answers 401 to any path with a trailing slash.
    if rest.is_empty() || rest.ends_with('/') {
        return Reply::unauthenticated();
    }
    let seg: Vec<&str> = rest.split('/').collect();
    if *req.method == Method::POST && seg == ["login"] {
        return login(st, req);
    }
    let now = Instant::now();
    let token = match &req.auth {
        Some((scheme, token))
            if (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
                && st.tokens.get(token).is_some_and(|exp| now < *exp) =>
        {
            token.clone()
        }
        _ => return Reply::unauthenticated(),
    };
    match (req.method.clone(), seg.as_slice()) {
        (Method::DELETE, ["logout"]) => {
            st.tokens.remove(&token);
            Reply::json(StatusCode::NO_CONTENT, String::new())
        }
        (Method::GET, ["looks", id]) => match st.looks.get(*id) {
            Some(l) => {
                let qid = st.look_query_ids.get(*id).cloned().unwrap_or_default();
                Reply::json(StatusCode::OK, look_json(l, &qid))
            }
            None => Reply::not_found(),
        },
        (Method::POST, ["queries"]) => create_query(st, req),
        (Method::GET, ["queries", id]) => match st.queries.get(*id) {
            Some(q) => Reply::json(StatusCode::OK, query_json(id, q)),
            None => Reply::not_found(),
        },
        (Method::GET, ["queries", id, "run", fmt]) => {
            let Some(q) = st.queries.get(*id).cloned() else {
                return Reply::not_found();
            };
            let spec = match spec_of(&q) {
                Ok(s) => s,
                Err(m) => return Reply::validation(&[("limit".into(), "invalid".into(), m)]),
            };
            run(st, req, &q.model, &q.view, spec, fmt)
        }
        (Method::POST, ["query_tasks"]) => create_task(st, req),
        (Method::GET, ["query_tasks", "multi_results"]) => multi_results(st, req),
        (Method::GET, ["query_tasks", id]) => {
            if st.throttle_polls > 0 && st.tasks.contains_key(*id) {
                st.throttle_polls -= 1;
                let mut r = Reply::error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
                r.retry_after = st.throttle_polls_retry_after;
                return r;
            }
            match st.tasks.get_mut(*id) {
                Some(t) => {
                    let status = t.poll();
                    Reply::json(StatusCode::OK, task_json(id, t, &status))
                }
                None => Reply::not_found(),
            }
        }
        (Method::GET, ["query_tasks", id, "results"]) => task_results(st, id),
        (Method::DELETE, ["running_queries", id]) => match st.tasks.get_mut(*id) {
            Some(t) => {
                t.cancelled = true;
                Reply::json(StatusCode::NO_CONTENT, String::new())
            }
            None => Reply::not_found(),
        },
        (Method::GET, ["looks", id, "run", fmt]) => {
            let Some(look) = st.looks.get(*id) else {
                return Reply::not_found();
            };
            let q = &look.query;
            let spec = QuerySpec {
                fields: q.fields.clone(),
                filters: q.filters.clone(),
                sorts: q.sorts.clone(),
                limit: None,
                apply_formatting: false,
            };
            run(st, req, &q.model, &q.explore, spec, fmt)
        }
        (Method::POST, ["queries", "run", fmt]) => {
            let body: WriteQuery = match serde_json::from_str(req.body) {
                Ok(b) => b,
                Err(e) => {
                    return Reply::error(StatusCode::BAD_REQUEST, &format!("Bad Request: {e}"))
                }
            };
            let mut missing = Vec::new();
            for (name, v) in [("model", &body.model), ("view", &body.view)] {
                if v.as_deref().unwrap_or("").is_empty() {
                    missing.push((
                        name.to_string(),
                        "missing".to_string(),
                        "This field is required.".to_string(),
                    ));
                }
            }
            if !missing.is_empty() {
                return Reply::validation(&missing);
            }
            let limit = match body.limit.as_ref().map(limit_value).transpose() {
                Ok(l) => l,
                Err(m) => return Reply::validation(&[("limit".into(), "invalid".into(), m)]),
            };
            let spec = QuerySpec {
                fields: body.fields.unwrap_or_default(),
                filters: body
                    .filters
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k, v)))
                    .collect(),
                sorts: body.sorts.unwrap_or_default(),
                limit,
                apply_formatting: false,
            };
            let (model, view) = (
                body.model.unwrap_or_default(),
                body.view.unwrap_or_default(),
            );
            run(st, req, &model, &view, spec, fmt)
        }
        (Method::GET, ["lookml_models", model, "explores", explore]) => {
            match st.explores.get(&(model.to_string(), explore.to_string())) {
                Some(ex) => Reply::json(StatusCode::OK, explore_json(model, explore, ex)),
                None => Reply::not_found(),
            }
        }
        _ => Reply::not_found(),
    }
}

/// The writable part of Looker's `Query`. `limit` is a string in the spec; numbers are
/// tolerated like Looker does.
#[derive(Deserialize)]
struct WriteQuery {
    model: Option<String>,
    view: Option<String>,
    fields: Option<Vec<String>>,
    filters: Option<BTreeMap<String, Option<String>>>,
    sorts: Option<Vec<String>>,
    limit: Option<serde_json::Value>,
    query_timezone: Option<String>,
}

/// `POST /queries`: validates like Looker (422 naming bad fields) and returns the saved query
/// (an identical query gets the existing id).
fn create_query(st: &mut SimState, req: &Incoming) -> Reply {
    let body: WriteQuery = match serde_json::from_str(req.body) {
        Ok(b) => b,
        Err(e) => return Reply::error(StatusCode::BAD_REQUEST, &format!("Bad Request: {e}")),
    };
    let mut missing = Vec::new();
    for (name, v) in [("model", &body.model), ("view", &body.view)] {
        if v.as_deref().unwrap_or("").is_empty() {
            missing.push((
                name.to_string(),
                "missing".to_string(),
                "This field is required.".to_string(),
            ));
        }
    }
    if !missing.is_empty() {
        return Reply::validation(&missing);
    }
    let limit = match body.limit.as_ref().map(limit_value).transpose() {
        Ok(l) => l,
        Err(m) => return Reply::validation(&[("limit".into(), "invalid".into(), m)]),
    };
    let q = SimQuery {
        model: body.model.unwrap_or_default(),
        view: body.view.unwrap_or_default(),
        fields: body.fields.unwrap_or_default(),
        filters: body
            .filters
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect(),
        sorts: body.sorts.unwrap_or_default(),
        limit: limit.map(|l| l.to_string()),
        query_timezone: body.query_timezone,
    };
    let Some(ex) = st.explores.get(&(q.model.clone(), q.view.clone())) else {
        return Reply::not_found();
    };
    let spec = match spec_of(&q) {
        Ok(s) => s,
        Err(m) => return Reply::validation(&[("limit".into(), "invalid".into(), m)]),
    };
    if let Err(errors) = validate_query(ex, &spec) {
        return Reply::validation(&errors);
    }
    let id = st.intern_query(q);
    let q = &st.queries[&id];
    Reply::json(StatusCode::OK, query_json(&id, q))
}

fn spec_of(q: &SimQuery) -> Result<QuerySpec, String> {
    let limit = match &q.limit {
        Some(l) => Some(
            l.trim()
                .parse::<i64>()
                .map_err(|_| format!("limit `{l}` is not a number"))?,
        ),
        None => None,
    };
    Ok(QuerySpec {
        fields: q.fields.clone(),
        filters: q.filters.clone(),
        sorts: q.sorts.clone(),
        limit,
        apply_formatting: false,
    })
}

#[derive(Deserialize)]
struct CreateQueryTask {
    query_id: Option<serde_json::Value>,
    result_format: Option<String>,
}

/// `POST /query_tasks`: runs the query now (limit and formatting from the query string, like
/// the run endpoints; `limit=-1` is unlimited) and keeps the result until it is polled out.
fn create_task(st: &mut SimState, req: &Incoming) -> Reply {
    let body: CreateQueryTask = match serde_json::from_str(req.body) {
        Ok(b) => b,
        Err(e) => return Reply::error(StatusCode::BAD_REQUEST, &format!("Bad Request: {e}")),
    };
    let query_id = match body.query_id {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => {
            return Reply::validation(&[(
                "query_id".into(),
                "missing".into(),
                "This field is required.".into(),
            )])
        }
    };
    let fmt = body.result_format.unwrap_or_default();
    if fmt != "json" && fmt != "json_detail" {
        return Reply::validation(&[(
            "result_format".into(),
            "invalid".into(),
            format!(
                "Unsupported result format `{fmt}` (the simulator serves json and json_detail)"
            ),
        )]);
    }
    let Some(q) = st.queries.get(&query_id).cloned() else {
        return Reply::not_found();
    };
    let mut spec = match spec_of(&q) {
        Ok(s) => s,
        Err(m) => return Reply::validation(&[("limit".into(), "invalid".into(), m)]),
    };
    if let Some(l) = req.query_param("limit") {
        match l.trim().parse::<i64>() {
            Ok(n) => spec.limit = Some(n),
            Err(_) => {
                return Reply::error(StatusCode::BAD_REQUEST, &format!("Invalid limit `{l}`"))
            }
        }
    }
    spec.apply_formatting = req
        .query_param("apply_formatting")
        .is_some_and(|v| v == "true");
    let outcome = match st.explores.get(&(q.model.clone(), q.view.clone())) {
        None => Err(format!(
            "Model `{}` or explore `{}` not found",
            q.model, q.view
        )),
        Some(ex) => match run_query(ex, &spec) {
            Ok(rows) => Ok(render(ex, &spec, &rows, &q.model, &q.view, &fmt)),
            Err(errors) => Err(errors
                .into_iter()
                .map(|(_, _, m)| m)
                .collect::<Vec<_>>()
                .join("; ")),
        },
    };
    let (final_status, outcome) = match (st.fail_next_task.take(), outcome) {
        (Some(forced), _) if forced == "error" || forced == "failure" => (
            forced,
            Err("simulated database error (LookerSim::fail_next_task)".to_string()),
        ),
        (Some(forced), outcome) => (forced, outcome),
        (None, Ok(body)) => ("complete".to_string(), Ok(body)),
        (None, Err(m)) => ("error".to_string(), Err(m)),
    };
    st.next_id += 1;
    let id = format!("{:08x}{:016x}", st.next_id, fastrand::u64(..));
    let task = SimTask {
        query_id,
        polls_left: st.task_latency,
        polled: false,
        results_lag: st.results_lag,
        final_status,
        outcome,
        cancelled: false,
    };
    let reply = Reply::json(StatusCode::OK, task_json(&id, &task, task.status()));
    st.tasks.insert(id, task);
    reply
}

fn render(
    ex: &SimExplore,
    spec: &QuerySpec,
    rows: &[OutRow],
    model: &str,
    explore: &str,
    fmt: &str,
) -> String {
    if fmt == "json" {
        render_json(rows)
    } else {
        render_json_detail(ex, spec, rows, model, explore)
    }
}

/// `GET /query_tasks/{id}/results`: 202 while running, the result once complete, 400 with
/// the SQL error for a failed `json` task (`json_detail`: 200 with `errors`), 404 when
/// expired, killed or unknown.
fn task_results(st: &mut SimState, id: &str) -> Reply {
    let Some(t) = st.tasks.get_mut(id) else {
        return Reply::not_found();
    };
    let status = t.poll();
    match status.as_str() {
        "added" | "running" => return Reply::json(StatusCode::ACCEPTED, task_json(id, t, &status)),
        "expired" | "killed" | "missing" => return Reply::not_found(),
        _ => {}
    }
    if t.results_lag > 0 {
        t.results_lag -= 1;
        return Reply::json(StatusCode::ACCEPTED, task_json(id, t, "running"));
    }
    match (t.final_status.as_str(), &t.outcome) {
        ("complete", Ok(body)) => Reply::json(StatusCode::OK, body.clone()),
        (_, Err(m)) => Reply::error(StatusCode::BAD_REQUEST, &format!("SQL Error: {m}")),
        (status, Ok(_)) => Reply::error(
            StatusCode::BAD_REQUEST,
            &format!("Query task ended with status {status}"),
        ),
    }
}

/// `GET /query_tasks/multi_results?query_task_ids=a,b`: a peek that does not advance tasks.
fn multi_results(st: &SimState, req: &Incoming) -> Reply {
    let ids = req.query_param("query_task_ids").unwrap_or_default();
    let mut parts = Vec::new();
    for id in ids.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let entry = match st.tasks.get(id) {
            None => r#"{"status":"missing","data":null}"#.to_string(),
            Some(t) => {
                let status = t.status();
                let data = match (status, &t.outcome) {
                    ("complete", Ok(body)) => body.clone(),
                    ("error" | "failure", Err(m)) => format!(
                        r#"{{"errors":[{{"message":{}}}]}}"#,
                        json_str(&format!("SQL Error: {m}"))
                    ),
                    _ => "null".to_string(),
                };
                format!(r#"{{"status":{},"data":{data}}}"#, json_str(status))
            }
        };
        parts.push(format!("{}:{entry}", json_str(id)));
    }
    Reply::json(StatusCode::OK, format!("{{{}}}", parts.join(",")))
}

fn task_json(id: &str, t: &SimTask, status: &str) -> String {
    serde_json::json!({
        "id": id,
        "query_id": t.query_id,
        "status": status,
        "result_source": null,
        "runtime": null,
        "source": "api",
    })
    .to_string()
}

fn query_json(id: &str, q: &SimQuery) -> String {
    serde_json::json!({
        "id": id,
        "model": q.model,
        "view": q.view,
        "fields": q.fields,
        "filters": q.filters,
        "sorts": q.sorts,
        "limit": q.limit,
        "query_timezone": q.query_timezone,
        "slug": format!("sim{id}"),
        "client_id": format!("sim{id}"),
    })
    .to_string()
}

fn limit_value(v: &serde_json::Value) -> Result<i64, String> {
    match v {
        serde_json::Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("limit `{s}` is not a number")),
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("limit `{n}` is not an integer")),
        other => Err(format!("limit `{other}` is not a number")),
    }
}

fn run(
    st: &SimState,
    req: &Incoming,
    model: &str,
    explore: &str,
    mut spec: QuerySpec,
    fmt: &str,
) -> Reply {
    if fmt != "json" && fmt != "json_detail" {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Unsupported result format `{fmt}` (the simulator serves json and json_detail)"
            ),
        );
    }
    let Some(ex) = st.explores.get(&(model.to_string(), explore.to_string())) else {
        return Reply::not_found();
    };
    // The `limit` query parameter overrides the query's own limit.
    if let Some(l) = req.query_param("limit") {
        match l.trim().parse::<i64>() {
            Ok(n) => spec.limit = Some(n),
            Err(_) => {
                return Reply::error(StatusCode::BAD_REQUEST, &format!("Invalid limit `{l}`"))
            }
        }
    }
    spec.apply_formatting = req
        .query_param("apply_formatting")
        .is_some_and(|v| v == "true");
    match run_query(ex, &spec) {
        Ok(mut rows) => {
            if let Some(cap) = st.sync_row_cap {
                rows.truncate(cap);
            }
            Reply::json(
                StatusCode::OK,
                render(ex, &spec, &rows, model, explore, fmt),
            )
        }
        Err(errors) => Reply::validation(&errors),
    }
}

fn login(st: &mut SimState, req: &Incoming) -> Reply {
    // Body form is the documented way; query-string credentials still work (deprecated).
    let mut form: HashMap<String, String> = url::form_urlencoded::parse(req.body.as_bytes())
        .into_owned()
        .collect();
    if !form.contains_key("client_id") {
        form = url::form_urlencoded::parse(req.query.as_bytes())
            .into_owned()
            .collect();
    }
    let ok = form.get("client_id").map(String::as_str) == Some(SANDBOX_LOOKER_CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(SANDBOX_LOOKER_CLIENT_SECRET);
    if !ok {
        return Reply::not_found();
    }
    st.issued += 1;
    let token = format!("simtok{}{:016x}", st.issued, fastrand::u64(..));
    let lifetime = st.token_lifetime_secs;
    st.tokens.insert(
        token.clone(),
        Instant::now() + Duration::from_secs(lifetime),
    );
    Reply::json(
        StatusCode::OK,
        format!(
            r#"{{"access_token":{},"token_type":"Bearer","expires_in":{lifetime},"refresh_token":null}}"#,
            json_str(&token)
        ),
    )
}

fn look_json(l: &SeedLook, query_id: &str) -> String {
    let q = &l.query;
    serde_json::json!({
        "id": l.id,
        "title": l.title,
        "query_id": query_id,
        "model": {"id": q.model, "label": q.model},
        "public": false,
        "query": {
            "id": query_id,
            "model": q.model,
            "view": q.explore,
            "fields": q.fields,
            "filters": q.filters,
            "sorts": q.sorts,
            "limit": null,
            "query_timezone": q.query_timezone,
        },
    })
    .to_string()
}

fn explore_json(model: &str, explore: &str, ex: &SimExplore) -> String {
    let fields = |names: &[String]| -> Vec<serde_json::Value> {
        names
            .iter()
            .map(|n| serde_json::json!({"name": n, "type": ex.field_type(n), "label": n}))
            .collect()
    };
    serde_json::json!({
        "id": format!("{model}::{explore}"),
        "name": explore,
        "model_name": model,
        "fields": {
            "dimensions": fields(&ex.dimensions),
            "measures": fields(&ex.measures),
            "filters": [],
            "parameters": [],
        },
    })
    .to_string()
}
