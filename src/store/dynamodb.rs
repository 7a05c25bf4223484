//! DynamoDB implementation of [`Store`], [`ConfigStore`] and [`ReplayRequests`] (the AWS
//! deployment's audit store).
//!
//! # Table contract (fixed: the SAM template creates the table)
//!
//! One table (name from `TABLE_NAME`, passed to [`DynamoStore::new`]): key `pk` (S, HASH) +
//! `sk` (S, RANGE), no GSIs/LSIs, TTL attribute `expiration` (epoch seconds), stream
//! `NEW_AND_OLD_IMAGES`. [`create_table_for_tests`] creates exactly that.
//!
//! # Key design
//!
//! Every read is a `GetItem` or a `Query` on one partition (consistent reads); nothing scans.
//! Full records are stored whole as JSON in the string attribute `record` (the same encoding as
//! the SQLite store: decimals as strings, nothing loses precision); a few fields are lifted out
//! next to it for the console and for key building. `{ts}` below is the run's `started_at` as
//! fixed-width UTC `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`, which sorts chronologically as a string.
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | run | `RUN#{run_id}` | `RUN` | `kind=run`, `run_id`, `instance`, `period_key`, `run_key`, `status`, `started_at`, `rev` (N, optimistic-concurrency revision), `record` |
//! | run index: by instance | `INSTANCE#{instance}` | `RUN#{ts}#{run_id}` | `kind=run_index`, `run_id`, `started_at`, `record` (copy) |
//! | run index: all runs | `ALLRUNS` | `RUN#{ts}#{run_id}` | same |
//! | run index: by period | `PERIOD#{instance}#{period_key}` | `RUN#{ts}#{run_id}` | same |
//! | run index: by run key | `RUNKEY#{run_key}` | `RUN#{ts}#{run_id}` | same |
//! | source row | `RUN#{run_id}` | `ROW#{row_index:020}` | `kind=source_row`, `run_id`, `row_index`, `record` |
//! | journal line | `RUN#{run_id}` | `LINE#{line_no:010}#{legal_entity}` | `kind=line`, `run_id`, `legal_entity`, `line_no`, `status`, `record` |
//! | event | `RUN#{run_id}` | `EVENT#{seq:020}` | `kind=event`, `run_id`, `at`, `level`, `record` |
//! | event counter | `RUN#{run_id}` | `SEQ#EVENT` | `kind=event_seq`, `seq` (N) |
//! | idempotency lock | `LOCK#{key}` | `LOCK` | `kind=lock`, `lock_key`, `owner`, `status` (`INPROGRESS`/`COMPLETED`), `in_progress_expiration` (epoch ms), `expires_at_ms` (epoch ms), `expiration` (epoch s, TTL), `result` |
//! | config (current) | `CONFIG#{instance}` | `CURRENT` | `kind=config`, `instance`, `version`, `toml`, `updated_at` |
//! | config (history) | `CONFIG#{instance}` | `VERSION#{version}` | same (what each run's `config_version` refers to) |
//! | replay request | `REPLAY#{run_id}` | `REQUEST#{rfc3339 now, ms}` | `kind=replay_request`, `run_id`, `requested_by`, `requested_at`, `expiration` (now + 30 days) |
//! | refused webhook request | `RUN#webhook#rejected` | `EVENT#{ts}#{8 random hex}` | `kind=event`, `run_id`, `at`, `level`, `record`, `expiration` (now + 30 days) |
//!
//! How each read works:
//! - `get_run`: `GetItem RUN#{id}/RUN`.
//! - `list_runs`: `Query INSTANCE#{instance}` (or `ALLRUNS` without an instance), newest first,
//!   reading only as many pages as `limit` needs. The index items carry a copy of the record, so
//!   a listing is one query. `ALLRUNS` is a single partition: fine at this connector's write rate
//!   (a handful of runs per instance per day), and without an LSI there is no partition size cap.
//! - `runs_for_period`: `Query PERIOD#{instance}#{period_key}` (results are re-checked against
//!   the record, so an instance name containing `#` cannot alias another's period).
//! - `source_rows` / `lines` / `events`: `Query RUN#{run_id}` with `begins_with(sk, ROW#|LINE#|EVENT#)`;
//!   rows and events come back in key order, lines are re-sorted to (legal entity, line no).
//! - `find_line_by_ref`: `Query RUNKEY#{run_key}` for the runs with that key (most recent
//!   first), then per run `Query RUN#{run_id}` with `begins_with(sk, LINE#{line_no:010}#)`,
//!   `Limit 1` (the first legal entity in ascending order), until one has the line.
//!
//! Ties in `started_at` are ordered by `run_id` ascending in memory after the query (a listing
//! reads the whole group of runs sharing the last start time it needs). Start times outside the
//! years 0000–9999 do not sort correctly in the key (as in SQLite, order there is not meaningful).
//!
//! # Writes
//!
//! - `insert_run` writes the run item (`attribute_not_exists(pk)`, else `Duplicate`) and its four
//!   index items in one `TransactWriteItems`. When the condition fails, the item is read back:
//!   this call's own record at revision 1 is an earlier attempt of the same insert (a retry whose
//!   first answer was lost, which a local server does not dedupe by `ClientRequestToken`).
//! - `update_run` reads the run item, then in one transaction `UpdateItem`s it (`SET` of the
//!   attributes this store manages, conditional on the `rev` it read, retried on a concurrent
//!   update) and rewrites the index items (deleting the old ones if a key changed). Attributes
//!   this store does not manage — notably the operator's `replay_requested = true`, set in the
//!   console for the replay Lambda — are **preserved**: the run item is never `Put` over.
//!   Clearing `replay_requested` is the replay Lambda's job, not the store's.
//! - Source rows and lines: one item per row / line (no giant items; each item is checked
//!   against the 400 KB limit before anything is written). One item is one `PutItem`; a batch
//!   of up to 100 items (~4 MB) is one `TransactWriteItems`, so it is atomic as the trait says. A larger batch (a whole
//!   run's rows or lines) cannot be atomic in DynamoDB: it is written with `BatchWriteItem` in
//!   chunks of 25 (unprocessed items retried with backoff), half the write cost of
//!   transactions; the writes are idempotent upserts, so repeating the call after a failure
//!   converges. Duplicate keys within one batch keep the last record.
//!   `put_lines` first checks (consistent read) that every run named exists and writes nothing
//!   otherwise (`NotFound`); runs are never deleted, so the check cannot go stale.
//! - Events: an atomic counter (`UpdateItem ADD seq 1` on `SEQ#EVENT`) gives each event of a
//!   run its sequence number, so `events` returns insertion order across processes even when
//!   timestamps are equal.
//! - Retried conditional writes: `PutItem` carries no idempotency token, so an SDK retry of a
//!   write whose first answer was lost fails its own condition. The event puts and
//!   `acquire_lock` then compare the item found with the item written: exactly equal is this
//!   write, done (not a duplicate, not someone else's lock).
//! - Locks: Powertools' algorithm. `acquire_lock` is one conditional `PutItem`:
//!   `attribute_not_exists(pk) OR expires_at_ms < :now_ms OR (status = INPROGRESS AND
//!   in_progress_expiration < :now_ms)` with `ReturnValuesOnConditionCheckFailure=ALL_OLD` to
//!   report `InProgress`/`Completed`. Comparisons use millisecond attributes (the trait allows
//!   millisecond precision); `expiration` is only the TTL (rounded up to whole seconds, so TTL
//!   never deletes a live lock; TTL deletion is up to ~48 h late and never relied upon).
//!   `complete_lock` is an `UpdateItem` and `release_lock` a `DeleteItem`, both conditional on
//!   `owner = :owner AND status = INPROGRESS` (else `LockLost`). `renew_lock` (the holder's
//!   heartbeat) is an `UpdateItem` of `in_progress_expiration`, `expires_at_ms` and the TTL on
//!   the same condition plus `expires_at_ms >= :now_ms` (a record past its expiry is gone).
//! - `request_replay` writes the replay request item with `attribute_not_exists(pk)` (an
//!   overwrite would be a stream `MODIFY`, which the replay Lambda's `INSERT` filter ignores),
//!   in a transaction with a `ConditionCheck` that the run exists (`NotFound` otherwise, so a
//!   mistyped run id fails at once instead of in the Lambda).
//! - `put_config` writes `CURRENT` and `VERSION#{version}` in one transaction.
//!
//! - Refused webhook requests (events of the audit id
//!   [`REJECTED_AUDIT_ID`](crate::lambda::webhook::REJECTED_AUDIT_ID)): anyone who finds the
//!   Function URL can make them, so each is exactly one conditional `PutItem` of at most ~1 KB
//!   (1 write unit; the message is cut at [`MAX_REFUSAL_MESSAGE_CHARS`]) that expires after
//!   [`REFUSED_REQUEST_TTL_DAYS`], and they take no event counter (the sort key is the time plus
//!   random bits, which keeps them in time order). Junk traffic costs a bounded amount per
//!   request and cannot grow the table for ever.
//!
//! Nothing but locks, replay requests and refused webhook requests expires: the audit trail of
//! runs is kept.
//!
//! Transactions that DynamoDB cancels for `TransactionConflict` (another transaction touching
//! the same items) are retried a few times; throttling and transient errors are retried by the
//! SDK.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, KeySchemaElement,
    KeyType, Put, PutRequest, ReturnValue, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
    TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{ConfigStore, LockOutcome, ReplayRequests, Store, StoreError};
