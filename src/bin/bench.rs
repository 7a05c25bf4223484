//! Scale benchmark: posting throughput, large extracts, Lambda cold starts. See BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --features bench --bin bench -- --markdown
//! ```
//!
//! Three parts, printed side by side at the end of one run:
//!
//! - **post**: journal lines into the D365 simulator with injected per-request latency
//!   (default 50 ms), `$batch` (`D365Client::create_lines_batched`, one changeset per voucher)
//!   against one request per line (`D365Client::create_line`). Batched is measured at every
//!   size; one request per line is measured on a sample (default 200 lines) and extrapolated
//!   linearly to the larger sizes (labelled as such: at 50 ms, 10,000 lines take > 500 s).
//! - **extract**: extract + map + validate of 100,000 generated Looker rows through the engine
//!   (`Engine::run_extract`, preview mode: nothing is written). It runs in a child process
//!   (`bench --child-extract …`) so its peak RSS (`VmHWM`) and CPU time exclude the simulators,
//!   which stay in the parent and serve it over loopback.
//! - **cold**: builds the three Lambda binaries and a hello-world `lambda_runtime` binary
//!   (`lambda-baseline`) in release, then measures process start → first
//!   `GET /2018-06-01/runtime/invocation/next` on a local Runtime API emulator, for each binary,
//!   round-robin, and reports the medians, their ratio to the baseline and the stripped sizes.
//!
//! Host binaries only (x86_64 here): the aarch64 standard library is not installable from the
//! allowed registries. Everything binds 127.0.0.1; every loop is bounded.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::{NaiveDate, Utc};
use clap::{Parser, ValueEnum};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use ml_connector::d365::{
    BatchSettings, ChangesetOutcome, D365Client, D365Settings, NewJournalLine,
};
use ml_connector::domain::config::{InstanceConfig, Period};
use ml_connector::domain::mapping::{map_extract, MappingContext};
use ml_connector::domain::money::CurrencyPrecision;
use ml_connector::domain::run::RunKeys;
use ml_connector::domain::source::Extract;
use ml_connector::domain::validation::validate;
use ml_connector::engine::{Engine, Mode, NoProgress, Outcome, RunOptions};
use ml_connector::looker::{ExtractPath, LookerClient};
use ml_connector::ports::{ExtractRequest, Extractor, LedgerGateway};
use ml_connector::sandbox::d365::seed::{calendar_year, SeedDimensionValue, SeedMainAccount};
use ml_connector::sandbox::d365::{
    D365Seed, D365Sim, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use ml_connector::sandbox::looker::seed::GENERATED_ACCOUNTS;
use ml_connector::sandbox::looker::{
    LookerSeed, LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};

// The engine part lives in its own file (src/bin/bench/engine.rs: no main.rs, so not a target).
#[path = "bench/engine.rs"]
mod engine;
use ml_connector::secrets::{Credentials, Secret};
use ml_connector::store::SqliteStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Post,
    Extract,
    Cold,
    /// Whole runs under the F&O cost model, parts in parallel vs sequential (opt-in: ~20 min).
    Engine,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
enum LookerPath {
    /// Query task (`POST /query_tasks`, poll, download): the path for more than 5,000 rows.
    Async,
    /// One `POST /queries/run/json` with an explicit limit.
    Sync,
}

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Scale benchmark of ml-connector against the sandbox (see BENCHMARKS.md)"
)]
struct Args {
    /// Parts to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "post,extract,cold"
    )]
    parts: Vec<Part>,
    /// Latency injected before every simulator answer (D365 F&O and Looker), in milliseconds.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// Journal line counts to post (batched: measured at every size).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    lines: Vec<usize>,
    /// Lines posted one request per line; larger sizes are extrapolated from this sample.
    #[arg(long, default_value_t = 200)]
    per_line_sample: usize,
    /// Lines per voucher (= per `$batch` changeset; the last line of each voucher balances it).
    #[arg(long, default_value_t = 10)]
    voucher_lines: usize,
    /// Operations per `$batch` request (`BatchSettings::max_operations`).
    #[arg(long, default_value_t = 200)]
    max_operations: usize,
    /// Looker rows to extract, map and validate.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// How the connector fetches the rows from Looker.
    #[arg(long, value_enum, default_value = "async")]
    looker_path: LookerPath,
    /// Measured cold starts per binary (after one discarded warm-up start each).
    #[arg(long, default_value_t = 20)]
    cold_runs: usize,
    /// Do not run `cargo build --release` for the Lambda binaries; use what is in --bin-dir.
    #[arg(long)]
    no_build: bool,
    /// Where the release binaries are (default: <crate>/target/release, or
    /// $CARGO_TARGET_DIR/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Also print the Markdown section for BENCHMARKS.md.
    #[arg(long)]
    markdown: bool,
    /// Engine part: journal line counts of the whole runs.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    engine_lines: Vec<usize>,
    /// Engine part: F&O server time per journal line, in milliseconds (250 ms per request).
    #[arg(long, value_delimiter = ',', default_value = "5,20,80")]
    line_costs: Vec<u64>,
    /// Print only the engine part's results, as one JSON array (keys: lines, line_cost_ms,
    /// wall_s, sequential_wall_s, speedup, requests, floor_s, parts, concurrency, time_factor).
    #[arg(long)]
    json: bool,
    /// Internal: run the extract part in this process with this instance config and print one
    /// JSON line (used by the parent through a child process).
    #[arg(long, hide = true)]
    child_extract: Option<PathBuf>,
    /// Internal, with --child-extract: time the engine's steps one by one (content hash, map,
    /// reference read, validate) with the domain functions instead of one engine call.
    #[arg(long, hide = true, requires = "child_extract")]
    child_breakdown: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(config) = &args.child_extract {
        return child_extract(config, args.looker_path, args.child_breakdown);
    }
    check_args(&args)?;
    let mut report = Report {
        command: command_line(),
        machine: Machine::read(),
        latency_ms: args.latency_ms,
        latency_parts: latency_parts(&args.parts),
        ..Default::default()
    };
    let bin_dir = args.bin_dir.clone().unwrap_or_else(default_bin_dir);
    // Build first, so compiling does not overlap any measurement.
    if args.parts.contains(&Part::Cold) && !args.no_build {
        build_lambdas()?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The D365 simulator of the post part runs on its own runtime (one worker thread).
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(SIM_THREAD)
        .enable_all()
        .build()?;
    let sim_handle = sim_rt.handle().clone();
    rt.block_on(async {
        if args.parts.contains(&Part::Post) {
            report.post = Some(post_part(&args, &sim_handle).await?);
        }
        if args.parts.contains(&Part::Extract) {
            report.extract = Some(extract_part(&args).await?);
        }
        if args.parts.contains(&Part::Cold) {
            report.cold = Some(cold_part(&args, &bin_dir).await?);
        }
        if args.parts.contains(&Part::Engine) {
            report.engine = Some(engine::engine_part(&args).await?);
        }
        anyhow::Ok(())
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(report.engine.as_deref().unwrap_or_default())?
        );
        return Ok(());
    }
    report.load_after = Machine::loadavg();
    let text = report.text();
    print!("{text}");
    if args.markdown {
        println!("\n----- Markdown for BENCHMARKS.md -----\n");
        print!("{}", report.markdown());
    }
    std::io::stdout().flush()?;
    Ok(())
}

