//! D365 F&O client against the D365 + Entra simulator, over real loopback sockets.
#![cfg(feature = "sandbox")]

mod common;

use std::time::{Duration, Instant};

use common::{d365_client, dec, fast_retry, sim, today};
use ml_connector::d365::{AuthError, D365Client, D365Error, D365Settings, NewJournalLine};
use ml_connector::domain::reference::{PeriodStatus, VoucherAllocation};
use ml_connector::sandbox::d365::{
    CostModel, D365Seed, D365Sim, SimService, SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET,
    SANDBOX_TENANT,
};
use ml_connector::secrets::Secret;

fn settings_with(
    sim: &D365Sim,
    env: &str,
    tenant: &str,
    client_id: &str,
    secret: &str,
) -> D365Settings {
    let _ = sim;
    let mut s = D365Settings::new(
        env,
        &sim.authority_url(),
        tenant,
        client_id,
        Secret::new(secret),
    )
    .unwrap();
    s.timeout = Duration::from_secs(10);
    s.retry = fast_retry();
    s
}

fn client(sim: &D365Sim) -> D365Client {
    d365_client(sim)
}

fn line(batch: &str, account: &str, debit: &str, credit: &str) -> NewJournalLine {
    NewJournalLine {
        legal_entity: "usmf".into(),
        batch_number: batch.into(),
        trans_date: today(),
        account_display: account.into(),
        offset_display: None,
        debit: dec(debit),
        credit: dec(credit),
        currency: "USD".into(),
        text: "BIX run1 L0001 Marketplace fees".into(),
        voucher: None,
    }
}

fn fno_requests(sim: &D365Sim, method: &str, entity: &str) -> usize {
    sim.request_log()
        .iter()
        .filter(|r| r.service == SimService::FinOps && r.method == method)
        .filter(|r| r.path == format!("/data/{entity}"))
        .count()
}

// ----- Entra / tokens ---------------------------------------------------------------------------

#[tokio::test]
async fn token_is_cached_across_reads() {
    let sim = sim().await;
    let c = client(&sim);
    c.token_check().await.unwrap();
    c.load_reference("usmf").await.unwrap();
    c.find_headers("usmf", "nothing").await.unwrap();
    assert_eq!(sim.token_requests(), 1);
    let log = sim.request_log();
    let fno: Vec<_> = log
        .iter()
        .filter(|r| r.service == SimService::FinOps)
        .collect();
    assert!(fno.len() > 5);
    // Every F&O call carried the bearer and the OData headers.
    for r in fno {
        let h = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("authorization").as_deref(), Some("***"));
        assert_eq!(h("odata-version").as_deref(), Some("4.0"));
        assert_eq!(h("accept").as_deref(), Some("application/json"));
        assert_eq!(r.status, 200, "{r:?}");
    }
}

#[tokio::test]
async fn expired_token_is_refreshed_once_and_call_succeeds() {
    let sim = sim().await;
    let c = client(&sim);
    c.token_check().await.unwrap();
    sim.expire_tokens();
    c.token_check().await.unwrap();
    assert_eq!(sim.token_requests(), 2);
    let statuses: Vec<u16> = sim
        .request_log()
        .iter()
        .filter(|r| r.service == SimService::FinOps)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 401, 200]);
}

#[tokio::test]
async fn token_refreshed_before_expiry_margin() {
    let sim = sim().await;
    // Lifetime below the 120 s margin: every call needs a new token, none gets a 401.
    sim.set_token_lifetime(100);
    let c = client(&sim);
    c.token_check().await.unwrap();
    c.token_check().await.unwrap();
    assert_eq!(sim.token_requests(), 2);
    assert!(sim.request_log().iter().all(|r| r.status != 401));
}

#[tokio::test]
async fn bad_secret_is_classified_without_leaking_it() {
    let sim = sim().await;
    let secret = "wrong-secret-value-123";
    let c = D365Client::new(settings_with(
        &sim,
        &sim.environment_url(),
        SANDBOX_TENANT,
        SANDBOX_CLIENT_ID,
        secret,
    ))
    .unwrap();
    let e = c.token_check().await.unwrap_err();
    assert!(
        matches!(e, D365Error::Auth(AuthError::InvalidSecret { .. })),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("secret VALUE"), "{msg}");
    assert!(!msg.contains(secret) && !format!("{e:?}").contains(secret));
    // Not retried: a wrong secret does not get better.
    assert_eq!(sim.token_requests(), 1);
    assert!(sim.request_log().iter().all(|r| !r.body.contains(secret)));
}