use crate::domain::run::{AuditEvent, LineRecord, RunRecord, SourceRowRecord};
use crate::lambda::webhook::REJECTED_AUDIT_ID;
use crate::ports::Cause;

type Item = HashMap<String, AttributeValue>;

/// DynamoDB's item size limit ("400 KB"; taken as 400,000 bytes to stay on the safe side).
pub const MAX_ITEM_BYTES: usize = 400_000;
/// Items per `TransactWriteItems` call (DynamoDB's limit).
pub const MAX_TRANSACT_ITEMS: usize = 100;
/// Items per `BatchWriteItem` call (DynamoDB's limit).
pub const MAX_BATCH_ITEMS: usize = 25;
/// Aggregate size per transaction we aim below (DynamoDB's limit is 4 MB).
const MAX_TRANSACT_BYTES: usize = 3_500_000;
/// How long replay request items are kept.
pub const REPLAY_REQUEST_TTL_DAYS: i64 = 30;
/// How long the record of a refused webhook request is kept (long enough to look into a probe
/// or a misconfigured Looker destination; TTL deletion itself may be up to ~48 h late).
pub const REFUSED_REQUEST_TTL_DAYS: i64 = 30;
/// Longest message kept for a refused webhook request (keeps the item within one write unit).
pub const MAX_REFUSAL_MESSAGE_CHARS: usize = 400;

const LOCK_IN_PROGRESS: &str = "INPROGRESS";
const LOCK_COMPLETED: &str = "COMPLETED";
const ALL_RUNS: &str = "ALLRUNS";
/// Attempts for optimistic / conflicting writes before giving up.
const WRITE_ATTEMPTS: u32 = 6;

/// [`Store`], [`ConfigStore`] and [`ReplayRequests`] on one DynamoDB table (see the module docs
/// for the key design).
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    /// A store on `table` (in Lambda: the `TABLE_NAME` environment variable). Does no I/O.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl DynamoStore {
    /// One refused webhook request: one bounded `PutItem` with a TTL (see the module docs).
    async fn append_refusal(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut event = event.clone();
        if event.message.chars().count() > MAX_REFUSAL_MESSAGE_CHARS {
            event.message = event
                .message
                .chars()
                .take(MAX_REFUSAL_MESSAGE_CHARS)
                .chain("…".chars())
                .collect();
        }
        let record = encode("event", &event)?;
        let sk = format!("EVENT#{}#{:08x}", sort_ts(&event.at), fastrand::u32(..));
        let mut item = key(run_pk(&event.run_id), sk);
        item.insert("kind".into(), s("event"));
        item.insert("run_id".into(), s(&event.run_id));
        item.insert("at".into(), s(sort_ts(&event.at)));
        item.insert("level".into(), s(event.level.as_str()));
        item.insert("record".into(), s(record));
        item.insert(
            "expiration".into(),
            n(ceil_secs(&Utc::now()) + REFUSED_REQUEST_TTL_DAYS * 86_400),
        );
        self.put_new(item, "PutItem (refused webhook request)")
            .await
    }
}

