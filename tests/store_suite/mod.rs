//! Conformance suite for `Store` implementations.
//!
//! Every behaviour is a generic async function; the [`store_suite!`] macro turns each one into
//! its own `#[tokio::test]` for a given constructor:
//!
//! ```ignore
//! #[macro_use]
//! mod store_suite;
//!
//! store_suite!(|| async { Box::new(MyStore::new().await.expect("store")) });
//! ```
//!
//! The constructor is a closure (or function path) returning a future of a pointer to a store:
//! anything that derefs to a `Store` and is `Send + Sync + 'static` (`Box<MyStore>`,
//! `Box<dyn Store>`, `Arc<…>`, or a fixture struct that keeps a temp dir alive). It is called
//! once per test.
//!
//! Tests use unique ids (random suffixes) and never assume the store is empty, so the suite can
//! run against a shared server. Lock timestamps are whole seconds, so backends that keep
//! milliseconds (DynamoDB) compare equal.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use ml_connector::domain::journal::{JournalLine, JournalPart, LedgerAccount, LineKind};
use ml_connector::domain::run::{
    AuditEvent, EventData, EventKind, EventLevel, EventPayload, LineRecord, LineStatus, RowStatus,
    RunKeys, RunRecord, RunStatus, RunTotals, SourceRowRecord,
};
use ml_connector::domain::source::{Cell, SourceRef};
use ml_connector::store::{LockOutcome, Store, StoreError};