#[tokio::test]
async fn unknown_tenant_is_classified() {
    let sim = sim().await;
    let c = D365Client::new(settings_with(
        &sim,
        &sim.environment_url(),
        "not-our-tenant",
        SANDBOX_CLIENT_ID,
        SANDBOX_CLIENT_SECRET,
    ))
    .unwrap();
    let e = c.token_check().await.unwrap_err();
    assert!(
        matches!(
            e,
            D365Error::Auth(AuthError::WrongTenant { code: 90002, .. })
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("not-our-tenant") && msg.contains("tenant"),
        "{msg}"
    );
    assert!(!msg.contains(SANDBOX_CLIENT_SECRET));
}

#[tokio::test]
async fn wrong_scope_is_classified() {
    let sim = sim().await;
    // Same server, other spelling of the host: Entra knows no resource by that name.
    let env = sim.environment_url().replace("127.0.0.1", "localhost");
    let c = D365Client::new(settings_with(
        &sim,
        &env,
        SANDBOX_TENANT,
        SANDBOX_CLIENT_ID,
        SANDBOX_CLIENT_SECRET,
    ))
    .unwrap();
    let e = c.token_check().await.unwrap_err();
    assert!(
        matches!(e, D365Error::Auth(AuthError::WrongScope { .. })),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("/.default") && msg.contains("environment URL"),
        "{msg}"
    );
    assert!(!msg.contains(SANDBOX_CLIENT_SECRET));
    assert_eq!(
        sim.request_log()
            .iter()
            .filter(|r| r.service == SimService::FinOps)
            .count(),
        0
    );
}

#[tokio::test]
async fn unknown_client_is_classified() {
    let sim = sim().await;
    let c = D365Client::new(settings_with(
        &sim,
        &sim.environment_url(),
        SANDBOX_TENANT,
        "some-other-app",
        SANDBOX_CLIENT_SECRET,
    ))
    .unwrap();
    let e = c.token_check().await.unwrap_err();
    assert!(
        matches!(e, D365Error::Auth(AuthError::AppNotFound { .. })),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("some-other-app") && msg.contains("not found"),
        "{msg}"
    );
    assert!(!msg.contains(SANDBOX_CLIENT_SECRET));
}

#[tokio::test]
async fn unregistered_app_is_not_authorized_with_the_fix() {
    let sim = sim().await;
    sim.unregister_app(SANDBOX_CLIENT_ID);
    let c = client(&sim);
    let e = c.load_reference("usmf").await.unwrap_err();
    assert!(matches!(e, D365Error::NotAuthorized { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("System administration > Setup > Microsoft Entra applications")
            && msg.contains(SANDBOX_CLIENT_ID)
            && msg.contains("roles"),
        "{msg}"
    );
    // Exactly one refresh, then a clear stop (no retry loop).
    assert_eq!(sim.token_requests(), 2);
    assert_eq!(fno_requests(&sim, "GET", "Ledgers"), 2);
}

// ----- Reads --------------------------------------------------------------------------------------

#[tokio::test]
async fn paging_returns_all_rows_and_sends_cross_company() {
    let sim = sim().await;
    sim.set_page_size(2);
    let c = client(&sim);
    let r = c.load_reference("usmf").await.unwrap();
    assert_eq!(r.main_accounts.len(), 6);
    assert_eq!(r.dimension_values.len(), 11);
    assert_eq!(r.journal_names.len(), 3, "only usmf's journal names");
    assert_eq!(fno_requests(&sim, "GET", "MainAccounts"), 3);
    assert_eq!(fno_requests(&sim, "GET", "FinancialDimensionValues"), 6);
    for r in sim
        .request_log()
        .iter()
        .filter(|r| r.service == SimService::FinOps)
    {
        assert!(r.query.contains("cross-company=true"), "{}", r.query);
        assert!(!r.query.contains('+'), "spaces must be %20: {}", r.query);
    }
}

#[tokio::test]
async fn client_page_size_preference_is_sent_and_lines_are_complete() {
    let sim = sim().await;
    let boot = client(&sim);
    let h = boot
        .create_header("usmf", "GenJrn", "paging")
        .await
        .unwrap();
    for i in 0..5 {
        let amount = format!("{}.00", i + 1);
        boot.create_line(&line(&h.batch_number, "618100--022-AMZ", &amount, "0"))
            .await
            .unwrap();
    }
    let mut s = settings_with(
        &sim,
        &sim.environment_url(),
        SANDBOX_TENANT,
        SANDBOX_CLIENT_ID,
        SANDBOX_CLIENT_SECRET,
    );
    s.page_size = Some(2);
    let c = D365Client::new(s).unwrap();
    let lines = c.lines("usmf", &h.batch_number).await.unwrap();
    let numbers: Vec<&str> = lines.iter().map(|l| l.line_number.as_str()).collect();
    assert_eq!(numbers, ["1", "2", "3", "4", "5"]);
    assert_eq!(fno_requests(&sim, "GET", "LedgerJournalLines"), 3);
    let get = sim
        .request_log()
        .into_iter()
        .find(|r| r.method == "GET" && r.path == "/data/LedgerJournalLines")
        .unwrap();
    assert!(get
        .headers
        .iter()
        .any(|(k, v)| k == "prefer" && v == "odata.maxpagesize=2"));
}

#[tokio::test]
async fn load_reference_on_demo_seed() {
    let sim = sim().await;
    let c = client(&sim);
    let r = c.load_reference("USMF").await.unwrap();
    assert_eq!(r.legal_entity, "usmf");
    assert_eq!(r.ledger.chart_of_accounts, "Shared");
    assert_eq!(r.ledger.fiscal_calendar, "Fiscal");
    assert_eq!(r.ledger.accounting_currency, "USD");
    assert_eq!(
        r.format.segments,
        ["MainAccount", "Department", "CostCenter", "Channel"]
    );
    assert_eq!(r.format.delimiter, '-');
    assert!(r.main_accounts["999999"].suspended);
    assert!(!r.main_accounts["618100"].suspended);
    assert_eq!(r.main_accounts["618100"].name, "Marketplace fees");
    assert_eq!(r.main_accounts["618100"].active_from, None);
    assert!(r.dimension_values[&("CostCenter".into(), "099".into())].suspended);
    let old = &r.dimension_values[&("Channel".into(), "OLD".into())];
    assert!(old.active_to.is_some_and(|d| d < today()));
    assert_eq!(
        r.dimension_values[&("Channel".into(), "AMZ".into())].active_to,
        None
    );
    let gen = &r.journal_names["GenJrn"];
    assert_eq!(
        gen.voucher_allocation,
        VoucherAllocation::InConnectionWithBalance
    );
    assert!(!gen.workflow_approval);
    assert!(r.journal_names["GJAppr"].workflow_approval);
    assert_eq!(
        r.journal_names["GJMan"].voucher_allocation,
        VoucherAllocation::Manual
    );
    // 3 years × 12 operating periods (opening/closing periods are not operating).
    assert_eq!(r.periods.len(), 36);
    assert!(r.periods.iter().all(|p| p.status == PeriodStatus::Open));
    assert!(r.period_for(today()).is_some());

    sim.set_period_status("usmf", today(), PeriodStatus::Closed);
    let r = c.load_reference("usmf").await.unwrap();
    assert_eq!(r.period_for(today()).unwrap().status, PeriodStatus::Closed);
    let d = c.load_reference("demf").await.unwrap();
    assert_eq!(d.period_for(today()).unwrap().status, PeriodStatus::Open);
    assert_eq!(d.ledger.accounting_currency, "EUR");
}

#[tokio::test]
async fn missing_active_format_is_a_clear_error() {
    let mut seed = D365Seed::demo(today());
    seed.formats.iter_mut().for_each(|f| f.active = false);
    let sim = D365Sim::start(seed).await.unwrap();
    let e = client(&sim).load_reference("usmf").await.unwrap_err();
    assert!(matches!(e, D365Error::Setup(_)), "{e:?}");
    assert!(
        e.to_string().contains("no active ledger dimension format"),
        "{e}"
    );
}

#[tokio::test]
async fn unknown_company_is_a_clear_error() {
    let sim = sim().await;
    let e = client(&sim).load_reference("xxxx").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("no ledger found for legal entity `xxxx`"),
        "{e}"
    );
}

// ----- Writes -------------------------------------------------------------------------------------

#[tokio::test]
async fn create_header_gets_server_batch_number() {
    let sim = sim().await;
    let c = client(&sim);
    let desc = "BI accruals 2026-03 [run 7f3c9a] O'Neil & Co";
    let h = c.create_header("USMF", "GenJrn", desc).await.unwrap();
    assert_eq!(h.batch_number, "00042");
    assert_eq!(h.legal_entity, "usmf");
    assert_eq!(h.description, desc);
    assert!(!h.is_posted);
    let h2 = c.create_header("usmf", "GenJrn", "second").await.unwrap();
    assert_eq!(h2.batch_number, "00043");
    let d = c
        .create_header("demf", "GenJrn", "other company")
        .await
        .unwrap();
    assert_eq!(d.batch_number, "00042", "per-company number sequence");

    let back = c.header("usmf", "00042").await.unwrap().unwrap();
    assert_eq!(back, h);
    assert!(c.header("usmf", "00999").await.unwrap().is_none());
    // The client never sends the batch number itself.
    let post = sim
        .request_log()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert!(!post.body.contains("JournalBatchNumber"), "{}", post.body);
}

#[tokio::test]
async fn unknown_journal_name_is_rejected() {
    let sim = sim().await;
    let e = client(&sim)
        .create_header("usmf", "NoSuch", "x")
        .await
        .unwrap_err();
    match &e {
        D365Error::Rejected {
            status, messages, ..
        } => {
            assert_eq!(*status, 400);
            assert!(messages[0].contains("'NoSuch'"), "{messages:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.headers().is_empty());
}

#[tokio::test]
async fn create_line_sends_exact_amounts_and_gets_vouchers() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "amounts").await.unwrap();
    let row = c
        .create_line(&line(&h.batch_number, "618100--022-AMZ", "1234.57", "0"))
        .await
        .unwrap();
    assert_eq!(row.debit, dec("1234.57"));
    assert_eq!(row.line_number, "1");
    assert_eq!(row.trans_date, today());
    let stored = sim.lines();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].debit, dec("1234.57"));
    assert_eq!(stored[0].debit.to_string(), "1234.57");
    assert_eq!(stored[0].account_display, "618100--022-AMZ");
    assert_eq!(stored[0].text, "BIX run1 L0001 Marketplace fees");
    let post = sim
        .request_log()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == "/data/LedgerJournalLines")
        .unwrap();
    assert!(
        post.body.contains("\"DebitAmount\":1234.57"),
        "{}",
        post.body
    );
    assert!(
        post.body.contains("\"AccountType\":\"Ledger\""),
        "{}",
        post.body
    );
    assert!(
        post.body
            .contains(&format!("\"TransDate\":\"{}T12:00:00Z\"", today())),
        "{}",
        post.body
    );
    assert!(!post.body.contains("Offset"), "{}", post.body);
    assert!(!post.body.contains("Voucher"), "{}", post.body);

    // Balancing line joins the voucher; the next line starts a new one.
    let r2 = c
        .create_line(&line(&h.batch_number, "200150", "0", "1234.57"))
        .await
        .unwrap();
    let r3 = c
        .create_line(&line(&h.batch_number, "618200-010", "0.10", "0"))
        .await
        .unwrap();
    assert_eq!(r2.voucher, row.voucher);
    assert_ne!(r3.voucher, row.voucher);
    assert_eq!(r3.line_number, "3");
    let back = c.lines("usmf", &h.batch_number).await.unwrap();
    assert_eq!(back.len(), 3);
    assert_eq!(back[1].credit, dec("1234.57"));
    assert_eq!(back[2].debit, dec("0.10"));
    let sh = &sim.headers()[0];
    assert_eq!(sh.total_debit, dec("1234.67"));
    assert_eq!(sh.total_credit, dec("1234.57"));
}