/// Creates `table` with the contract of the module docs (key `pk`/`sk`, on-demand billing,
/// stream `NEW_AND_OLD_IMAGES`, TTL on `expiration`) and waits until it is active. For tests and
/// local set-ups; in AWS the SAM template creates the table.
pub async fn create_table_for_tests(client: &Client, table: &str) -> Result<(), StoreError> {
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(build_err)
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(build_err)
    };
    client
        .create_table()
        .table_name(table)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .map_err(build_err)?,
        )
        .send()
        .await
        .map_err(|e| sdk_err("CreateTable", e))?;
    client
        .wait_until_table_exists()
        .table_name(table)
        .wait(Duration::from_secs(120))
        .await
        .map_err(|e| StoreError::backend(format!("waiting for table {table}"), Cause::error(e)))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("expiration")
                .enabled(true)
                .build()
                .map_err(build_err)?,
        )
        .send()
        .await
        .map_err(|e| sdk_err("UpdateTimeToLive", e))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors and attribute helpers

fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::backend("building a DynamoDB request", Cause::error(e))
}

/// An SDK failure, described by the service's error code and message, or the transport/timeout
/// error with its causes; the SDK error stays the source.
fn sdk_err<E, R>(op: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let detail = match e.as_service_error() {
        Some(se) => format!(
            "{}: {}",
            se.code().unwrap_or("unknown error"),
            se.message().unwrap_or("(no message)")
        ),
        None => DisplayErrorContext(&e).to_string(),
    };
    StoreError::backend(format!("DynamoDB {op}"), Cause::described(detail, e))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

/// The key attributes of a whole item.
fn key_of(item: &Item) -> Item {
    item.iter()
        .filter(|(k, _)| k.as_str() == "pk" || k.as_str() == "sk")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn values(pairs: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn get_s<'a>(item: &'a Item, attr: &str, what: &str) -> Result<&'a str, StoreError> {
    match item.get(attr) {
        Some(AttributeValue::S(v)) => Ok(v),
        Some(_) => Err(StoreError::corrupt(
            what,
            format!("attribute {attr} is not a string"),
        )),
        None => Err(StoreError::corrupt(
            what,
            format!("attribute {attr} is missing"),
        )),
    }
}

fn get_i64(item: &Item, attr: &str, what: &str) -> Result<i64, StoreError> {
    match item.get(attr) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| {
            StoreError::corrupt(what, format!("attribute {attr} is not an integer: {v}"))
        }),
        Some(_) => Err(StoreError::corrupt(
            what,
            format!("attribute {attr} is not a number"),
        )),
        None => Err(StoreError::corrupt(
            what,
            format!("attribute {attr} is missing"),
        )),
    }
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::backend(format!("encoding {what}"), Cause::error(e)))
}

fn decode_record<T: DeserializeOwned>(item: &Item, what: &str) -> Result<T, StoreError> {
    let json = get_s(item, "record", what)?;
    serde_json::from_str(json).map_err(|e| StoreError::corrupt(what, Cause::error(e)))
}

/// DynamoDB's item size: attribute names plus values (close enough to check the limit).
fn item_size(item: &Item) -> usize {
    fn value_size(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
            AttributeValue::B(b) => b.as_ref().len(),
            AttributeValue::Ss(v) | AttributeValue::Ns(v) => v.iter().map(String::len).sum(),
            AttributeValue::M(m) => {
                3 + m
                    .iter()
                    .map(|(k, v)| k.len() + value_size(v))
                    .sum::<usize>()
            }
            AttributeValue::L(l) => 3 + l.iter().map(value_size).sum::<usize>(),
            _ => 1,
        }
    }
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn check_item_size(item: &Item, what: &str) -> Result<usize, StoreError> {
    let size = item_size(item);
    if size > MAX_ITEM_BYTES {
        return Err(StoreError::backend(
            "",
            format!("{what} is {size} bytes, over DynamoDB's {MAX_ITEM_BYTES}-byte item limit"),
        ));
    }
    Ok(size)
}

/// Fixed-width UTC timestamp that sorts chronologically as a string (years 0000–9999).
fn sort_ts(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

fn millis(t: &DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Epoch seconds, rounded up (for TTL attributes: never earlier than the instant).
fn ceil_secs(t: &DateTime<Utc>) -> i64 {
    let secs = t.timestamp();
    if t.timestamp_subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

fn from_millis(what: &str, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::corrupt(what, format!("timestamp {ms} ms out of range")))
}

fn run_pk(run_id: &str) -> String {
    format!("RUN#{run_id}")
}

const RUN_SK: &str = "RUN";
const EVENT_SEQ_SK: &str = "SEQ#EVENT";

fn row_sk(row_index: usize) -> String {
    format!("ROW#{row_index:020}")
}

fn line_prefix(line_no: u32) -> String {
    format!("LINE#{line_no:010}#")
}

fn lock_pk(key: &str) -> String {
    format!("LOCK#{key}")
}

const LOCK_SK: &str = "LOCK";

fn config_pk(instance: &str) -> String {
    format!("CONFIG#{instance}")
}

/// The four index partitions a run is listed in, each with the run's sort key.
fn index_keys(run: &RunRecord) -> [(String, String); 4] {
    let sk = format!("RUN#{}#{}", sort_ts(&run.started_at), run.run_id);
    [
        (format!("INSTANCE#{}", run.instance), sk.clone()),
        (ALL_RUNS.to_string(), sk.clone()),
        (
            format!("PERIOD#{}#{}", run.instance, run.keys.period_key),
            sk.clone(),
        ),
        (format!("RUNKEY#{}", run.keys.run_key), sk),
    ]
}

/// Run ordering shared by every implementation: started_at desc, then run_id asc.
fn sort_runs(runs: &mut [RunRecord]) {
    runs.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| a.run_id.cmp(&b.run_id))
    });
}

// ---------------------------------------------------------------------------------------------
// Transactions

enum TxError {
    /// The transaction was cancelled; one reason code per item (`"None"` for items that passed).
    Cancelled(Vec<String>),
    Other(StoreError),
}

impl TxError {
    fn failed_at(&self, index: usize) -> bool {
        matches!(self, TxError::Cancelled(codes) if codes.get(index).map(String::as_str) == Some("ConditionalCheckFailed"))
    }