/// Generates one `#[tokio::test]` per behaviour of the suite for the given constructor.
macro_rules! store_suite {
    ($make:expr) => {
        store_suite!(@each $make;
            run_round_trip_is_exact,
            get_missing_run_is_none,
            insert_duplicate_run_fails,
            update_run_replaces_record,
            update_missing_run_is_not_found,
            list_runs_orders_filters_and_limits,
            runs_for_period_filters_and_orders,
            source_rows_upsert_and_order,
            lines_upsert_and_order,
            put_lines_requires_the_run,
            events_in_insertion_order,
            events_keep_kinds_levels_and_payloads,
            find_line_by_ref_takes_most_recent_run,
            lock_acquire_then_in_progress,
            lock_complete_then_completed,
            lock_expired_in_progress_is_taken_over,
            lock_expired_record_is_reacquired,
            lock_non_owner_cannot_complete_or_release,
            lock_release_lets_another_owner_acquire,
            lock_renewal_extends_the_lease,
            lock_non_owner_cannot_renew,
            lock_taken_over_cannot_be_renewed,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn lock_concurrent_acquire_has_one_winner() {
            let fixture = ::std::sync::Arc::new(($make)().await);
            $crate::store_suite::lock_concurrent_acquire_has_one_winner(fixture).await;
        }
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let fixture = ($make)().await;
                $crate::store_suite::$name(&*fixture).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A unique id: `prefix-` and 16 random hex digits.
pub fn uid(prefix: &str) -> String {
    format!("{prefix}-{:016x}", fastrand::u64(..))
}

/// A fixed instant plus `secs` seconds (whole seconds: safe for millisecond backends).
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
        .single()
        .expect("valid base time")
        + Duration::seconds(secs)
}

pub use crate::common::dec;

/// Canonical JSON of a record: equality here means nothing was lost, including decimal scale.
pub fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serializable")
}

pub fn run(
    run_id: &str,
    instance: &str,
    keys: (&str, &str),
    started_at: DateTime<Utc>,
) -> RunRecord {
    RunRecord {
        run_id: run_id.to_string(),
        instance: instance.to_string(),
        keys: RunKeys {
            period_key: keys.0.to_string(),
            run_key: keys.1.to_string(),
        },
        source: SourceRef::Look {
            look_id: "42".to_string(),
        },
        period: "2026-W47".to_string(),
        run_date: NaiveDate::from_ymd_opt(2026, 11, 22).expect("date"),
        config_version: "cfg-0001".to_string(),
        trigger: "cli".to_string(),
        status: RunStatus::Started,
        totals: RunTotals::default(),
        journals: Vec::new(),
        message: None,
        started_at,
        finished_at: None,
    }
}

/// A run with unique ids of its own.
pub fn fresh_run(started_at: DateTime<Utc>) -> RunRecord {
    run(
        &uid("run"),
        &uid("inst"),
        (&uid("pk"), &uid("rk")),
        started_at,
    )
}

pub fn row(run_id: &str, row_index: usize, amount: &str) -> SourceRowRecord {
    let mut cells = BTreeMap::new();
    cells.insert("fees.amount".to_string(), Cell::Number(dec(amount)));
    cells.insert("fees.channel".to_string(), Cell::Text("AMZ".to_string()));
    cells.insert("fees.note".to_string(), Cell::Null);
    cells.insert("fees.final".to_string(), Cell::Bool(true));
    SourceRowRecord {
        run_id: run_id.to_string(),
        row_index,
        row_hash: format!("hash{row_index:04}"),
        cells,
        status: RowStatus::Mapped,
        line_nos: vec![u32::try_from(row_index).expect("small index") + 1],
        errors: Vec::new(),
    }
}

pub fn line(run_id: &str, legal_entity: &str, line_no: u32, amount: &str) -> LineRecord {
    let mut account = LedgerAccount::new("618100");
    account
        .dimensions
        .insert("CostCenter".to_string(), "022".to_string());
    LineRecord {
        run_id: run_id.to_string(),
        legal_entity: legal_entity.to_string(),
        // Not the default, so the stores must round-trip it.
        part: JournalPart { part: 2, of: 3 },
        line: JournalLine {
            line_no,
            voucher: 1,
            trans_date: NaiveDate::from_ymd_opt(2026, 11, 22).expect("date"),
            account,
            offset_account: Some(LedgerAccount::new("110180")),
            currency: "EUR".to_string(),
            amount: dec(amount),
            text: format!("fees L{line_no:04}"),
            kind: LineKind::Detail,
            source_rows: vec![line_no as usize - 1],
            source_column: None,
        },
        account_display: "618100--022".to_string(),
        offset_display: Some("110180".to_string()),
        status: LineStatus::Pending,
        journal_batch: None,
        d365_line_number: None,
        d365_response: None,
    }
}

pub fn event(run_id: &str, at: DateTime<Utc>, message: &str) -> AuditEvent {
    AuditEvent {
        run_id: run_id.to_string(),
        at,
        level: EventLevel::Info,
        kind: EventKind::Post,
        message: message.to_string(),
        payload: None,
    }
}

/// Event rows of `run_id` exactly as the store wrote them before level, kind and payload were
/// typed (serde of `{run_id, at, level: String, kind: String, message}`), oldest first: a
/// reversal, a "reversed" note, an unposted-journal deletion, a kind and a level this version
/// does not know.
pub fn old_event_rows(run_id: &str) -> Vec<String> {
    [
        ("2026-11-23T10:00:00Z", "info", "reversal", "reversal of run r-20261123-old (run key 0a1b2c3d4e-aaaaaa), journals usmf/B0001, demf/B0002"),
        ("2026-11-23T10:00:01.250Z", "info", "reversed", "reversed by run r-20261123-rev (run key 0a1b2c3d4e-bbbbbb): 2 journal(s); the period is free for a corrected re-post"),
        ("2026-11-23T10:00:02Z", "warn", "deleted_unposted", "deleted 3 line(s) of unposted journal usmf/B0001 from D365; the period is free for a corrected re-post"),
        ("2026-11-23T10:00:03Z", "info", "some_future_kind", "written by a newer version"),
        ("2026-11-23T10:00:04Z", "debug", "post", "a level this version does not know"),
    ]
    .iter()
    .map(|(at, level, kind, message)| {
        serde_json::json!({
            "run_id": run_id,
            "at": at,
            "level": level,
            "kind": kind,
            "message": message,
        })
        .to_string()
    })
    .collect()
}

/// Checks that the rows of [`old_event_rows`] read back with nothing lost, and that readers of
/// event data fall back to the message text.
pub fn assert_old_events_read(run_id: &str, events: &[AuditEvent]) {
    let rows = old_event_rows(run_id);
    assert_eq!(events.len(), rows.len(), "{events:#?}");
    for (e, raw) in events.iter().zip(&rows) {
        // Re-encoding gives back the same row: nothing lost, nothing added.
        let raw: serde_json::Value = serde_json::from_str(raw).expect("raw json");
        assert_eq!(serde_json::to_value(e).expect("encode"), raw);
        assert_eq!(e.run_id, run_id);
        assert!(e.payload.is_none());
    }
    assert_eq!(events[0].kind, EventKind::Reversal);
    assert_eq!(events[0].level, EventLevel::Info);
    assert_eq!(events[0].reversal_of().as_deref(), Some("r-20261123-old"));
    assert_eq!(events[1].kind, EventKind::Reversed);
    assert_eq!(
        events[1].at,
        Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 1).unwrap() + Duration::milliseconds(250)
    );
    assert!(events[1].reversed_by("r-20261123-rev"));
    assert!(!events[1].reversed_by("r-20261123-other"));
    assert_eq!(events[2].kind, EventKind::DeletedUnposted);
    assert_eq!(events[2].level, EventLevel::Warn);
    assert_eq!(events[3].kind, EventKind::Other("some_future_kind".into()));
    assert_eq!(events[3].message, "written by a newer version");
    assert_eq!(events[4].level, EventLevel::Other("debug".into()));
    assert_eq!(events[4].kind, EventKind::Post);
}

fn ids(runs: &[RunRecord]) -> Vec<&str> {
    runs.iter().map(|r| r.run_id.as_str()).collect()
}