/// The parts run with `--latency-ms` injected into the simulators (cold starts and the engine
/// part's cost model do not use it).
fn latency_parts(parts: &[Part]) -> Vec<&'static str> {
    let mut v = Vec::new();
    if parts.contains(&Part::Post) {
        v.push("post");
    }
    if parts.contains(&Part::Extract) {
        v.push("extract");
    }
    v
}

fn check_args(a: &Args) -> anyhow::Result<()> {
    if a.json && !a.parts.contains(&Part::Engine) {
        bail!("--json prints the engine part: add --parts engine");
    }
    if a.engine_lines.iter().any(|&n| n < 10) || a.line_costs.is_empty() {
        bail!("--engine-lines must be at least 10 and --line-costs must not be empty");
    }
    if a.voucher_lines < 2 || a.voucher_lines >= a.max_operations {
        bail!("--voucher-lines must be at least 2 and less than --max-operations");
    }
    if a.lines.iter().any(|&n| n < 2) || a.per_line_sample < 2 {
        bail!("line counts and --per-line-sample must be at least 2");
    }
    if a.rows == 0 || a.cold_runs == 0 {
        bail!("--rows and --cold-runs must be at least 1");
    }
    Ok(())
}

fn command_line() -> String {
    let rest: Vec<String> = std::env::args().skip(1).collect();
    let prefix = if cfg!(debug_assertions) {
        "cargo run --features bench --bin bench --"
    } else {
        "cargo run --release --features bench --bin bench --"
    };
    if rest.is_empty() {
        prefix.trim_end_matches(" --").to_string()
    } else {
        format!("{prefix} {}", rest.join(" "))
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement helpers (Linux /proc).

/// CPU time of this process so far, in nanoseconds: the sum of `/proc/self/task/*/schedstat`
/// (time on CPU, ns resolution), falling back to utime+stime of `/proc/self/stat` (ticks).
fn process_cpu_ns() -> u64 {
    let mut total = 0u64;
    let mut any = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                if let Some(ns) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    total += ns;
                    any = true;
                }
            }
        }
    }
    if any && total > 0 {
        return total;
    }
    // utime and stime are fields 14 and 15, counted after the `(comm)` field.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks * 10_000_000 // USER_HZ = 100
}

/// A `kB` field of `/proc/self/status` (`VmHWM` = peak RSS, `VmRSS` = current RSS).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n == 0 {
        Duration::ZERO
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

// ---------------------------------------------------------------------------------------------
// Part 1: posting lines, batched vs one request per line.

#[derive(Debug, Clone)]
struct PostRow {
    lines: usize,
    batched: Duration,
    batched_requests: usize,
    /// CPU of the batched post: the connector's threads, the simulator's threads.
    client_cpu: Duration,
    sim_cpu: Duration,
    per_line: Duration,
    per_line_requests: usize,
    /// `None`: measured at this size; `Some(n)`: extrapolated from an n-line sample.
    extrapolated_from: Option<usize>,
}

#[derive(Debug, Clone)]
struct PostResults {
    voucher_lines: usize,
    max_operations: usize,
    rows: Vec<PostRow>,
    sample_lines: usize,
    sample_time: Duration,
    sample_requests: usize,
}

fn d365_client(sim: &D365Sim) -> anyhow::Result<D365Client> {
    let mut s = D365Settings::new(
        &sim.environment_url(),
        &sim.authority_url(),
        SANDBOX_TENANT,
        SANDBOX_CLIENT_ID,
        Secret::new(SANDBOX_CLIENT_SECRET),
    )?;
    s.timeout = Duration::from_secs(300);
    Ok(D365Client::new(s)?)
}

/// `n` lines as balanced vouchers of `per` lines (`per - 1` debits, one balancing credit); a
/// remainder of one line joins the previous voucher.
fn vouchers(batch: &str, n: usize, per: usize, date: NaiveDate) -> Vec<Vec<NewJournalLine>> {
    let mut sizes = vec![per; n / per];
    match (n % per, sizes.last_mut()) {
        (0, _) => {}
        (1, Some(last)) => *last += 1,
        (r, _) => sizes.push(r),
    }
    let line = |k: usize, account: &str, debit: Decimal, credit: Decimal| NewJournalLine {
        legal_entity: "usmf".into(),
        batch_number: batch.into(),
        trans_date: date,
        account_display: account.into(),
        offset_display: None,
        debit,
        credit,
        currency: "USD".into(),
        text: format!("BENCH L{k:06}"),
        voucher: None,
    };
    let mut k = 0usize;
    sizes
        .into_iter()
        .map(|size| {
            let mut v = Vec::with_capacity(size);
            let mut total = Decimal::ZERO;
            for _ in 1..size {
                k += 1;
                let amount = Decimal::new(1_000 + ((k * 7_919) % 900_000) as i64, 2);
                total += amount;
                v.push(line(k, "618100-010", amount, Decimal::ZERO));
            }
            k += 1;
            v.push(line(k, "200150", Decimal::ZERO, total));
            v
        })
        .collect()
}

/// A fresh simulator (the simulator's line inserts scan every line it holds, so sizes must not
/// share one) with the latency set, a client, and a journal header.
/// The simulator runs on `sim_rt` (its own threads, named [`SIM_THREAD`]) so its CPU time can
/// be told apart from the client's.
async fn fresh_journal(
    latency: Duration,
    sim_rt: &tokio::runtime::Handle,
) -> anyhow::Result<(D365Sim, D365Client, String)> {
    let sim = sim_rt
        .spawn(D365Sim::start(D365Seed::demo(today())))
        .await??;
    sim.set_latency(latency);
    let client = d365_client(&sim)?;
    let h = client
        .create_header("usmf", "GenJrn", "MLC bench")
        .await
        .context("creating the journal header")?;
    Ok((sim, client, h.batch_number))
}