    fn into_store(self, what: &str) -> StoreError {
        match self {
            TxError::Cancelled(codes) => StoreError::backend(
                what,
                format!("transaction cancelled ({})", codes.join(", ")),
            ),
            TxError::Other(e) => e,
        }
    }
}

fn put(table: &str, item: Item, condition: Option<&str>) -> Result<TransactWriteItem, StoreError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .set_condition_expression(condition.map(str::to_string))
        .set_expression_attribute_names(condition.map(|_| names(&[("#pk", "pk")])))
        .build()
        .map_err(build_err)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

fn delete(table: &str, key: Item) -> Result<TransactWriteItem, StoreError> {
    let delete = Delete::builder()
        .table_name(table)
        .set_key(Some(key))
        .build()
        .map_err(build_err)?;
    Ok(TransactWriteItem::builder().delete(delete).build())
}

impl DynamoStore {
    /// One `TransactWriteItems`, retried (with a short backoff) while DynamoDB cancels it only
    /// because of conflicting concurrent transactions.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<(), TxError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let codes = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None").to_string())
                    .collect::<Vec<_>>(),
                Some(TransactWriteItemsError::TransactionInProgressException(_)) => {
                    vec!["TransactionConflict".to_string()]
                }
                _ => return Err(TxError::Other(sdk_err("TransactWriteItems", err))),
            };
            let only_conflicts = codes
                .iter()
                .all(|c| c == "None" || c == "TransactionConflict")
                && codes.iter().any(|c| c == "TransactionConflict");
            if !only_conflicts || attempt >= WRITE_ATTEMPTS {
                return Err(TxError::Cancelled(codes));
            }
            backoff(attempt).await;
        }
    }

    /// Writes `items` (each already size-checked, with its size): up to
    /// [`MAX_TRANSACT_ITEMS`] items (and ~4 MB) in one atomic `TransactWriteItems`, larger
    /// batches with `BatchWriteItem` in chunks of [`MAX_BATCH_ITEMS`] (each item atomic, the
    /// batch as a whole not; unprocessed items are retried).
    async fn write_items(
        &self,
        what: &str,
        mut items: Vec<(Item, usize)>,
    ) -> Result<(), StoreError> {
        let total: usize = items.iter().map(|(_, size)| size).sum();
        if items.is_empty() {
            return Ok(());
        }
        if let [(item, _)] = items.as_mut_slice() {
            // One item: a plain PutItem is just as atomic, at half a transaction's cost (the
            // engine writes each line again as it is posted).
            let item = std::mem::take(item);
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .send()
                .await
                .map_err(|e| sdk_err(&format!("PutItem ({what})"), e))?;
            return Ok(());
        }
        if items.len() <= MAX_TRANSACT_ITEMS && total <= MAX_TRANSACT_BYTES {
            let ops = items
                .into_iter()
                .map(|(item, _)| put(&self.table, item, None))
                .collect::<Result<Vec<_>, _>>()?;
            return self.transact(ops).await.map_err(|e| e.into_store(what));
        }
        let mut items = items.into_iter().map(|(item, _)| item).peekable();
        while items.peek().is_some() {
            let mut pending = items
                .by_ref()
                .take(MAX_BATCH_ITEMS)
                .map(|item| {
                    PutRequest::builder()
                        .set_item(Some(item))
                        .build()
                        .map(|p| WriteRequest::builder().put_request(p).build())
                        .map_err(build_err)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut retries = 0;
            loop {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, std::mem::take(&mut pending))
                    .send()
                    .await
                    .map_err(|e| sdk_err("BatchWriteItem", e))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                retries += 1;
                if retries >= WRITE_ATTEMPTS {
                    return Err(StoreError::backend(
                        what,
                        format!(
                            "DynamoDB left {} item(s) unprocessed after {retries} retries",
                            pending.len()
                        ),
                    ));
                }
                backoff(retries).await;
            }
        }
        Ok(())
    }

    async fn get_item(&self, key: Item, what: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("GetItem ({what})"), e))?;
        Ok(out.item)
    }

    /// Items of partition `pk` whose sort key starts with `prefix`, in key order (or reverse),
    /// page by page; `visit` returns `false` to stop.
    async fn query_prefix(
        &self,
        pk: &str,
        prefix: &str,
        forward: bool,
        page_size: Option<i32>,
        mut visit: impl FnMut(Item) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                .set_expression_attribute_names(Some(names(&[("#pk", "pk"), ("#sk", "sk")])))
                .set_expression_attribute_values(Some(values(vec![
                    (":pk", s(pk)),
                    (":prefix", s(prefix)),
                ])))
                .scan_index_forward(forward)
                .consistent_read(true)
                .set_limit(page_size)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_err(&format!("Query {pk}"), e))?;
            for item in out.items.unwrap_or_default() {
                if !visit(item)? {
                    return Ok(());
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(()),
            }
        }
    }

    /// All records under `pk` with sort keys starting with `prefix`, in key order.
    async fn query_records<T: DeserializeOwned>(
        &self,
        pk: &str,
        prefix: &str,
        what: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        self.query_prefix(pk, prefix, true, None, |item| {
            out.push(decode_record(&item, what)?);
            Ok(true)
        })
        .await?;
        Ok(out)
    }

    /// Runs listed in an index partition, ordered, at most `limit` (all if `None`).
    async fn query_runs(
        &self,
        index_pk: &str,
        limit: Option<usize>,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let mut found: Vec<(String, RunRecord)> = Vec::new();
        let page = limit.map(|l| {
            i32::try_from(l.saturating_add(1))
                .unwrap_or(i32::MAX)
                .min(1000)
        });
        self.query_prefix(index_pk, "RUN#", false, page, |item| {
            let what = format!("run index {index_pk}");
            let ts = get_s(&item, "started_at", &what)?.to_string();
            if let Some(limit) = limit {
                // Keep reading while the item ties with the last one we need, so the in-memory
                // tie-break (run_id ascending) sees the whole group.
                if found.len() >= limit && found.get(limit - 1).map(|(t, _)| t) != Some(&ts) {
                    return Ok(false);
                }
            }
            found.push((ts, decode_record(&item, &what)?));
            Ok(true)
        })
        .await?;
        let mut runs: Vec<RunRecord> = found.into_iter().map(|(_, r)| r).collect();
        sort_runs(&mut runs);
        if let Some(limit) = limit {
            runs.truncate(limit);
        }
        Ok(runs)
    }

    async fn run_exists(&self, run_id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(run_id), RUN_SK)))
            .projection_expression("#pk")
            .expression_attribute_names("#pk", "pk")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("GetItem (run)", e))?;
        Ok(out.item.is_some_and(|i| !i.is_empty()))
    }
}

