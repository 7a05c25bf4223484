//! The `ml-connector` command line: demo, run, preview, check, replay, runs, show, reverse,
//! trace.
//!
//! A thin adapter: it loads the instance config and credentials, builds the clients and the
//! store, runs the engine and renders what happened. Exit codes: 0 done (including "already
//! posted"), 2 rejected by validation (nothing written), 1 any other failure.

/// `print!` that ends quietly when stdout is closed (`ml-connector runs | head -1`) instead of
/// panicking after the work is done and recorded.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

/// `println!` that ends quietly when stdout is closed; see [`out!`].
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

#[cfg(feature = "sandbox")]
mod demo;
mod exit;
mod hints;
mod render;
mod store_path;
mod terminal;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};

use crate::domain::config::{InstanceConfig, Source};
use crate::domain::journal::LedgerAccount;
use crate::engine::{Engine, Mode, Progress, RunOptions};
use crate::secrets::Credentials;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::wiring::{build_clients, Clients};
use hints::{Hints, StoreArg};

/// Posts numbers from a Looker model into the Dynamics 365 F&O general ledger as balanced,
/// audited journals.
#[derive(Debug, Parser)]
#[command(name = "ml-connector", version, about, long_about = None, after_help = exit::TABLE)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Audit store (SQLite file). Without it: `MLC_STORE`, else the config's `store`, else
    /// `ml-connector/audit.sqlite` in the per-user data directory (e.g. ~/.local/share).
    #[arg(long, global = true, value_name = "PATH")]
    store: Option<PathBuf>,
    /// Only the result on stdout: no progress steps and no "store:" line on stderr (errors are
    /// still printed).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print table rows whole instead of cutting them at 120 characters.
    #[arg(long, global = true)]
    wide: bool,
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
    /// Instance configuration (TOML): the Looker source, the mapping and the D365 journal.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    #[command(flatten)]
    endpoints: Endpoints,
}

/// `--table`: only on the commands that can use the deployed table (not `demo`, `sandbox`,
/// `check`).
#[derive(Debug, Args)]
struct TableArg {
    /// Use the deployed DynamoDB table (audit trail, configs, replay requests) instead of the
    /// local SQLite store. Needs AWS credentials in the environment.
    #[arg(long, env = "MLC_TABLE", value_name = "TABLE")]
    table: Option<String>,
}