/// Thread name of the runtime the D365 simulator runs on in the post part.
const SIM_THREAD: &str = "d365-sim";

/// CPU time (ns) of this process's threads: (named [`SIM_THREAD`], all others).
fn cpu_sim_and_rest() -> (u64, u64) {
    let (mut sim, mut rest) = (0u64, 0u64);
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let ns = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            if comm.trim() == SIM_THREAD {
                sim += ns;
            } else {
                rest += ns;
            }
        }
    }
    (sim, rest)
}

/// One batched post: time, F&O requests (header included), CPU of the client and simulator.
struct Batched {
    time: Duration,
    requests: usize,
    client_cpu: Duration,
    sim_cpu: Duration,
}

/// Posts `n` lines through `$batch`.
async fn post_batched(
    args: &Args,
    n: usize,
    sim_rt: &tokio::runtime::Handle,
) -> anyhow::Result<Batched> {
    let (sim, client, batch) =
        fresh_journal(Duration::from_millis(args.latency_ms), sim_rt).await?;
    let sets = vouchers(&batch, n, args.voucher_lines, today());
    let settings = BatchSettings {
        max_operations: args.max_operations,
        ..BatchSettings::default()
    };
    let (s0, c0) = cpu_sim_and_rest();
    let t = Instant::now();
    let out = client.create_lines_batched(&sets, &settings).await?;
    let elapsed = t.elapsed();
    let (s1, c1) = cpu_sim_and_rest();
    if let Some(bad) = out.iter().find(|o| !o.is_created()) {
        bail!("batched post of {n} lines: a changeset was not created: {bad:?}");
    }
    let created: usize = out
        .iter()
        .map(|o| match o {
            ChangesetOutcome::Created(rows) => rows.len(),
            _ => 0,
        })
        .sum();
    let held = sim.lines().len();
    if created != n || held != n {
        bail!("batched post of {n} lines: {created} reported created, the simulator holds {held}");
    }
    Ok(Batched {
        time: elapsed,
        requests: sim.fno_request_count(),
        client_cpu: Duration::from_nanos(c1.saturating_sub(c0)),
        sim_cpu: Duration::from_nanos(s1.saturating_sub(s0)),
    })
}

/// Posts `n` lines one `POST LedgerJournalLines` each, sequentially.
async fn post_per_line(
    args: &Args,
    n: usize,
    sim_rt: &tokio::runtime::Handle,
) -> anyhow::Result<(Duration, usize)> {
    let (sim, client, batch) =
        fresh_journal(Duration::from_millis(args.latency_ms), sim_rt).await?;
    let lines: Vec<NewJournalLine> = vouchers(&batch, n, args.voucher_lines, today())
        .into_iter()
        .flatten()
        .collect();
    let t = Instant::now();
    for l in &lines {
        client.create_line(l).await?;
    }
    let elapsed = t.elapsed();
    let held = sim.lines().len();
    if held != n {
        bail!("one request per line, {n} lines: the simulator holds {held}");
    }
    Ok((elapsed, sim.fno_request_count()))
}

async fn post_part(args: &Args, sim_rt: &tokio::runtime::Handle) -> anyhow::Result<PostResults> {
    eprintln!(
        "[post] one request per line: {}-line sample at {} ms latency",
        args.per_line_sample, args.latency_ms
    );
    let (sample_time, sample_requests) = post_per_line(args, args.per_line_sample, sim_rt).await?;
    let mut rows = Vec::new();
    for &n in &args.lines {
        eprintln!("[post] batched: {n} lines");
        let b = post_batched(args, n, sim_rt).await?;
        let (per_line, per_line_requests, extrapolated_from) = if n == args.per_line_sample {
            (sample_time, sample_requests, None)
        } else if n < args.per_line_sample {
            eprintln!("[post] one request per line: {n} lines");
            let (t, r) = post_per_line(args, n, sim_rt).await?;
            (t, r, None)
        } else {
            // Linear: each line is one request of the same shape; plus the header request.
            let per = sample_time.as_secs_f64() / args.per_line_sample as f64;
            (
                Duration::from_secs_f64(per * n as f64),
                n + (sample_requests - args.per_line_sample),
                Some(args.per_line_sample),
            )
        };
        rows.push(PostRow {
            lines: n,
            batched: b.time,
            batched_requests: b.requests,
            client_cpu: b.client_cpu,
            sim_cpu: b.sim_cpu,
            per_line,
            per_line_requests,
            extrapolated_from,
        });
    }
    Ok(PostResults {
        voucher_lines: args.voucher_lines,
        max_operations: args.max_operations,
        rows,
        sample_lines: args.per_line_sample,
        sample_time,
        sample_requests,
    })
}

// ---------------------------------------------------------------------------------------------
// Part 2: extract + map + validate of many Looker rows, in a child process.

const GEN_MODEL: &str = "bench";
const GEN_EXPLORE: &str = "gen";

/// What the child reports (one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExtractChild {
    rows: usize,
    journal_lines: usize,
    outcome: String,
    issues: usize,
    first_issue: Option<String>,
    wall_extract_ns: u64,
    wall_map_ns: u64,
    cpu_extract_ns: u64,
    cpu_map_ns: u64,
    /// Peak RSS before the extract started (runtime, clients, config).
    hwm_start_kib: u64,
    /// Peak RSS after the extract (rows parsed), and after map + validate.
    hwm_extract_kib: u64,
    hwm_end_kib: u64,
    looker_path: LookerPath,
    /// With --child-breakdown: CPU of each step of map + validate.
    breakdown: Option<Breakdown>,
}

/// CPU time (ns) of the steps inside `Engine::run_extract`, measured one by one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Breakdown {
    /// `Extract::content_hash` + `RunKeys::derive` (SHA-256 over every row).
    hash_ns: u64,
    /// `domain::mapping::map_extract`.
    map_ns: u64,
    /// Reading the reference data from D365 (HTTP; mostly waiting).
    reference_ns: u64,
    /// `domain::validation::validate`.
    validate_ns: u64,
}

#[derive(Debug, Clone)]
struct ExtractResults {
    child: ExtractChild,
    breakdown: Option<Breakdown>,
    looker_requests: usize,
}

