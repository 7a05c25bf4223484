//! Seeded concurrency simulation: several posters at once against one sandbox, then the
//! exactly-once invariants checked against D365's own state.
//!
//! Each seed builds a fresh world (the Looker and D365 simulators on loopback, a small Look of
//! 6–20 fee rows for 2026-W47) and a [`Scenario`] drawn from `fastrand::Rng::with_seed(seed)`:
//! `posting = "batch"` or `"lines"`, vouchers by date or by row, balancing lines or an offset
//! account, `max_voucher_lines` / `max_journal_lines` small enough to split the journal into
//! several vouchers and parts; 2–4 posters (each an [`Engine`](crate::engine::Engine) with its
//! own Looker and D365 clients) with separate SQLite stores, one shared store, or a mix, and —
//! when a local moto server is configured — DynamoDB tables; random F&O latency; a random crash
//! point per poster ([`Progress::crash_at`](crate::engine::Progress::crash_at)); random simulator
//! faults (429 with and without `Retry-After`, 5xx and dropped connections on single writes and
//! on `$batch`, with and without the write committed first) armed at the start, once a header
//! exists, or after a delay; a period-lock lease short enough to run out mid-post; a replay after
//! a crash or failure; and sometimes a different main account for one mapping rule in the
//! config of the later posters (overlapping the others, or after they finished).
//!
//! When every poster has stopped, the faults are cleared and **one** final run with no faults
//! settles the world (a fresh store, the config whose mapping D365 holds — or the newest config
//! if D365 holds nothing). Then [`check::check`] compares D365's headers and lines with the
//! Looker total and with every run every store recorded.
//!
//! Reproducing: the scenario (posters, stores, crash points, faults and their triggers, the
//! mapping change, the data) is a pure function of the seed and the `dynamo` / `naive` flags.
//! The interleaving is not: posters are real tasks on a multi-threaded runtime talking to real
//! sockets, so re-running a seed replays the same scenario under fresh thread timing, and a
//! timing-dependent failure may need a few runs (`--repeat`) to show again.

pub mod check;
pub(crate) mod scenario;
mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use check::{check, D365State, Expectation, RunClaim, Violation};
pub use scenario::Scenario;
pub use world::dynamo_available;

/// How the seeds run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Let some seeds keep their audit trail in DynamoDB tables on the local moto server
    /// (`AWS_ENDPOINT_URL`, loopback only; see [`dynamo_available`]). Part of the scenario.
    pub dynamo: bool,
    /// Control mode: every engine (the final one too) is told D365 holds no journal for the
    /// period, as a poster without natural keys would be, and there are no crashes, faults or
    /// mapping changes. Every such seed must fail with duplicates: proof that the harness sees
    /// them end to end.
    pub naive: bool,
    /// A seed that takes longer fails as `timeout`.
    pub seed_timeout: Duration,
    /// Where each seed's SQLite stores go (a fresh directory per seed, removed afterwards).
    pub work_dir: PathBuf,
}

/// `/dev/shm` where it exists (memory-backed: a SQLite commit there costs no fsync, which
/// otherwise dominates a seed's time), else the system temp directory.
pub fn default_work_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dynamo: false,
            naive: false,
            seed_timeout: Duration::from_secs(120),
            work_dir: default_work_dir(),
        }
    }
}

/// What one seed did and found.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub scenario: Scenario,
    /// Broken invariants (empty = the seed passed).
    pub violations: Vec<Violation>,
    /// One line per poster and for the final run: how each ended.
    pub outcomes: Vec<String>,
    /// Headers and lines D365 held at the end.
    pub d365_headers: usize,
    pub d365_lines: usize,
    pub elapsed: Duration,
}