/// `--run-date`.
#[derive(Debug, Args)]
struct RunDate {
    /// Run as if today were this date (YYYY-MM-DD, UTC): the period is the one a scheduled run
    /// on that day covers (for `kind = "week"`, the week before it). Default: today.
    #[arg(long, value_name = "YYYY-MM-DD")]
    run_date: Option<NaiveDate>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the built-in sandbox and post the example weekly fee journal end to end.
    #[command(after_help = "Example:\n  ml-connector demo")]
    Demo,
    /// Show the Looker action "Post to Dynamics 365 journal" without AWS: the sandbox, the
    /// webhook function with its action hub on loopback, and Looker's calls (list, form, a wrong
    /// token, a dry run, the post, a redelivery).
    #[command(
        name = "action-demo",
        after_help = "Example:\n  ml-connector action-demo"
    )]
    ActionDemo,
    /// Keep the sandbox (Looker, D365, Entra simulators) running on loopback until Ctrl-C, and
    /// write a config pointing at it; try `check`, `preview` and `run` against it.
    #[command(after_help = "Example:\n  ml-connector sandbox --write-config /tmp/sandbox.toml")]
    Sandbox {
        /// Where to write the example config with the sandbox's URLs.
        #[arg(
            long,
            default_value = ".ml-connector/sandbox.toml",
            value_name = "FILE"
        )]
        write_config: PathBuf,
    },
    /// One sync now: extract, map, validate, post, record.
    #[command(
        after_help = "Examples:\n  ml-connector run --config fees.toml\n  ml-connector run --config fees.toml --run-date 2026-11-30"
    )]
    Run {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[command(flatten)]
        date: RunDate,
        /// When D365 holds an *unposted* journal for this data under the same key but with
        /// other lines (the mapping changed), delete it whole and post this one instead.
        /// Without it such a run is a CONFLICT and writes nothing. Posted journals are never
        /// replaced: reverse them.
        #[arg(long)]
        supersede: bool,
        /// Post a period that has not ended yet (or a run date in the future). Refused without
        /// it (exit 64): the period's data may still change after it is posted.
        #[arg(long)]
        allow_open_period: bool,
        /// Machine-readable output (shape in the README).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        table: TableArg,
    },
    /// Everything but the write: the exact journal lines and the validation report.
    #[command(after_help = "Example:\n  ml-connector preview --config fees.toml")]
    Preview {
        #[command(flatten)]
        cfg: ConfigArgs,
        #[command(flatten)]
        date: RunDate,
        /// Machine-readable output (shape in the README).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        table: TableArg,
    },
    /// Log in to both systems and check the config fits them (source, columns, journal name,
    /// accounts, dimension format).
    #[command(after_help = "Example:\n  ml-connector check --config fees.toml")]
    Check {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Machine-readable output: one object (shape in the README).
        #[arg(long)]
        json: bool,
    },
    /// Re-post what a failed or interrupted run did not get into D365, from its audited lines.
    /// With `--request` (and `--table`), ask the deployed replay Lambda to do it instead.
    #[command(
        after_help = "Examples:\n  ml-connector replay r-20261130060000-1a2b3c4d --config fees.toml\n  ml-connector replay r-20261130060000-1a2b3c4d --request --table ml-connector"
    )]
    Replay {
        /// The run to finish (as `run`, `runs` and notifications print it: r-…).
        run_id: String,
        /// Instance configuration (TOML); not needed with `--request`.
        #[arg(long, short, required_unless_present = "request", value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        endpoints: Endpoints,
        /// Write a replay request item for the deployed replay Lambda (needs `--table`).
        #[arg(long)]
        request: bool,
        #[command(flatten)]
        table: TableArg,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  ml-connector completions bash > ~/.local/share/bash-completion/completions/ml-connector\n  ml-connector completions zsh > ~/.zfunc/_ml-connector\n  ml-connector completions fish > ~/.config/fish/completions/ml-connector.fish"
    )]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Instance configuration kept in the deployed table.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// List recent runs from the audit store, newest first.
    #[command(
        after_help = "Examples:\n  ml-connector runs\n  ml-connector runs --instance weekly-marketplace-fees --limit 5"
    )]
    Runs {
        /// Only runs of this instance (the `instance` name in its config).
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: usize,
        /// Machine-readable output: an array of run records.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        table: TableArg,
    },
    /// A run's audit trail: totals, journal lines, source rows, events, and its reconciliation
    /// (Looker → mapped → residue → D365). With `--config`, D365 is read back now and the new
    /// reconciliation is stored with the run; without it, the last stored one is shown.
    #[command(
        after_help = "Examples:\n  ml-connector show r-20261130060000-1a2b3c4d\n  ml-connector show r-20261130060000-1a2b3c4d --config fees.toml --json"
    )]
    Show {
        /// The run to show (as `run`, `runs` and notifications print it: r-…).
        run_id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Instance configuration (TOML): reconcile against D365 now.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(flatten)]
        endpoints: Endpoints,
        #[command(flatten)]
        table: TableArg,
    },
    /// Undo a run's journals: a posted journal gets an inverse journal (same accounts and
    /// dimensions, amounts negated, dated in the next open period), recorded as its own run
    /// linked to the original. An unposted journal is refused unless `--delete-unposted`, which
    /// deletes the connector's lines instead. Posted entries are never edited. Idempotent: a
    /// repeat writes nothing and exits 0, as does a run that wrote no journal.
    #[command(
        after_help = "Examples:\n  ml-connector reverse r-20261130060000-1a2b3c4d --config fees.toml\n  ml-connector reverse r-20261130060000-1a2b3c4d --config fees.toml --delete-unposted"
    )]
    Reverse {
        /// The run whose journals to undo (as `run`, `runs` and `trace` print it: r-…).
        run_id: String,
        #[command(flatten)]
        cfg: ConfigArgs,
        /// Delete the connector's lines (and the journal) where it is still unposted in D365.
        #[arg(long)]
        delete_unposted: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        table: TableArg,
    },
    /// Where a D365 journal line came from: run, Look/query and filters, source row(s), config
    /// version.
    #[command(after_help = "Example:\n  ml-connector trace e809d1456a-161ac2.L0007")]
    Trace {
        /// The reference at the start of the D365 line's Text (e.g. `e809d1456a-161ac2.L0007`),
        /// or the whole Text.
        reference: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        table: TableArg,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Validate FILE and make it the instance's current configuration (needs `--table`).
    /// Runs record the config version they used.
    #[command(after_help = "Example:\n  ml-connector config push fees.toml --table ml-connector")]
    Push {
        /// Instance configuration (TOML) to validate and store.
        file: PathBuf,
        #[command(flatten)]
        table: TableArg,
    },
}