/// The demo D365 plus what the generated rows need: their accounts, their cost centers.
fn extract_d365_seed() -> D365Seed {
    let mut s = D365Seed::demo(today());
    for id in GENERATED_ACCOUNTS {
        s.main_accounts.push(SeedMainAccount {
            chart_of_accounts: "Shared".into(),
            id: id.into(),
            name: format!("Bench account {id}"),
            account_type: "Expense".into(),
            suspended: false,
            do_not_allow_manual_entry: false,
            active_from: None,
            active_to: None,
        });
    }
    for i in 0..40 {
        let value = format!("{i:03}");
        if s.dimension_values
            .iter()
            .any(|v| v.dimension == "CostCenter" && v.value == value)
        {
            continue;
        }
        s.dimension_values.push(SeedDimensionValue {
            dimension: "CostCenter".into(),
            value,
            legal_entity: String::new(),
            description: "Bench cost center".into(),
            suspended: false,
            blocked_for_manual_entry: false,
            is_total: false,
            active_from: None,
            active_to: None,
        });
    }
    // Not needed for `period_end` dates around today, but keeps the seed valid whatever
    // the run date.
    if !s.periods.iter().any(|p| p.year == "2024") {
        s.periods.extend(calendar_year("Fiscal", 2024));
    }
    s
}

/// An instance config over the generated explore: account and cost center from columns, one
/// voucher per date (all rows on the period end), balancing and rounding lines.
fn extract_config(looker: &str, env: &str, authority: &str, max_rows: usize) -> String {
    let g = GEN_EXPLORE;
    format!(
        r#"instance = "bench-extract"

[looker]
base_url = "{looker}"
max_rows = {max_rows}
timeout_secs = 600

[d365]
environment_url = "{env}"
authority = "{authority}"
tenant_id = "{SANDBOX_TENANT}"
timeout_secs = 120

[source.query]
model = "{GEN_MODEL}"
explore = "{g}"
fields = ["{g}.row_id", "{g}.posting_date", "{g}.account", "{g}.cost_center", "{g}.amount"]

[period]
kind = "month"

[journal]
legal_entity = {{ constant = "usmf" }}
journal_name = "GenJrn"
currency = {{ constant = "USD" }}
trans_date = "period_end"
description = "Bench {{period}}"
text = "Row {{{g}.row_id}} {{{g}.posting_date}} {{{g}.account}}"
voucher_by = "trans_date"
max_text_len = 60

[amount]
column = "{g}.amount"
sign = "debit_positive"
zero = "skip"

[account]
column = "{g}.account"

[dimensions]
CostCenter = {{ column = "{g}.cost_center" }}

[balancing]
style = "lines"
account = {{ constant = "200150" }}

[rounding]
book_to = "account"
account = "618900"
dimensions = {{ CostCenter = "022" }}
"#
    )
}

async fn extract_part(args: &Args) -> anyhow::Result<ExtractResults> {
    let latency = Duration::from_millis(args.latency_ms);
    eprintln!("[extract] generating {} Looker rows", args.rows);
    let looker = LookerSim::start(LookerSeed::empty().with_generated_explore(
        GEN_MODEL,
        GEN_EXPLORE,
        args.rows,
    ))
    .await?;
    looker.set_latency(latency);
    let d365 = D365Sim::start(extract_d365_seed()).await?;
    d365.set_latency(latency);
    let config = extract_config(
        &looker.base_url(),
        &d365.environment_url(),
        &d365.authority_url(),
        args.rows,
    );
    let path = std::env::temp_dir().join(format!(
        "ml-connector-bench-{}-extract.toml",
        std::process::id()
    ));
    std::fs::write(&path, &config)?;
    eprintln!("[extract] child process: extract + map + validate through the engine");
    let child = run_child(&path, args.looker_path, false).await;
    let looker_requests = looker.request_log().len();
    let breakdown = match &child {
        Ok(_) => {
            eprintln!("[extract] child process: the same, step by step");
            run_child(&path, args.looker_path, true).await
        }
        Err(_) => Err(anyhow!("not run")),
    };
    let _ = std::fs::remove_file(&path);
    let child = child?;
    let breakdown = breakdown?.breakdown;
    if child.rows != args.rows {
        bail!(
            "the extract child got {} rows, expected {}",
            child.rows,
            args.rows
        );
    }
    if child.outcome != "previewed" {
        bail!(
            "extract + map + validate did not pass: {} with {} issue(s), first: {:?}",
            child.outcome,
            child.issues,
            child.first_issue
        );
    }
    Ok(ExtractResults {
        child,
        breakdown,
        looker_requests,
    })
}

