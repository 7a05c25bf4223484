//! D365 F&O OData + Microsoft Entra ID token endpoint simulator.
//!
//! Two loopback listeners: one plays Entra (`/{tenant}/oauth2/v2.0/token`), one plays an F&O
//! environment (`/data/{EntitySet}`). It behaves like the real services as far as the reference
//! notes go: AADSTS errors, 401 with an empty body for bad/unregistered tokens, cross-company
//! visibility, server paging with `@odata.nextLink`, F&O's error shape with Infolog text, number
//! sequences for batch numbers and vouchers, line validation against master data and periods.
//! Knobs let tests throttle, expire tokens, fail writes, close periods and post journals.

mod batch;
mod cost;
mod entra;
mod faults;
pub(crate) mod filter;
mod fno;
pub mod seed;
mod tamper;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use tokio::task::JoinHandle;

use crate::domain::reference::PeriodStatus;

pub use cost::CostModel;
pub use faults::PendingFaults;
pub use seed::D365Seed;

pub const SANDBOX_TENANT: &str = "sandbox-tenant";
pub const SANDBOX_CLIENT_ID: &str = "sandbox-d365-client";
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-d365-secret";

/// A journal header as stored by the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimHeader {
    pub legal_entity: String,
    pub batch_number: String,
    pub journal_name: String,
    pub description: String,
    pub posting_layer: String,
    pub is_posted: bool,
    pub total_debit: Decimal,
    pub total_credit: Decimal,
}

/// A journal line as stored by the simulator (amounts exactly as received).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimLine {
    pub legal_entity: String,
    pub batch_number: String,
    pub line_number: u32,
    pub voucher: String,
    pub trans_date: NaiveDate,
    pub account_type: String,
    pub account_display: String,
    pub offset_account_type: String,
    pub offset_display: String,
    pub debit: Decimal,
    pub credit: Decimal,
    pub currency: String,
    pub text: String,
    pub document: String,
}

/// Which simulated service a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimService {
    Entra,
    FinOps,
}

/// One request as received (client secrets and bearer tokens redacted).
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub service: SimService,
    pub method: String,
    pub path: String,
    /// Raw (still percent-encoded) query string.
    pub query: String,
    /// Lower-case header names with values; `authorization` redacted.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Status the simulator answered.
    pub status: u16,
    /// Why the simulator answered as it did, where the status alone does not say (e.g. the
    /// update conflict of the cost model).
    pub note: Option<&'static str>,
}

