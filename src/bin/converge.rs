//! Convergence simulation: many seeds of concurrent posters against the sandbox, each checked
//! for exactly-once posting (see `ml_connector::sandbox::converge` and BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --bin converge -- --seeds 5000 --start 0 --jobs 2
//! ```
//!
//! Prints every failing seed (its scenario, how each poster ended, each violation, and the
//! command that runs it again), then one summary line; exits 1 if any seed failed.

use std::time::{Duration, Instant};

use clap::Parser;
use ml_connector::sandbox::converge::{
    dynamo_available, reproduce_command, run_seed, Options, SeedReport, Summary,
};
use tokio::task::JoinSet;

/// Seeded concurrency simulation of several posters against the sandbox D365.
#[derive(Debug, Parser)]
#[command(name = "converge")]
struct Args {
    /// How many seeds.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Run every seed this many times (a failure that depends on thread timing may need a few
    /// runs of its seed to show again).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Seeds run at the same time (each has its own simulators and stores).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Let some seeds keep their audit trail in DynamoDB on a local moto server
    /// (AWS_ENDPOINT_URL must be a loopback http:// address; real AWS is never used).
    #[arg(long)]
    dynamo: bool,
    /// Control: posters that do not look D365 up by natural key; every seed must fail.
    #[arg(long)]
    naive: bool,
    /// Print every seed, not only the failing ones.
    #[arg(long, short)]
    verbose: bool,
    /// A seed that takes longer fails as a timeout.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

fn main() {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    if args.dynamo && !dynamo_available() {
        eprintln!(
            "converge: --dynamo needs AWS_ENDPOINT_URL pointing at a local moto server (http://127.0.0.1:PORT) and test credentials in the environment"
        );
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    std::process::exit(rt.block_on(run(args)));
}

async fn run(args: Args) -> i32 {
    let opts = Options {
        dynamo: args.dynamo,
        naive: args.naive,
        seed_timeout: Duration::from_secs(args.timeout_secs.max(1)),
        ..Options::default()
    };
    let t0 = Instant::now();
    let mut summary = Summary::default();
    let mut queue = (args.start..args.start + args.seeds)
        .flat_map(|s| std::iter::repeat_n(s, args.repeat.max(1) as usize));
    let mut set: JoinSet<SeedReport> = JoinSet::new();
    let total = args.seeds * u64::from(args.repeat.max(1));
    let mut done = 0u64;
    loop {
        while set.len() < args.jobs.max(1) {
            let Some(seed) = queue.next() else { break };
            let o = opts.clone();
            set.spawn(async move { run_seed(seed, &o).await });
        }
        let Some(r) = set.join_next().await else {
            break;
        };
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                eprintln!("converge: a seed's task failed: {e}");
                return 1;
            }
        };
        done += 1;
        summary.add(&r);
        if !r.passed() {
            let mut kinds: Vec<&str> = r.violations.iter().map(|v| v.kind()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            println!(
                "FAIL seed {}: {}\n{}  reproduce: {}\n",
                r.scenario.seed,
                kinds.join(", "),
                r.describe(),
                reproduce_command(r.scenario.seed, &opts)
            );
        } else if args.verbose {
            println!("ok   seed {}\n{}", r.scenario.seed, r.describe());
        }
        if done.is_multiple_of(100) {
            eprintln!(
                "converge: {done}/{total} seeds, {} failed, {:.0} s",
                summary.failed.len(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let mut failed = summary.failed.clone();
    failed.sort_unstable();
    failed.dedup();
    println!(
        "converge: seeds {}..{}{}{}: {} in {:.1} s (jobs {})",
        args.start,
        args.start + args.seeds,
        if args.repeat > 1 {
            format!(" ×{}", args.repeat)
        } else {
            String::new()
        },
        if args.naive { " (naive control)" } else { "" },
        summary.line(),
        t0.elapsed().as_secs_f64(),
        args.jobs.max(1)
    );
    if !failed.is_empty() {
        println!(
            "failing seeds: {}",
            failed
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        );
        return 1;
    }
    0
}