/// Runs `bench --child-extract CONFIG` and parses its JSON line.
async fn run_child(
    config: &Path,
    looker_path: LookerPath,
    breakdown: bool,
) -> anyhow::Result<ExtractChild> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--child-extract")
        .arg(config)
        .arg("--looker-path")
        .arg(match looker_path {
            LookerPath::Async => "async",
            LookerPath::Sync => "sync",
        })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if breakdown {
        cmd.arg("--child-breakdown");
    }
    // The simulators keep serving on this runtime while the child runs.
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    if !out.status.success() {
        bail!("the extract child process failed: {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("the extract child printed no result: {stdout}"))?;
    Ok(serde_json::from_str(line)?)
}

/// The child side: loads the config, extracts through the Looker client, then maps and
/// validates through the engine in preview mode; prints one JSON line.
fn child_extract(config: &Path, path: LookerPath, breakdown: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let cfg = ml_connector::cli::load_config(config)?;
        let creds = Credentials {
            looker_client_id: SANDBOX_LOOKER_CLIENT_ID.into(),
            looker_client_secret: Secret::new(SANDBOX_LOOKER_CLIENT_SECRET),
            d365_tenant_id: SANDBOX_TENANT.into(),
            d365_client_id: SANDBOX_CLIENT_ID.into(),
            d365_client_secret: Secret::new(SANDBOX_CLIENT_SECRET),
        };
        let clients = ml_connector::wiring::build_clients(&cfg, &creds)?;
        let mut ls = clients.looker.settings().clone();
        if path == LookerPath::Async {
            ls.extract_path = ExtractPath::Async;
            // The simulator's tasks finish at once; poll like a fast Looker would allow.
            ls.poll_interval = Duration::from_millis(20);
            ls.max_poll_interval = Duration::from_millis(200);
        }
        let looker = LookerClient::new(ls)?;
        let store = SqliteStore::open_in_memory()?;
        let engine = Engine {
            extractor: &looker,
            ledger: &clients.d365,
            store: &store,
            progress: &NoProgress,
        };
        let run_date = today();
        let period = cfg.period.kind.period_for(run_date);
        let query = cfg
            .query_for_period(&period)
            .ok_or_else(|| anyhow!("the bench config has no source.query"))?;
        let request = ExtractRequest::Query(query);
        let opts = RunOptions {
            run_date,
            trigger: "bench".into(),
            mode: Mode::Preview,
            lease: chrono::Duration::minutes(10),
            deadline: None,
            supersede: false,
        };
        let hwm_start_kib = proc_status_kib("VmHWM");

        let (c0, w0) = (process_cpu_ns(), Instant::now());
        let extract = looker
            .extract(&request)
            .await
            .map_err(|e| anyhow!("extract: {e}"))?;
        let (c1, w1) = (process_cpu_ns(), Instant::now());
        let n_rows = extract.rows.len();
        let hwm_extract_kib = proc_status_kib("VmHWM");
        if breakdown {
            return step_by_step(&cfg, &clients.d365, &period, run_date, extract).await;
        }
        let report = engine.run_extract(&cfg, &opts, &period, extract).await?;
        let (c2, w2) = (process_cpu_ns(), Instant::now());
        let hwm_end_kib = proc_status_kib("VmHWM");

        anyhow::Ok(ExtractChild {
            rows: n_rows,
            journal_lines: report.journals.iter().map(|j| j.lines.len()).sum(),
            outcome: match report.outcome {
                Outcome::Previewed => "previewed".into(),
                other => format!("{other:?}").to_lowercase(),
            },
            issues: report.issues.len(),
            first_issue: report
                .issues
                .first()
                .map(ToString::to_string)
                .or(report.run.message.clone()),
            wall_extract_ns: (w1 - w0).as_nanos() as u64,
            wall_map_ns: (w2 - w1).as_nanos() as u64,
            cpu_extract_ns: c1.saturating_sub(c0),
            cpu_map_ns: c2.saturating_sub(c1),
            hwm_start_kib,
            hwm_extract_kib,
            hwm_end_kib,
            looker_path: path,
            breakdown: None,
        })
    })?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// What `Engine::run_extract` does in preview mode, one step at a time with the domain
/// functions, timing the CPU of each.
async fn step_by_step(
    cfg: &InstanceConfig,
    d365: &D365Client,
    period: &Period,
    run_date: NaiveDate,
    extract: Extract,
) -> anyhow::Result<ExtractChild> {
    let c0 = process_cpu_ns();
    let keys = RunKeys::derive(&cfg.instance, &period.label, &extract.content_hash());
    let c1 = process_cpu_ns();
    let precision = CurrencyPrecision::with_overrides(cfg.currencies.clone());
    let ctx = MappingContext {
        config: cfg,
        period,
        run_date,
        run_key: &keys.run_key,
        precision: &precision,
    };
    let mapped = map_extract(&extract, &ctx);
    let c2 = process_cpu_ns();
    let mut refs = BTreeMap::new();
    for j in &mapped.journals {
        if refs.contains_key(&j.legal_entity) {
            continue; // another part of the same entity's journal (max_journal_lines)
        }
        let r = d365
            .reference(&j.legal_entity)
            .await
            .map_err(|e| anyhow!("reference data: {e}"))?;
        refs.insert(j.legal_entity.clone(), r);
    }
    let c3 = process_cpu_ns();
    let issues = validate(&mapped.journals, &refs, &precision);
    let c4 = process_cpu_ns();
    let all: Vec<String> = mapped
        .issues
        .iter()
        .chain(&issues)
        .map(ToString::to_string)
        .collect();
    Ok(ExtractChild {
        rows: extract.rows.len(),
        journal_lines: mapped.journals.iter().map(|j| j.lines.len()).sum(),
        outcome: if all.is_empty() {
            "previewed".into()
        } else {
            "rejected".into()
        },
        issues: all.len(),
        first_issue: all.first().cloned(),
        wall_extract_ns: 0,
        wall_map_ns: 0,
        cpu_extract_ns: 0,
        cpu_map_ns: 0,
        hwm_start_kib: 0,
        hwm_extract_kib: 0,
        hwm_end_kib: proc_status_kib("VmHWM"),
        looker_path: LookerPath::Async,
        breakdown: Some(Breakdown {
            hash_ns: c1 - c0,
            map_ns: c2 - c1,
            reference_ns: c3 - c2,
            validate_ns: c4 - c3,
        }),
    })
}

// ---------------------------------------------------------------------------------------------
// Part 3: Lambda cold start and binary sizes.

const LAMBDAS: [&str; 3] = ["webhook", "scheduler", "replay"];
const BASELINE: &str = "lambda-baseline";

#[derive(Debug, Clone)]
struct ColdRow {
    binary: String,
    size_bytes: u64,
    stripped: Option<bool>,
    median: Duration,
    min: Duration,
    max: Duration,
}

#[derive(Debug, Clone)]
struct ColdResults {
    runs: usize,
    bin_dir: PathBuf,
    rows: Vec<ColdRow>,
}

impl ColdResults {
    fn baseline(&self) -> Option<&ColdRow> {
        self.rows.iter().find(|r| r.binary == BASELINE)
    }
}

fn default_bin_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("release")
}

fn build_lambdas() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let builds: [&[&str]; 2] = [
        &[
            "--no-default-features",
            "--features",
            "aws",
            "--bin",
            "webhook",
            "--bin",
            "scheduler",
            "--bin",
            "replay",
        ],
        &["--features", "bench", "--bin", "lambda-baseline"],
    ];
    for extra in builds {
        eprintln!("[cold] cargo build --release {}", extra.join(" "));
        let status = Command::new(&cargo)
            .arg("build")
            .arg("--release")
            .arg("--manifest-path")
            .arg(&manifest)
            .args(extra)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running {cargo}"))?;
        if !status.success() {
            bail!("cargo build --release {} failed: {status}", extra.join(" "));
        }
    }
    Ok(())
}

/// Whether an ELF file has no `.symtab` section (`None`: not an ELF64 file we can read).
fn elf_stripped(path: &Path) -> Option<bool> {
    let b = std::fs::read(path).ok()?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3A)?);
    let shnum = usize::from(u16_at(0x3C)?);
    const SHT_SYMTAB: u32 = 2;
    let mut symtab = false;
    for i in 0..shnum {
        if u32_at(shoff + i * shentsize + 4)? == SHT_SYMTAB {
            symtab = true;
        }
    }
    Some(!symtab)
}