async fn backoff(attempt: u32) {
    let base = 10u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(base + fastrand::u64(..base))).await;
}

// ---------------------------------------------------------------------------------------------
// Items

fn run_item(run: &RunRecord, rev: i64) -> Result<Item, StoreError> {
    let mut item = key(run_pk(&run.run_id), RUN_SK);
    item.extend(run_attributes(run, rev)?);
    Ok(item)
}

/// The run item's attributes this store manages (everything else on the item is left alone).
fn run_attributes(run: &RunRecord, rev: i64) -> Result<Vec<(String, AttributeValue)>, StoreError> {
    Ok(vec![
        ("kind".into(), s("run")),
        ("run_id".into(), s(&run.run_id)),
        ("instance".into(), s(&run.instance)),
        ("period_key".into(), s(&run.keys.period_key)),
        ("run_key".into(), s(&run.keys.run_key)),
        ("status".into(), s(run.status.as_str())),
        ("started_at".into(), s(sort_ts(&run.started_at))),
        ("rev".into(), n(rev)),
        ("record".into(), s(encode("run", run)?)),
    ])
}

fn index_items(run: &RunRecord, record: &str) -> Vec<Item> {
    index_keys(run)
        .into_iter()
        .map(|(pk, sk)| {
            let mut item = key(pk, sk);
            item.insert("kind".into(), s("run_index"));
            item.insert("run_id".into(), s(&run.run_id));
            item.insert("started_at".into(), s(sort_ts(&run.started_at)));
            item.insert("record".into(), s(record));
            item
        })
        .collect()
}

fn row_item(row: &SourceRowRecord) -> Result<(Item, usize), StoreError> {
    let mut item = key(run_pk(&row.run_id), row_sk(row.row_index));
    item.insert("kind".into(), s("source_row"));
    item.insert("run_id".into(), s(&row.run_id));
    item.insert("row_index".into(), n(row.row_index));
    item.insert("record".into(), s(encode("source row", row)?));
    let size = check_item_size(
        &item,
        &format!("source row {} of run {}", row.row_index, row.run_id),
    )?;
    Ok((item, size))
}

fn line_item(line: &LineRecord) -> Result<(Item, usize), StoreError> {
    let mut item = key(
        run_pk(&line.run_id),
        format!("{}{}", line_prefix(line.line.line_no), line.legal_entity),
    );
    item.insert("kind".into(), s("line"));
    item.insert("run_id".into(), s(&line.run_id));
    item.insert("legal_entity".into(), s(&line.legal_entity));
    item.insert("line_no".into(), n(line.line.line_no));
    item.insert(
        "status".into(),
        s(encode("line status", &line.status)?.trim_matches('"')),
    );
    item.insert("record".into(), s(encode("line", line)?));
    let size = check_item_size(
        &item,
        &format!(
            "line {}/{} of run {}",
            line.legal_entity, line.line.line_no, line.run_id
        ),
    )?;
    Ok((item, size))
}

impl DynamoStore {
    /// `insert_run`'s condition failed: the run item exists. If it holds exactly the record this
    /// call wrote (revision 1), the existing item *is* this insert: an earlier attempt of the same
    /// transaction succeeded and its answer was lost (a timeout the SDK retried). DynamoDB makes
    /// such a retry idempotent through the SDK's `ClientRequestToken`, but a local server may
    /// not, and a spurious `Duplicate` would fail a run that was recorded fine. Anything else is
    /// a real duplicate.
    /// A `PutItem` of a new item (`attribute_not_exists(pk)`). A `PutItem` carries no
    /// idempotency token, so when the SDK retries one whose first answer was lost, the retry
    /// finds the item it wrote: if the item stored is exactly `item`, that is this write, done.
    async fn put_new(&self, item: Item, op: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item.clone()))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", "pk")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let err = match result {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let old = match err.as_service_error() {
            Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                c.item().cloned()
            }
            _ => return Err(sdk_err(op, err)),
        };
        let old = match old.filter(|i| !i.is_empty()) {
            Some(i) => Some(i),
            None => {
                let k = key_of(&item);
                self.get_item(k, op).await?
            }
        };
        if old.as_ref() == Some(&item) {
            Ok(())
        } else {
            Err(sdk_err(op, err))
        }
    }

    async fn own_insert_or_duplicate(
        &self,
        run: &RunRecord,
        record: &str,
    ) -> Result<(), StoreError> {
        let what = format!("run {}", run.run_id);
        let existing = self
            .get_item(key(run_pk(&run.run_id), RUN_SK), &what)
            .await?;
        let ours = existing.as_ref().is_some_and(|item| {
            get_s(item, "record", &what).is_ok_and(|r| r == record)
                && get_i64(item, "rev", &what).is_ok_and(|rev| rev == 1)
        });
        if ours {
            tracing::debug!(run_id = %run.run_id, "run item already written by an earlier attempt of this insert");
            Ok(())
        } else {
            Err(StoreError::Duplicate(what))
        }
    }
}

