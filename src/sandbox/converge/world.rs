//! One seed's world: the simulators, the stores, the posters, the faults, the final run, the
//! check.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::NaiveDate;
use tokio::task::JoinSet;

use super::check::{check, D365State, Expectation, RunClaim, Violation};
use super::scenario::{
    Backend, FaultKind, Mapping, Poster, Scenario, StoreSlot, Trigger, BALANCING_ACCOUNT,
};
use super::{Options, SeedReport};
use crate::d365::{D365Client, D365Settings};
use crate::domain::config::{InlineQuery, InstanceConfig};
use crate::domain::reference::ReferenceData;
use crate::engine::{CrashPoint, Engine, EngineError, Mode, NoProgress, Outcome, Progress};
use crate::http::RetryPolicy;
use crate::looker::{LookerClient, LookerSettings};
use crate::ports::{
    LedgerError, LedgerGateway, LedgerHeader, LedgerLine, NewLedgerLine, VoucherOutcome,
};
use crate::sandbox::d365::{
    D365Seed, D365Sim, SimLine, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use crate::sandbox::looker::{
    LookerSeed, LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};
use crate::secrets::Secret;
use crate::store::{SqliteStore, Store};

const EXAMPLE: &str = include_str!("../../../infra/config/weekly-marketplace-fees.toml");
const LOOK_ID: &str = "converge";
const VIEW: &str = "marketplace_fees";

/// Every seed posts 2026-W47 (run on Monday 2026-11-23).
fn run_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
}

fn week_end() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 22).expect("date")
}

fn field(name: &str) -> String {
    format!("{VIEW}.{name}")
}

/// Whether a local DynamoDB (moto, as `.ci/test` starts it) is configured: `AWS_ENDPOINT_URL`
/// set to a loopback `http://` address. Never true for a real AWS endpoint.
#[cfg(feature = "aws")]
pub fn dynamo_available() -> bool {
    let Ok(url) = std::env::var("AWS_ENDPOINT_URL") else {
        return false;
    };
    let host = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// Whether a local DynamoDB is configured: never without the `aws` feature.
#[cfg(not(feature = "aws"))]
pub fn dynamo_available() -> bool {
    false
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(under: &std::path::Path, seed: u64) -> std::io::Result<TempDir> {
        let p = under.join(format!(
            "mlc-converge-{}-{seed}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Retries as the product does, with waits scaled down so a seed takes milliseconds: a 429
/// without `Retry-After` waits 20 ms instead of 10 s, backoffs start at 2 ms.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        deadline: None,
        max_attempts: 5,
        base_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(50),
        fallback_retry_after: Duration::from_millis(20),
    }
}

fn clients(cfg: &InstanceConfig) -> Result<(LookerClient, D365Client), String> {
    let mut ls = LookerSettings::new(
        &cfg.looker.base_url,
        SANDBOX_LOOKER_CLIENT_ID,
        Secret::new(SANDBOX_LOOKER_CLIENT_SECRET),
    )
    .map_err(|e| e.to_string())?;
    ls.retry = fast_retry();
    ls.timeout = Duration::from_secs(20);
    ls.max_requests_per_minute = 0;
    let mut ds = D365Settings::new(
        &cfg.d365.environment_url,
        &cfg.d365.authority,
        SANDBOX_TENANT,
        SANDBOX_CLIENT_ID,
        Secret::new(SANDBOX_CLIENT_SECRET),
    )
    .map_err(|e| e.to_string())?;
    ds.retry = fast_retry();
    ds.timeout = Duration::from_secs(20);
    ds.max_requests_per_window = 0;
    Ok((
        LookerClient::new(ls).map_err(|e| e.to_string())?,
        D365Client::new(ds).map_err(|e| e.to_string())?,
    ))
}

/// The example config, pointed at the simulators and the seed's Look, with the seed's knobs.
fn config(
    looker: &LookerSim,
    d365: &D365Sim,
    s: &Scenario,
    mapping: Mapping,
) -> Result<InstanceConfig, String> {
    let mut c = InstanceConfig::from_toml(EXAMPLE).map_err(|e| e.to_string())?;
    c.looker.base_url = looker.base_url();
    c.d365.environment_url = d365.environment_url();
    c.d365.authority = d365.authority_url();
    c.d365.tenant_id = Some(SANDBOX_TENANT.into());
    c.source.look_id = Some(LOOK_ID.into());
    c.source.query = None;
    c.d365.posting = s.posting;
    c.d365.batch_operations = s.batch_operations;
    c.journal.voucher_by = s.voucher_by;
    c.journal.max_voucher_lines = s.max_voucher_lines;
    c.journal.max_journal_lines = s.max_journal_lines;
    c.balancing.style = s.balancing;
    let mut lookup: BTreeMap<String, String> = super::scenario::FEE_TYPES
        .iter()
        .map(|(fee, account)| (fee.to_string(), account.to_string()))
        .collect();
    if let (Mapping::Changed, Some(change)) = (mapping, &s.change) {
        lookup.insert(change.fee_type.into(), change.to.into());
    }
    c.account
        .as_mut()
        .ok_or("the base config has no [account]")?
        .lookup = Some(lookup);
    // Through TOML and back: the config every poster gets is one `from_toml` accepts.
    let text = toml::to_string(&c).map_err(|e| e.to_string())?;
    InstanceConfig::from_toml(&text).map_err(|e| e.to_string())
}

/// The seed's rows as Looker JSON (amounts as JSON numbers with exactly two decimals; the
/// simulator keeps numbers exact).
fn rows_json(s: &Scenario) -> String {
    let week = week_end().to_string();
    let rows: Vec<String> = s
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                r#"{{"{}":{i},"{}":"{week}","{}":"{}","{}":"{}","{}":"{}","{}":{}}}"#,
                field("row_id"),
                field("week_end_date"),
                field("channel"),
                r.channel,
                field("cost_center"),
                r.cost_center,
                field("fee_type"),
                r.fee_type,
                field("total_amount"),
                r.amount
            )
        })
        .collect();
    format!("[{}]", rows.join(","))
}