#[tokio::test]
async fn escaped_delimiter_and_offset_account_round_trip() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "offset").await.unwrap();
    let mut l = line(&h.batch_number, "618100-010-011-EBY", "10.00", "0");
    l.offset_display = Some("200150-010-011-EBY".into());
    let row = c.create_line(&l).await.unwrap();
    assert_eq!(row.offset_display.as_deref(), Some("200150-010-011-EBY"));
    assert_eq!(sim.lines()[0].offset_display, "200150-010-011-EBY");
    // An escaped delimiter is one value: "022\-X" is CostCenter "022-X", which does not exist.
    let e = c
        .create_line(&line(&h.batch_number, "618100--022\\-X", "1", "0"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("'022-X'"), "{e}");
}

#[tokio::test]
async fn unknown_main_account_is_rejected_and_nothing_created() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c
        .create_header("usmf", "GenJrn", "bad account")
        .await
        .unwrap();
    let e = c
        .create_line(&line(&h.batch_number, "999998--022-AMZ", "5", "0"))
        .await
        .unwrap_err();
    match &e {
        D365Error::Rejected {
            status,
            entity,
            messages,
        } => {
            assert_eq!(*status, 400);
            assert_eq!(entity, "LedgerJournalLines");
            assert!(messages[0].contains("'999998'") && messages[0].contains("Main account"));
        }
        other => panic!("{other:?}"),
    }
    let shown = e.to_string();
    assert!(
        shown.starts_with("D365 refused the journal line (HTTP 400): The value '999998'"),
        "{shown}"
    );
    assert!(!e.is_transient());
    assert!(sim.lines().is_empty());
    assert_eq!(fno_requests(&sim, "POST", "LedgerJournalLines"), 1);
}