fn line_keys(lines: &[LineRecord]) -> Vec<(String, u32)> {
    lines
        .iter()
        .map(|l| (l.legal_entity.clone(), l.line.line_no))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Runs

pub async fn run_round_trip_is_exact<S: Store + ?Sized>(store: &S) {
    let started = at(0) + Duration::nanoseconds(123_456_789);
    let mut a = fresh_run(started);
    a.status = RunStatus::Completed;
    a.totals = RunTotals {
        source_total: dec("0.30000000000000004"),
        mapped_total: dec("-1234.57"),
        rounding_residue: dec("1.10"),
        created_debit: dec("79228162514264337593543950335"),
        created_credit: dec("0.0000000000000000000000000001"),
        source_rows: 3,
        journal_lines: 4,
        created_lines: 4,
    };
    a.journals = vec![
        ("demf".to_string(), "000123".to_string()),
        ("usmf".to_string(), "USMF-000045".to_string()),
    ];
    a.message = Some("posted «fees» — ok".to_string());
    a.finished_at = Some(started + Duration::milliseconds(1500));

    let mut b = fresh_run(at(1));
    b.source = SourceRef::Query {
        model: "finance".to_string(),
        explore: "fees".to_string(),
        query_id: Some("9876".to_string()),
        definition: r#"{"fields":["fees.amount"],"filters":{"fees.date":"last week"}}"#.to_string(),
    };
    let mut c = fresh_run(at(2));
    c.source = SourceRef::ScheduledPlan {
        scheduled_plan_id: Some("17".to_string()),
        query_id: None,
        look_url: Some("https://looker.example/looks/42".to_string()),
    };
    c.status = RunStatus::AlreadyPosted;

    for r in [&a, &b, &c] {
        store.insert_run(r).await.expect("insert");
    }
    for r in [&a, &b, &c] {
        let got = store
            .get_run(&r.run_id)
            .await
            .expect("get")
            .expect("stored run");
        assert_eq!(&got, r);
        assert_eq!(json(&got), json(r), "lossless round trip of {}", r.run_id);
    }
    let got = store.get_run(&a.run_id).await.expect("get").expect("run");
    assert_eq!(got.totals.source_total.to_string(), "0.30000000000000004");
    assert_eq!(got.totals.mapped_total.to_string(), "-1234.57");
    assert_eq!(got.totals.rounding_residue.to_string(), "1.10");
    // The same record comes back the same way through the listing paths.
    let listed = store.list_runs(Some(&a.instance), 10).await.expect("list");
    assert_eq!(listed.iter().map(json).collect::<Vec<_>>(), vec![json(&a)]);
    let by_period = store
        .runs_for_period(&a.instance, &a.keys.period_key)
        .await
        .expect("period");
    assert_eq!(
        by_period.iter().map(json).collect::<Vec<_>>(),
        vec![json(&a)]
    );
}

pub async fn get_missing_run_is_none<S: Store + ?Sized>(store: &S) {
    assert_eq!(store.get_run(&uid("missing")).await.expect("get"), None);
}

pub async fn insert_duplicate_run_fails<S: Store + ?Sized>(store: &S) {
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("first insert");
    let mut again = r.clone();
    again.status = RunStatus::Failed;
    again.message = Some("should not overwrite".to_string());
    match store.insert_run(&again).await {
        Err(StoreError::Duplicate(_)) => {}
        other => panic!("expected Duplicate, got {other:?}"),
    }
    let got = store.get_run(&r.run_id).await.expect("get");
    assert_eq!(got, Some(r), "the duplicate must not change the stored run");
}

pub async fn update_run_replaces_record<S: Store + ?Sized>(store: &S) {
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    let mut done = r.clone();
    done.status = RunStatus::Completed;
    done.totals.created_debit = dec("100.05");
    done.totals.created_credit = dec("100.05");
    done.totals.created_lines = 2;
    done.journals = vec![("usmf".to_string(), "000777".to_string())];
    done.message = Some("done".to_string());
    done.finished_at = Some(at(30));
    store.update_run(&done).await.expect("update");
    let got = store.get_run(&r.run_id).await.expect("get").expect("run");
    assert_eq!(json(&got), json(&done));
    // Listings see the new status too.
    let listed = store.list_runs(Some(&r.instance), 5).await.expect("list");
    assert_eq!(listed, vec![done]);
}

pub async fn update_missing_run_is_not_found<S: Store + ?Sized>(store: &S) {
    let r = fresh_run(at(0));
    match store.update_run(&r).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(
        store.get_run(&r.run_id).await.expect("get"),
        None,
        "update must not insert"
    );
}

pub async fn list_runs_orders_filters_and_limits<S: Store + ?Sized>(store: &S) {
    let inst = uid("inst");
    let other = uid("inst");
    let base = uid("run");
    let pk = uid("pk");
    // Inserted out of order; two share a start time (tie broken by run_id ascending).
    let r_old = run(&format!("{base}-old"), &inst, (&pk, "rk1"), at(-3600));
    let r_mid_b = run(&format!("{base}-mid-b"), &inst, (&pk, "rk2"), at(0));
    let r_new = run(&format!("{base}-new"), &inst, (&pk, "rk3"), at(3600));
    let r_mid_a = run(&format!("{base}-mid-a"), &inst, (&pk, "rk4"), at(0));
    let r_other = run(&format!("{base}-other"), &other, (&pk, "rk5"), at(7200));
    for r in [&r_mid_b, &r_old, &r_other, &r_new, &r_mid_a] {
        store.insert_run(r).await.expect("insert");
    }

    let all = store.list_runs(Some(&inst), 100).await.expect("list");
    assert_eq!(
        ids(&all),
        vec![
            r_new.run_id.as_str(),
            r_mid_a.run_id.as_str(),
            r_mid_b.run_id.as_str(),
            r_old.run_id.as_str()
        ]
    );
    let two = store.list_runs(Some(&inst), 2).await.expect("list");
    assert_eq!(
        ids(&two),
        vec![r_new.run_id.as_str(), r_mid_a.run_id.as_str()]
    );
    assert!(store
        .list_runs(Some(&inst), 0)
        .await
        .expect("list")
        .is_empty());
    let others = store.list_runs(Some(&other), 100).await.expect("list");
    assert_eq!(ids(&others), vec![r_other.run_id.as_str()]);
    assert!(store
        .list_runs(Some(&uid("inst")), 100)
        .await
        .expect("list")
        .is_empty());

    // Unfiltered: the store may hold other runs, so check shape rather than content.
    let any = store.list_runs(None, 3).await.expect("list");
    assert!(!any.is_empty() && any.len() <= 3, "got {} runs", any.len());
    assert!(
        any.windows(2).all(|w| w[0].started_at >= w[1].started_at),
        "unfiltered listing is most recent first"
    );
    assert!(any[0].started_at >= r_other.started_at, "newest first");
    assert!(store.list_runs(None, 0).await.expect("list").is_empty());
}

pub async fn runs_for_period_filters_and_orders<S: Store + ?Sized>(store: &S) {
    let inst = uid("inst");
    let other_inst = uid("inst");
    let pk = uid("pk");
    let other_pk = uid("pk");
    let first = run(&uid("run"), &inst, (&pk, "rk-a"), at(0));
    let second = run(&uid("run"), &inst, (&pk, "rk-b"), at(60));
    let other_period = run(&uid("run"), &inst, (&other_pk, "rk-c"), at(120));
    let other_instance = run(&uid("run"), &other_inst, (&pk, "rk-d"), at(180));
    for r in [&first, &other_period, &second, &other_instance] {
        store.insert_run(r).await.expect("insert");
    }
    let got = store.runs_for_period(&inst, &pk).await.expect("period");
    assert_eq!(
        ids(&got),
        vec![second.run_id.as_str(), first.run_id.as_str()]
    );
    let got = store
        .runs_for_period(&inst, &other_pk)
        .await
        .expect("period");
    assert_eq!(ids(&got), vec![other_period.run_id.as_str()]);
    let got = store
        .runs_for_period(&other_inst, &pk)
        .await
        .expect("period");
    assert_eq!(ids(&got), vec![other_instance.run_id.as_str()]);
    assert!(store
        .runs_for_period(&inst, &uid("pk"))
        .await
        .expect("period")
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Source rows, lines, events

pub async fn source_rows_upsert_and_order<S: Store + ?Sized>(store: &S) {
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    let other = uid("run");
    store.put_source_rows(&[]).await.expect("empty batch");
    // Out of order, and 10 after 2 (numeric, not text, order).
    let batch = vec![
        row(&r.run_id, 10, "5"),
        row(&r.run_id, 0, "0.30000000000000004"),
        row(&r.run_id, 2, "-1234.57"),
        row(&r.run_id, 1, "1.10"),
        row(&other, 0, "9"),
    ];
    store.put_source_rows(&batch).await.expect("put rows");

    let mut rejected = row(&r.run_id, 1, "1.10");
    rejected.status = RowStatus::Rejected;
    rejected.line_nos.clear();
    rejected.errors = vec!["fees.channel: unknown channel AMZ".to_string()];
    store
        .put_source_rows(std::slice::from_ref(&rejected))
        .await
        .expect("upsert row");

    let got = store.source_rows(&r.run_id).await.expect("rows");
    assert_eq!(
        got.iter().map(|x| x.row_index).collect::<Vec<_>>(),
        vec![0, 1, 2, 10]
    );
    assert_eq!(json(&got[0]), json(&batch[1]));
    assert_eq!(json(&got[1]), json(&rejected));
    assert_eq!(json(&got[2]), json(&batch[2]));
    assert_eq!(json(&got[3]), json(&batch[0]));
    assert_eq!(
        got[0].cells.get("fees.amount"),
        Some(&Cell::Number(dec("0.30000000000000004")))
    );
    assert_eq!(store.source_rows(&other).await.expect("rows").len(), 1);
    assert!(store
        .source_rows(&uid("run"))
        .await
        .expect("rows")
        .is_empty());
}

pub async fn lines_upsert_and_order<S: Store + ?Sized>(store: &S) {
    let r = fresh_run(at(0));
    let other = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    store.insert_run(&other).await.expect("insert");
    store.put_lines(&[]).await.expect("empty batch");
    let batch = vec![
        line(&r.run_id, "usmf", 10, "-1234.57"),
        line(&r.run_id, "usmf", 9, "1234.57"),
        line(&r.run_id, "demf", 2, "0.30000000000000004"),
        line(&r.run_id, "demf", 1, "-0.30000000000000004"),
        line(&other.run_id, "usmf", 1, "7"),
    ];
    store.put_lines(&batch).await.expect("put lines");

    let mut created = batch[0].clone();
    created.status = LineStatus::Created;
    created.journal_batch = Some("USMF-000045".to_string());
    created.d365_line_number = Some("10.0000000000000000".to_string());
    created.d365_response = Some("201 Created".to_string());
    store
        .put_lines(std::slice::from_ref(&created))
        .await
        .expect("upsert line");

    let got = store.lines(&r.run_id).await.expect("lines");
    assert_eq!(
        line_keys(&got),
        vec![
            ("demf".to_string(), 1),
            ("demf".to_string(), 2),
            ("usmf".to_string(), 9),
            ("usmf".to_string(), 10)
        ]
    );
    assert_eq!(json(&got[0]), json(&batch[3]));
    assert_eq!(json(&got[1]), json(&batch[2]));
    assert_eq!(json(&got[2]), json(&batch[1]));
    assert_eq!(json(&got[3]), json(&created));
    assert_eq!(got[3].status, LineStatus::Created);
    assert_eq!(
        got[3].d365_line_number.as_deref(),
        Some("10.0000000000000000")
    );
    assert_eq!(got[3].line.amount.to_string(), "-1234.57");
    assert_eq!(store.lines(&other.run_id).await.expect("lines").len(), 1);
    assert!(store.lines(&uid("run")).await.expect("lines").is_empty());
}

pub async fn put_lines_requires_the_run<S: Store + ?Sized>(store: &S) {
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    let missing = uid("run");
    match store.put_lines(&[line(&missing, "usmf", 1, "1")]).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A batch naming a missing run writes nothing at all.
    let mixed = [
        line(&r.run_id, "usmf", 1, "1"),
        line(&missing, "usmf", 1, "1"),
    ];
    match store.put_lines(&mixed).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(store.lines(&r.run_id).await.expect("lines").is_empty());
    assert!(store.lines(&missing).await.expect("lines").is_empty());
}

pub async fn events_in_insertion_order<S: Store + ?Sized>(store: &S) {
    let run_id = uid("run");
    let other = uid("run");
    // Same timestamp for all, and messages not in sort order: order must be insertion order.
    let messages = [
        "extract",
        "validation",
        "post",
        "retry",
        "afterwards",
        "done",
    ];
    for (i, m) in messages.iter().enumerate() {
        store
            .append_event(&event(&run_id, at(0), m))
            .await
            .expect("append");
        if i % 2 == 0 {
            store
                .append_event(&event(&other, at(0), m))
                .await
                .expect("append other");
        }
    }
    let mut warn = event(&run_id, at(-5), "clock went backwards");
    warn.level = "warn".into();
    store.append_event(&warn).await.expect("append");

    let got = store.events(&run_id).await.expect("events");
    let mut expected: Vec<AuditEvent> = messages.iter().map(|m| event(&run_id, at(0), m)).collect();
    expected.push(warn);
    assert_eq!(got, expected);
    assert_eq!(store.events(&other).await.expect("events").len(), 3);
    assert!(store.events(&uid("run")).await.expect("events").is_empty());
}

/// Typed payloads round-trip; kinds, levels and payloads this version does not know are kept.
pub async fn events_keep_kinds_levels_and_payloads<S: Store + ?Sized>(store: &S) {
    let run_id = uid("run");
    let mut reversal = event(
        &run_id,
        at(0),
        "reversal of run r-1 (run key k-1), journals usmf/B1",
    );
    reversal.kind = EventKind::Reversal;
    reversal.payload = Some(
        EventData::Reversal {
            original_run_id: "r-1".into(),
            original_run_key: "k-1".into(),
            journals: vec![("usmf".into(), "B1".into()), ("demf".into(), "B2".into())],
        }
        .into(),
    );
    let mut reversed = event(&run_id, at(1), "reversed by run r-2 (run key k-2)");
    reversed.kind = EventKind::Reversed;
    reversed.payload = Some(
        EventData::Reversed {
            by_run_id: "r-2".into(),
            by_run_key: "k-2".into(),
        }
        .into(),
    );
    let mut deleted = event(&run_id, at(2), "deleted 2 line(s)");
    deleted.kind = EventKind::DeletedUnposted;
    deleted.level = EventLevel::Warn;
    deleted.payload = Some(
        EventData::DeletedUnposted {
            legal_entity: "usmf".into(),
            batch: "B1".into(),
            lines_deleted: 2,
            header_deleted: true,
        }
        .into(),
    );
    let mut newer = event(&run_id, at(3), "from a newer version");
    newer.kind = EventKind::Other("future_kind".into());
    newer.level = EventLevel::Other("notice".into());
    newer.payload = Some(EventPayload::Unknown(
        serde_json::json!({"type": "future_payload", "n": 7}),
    ));
    let all = [reversal, reversed, deleted, newer];
    for e in &all {
        store.append_event(e).await.expect("append");
    }
    let got = store.events(&run_id).await.expect("events");
    assert_eq!(got, all);
    assert_eq!(got[0].reversal_of().as_deref(), Some("r-1"));
    assert!(got[1].reversed_by("r-2"));
    assert!(matches!(
        got[2].data(),
        Some(EventData::DeletedUnposted {
            lines_deleted: 2,
            header_deleted: true,
            ..
        })
    ));
    assert!(got[3].data().is_none());
}

pub async fn find_line_by_ref_takes_most_recent_run<S: Store + ?Sized>(store: &S) {
    let inst = uid("inst");
    let pk = uid("pk");
    let rk = uid("rk");
    let other_rk = uid("rk");
    let older = run(&uid("run"), &inst, (&pk, &rk), at(0));
    let newer = run(&uid("run"), &inst, (&pk, &rk), at(100));
    let newest_without_l1 = run(&uid("run"), &inst, (&pk, &rk), at(200));
    let other_key = run(&uid("run"), &inst, (&pk, &other_rk), at(300));
    for r in [&newer, &older, &other_key, &newest_without_l1] {
        store.insert_run(r).await.expect("insert");
    }
    store
        .put_lines(&[
            line(&older.run_id, "usmf", 1, "1"),
            line(&older.run_id, "usmf", 3, "3"),
            line(&newer.run_id, "usmf", 1, "2"),
            line(&newer.run_id, "usmf", 2, "-2"),
            line(&newest_without_l1.run_id, "usmf", 5, "5"),
            line(&other_key.run_id, "usmf", 1, "9"),
        ])
        .await
        .expect("put lines");

    let l1 = store.find_line_by_ref(&rk, 1).await.expect("find");
    let l1 = l1.expect("line 1");
    assert_eq!(
        (l1.run_id.as_str(), l1.line.amount),
        (newer.run_id.as_str(), dec("2"))
    );
    let l2 = store
        .find_line_by_ref(&rk, 2)
        .await
        .expect("find")
        .expect("line 2");
    assert_eq!(l2.run_id, newer.run_id);
    let l3 = store
        .find_line_by_ref(&rk, 3)
        .await
        .expect("find")
        .expect("line 3");
    assert_eq!(l3.run_id, older.run_id);
    let l5 = store
        .find_line_by_ref(&rk, 5)
        .await
        .expect("find")
        .expect("line 5");
    assert_eq!(l5.run_id, newest_without_l1.run_id);
    let o1 = store
        .find_line_by_ref(&other_rk, 1)
        .await
        .expect("find")
        .expect("other line 1");
    assert_eq!(o1.run_id, other_key.run_id);
    assert_eq!(store.find_line_by_ref(&rk, 4).await.expect("find"), None);
    assert_eq!(
        store.find_line_by_ref(&uid("rk"), 1).await.expect("find"),
        None
    );

    // Upserts are visible through the reference too.
    let mut created = line(&newer.run_id, "usmf", 1, "2");
    created.status = LineStatus::Created;
    created.d365_line_number = Some("1".to_string());
    store
        .put_lines(std::slice::from_ref(&created))
        .await
        .expect("upsert");
    let l1 = store
        .find_line_by_ref(&rk, 1)
        .await
        .expect("find")
        .expect("line 1");
    assert_eq!(json(&l1), json(&created));
}

// ---------------------------------------------------------------------------------------------
// Idempotency locks

fn assert_lost(r: Result<(), StoreError>, what: &str) {
    match r {
        Err(StoreError::LockLost(_)) => {}
        other => panic!("{what}: expected LockLost, got {other:?}"),
    }
}

pub async fn lock_acquire_then_in_progress<S: Store + ?Sized>(store: &S) {
    let key = uid("lock");
    let got = store
        .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
        .await
        .expect("acquire");
    assert_eq!(got, LockOutcome::Acquired);
    let in_progress = LockOutcome::InProgress {
        owner: "owner-a".to_string(),
        until: at(60),
    };
    let got = store
        .acquire_lock(&key, "owner-b", at(10), at(70), at(3610))
        .await
        .expect("acquire");
    assert_eq!(got, in_progress);
    // Not re-entrant: the same owner asking again is told it is in progress (by itself).
    let got = store
        .acquire_lock(&key, "owner-a", at(20), at(80), at(3620))
        .await
        .expect("acquire");
    assert_eq!(got, in_progress);
    // Exactly at the deadline it is still held (strictly `until < now` frees it).
    let got = store
        .acquire_lock(&key, "owner-b", at(60), at(120), at(3660))
        .await
        .expect("acquire");
    assert_eq!(got, in_progress);
    // Other keys are independent.
    let got = store
        .acquire_lock(&uid("lock"), "owner-b", at(10), at(70), at(3610))
        .await
        .expect("acquire");
    assert_eq!(got, LockOutcome::Acquired);
}

pub async fn lock_complete_then_completed<S: Store + ?Sized>(store: &S) {
    let key = uid("lock");
    let result = r#"{"run_id":"run-123","status":"completed"}"#;
    assert_eq!(
        store
            .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
            .await
            .expect("acquire"),
        LockOutcome::Acquired
    );
    store
        .complete_lock(&key, "owner-a", result, at(7200))
        .await
        .expect("complete");
    let completed = LockOutcome::Completed {
        result: result.to_string(),
    };
    for now in [10, 61, 3601, 7200] {
        let got = store
            .acquire_lock(&key, "owner-b", at(now), at(now + 60), at(now + 3600))
            .await
            .expect("acquire");
        assert_eq!(
            got, completed,
            "at +{now}s (completion moved expiry to +7200s)"
        );
    }
    // A completed lock is no longer in progress: neither completed again nor released.
    assert_lost(
        store
            .complete_lock(&key, "owner-a", "again", at(9000))
            .await,
        "second complete",
    );
    assert_lost(
        store.release_lock(&key, "owner-a").await,
        "release after complete",
    );
    let got = store
        .acquire_lock(&key, "owner-c", at(100), at(160), at(3700))
        .await
        .expect("acquire");
    assert_eq!(got, completed, "result unchanged");
}

pub async fn lock_expired_in_progress_is_taken_over<S: Store + ?Sized>(store: &S) {
    let key = uid("lock");
    assert_eq!(
        store
            .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
            .await
            .expect("acquire"),
        LockOutcome::Acquired
    );
    // owner-a crashed; its invocation deadline passed.
    let got = store
        .acquire_lock(&key, "owner-b", at(61), at(121), at(3661))
        .await
        .expect("acquire");
    assert_eq!(got, LockOutcome::Acquired);
    let got = store
        .acquire_lock(&key, "owner-c", at(100), at(160), at(3700))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::InProgress {
            owner: "owner-b".to_string(),
            until: at(121)
        }
    );
    // The old owner lost it.
    assert_lost(
        store.complete_lock(&key, "owner-a", "late", at(7200)).await,
        "complete by the old owner",
    );
    assert_lost(
        store.release_lock(&key, "owner-a").await,
        "release by the old owner",
    );
    store
        .complete_lock(&key, "owner-b", "ok-b", at(7200))
        .await
        .expect("complete by the new owner");
    let got = store
        .acquire_lock(&key, "owner-c", at(200), at(260), at(3800))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::Completed {
            result: "ok-b".to_string()
        }
    );
}

pub async fn lock_expired_record_is_reacquired<S: Store + ?Sized>(store: &S) {
    // A completed record past its expiry.
    let key = uid("lock");
    store
        .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
        .await
        .expect("acquire");
    store
        .complete_lock(&key, "owner-a", "old result", at(3600))
        .await
        .expect("complete");
    let got = store
        .acquire_lock(&key, "owner-b", at(3600), at(3660), at(7200))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::Completed {
            result: "old result".to_string()
        },
        "exactly at expiry it still holds"
    );
    let got = store
        .acquire_lock(&key, "owner-b", at(3601), at(3661), at(7201))
        .await
        .expect("acquire");
    assert_eq!(got, LockOutcome::Acquired);
    let got = store
        .acquire_lock(&key, "owner-c", at(3602), at(3662), at(7202))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::InProgress {
            owner: "owner-b".to_string(),
            until: at(3661)
        },
        "the re-acquired record is in progress again, without the old result"
    );
    store
        .complete_lock(&key, "owner-b", "new result", at(10800))
        .await
        .expect("complete");
    let got = store
        .acquire_lock(&key, "owner-c", at(3700), at(3760), at(7300))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::Completed {
            result: "new result".to_string()
        }
    );

    // An in-progress record whose expiry passed before its in-progress deadline.
    let key = uid("lock");
    store
        .acquire_lock(&key, "owner-a", at(0), at(7200), at(3600))
        .await
        .expect("acquire");
    let got = store
        .acquire_lock(&key, "owner-b", at(3601), at(3661), at(7201))
        .await
        .expect("acquire");
    assert_eq!(got, LockOutcome::Acquired);
}