/// Environment a Lambda binary needs to finish its init, pointing nothing at real AWS.
fn lambda_env(cmd: &mut Command, binary: &str, runtime_api: &str) {
    cmd.env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", binary)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{binary}"))
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("TABLE_NAME", "ml-connector-bench")
        .env("SECRET_PREFIX", "ml-connector/");
}

/// Reads one HTTP request head from a connection; returns its request line.
async fn request_line(stream: &mut tokio::net::TcpStream) -> anyhow::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Spawns `path` against a fresh Runtime API emulator; returns process start → first
/// `GET …/invocation/next`, and kills the process.
async fn one_cold_start(binary: &str, path: &Path) -> anyhow::Result<Duration> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let api = listener.local_addr()?.to_string();
    let mut cmd = Command::new(path);
    lambda_env(&mut cmd, binary, &api);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    let polled = tokio::time::timeout(Duration::from_secs(30), async {
        let (mut stream, _) = listener.accept().await?;
        let line = request_line(&mut stream).await?;
        let at = Instant::now();
        anyhow::Ok((line, at, stream))
    })
    .await;
    let _ = child.kill();
    let out = child.wait_with_output();
    let stderr = out
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    let (line, at, _stream) = match polled {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => bail!("{binary}: emulator error: {e}; stderr: {stderr}"),
        Err(_) => bail!("{binary}: no request to the Runtime API within 30 s; stderr: {stderr}"),
    };
    if !line.starts_with("GET /2018-06-01/runtime/invocation/next ") {
        bail!("{binary}: first Runtime API request was `{line}`, not the /next poll (init failed?); stderr: {stderr}");
    }
    Ok(at - started)
}

async fn cold_part(args: &Args, bin_dir: &Path) -> anyhow::Result<ColdResults> {
    let mut bins: Vec<(String, PathBuf)> = Vec::new();
    for b in LAMBDAS.iter().chain(std::iter::once(&BASELINE)) {
        let p = bin_dir.join(b);
        if !p.is_file() {
            bail!(
                "{} not found; build with `cargo build --release --no-default-features --features aws --bin webhook --bin scheduler --bin replay` and `cargo build --release --features bench --bin lambda-baseline`, or drop --no-build",
                p.display()
            );
        }
        bins.push((b.to_string(), p));
    }
    eprintln!(
        "[cold] {} starts per binary (+1 warm-up each), round-robin",
        args.cold_runs
    );
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); bins.len()];
    for round in 0..=args.cold_runs {
        for (i, (name, path)) in bins.iter().enumerate() {
            let t = one_cold_start(name, path).await?;
            if round > 0 {
                times[i].push(t);
            }
        }
    }
    let rows = bins
        .iter()
        .zip(times)
        .map(|((name, path), mut t)| ColdRow {
            binary: name.clone(),
            size_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            stripped: elf_stripped(path),
            median: median(&mut t),
            min: t.first().copied().unwrap_or_default(),
            max: t.last().copied().unwrap_or_default(),
        })
        .collect();
    Ok(ColdResults {
        runs: args.cold_runs,
        bin_dir: bin_dir.to_path_buf(),
        rows,
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

#[derive(Debug, Clone, Default)]
struct Machine {
    cpu: String,
    cpus: usize,
    mem_mib: u64,
    kernel: String,
    arch: String,
    load_before: String,
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_mib: mem_kib / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            arch: std::env::consts::ARCH.to_string(),
            load_before: Self::loadavg(),
        }
    }

    fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Debug, Default)]
struct Report {
    command: String,
    machine: Machine,
    latency_ms: u64,
    /// The parts that ran with `latency_ms` injected (the header names it only for them).
    latency_parts: Vec<&'static str>,
    post: Option<PostResults>,
    extract: Option<ExtractResults>,
    cold: Option<ColdResults>,
    engine: Option<Vec<engine::EngineRow>>,
    load_after: String,
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1000.0)
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// One table: a header row and rows of cells; rendered as aligned text or Markdown.
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Self {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: vec![],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn text(&self) -> String {
        let mut w: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:>width$}", width = w[i]))
                .collect::<Vec<_>>()
                .join("  ")
        };
        let mut s = format!("  {}\n", line(&self.head));
        for r in &self.rows {
            s.push_str(&format!("  {}\n", line(r)));
        }
        s
    }

    fn markdown(&self) -> String {
        let mut s = format!("| {} |\n", self.head.join(" | "));
        s.push_str(&format!(
            "|{}\n",
            self.head
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { ":---|" } else { "---:|" })
                .collect::<String>()
        ));
        for r in &self.rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s
    }
}

struct Section {
    title: String,
    intro: Vec<String>,
    table: Table,
    notes: Vec<String>,
}

