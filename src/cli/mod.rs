//! The `ml-connector` command line: demo, run, preview, check, replay, runs, show, reverse,
//! trace.
//!
//! A thin adapter: it loads the instance config and credentials, builds the clients and the
//! store, runs the engine and renders what happened. Exit codes: 0 done (including "already
//! posted"), 2 rejected by validation (nothing written), 1 any other failure.

#[cfg(feature = "sandbox")]
mod demo;
mod render;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};

use crate::d365::{D365Client, D365Settings};
use crate::domain::config::{ExtractMode, InstanceConfig, Source};
use crate::domain::journal::LedgerAccount;
use crate::engine::{Engine, Mode, Progress, RunOptions};
use crate::looker::{ExtractPath, LookerClient, LookerSettings};
use crate::secrets::Credentials;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

/// Posts numbers from a Looker model into the Dynamics 365 F&O general ledger as balanced,
/// audited journals.
#[derive(Debug, Parser)]
#[command(name = "ml-connector", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Audit store (SQLite file).
    #[arg(
        long,
        global = true,
        env = "MLC_STORE",
        default_value = ".ml-connector/audit.sqlite"
    )]
    store: PathBuf,
    /// Use the deployed DynamoDB table (audit trail, configs, replay requests) instead of the
    /// local SQLite store. Needs AWS credentials in the environment.
    #[arg(long, global = true, env = "MLC_TABLE")]
    table: Option<String>,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Args)]