impl LoggedRequest {
    /// The query, percent-decoded (without treating `+` as space, like F&O).
    pub fn decoded_query(&self) -> String {
        fno::percent_decode(&self.query)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    client_id: String,
    audience: String,
    expires_at: Instant,
}

/// An injected failure of the next write(s).
#[derive(Debug, Clone, Copy)]
struct WriteFailure {
    status: u16,
    /// Apply the write, then fail (the caller cannot know it was saved).
    commit: bool,
}

pub(crate) struct State {
    env_url: String,
    authority_url: String,
    seed: D365Seed,
    registered: BTreeMap<String, bool>,
    headers: Vec<SimHeader>,
    lines: Vec<SimLine>,
    next_batch: BTreeMap<String, u64>,
    next_voucher: BTreeMap<String, u64>,
    tokens: HashMap<String, IssuedToken>,
    token_lifetime: u64,
    page_size: usize,
    throttle_remaining: usize,
    throttle_retry_after: Option<u64>,
    write_failures: Vec<WriteFailure>,
    batch_failures: Vec<WriteFailure>,
    batch_max_operations: usize,
    /// A changeset with an operation whose body contains one of these fails validation.
    reject_containing: Vec<String>,
    /// Added before every F&O answer.
    latency: Duration,
    /// Server time and load limits (see [`CostModel`]); all off by default.
    cost: CostModel,
    /// Journals (company, batch number) with a write in progress, under the cost model.
    writing: BTreeSet<(String, String)>,
    /// F&O requests being answered right now.
    in_flight: usize,
    /// Most journals written at the same moment so far (under the cost model).
    peak_writing: usize,
    log: Vec<LoggedRequest>,
}

/// A simple request/response pair the service logic works on (no axum types inside).
pub(crate) struct SimRequest {
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

pub(crate) struct SimResponse {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    body: String,
    /// Announce a longer body than is sent, so the client sees the connection drop mid-answer.
    drop_connection: bool,
}

impl SimResponse {
    fn json(status: StatusCode, body: String) -> Self {
        Self {
            status,
            headers: vec![(
                "content-type",
                "application/json; odata.metadata=minimal".into(),
            )],
            body,
            drop_connection: false,
        }
    }
}

struct Shared {
    state: Mutex<State>,
}

/// Handle of a running simulator; both servers stop when it is dropped.
pub struct D365Sim {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for D365Sim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl D365Sim {
    /// Binds both listeners on 127.0.0.1 (ephemeral ports) and starts serving.
    pub async fn start(seed: D365Seed) -> std::io::Result<D365Sim> {
        let entra_l = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let fno_l = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let authority_url = format!("http://{}", entra_l.local_addr()?);
        let env_url = format!("http://{}", fno_l.local_addr()?);
        let registered = seed
            .apps
            .iter()
            .map(|a| (a.client_id.clone(), a.registered_in_fo))
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                env_url,
                authority_url,
                seed,
                registered,
                headers: vec![],
                lines: vec![],
                next_batch: BTreeMap::new(),
                next_voucher: BTreeMap::new(),
                tokens: HashMap::new(),
                token_lifetime: 3599,
                page_size: 10_000,
                throttle_remaining: 0,
                throttle_retry_after: None,
                write_failures: vec![],
                batch_failures: vec![],
                batch_max_operations: 200,
                reject_containing: vec![],
                latency: Duration::ZERO,
                cost: CostModel::default(),
                writing: BTreeSet::new(),
                in_flight: 0,
                peak_writing: 0,
                log: vec![],
            }),
        });
        let entra_app = Router::new()
            .fallback(entra_handler)
            .with_state(shared.clone());
        let fno_app = Router::new()
            .fallback(fno_handler)
            .with_state(shared.clone());
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(entra_l, entra_app).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(fno_l, fno_app).await;
            }),
        ];
        Ok(D365Sim { shared, tasks })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn environment_url(&self) -> String {
        self.state().env_url.clone()
    }

    /// The Entra authority, e.g. `http://127.0.0.1:40124`.
    pub fn authority_url(&self) -> String {
        self.state().authority_url.clone()
    }

    pub fn headers(&self) -> Vec<SimHeader> {
        self.state().headers.clone()
    }

    pub fn lines(&self) -> Vec<SimLine> {
        self.state().lines.clone()
    }

    /// Sets the status of the operating period containing `date` in the company's calendar.
    pub fn set_period_status(&self, legal_entity: &str, date: NaiveDate, status: PeriodStatus) {
        let mut st = self.state();
        let le = legal_entity.to_ascii_lowercase();
        let Some(cal) = st
            .seed
            .ledgers
            .iter()
            .find(|l| l.legal_entity == le)
            .map(|l| l.fiscal_calendar.clone())
        else {
            return;
        };
        let keys: Vec<_> = st
            .seed
            .periods
            .iter()
            .filter(|p| p.calendar == cal && p.period_type == "Operating")
            .filter(|p| p.start <= date && date <= p.end)
            .map(|p| (le.clone(), cal.clone(), p.year.clone(), p.name.clone()))
            .collect();
        for k in keys {
            st.seed.period_status.insert(k, status);
        }
    }

    pub fn set_dimension_value_suspended(&self, dimension: &str, value: &str, suspended: bool) {
        let mut st = self.state();
        for v in st
            .seed
            .dimension_values
            .iter_mut()
            .filter(|v| v.dimension == dimension && v.value == value)
        {
            v.suspended = suspended;
        }
    }

    pub fn set_main_account_suspended(&self, account: &str, suspended: bool) {
        let mut st = self.state();
        for a in st.seed.main_accounts.iter_mut().filter(|a| a.id == account) {
            a.suspended = suspended;
        }
    }

    /// Finance posts the journal: `IsPosted = Yes`, further line inserts are refused.
    pub fn post_journal(&self, legal_entity: &str, batch: &str) {
        let mut st = self.state();
        let le = legal_entity.to_ascii_lowercase();
        for h in st
            .headers
            .iter_mut()
            .filter(|h| h.legal_entity == le && h.batch_number == batch)
        {
            h.is_posted = true;
        }
    }

    /// The next `n` F&O requests are answered 429 (with `Retry-After` when given).
    pub fn throttle_next(&self, n: usize, retry_after_secs: Option<u64>) {
        let mut st = self.state();
        st.throttle_remaining = n;
        st.throttle_retry_after = retry_after_secs;
    }

    /// The next `n` single writes (POST/DELETE, not `$batch`) answer `status` (e.g. 500/502/504).
    /// With `commit` the write is applied first — the case where the caller cannot know it was
    /// saved.
    pub fn fail_next_writes(&self, n: usize, status: u16, commit: bool) {
        let mut st = self.state();
        st.write_failures = vec![WriteFailure { status, commit }; n];
    }

    /// The next `n` `$batch` requests fail with `status` (e.g. 500/502/504; 0 = the connection
    /// drops without a complete answer). With `commit` the batch is applied first (every
    /// changeset that passes validation is saved) — the caller cannot know it was saved.
    /// Independent of [`Self::fail_next_writes`], which covers single POSTs and DELETEs.
    pub fn fail_next_batches(&self, n: usize, status: u16, commit: bool) {
        self.state().batch_failures = vec![WriteFailure { status, commit }; n];
    }

    /// From now on, a `$batch` changeset with an operation whose JSON body contains `text`
    /// fails validation (400, F&O shape, Infolog naming the text) and nothing of it is saved.
    pub fn reject_changeset_containing(&self, text: &str) {
        self.state().reject_containing.push(text.to_string());
    }

    /// Removes every [`Self::reject_changeset_containing`] rule.
    pub fn clear_changeset_rejections(&self) {
        self.state().reject_containing.clear();
    }

    /// Operations allowed in one `$batch` (default 200); more → 400 and nothing is processed.
    pub fn set_batch_max_operations(&self, n: usize) {
        self.state().batch_max_operations = n;
    }

    /// Delay added before every F&O answer (default none), e.g. to model a remote tenant.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Server time and load limits of F&O from now on (see [`CostModel`]).
    pub fn set_cost_model(&self, cost: CostModel) {
        self.state().cost = cost;
    }

    /// Answers F&O gave with the update-conflict error of overlapping journal writes.
    pub fn update_conflicts(&self) -> usize {
        self.state()
            .log
            .iter()
            .filter(|r| r.service == SimService::FinOps)
            .filter(|r| r.note == Some(cost::UPDATE_CONFLICT_NOTE))
            .count()
    }

    /// Most journals that were being written at the same moment (needs a cost model with
    /// `serialise_journal_writes`): shows whether a client wrote journals in parallel.
    pub fn peak_journals_writing(&self) -> usize {
        self.state().peak_writing
    }

    /// Number of requests F&O received (any method, any status, including 401/429).
    pub fn fno_request_count(&self) -> usize {
        self.state()
            .log
            .iter()
            .filter(|r| r.service == SimService::FinOps)
            .count()
    }

    /// Number of `POST /data/$batch` requests F&O received (any status).
    pub fn batch_request_count(&self) -> usize {
        self.state()
            .log
            .iter()
            .filter(|r| r.service == SimService::FinOps && r.method == "POST")
            .filter(|r| r.path == "/data/$batch" || r.path.eq_ignore_ascii_case("/data/%24batch"))
            .count()
    }

    /// Every issued token stops working (F&O answers 401 until a new one is fetched).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for t in self.state().tokens.values_mut() {
            t.expires_at = now;
        }
    }

    /// `expires_in` of tokens issued from now on (default 3599 s).
    pub fn set_token_lifetime(&self, secs: u64) {
        self.state().token_lifetime = secs;
    }

    /// Server page size (default 10 000); `Prefer: odata.maxpagesize` may lower it.
    pub fn set_page_size(&self, n: usize) {
        self.state().page_size = n.max(1);
    }

    /// Removes the app from F&O's "Microsoft Entra applications": tokens are still issued, F&O
    /// answers 401.
    pub fn unregister_app(&self, client_id: &str) {
        self.state().registered.insert(client_id.to_string(), false);
    }

    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.state().log.clone()
    }

    /// Number of token requests Entra received.
    pub fn token_requests(&self) -> usize {
        self.state()
            .log
            .iter()
            .filter(|r| r.service == SimService::Entra)
            .count()
    }
}