/// Parses arguments, runs the command and returns the process exit code.
pub async fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // `--help` and `--version` are not errors.
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    init_logging(cli.global.verbose);
    render::set_wide(cli.global.wide);
    QUIET.store(cli.global.quiet, Ordering::Relaxed);
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", terminal::clean(&causes(&e)));
            exit::FAILED
        }
    }
}

/// The error and its causes, each said once (`{e:#}` would repeat every cause that an error
/// both prints and keeps as its source, as `audit store: {0}` around a `StoreError` does).
fn causes(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
    }
    text
}

/// The log goes to stderr only on request (`-v`, `RUST_LOG`): everything a user must know is in
/// the command's own output, once; the log would repeat each error (and every retry) again.
/// Colour only when stderr is a terminal.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "off",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

impl Command {
    /// The config file the command was given, if any (it may name the store).
    fn config_file(&self) -> Option<&Path> {
        match self {
            Command::Run { cfg, .. }
            | Command::Preview { cfg, .. }
            | Command::Check { cfg, .. }
            | Command::Reverse { cfg, .. } => Some(&cfg.config),
            Command::Replay { config, .. } | Command::Show { config, .. } => config.as_deref(),
            _ => None,
        }
    }

    /// The deployed table, for the commands that can use one.
    fn table(&self) -> Option<String> {
        match self {
            Command::Run { table, .. }
            | Command::Preview { table, .. }
            | Command::Replay { table, .. }
            | Command::Runs { table, .. }
            | Command::Show { table, .. }
            | Command::Reverse { table, .. }
            | Command::Trace { table, .. }
            | Command::Config {
                action: ConfigAction::Push { table, .. },
            } => table.table.clone(),
            Command::Demo
            | Command::ActionDemo
            | Command::Sandbox { .. }
            | Command::Check { .. }
            | Command::Completions { .. } => None,
        }
    }