struct Endpoints {
    /// Override the config's Looker host (plain http only for loopback).
    #[arg(long, env = "MLC_LOOKER_URL")]
    looker_url: Option<String>,
    /// Override the config's D365 environment URL.
    #[arg(long, env = "MLC_D365_URL")]
    d365_url: Option<String>,
    /// Override the config's Entra ID authority.
    #[arg(long, env = "MLC_ENTRA_AUTHORITY")]
    entra_authority: Option<String>,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// Instance configuration (TOML).
    #[arg(long, short)]
    config: PathBuf,
    #[command(flatten)]
    endpoints: Endpoints,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the built-in sandbox and post the example weekly fee journal end to end.
    Demo,
    /// Keep the sandbox (Looker, D365, Entra simulators) running on loopback until Ctrl-C, and
    /// write a config pointing at it; try `check`, `preview` and `run` against it.
    Sandbox {
        /// Where to write the example config with the sandbox's URLs.
        #[arg(long, default_value = ".ml-connector/sandbox.toml")]
        write_config: PathBuf,
    },
    /// One sync now: extract, map, validate, post, record.
    Run {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Run as if today were this date (the period is derived from it).
        #[arg(long)]
        run_date: Option<NaiveDate>,
        /// When D365 holds an *unposted* journal for this data under the same key but with
        /// other lines (the mapping changed), delete it whole and post this one instead.
        /// Without it such a run is a CONFLICT and writes nothing. Posted journals are never
        /// replaced: reverse them.
        #[arg(long)]
        supersede: bool,
    },
    /// Everything but the write: the exact journal lines and the validation report.
    Preview {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[arg(long)]
        run_date: Option<NaiveDate>,
    },
    /// Log in to both systems and check the config fits them (source, columns, journal name,
    /// accounts, dimension format).
    Check {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Re-post what a failed or interrupted run did not get into D365, from its audited lines.
    /// With `--request` (and `--table`), ask the deployed replay Lambda to do it instead.
    Replay {
        run_id: String,
        /// Instance configuration (TOML); not needed with `--request`.
        #[arg(long, short, required_unless_present = "request")]
        config: Option<PathBuf>,
        #[command(flatten)]
        endpoints: Endpoints,
        /// Write a replay request item for the deployed replay Lambda (needs `--table`).
        #[arg(long)]
        request: bool,
    },
    /// Instance configuration kept in the deployed table.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// List recent runs from the audit store.
    Runs {
        #[arg(long)]
        instance: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// A run's audit trail: totals, journal lines, source rows, events, and its reconciliation
    /// (Looker → mapped → residue → D365). With `--config`, D365 is read back now and the new
    /// reconciliation is stored with the run; without it, the last stored one is shown.
    Show {
        run_id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Instance configuration (TOML): reconcile against D365 now.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        endpoints: Endpoints,
    },
    /// Undo a run's journals: a posted journal gets an inverse journal (same accounts and
    /// dimensions, amounts negated, dated in the next open period), recorded as its own run
    /// linked to the original. An unposted journal is refused unless `--delete-unposted`, which
    /// deletes the connector's lines instead. Posted entries are never edited. Idempotent.
    Reverse {
        run_id: String,
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Delete the connector's lines (and the journal) where it is still unposted in D365.
        #[arg(long)]
        delete_unposted: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Where a D365 journal line came from: REF is the reference at the start of its Text
    /// (e.g. `e809d1456a-161ac2.L0007`) → run, Look/query and filters, source row(s), config
    /// version.
    Trace {
        reference: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Validate FILE and make it the instance's current configuration (needs `--table`).
    /// Runs record the config version they used.
    Push { file: PathBuf },
}

/// Parses arguments, runs the command and returns the process exit code.
pub async fn main() -> i32 {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let store_path = cli.global.store.clone();
    let table = cli.global.table.clone();
    match cli.command {
        Command::Demo => demo_command(&store_path).await,
        Command::Sandbox { write_config } => sandbox_command(&write_config).await,
        Command::Run {
            cfg,
            run_date,
            supersede,
        } => {
            let mode = Mode::Post;
            run_command(
                &store_path,
                table.as_deref(),
                &cfg,
                run_date,
                (mode, supersede),
            )
            .await
        }
        Command::Preview { cfg, run_date } => {
            let mode = Mode::Preview;
            run_command(&store_path, table.as_deref(), &cfg, run_date, (mode, false)).await
        }
        Command::Check { cfg } => check_command(&cfg).await,
        Command::Replay {
            run_id,
            request: true,
            ..
        } => request_replay(table.as_deref(), &run_id).await,
        Command::Replay {
            run_id,
            config,
            endpoints,
            request: false,
        } => {
            let cfg = ConfigArgs {
                config: config.context("--config is required for a local replay")?,
                endpoints,
            };
            replay_command(&store_path, table.as_deref(), &cfg, &run_id).await
        }
        Command::Config {
            action: ConfigAction::Push { file },
        } => config_push(table.as_deref(), &file).await,
        Command::Runs { instance, limit } => {
            let store = any_store(&store_path, table.as_deref()).await?;
            let runs = store.list_runs(instance.as_deref(), limit).await?;
            print!("{}", render::runs_table(&runs));
            Ok(0)
        }
        Command::Show {
            run_id,
            json,
            config,
            endpoints,
        } => {
            let cfg = config.map(|config| ConfigArgs { config, endpoints });
            show_command(&store_path, table.as_deref(), &run_id, json, cfg.as_ref()).await
        }
        Command::Reverse {
            run_id,
            cfg,
            delete_unposted,
            json,
        } => {
            reverse_command(
                &store_path,
                table.as_deref(),
                &cfg,
                &run_id,
                delete_unposted,
                json,
            )
            .await
        }
        Command::Trace { reference, json } => {
            let store = any_store(&store_path, table.as_deref()).await?;
            match crate::controls::trace(store.as_ref(), &reference).await {
                Ok(t) if json => println!("{}", serde_json::to_string_pretty(&t)?),
                Ok(t) => print!("{}", t.render()),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(1);
                }
            }
            Ok(0)
        }
    }
}

/// `show`: the audit trail plus the reconciliation (fresh with `--config`, else the stored one).
async fn show_command(
    store_path: &Path,
    table: Option<&str>,
    run_id: &str,
    json: bool,
    cfg: Option<&ConfigArgs>,
) -> anyhow::Result<i32> {
    let store = any_store(store_path, table).await?;
    let Some(run) = store.get_run(run_id).await? else {
        eprintln!("error: run {run_id} not found in {}", store_path.display());
        return Ok(1);
    };
    let reconciliation = match cfg {
        Some(args) => {
            let (cfg, clients) = load_instance(args)?;
            match crate::controls::reconcile(store.as_ref(), &clients.d365, &cfg, run_id).await {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("error: reconciliation of run {run_id} failed: {e}");
                    return Ok(1);
                }
            }
        }
        None => crate::controls::reconcile::stored(store.as_ref(), run_id).await?,
    };
    // A fresh reconciliation that finds differences is a failed check (exit 1), so a script
    // or a month-end checklist cannot read "shown" as "ties out".
    let differs = cfg.is_some() && reconciliation.as_ref().is_some_and(|r| !r.is_clean());
    let rows = store.source_rows(run_id).await?;
    let lines = store.lines(run_id).await?;
    let events = store.events(run_id).await?;
    if json {
        let v = serde_json::json!({
            "run": run,
            "source_rows": rows,
            "lines": lines,
            "events": events,
            "reconciliation": reconciliation,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render::show_run(&run, &rows, &lines, &events));
        println!();
        match &reconciliation {
            Some(r) => print!("{}", r.render()),
            None => println!(
                "Reconciliation: none stored yet; run `ml-connector show {run_id} --config FILE` to read D365 back and reconcile"
            ),
        }
    }
    Ok(if differs { 1 } else { 0 })
}

/// `reverse`: inverse journal for posted journals, or deletion of unposted ones on request.
async fn reverse_command(
    store_path: &Path,
    table: Option<&str>,
    args: &ConfigArgs,
    run_id: &str,
    delete_unposted: bool,
    json: bool,
) -> anyhow::Result<i32> {
    use crate::controls::{ControlsError, ReverseOptions};
    let (cfg, clients) = load_instance(args)?;
    let store = any_store(store_path, table).await?;
    let opts = ReverseOptions {
        delete_unposted,
        lease: CLI_LEASE,
    };
    match crate::controls::reverse(store.as_ref(), &clients.d365, &cfg, run_id, &opts).await {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{}", r.message);
                if let Some(rev) = &r.reversal {
                    println!(
                        "The reversal journal(s) are left unposted: finance reviews and posts them in D365 (General ledger > Journal entries > General journals). Audit trail: ml-connector show {} --store {}",
                        rev.run_id,
                        store_path.display()
                    );
                }
            }
            Ok(0)
        }
        Err(ControlsError::Refused(m)) => {
            eprintln!("refused: {m}");
            Ok(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

#[cfg(feature = "sandbox")]
async fn demo_command(store: &Path) -> anyhow::Result<i32> {
    demo::run(store).await
}

#[cfg(feature = "sandbox")]
async fn sandbox_command(config_out: &Path) -> anyhow::Result<i32> {
    demo::serve(config_out).await
}

#[cfg(not(feature = "sandbox"))]
async fn sandbox_command(_config_out: &Path) -> anyhow::Result<i32> {
    Err(anyhow::anyhow!(
        "this build has no sandbox; build with the default `sandbox` feature"
    ))
}

#[cfg(not(feature = "sandbox"))]
async fn demo_command(_store: &Path) -> anyhow::Result<i32> {
    Err(anyhow::anyhow!(
        "this build has no sandbox; build with the default `sandbox` feature to run the demo"
    ))
}

fn open_store(path: &Path) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(path).with_context(|| format!("opening audit store {}", path.display()))
}

/// The local SQLite store, or the deployed DynamoDB table when `--table` is given.
async fn any_store(path: &Path, table: Option<&str>) -> anyhow::Result<Box<dyn Store>> {
    match table {
        None => Ok(Box::new(open_store(path)?)),
        Some(t) => dynamo_store(t).await.map(|s| Box::new(s) as Box<dyn Store>),
    }
}

#[cfg(feature = "aws")]
async fn dynamo_store(table: &str) -> anyhow::Result<crate::store::dynamodb::DynamoStore> {
    let sdk = crate::aws::aws_sdk_config().await;
    Ok(crate::store::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        table,
    ))
}

#[cfg(not(feature = "aws"))]
async fn dynamo_store(_table: &str) -> anyhow::Result<crate::store::sqlite::SqliteStore> {
    Err(anyhow::anyhow!(
        "this build has no AWS support; build with the default `aws` feature to use --table"
    ))
}

/// `config push`: validate, then store as the instance's current config.
async fn config_push(table: Option<&str>, file: &Path) -> anyhow::Result<i32> {
    let table = table
        .context("config push writes to the deployed table: pass --table NAME (or MLC_TABLE)")?;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading config {}", file.display()))?;
    let cfg = match InstanceConfig::from_toml(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: config {} was not accepted: {e}", file.display());
            return Ok(2);
        }
    };
    push_config(table, &cfg, &text).await?;
    println!(
        "config of instance `{}` is now version {} (table {table})",
        cfg.instance,
        cfg.version()
    );
    Ok(0)
}

#[cfg(feature = "aws")]
async fn push_config(table: &str, cfg: &InstanceConfig, text: &str) -> anyhow::Result<()> {
    use crate::store::ConfigStore;
    let store = dynamo_store(table).await?;
    store
        .put_config(&cfg.instance, &cfg.version(), text)
        .await?;
    Ok(())
}

#[cfg(not(feature = "aws"))]
async fn push_config(_table: &str, _cfg: &InstanceConfig, _text: &str) -> anyhow::Result<()> {
    Err(anyhow::anyhow!("this build has no AWS support"))
}

/// `replay RUN_ID --request`: the deployed replay Lambda picks the request up from the stream.
#[cfg(feature = "aws")]
async fn request_replay(table: Option<&str>, run_id: &str) -> anyhow::Result<i32> {
    use crate::store::ReplayRequests;
    let table = table.context(
        "replay --request writes to the deployed table: pass --table NAME (or MLC_TABLE)",
    )?;
    let store = dynamo_store(table).await?;
    if store.get_run(run_id).await?.is_none() {
        eprintln!("error: run {run_id} is not in table {table}");
        return Ok(1);
    }
    let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    store.request_replay(run_id, &who).await?;
    println!("replay of run {run_id} requested; follow it with `ml-connector show {run_id} --table {table}`");
    Ok(0)
}

#[cfg(not(feature = "aws"))]
async fn request_replay(_table: Option<&str>, _run_id: &str) -> anyhow::Result<i32> {
    Err(anyhow::anyhow!("this build has no AWS support"))
}

/// Loads and checks an instance config file.
pub fn load_config(path: &Path) -> anyhow::Result<InstanceConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    InstanceConfig::from_toml(&text).with_context(|| format!("config {}", path.display()))
}

/// Applies endpoint overrides from flags/environment to a config.
fn apply_endpoints(cfg: &mut InstanceConfig, e: &Endpoints) {
    if let Some(u) = &e.looker_url {
        cfg.looker.base_url = u.clone();
    }
    if let Some(u) = &e.d365_url {
        cfg.d365.environment_url = u.clone();
    }
    if let Some(u) = &e.entra_authority {
        cfg.d365.authority = u.clone();
    }
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
pub fn build_clients(cfg: &InstanceConfig, creds: &Credentials) -> anyhow::Result<Clients> {
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

fn load_instance(args: &ConfigArgs) -> anyhow::Result<(InstanceConfig, Clients)> {
    let mut cfg = load_config(&args.config)?;
    apply_endpoints(&mut cfg, &args.endpoints);
    let cred_file = cfg.credentials_file.as_ref().map(|f| {
        let p = PathBuf::from(f);
        if p.is_relative() {
            args.config
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join(p)
        } else {
            p
        }
    });
    let creds = Credentials::load(cred_file.as_deref(), cfg.d365.tenant_id.as_deref(), |k| {
        std::env::var(k).ok()
    })?;
    let clients = build_clients(&cfg, &creds)?;
    Ok((cfg, clients))
}

/// Steps on stderr; a live line counter when stderr is a terminal.
pub struct TerminalProgress {
    tty: bool,
    last: AtomicUsize,
}

impl TerminalProgress {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last: AtomicUsize::new(0),
        }
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for TerminalProgress {
    fn step(&self, message: &str) {
        eprintln!("→ {message}");
    }
    fn line_posted(&self, done: usize, total: usize) {
        if self.tty {
            eprint!("\r  journal lines done: {done}/{total}");
            if done == total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        } else if done == total || done.saturating_sub(self.last.load(Ordering::Relaxed)) >= 500 {
            self.last
                .store(if done == total { 0 } else { done }, Ordering::Relaxed);
            eprintln!("  journal lines done: {done}/{total}");
        }
    }
}

fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

/// The period lock's lease of CLI runs: short, because it is renewed while the run posts (a
/// crashed run's lock then expires within it). See [`crate::engine::lease::DEFAULT_LEASE`].
pub(crate) const CLI_LEASE: chrono::Duration = crate::engine::lease::DEFAULT_LEASE;

async fn run_command(
    store_path: &Path,
    table: Option<&str>,
    args: &ConfigArgs,
    run_date: Option<NaiveDate>,
    (mode, supersede): (Mode, bool),
) -> anyhow::Result<i32> {
    let (cfg, clients) = load_instance(args)?;
    let store = any_store(store_path, table).await?;
    let progress = TerminalProgress::new();
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: store.as_ref(),
        progress: &progress,
    };
    let opts = RunOptions {
        run_date: run_date.unwrap_or_else(today),
        trigger: "cli".into(),
        mode,
        lease: CLI_LEASE,
        deadline: None,
        supersede,
    };
    let report = engine.run(&cfg, &opts).await?;
    print!("{}", render::run_report(&report, store_path));
    Ok(report.outcome.exit_code())
}

async fn replay_command(
    store_path: &Path,
    table: Option<&str>,
    args: &ConfigArgs,
    run_id: &str,
) -> anyhow::Result<i32> {
    let (cfg, clients) = load_instance(args)?;
    let store = any_store(store_path, table).await?;
    let progress = TerminalProgress::new();
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: store.as_ref(),
        progress: &progress,
    };
    let report = engine.replay(&cfg, run_id, CLI_LEASE).await?;
    print!("{}", render::run_report(&report, store_path));
    Ok(report.outcome.exit_code())
}

/// `check`: connect to both systems and confirm the config fits them, without writing.
async fn check_command(args: &ConfigArgs) -> anyhow::Result<i32> {
    let (cfg, clients) = load_instance(args)?;
    let mut failures = 0usize;
    let mut problems = 0usize;
    let ok = |m: &str| println!("  ok    {m}");
    let mut bad = |m: &str, hard: bool| {
        println!("  FAIL  {m}");
        if hard {
            failures += 1;
        } else {
            problems += 1;
        }
    };

    println!("Looker ({})", crate::http::redact_url(&cfg.looker.base_url));
    match clients.looker.login_check().await {
        Ok(()) => ok("logged in with the API client id/secret"),
        Err(e) => bad(&e.to_string(), true),
    }
    let period = cfg.period.kind.period_for(today());
    let extract = match cfg.source.resolve()? {
        Source::Look(id) => match clients.looker.look(id).await {
            Ok(info) => {
                ok(&format!("Look {id} \"{}\" exists", info.title));
                clients.looker.run_look(id).await
            }
            Err(e) => Err(e),
        },
        Source::Query(q) => {
            match clients.looker.explore_fields(&q.model, &q.explore).await {
                Ok(fields) => {
                    ok(&format!("explore {}/{} exists", q.model, q.explore));
                    for f in &q.fields {
                        if !fields.contains(f) {
                            bad(
                                &format!("field `{f}` is not in explore {}/{}", q.model, q.explore),
                                false,
                            );
                        }
                    }
                }
                Err(e) => bad(&e.to_string(), true),
            }
            match cfg.query_for_period(&period) {
                Some(q) => clients.looker.run_inline_query(&q).await,
                None => Err(crate::looker::LookerError::Config("no query".into())),
            }
        }
    };
    let mut legal_entities: Vec<String> = Vec::new();
    match &extract {
        Ok(x) => {
            ok(&format!(
                "source runs: {} rows for {}",
                x.rows.len(),
                period.label
            ));
            let cols: Vec<&str> = if x.columns.is_empty() {
                x.rows
                    .first()
                    .map(|r| r.column_names().collect())
                    .unwrap_or_default()
            } else {
                x.columns.iter().map(String::as_str).collect()
            };
            for c in cfg.referenced_columns() {
                if cols.is_empty() || cols.contains(&c.as_str()) {
                    ok(&format!("column `{c}` present"));
                } else {
                    bad(
                        &format!("column `{c}` used by the mapping is not in the result"),
                        false,
                    );
                }
            }
            if let Some(le) = &cfg.journal.legal_entity.constant {
                legal_entities.push(le.to_ascii_lowercase());
            } else if let Some(col) = &cfg.journal.legal_entity.column {
                for r in &x.rows {
                    if let Some(v) = r.get(col) {
                        let v = v.display();
                        let v = cfg
                            .journal
                            .legal_entity
                            .lookup
                            .as_ref()
                            .and_then(|t| t.get(&v).cloned())
                            .unwrap_or(v)
                            .to_ascii_lowercase();
                        if !legal_entities.contains(&v) {
                            legal_entities.push(v);
                        }
                    }
                }
            }
        }
        Err(e) => bad(&format!("source does not run: {e}"), true),
    }

    println!(
        "D365 ({})",
        crate::http::redact_url(&cfg.d365.environment_url)
    );
    match clients.d365.token_check().await {
        Ok(()) => ok("token obtained from Entra ID and accepted by the environment"),
        Err(e) => bad(&e.to_string(), true),
    }
    for le in &legal_entities {
        match clients.d365.load_reference(le).await {
            Ok(r) => {
                ok(&format!(
                    "{le}: ledger format {} ({})",
                    r.format.name,
                    r.format.segments.join(&r.format.delimiter.to_string())
                ));
                match r.journal_names.get(&cfg.journal.journal_name) {
                    Some(j) => ok(&format!(
                        "{le}: journal name {} ({}){}",
                        j.name,
                        j.description,
                        if j.workflow_approval {
                            ", workflow approval required"
                        } else {
                            ""
                        }
                    )),
                    None => bad(
                        &format!(
                            "{le}: journal name `{}` does not exist",
                            cfg.journal.journal_name
                        ),
                        false,
                    ),
                }
                for dim in cfg.dimension_names() {
                    if !r.format.segments.iter().any(|s| s == dim) {
                        bad(
                            &format!("{le}: dimension `{dim}` is not in the active ledger format"),
                            false,
                        );
                    }
                }
                let mut accounts: Vec<(String, String)> = Vec::new();
                let mut rules = cfg.account_rules();
                rules.push(("balancing.account".into(), &cfg.balancing.account));
                for (key, src) in rules {
                    if let Some(c) = &src.constant {
                        accounts.push((key.clone(), c.clone()));
                    }
                    if let Some(t) = &src.lookup {
                        accounts.extend(t.values().map(|v| (format!("{key}.lookup"), v.clone())));
                    }
                }
                if let Some(a) = &cfg.rounding.account {
                    accounts.push(("rounding.account".into(), a.clone()));
                }
                for (key, a) in accounts {
                    match r.main_accounts.get(&a) {
                        Some(m) if !m.suspended => {
                            ok(&format!("{le}: `{key}` main account {a} ({})", m.name))
                        }
                        Some(_) => bad(
                            &format!("{le}: `{key}` main account {a} is suspended"),
                            false,
                        ),
                        None => bad(
                            &format!("{le}: `{key}` main account {a} does not exist"),
                            false,
                        ),
                    }
                }
                let sample = LedgerAccount::new("000000");
                ok(&format!(
                    "{le}: account strings look like `{}`",
                    sample.display_value(&r.format)
                ));
            }
            Err(e) => bad(&format!("{le}: {e}"), true),
        }
    }
    println!();
    if failures > 0 {
        println!(
            "check failed: {failures} connection problem(s), {problems} configuration problem(s)"
        );
        Ok(1)
    } else if problems > 0 {
        println!("check found {problems} configuration problem(s); fix them before running");
        Ok(2)
    } else {
        println!(
            "check passed: `ml-connector preview --config {}` shows the exact journal",
            args.config.display()
        );
        Ok(0)
    }
}