impl Report {
    fn sections(&self) -> Vec<Section> {
        let mut out = Vec::new();
        if let Some(rows) = &self.engine {
            let mut t = Table::new(&[
                "lines",
                "ms/line",
                "parts",
                "parallel",
                "sequential",
                "speed-up",
                "floor",
                "× floor",
                "requests",
            ]);
            for r in rows {
                t.row(vec![
                    thousands(r.lines),
                    r.line_cost_ms.to_string(),
                    format!("{} ({} at a time)", r.parts, r.concurrency),
                    format!("{:.0} s", r.wall_s),
                    format!("{:.0} s", r.sequential_wall_s),
                    format!("{:.2}×", r.speedup),
                    format!("{:.0} s", r.floor_s),
                    format!("{:.2}", r.wall_s / r.floor_s),
                    thousands(r.requests),
                ]);
            }
            out.push(Section {
                title: "Whole runs under the F&O cost model (`--parts engine`)".into(),
                intro: vec![
                    "Extract, map, validate, reference reads, header lookups, header creation, `$batch` posting, read-back and audit, against a D365 simulator charging 250 ms per request plus the line cost per line, with writes to one journal serialised (`CostModel::realistic`). Parts of 2,000 lines, vouchers of 10 lines, 200 operations per `$batch`. Times are model seconds: the server times run compressed by the line cost / 4 ms and the wall time is multiplied back (the connector's own CPU time with it, so they are upper bounds).".into(),
                ],
                table: t,
                notes: vec![
                    "floor: the least time the model allows for the writes alone (one header request and one `$batch` per 200 lines per part, parts spread over the concurrency, longest first); sequential: the same engine with `d365.max_concurrent_requests = 1`.".into(),
                ],
            });
        }
        if let Some(p) = &self.post {
            let mut t = Table::new(&[
                "lines",
                "batched time",
                "batched lines/s",
                "batched requests",
                "client CPU/line",
                "simulator CPU",
                "per-line time",
                "per-line lines/s",
                "per-line requests",
                "speed-up",
                "request ratio",
            ]);
            for r in &p.rows {
                let tag = if r.extrapolated_from.is_some() {
                    " (extrapolated)"
                } else {
                    ""
                };
                t.row(vec![
                    thousands(r.lines),
                    secs(r.batched),
                    format!("{:.0}", r.lines as f64 / r.batched.as_secs_f64()),
                    thousands(r.batched_requests),
                    format!(
                        "{:.1} µs",
                        r.client_cpu.as_secs_f64() * 1e6 / r.lines as f64
                    ),
                    secs(r.sim_cpu),
                    format!("{}{tag}", secs(r.per_line)),
                    format!("{:.1}{tag}", r.lines as f64 / r.per_line.as_secs_f64()),
                    format!("{}{tag}", thousands(r.per_line_requests)),
                    format!("{:.0}×", r.per_line.as_secs_f64() / r.batched.as_secs_f64()),
                    format!(
                        "1/{:.0}",
                        r.per_line_requests as f64 / r.batched_requests as f64
                    ),
                ]);
            }
            let mut notes = vec![
                format!(
                    "One request per line measured on a {}-line journal: {} for {} F&O requests ({:.1} ms per line); the larger sizes are extrapolated linearly from it (marked).",
                    p.sample_lines,
                    secs(p.sample_time),
                    p.sample_requests,
                    p.sample_time.as_secs_f64() * 1000.0 / p.sample_lines as f64
                ),
                "Requests = every request F&O received from the header creation on (the header's POST included; Entra token requests not included).".into(),
                "Client CPU/line = CPU of every thread but the simulator's during the batched post (the connector: building, sending and parsing `$batch`). Simulator CPU = the D365 simulator's own thread (constant work per line insert: `src/sandbox/d365/fno.rs`, `create_line`, no longer scans every stored line).".into(),
            ];
            if let Some(r) = p.rows.iter().find(|r| r.lines == 10_000) {
                let speedup = r.per_line.as_secs_f64() / r.batched.as_secs_f64();
                let limit = r.lines / 100 + 10;
                notes.push(format!(
                    "Target (10,000 lines): ≥ 50× faster than one request per line — {speedup:.0}×, {}; ≤ {limit} requests — {}, {}.",
                    yes(speedup >= 50.0),
                    r.batched_requests,
                    yes(r.batched_requests <= limit)
                ));
            }
            out.push(Section {
                title: "Posting journal lines: `$batch` vs one request per line".into(),
                intro: vec![format!(
                    "D365 simulator with {} ms added before every F&O answer; vouchers of {} lines (one `$batch` changeset each), at most {} operations per `$batch`; one journal, so its requests are sequential.",
                    self.latency_ms, p.voucher_lines, p.max_operations
                )],
                table: t,
                notes,
            });
        }
        if let Some(e) = &self.extract {
            let c = &e.child;
            let per_row = |ns: u64| format!("{:.2} µs", ns as f64 / 1000.0 / c.rows as f64);
            let mut t = Table::new(&[
                "step",
                "wall time",
                "CPU time",
                "CPU per row",
                "peak RSS after",
            ]);
            t.row(vec![
                format!(
                    "extract ({} rows, {:?} path)",
                    thousands(c.rows),
                    c.looker_path
                )
                .to_lowercase(),
                secs(Duration::from_nanos(c.wall_extract_ns)),
                secs(Duration::from_nanos(c.cpu_extract_ns)),
                per_row(c.cpu_extract_ns),
                mib(c.hwm_extract_kib),
            ]);
            t.row(vec![
                format!(
                    "map + validate ({} journal lines)",
                    thousands(c.journal_lines)
                ),
                secs(Duration::from_nanos(c.wall_map_ns)),
                secs(Duration::from_nanos(c.cpu_map_ns)),
                per_row(c.cpu_map_ns),
                mib(c.hwm_end_kib),
            ]);
            t.row(vec![
                "total".into(),
                secs(Duration::from_nanos(c.wall_extract_ns + c.wall_map_ns)),
                secs(Duration::from_nanos(c.cpu_extract_ns + c.cpu_map_ns)),
                per_row(c.cpu_extract_ns + c.cpu_map_ns),
                mib(c.hwm_end_kib),
            ]);
            let map_us = c.cpu_map_ns as f64 / 1000.0 / c.rows as f64;
            let hwm_mib = c.hwm_end_kib as f64 / 1024.0;
            out.push(Section {
                title: format!("Extract + map + validate of {} Looker rows", thousands(c.rows)),
                intro: vec![format!(
                    "Child process (`bench --child-extract`): Looker client → `Engine::run_extract` in preview mode (nothing written), against the simulators in the parent process with {} ms latency per request. Peak RSS = the child's `VmHWM` (its runtime, clients and SQLite store included; {} before the extract). CPU = all threads of the child (`/proc/self/task/*/schedstat`). Looker requests: {}.",
                    self.latency_ms, mib(c.hwm_start_kib), e.looker_requests
                )],
                table: t,
                notes: {
                    let mut n = Vec::new();
                    if let Some(b) = &e.breakdown {
                        n.push(format!(
                            "Map + validate step by step (a second child, same extract, the engine's steps called one by one), CPU per row: content hash + run keys {}, mapping (`map_extract`) {}, reference read from D365 {}, validation {}.",
                            per_row(b.hash_ns),
                            per_row(b.map_ns),
                            per_row(b.reference_ns),
                            per_row(b.validate_ns)
                        ));
                    }
                    let mapping_only = e
                        .breakdown
                        .as_ref()
                        .map(|b| b.map_ns as f64 / 1000.0 / c.rows as f64);
                    // Issue 16: at most 0.5 KiB per row on top of a fixed 16 MiB.
                    let rss_limit = 16.0 + 0.5 * c.rows as f64 / 1024.0;
                    let growth_kib =
                        c.hwm_end_kib.saturating_sub(c.hwm_start_kib) as f64 / c.rows as f64;
                    n.push(format!(
                        "Targets: peak RSS ≤ 16 MiB + 0.5 KiB per row = {rss_limit:.1} MiB — {hwm_mib:.1} MiB ({growth_kib:.2} KiB per row over the process before the extract), {}; map + validate ≤ 2 µs CPU per row — {map_us:.2} µs through the engine, {}{}.",
                        yes(hwm_mib <= rss_limit),
                        yes(map_us <= 2.0),
                        mapping_only.map_or(String::new(), |m| format!(
                            "; {m:.2} µs for `map_extract` alone, {}",
                            yes(m <= 2.0)
                        ))
                    ));
                    n
                },
            });
        }
        if let Some(cr) = &self.cold {
            let base = cr.baseline().map(|b| b.median);
            let mut t = Table::new(&[
                "binary",
                "init median",
                "min",
                "max",
                "× hello-world",
                "size (stripped)",
                "stripped",
            ]);
            for r in &cr.rows {
                t.row(vec![
                    r.binary.clone(),
                    secs(r.median),
                    secs(r.min),
                    secs(r.max),
                    base.map_or("-".into(), |b| {
                        format!("{:.2}", r.median.as_secs_f64() / b.as_secs_f64())
                    }),
                    format!("{:.2} MB", r.size_bytes as f64 / 1e6),
                    match r.stripped {
                        Some(true) => "yes".into(),
                        Some(false) => "no".into(),
                        None => "?".into(),
                    },
                ]);
            }
            let mut notes = vec![];
            if let Some(b) = base {
                let worst = cr
                    .rows
                    .iter()
                    .filter(|r| r.binary != BASELINE)
                    .map(|r| r.median.as_secs_f64() / b.as_secs_f64())
                    .fold(0.0, f64::max);
                let webhook = cr.rows.iter().find(|r| r.binary == "webhook");
                notes.push(format!(
                    "Targets: Lambda init ≤ 2× hello-world — worst {worst:.2}×, {}; webhook ≤ 10 MB stripped — {}.",
                    yes(worst <= 2.0),
                    webhook.map_or("not measured".into(), |w| format!(
                        "{:.2} MB, {}",
                        w.size_bytes as f64 / 1e6,
                        yes(w.size_bytes <= 10_000_000 && w.stripped != Some(false))
                    ))
                ));
            }
            out.push(Section {
                title: "Lambda cold start (process start → first `/invocation/next`)".into(),
                intro: vec![format!(
                    "{} starts per binary after one discarded warm-up, round-robin, against a Runtime API emulator on 127.0.0.1 (the bench). Release host binaries ({}, {}), built in this run: the Lambdas with `--no-default-features --features aws`, `lambda-baseline` (hello-world `lambda_runtime`) with `--features bench`. AWS SDK pointed at 127.0.0.1:1 with static credentials (init makes no network call).",
                    cr.runs,
                    self.machine.arch,
                    cr.bin_dir.display()
                )],
                table: t,
                notes,
            });
        }
        out
    }