    /// Commands that only read the store: they say which one, and never create an empty one.
    fn reads_store(&self) -> bool {
        matches!(
            self,
            Command::Runs { .. } | Command::Show { .. } | Command::Trace { .. }
        )
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let (store_path, origin) = store_path::resolve(
        cli.global.store.as_deref(),
        std::env::var(store_path::ENV).ok(),
        cli.command.config_file(),
    );
    let table = cli.command.table();
    if table.is_none() && cli.command.reads_store() {
        if !store_path.exists() {
            eprintln!(
                "error: no audit store at {} ({}): no run was recorded there. Name the store of your runs with --store PATH, MLC_STORE or `store` in the config.",
                store_path.display(),
                origin.describe()
            );
            return Ok(exit::FAILED);
        }
        if !cli.global.quiet {
            eprintln!("store: {} ({})", store_path.display(), origin.describe());
        }
    }
    match cli.command {
        Command::Demo => demo_command(&store_path).await,
        Command::ActionDemo => action_demo_command(&store_path).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "ml-connector", &mut buf);
            out!("{}", String::from_utf8_lossy(&buf));
            Ok(exit::OK)
        }
        Command::Sandbox { write_config } => sandbox_command(&write_config).await,
        Command::Run {
            cfg,
            date: RunDate { run_date },
            supersede,
            allow_open_period,
            json,
            ..
        } => {
            if let Some(code) = refuse_open_period(&cfg, run_date, allow_open_period)? {
                return Ok(code);
            }
            let mode = Mode::Post;
            run_command(
                &store_path,
                table.as_deref(),
                &cfg,
                run_date,
                (mode, supersede, json),
            )
            .await
        }
        Command::Preview {
            cfg,
            date: RunDate { run_date },
            json,
            ..
        } => {
            let mode = Mode::Preview;
            run_command(
                &store_path,
                table.as_deref(),
                &cfg,
                run_date,
                (mode, false, json),
            )
            .await
        }
        Command::Check { cfg, json } => check_command(&cfg, json).await,
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
            ..
        } => {
            let cfg = ConfigArgs {
                config: config.context("--config is required for a local replay")?,
                endpoints,
            };
            replay_command(&store_path, table.as_deref(), &cfg, &run_id).await
        }
        Command::Config {
            action: ConfigAction::Push { file, .. },
        } => config_push(table.as_deref(), &file).await,
        Command::Runs {
            instance,
            limit,
            json,
            ..
        } => {
            let store = any_store(&store_path, table.as_deref()).await?;
            let runs = store.list_runs(instance.as_deref(), limit).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                out!("{}", terminal::clean(&render::runs_table(&runs)));
            }
            Ok(exit::OK)
        }
        Command::Show {
            run_id,
            json,
            config,
            endpoints,
            ..
        } => {
            let cfg = config.map(|config| ConfigArgs { config, endpoints });
            show_command(&store_path, table.as_deref(), &run_id, json, cfg.as_ref()).await
        }
        Command::Reverse {
            run_id,
            cfg,
            delete_unposted,
            json,
            ..
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
        Command::Trace {
            reference, json, ..
        } => {
            let store = any_store(&store_path, table.as_deref()).await?;
            match crate::controls::trace(store.as_ref(), &reference).await {
                Ok(t) if json => outln!("{}", serde_json::to_string_pretty(&t.to_json())?),
                Ok(t) => out!("{}", terminal::clean(&t.render())),
                Err(e) => {
                    eprintln!("error: {}", terminal::clean(&e.to_string()));
                    return Ok(exit::FAILED);
                }
            }
            Ok(exit::OK)
        }
    }
}