#[tokio::test]
async fn suspended_and_inactive_values_are_rejected() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c
        .create_header("usmf", "GenJrn", "suspended")
        .await
        .unwrap();
    for (account, needle) in [
        ("999999", "999999 is suspended"),
        ("618100--099", "099 for CostCenter is suspended"),
        ("618100---OLD", "OLD for Channel is not active"),
    ] {
        let e = c
            .create_line(&line(&h.batch_number, account, "1", "0"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(needle), "{account}: {e}");
    }
    sim.set_main_account_suspended("618100", true);
    sim.set_dimension_value_suspended("Channel", "AMZ", true);
    let e = c
        .create_line(&line(&h.batch_number, "618100---AMZ", "1", "0"))
        .await
        .unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("618100 is suspended") && s.contains("AMZ for Channel"),
        "{s}"
    );
    assert!(sim.lines().is_empty());
}

#[tokio::test]
async fn closed_period_is_rejected() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "closed").await.unwrap();
    sim.set_period_status("usmf", today(), PeriodStatus::Closed);
    let e = c
        .create_line(&line(&h.batch_number, "618100", "1", "0"))
        .await
        .unwrap_err();
    assert!(matches!(e, D365Error::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("is closed"), "{e}");
    sim.set_period_status("usmf", today(), PeriodStatus::OnHold);
    let e = c
        .create_line(&line(&h.batch_number, "618100", "1", "0"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("on hold"), "{e}");
    assert!(sim.lines().is_empty());
}

#[tokio::test]
async fn missing_currency_and_manual_voucher_rules() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "rules").await.unwrap();
    let mut l = line(&h.batch_number, "618100", "1", "0");
    l.currency = String::new();
    let e = c.create_line(&l).await.unwrap_err();
    assert!(
        e.to_string().contains("'Currency' must be filled in"),
        "{e}"
    );
    let e = c
        .create_line(&line(&h.batch_number, "618100", "1", "1"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");

    let m = c.create_header("usmf", "GJMan", "manual").await.unwrap();
    let e = c
        .create_line(&line(&m.batch_number, "618100", "1", "0"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("'Voucher' must be filled in"), "{e}");
    let mut l = line(&m.batch_number, "618100", "1", "0");
    l.voucher = Some("MAN-001".into());
    assert_eq!(c.create_line(&l).await.unwrap().voucher, "MAN-001");
}

#[tokio::test]
async fn posted_journal_refuses_lines() {
    let sim = sim().await;
    let c = client(&sim);
    let h = c.create_header("usmf", "GenJrn", "posted").await.unwrap();
    sim.post_journal("usmf", &h.batch_number);
    assert!(
        c.header("usmf", &h.batch_number)
            .await
            .unwrap()
            .unwrap()
            .is_posted
    );
    let e = c
        .create_line(&line(&h.batch_number, "618100", "1", "0"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("has been posted"), "{e}");
}

#[tokio::test]
async fn find_headers_by_description_prefix() {
    let sim = sim().await;
    let c = client(&sim);
    let a = c
        .create_header("usmf", "GenJrn", "BI accruals 2026-03 [run 7f3c9a]")
        .await
        .unwrap();
    c.create_header("usmf", "GenJrn", "BI accruals 2026-04 [run 0000aa]")
        .await
        .unwrap();
    c.create_header("demf", "GenJrn", "BI accruals 2026-03 [run 7f3c9a]")
        .await
        .unwrap();
    let found = c.find_headers("usmf", "BI accruals 2026-03").await.unwrap();
    assert_eq!(found, vec![a]);
    assert!(c
        .find_headers("usmf", "nothing like it")
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        c.find_headers("usmf", "a*b").await,
        Err(D365Error::InvalidInput(_))
    ));
    let get = sim
        .request_log()
        .into_iter()
        .find(|r| r.method == "GET" && r.path == "/data/LedgerJournalHeaders")
        .unwrap();
    assert!(
        get.decoded_query()
            .contains("dataAreaId eq 'usmf' and Description eq 'BI accruals 2026-03*'"),
        "{}",
        get.decoded_query()
    );
    assert!(get.query.contains("%20"), "{}", get.query);
}

// ----- Throttling and failures ------------------------------------------------------------------

#[tokio::test]
async fn throttling_honours_retry_after() {
    let sim = sim().await;
    let c = client(&sim);
    c.token_check().await.unwrap();
    sim.throttle_next(1, Some(1));
    let started = Instant::now();
    c.token_check().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let statuses: Vec<u16> = sim
        .request_log()
        .iter()
        .filter(|r| r.service == SimService::FinOps)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 429, 200]);
}

