//! Embedded SQLite implementation of [`Store`], for the CLI, demos and single-host deployments.
//!
//! Full records are stored as JSON; indexed columns (instance, keys, status, start time) are
//! lifted out next to them. The database is in WAL mode with a busy timeout, so several
//! processes may share one file; idempotency locks are taken inside one `BEGIN IMMEDIATE`
//! transaction, which makes them atomic across processes.
//!
//! Work runs on tokio's blocking pool (`spawn_blocking`), so the async methods must be called
//! from within a tokio runtime.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{LockOutcome, Store, StoreError};
use crate::domain::run::{AuditEvent, LineRecord, RunRecord, SourceRowRecord};
use crate::ports::Cause;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const LOCK_IN_PROGRESS: &str = "INPROGRESS";
const LOCK_COMPLETED: &str = "COMPLETED";

/// Schema migrations, in order. `PRAGMA user_version` is the number applied so far; append new
/// steps, never edit old ones.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE runs (
        run_id      TEXT PRIMARY KEY NOT NULL,
        instance    TEXT NOT NULL,
        period_key  TEXT NOT NULL,
        run_key     TEXT NOT NULL,
        status      TEXT NOT NULL,
        started_at  INTEGER NOT NULL, -- nanoseconds since the epoch (ordering only)
        json        TEXT NOT NULL
    );
    CREATE INDEX runs_by_start ON runs (started_at DESC, run_id);
    CREATE INDEX runs_by_instance ON runs (instance, started_at DESC, run_id);
    CREATE INDEX runs_by_period ON runs (instance, period_key, started_at DESC, run_id);
    CREATE INDEX runs_by_run_key ON runs (run_key);

    CREATE TABLE source_rows (
        run_id     TEXT NOT NULL,
        row_index  INTEGER NOT NULL,
        json       TEXT NOT NULL,
        PRIMARY KEY (run_id, row_index)
    ) WITHOUT ROWID;

    CREATE TABLE lines (
        run_id        TEXT NOT NULL,
        legal_entity  TEXT NOT NULL,
        line_no       INTEGER NOT NULL,
        run_key       TEXT NOT NULL,
        json          TEXT NOT NULL,
        PRIMARY KEY (run_id, legal_entity, line_no)
    ) WITHOUT ROWID;
    CREATE INDEX lines_by_ref ON lines (run_key, line_no);

    CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id  TEXT NOT NULL,
        json    TEXT NOT NULL
    );
    CREATE INDEX events_by_run ON events (run_id, id);

    CREATE TABLE locks (
        key                TEXT PRIMARY KEY NOT NULL,
        owner              TEXT NOT NULL,
        status             TEXT NOT NULL,
        in_progress_until  INTEGER NOT NULL, -- microseconds since the epoch
        expires_at         INTEGER NOT NULL, -- microseconds since the epoch
        result             TEXT
    ) WITHOUT ROWID;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// [`Store`] on one SQLite database file (or in memory).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and its parent directory, switches it
    /// to WAL and brings the schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::backend(format!("creating {}", parent.display()), Cause::error(e))
            })?;
        }
        let conn = Connection::open(path).map_err(|e| {
            StoreError::backend(format!("opening {}", path.display()), Cause::error(e))
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::backend(
                path.display().to_string(),
                format!("could not enable WAL (journal_mode is {mode})"),
            ));
        }
        Self::init(conn)
    }

    /// A private in-memory database (for tests and dry runs); gone when the store is dropped.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic elsewhere cannot leave a half-done transaction behind (it rolls back on
            // drop), so a poisoned mutex still guards a usable connection.
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::backend("store task failed", Cause::error(e)))?
    }
}

/// Applies the migrations the database has not seen yet, in one immediate transaction (so two
/// processes opening a new file at once do not both create the schema).
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let current: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::backend(
            "",
            format!(
                "database schema version {current} is newer than this build supports ({SCHEMA_VERSION})"
            ),
        ));
    }
    if current < 0 {
        return Err(StoreError::corrupt(
            "",
            format!("database schema version {current} is invalid"),
        ));
    }
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(|e| {
            StoreError::backend(format!("schema migration {}", i + 1), Cause::error(e))
        })?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::backend("", Cause::error(e))
}

/// Errors reading a column are the stored data's fault (wrong type, NULL, out of range);
/// anything else is the backend's.
fn read_err(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::corrupt("", Cause::error(e)),
        other => backend(other),
    }
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::backend(format!("encoding {what}"), Cause::error(e)))
}