#[async_trait::async_trait]
impl Store for DynamoStore {
    async fn insert_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let item = run_item(run, 1)?;
        check_item_size(&item, &format!("run {}", run.run_id))?;
        let record = encode("run", run)?;
        let mut ops = vec![put(&self.table, item, Some("attribute_not_exists(#pk)"))?];
        for idx in index_items(run, &record) {
            ops.push(put(&self.table, idx, None)?);
        }
        match self.transact(ops).await {
            Ok(()) => Ok(()),
            Err(e) if e.failed_at(0) => self.own_insert_or_duplicate(run, &record).await,
            Err(e) => Err(e.into_store(&format!("inserting run {}", run.run_id))),
        }
    }

    async fn update_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let what = format!("run {}", run.run_id);
        let record = encode("run", run)?;
        for attempt in 1..=WRITE_ATTEMPTS {
            let Some(old) = self
                .get_item(key(run_pk(&run.run_id), RUN_SK), &what)
                .await?
            else {
                return Err(StoreError::NotFound(what));
            };
            let old_run: RunRecord = decode_record(&old, &what)?;
            let old_rev = match old.get("rev") {
                None => None,
                Some(_) => Some(get_i64(&old, "rev", &what)?),
            };
            let new_rev = old_rev.unwrap_or(0).saturating_add(1);

            // SET only the attributes this store manages; anything else (e.g. the operator's
            // `replay_requested`) stays as it is.
            let attrs = run_attributes(run, new_rev)?;
            let mut set = Vec::new();
            let mut expr_names = HashMap::from([("#rev".to_string(), "rev".to_string())]);
            let mut expr_values = HashMap::new();
            for (i, (name, value)) in attrs.into_iter().enumerate() {
                set.push(format!("#a{i} = :a{i}"));
                expr_names.insert(format!("#a{i}"), name);
                expr_values.insert(format!(":a{i}"), value);
            }
            let condition = match old_rev {
                Some(rev) => {
                    expr_values.insert(":old_rev".to_string(), n(rev));
                    "attribute_exists(#pk) AND #rev = :old_rev"
                }
                None => "attribute_exists(#pk) AND attribute_not_exists(#rev)",
            };
            expr_names.insert("#pk".to_string(), "pk".to_string());
            let mut probe = old.clone();
            probe.extend(run_item(run, new_rev)?);
            check_item_size(&probe, &what)?;
            let update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(run_pk(&run.run_id), RUN_SK)))
                .update_expression(format!("SET {}", set.join(", ")))
                .condition_expression(condition)
                .set_expression_attribute_names(Some(expr_names))
                .set_expression_attribute_values(Some(expr_values))
                .build()
                .map_err(build_err)?;
            let mut ops = vec![TransactWriteItem::builder().update(update).build()];
            let new_keys = index_keys(run);
            for (old_key, new_key) in index_keys(&old_run).iter().zip(new_keys.iter()) {
                if old_key != new_key {
                    ops.push(delete(&self.table, key(&old_key.0, &old_key.1))?);
                }
            }
            for idx in index_items(run, &record) {
                ops.push(put(&self.table, idx, None)?);
            }
            match self.transact(ops).await {
                Ok(()) => return Ok(()),
                // Someone updated the run between our read and write: read again.
                Err(e) if e.failed_at(0) && attempt < WRITE_ATTEMPTS => backoff(attempt).await,
                Err(e) => return Err(e.into_store(&format!("updating {what}"))),
            }
        }
        Err(StoreError::backend(
            format!("updating {what}"),
            "too many concurrent updates",
        ))
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let what = format!("run {run_id}");
        match self.get_item(key(run_pk(run_id), RUN_SK), &what).await? {
            Some(item) => decode_record(&item, &what).map(Some),
            None => Ok(None),
        }
    }

    async fn list_runs(
        &self,
        instance: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pk = match instance {
            Some(i) => format!("INSTANCE#{i}"),
            None => ALL_RUNS.to_string(),
        };
        self.query_runs(&pk, Some(limit)).await
    }

    async fn runs_for_period(
        &self,
        instance: &str,
        period_key: &str,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = self
            .query_runs(&format!("PERIOD#{instance}#{period_key}"), None)
            .await?;
        runs.retain(|r| r.instance == instance && r.keys.period_key == period_key);
        Ok(runs)
    }

    async fn put_source_rows(&self, rows: &[SourceRowRecord]) -> Result<(), StoreError> {
        // Last one wins for a key that appears twice (a transaction may not touch an item twice).
        let mut by_key = BTreeMap::new();
        for row in rows {
            by_key.insert((row.run_id.as_str(), row.row_index), row);
        }
        let items = by_key
            .into_values()
            .map(row_item)
            .collect::<Result<Vec<_>, _>>()?;
        self.write_items("writing source rows", items).await
    }

    async fn source_rows(&self, run_id: &str) -> Result<Vec<SourceRowRecord>, StoreError> {
        self.query_records(
            &run_pk(run_id),
            "ROW#",
            &format!("source row of run {run_id}"),
        )
        .await
    }

    async fn put_lines(&self, lines: &[LineRecord]) -> Result<(), StoreError> {
        let run_ids: BTreeSet<&str> = lines.iter().map(|l| l.run_id.as_str()).collect();
        for run_id in run_ids {
            if !self.run_exists(run_id).await? {
                return Err(StoreError::NotFound(format!(
                    "run {run_id} (for its lines)"
                )));
            }
        }
        let mut by_key = BTreeMap::new();
        for l in lines {
            by_key.insert(
                (l.run_id.as_str(), l.legal_entity.as_str(), l.line.line_no),
                l,
            );
        }
        let items = by_key
            .into_values()
            .map(line_item)
            .collect::<Result<Vec<_>, _>>()?;
        self.write_items("writing lines", items).await
    }

    async fn lines(&self, run_id: &str) -> Result<Vec<LineRecord>, StoreError> {
        let mut lines: Vec<LineRecord> = self
            .query_records(&run_pk(run_id), "LINE#", &format!("line of run {run_id}"))
            .await?;
        lines.sort_by(|a, b| {
            a.legal_entity
                .cmp(&b.legal_entity)
                .then(a.line.line_no.cmp(&b.line.line_no))
        });
        Ok(lines)
    }

    async fn append_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        if event.run_id == REJECTED_AUDIT_ID {
            return self.append_refusal(event).await;
        }
        let what = format!("event counter of run {}", event.run_id);
        let record = encode("event", event)?;
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(&event.run_id), EVENT_SEQ_SK)))
            .update_expression("SET #kind = :kind ADD #seq :one")
            .set_expression_attribute_names(Some(names(&[("#kind", "kind"), ("#seq", "seq")])))
            .set_expression_attribute_values(Some(values(vec![
                (":kind", s("event_seq")),
                (":one", n(1)),
            ])))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| sdk_err("UpdateItem (event counter)", e))?;
        let seq = get_i64(&out.attributes.unwrap_or_default(), "seq", &what)?;
        let mut item = key(run_pk(&event.run_id), format!("EVENT#{seq:020}"));
        item.insert("kind".into(), s("event"));
        item.insert("run_id".into(), s(&event.run_id));
        item.insert("at".into(), s(sort_ts(&event.at)));
        item.insert("level".into(), s(event.level.as_str()));
        item.insert("record".into(), s(record));
        check_item_size(&item, &format!("event of run {}", event.run_id))?;
        self.put_new(item, "PutItem (event)").await
    }

    async fn events(&self, run_id: &str) -> Result<Vec<AuditEvent>, StoreError> {
        self.query_records(&run_pk(run_id), "EVENT#", &format!("event of run {run_id}"))
            .await
    }

    async fn find_line_by_ref(
        &self,
        run_key: &str,
        line_no: u32,
    ) -> Result<Option<LineRecord>, StoreError> {
        let mut runs = self.query_runs(&format!("RUNKEY#{run_key}"), None).await?;
        runs.retain(|r| r.keys.run_key == run_key);
        for run in runs {
            let mut found = None;
            let what = format!("line {line_no} of run {}", run.run_id);
            self.query_prefix(
                &run_pk(&run.run_id),
                &line_prefix(line_no),
                true,
                Some(1),
                |item| {
                    found = Some(decode_record::<LineRecord>(&item, &what)?);
                    Ok(false)
                },
            )
            .await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    async fn acquire_lock(
        &self,
        key_: &str,
        owner: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<LockOutcome, StoreError> {
        let what = format!("lock {key_}");
        let mut item = key(lock_pk(key_), LOCK_SK);
        item.insert("kind".into(), s("lock"));
        item.insert("lock_key".into(), s(key_));
        item.insert("owner".into(), s(owner));
        item.insert("status".into(), s(LOCK_IN_PROGRESS));
        item.insert(
            "in_progress_expiration".into(),
            n(millis(&in_progress_until)),
        );
        item.insert("expires_at_ms".into(), n(millis(&expires_at)));
        item.insert("expiration".into(), n(ceil_secs(&expires_at)));
        for _ in 0..WRITE_ATTEMPTS {
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                .condition_expression(
                    "attribute_not_exists(#pk) OR #exp < :now OR \
                     (#status = :inprogress AND #ipe < :now)",
                )
                .set_expression_attribute_names(Some(names(&[
                    ("#pk", "pk"),
                    ("#exp", "expires_at_ms"),
                    ("#status", "status"),
                    ("#ipe", "in_progress_expiration"),
                ])))
                .set_expression_attribute_values(Some(values(vec![
                    (":now", n(millis(&now))),
                    (":inprogress", s(LOCK_IN_PROGRESS)),
                ])))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(LockOutcome::Acquired),
                Err(e) => e,
            };
            let held = match err.as_service_error() {
                Some(e) if e.is_conditional_check_failed_exception() => match e {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                        c.item().cloned()
                    }
                    _ => None,
                },
                _ => return Err(sdk_err("PutItem (lock)", err)),
            };
            // Without the old item in the error, read it; if it vanished meanwhile, try again.
            let held = match held.filter(|i| !i.is_empty()) {
                Some(i) => i,
                None => match self.get_item(key(lock_pk(key_), LOCK_SK), &what).await? {
                    Some(i) => i,
                    None => continue,
                },
            };
            // The SDK retried this very `PutItem` after its answer was lost: the lock holds
            // exactly what this call wrote, so it is this call's.
            if held == item {
                return Ok(LockOutcome::Acquired);
            }
            return match get_s(&held, "status", &what)? {
                LOCK_IN_PROGRESS => Ok(LockOutcome::InProgress {
                    owner: get_s(&held, "owner", &what)?.to_string(),
                    until: from_millis(&what, get_i64(&held, "in_progress_expiration", &what)?)?,
                }),
                LOCK_COMPLETED => Ok(LockOutcome::Completed {
                    result: get_s(&held, "result", &what)?.to_string(),
                }),
                other => Err(StoreError::corrupt(
                    what,
                    format!("unknown status {other:?}"),
                )),
            };
        }
        Err(StoreError::backend(
            what,
            "the lock record kept changing while it was being acquired",
        ))
    }

    async fn renew_lock(
        &self,
        key_: &str,
        owner: &str,
        now: DateTime<Utc>,
        in_progress_until: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(lock_pk(key_), LOCK_SK)))
            .update_expression("SET #ipe = :until, #exp = :exp_ms, #ttl = :ttl")
            .condition_expression(
                "attribute_exists(#pk) AND #owner = :owner AND #status = :inprogress \
                 AND #exp >= :now",
            )
            .set_expression_attribute_names(Some(names(&[
                ("#pk", "pk"),
                ("#ipe", "in_progress_expiration"),
                ("#exp", "expires_at_ms"),
                ("#ttl", "expiration"),
                ("#owner", "owner"),
                ("#status", "status"),
            ])))
            .set_expression_attribute_values(Some(values(vec![
                (":until", n(millis(&in_progress_until))),
                (":exp_ms", n(millis(&expires_at))),
                (":ttl", n(ceil_secs(&expires_at))),
                (":owner", s(owner)),
                (":inprogress", s(LOCK_IN_PROGRESS)),
                (":now", n(millis(&now))),
            ])))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::LockLost(format!(
                    "{key_} is not in progress for {owner}"
                )))
            }
            Err(e) => Err(sdk_err("UpdateItem (lock renewal)", e)),
        }
    }

    async fn complete_lock(
        &self,
        key_: &str,
        owner: &str,
        result: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(lock_pk(key_), LOCK_SK)))
            .update_expression(
                "SET #status = :completed, #result = :result, #exp = :exp_ms, #ttl = :ttl",
            )
            .condition_expression(
                "attribute_exists(#pk) AND #owner = :owner AND #status = :inprogress",
            )
            .set_expression_attribute_names(Some(names(&[
                ("#pk", "pk"),
                ("#status", "status"),
                ("#result", "result"),
                ("#exp", "expires_at_ms"),
                ("#ttl", "expiration"),
                ("#owner", "owner"),
            ])))
            .set_expression_attribute_values(Some(values(vec![
                (":completed", s(LOCK_COMPLETED)),
                (":result", s(result)),
                (":exp_ms", n(millis(&expires_at))),
                (":ttl", n(ceil_secs(&expires_at))),
                (":owner", s(owner)),
                (":inprogress", s(LOCK_IN_PROGRESS)),
            ])))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::LockLost(format!(
                    "{key_} is not in progress for {owner}"
                )))
            }
            Err(e) => Err(sdk_err("UpdateItem (lock)", e)),
        }
    }

    async fn release_lock(&self, key_: &str, owner: &str) -> Result<(), StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(lock_pk(key_), LOCK_SK)))
            .condition_expression("#owner = :owner AND #status = :inprogress")
            .set_expression_attribute_names(Some(names(&[
                ("#owner", "owner"),
                ("#status", "status"),
            ])))
            .set_expression_attribute_values(Some(values(vec![
                (":owner", s(owner)),
                (":inprogress", s(LOCK_IN_PROGRESS)),
            ])))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::LockLost(format!(
                    "{key_} is not in progress for {owner}"
                )))
            }
            Err(e) => Err(sdk_err("DeleteItem (lock)", e)),
        }
    }
}