pub async fn lock_non_owner_cannot_complete_or_release<S: Store + ?Sized>(store: &S) {
    let key = uid("lock");
    store
        .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
        .await
        .expect("acquire");
    assert_lost(
        store
            .complete_lock(&key, "owner-b", "stolen", at(7200))
            .await,
        "complete by non-owner",
    );
    assert_lost(
        store.release_lock(&key, "owner-b").await,
        "release by non-owner",
    );
    let got = store
        .acquire_lock(&key, "owner-c", at(10), at(70), at(3610))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::InProgress {
            owner: "owner-a".to_string(),
            until: at(60)
        },
        "still held by owner-a"
    );
    // Nothing to hold at all.
    let missing = uid("lock");
    assert_lost(
        store
            .complete_lock(&missing, "owner-a", "x", at(7200))
            .await,
        "complete of a missing lock",
    );
    assert_lost(
        store.release_lock(&missing, "owner-a").await,
        "release of a missing lock",
    );
    // The owner still can.
    store
        .complete_lock(&key, "owner-a", "mine", at(7200))
        .await
        .expect("complete by owner");
}

pub async fn lock_release_lets_another_owner_acquire<S: Store + ?Sized>(store: &S) {
    let key = uid("lock");
    store
        .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
        .await
        .expect("acquire");
    store.release_lock(&key, "owner-a").await.expect("release");
    assert_lost(store.release_lock(&key, "owner-a").await, "second release");
    let got = store
        .acquire_lock(&key, "owner-b", at(1), at(61), at(3601))
        .await
        .expect("acquire");
    assert_eq!(got, LockOutcome::Acquired);
    store
        .complete_lock(&key, "owner-b", "b", at(3601))
        .await
        .expect("complete");
}