/// How to open (another connection to) a store.
enum StoreSpec {
    Sqlite(PathBuf),
    #[cfg(feature = "aws")]
    Dynamo {
        client: aws_sdk_dynamodb::Client,
        table: String,
    },
}

impl StoreSpec {
    fn open(&self) -> Result<Arc<dyn Store>, String> {
        match self {
            StoreSpec::Sqlite(p) => Ok(Arc::new(SqliteStore::open(p).map_err(|e| e.to_string())?)),
            #[cfg(feature = "aws")]
            StoreSpec::Dynamo { client, table } => Ok(Arc::new(
                crate::store::dynamodb::DynamoStore::new(client.clone(), table.clone()),
            )),
        }
    }
}

fn slot_label(s: StoreSlot) -> String {
    match s.backend {
        Backend::Sqlite => format!("sqlite#{}", s.group),
        Backend::Dynamo => format!("dynamo#{}", s.group),
    }
}

async fn make_store(slot: StoreSlot, dir: &TempDir, seed: u64) -> Result<StoreSpec, String> {
    match slot.backend {
        Backend::Sqlite => Ok(StoreSpec::Sqlite(
            dir.0.join(format!("store-{}.sqlite", slot.group)),
        )),
        #[cfg(feature = "aws")]
        Backend::Dynamo => {
            if !dynamo_available() {
                return Err("DynamoDB store requested but no local endpoint is set".into());
            }
            let client = aws_sdk_dynamodb::Client::new(&crate::aws::aws_sdk_config().await);
            let table = format!(
                "mlc-converge-{}-{seed}-{}-{:08x}",
                std::process::id(),
                slot.group,
                fastrand::u32(..)
            );
            crate::store::dynamodb::create_table_for_tests(&client, &table)
                .await
                .map_err(|e| e.to_string())?;
            Ok(StoreSpec::Dynamo { client, table })
        }
        #[cfg(not(feature = "aws"))]
        Backend::Dynamo => {
            let _ = seed;
            Err("DynamoDB store requested in a build without the `aws` feature".into())
        }
    }
}