impl SeedReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The scenario, what every poster did, and every violation.
    pub fn describe(&self) -> String {
        let mut s = self.scenario.to_string();
        for o in &self.outcomes {
            s.push_str(&format!("  -> {o}\n"));
        }
        s.push_str(&format!(
            "  D365 at the end: {} header(s), {} line(s); {:.0} ms\n",
            self.d365_headers,
            self.d365_lines,
            self.elapsed.as_secs_f64() * 1000.0
        ));
        // At most 5 of each kind (a duplicated journal is one duplicate per line).
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for v in &self.violations {
            let n = shown.entry(v.kind()).or_default();
            *n += 1;
            if *n <= 5 {
                s.push_str(&format!("  VIOLATION {v}\n"));
            }
        }
        for (kind, n) in shown.into_iter().filter(|(_, n)| *n > 5) {
            s.push_str(&format!("  … and {} more {kind}\n", n - 5));
        }
        s
    }
}

/// Runs one seed: generate its scenario, run it, check it. `opts.dynamo` takes effect only when
/// [`dynamo_available`].
pub async fn run_seed(seed: u64, opts: &Options) -> SeedReport {
    let scenario = Scenario::generate(seed, opts.dynamo && dynamo_available(), opts.naive);
    world::run(scenario, opts).await
}

/// The command that runs `seed` again with the convergence binary.
pub fn reproduce_command(seed: u64, opts: &Options) -> String {
    let mut c = format!(
        "cargo run --release --bin converge -- --start {seed} --seeds 1 --repeat 5 --verbose"
    );
    if opts.dynamo {
        c.push_str(" --dynamo");
    }
    if opts.naive {
        c.push_str(" --naive");
    }
    c
}

/// Totals over many seeds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub seeds: usize,
    pub failed: Vec<u64>,
    /// Violations by kind, and the seeds each was found in.
    pub kinds: BTreeMap<&'static str, Vec<u64>>,
    pub separate_stores: usize,
    pub dynamo: usize,
    pub mapping_changes: usize,
    pub crashes: usize,
    pub faults: usize,
    /// Per-seed wall-clock times.
    pub times: Vec<Duration>,
}

impl Summary {
    pub fn add(&mut self, r: &SeedReport) {
        let s = &r.scenario;
        self.seeds += 1;
        self.separate_stores += usize::from(s.has_separate_stores());
        self.dynamo += usize::from(s.uses_dynamo());
        self.mapping_changes += usize::from(s.change.is_some());
        self.crashes += s.posters.iter().filter(|p| p.crash.is_some()).count();
        self.faults += s.faults.len();
        self.times.push(r.elapsed);
        if !r.passed() {
            self.failed.push(s.seed);
            let mut kinds: Vec<&'static str> = r.violations.iter().map(Violation::kind).collect();
            kinds.sort_unstable();
            kinds.dedup();
            for k in kinds {
                self.kinds.entry(k).or_default().push(s.seed);
            }
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut t = self.times.clone();
        t.sort_unstable();
        if t.is_empty() {
            return Duration::ZERO;
        }
        let i = ((t.len() - 1) as f64 * p).round() as usize;
        t[i]
    }

    /// One line: seeds, failures, what the seeds covered, per-seed times.
    pub fn line(&self) -> String {
        let total: Duration = self.times.iter().sum();
        let mean = if self.times.is_empty() {
            Duration::ZERO
        } else {
            total / self.times.len() as u32
        };
        let kinds = if self.kinds.is_empty() {
            String::new()
        } else {
            format!(
                "; violations: {}",
                self.kinds
                    .iter()
                    .map(|(k, s)| format!("{k} in {} seed(s)", s.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "{} seeds, {} passed, {} failed{kinds}; covered {} with separate stores, {} with DynamoDB, {} mapping changes, {} crash points, {} faults; per seed mean {:.0} ms, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            self.seeds,
            self.seeds - self.failed.len(),
            self.failed.len(),
            self.separate_stores,
            self.dynamo,
            self.mapping_changes,
            self.crashes,
            self.faults,
            mean.as_secs_f64() * 1000.0,
            self.percentile(0.5).as_secs_f64() * 1000.0,
            self.percentile(0.99).as_secs_f64() * 1000.0,
            self.percentile(1.0).as_secs_f64() * 1000.0,
        )
    }
}