pub async fn lock_renewal_extends_the_lease<S: Store + ?Sized>(store: &S) {
    let key = uid("lock");
    store
        .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
        .await
        .expect("acquire");
    // Heartbeats at +20 s and +40 s push the lease to +100 s.
    store
        .renew_lock(&key, "owner-a", at(20), at(80), at(3680))
        .await
        .expect("renew");
    store
        .renew_lock(&key, "owner-a", at(40), at(100), at(3700))
        .await
        .expect("renew again");
    // After the original lease (+60 s) another acquirer is still refused.
    for now in [61, 90, 100] {
        let got = store
            .acquire_lock(&key, "owner-b", at(now), at(now + 60), at(now + 3600))
            .await
            .expect("acquire");
        assert_eq!(
            got,
            LockOutcome::InProgress {
                owner: "owner-a".to_string(),
                until: at(100)
            },
            "at +{now}s the renewed lease holds"
        );
    }
    // A renewal whose in-progress deadline passed while nobody took the lock over still
    // succeeds: the owner never lost it.
    store
        .renew_lock(&key, "owner-a", at(110), at(170), at(3770))
        .await
        .expect("renew after the in-progress deadline, not taken over");
    let got = store
        .acquire_lock(&key, "owner-b", at(150), at(210), at(3750))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::InProgress {
            owner: "owner-a".to_string(),
            until: at(170)
        }
    );
    // Once the renewed lease passes, it can be taken over as usual.
    let got = store
        .acquire_lock(&key, "owner-b", at(171), at(231), at(3771))
        .await
        .expect("acquire");
    assert_eq!(got, LockOutcome::Acquired);

    // The renewal also moved the record expiry: the lock is not taken at its original expiry.
    let key = uid("lock");
    store
        .acquire_lock(&key, "owner-a", at(0), at(60), at(100))
        .await
        .expect("acquire");
    store
        .renew_lock(&key, "owner-a", at(50), at(150), at(200))
        .await
        .expect("renew");
    let got = store
        .acquire_lock(&key, "owner-b", at(101), at(161), at(3701))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::InProgress {
            owner: "owner-a".to_string(),
            until: at(150)
        },
        "past the original record expiry"
    );
    // A record past its (renewed) expiry is gone: no renewal brings it back.
    assert_lost(
        store
            .renew_lock(&key, "owner-a", at(201), at(260), at(300))
            .await,
        "renew past the record expiry",
    );
    store
        .release_lock(&key, "owner-a")
        .await
        .expect("the owner still releases its own record");
}