async fn drop_store(spec: &StoreSpec) {
    match spec {
        StoreSpec::Sqlite(_) => {} // the directory goes
        #[cfg(feature = "aws")]
        StoreSpec::Dynamo { client, table } => {
            let _ = client.delete_table().table_name(table).send().await;
        }
    }
}

/// Kills the engine once, at its crash point.
struct CrashOnce {
    point: Option<CrashPoint>,
    fired: AtomicBool,
}

impl Progress for CrashOnce {
    fn crash_at(&self, point: CrashPoint) -> bool {
        self.point == Some(point) && !self.fired.swap(true, Ordering::SeqCst)
    }
}

/// The naive control's ledger: D365 is said to hold no journal for any key but the ones this
/// poster created itself, and nothing is ever deleted, so every run creates its own header and
/// writes every line (what a poster without natural keys does).
struct Naive(Box<dyn LedgerGateway>, std::sync::Mutex<Vec<String>>);

#[async_trait]
impl LedgerGateway for Naive {
    async fn create_vouchers(
        &self,
        vouchers: &[Vec<NewLedgerLine>],
        max_operations: usize,
    ) -> Result<Option<Vec<VoucherOutcome>>, LedgerError> {
        self.0.create_vouchers(vouchers, max_operations).await
    }
    async fn reference(&self, le: &str) -> Result<ReferenceData, LedgerError> {
        self.0.reference(le).await
    }
    async fn find_headers(&self, le: &str, prefix: &str) -> Result<Vec<LedgerHeader>, LedgerError> {
        let own = self.1.lock().map(|v| v.clone()).unwrap_or_default();
        Ok(self
            .0
            .find_headers(le, prefix)
            .await?
            .into_iter()
            .filter(|h| own.contains(&h.batch_number))
            .collect())
    }
    async fn create_header(
        &self,
        le: &str,
        journal_name: &str,
        description: &str,
    ) -> Result<LedgerHeader, LedgerError> {
        let h = self.0.create_header(le, journal_name, description).await?;
        if let Ok(mut own) = self.1.lock() {
            own.push(h.batch_number.clone());
        }
        Ok(h)
    }
    async fn lines(&self, le: &str, batch: &str) -> Result<Vec<LedgerLine>, LedgerError> {
        self.0.lines(le, batch).await
    }
    async fn create_line(&self, line: &NewLedgerLine) -> Result<LedgerLine, LedgerError> {
        self.0.create_line(line).await
    }
    async fn header(&self, le: &str, batch: &str) -> Result<Option<LedgerHeader>, LedgerError> {
        self.0.header(le, batch).await
    }
    async fn delete_line(&self, _: &str, _: &str, _: &str) -> Result<bool, LedgerError> {
        Err(LedgerError::Other(
            "the naive poster does not delete".into(),
        ))
    }
    async fn delete_lines_atomic(
        &self,
        _: &str,
        _: &str,
        _: &[String],
    ) -> Result<bool, LedgerError> {
        Err(LedgerError::Other(
            "the naive poster does not delete".into(),
        ))
    }
    async fn delete_header(&self, _: &str, _: &str) -> Result<bool, LedgerError> {
        Err(LedgerError::Other(
            "the naive poster does not delete".into(),
        ))
    }
}

fn ledger(d365: D365Client, naive: bool) -> Box<dyn LedgerGateway> {
    if naive {
        Box::new(Naive(Box::new(d365), Default::default()))
    } else {
        Box::new(d365)
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Posted => "posted",
        Outcome::AlreadyPosted => "already posted",
        Outcome::Previewed => "previewed",
        Outcome::Rejected => "rejected",
        Outcome::Conflict => "conflict",
        Outcome::Busy => "busy",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
        Outcome::DuplicatePosted => "duplicate posted",
        Outcome::NothingToPost => "nothing to post",
    }
}