/// A run of a period that has not ended (or dated in the future) is refused unless the user
/// asks for it: its data may still change after it is posted.
fn refuse_open_period(
    args: &ConfigArgs,
    run_date: Option<NaiveDate>,
    allow: bool,
) -> anyhow::Result<Option<i32>> {
    if allow {
        return Ok(None);
    }
    let today = today();
    let run_date = run_date.unwrap_or(today);
    let cfg = load_config(&args.config)?;
    let period = cfg.period.kind.period_for(run_date);
    let why = if run_date > today {
        format!("run date {run_date} is in the future (today is {today} UTC)")
    } else if period.end >= today {
        format!(
            "period {} ({} to {}) has not ended yet (today is {today} UTC)",
            period.label, period.start, period.end
        )
    } else {
        return Ok(None);
    };
    eprintln!(
        "refused: {why}; its data may still change after it is posted. Nothing was done. To post it anyway, add --allow-open-period."
    );
    Ok(Some(exit::USAGE))
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
        return Ok(exit::FAILED);
    };
    let reconciliation = match cfg {
        Some(args) => {
            let (cfg, clients) = load_instance(args)?;
            match crate::controls::reconcile(store.as_ref(), &clients.d365, &cfg, run_id).await {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!(
                        "error: reconciliation of run {run_id} failed: {}",
                        terminal::clean(&e.to_string())
                    );
                    return Ok(exit::FAILED);
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
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        out!(
            "{}",
            terminal::clean(&render::show_run(&run, &rows, &lines, &events))
        );
        outln!();
        match &reconciliation {
            Some(r) => out!("{}", r.render()),
            None => outln!(
                "Reconciliation: none stored yet; run {} to read D365 back and reconcile",
                Hints::new(None, store_arg(store_path, table))
                    .apply(&format!("`ml-connector show {run_id} --config FILE`"))
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
    let hints = Hints::new(Some(&args.config), store_arg(store_path, table));
    match crate::controls::reverse(store.as_ref(), &clients.d365, &cfg, run_id, &opts).await {
        Ok(r) => {
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                outln!("{}", hints.apply(&r.message));
                if let Some(rev) = &r.reversal {
                    outln!(
                        "The reversal journal(s) are left unposted: finance reviews and posts them in D365 (General ledger > Journal entries > General journals). Audit trail: {}",
                        hints
                            .apply(&format!("`ml-connector show {}`", rev.run_id))
                            .replace('`', "")
                    );
                }
            }
            Ok(exit::OK)
        }
        Err(ControlsError::Refused(m)) => {
            eprintln!("refused: {}", terminal::clean(&hints.apply(&m)));
            Ok(exit::REJECTED)
        }
        Err(e) => {
            eprintln!("error: {}", terminal::clean(&hints.apply(&e.to_string())));
            Ok(exit::FAILED)
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

#[cfg(all(feature = "sandbox", feature = "aws"))]
async fn action_demo_command(store: &Path) -> anyhow::Result<i32> {
    let store = std::sync::Arc::new(open_store(store)?);
    let mut say = |line: String| outln!("{line}");
    let outcome = crate::lambda::local::action_demo(demo::EXAMPLE_CONFIG, store, &mut say).await?;
    match outcome.journal {
        Some(j) if outcome.redelivery_idempotent => {
            outln!("\nJournal {j} written once through the action; the redelivery wrote nothing.");
            Ok(exit::OK)
        }
        _ => {
            outln!("\nThe action flow did not end as expected (see above).");
            Ok(exit::FAILED)
        }
    }
}

#[cfg(not(all(feature = "sandbox", feature = "aws")))]
async fn action_demo_command(_store: &Path) -> anyhow::Result<i32> {
    Err(anyhow::anyhow!(
        "this build has no sandbox or no AWS adapters; build with the default features to run the action demo"
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
            eprintln!(
                "error: config {} was not accepted: {}",
                file.display(),
                terminal::clean(&e.to_string())
            );
            return Ok(exit::REJECTED);
        }
    };
    push_config(table, &cfg, &text).await?;
    outln!(
        "config of instance `{}` is now version {} (table {table})",
        cfg.instance,
        cfg.version()
    );
    Ok(exit::OK)
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
        return Ok(exit::FAILED);
    }
    let who = std::env::var("USER").unwrap_or_else(|_| "cli".into());
    store.request_replay(run_id, &who).await?;
    outln!("replay of run {run_id} requested; follow it with `ml-connector show {run_id} --table {table}`");
    Ok(exit::OK)
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
    if let Some(w) = cred_file
        .as_deref()
        .and_then(store_path::credentials_warning)
    {
        eprintln!("{w}");
    }
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

/// `--quiet`: no progress on stderr.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Progress for TerminalProgress {
    fn step(&self, message: &str) {
        if !QUIET.load(Ordering::Relaxed) {
            eprintln!("→ {message}");
        }
    }
    fn line_posted(&self, done: usize, total: usize) {
        if QUIET.load(Ordering::Relaxed) {
            return;
        }
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
    (mode, supersede, json): (Mode, bool, bool),
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
    let stored = mode == Mode::Post;
    let ctx = render::ReportContext {
        hints: &Hints::new(Some(&args.config), store_arg(store_path, table)),
        fix: fix_for(&report, store.as_ref(), mode).await,
        stored,
    };
    let code = exit::of(report.outcome);
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&render::run_json(&report, &ctx, code))?
        );
    } else {
        out!("{}", terminal::clean(&render::run_report(&report, &ctx)));
    }
    Ok(code)
}

/// The store a suggested command must name to find this invocation's audit trail.
fn store_arg(store_path: &Path, table: Option<&str>) -> StoreArg {
    match table {
        Some(t) => StoreArg::Table(t.to_string()),
        None => StoreArg::Sqlite(store_path.to_path_buf()),
    }
}

/// What to do after a run that did not end well: a command that works from where this run
/// stands (a preview is not stored; a run that stopped before validation cannot be replayed).
async fn fix_for(
    report: &crate::engine::RunReport,
    store: &dyn Store,
    mode: Mode,
) -> Option<String> {
    use crate::engine::Outcome;
    let run = &report.run;
    if mode == Mode::Preview {
        return match report.outcome {
            Outcome::Rejected => Some(
                "Nothing was written. Each problem is listed below with its row and field; fix the data or the config, then check again with `ml-connector preview --config FILE`.".into(),
            ),
            Outcome::Failed => Some(
                "Nothing was written. Fix the cause named above, then try again with `ml-connector preview --config FILE`.".into(),
            ),
            _ => None,
        };
    }
    // The same fix a notification of this run gives, for where the run got to.
    let validation = crate::controls::notify::validation(store, &run.run_id)
        .await
        .unwrap_or(crate::controls::notify::Validation::NotFinished);
    crate::controls::RunNotification::for_run(run, validation).map(|n| n.fix)
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
    let ctx = render::ReportContext {
        hints: &Hints::new(Some(&args.config), store_arg(store_path, table)),
        fix: fix_for(&report, store.as_ref(), Mode::Post).await,
        stored: true,
    };
    out!("{}", terminal::clean(&render::run_report(&report, &ctx)));
    Ok(exit::of(report.outcome))
}

/// `check`: connect to both systems and confirm the config fits them, without writing.
/// What `check` found, item by item: printed as it goes, or collected for `--json`.
struct CheckReport {
    json: bool,
    failures: usize,
    problems: usize,
    sections: Vec<serde_json::Value>,
}

impl CheckReport {
    /// A service heading (`Looker (https://…)`).
    fn section(&mut self, service: &str, target: &str) {
        if self.json {
            self.sections.push(serde_json::json!({
                "service": service, "target": target, "items": [],
            }));
        } else {
            outln!("{service} ({target})");
        }
    }

    fn item(&mut self, status: &str, message: &str) {
        if self.json {
            if let Some(items) = self
                .sections
                .last_mut()
                .and_then(|s| s.get_mut("items"))
                .and_then(|i| i.as_array_mut())
            {
                items.push(serde_json::json!({ "status": status, "message": message }));
            }
        } else {
            let tag = match status {
                "ok" => "ok  ",
                "skip" => "skip",
                _ => "FAIL",
            };
            outln!("  {tag}  {}", terminal::clean(message));
        }
    }

    fn ok(&mut self, m: &str) {
        self.item("ok", m);
    }

    /// `hard`: a connection problem (exit 1); otherwise a configuration problem (exit 2).
    fn bad(&mut self, m: &str, hard: bool) {
        if hard {
            self.failures += 1;
            self.item("connection_problem", m);
        } else {
            self.problems += 1;
            self.item("configuration_problem", m);
        }
    }

    fn skip(&mut self, m: &str) {
        self.item("skip", m);
    }
}

async fn check_command(args: &ConfigArgs, json: bool) -> anyhow::Result<i32> {
    let (cfg, clients) = load_instance(args)?;
    let mut report = CheckReport {
        json,
        failures: 0,
        problems: 0,
        sections: Vec::new(),
    };
    let code = check_items(args, &cfg, &clients, &mut report).await?;
    if json {
        let outcome = match code {
            c if c == exit::OK => "passed",
            c if c == exit::REJECTED => "configuration_problems",
            _ => "failed",
        };
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "outcome": outcome,
                "exit_code": code,
                "connection_problems": report.failures,
                "configuration_problems": report.problems,
                "sections": report.sections,
            }))?
        );
    }
    Ok(code)
}