pub async fn lock_non_owner_cannot_renew<S: Store + ?Sized>(store: &S) {
    let key = uid("lock");
    store
        .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
        .await
        .expect("acquire");
    assert_lost(
        store
            .renew_lock(&key, "owner-b", at(10), at(600), at(4200))
            .await,
        "renew by a non-owner",
    );
    let got = store
        .acquire_lock(&key, "owner-c", at(61), at(121), at(3661))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::Acquired,
        "the non-owner's renewal changed nothing: the lease still ended at +60 s"
    );
    // Nothing to renew at all.
    assert_lost(
        store
            .renew_lock(&uid("lock"), "owner-a", at(10), at(70), at(3610))
            .await,
        "renew of a missing lock",
    );
    // A completed lock is not in progress: not renewed.
    let key = uid("lock");
    store
        .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
        .await
        .expect("acquire");
    store
        .complete_lock(&key, "owner-a", "done", at(7200))
        .await
        .expect("complete");
    assert_lost(
        store
            .renew_lock(&key, "owner-a", at(10), at(70), at(3610))
            .await,
        "renew of a completed lock",
    );
    let got = store
        .acquire_lock(&key, "owner-b", at(20), at(80), at(3620))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::Completed {
            result: "done".to_string()
        },
        "completion unchanged"
    );
}