async fn entra_handler(
    AxState(shared): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = SimRequest::new(method, uri, headers, body);
    let resp = entra::handle(&mut shared.lock(), &req);
    respond(&shared, SimService::Entra, &req, resp, None)
}

async fn fno_handler(
    AxState(shared): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = SimRequest::new(method, uri, headers, body);
    // Admission under the cost model: the concurrency knee, then the journals this request
    // writes (a write overlapping another write to one journal is an update conflict).
    let (latency, cost, fp) = {
        let st = shared.lock();
        let fp = if st.cost == CostModel::default() {
            cost::Footprint::default()
        } else {
            cost::footprint(&st.env_url, &req)
        };
        (st.latency, st.cost, fp)
    };
    let _flight = InFlight::enter(&shared);
    if cost.max_in_flight.is_some_and(|max| _flight.count > max) {
        let mut r = fno::odata_error(
            StatusCode::TOO_MANY_REQUESTS,
            "This request could not be processed at this time due to system experiencing high resource utilization.",
            None,
        );
        r.headers
            .push(("retry-after", cost.retry_after_secs.to_string()));
        return respond(&shared, SimService::FinOps, &req, r, None);
    }
    let claim = if cost.serialise_journal_writes && !fp.journals.is_empty() {
        match JournalClaim::take(&shared, &fp.journals) {
            Some(c) => Some(c),
            None => {
                let r = if fp.batch {
                    batch::failed_first_changeset(&req, cost::update_conflict())
                } else {
                    cost::update_conflict()
                };
                return respond(
                    &shared,
                    SimService::FinOps,
                    &req,
                    r,
                    Some(cost::UPDATE_CONFLICT_NOTE),
                );
            }
        }
    } else {
        None
    };
    let wait = latency + cost.service_time(&fp);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let resp = fno::handle(&mut shared.lock(), &req);
    drop(claim);
    respond(&shared, SimService::FinOps, &req, resp, None)
}