#[async_trait::async_trait]
impl ConfigStore for DynamoStore {
    async fn put_config(
        &self,
        instance: &str,
        version: &str,
        toml: &str,
    ) -> Result<(), StoreError> {
        let updated_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let item = |sk: String| {
            let mut item = key(config_pk(instance), sk);
            item.insert("kind".into(), s("config"));
            item.insert("instance".into(), s(instance));
            item.insert("version".into(), s(version));
            item.insert("toml".into(), s(toml));
            item.insert("updated_at".into(), s(&updated_at));
            item
        };
        let current = item("CURRENT".to_string());
        check_item_size(&current, &format!("configuration of instance {instance}"))?;
        let ops = vec![
            put(&self.table, current, None)?,
            put(&self.table, item(format!("VERSION#{version}")), None)?,
        ];
        self.transact(ops)
            .await
            .map_err(|e| e.into_store(&format!("storing the configuration of {instance}")))
    }

    async fn get_config(&self, instance: &str) -> Result<Option<(String, String)>, StoreError> {
        let what = format!("configuration of instance {instance}");
        let Some(item) = self
            .get_item(key(config_pk(instance), "CURRENT"), &what)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((
            get_s(&item, "version", &what)?.to_string(),
            get_s(&item, "toml", &what)?.to_string(),
        )))
    }
}