/// Every check item, in order; returns the exit code.
async fn check_items(
    args: &ConfigArgs,
    cfg: &InstanceConfig,
    clients: &Clients,
    report: &mut CheckReport,
) -> anyhow::Result<i32> {
    let period = cfg.period.kind.period_for(today());
    let extract = check_looker(cfg, clients, &period, report).await?;
    let legal_entities = match &extract {
        None => Vec::new(),
        Some(Ok(x)) => check_source(cfg, x, &period, report),
        Some(Err(e)) => {
            report.bad(&format!("source does not run: {e}"), true);
            Vec::new()
        }
    };
    check_d365(cfg, clients, legal_entities, report).await;
    Ok(check_verdict(args, report))
}

/// Looker: the login, the Look or explore and its fields; then the source is run for the
/// current period (`None`: not logged in).
async fn check_looker(
    cfg: &InstanceConfig,
    clients: &Clients,
    period: &crate::domain::config::Period,
    report: &mut CheckReport,
) -> anyhow::Result<Option<Result<crate::domain::source::Extract, crate::looker::LookerError>>> {
    report.section("Looker", &crate::http::redact_url(&cfg.looker.base_url));
    // One failure, one message: without a login the other Looker items would only fail
    // again (each logging in, with its retries) with the same error.
    let looker_ok = match clients.looker.login_check().await {
        Ok(()) => {
            report.ok("logged in with the API client id/secret");
            true
        }
        Err(e) => {
            report.bad(&e.to_string(), true);
            false
        }
    };
    Ok(if !looker_ok {
        report.skip("source and columns: not logged in to Looker");
        None
    } else {
        Some(match cfg.source.resolve()? {
            Source::Look(id) => match clients.looker.look(id).await {
                Ok(info) => {
                    report.ok(&format!("Look {id} \"{}\" exists", info.title));
                    clients.looker.run_look(id).await
                }
                Err(e) => Err(e),
            },
            Source::Query(q) => {
                match clients.looker.explore_fields(&q.model, &q.explore).await {
                    Ok(fields) => {
                        report.ok(&format!("explore {}/{} exists", q.model, q.explore));
                        for f in &q.fields {
                            if !fields.contains(f) {
                                report.bad(
                                    &format!(
                                        "field `{f}` is not in explore {}/{}",
                                        q.model, q.explore
                                    ),
                                    false,
                                );
                            }
                        }
                    }
                    Err(e) => report.bad(&e.to_string(), true),
                }
                match cfg.query_for_period(period) {
                    Some(q) => clients.looker.run_inline_query(&q).await,
                    None => Err(crate::looker::LookerError::Config("no query".into())),
                }
            }
        })
    })
}