fn short(m: Option<&str>) -> String {
    let m = m.unwrap_or("");
    let cut: String = m.chars().take(160).collect();
    if cut.len() < m.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// How one poster ended.
struct PosterEnd {
    index: usize,
    story: String,
    errors: Vec<String>,
}

/// One poster: waits its start, runs once, and (if so planned) replays its run after a crash
/// or failure.
async fn poster(
    index: usize,
    p: Poster,
    cfg: Arc<InstanceConfig>,
    store: Arc<dyn Store>,
    naive: bool,
) -> PosterEnd {
    tokio::time::sleep(Duration::from_millis(p.start_ms)).await;
    let mut story = Vec::new();
    let mut errors = Vec::new();
    let (looker, d365) = match clients(&cfg) {
        Ok(c) => c,
        Err(e) => {
            return PosterEnd {
                index,
                story: format!("no clients: {e}"),
                errors: vec![e],
            }
        }
    };
    let ledger = ledger(d365, naive);
    let progress = CrashOnce {
        point: p.crash,
        fired: AtomicBool::new(false),
    };
    let engine = Engine {
        extractor: &looker,
        ledger: ledger.as_ref(),
        store: store.as_ref(),
        progress: &progress,
    };
    let lease = chrono::Duration::milliseconds(p.lease_ms as i64);
    let opts = crate::engine::RunOptions {
        run_date: run_date(),
        trigger: "converge".into(),
        mode: Mode::Post,
        lease,
        deadline: None,
        supersede: false,
    };
    let to_replay = match engine.run(&cfg, &opts).await {
        Ok(r) => {
            story.push(format!(
                "{} {} ({})",
                outcome_name(r.outcome),
                r.run.run_id,
                short(r.run.message.as_deref())
            ));
            matches!(r.outcome, Outcome::Failed | Outcome::Interrupted).then_some(r.run.run_id)
        }
        Err(EngineError::Crashed(at)) => {
            story.push(format!("crashed at {at:?}"));
            // As an operator would: the newest unfinished run of this store.
            match store.list_runs(None, 50).await {
                Ok(runs) => runs
                    .into_iter()
                    .find(|r| !r.status.is_final())
                    .map(|r| r.run_id),
                Err(e) => {
                    errors.push(format!("listing runs after the crash: {e}"));
                    None
                }
            }
        }
        Err(e) => {
            story.push(format!("engine error: {e}"));
            errors.push(e.to_string());
            None
        }
    };
    if let (true, Some(run_id)) = (p.replay_on_failure, to_replay) {
        match engine.replay(&cfg, &run_id, lease).await {
            Ok(r) => story.push(format!(
                "replay of {run_id}: {} ({})",
                outcome_name(r.outcome),
                short(r.run.message.as_deref())
            )),
            Err(EngineError::Crashed(at)) => {
                story.push(format!("replay of {run_id}: crashed at {at:?}"))
            }
            // Refused (busy, not validated, not replayable): nothing written, nothing claimed.
            Err(EngineError::Config(m)) => {
                story.push(format!("replay of {run_id} refused: {}", short(Some(&m))))
            }
            Err(e) => {
                story.push(format!("replay of {run_id}: engine error: {e}"));
                errors.push(e.to_string());
            }
        }
    }
    PosterEnd {
        index,
        story: story.join(" -> "),
        errors,
    }
}

fn arm(d365: &D365Sim, kind: FaultKind) {
    match kind {
        FaultKind::Throttle { n, retry_after } => {
            d365.throttle_next(n, retry_after.then_some(0));
        }
        FaultKind::Write { n, status, commit } => d365.fail_next_writes(n, status, commit),
        FaultKind::Batch { n, status, commit } => d365.fail_next_batches(n, status, commit),
        FaultKind::Latency { ms } => d365.set_latency(Duration::from_millis(ms)),
    }
}

fn clear_faults(d365: &D365Sim) {
    d365.throttle_next(0, None);
    d365.fail_next_writes(0, 0, false);
    d365.fail_next_batches(0, 0, false);
    d365.set_latency(Duration::ZERO);
}

/// Arms the faults with a mid-run trigger when it fires, until `done`.
async fn drive_faults(d365: &D365Sim, s: &Scenario, started: Instant, done: &AtomicBool) {
    let mut pending: Vec<_> = s
        .faults
        .iter()
        .filter(|f| f.trigger != Trigger::Start)
        .copied()
        .collect();
    while !pending.is_empty() && !done.load(Ordering::SeqCst) {
        let header = !d365.headers().is_empty();
        pending.retain(|f| {
            let fire = match f.trigger {
                Trigger::Start => true,
                Trigger::AfterHeader => header,
                Trigger::AfterMs(ms) => started.elapsed() >= Duration::from_millis(ms),
            };
            if fire {
                arm(d365, f.kind);
            }
            !fire
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Which config the final run uses: the one whose mapping D365 holds, or the newest one when
/// D365 holds neither.
/// The mapping D365's lines show, and whether they show it (a line of the changed fee type).
fn settle_mapping(s: &Scenario, lines: &[SimLine]) -> (Mapping, bool) {
    let Some(c) = &s.change else {
        return (Mapping::Base, true);
    };
    let holds = |account: &str| {
        lines.iter().any(|l| {
            l.text.contains(c.fee_type) && l.account_display.split('-').next() == Some(account)
        })
    };
    if holds(c.from) {
        (Mapping::Base, true)
    } else {
        (Mapping::Changed, holds(c.to))
    }
}

/// The two configs of a seed.
struct Configs {
    base: Arc<InstanceConfig>,
    changed: Arc<InstanceConfig>,
}

impl Configs {
    fn of(&self, m: Mapping) -> Arc<InstanceConfig> {
        match m {
            Mapping::Base => self.base.clone(),
            Mapping::Changed => self.changed.clone(),
        }
    }
}

/// Runs the scenario and checks it.
pub(super) async fn run(s: Scenario, opts: &Options) -> SeedReport {
    let t0 = Instant::now();
    let mut violations = Vec::new();
    let mut outcomes = Vec::new();
    let (headers, lines) = match run_inner(&s, opts, &mut violations, &mut outcomes).await {
        Ok(hl) => hl,
        Err(e) => {
            violations.push(Violation::EngineError {
                poster: "harness".into(),
                error: e,
            });
            (0, 0)
        }
    };
    SeedReport {
        scenario: s,
        violations,
        outcomes,
        d365_headers: headers,
        d365_lines: lines,
        elapsed: t0.elapsed(),
    }
}

async fn run_inner(
    s: &Scenario,
    opts: &Options,
    violations: &mut Vec<Violation>,
    outcomes: &mut Vec<String>,
) -> Result<(usize, usize), String> {
    let dir = TempDir::new(&opts.work_dir, s.seed).map_err(|e| format!("temp dir: {e}"))?;
    let looker = LookerSim::start(LookerSeed::empty())
        .await
        .map_err(|e| format!("looker sim: {e}"))?;
    let dimensions: Vec<String> = [
        "row_id",
        "week_end_date",
        "channel",
        "cost_center",
        "fee_type",
    ]
    .iter()
    .map(|f| field(f))
    .collect();
    let dimensions: Vec<&str> = dimensions.iter().map(String::as_str).collect();
    looker.add_explore(
        "finance",
        VIEW,
        &dimensions,
        &[&field("total_amount")],
        &rows_json(s),
    );
    let mut filters = BTreeMap::new();
    filters.insert(field("week_end_date"), week_end().to_string());
    looker.add_look(
        LOOK_ID,
        "Convergence simulation",
        InlineQuery {
            model: "finance".into(),
            explore: VIEW.into(),
            fields: [
                "row_id",
                "week_end_date",
                "channel",
                "cost_center",
                "fee_type",
                "total_amount",
            ]
            .iter()
            .map(|f| field(f))
            .collect(),
            filters,
            sorts: vec![field("row_id")],
            query_timezone: Some("UTC".into()),
        },
    );
    let d365 = D365Sim::start(D365Seed::demo(run_date()))
        .await
        .map_err(|e| format!("d365 sim: {e}"))?;
    let configs = Configs {
        base: Arc::new(config(&looker, &d365, s, Mapping::Base)?),
        changed: Arc::new(config(&looker, &d365, s, Mapping::Changed)?),
    };

    // Stores: one per slot; each poster opens its own connection / client to its slot's.
    let mut specs: BTreeMap<StoreSlot, StoreSpec> = BTreeMap::new();
    for p in &s.posters {
        if let std::collections::btree_map::Entry::Vacant(e) = specs.entry(p.store) {
            e.insert(make_store(p.store, &dir, s.seed).await?);
        }
    }
    let result = chaos_settle_check(
        s,
        opts,
        &d365,
        &specs,
        &dir,
        &configs,
        Found {
            violations,
            outcomes,
        },
    )
    .await;
    for spec in specs.values() {
        drop_store(spec).await;
    }
    result
}

/// Where a seed's checks put what they find.
struct Found<'a> {
    violations: &'a mut Vec<Violation>,
    outcomes: &'a mut Vec<String>,
}

async fn chaos_settle_check(
    s: &Scenario,
    opts: &Options,
    d365: &D365Sim,
    specs: &BTreeMap<StoreSlot, StoreSpec>,
    dir: &TempDir,
    configs: &Configs,
    found: Found<'_>,
) -> Result<(usize, usize), String> {
    let Found {
        violations,
        outcomes,
    } = found;
    // --- The concurrent posters, under faults.
    let mut handles = Vec::new();
    for p in &s.posters {
        handles.push(specs[&p.store].open()?);
    }
    d365.set_latency(Duration::from_millis(s.latency_ms));
    for f in s.faults.iter().filter(|f| f.trigger == Trigger::Start) {
        arm(d365, f.kind);
    }
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let deferred = s.change.as_ref().is_some_and(|c| c.after_base);
    let spawn = |set: &mut JoinSet<PosterEnd>, i: usize| {
        let p = s.posters[i].clone();
        set.spawn(poster(
            i,
            p.clone(),
            configs.of(p.mapping),
            handles[i].clone(),
            s.naive,
        ));
    };
    let posters = async {
        let mut ends = Vec::new();
        let mut set = JoinSet::new();
        let (first, later): (Vec<usize>, Vec<usize>) =
            (0..s.posters.len()).partition(|&i| !deferred || s.posters[i].mapping == Mapping::Base);
        for &i in &first {
            spawn(&mut set, i);
        }
        while let Some(r) = set.join_next().await {
            ends.push(r);
        }
        for &i in &later {
            spawn(&mut set, i);
        }
        while let Some(r) = set.join_next().await {
            ends.push(r);
        }
        done.store(true, Ordering::SeqCst);
        ends
    };
    let chaos = async { tokio::join!(posters, drive_faults(d365, s, started, &done)).0 };
    match tokio::time::timeout(opts.seed_timeout, chaos).await {
        Ok(ends) => {
            let mut ends: Vec<PosterEnd> = ends
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|e| PosterEnd {
                        index: usize::MAX,
                        story: format!("task failed: {e}"),
                        errors: vec![format!("poster task failed: {e}")],
                    })
                })
                .collect();
            ends.sort_by_key(|e| e.index);
            for e in ends {
                let who = match s.posters.get(e.index) {
                    Some(p) => format!("poster {} ({p})", e.index),
                    None => "a poster".into(),
                };
                for err in &e.errors {
                    violations.push(Violation::EngineError {
                        poster: who.clone(),
                        error: err.clone(),
                    });
                }
                outcomes.push(format!("{who}: {}", e.story));
            }
        }
        Err(_) => violations.push(Violation::Timeout {
            detail: format!(
                "the posters did not all stop within {:?}",
                opts.seed_timeout
            ),
        }),
    }

    // --- Settle: no faults, one final run with a fresh store.
    clear_faults(d365);
    // The final run uses the mapping D365's journal holds. When its lines do not tell (a
    // crashed poster left only lines both mappings share, or only a header), the journal's
    // header fingerprint decides, which the harness learns by running once with the likelier
    // mapping and, if that is a conflict, once with the other (a conflict writes nothing).
    let (mapping, decisive) = settle_mapping(s, &d365.lines());
    let opts_final = crate::engine::RunOptions {
        run_date: run_date(),
        trigger: "converge-final".into(),
        mode: Mode::Post,
        lease: chrono::Duration::minutes(5),
        deadline: None,
        supersede: false,
    };
    let mut mapping = mapping;
    let mut settled;
    let mut last_store;
    let mut attempt = 0;
    loop {
        let cfg = configs.of(mapping);
        let settle_path = dir.0.join(format!("settle{attempt}.sqlite"));
        let settle_store = SqliteStore::open(&settle_path).map_err(|e| e.to_string())?;
        let (looker_client, d365_client) = clients(&cfg)?;
        let ledger = ledger(d365_client, s.naive);
        let engine = Engine {
            extractor: &looker_client,
            ledger: ledger.as_ref(),
            store: &settle_store,
            progress: &NoProgress,
        };
        settled = tokio::time::timeout(opts.seed_timeout, engine.run(&cfg, &opts_final)).await;
        let conflict = matches!(&settled, Ok(Ok(r)) if r.outcome == Outcome::Conflict);
        last_store = Some(settle_store);
        if decisive || attempt > 0 || !conflict || s.change.is_none() {
            break;
        }
        attempt += 1;
        mapping = match mapping {
            Mapping::Base => Mapping::Changed,
            Mapping::Changed => Mapping::Base,
        };
    }
    let mapping_name = match mapping {
        Mapping::Base => "base mapping",
        Mapping::Changed => "changed mapping",
    };
    match settled {
        Ok(Ok(r)) => {
            outcomes.push(format!(
                "final run ({mapping_name}): {} {} ({})",
                outcome_name(r.outcome),
                r.run.run_id,
                short(r.run.message.as_deref())
            ));
            if !matches!(r.outcome, Outcome::Posted | Outcome::AlreadyPosted) {
                violations.push(Violation::NotSettled {
                    detail: format!(
                        "({mapping_name}) ended {}: {}",
                        outcome_name(r.outcome),
                        r.run.message.unwrap_or_default()
                    ),
                });
            }
        }
        Ok(Err(e)) => {
            outcomes.push(format!("final run ({mapping_name}): engine error: {e}"));
            violations.push(Violation::NotSettled {
                detail: format!("({mapping_name}) stopped: {e}"),
            });
        }
        Err(_) => violations.push(Violation::Timeout {
            detail: format!("the final run did not end within {:?}", opts.seed_timeout),
        }),
    }

    // --- Every claim of every store, and D365's own state.
    let mut claims = Vec::new();
    let mut stores: Vec<(String, Arc<dyn Store>)> = Vec::new();
    for (slot, spec) in specs {
        stores.push((slot_label(*slot), spec.open()?));
    }
    if let Some(settle_store) = last_store {
        stores.push(("final run's store".into(), Arc::new(settle_store)));
    }
    for (label, store) in &stores {
        let runs = store
            .list_runs(None, 10_000)
            .await
            .map_err(|e| format!("{label}: {e}"))?;
        for run in runs {
            let lines = store
                .lines(&run.run_id)
                .await
                .map_err(|e| format!("{label}: {e}"))?;
            claims.push(RunClaim {
                store: label.clone(),
                run,
                lines,
            });
        }
    }
    let state = D365State {
        headers: d365.headers(),
        lines: d365.lines(),
    };
    let expect = Expectation {
        looker_total: s.looker_total(),
        balancing_account: BALANCING_ACCOUNT.into(),
        delimiter: '-',
    };
    violations.extend(check(&state, &expect, &claims));
    Ok((state.headers.len(), state.lines.len()))
}