    fn header_lines(&self) -> Vec<String> {
        let m = &self.machine;
        let mut lines = vec![
            format!("command: {}", self.command),
            format!(
                "machine: {} logical CPUs ({}), {} MiB RAM, Linux {} {}; load average {} before, {} after",
                m.cpus, m.cpu, m.mem_mib, m.kernel, m.arch, m.load_before, self.load_after
            ),
        ];
        // Only where it applies: not to cold starts nor to the engine part's cost model.
        if !self.latency_parts.is_empty() {
            lines.push(format!(
                "injected latency: {} ms per simulator request ({})",
                self.latency_ms,
                self.latency_parts.join(", ")
            ));
        }
        lines
    }

    fn text(&self) -> String {
        let mut s = String::from("\nml-connector scale benchmark\n");
        for l in self.header_lines() {
            s.push_str(&format!("{l}\n"));
        }
        for sec in self.sections() {
            s.push_str(&format!("\n== {} ==\n", sec.title.replace('`', "")));
            for l in &sec.intro {
                s.push_str(&format!("{}\n", l.replace('`', "")));
            }
            s.push_str(&sec.table.text());
            for n in &sec.notes {
                s.push_str(&format!("{}\n", n.replace('`', "")));
            }
        }
        s
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        for l in self.header_lines() {
            let (k, v) = l.split_once(": ").unwrap_or(("", &l));
            if k == "command" {
                s.push_str(&format!("- {k}: `{v}`\n"));
            } else {
                s.push_str(&format!("- {k}: {v}\n"));
            }
        }
        for sec in self.sections() {
            s.push_str(&format!("\n### {}\n\n", sec.title));
            for l in &sec.intro {
                s.push_str(&format!("{l}\n\n"));
            }
            s.push_str(&sec.table.markdown());
            for n in &sec.notes {
                s.push_str(&format!("\n{n}\n"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vouchers_balance_and_count() {
        let d = NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
        for (n, per) in [(1000, 10), (201, 10), (205, 10), (2, 10)] {
            let v = vouchers("B1", n, per, d);
            assert_eq!(v.iter().map(Vec::len).sum::<usize>(), n, "{n}/{per}");
            for set in &v {
                assert!(set.len() >= 2 && set.len() <= per + 1);
                let dr: Decimal = set.iter().map(|l| l.debit).sum();
                let cr: Decimal = set.iter().map(|l| l.credit).sum();
                assert_eq!(dr, cr);
            }
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        let mut v = vec![Duration::from_millis(3), Duration::from_millis(1)];
        assert_eq!(median(&mut v), Duration::from_millis(2));
        assert!(process_cpu_ns() > 0);
        assert!(proc_status_kib("VmHWM") > 0);
        assert_eq!(
            elf_stripped(&std::env::current_exe().unwrap()).is_some(),
            cfg!(target_os = "linux")
        );
    }

    #[test]
    fn the_header_names_the_latency_only_for_the_parts_it_applies_to() {
        let header = |parts: &[Part]| {
            Report {
                latency_ms: 50,
                latency_parts: latency_parts(parts),
                ..Default::default()
            }
            .header_lines()
            .join("\n")
        };
        for parts in [
            &[Part::Engine][..],
            &[Part::Cold],
            &[Part::Cold, Part::Engine],
        ] {
            let h = header(parts);
            assert!(!h.contains("latency"), "{parts:?}: {h}");
        }
        assert!(header(&[Part::Post, Part::Extract, Part::Cold])
            .contains("injected latency: 50 ms per simulator request (post, extract)"));
        assert!(header(&[Part::Extract, Part::Engine])
            .contains("injected latency: 50 ms per simulator request (extract)"));
    }

    #[test]
    fn config_parses() {
        let text = extract_config(
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
            100_000,
        );
        let cfg = ml_connector::domain::config::InstanceConfig::from_toml(&text).unwrap();
        assert_eq!(cfg.looker.max_rows, 100_000);
    }
}
