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
    json_str, render_json, render_json_detail, run_query, Invalid, QuerySpec, SimExplore,
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
            Some(l) => Reply::json(StatusCode::OK, look_json(l)),
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
        Ok(rows) if fmt == "json" => Reply::json(StatusCode::OK, render_json(&rows)),
        Ok(rows) => Reply::json(
            StatusCode::OK,
            render_json_detail(ex, &spec, &rows, model, explore),
        ),
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

fn look_json(l: &SeedLook) -> String {
    let q = &l.query;
    let query_id = format!("q{}", l.id);
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