#[tokio::test]
async fn throttled_post_is_retried_and_written_once() {
    let sim = sim().await;
    let c = client(&sim);
    sim.throttle_next(1, Some(0));
    let h = c
        .create_header("usmf", "GenJrn", "after 429")
        .await
        .unwrap();
    assert_eq!(h.batch_number, "00042");
    assert_eq!(sim.headers().len(), 1);
    assert_eq!(fno_requests(&sim, "POST", "LedgerJournalHeaders"), 2);
}

#[tokio::test]
async fn server_error_on_post_is_outcome_unknown_and_not_retried() {
    let sim = sim().await;
    let c = client(&sim);
    // The gateway fails after F&O saved the header: resending would create a duplicate.
    sim.fail_next_writes(1, 502, true);
    let e = c
        .create_header("usmf", "GenJrn", "run 1")
        .await
        .unwrap_err();
    assert!(matches!(e, D365Error::OutcomeUnknown { .. }), "{e:?}");
    assert!(e.to_string().contains("do not resend blindly"), "{e}");
    assert_eq!(fno_requests(&sim, "POST", "LedgerJournalHeaders"), 1);
    assert_eq!(sim.headers().len(), 1, "it was saved after all");
    // Reconciliation finds it.
    assert_eq!(c.find_headers("usmf", "run 1").await.unwrap().len(), 1);

    let h = &sim.headers()[0];
    sim.fail_next_writes(1, 500, false);
    let e = c
        .create_line(&line(&h.batch_number, "618100", "1", "0"))
        .await
        .unwrap_err();
    assert!(matches!(e, D365Error::OutcomeUnknown { .. }), "{e:?}");
    assert_eq!(fno_requests(&sim, "POST", "LedgerJournalLines"), 1);
}