fn decode<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::corrupt(what, Cause::error(e)))
}

/// Sort key for run start times; saturates outside 1677–2262 (order there is not meaningful).
fn ordering_nanos(t: &DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn micros(t: &DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(what: &str, v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| StoreError::corrupt(what, format!("timestamp {v} out of range")))
}

fn to_i64(what: &str, v: usize) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::backend("", format!("{what} {v} does not fit SQLite")))
}

/// Runs `sql` (one `?` parameter list, selecting `key, json`) and decodes every row.
fn query_json<T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let mut rows = stmt.query(params).map_err(backend)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(backend)? {
        let key: String = row.get(0).map_err(read_err)?;
        let json: String = row.get(1).map_err(read_err)?;
        out.push(decode(&format!("{table} {key}"), &json)?);
    }
    Ok(out)
}

struct EncodedRun {
    run_id: String,
    instance: String,
    period_key: String,
    run_key: String,
    status: &'static str,
    started_at: i64,
    json: String,
}

impl EncodedRun {
    fn new(run: &RunRecord) -> Result<Self, StoreError> {
        Ok(Self {
            run_id: run.run_id.clone(),
            instance: run.instance.clone(),
            period_key: run.keys.period_key.clone(),
            run_key: run.keys.run_key.clone(),
            status: run.status.as_str(),
            started_at: ordering_nanos(&run.started_at),
            json: encode("run", run)?,
        })
    }
}

