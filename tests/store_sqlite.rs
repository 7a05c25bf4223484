//! The store conformance suite against `SqliteStore` (in memory and on a file), plus
//! SQLite-specific behaviour: several connections on one file, persistence, schema versioning
//! and corrupt data.

#[macro_use]
mod store_suite;
mod common;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use ml_connector::store::sqlite::SCHEMA_VERSION;
use ml_connector::store::{LockOutcome, SqliteStore, Store, StoreError};
use store_suite::{at, event, fresh_run, line, row, uid};

/// A store on a file in a temp dir that lives as long as the store.
struct OnFile {
    store: SqliteStore,
    dir: tempfile::TempDir,
}

impl OnFile {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("store.sqlite")).expect("open store");
        Self { store, dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("store.sqlite")
    }
}

impl Deref for OnFile {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
        &self.store
    }
}

mod in_memory {
    use ml_connector::store::SqliteStore;

    store_suite!(|| async { Box::new(SqliteStore::open_in_memory().expect("open in memory")) });
}

mod on_file {
    store_suite!(|| async { super::OnFile::new() });
}

/// The suite also accepts trait objects.
mod boxed_dyn {
    use ml_connector::store::{SqliteStore, Store};

    store_suite!(|| async {
        let store: Box<dyn Store> = Box::new(SqliteStore::open_in_memory().expect("open"));
        store
    });
}

fn raw(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("raw connection")
}

fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