#[tokio::test]
async fn throttling_exhausted_on_read_is_transient() {
    let sim = sim().await;
    let c = client(&sim);
    // More 429s than the retry budget (3 attempts): a transient error, nothing else sent.
    sim.throttle_next(5, Some(0));
    let e = c.token_check().await.unwrap_err();
    assert!(matches!(e, D365Error::Throttled { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(fno_requests(&sim, "GET", "DimensionParameters"), 3);
}

#[tokio::test]
async fn unreachable_environment_is_transient() {
    let sim = sim().await;
    // A closed port on loopback: connection refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut s = settings_with(
        &sim,
        &sim.environment_url(),
        SANDBOX_TENANT,
        SANDBOX_CLIENT_ID,
        SANDBOX_CLIENT_SECRET,
    );
    s.authority = url::Url::parse(&url).unwrap();
    let e = D365Client::new(s).unwrap().token_check().await.unwrap_err();
    assert!(
        matches!(e, D365Error::Auth(AuthError::Unreachable { .. })),
        "{e:?}"
    );
    assert!(e.is_transient());
}

#[test]
fn settings_validate_and_normalize() {
    let s = D365Settings::new(
        "https://Contoso.Operations.Dynamics.com/",
        "https://login.microsoftonline.com",
        "t",
        "c",
        Secret::new("s"),
    )
    .unwrap();
    assert_eq!(
        s.environment_url.as_str(),
        "https://contoso.operations.dynamics.com/"
    );
    assert_eq!(
        s.scope(),
        "https://contoso.operations.dynamics.com/.default"
    );
    assert_eq!(s.token_margin, Duration::from_secs(120));
    let e = D365Settings::new(
        "http://contoso.operations.dynamics.com",
        "https://login.microsoftonline.com",
        "t",
        "c",
        Secret::new("s"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("https"), "{e}");
    assert!(D365Settings::new(
        "https://x.dynamics.com",
        "http://login.example.com",
        "t",
        "c",
        Secret::new("s")
    )
    .is_err());
}

/// The cost model's F&O: two writes to one journal that overlap are an update conflict (the
/// second is refused, nothing of it saved, and the client cannot know its outcome); writes to
/// different journals overlap freely; above the concurrency knee F&O answers 429.
#[tokio::test]
async fn cost_model_serialises_writes_per_journal_and_throttles_at_the_knee() {
    let sim = sim().await;
    let c = client(&sim);
    let h1 = c.create_header("usmf", "GenJrn", "one").await.unwrap();
    let h2 = c.create_header("usmf", "GenJrn", "two").await.unwrap();
    let slow = CostModel {
        request_overhead: Duration::from_millis(300),
        serialise_journal_writes: true,
        ..CostModel::default()
    };
    sim.set_cost_model(slow);

    let (l1, l2) = (
        line(&h1.batch_number, "618100--022-AMZ", "1.00", "0"),
        line(&h1.batch_number, "618100--022-AMZ", "2.00", "0"),
    );
    let (a, b) = tokio::join!(c.create_line(&l1), c.create_line(&l2));
    let (ok, err) = match (a, b) {
        (Ok(x), Err(e)) | (Err(e), Ok(x)) => (x, e),
        other => panic!("exactly one write must win: {other:?}"),
    };
    assert!(
        matches!(err, D365Error::OutcomeUnknown { .. }),
        "an update conflict is a 500: the client cannot know, {err:?}"
    );
    assert_eq!(sim.update_conflicts(), 1);
    let stored = sim.lines();
    assert_eq!(stored.len(), 1, "the conflicting write saved nothing");
    assert_eq!(stored[0].debit, ok.debit);
    let conflict = sim
        .request_log()
        .into_iter()
        .find(|r| r.status == 500)
        .expect("logged");
    assert!(conflict.body.contains("2.00"), "{}", conflict.body);

    let (l3, l4) = (
        line(&h1.batch_number, "618100--022-AMZ", "3.00", "0"),
        line(&h2.batch_number, "618100--022-AMZ", "4.00", "0"),
    );
    let (a, b) = tokio::join!(c.create_line(&l3), c.create_line(&l4));
    a.unwrap();
    b.unwrap();
    assert_eq!(
        sim.update_conflicts(),
        1,
        "different journals do not conflict"
    );
    assert_eq!(sim.peak_journals_writing(), 2);

    // The knee: one request in flight at most; the second read is answered 429 with
    // Retry-After, and the client's retry gets through.
    sim.set_cost_model(CostModel {
        max_in_flight: Some(1),
        retry_after_secs: 1,
        ..slow
    });
    let (a, b) = tokio::join!(
        c.lines("usmf", &h1.batch_number),
        c.lines("usmf", &h2.batch_number)
    );
    assert_eq!(a.unwrap().len(), 2);
    assert_eq!(b.unwrap().len(), 1);
    assert!(
        sim.request_log().iter().any(|r| r.status == 429),
        "the second concurrent read met the knee"
    );
}