pub async fn lock_taken_over_cannot_be_renewed<S: Store + ?Sized>(store: &S) {
    let key = uid("lock");
    store
        .acquire_lock(&key, "owner-a", at(0), at(60), at(3600))
        .await
        .expect("acquire");
    // owner-a stalled past its lease; owner-b took the lock over.
    let got = store
        .acquire_lock(&key, "owner-b", at(61), at(121), at(3661))
        .await
        .expect("acquire");
    assert_eq!(got, LockOutcome::Acquired);
    assert_lost(
        store
            .renew_lock(&key, "owner-a", at(62), at(122), at(3662))
            .await,
        "renew by the owner that was taken over",
    );
    let got = store
        .acquire_lock(&key, "owner-c", at(100), at(160), at(3700))
        .await
        .expect("acquire");
    assert_eq!(
        got,
        LockOutcome::InProgress {
            owner: "owner-b".to_string(),
            until: at(121)
        },
        "the new owner's lease is untouched"
    );
    store
        .renew_lock(&key, "owner-b", at(110), at(170), at(3710))
        .await
        .expect("the new owner renews");
    // Released by its owner: gone for everyone.
    store.release_lock(&key, "owner-b").await.expect("release");
    assert_lost(
        store
            .renew_lock(&key, "owner-b", at(120), at(180), at(3720))
            .await,
        "renew after release",
    );
}

/// 16 tasks race for one key at the same instant: exactly one wins, the others see the winner.
pub async fn lock_concurrent_acquire_has_one_winner<F>(fixture: Arc<F>)
where
    F: Deref + Send + Sync + 'static,
    F::Target: Store,
{
    const TASKS: usize = 16;
    for round in 0..3 {
        let key = uid("lock");
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..TASKS {
            let (fixture, barrier, key) = (Arc::clone(&fixture), Arc::clone(&barrier), key.clone());
            tasks.spawn(async move {
                let owner = format!("owner-{i:02}");
                barrier.wait().await;
                let got = (**fixture)
                    .acquire_lock(&key, &owner, at(0), at(60), at(3600))
                    .await
                    .expect("acquire");
                (owner, got)
            });
        }
        let mut winners = Vec::new();
        let mut held_by = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("task") {
                (owner, LockOutcome::Acquired) => winners.push(owner),
                (_, LockOutcome::InProgress { owner, until }) => {
                    assert_eq!(until, at(60));
                    held_by.push(owner);
                }
                (_, other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner, got {winners:?}"
        );
        assert_eq!(held_by.len(), TASKS - 1);
        assert!(
            held_by.iter().all(|o| *o == winners[0]),
            "losers see the winner"
        );
    }
}