/// The source's result: its row count and the columns the mapping uses. Returns the legal
/// entities the data posts to.
fn check_source(
    cfg: &InstanceConfig,
    x: &crate::domain::source::Extract,
    period: &crate::domain::config::Period,
    report: &mut CheckReport,
) -> Vec<String> {
    let mut legal_entities: Vec<String> = Vec::new();
    report.ok(&format!(
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
            report.ok(&format!("column `{c}` present"));
        } else {
            report.bad(
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
    legal_entities
}

/// D365: the token, then each legal entity's reference data.
async fn check_d365(
    cfg: &InstanceConfig,
    clients: &Clients,
    mut legal_entities: Vec<String>,
    report: &mut CheckReport,
) {
    report.section("D365", &crate::http::redact_url(&cfg.d365.environment_url));
    let d365_ok = match clients.d365.token_check().await {
        Ok(()) => {
            report.ok("token obtained from Entra ID and accepted by the environment");
            true
        }
        Err(e) => {
            report.bad(&e.to_string(), true);
            false
        }
    };
    if !d365_ok && !legal_entities.is_empty() {
        report.skip("journal names, accounts and dimensions: no D365 token");
        legal_entities.clear();
    }
    for le in &legal_entities {
        match clients.d365.load_reference(le).await {
            Ok(r) => check_reference(cfg, le, &r, report),
            Err(e) => report.bad(&format!("{le}: {e}"), true),
        }
    }
}

/// One legal entity's ledger format, journal name, dimensions and main accounts.
fn check_reference(
    cfg: &InstanceConfig,
    le: &str,
    r: &crate::domain::reference::ReferenceData,
    report: &mut CheckReport,
) {
    report.ok(&format!(
        "{le}: ledger format {} ({})",
        r.format.name,
        r.format.segments.join(&r.format.delimiter.to_string())
    ));
    match r.journal_names.get(&cfg.journal.journal_name) {
        Some(j) => report.ok(&format!(
            "{le}: journal name {} ({}){}",
            j.name,
            j.description,
            if j.workflow_approval {
                ", workflow approval required"
            } else {
                ""
            }
        )),
        None => report.bad(
            &format!(
                "{le}: journal name `{}` does not exist",
                cfg.journal.journal_name
            ),
            false,
        ),
    }
    for dim in cfg.dimension_names() {
        if !r.format.segments.iter().any(|s| s == dim) {
            report.bad(
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
                report.ok(&format!("{le}: `{key}` main account {a} ({})", m.name))
            }
            Some(_) => report.bad(
                &format!("{le}: `{key}` main account {a} is suspended"),
                false,
            ),
            None => report.bad(
                &format!("{le}: `{key}` main account {a} does not exist"),
                false,
            ),
        }
    }
    let sample = LedgerAccount::new("000000");
    report.ok(&format!(
        "{le}: account strings look like `{}`",
        sample.display_value(&r.format)
    ));
}

/// The summary line and the exit code.
fn check_verdict(args: &ConfigArgs, report: &CheckReport) -> i32 {
    let (failures, problems) = (report.failures, report.problems);
    let text = !report.json;
    if text {
        outln!();
    }
    if failures > 0 {
        if text {
            outln!(
                "check failed: {failures} connection problem(s), {problems} configuration problem(s)"
            );
        }
        exit::FAILED
    } else if problems > 0 {
        if text {
            outln!("check found {problems} configuration problem(s); fix them before running");
        }
        exit::REJECTED
    } else {
        if text {
            outln!(
                "check passed: `ml-connector preview --config {}` shows the exact journal",
                args.config.display()
            );
        }
        exit::OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;
    use crate::ports::{Cause, StoreError};

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let store = StoreError::backend("opening a.sqlite", Cause::error(io));
        // `audit store: {0}` prints the store error and keeps it as its source, which prints
        // the I/O error and keeps it as its source.
        let e = anyhow::Error::new(EngineError::Store(store)).context("posting run r1");
        assert_eq!(
            causes(&e),
            "posting run r1: audit store: store backend error: opening a.sqlite: disk on fire"
        );
        // A cause nobody printed yet is added.
        let e = anyhow::Error::new(std::io::Error::other("inner")).context("outer");
        assert_eq!(causes(&e), "outer: inner");
    }
}