#[async_trait::async_trait]
impl ReplayRequests for DynamoStore {
    async fn request_replay(&self, run_id: &str, requested_by: &str) -> Result<(), StoreError> {
        for attempt in 1..=WRITE_ATTEMPTS {
            let now = Utc::now();
            let requested_at = now.to_rfc3339_opts(SecondsFormat::Millis, true);
            let mut item = key(
                format!("REPLAY#{run_id}"),
                format!("REQUEST#{requested_at}"),
            );
            item.insert("kind".into(), s("replay_request"));
            item.insert("run_id".into(), s(run_id));
            item.insert("requested_by".into(), s(requested_by));
            item.insert("requested_at".into(), s(&requested_at));
            item.insert(
                "expiration".into(),
                n(now.timestamp() + REPLAY_REQUEST_TTL_DAYS * 86_400),
            );
            let run_check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(key(run_pk(run_id), RUN_SK)))
                .condition_expression("attribute_exists(#pk)")
                .expression_attribute_names("#pk", "pk")
                .build()
                .map_err(build_err)?;
            let ops = vec![
                TransactWriteItem::builder()
                    .condition_check(run_check)
                    .build(),
                put(&self.table, item, Some("attribute_not_exists(#pk)"))?,
            ];
            match self.transact(ops).await {
                Ok(()) => return Ok(()),
                Err(e) if e.failed_at(0) => {
                    return Err(StoreError::NotFound(format!("run {run_id}")))
                }
                // Another request for this run in the same millisecond: take the next one.
                Err(e) if e.failed_at(1) && attempt < WRITE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(e) => return Err(e.into_store(&format!("requesting a replay of {run_id}"))),
            }
        }
        Err(StoreError::backend(
            format!("requesting a replay of {run_id}"),
            "too many concurrent requests",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn an_sdk_failure_reads_as_before_and_keeps_the_sdk_error_as_its_source() {
        use aws_sdk_dynamodb::operation::get_item::GetItemError;
        use std::error::Error as _;
        let e =
            SdkError::<GetItemError>::construction_failure(std::io::Error::other("no endpoint"));
        let described = DisplayErrorContext(&e).to_string();
        let err = sdk_err("GetItem", e);
        assert_eq!(
            err.to_string(),
            format!("store backend error: DynamoDB GetItem: {described}")
        );
        let cause = err.source().expect("the cause is the source");
        assert_eq!(cause.to_string(), described);
        let sdk = cause.source().expect("the SDK error is the next link");
        assert!(sdk.downcast_ref::<SdkError<GetItemError>>().is_some());
        let mut root = sdk;
        while let Some(next) = root.source() {
            root = next;
        }
        assert_eq!(root.to_string(), "no endpoint");
    }

    #[test]
    fn sort_keys_order_like_the_values() {
        let a = Utc
            .with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
            .single()
            .expect("t");
        let b = a + chrono::Duration::nanoseconds(1);
        let c = a + chrono::Duration::days(400);
        assert!(sort_ts(&a) < sort_ts(&b) && sort_ts(&b) < sort_ts(&c));
        assert_eq!(sort_ts(&a), "2026-11-23T10:00:00.000000000Z");
        assert!(row_sk(2) < row_sk(10));
        assert!(line_prefix(9) < line_prefix(10));
    }

    #[test]
    fn ttl_rounds_up() {
        let a = Utc
            .with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
            .single()
            .expect("t");
        assert_eq!(ceil_secs(&a), a.timestamp());
        assert_eq!(
            ceil_secs(&(a + chrono::Duration::milliseconds(1))),
            a.timestamp() + 1
        );
    }

    #[test]
    fn item_size_counts_names_and_values() {
        let mut item = key("RUN#x", "RUN");
        item.insert("record".into(), s("x".repeat(100)));
        assert_eq!(item_size(&item), 2 + 5 + 2 + 3 + 6 + 100);
        item.insert("record".into(), s("x".repeat(MAX_ITEM_BYTES)));
        assert!(check_item_size(&item, "big").is_err());
    }
}
