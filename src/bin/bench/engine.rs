//! The `engine` part: whole runs (extract, map, validate, reference reads, header lookups,
//! header creation, posting, read-back, audit) against a D365 simulator that charges F&O's cost
//! model (`CostModel::realistic`: 250 ms per request plus a per-line server time, writes to one
//! journal serialised), once with journal parts posted concurrently and once sequentially.
//!
//! The model runs in compressed time: every server duration is divided by a factor (the line
//! cost / 4 ms, at least 1) and the measured wall time is multiplied back. The connector's own
//! CPU time is multiplied too, so the reported times are an upper bound of the model's.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde::Serialize;

use ml_connector::domain::config::InstanceConfig;
use ml_connector::engine::{Engine, Mode, NoProgress, Outcome, RunOptions};
use ml_connector::sandbox::d365::{CostModel, D365Sim};
use ml_connector::sandbox::looker::{LookerSeed, LookerSim};
use ml_connector::secrets::{Credentials, Secret};
use ml_connector::store::SqliteStore;

use super::{
    extract_config, extract_d365_seed, today, Args, GEN_EXPLORE, GEN_MODEL, SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET, SANDBOX_TENANT,
};

/// Lines per voucher (Microsoft suggests 10 or fewer) and per journal part.
const VOUCHER_LINES: usize = 10;
const PART_LINES: usize = 2000;

/// One measured configuration; the keys of `--json` (stable).
#[derive(Debug, Clone, Serialize)]
pub(super) struct EngineRow {
    /// Journal lines in D365 after the run.
    pub lines: usize,
    pub line_cost_ms: u64,
    /// Wall time with parts in parallel, in model seconds.
    pub wall_s: f64,
    /// Wall time of the same engine with one journal part at a time.
    pub sequential_wall_s: f64,
    pub speedup: f64,
    /// F&O requests of the parallel run.
    pub requests: usize,
    /// The least time the model allows for the parallel run's writes (see [`floor`]).
    pub floor_s: f64,
    /// Journal parts and the concurrency they were posted with.
    pub parts: usize,
    pub concurrency: usize,
    /// The time compression the run used.
    pub time_factor: u32,
}

struct Measured {
    wall: Duration,
    requests: usize,
    /// Lines per journal, as D365 holds them.
    journals: Vec<usize>,
}

pub(super) async fn engine_part(args: &Args) -> anyhow::Result<Vec<EngineRow>> {
    let mut out = Vec::new();
    for &lines in &args.engine_lines {
        for &cost in &args.line_costs {
            let factor = u32::try_from((cost / 4).max(1)).unwrap_or(u32::MAX);
            let model = CostModel::realistic(cost);
            // Rows such that rows + one balancing line per voucher ≈ the wanted line count.
            let rows = lines * (VOUCHER_LINES - 1) / VOUCHER_LINES;
            eprintln!("[engine] {lines} lines at {cost} ms/line (time ÷{factor}): parallel");
            let par = one_run(rows, model.scaled(factor), None).await?;
            eprintln!("[engine] {lines} lines at {cost} ms/line (time ÷{factor}): sequential");
            let seq = one_run(rows, model.scaled(factor), Some(1)).await?;
            let concurrency = concurrency_of(None)?;
            let f = f64::from(factor);
            let wall_s = par.wall.as_secs_f64() * f;
            let sequential_wall_s = seq.wall.as_secs_f64() * f;
            out.push(EngineRow {
                lines: par.journals.iter().sum(),
                line_cost_ms: cost,
                wall_s,
                sequential_wall_s,
                speedup: sequential_wall_s / wall_s,
                requests: par.requests,
                floor_s: floor(&model, &par.journals, concurrency, 200).as_secs_f64(),
                parts: par.journals.len(),
                concurrency,
                time_factor: factor,
            });
        }
    }
    Ok(out)
}

/// The journal-part concurrency a run uses: `d365.max_concurrent_requests` of the bench config.
fn concurrency_of(overridden: Option<usize>) -> anyhow::Result<usize> {
    Ok(overridden.unwrap_or(
        bench_config("http://x", "http://x", "http://x", 1)?
            .d365
            .max_concurrent_requests,
    ))
}