#[test]
fn two_stores_on_one_file_race_for_a_lock() {
    const THREADS: usize = 16;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shared.sqlite");
    let stores = [
        SqliteStore::open(&path).expect("open a"),
        SqliteStore::open(&path).expect("open b"),
    ];
    for round in 0..10 {
        let key = uid("lock");
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let store = stores[i % 2].clone();
                let (barrier, key) = (Arc::clone(&barrier), key.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .expect("runtime");
                    barrier.wait();
                    let got = rt
                        .block_on(store.acquire_lock(
                            &key,
                            &format!("owner-{i}"),
                            at(0),
                            at(60),
                            at(3600),
                        ))
                        .expect("acquire");
                    (format!("owner-{i}"), got)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let winners: Vec<_> = results
            .iter()
            .filter(|(_, o)| *o == LockOutcome::Acquired)
            .map(|(owner, _)| owner.clone())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (_, o) in &results {
            match o {
                LockOutcome::Acquired => {}
                LockOutcome::InProgress { owner, .. } => assert_eq!(owner, &winners[0]),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn two_stores_on_one_file_see_each_others_writes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shared.sqlite");
    let a = SqliteStore::open(&path).expect("open a");
    let b = SqliteStore::open(&path).expect("open b");
    let r = fresh_run(at(0));
    a.insert_run(&r).await.expect("insert via a");
    assert_eq!(
        b.get_run(&r.run_id).await.expect("get via b"),
        Some(r.clone())
    );
    match b.insert_run(&r).await {
        Err(StoreError::Duplicate(_)) => {}
        other => panic!("expected Duplicate, got {other:?}"),
    }
    b.put_lines(&[line(&r.run_id, "usmf", 1, "1")])
        .await
        .expect("lines via b");
    let found = a
        .find_line_by_ref(&r.keys.run_key, 1)
        .await
        .expect("find via a");
    assert_eq!(found.map(|l| l.run_id), Some(r.run_id.clone()));
    assert_eq!(
        a.acquire_lock("k", "a", at(0), at(60), at(3600))
            .await
            .expect("lock a"),
        LockOutcome::Acquired
    );
    a.complete_lock("k", "a", "done", at(3600))
        .await
        .expect("complete a");
    assert_eq!(
        b.acquire_lock("k", "b", at(1), at(61), at(3601))
            .await
            .expect("lock b"),
        LockOutcome::Completed {
            result: "done".to_string()
        }
    );
}

#[tokio::test]
async fn data_persists_across_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir
        .path()
        .join("nested")
        .join("deeper")
        .join("store.sqlite");
    let mut r = fresh_run(at(0));
    {
        let store = SqliteStore::open(&path).expect("open (creates parent dirs)");
        store.insert_run(&r).await.expect("insert");
        r.totals.source_total = store_suite::dec("0.30000000000000004");
        store.update_run(&r).await.expect("update");
        store
            .put_source_rows(&[row(&r.run_id, 0, "-1234.57")])
            .await
            .expect("rows");
        store
            .put_lines(&[line(&r.run_id, "usmf", 1, "-1234.57")])
            .await
            .expect("lines");
        store
            .append_event(&event(&r.run_id, at(1), "extract"))
            .await
            .expect("event");
        store
            .acquire_lock("key", "me", at(0), at(60), at(3600))
            .await
            .expect("lock");
        store
            .complete_lock("key", "me", "result", at(3600))
            .await
            .expect("complete");
    }
    assert!(path.exists());
    let store = SqliteStore::open(&path).expect("reopen");
    let got = store.get_run(&r.run_id).await.expect("get").expect("run");
    assert_eq!(store_suite::json(&got), store_suite::json(&r));
    assert_eq!(
        store.source_rows(&r.run_id).await.expect("rows"),
        vec![row(&r.run_id, 0, "-1234.57")]
    );
    assert_eq!(
        store.lines(&r.run_id).await.expect("lines"),
        vec![line(&r.run_id, "usmf", 1, "-1234.57")]
    );
    assert_eq!(
        store.events(&r.run_id).await.expect("events"),
        vec![event(&r.run_id, at(1), "extract")]
    );
    assert_eq!(
        store
            .acquire_lock("key", "other", at(1), at(61), at(3601))
            .await
            .expect("lock"),
        LockOutcome::Completed {
            result: "result".to_string()
        }
    );
}

#[tokio::test]
async fn open_sets_wal_and_schema_version() {
    let fixture = OnFile::new();
    let conn = raw(&fixture.path());
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    // Reopening an up-to-date database changes nothing.
    drop(SqliteStore::open(&fixture.path()).expect("reopen"));
    let again: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    assert_eq!(again, SCHEMA_VERSION);
}

#[test]
fn open_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.sqlite");
    drop(SqliteStore::open(&path).expect("open"));
    raw(&path)
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump version");
    match SqliteStore::open(&path) {
        Err(e @ StoreError::Backend { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("newer"), "{msg}")
        }
        other => panic!("expected Backend, got {other:?}"),
    }
}

#[tokio::test]
async fn corrupt_rows_are_reported_not_panicked_on() {
    let fixture = OnFile::new();
    let store = &*fixture;
    let r = fresh_run(at(0));
    store.insert_run(&r).await.expect("insert");
    store
        .put_source_rows(&[row(&r.run_id, 0, "1")])
        .await
        .expect("rows");
    store
        .put_lines(&[line(&r.run_id, "usmf", 1, "1")])
        .await
        .expect("lines");
    store
        .append_event(&event(&r.run_id, at(0), "x"))
        .await
        .expect("event");
    let lock = uid("lock");
    store
        .acquire_lock(&lock, "a", at(0), at(60), at(3600))
        .await
        .expect("lock");

    let conn = raw(&fixture.path());
    conn.execute_batch(
        "UPDATE runs SET json = '{\"run_id\": 42';
         UPDATE source_rows SET json = '[]';
         UPDATE lines SET json = 'not json';
         UPDATE events SET json = '{}';
         UPDATE locks SET status = 'BOGUS';",
    )
    .expect("corrupt");

    assert_corrupt(store.get_run(&r.run_id).await, "get_run");
    assert_corrupt(store.list_runs(None, 10).await, "list_runs");
    assert_corrupt(
        store.runs_for_period(&r.instance, &r.keys.period_key).await,
        "runs_for_period",
    );
    assert_corrupt(store.source_rows(&r.run_id).await, "source_rows");
    assert_corrupt(store.lines(&r.run_id).await, "lines");
    assert_corrupt(
        store.find_line_by_ref(&r.keys.run_key, 1).await,
        "find_line_by_ref",
    );
    assert_corrupt(store.events(&r.run_id).await, "events");
    assert_corrupt(
        store
            .acquire_lock(&lock, "b", at(1), at(61), at(3601))
            .await,
        "acquire_lock",
    );

    // Wrong column types are corrupt data too.
    conn.execute_batch(
        "UPDATE runs SET json = x'00ff';
         UPDATE locks SET status = 'INPROGRESS', in_progress_until = 'soon';",
    )
    .expect("corrupt types");
    assert_corrupt(store.get_run(&r.run_id).await, "get_run (blob)");
    assert_corrupt(
        store
            .acquire_lock(&lock, "b", at(1), at(61), at(3601))
            .await,
        "acquire_lock (text deadline)",
    );
}

/// Event rows written before level, kind and payload were typed (including a kind and a level
/// this version does not know) read back with nothing lost.
#[tokio::test]
async fn old_format_event_rows_read_back_unchanged() {
    let fixture = OnFile::new();
    let run_id = uid("run");
    {
        let conn = raw(&fixture.path());
        for json in store_suite::old_event_rows(&run_id) {
            conn.execute(
                "INSERT INTO events (run_id, json) VALUES (?1, ?2)",
                rusqlite::params![run_id, json],
            )
            .expect("raw insert");
        }
    }
    let events = fixture.events(&run_id).await.expect("events");
    store_suite::assert_old_events_read(&run_id, &events);
}
