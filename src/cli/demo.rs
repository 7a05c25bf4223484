//! `ml-connector demo`: the whole flow on a laptop, no cloud account.
//!
//! Starts the sandbox Looker and D365 (+ Entra) on loopback, runs the example instance config
//! (`infra/config/weekly-marketplace-fees.toml`) against them, prints the journal D365 now holds,
//! then runs the same period again to show that nothing is posted twice.

use std::path::Path;

use rust_decimal::Decimal;

use super::{render, TerminalProgress};
use crate::domain::config::InstanceConfig;
use crate::engine::{Engine, Mode, Outcome, RunOptions};
use crate::sandbox::d365::{
    D365Seed, D365Sim, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT,
};
use crate::sandbox::looker::{
    LookerSeed, LookerSim, SANDBOX_LOOKER_CLIENT_ID, SANDBOX_LOOKER_CLIENT_SECRET,
};
use crate::secrets::{Credentials, Secret};
use crate::wiring::build_clients;

/// The example config the demo runs (also the documented example).
pub const EXAMPLE_CONFIG: &str = include_str!("../../infra/config/weekly-marketplace-fees.toml");

pub async fn run(store_path: &Path) -> anyhow::Result<i32> {
    let today = chrono::Utc::now().date_naive();
    let looker = LookerSim::start(LookerSeed::demo(today)).await?;
    let d365 = D365Sim::start(D365Seed::demo(today)).await?;
    outln!("Sandbox started on loopback:");
    outln!("  Looker API 4.0      {}", looker.base_url());
    outln!("  D365 F&O (OData)    {}", d365.environment_url());
    outln!("  Entra ID authority  {}", d365.authority_url());

    let mut cfg = InstanceConfig::from_toml(EXAMPLE_CONFIG)?;
    cfg.looker.base_url = looker.base_url();
    cfg.d365.environment_url = d365.environment_url();
    cfg.d365.authority = d365.authority_url();
    cfg.d365.tenant_id = Some(SANDBOX_TENANT.into());
    let creds = Credentials {
        looker_client_id: SANDBOX_LOOKER_CLIENT_ID.into(),
        looker_client_secret: Secret::new(SANDBOX_LOOKER_CLIENT_SECRET),
        d365_tenant_id: SANDBOX_TENANT.into(),
        d365_client_id: SANDBOX_CLIENT_ID.into(),
        d365_client_secret: Secret::new(SANDBOX_CLIENT_SECRET),
    };
    let clients = build_clients(&cfg, &creds)?;
    let store = super::open_store(store_path)?;
    let progress = TerminalProgress::new();
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: &store,
        progress: &progress,
    };
    let opts = RunOptions {
        run_date: today,
        trigger: "demo".into(),
        mode: Mode::Post,
        lease: super::CLI_LEASE,
        deadline: None,
        supersede: false,
    };
    outln!(
        "\nRunning instance `{}` (config infra/config/weekly-marketplace-fees.toml) for the week before {today}",
        cfg.instance
    );
    let first = engine.run(&cfg, &opts).await?;
    // The sandbox stops with the demo, so no config is named: no suggestion of a command
    // that would need it (reverse, replay) is printed.
    let hints = super::hints::Hints::new(None, super::hints::StoreArg::Sqlite(store_path.into()));
    let ctx = render::ReportContext {
        hints: &hints,
        fix: super::fix_for(&first, &store, Mode::Post).await,
        stored: true,
    };
    out!(
        "{}",
        super::terminal::clean(&render::run_report(&first, &ctx))
    );

    // What the sandbox D365 holds, read from the simulator itself, not from our client.
    let headers = d365.headers();
    let lines = d365.lines();
    outln!("\nSandbox D365 now holds {} journal(s):", headers.len());
    for h in &headers {
        let ls: Vec<_> = lines
            .iter()
            .filter(|l| l.batch_number == h.batch_number && l.legal_entity == h.legal_entity)
            .collect();
        let debit: Decimal = ls.iter().map(|l| l.debit).sum();
        let credit: Decimal = ls.iter().map(|l| l.credit).sum();
        outln!(
            "  {}/{} \"{}\": {} lines, debit {debit}, credit {credit}, {}, {}",
            h.legal_entity,
            h.batch_number,
            h.description,
            ls.len(),
            if debit == credit {
                "balanced"
            } else {
                "NOT BALANCED"
            },
            if h.is_posted {
                "posted"
            } else {
                "unposted (finance reviews and posts it)"
            }
        );
    }

    outln!("\nRunning the same period again (a retry, a second delivery, a second cron tick):");
    let second = engine.run(&cfg, &opts).await?;
    outln!(
        "  {}: {}",
        match second.outcome {
            Outcome::AlreadyPosted => "already posted",
            _ => "unexpected",
        },
        second.run.message.as_deref().unwrap_or("")
    );
    outln!(
        "  Sandbox D365 still holds {} journal(s) and {} line(s).",
        d365.headers().len(),
        d365.lines().len()
    );
    outln!(
        "\nAudit trail: ml-connector runs --store {s}\n             ml-connector show {} --store {s}",
        first.run.run_id,
        s = store_path.display()
    );
    if second.outcome != Outcome::AlreadyPosted {
        return Ok(super::exit::FAILED);
    }
    Ok(super::exit::of(first.outcome))
}

/// `ml-connector sandbox`: serve the simulators until Ctrl-C (or SIGTERM), with a config file
/// and the credentials to use printed for the operator.
pub async fn serve(config_out: &Path) -> anyhow::Result<i32> {
    let today = chrono::Utc::now().date_naive();
    let looker = LookerSim::start(LookerSeed::demo(today)).await?;
    let d365 = D365Sim::start(D365Seed::demo(today)).await?;
    let text = EXAMPLE_CONFIG
        .replace("https://acme.cloud.looker.com", &looker.base_url())
        .replace(
            "https://contoso.operations.dynamics.com",
            &d365.environment_url(),
        )
        .replace("https://login.microsoftonline.com", &d365.authority_url());
    // The rewritten config must still be valid (the URLs are the only change).
    InstanceConfig::from_toml(&text)?;
    if let Some(dir) = config_out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(config_out, text)?;
    outln!("Sandbox running on loopback (Ctrl-C to stop):");
    outln!("  Looker API 4.0      {}", looker.base_url());
    outln!("  D365 F&O (OData)    {}", d365.environment_url());
    outln!("  Entra ID authority  {}", d365.authority_url());
    outln!("Config written to {}", config_out.display());
    outln!("Sandbox credentials (test values, not secrets):");
    outln!("  export MLC_LOOKER_CLIENT_ID={SANDBOX_LOOKER_CLIENT_ID} MLC_LOOKER_CLIENT_SECRET={SANDBOX_LOOKER_CLIENT_SECRET}");
    outln!("  export MLC_D365_TENANT_ID={SANDBOX_TENANT} MLC_D365_CLIENT_ID={SANDBOX_CLIENT_ID} MLC_D365_CLIENT_SECRET={SANDBOX_CLIENT_SECRET}");
    outln!("Then: ml-connector check --config {p}; ml-connector preview --config {p}; ml-connector run --config {p}", p = config_out.display());
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let headers = d365.headers();
    outln!(
        "\nStopping. The sandbox D365 held {} journal(s) and {} line(s).",
        headers.len(),
        d365.lines().len()
    );
    Ok(super::exit::OK)
}