fn bench_config(
    looker: &str,
    env: &str,
    authority: &str,
    rows: usize,
) -> anyhow::Result<InstanceConfig> {
    let mut cfg = InstanceConfig::from_toml(&extract_config(looker, env, authority, rows))
        .map_err(|e| anyhow!("bench config: {e}"))?;
    cfg.journal.max_voucher_lines = VOUCHER_LINES;
    cfg.journal.max_journal_lines = PART_LINES;
    cfg.d365.batch_operations = 200;
    // The model's server times are long; the client waits for them.
    cfg.d365.timeout_secs = 600;
    Ok(cfg)
}

/// One whole run on fresh simulators; `concurrency` overrides `d365.max_concurrent_requests`.
async fn one_run(
    rows: usize,
    model: CostModel,
    concurrency: Option<usize>,
) -> anyhow::Result<Measured> {
    let looker =
        LookerSim::start(LookerSeed::empty().with_generated_explore(GEN_MODEL, GEN_EXPLORE, rows))
            .await?;
    let d365 = D365Sim::start(extract_d365_seed()).await?;
    let mut cfg = bench_config(
        &looker.base_url(),
        &d365.environment_url(),
        &d365.authority_url(),
        rows,
    )?;
    if let Some(c) = concurrency {
        cfg.d365.max_concurrent_requests = c;
    }
    cfg.check().map_err(|e| anyhow!("bench config: {e}"))?;
    let creds = Credentials {
        looker_client_id: SANDBOX_LOOKER_CLIENT_ID.into(),
        looker_client_secret: Secret::new(SANDBOX_LOOKER_CLIENT_SECRET),
        d365_tenant_id: SANDBOX_TENANT.into(),
        d365_client_id: SANDBOX_CLIENT_ID.into(),
        d365_client_secret: Secret::new(SANDBOX_CLIENT_SECRET),
    };
    let clients = ml_connector::wiring::build_clients(&cfg, &creds)?;
    let dir = tempfile_dir()?;
    let store = SqliteStore::open(&dir.join("audit.sqlite"))?;
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &store,
        progress: &NoProgress,
    };
    let opts = RunOptions {
        run_date: today(),
        trigger: "bench".into(),
        mode: Mode::Post,
        lease: chrono::Duration::minutes(30),
        deadline: None,
        supersede: false,
    };
    d365.set_cost_model(model);
    let started = Instant::now();
    let report = engine.run(&cfg, &opts).await?;
    let wall = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    if report.outcome != Outcome::Posted {
        bail!(
            "the bench run did not post: {:?} {:?}",
            report.outcome,
            report.run.message
        );
    }
    if d365.update_conflicts() > 0 {
        bail!(
            "{} update conflicts: writes to one journal overlapped",
            d365.update_conflicts()
        );
    }
    let mut journals: std::collections::BTreeMap<String, usize> = Default::default();
    for l in d365.lines() {
        *journals.entry(l.batch_number).or_default() += 1;
    }
    Ok(Measured {
        wall,
        requests: d365.fno_request_count(),
        journals: journals.into_values().collect(),
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "ml-connector-bench-engine-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// The least time the cost model allows for writing these journals with `concurrency` journals
/// at a time: each journal is one header request plus one `$batch` per `ops` lines, written
/// sequentially; journals are spread over the workers longest first (LPT). Reads are left out,
/// so no run can beat it.
pub(super) fn floor(
    model: &CostModel,
    journals: &[usize],
    concurrency: usize,
    ops: usize,
) -> Duration {
    let mut times: Vec<Duration> = journals
        .iter()
        .map(|&n| {
            let requests = 1 + n.div_ceil(ops.max(1));
            model.request_overhead * requests as u32
                + model.line_cost
                + model.batch_line_cost * n as u32
        })
        .collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    let mut workers = vec![Duration::ZERO; concurrency.max(1)];
    for t in times {
        if let Some(w) = workers.iter_mut().min() {
            *w += t;
        }
    }
    workers.into_iter().max().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_of_equal_parts_is_one_part_per_worker_wave() {
        let m = CostModel::realistic(80);
        // One part of 2,000 lines: header + 10 batches = 11 requests, 2,001 records.
        let one = Duration::from_millis(11 * 250 + 2001 * 80);
        assert_eq!(floor(&m, &[2000; 5], 8, 200), one);
        assert_eq!(floor(&m, &[2000; 5], 1, 200), one * 5);
        assert_eq!(floor(&m, &[2000; 5], 2, 200), one * 3);
    }
}