impl SimRequest {
    fn new(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Self {
        Self {
            method,
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            headers,
            body,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a request in flight until it is answered (or its connection is dropped).
struct InFlight<'a> {
    shared: &'a Shared,
    count: usize,
}

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let mut st = shared.lock();
        st.in_flight += 1;
        Self {
            shared,
            count: st.in_flight,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

/// The journals a write holds while F&O works on it; released when the write ends, also when
/// the client drops the connection.
struct JournalClaim<'a> {
    shared: &'a Shared,
    journals: Vec<(String, String)>,
}

impl<'a> JournalClaim<'a> {
    /// `None` when another write holds one of the journals.
    fn take(shared: &'a Shared, journals: &BTreeSet<(String, String)>) -> Option<Self> {
        let mut st = shared.lock();
        if journals.iter().any(|j| st.writing.contains(j)) {
            return None;
        }
        st.writing.extend(journals.iter().cloned());
        st.peak_writing = st.peak_writing.max(st.writing.len());
        Some(Self {
            shared,
            journals: journals.iter().cloned().collect(),
        })
    }
}

impl Drop for JournalClaim<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        for j in &self.journals {
            st.writing.remove(j);
        }
    }
}

/// Logs the request with its answer and turns the answer into an HTTP response.
fn respond(
    shared: &Shared,
    service: SimService,
    req: &SimRequest,
    resp: SimResponse,
    note: Option<&'static str>,
) -> Response {
    let mut st = shared.lock();
    let logged_body = match service {
        SimService::Entra => entra::redact_form(&String::from_utf8_lossy(&req.body)),
        SimService::FinOps => String::from_utf8_lossy(&req.body).into_owned(),
    };
    st.log.push(LoggedRequest {
        service,
        method: req.method.to_string(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if k == axum::http::header::AUTHORIZATION {
                    "***".to_string()
                } else {
                    v.to_str().unwrap_or("").to_string()
                };
                (k.as_str().to_string(), v)
            })
            .collect(),
        body: logged_body,
        status: resp.status.as_u16(),
        note,
    });
    drop(st);
    let announced = resp.body.len() + 64;
    let mut r = (resp.status, resp.body).into_response();
    for (k, v) in resp.headers {
        if let Ok(v) = v.parse() {
            r.headers_mut().insert(k, v);
        }
    }
    if resp.drop_connection {
        // The client sees an incomplete body: the answer announces more bytes than it has, and
        // the connection is closed after it. (A debug build of hyper also panics on the
        // mismatch, which closes the connection too; a release build trusts the announced
        // length, and without `Connection: close` it would keep the connection open and the
        // client would wait for the missing bytes until its timeout.)
        r.headers_mut()
            .insert(axum::http::header::CONTENT_LENGTH, announced.into());
        r.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    r
}