const RUN_ORDER: &str = "ORDER BY started_at DESC, run_id ASC";

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let r = EncodedRun::new(run)?;
        self.with_conn(move |conn| {
            let n = conn
                .execute(
                    "INSERT INTO runs (run_id, instance, period_key, run_key, status, started_at, json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (run_id) DO NOTHING",
                    params![r.run_id, r.instance, r.period_key, r.run_key, r.status, r.started_at, r.json],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::Duplicate(format!("run {}", r.run_id)));
            }
            Ok(())
        })
        .await
    }

    async fn update_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let r = EncodedRun::new(run)?;
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let n = tx
                .execute(
                    "UPDATE runs SET instance = ?2, period_key = ?3, run_key = ?4, status = ?5,
                     started_at = ?6, json = ?7 WHERE run_id = ?1",
                    params![
                        r.run_id,
                        r.instance,
                        r.period_key,
                        r.run_key,
                        r.status,
                        r.started_at,
                        r.json
                    ],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("run {}", r.run_id)));
            }
            // Keys do not normally change, but keep the lineage index true if they do.
            tx.execute(
                "UPDATE lines SET run_key = ?2 WHERE run_id = ?1 AND run_key <> ?2",
                params![r.run_id, r.run_key],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let run_id = run_id.to_owned();
        self.with_conn(move |conn| {
            let mut runs: Vec<RunRecord> = query_json(
                conn,
                "run",
                "SELECT run_id, json FROM runs WHERE run_id = ?1",
                params![run_id],
            )?;
            Ok(runs.pop())
        })
        .await
    }

    async fn list_runs(
        &self,
        instance: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let instance = instance.map(str::to_owned);
        // SQLite treats a negative LIMIT as "no limit"; clamp rather than wrap.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_conn(move |conn| match instance {
            Some(instance) => query_json(
                conn,
                "run",
                &format!("SELECT run_id, json FROM runs WHERE instance = ?1 {RUN_ORDER} LIMIT ?2"),
                params![instance, limit],
            ),
            None => query_json(
                conn,
                "run",
                &format!("SELECT run_id, json FROM runs {RUN_ORDER} LIMIT ?1"),
                params![limit],
            ),
        })
        .await
    }

    async fn runs_for_period(
        &self,
        instance: &str,
        period_key: &str,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let (instance, period_key) = (instance.to_owned(), period_key.to_owned());
        self.with_conn(move |conn| {
            query_json(
                conn,
                "run",
                &format!("SELECT run_id, json FROM runs WHERE instance = ?1 AND period_key = ?2 {RUN_ORDER}"),
                params![instance, period_key],
            )
        })
        .await
    }

    async fn put_source_rows(&self, rows: &[SourceRowRecord]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let encoded = rows
            .iter()
            .map(|r| {
                Ok((
                    r.run_id.clone(),
                    to_i64("row_index", r.row_index)?,
                    encode("source row", r)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO source_rows (run_id, row_index, json) VALUES (?1, ?2, ?3)
                         ON CONFLICT (run_id, row_index) DO UPDATE SET json = excluded.json",
                    )
                    .map_err(backend)?;
                for (run_id, row_index, json) in &encoded {
                    stmt.execute(params![run_id, row_index, json])
                        .map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn source_rows(&self, run_id: &str) -> Result<Vec<SourceRowRecord>, StoreError> {
        let run_id = run_id.to_owned();
        self.with_conn(move |conn| {
            query_json(
                conn,
                "source row of run",
                "SELECT run_id || '#' || row_index, json FROM source_rows WHERE run_id = ?1 ORDER BY row_index",
                params![run_id],
            )
        })
        .await
    }

    async fn put_lines(&self, lines: &[LineRecord]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let encoded = lines
            .iter()
            .map(|l| {
                Ok((
                    l.run_id.clone(),
                    l.legal_entity.clone(),
                    l.line.line_no,
                    encode("line", l)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.with_conn(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            {
                let mut run_key_of = tx
                    .prepare_cached("SELECT run_key FROM runs WHERE run_id = ?1")
                    .map_err(backend)?;
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT INTO lines (run_id, legal_entity, line_no, run_key, json)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (run_id, legal_entity, line_no)
                         DO UPDATE SET run_key = excluded.run_key, json = excluded.json",
                    )
                    .map_err(backend)?;
                let mut cached: Option<(String, String)> = None;
                for (run_id, legal_entity, line_no, json) in &encoded {
                    let run_key = match &cached {
                        Some((id, key)) if id == run_id => key.clone(),
                        _ => {
                            let key: String = run_key_of
                                .query_row(params![run_id], |r| r.get(0))
                                .optional()
                                .map_err(read_err)?
                                .ok_or_else(|| {
                                    StoreError::NotFound(format!("run {run_id} (for its lines)"))
                                })?;
                            cached = Some((run_id.clone(), key.clone()));
                            key
                        }
                    };
                    upsert
                        .execute(params![run_id, legal_entity, line_no, run_key, json])
                        .map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn lines(&self, run_id: &str) -> Result<Vec<LineRecord>, StoreError> {
        let run_id = run_id.to_owned();
        self.with_conn(move |conn| {
            query_json(
                conn,
                "line",
                "SELECT run_id || '/' || legal_entity || '#' || line_no, json FROM lines
                 WHERE run_id = ?1 ORDER BY legal_entity, line_no",
                params![run_id],
            )
        })
        .await
    }

    async fn append_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let run_id = event.run_id.clone();
        let json = encode("event", event)?;
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO events (run_id, json) VALUES (?1, ?2)",
                params![run_id, json],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn events(&self, run_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let run_id = run_id.to_owned();
        self.with_conn(move |conn| {
            query_json(
                conn,
                "event",
                "SELECT run_id || '#' || id, json FROM events WHERE run_id = ?1 ORDER BY id",
                params![run_id],
            )
        })
        .await
    }

    async fn find_line_by_ref(
        &self,
        run_key: &str,
        line_no: u32,
    ) -> Result<Option<LineRecord>, StoreError> {
        let run_key = run_key.to_owned();
        self.with_conn(move |conn| {
            let mut found: Vec<LineRecord> = query_json(
                conn,
                "line",
                "SELECT l.run_id || '/' || l.legal_entity || '#' || l.line_no, l.json
                 FROM lines l JOIN runs r ON r.run_id = l.run_id
                 WHERE l.run_key = ?1 AND l.line_no = ?2
                 ORDER BY r.started_at DESC, r.run_id ASC, l.legal_entity ASC
                 LIMIT 1",
                params![run_key, line_no],
            )?;
            Ok(found.pop())
        })
        .await
    }

    async fn acquire_lock(
        &self,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<LockOutcome, StoreError> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        let (now, until, expires) = (
            micros(&now),
            micros(&in_progress_until),
            micros(&expires_at),
        );
        self.with_conn(move |conn| {
            // IMMEDIATE takes the database write lock up front: the read and the write below
            // cannot interleave with another connection's.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let existing = tx
                .query_row(
                    "SELECT owner, status, in_progress_until, expires_at, result FROM locks WHERE key = ?1",
                    params![key],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, Option<String>>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(read_err)?;
            if let Some((held_by, status, held_until, held_expires, result)) = existing {
                let takeable = held_expires < now
                    || (status == LOCK_IN_PROGRESS && held_until < now);
                if !takeable {
                    return match status.as_str() {
                        LOCK_IN_PROGRESS => Ok(LockOutcome::InProgress {
                            owner: held_by,
                            until: from_micros(&format!("lock {key}"), held_until)?,
                        }),
                        LOCK_COMPLETED => match result {
                            Some(result) => Ok(LockOutcome::Completed { result }),
                            None => Err(StoreError::corrupt(format!("lock {key}"), "completed without a result")),
                        },
                        other => Err(StoreError::corrupt(format!("lock {key}"), format!("unknown status {other:?}"))),
                    };
                }
            }
            tx.execute(
                "INSERT INTO locks (key, owner, status, in_progress_until, expires_at, result)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL)
                 ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, status = excluded.status,
                   in_progress_until = excluded.in_progress_until,
                   expires_at = excluded.expires_at, result = NULL",
                params![key, owner, LOCK_IN_PROGRESS, until, expires],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(LockOutcome::Acquired)
        })
        .await
    }

    async fn renew_lock(
        &self,
        key: &str,
        owner: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        let (now, until, expires) = (
            micros(&now),
            micros(&in_progress_until),
            micros(&expires_at),
        );
        self.with_conn(move |conn| {
            // One conditional statement: atomic against another connection's acquire.
            let n = conn
                .execute(
                    "UPDATE locks SET in_progress_until = ?3, expires_at = ?4
                     WHERE key = ?1 AND owner = ?2 AND status = ?5 AND expires_at >= ?6",
                    params![key, owner, until, expires, LOCK_IN_PROGRESS, now],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::LockLost(format!(
                    "{key} is not in progress for {owner}"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn complete_lock(
        &self,
        key: &str,
        owner: &str,
        result: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (key, owner, result) = (key.to_owned(), owner.to_owned(), result.to_owned());
        let expires = micros(&expires_at);
        self.with_conn(move |conn| {
            let n = conn
                .execute(
                    "UPDATE locks SET status = ?3, result = ?4, expires_at = ?5
                     WHERE key = ?1 AND owner = ?2 AND status = ?6",
                    params![
                        key,
                        owner,
                        LOCK_COMPLETED,
                        result,
                        expires,
                        LOCK_IN_PROGRESS
                    ],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::LockLost(format!(
                    "{key} is not in progress for {owner}"
                )));
            }
            Ok(())
        })
        .await
    }

    async fn release_lock(&self, key: &str, owner: &str) -> Result<(), StoreError> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.with_conn(move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM locks WHERE key = ?1 AND owner = ?2 AND status = ?3",
                    params![key, owner, LOCK_IN_PROGRESS],
                )
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::LockLost(format!(
                    "{key} is not in progress for {owner}"
                )));
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_backend_error_keeps_the_sqlite_error_as_its_source() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A directory is no database file.
        let err = match SqliteStore::open(dir.path()) {
            Err(e) => e,
            Ok(_) => panic!("a directory opened as a database"),
        };
        assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
        let cause = err.source().expect("the cause is the source");
        let sqlite = cause
            .downcast_ref::<Cause>()
            .and_then(Cause::get_ref)
            .and_then(|e| e.downcast_ref::<rusqlite::Error>())
            .expect("the rusqlite error itself");
        // The message is what it was when the cause was only text.
        assert_eq!(
            err.to_string(),
            format!(
                "store backend error: opening {}: {sqlite}",
                dir.path().display()
            )
        );
        assert_eq!(cause.to_string(), sqlite.to_string());
        // …and the chain goes on to SQLite's own error code.
        assert!(cause.source().is_some(), "{sqlite:?}");
    }

    #[test]
    fn a_corrupt_record_keeps_the_json_error_as_its_source() {
        let err = decode::<RunRecord>("run r1", "{").expect_err("not JSON");
        let json = err
            .source()
            .and_then(|c| c.downcast_ref::<Cause>())
            .and_then(Cause::get_ref)
            .and_then(|e| e.downcast_ref::<serde_json::Error>())
            .expect("the serde_json error itself");
        assert_eq!(
            err.to_string(),
            format!("corrupt stored data: run r1: {json}")
        );
    }

    #[test]
    fn a_refusal_without_an_underlying_error_reads_as_before() {
        let err = StoreError::backend("", "database schema version 9 is newer");
        assert_eq!(
            err.to_string(),
            "store backend error: database schema version 9 is newer"
        );
        let err = StoreError::corrupt("lock k", "completed without a result");
        assert_eq!(
            err.to_string(),
            "corrupt stored data: lock k: completed without a result"
        );
    }
}
