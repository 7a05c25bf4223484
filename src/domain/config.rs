//! Per-instance configuration (TOML): source, period, mapping, balancing, rounding.
//!
//! Every customer's LookML differs, so *what* a column means is configuration, not code. The
//! config holds no credentials: it may name a credentials file, and the environment overrides.
//! A complete commented example lives in `infra/config/weekly-marketplace-fees.toml`.

use std::collections::BTreeMap;

use chrono::{Datelike, Duration, NaiveDate};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An inline Looker query (`POST /queries/run/json` body). `explore` is sent as Looker's `view`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineQuery {
    pub model: String,
    pub explore: String,
    pub fields: Vec<String>,
    #[serde(default)]
    pub filters: BTreeMap<String, String>,
    #[serde(default)]
    pub sorts: Vec<String>,
    /// Pins how Looker interprets dates (e.g. `UTC`).
    #[serde(default)]
    pub query_timezone: Option<String>,
}

/// Errors in an instance configuration, each naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config is not valid TOML or has an unknown/mistyped key: {0}")]
    Parse(String),
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole instance configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Short name of this connector instance; part of every natural key.
    pub instance: String,
    /// Optional path of a credentials file (TOML); relative paths are relative to the config.
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Optional path of the CLI's SQLite audit store; relative paths are relative to the
    /// config. `--store` and `MLC_STORE` take precedence. Not part of the config version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    pub looker: LookerEndpoint,
    pub d365: D365Endpoint,
    pub source: SourceConfig,
    #[serde(default)]
    pub period: PeriodConfig,
    pub journal: JournalConfig,
    /// The amount rule of a one-line-per-row mapping; with `[[lines]]` only `zero` and `max_abs`
    /// apply (each line names its own column).
    #[serde(default)]
    pub amount: AmountConfig,
    /// Main account of a detail line. Required without `[[lines]]`; with them, the account of
    /// every line that sets none of its own. Left out of the serialized config when absent, so
    /// configs from before `[[lines]]` keep their version hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<ValueSource>,
    /// Financial dimension name (as in the ledger format, e.g. `CostCenter`) → where its value comes from.
    #[serde(default)]
    pub dimensions: BTreeMap<String, ValueSource>,
    /// Several measures side by side in one row: each entry makes its own journal line from
    /// the same row, with its own amount column, sign, account and dimension overrides. All of
    /// them go into the run's one journal. Empty (and left out of the serialized config, so the
    /// version hash of existing configs is unchanged) for one line per row.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LineSpec>,
    pub balancing: BalancingConfig,
    #[serde(default)]
    pub rounding: RoundingConfig,
    /// Decimal places for currencies missing from the built-in ISO table.
    #[serde(default)]
    pub currencies: BTreeMap<String, u32>,
    /// How the AWS webhook treats a Looker scheduled-plan delivery for this instance.
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// Who may post this instance through the Looker action (the AWS action hub). Left out of
    /// the serialized config when unset, so existing configs keep their version hash.
    #[serde(default, skip_serializing_if = "ActionConfig::is_unset")]
    pub action: ActionConfig,
}

/// The Looker action's per-instance settings. The action's `sender` setting is bound to a
/// Looker user attribute (e.g. `email`); its value is recorded on every post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// Refuse posts whose sender is not known (no user attribute bound, or empty).
    #[serde(default)]
    pub require_sender: bool,
    /// When not empty, only these senders (compared case-insensitively) may post; implies
    /// `require_sender`.
    #[serde(default)]
    pub senders: Vec<String>,
}

impl ActionConfig {
    pub fn is_unset(&self) -> bool {
        *self == ActionConfig::default()
    }
}

/// Webhook behaviour of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub delivery: DeliveryMode,
}

/// What a Looker delivery is to the connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// Post the rows the delivery carries (json, json_detail or csv attachment).
    #[default]
    Rows,
    /// Treat the delivery only as a trigger and run the configured Look/query through the API
    /// (for results too large for a Function URL payload, 6 MB).
    Trigger,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookerEndpoint {
    /// Host root, e.g. `https://acme.cloud.looker.com` (no `/api/4.0`).
    pub base_url: String,
    /// Refuse extracts with more rows than this (the connector asks Looker for one more).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// `sync` (default): run the Look/query directly (Looker caps these at 5,000 rows unless a
    /// larger limit is honoured); `async`: create a query task and poll for its results, for
    /// extracts beyond the cap. Each poll is an API call (mind Looker's monthly quotas).
    #[serde(default)]
    pub extract: ExtractMode,
    /// Longest wait for an async query task before the run gives up (nothing is posted).
    #[serde(default = "default_async_wait")]
    pub async_max_wait_secs: u64,
    /// First wait between polls of an async query task (grows to 5× this).
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// Client-side rate limit: at most this many Looker API requests (logins and polls
    /// included) in any 60 s; 0 = off. Looker editions have small API quotas.
    #[serde(default = "default_looker_rpm")]
    pub max_requests_per_minute: u32,
    /// Attempts per request on 429/5xx/network errors, including the first (1 = no retry).
    #[serde(default = "default_retry_attempts")]
    pub max_retry_attempts: u32,
    /// Longest single wait between attempts, including an honoured `Retry-After`.
    #[serde(default = "default_retry_wait")]
    pub max_retry_wait_secs: u64,
}

fn default_looker_rpm() -> u32 {
    60
}
fn default_retry_attempts() -> u32 {
    5
}
fn default_retry_wait() -> u64 {
    60
}
/// Eight: the journal parts of a run are written concurrently, one request each, and a run of
/// 10,000 lines has five parts of 2,000; under the cost model of BENCHMARKS.md ("Whole runs under
/// the F&O cost model") eight keeps every part of such a run going at once, and leaves headroom
/// below F&O's resource-based throttling (which answers 429, honoured by the client).
fn default_d365_concurrency() -> usize {
    8
}
/// F&O publishes no fixed per-app request budget (service protection is resource based), so
/// this is a conservative guess: see
/// <https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/data-entities/priority-based-throttling>.
fn default_d365_requests_per_window() -> u32 {
    600
}
fn default_d365_window() -> u64 {
    60
}

/// How the extract is run in Looker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExtractMode {
    #[default]
    Sync,
    Async,
}

fn default_async_wait() -> u64 {
    600
}
fn default_poll_interval() -> u64 {
    2
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct D365Endpoint {
    /// e.g. `https://contoso.operations.dynamics.com`; also the token scope (`…/.default`).
    pub environment_url: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    /// Entra tenant id (not secret; the client id and secret are credentials).
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// `batch` (default): each voucher's lines in one atomic `$batch` changeset, many vouchers
    /// per request; `lines`: one request per line. An environment without `$batch` falls back
    /// to `lines` by itself.
    #[serde(default)]
    pub posting: Posting,
    /// Operations (lines) per `$batch` request. F&O documents 5,000; 200 is the figure one
    /// maintained client measured on a live environment.
    #[serde(default = "default_batch_operations")]
    pub batch_operations: usize,
    /// Most requests open at a time (reads, writes, `$batch`), at least 1.
    #[serde(default = "default_d365_concurrency")]
    pub max_concurrent_requests: usize,
    /// Throttle before D365 has to: at most this many requests started in any `window_secs`
    /// (0 = off). The default (600 per 60 s) is an unverified, conservative guess.
    #[serde(default = "default_d365_requests_per_window")]
    pub max_requests_per_window: u32,
    #[serde(default = "default_d365_window")]
    pub window_secs: u64,
    /// Attempts per request on 429 (and 5xx/network errors on reads), including the first.
    #[serde(default = "default_retry_attempts")]
    pub max_retry_attempts: u32,
    /// Longest single wait between attempts, including an honoured `Retry-After`.
    #[serde(default = "default_retry_wait")]
    pub max_retry_wait_secs: u64,
}

/// How lines are written to D365.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Posting {
    #[default]
    Batch,
    Lines,
}

fn default_batch_operations() -> usize {
    200
}

fn default_max_rows() -> usize {
    5000
}
fn default_timeout() -> u64 {
    120
}
fn default_authority() -> String {
    "https://login.microsoftonline.com".to_string()
}

/// What to run in Looker: a saved Look or an inline query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default)]
    pub look_id: Option<String>,
    #[serde(default)]
    pub query: Option<InlineQuery>,
}

/// The source after checking exactly one of `look_id`/`query` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<'a> {
    Look(&'a str),
    Query(&'a InlineQuery),
}

impl SourceConfig {
    pub fn resolve(&self) -> Result<Source<'_>, ConfigError> {
        match (&self.look_id, &self.query) {
            (Some(id), None) if !id.trim().is_empty() => Ok(Source::Look(id)),
            (None, Some(q)) => Ok(Source::Query(q)),
            (Some(_), Some(_)) => Err(invalid(
                "source",
                "set either `look_id` or `[source.query]`, not both",
            )),
            _ => Err(invalid(
                "source",
                "set `look_id` (a saved Look) or `[source.query]` (model, explore, fields)",
            )),
        }
    }
}

/// Which accounting period a run covers, derived from the run date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    /// The last complete ISO week (Monday–Sunday) before the run date.
    #[default]
    Week,
    /// The last complete calendar month before the run date.
    Month,
    /// The day before the run date.
    Day,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PeriodConfig {
    #[serde(default)]
    pub kind: PeriodKind,
}

/// A concrete period: a label for keys and humans, and its inclusive date range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub label: String,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

impl PeriodKind {
    /// The period a run on `run_date` covers.
    pub fn period_for(&self, run_date: NaiveDate) -> Period {
        match self {
            PeriodKind::Week => {
                let monday_this_week =
                    run_date - Duration::days(run_date.weekday().num_days_from_monday() as i64);
                let start = monday_this_week - Duration::days(7);
                let end = start + Duration::days(6);
                let iso = start.iso_week();
                Period {
                    label: format!("{}-W{:02}", iso.year(), iso.week()),
                    start,
                    end,
                }
            }
            PeriodKind::Month => {
                let first_this_month = run_date.with_day(1).unwrap_or(run_date);
                let end = first_this_month - Duration::days(1);
                let start = end.with_day(1).unwrap_or(end);
                Period {
                    label: format!("{:04}-{:02}", start.year(), start.month()),
                    start,
                    end,
                }
            }
            PeriodKind::Day => {
                let d = run_date - Duration::days(1);
                Period {
                    label: d.format("%Y-%m-%d").to_string(),
                    start: d,
                    end: d,
                }
            }
        }
    }
}

/// Where a text value (account, dimension, legal entity, currency) comes from.
///
/// TOML: `{ constant = "618100" }`, `{ column = "view.field" }`, or
/// `{ column = "view.field", lookup = { "Amazon" = "AMZ" }, default = "WEB" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueSource {
    #[serde(default)]
    pub constant: Option<String>,
    #[serde(default)]
    pub column: Option<String>,
    /// Column value → target value. Without `default`, an unmapped value is a row error.
    #[serde(default)]
    pub lookup: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub default: Option<String>,
}

impl ValueSource {
    pub fn constant(v: impl Into<String>) -> Self {
        Self {
            constant: Some(v.into()),
            column: None,
            lookup: None,
            default: None,
        }
    }

    pub fn column(c: impl Into<String>) -> Self {
        Self {
            constant: None,
            column: Some(c.into()),
            lookup: None,
            default: None,
        }
    }

    fn check(&self, key: &str) -> Result<(), ConfigError> {
        match (&self.constant, &self.column) {
            (Some(c), None) => {
                if self.lookup.is_some() || self.default.is_some() {
                    return Err(invalid(key, "`lookup`/`default` only apply with `column`"));
                }
                if c.trim().is_empty() {
                    return Err(invalid(key, "`constant` is empty"));
                }
                Ok(())
            }
            (None, Some(c)) if !c.trim().is_empty() => {
                if self.default.is_some() && self.lookup.is_none() {
                    return Err(invalid(key, "`default` only applies with `lookup`"));
                }
                Ok(())
            }
            (Some(_), Some(_)) => Err(invalid(key, "set `constant` or `column`, not both")),
            _ => Err(invalid(
                key,
                "set `constant = \"…\"` or `column = \"view.field\"` (optionally with `lookup`)",
            )),
        }
    }

    /// Columns this source reads.
    pub fn columns(&self) -> Vec<&str> {
        self.column.iter().map(String::as_str).collect()
    }
}

/// Journal-level settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// dataAreaId per row or constant; one journal is created per legal entity (split into
    /// several headers above `max_journal_lines`).
    pub legal_entity: ValueSource,
    /// `JournalNames.Name`, e.g. `GenJrn`.
    pub journal_name: String,
    /// Currency code per row or constant.
    pub currency: ValueSource,
    /// Transaction date: `"period_end"`, `"run_date"`, or `{ column = "view.date_field" }`.
    #[serde(default)]
    pub trans_date: TransDateSource,
    /// Header description template (prefixed with the run key); `{period}` is filled in.
    #[serde(default = "default_description")]
    pub description: String,
    /// Line text template (prefixed with the line's lineage reference). `{view.field}` inserts a
    /// column value; `{period}`, `{period_start}`, `{period_end}`, `{run_date}` are also known.
    #[serde(default = "default_text")]
    pub text: String,
    /// How detail lines form vouchers: one voucher per (entity, currency, date), or one per row.
    #[serde(default)]
    pub voucher_by: VoucherBy,
    /// Maximum characters of `Text` and `Description` in D365 (the EDTs are 60).
    #[serde(default = "default_text_len")]
    pub max_text_len: usize,
    /// Most lines in one voucher, balancing and rounding lines included. Larger groups are
    /// split into several vouchers, each balanced on its own. A voucher is posted atomically in
    /// one `$batch` changeset, so it must not exceed `d365.batch_operations`.
    #[serde(default = "default_voucher_lines")]
    pub max_voucher_lines: usize,
    /// Most lines under one journal header. A legal entity's journal with more lines is split
    /// into several headers of whole vouchers (each balances on its own), each with its own
    /// natural key: F&O validates and posts very large journals slowly, and a few thousand lines
    /// per journal is common practice (Microsoft's DMF guidance stays under about 10,000).
    #[serde(default = "default_journal_lines")]
    pub max_journal_lines: usize,
}

fn default_voucher_lines() -> usize {
    100
}

fn default_journal_lines() -> usize {
    2000
}

fn default_description() -> String {
    "Looker {period}".to_string()
}
fn default_text() -> String {
    "Looker {period}".to_string()
}
fn default_text_len() -> usize {
    60
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TransDateSource {
    Named(String),
    Column { column: String },
}

/// Resolved transaction-date rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransDate<'a> {
    PeriodEnd,
    RunDate,
    Column(&'a str),
}

impl Default for TransDateSource {
    fn default() -> Self {
        TransDateSource::Named("period_end".to_string())
    }
}

impl TransDateSource {
    pub fn resolve(&self) -> Result<TransDate<'_>, ConfigError> {
        match self {
            TransDateSource::Named(s) if s == "period_end" => Ok(TransDate::PeriodEnd),
            TransDateSource::Named(s) if s == "run_date" => Ok(TransDate::RunDate),
            TransDateSource::Named(s) => Err(invalid(
                "journal.trans_date",
                format!("`{s}` is not `period_end`, `run_date` or `{{ column = \"…\" }}`"),
            )),
            TransDateSource::Column { column } => Ok(TransDate::Column(column)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VoucherBy {
    /// One voucher per legal entity, currency and transaction date (balanced by balancing lines).
    #[default]
    TransDate,
    /// Every source row is its own voucher.
    Row,
}

/// One of several journal lines a row makes (`[[lines]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSpec {
    /// A signed amount column (or `debit_column` + `credit_column`). The column names the line
    /// in the audit trail: each line's lineage is its source row and this column.
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub sign: SignConvention,
    #[serde(default)]
    pub debit_column: Option<String>,
    #[serde(default)]
    pub credit_column: Option<String>,
    /// This line's main account; the top-level `[account]` when left out.
    #[serde(default)]
    pub account: Option<ValueSource>,
    /// Dimensions set (or replaced) for this line on top of the top-level `[dimensions]`.
    #[serde(default)]
    pub dimensions: BTreeMap<String, ValueSource>,
    /// Line text template; `journal.text` when left out.
    #[serde(default)]
    pub text: Option<String>,
}

impl LineSpec {
    /// The amount rule of this line.
    pub fn rule(&self, key: &str) -> Result<AmountRule<'_>, ConfigError> {
        amount_rule(
            key,
            &self.column,
            self.sign,
            &self.debit_column,
            &self.credit_column,
        )
    }

    /// The column that names this line in its lineage: `column`, or `debit_column`.
    pub fn lineage_column(&self) -> &str {
        self.column
            .as_deref()
            .or(self.debit_column.as_deref())
            .unwrap_or("")
    }
}

/// One journal line a row makes, resolved: `[[lines]]` entries, or the one line of `[amount]`
/// + `[account]` + `[dimensions]`.
#[derive(Debug, Clone)]
pub struct LineRule<'a> {
    /// Config key prefix for errors: `lines[1]`, or empty for the single-line form.
    pub key: String,
    pub amount: AmountRule<'a>,
    /// The lineage column (`None` for the single-line form: its lines are as before).
    pub lineage: Option<&'a str>,
    pub account: &'a ValueSource,
    /// Top-level dimensions with this line's overrides applied.
    pub dimensions: BTreeMap<&'a str, &'a ValueSource>,
    pub text: &'a str,
}

impl LineRule<'_> {
    /// The config key of a field of this line: `account` or `lines[1].account`.
    pub fn field(&self, name: &str) -> String {
        if self.key.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.key)
        }
    }

    /// The columns this line's amount is read from.
    pub fn amount_columns(&self) -> Vec<&str> {
        match &self.amount {
            AmountRule::Signed { column, .. } => vec![column],
            AmountRule::DebitCredit { debit, credit } => vec![debit, credit],
        }
    }
}

fn amount_rule<'a>(
    key: &str,
    column: &'a Option<String>,
    sign: SignConvention,
    debit: &'a Option<String>,
    credit: &'a Option<String>,
) -> Result<AmountRule<'a>, ConfigError> {
    match (column, debit, credit) {
        (Some(c), None, None) => Ok(AmountRule::Signed { column: c, sign }),
        (None, Some(d), Some(c)) => Ok(AmountRule::DebitCredit {
            debit: d,
            credit: c,
        }),
        _ => Err(invalid(
            key,
            "set `column` (signed amount) or both `debit_column` and `credit_column`",
        )),
    }
}

/// Which column(s) carry the amount and what sign means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountConfig {
    /// A single signed amount column.
    #[serde(default)]
    pub column: Option<String>,
    /// `debit_positive` (default): positive amounts debit the mapped account.
    /// `credit_positive`: positive amounts credit it.
    #[serde(default)]
    pub sign: SignConvention,
    /// Alternatively, separate debit and credit columns (both non-negative).
    #[serde(default)]
    pub debit_column: Option<String>,
    #[serde(default)]
    pub credit_column: Option<String>,
    /// What to do with rows whose amount is exactly zero.
    #[serde(default)]
    pub zero: ZeroAmounts,
    /// Sanity limit: a source amount (each of debit and credit) or a journal line (balancing
    /// and rounding lines included) whose absolute value exceeds it is a row error, "out of
    /// range". Positive; default [`DEFAULT_MAX_ABS`] (10^12). Left out of the serialized config
    /// while it is the default, so configs written before it existed keep their version hash.
    #[serde(
        default = "default_max_abs",
        skip_serializing_if = "is_default_max_abs"
    )]
    pub max_abs: Decimal,
}

/// Default `amount.max_abs`: 10^12, a trillion in any currency.
pub const DEFAULT_MAX_ABS: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);

impl Default for AmountConfig {
    /// No column (the `[[lines]]` form), the default sign, zero rule and limit.
    fn default() -> Self {
        Self {
            column: None,
            sign: SignConvention::default(),
            debit_column: None,
            credit_column: None,
            zero: ZeroAmounts::default(),
            max_abs: DEFAULT_MAX_ABS,
        }
    }
}

fn default_max_abs() -> Decimal {
    DEFAULT_MAX_ABS
}

fn is_default_max_abs(v: &Decimal) -> bool {
    *v == DEFAULT_MAX_ABS
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SignConvention {
    #[default]
    DebitPositive,
    CreditPositive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ZeroAmounts {
    /// Record the row as skipped; no line.
    #[default]
    Skip,
    /// Treat as a row error.
    Reject,
}

/// The resolved amount rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmountRule<'a> {
    Signed {
        column: &'a str,
        sign: SignConvention,
    },
    DebitCredit {
        debit: &'a str,
        credit: &'a str,
    },
}

impl AmountConfig {
    pub fn resolve(&self) -> Result<AmountRule<'_>, ConfigError> {
        amount_rule(
            "amount",
            &self.column,
            self.sign,
            &self.debit_column,
            &self.credit_column,
        )
    }

    fn names_a_column(&self) -> bool {
        self.column.is_some() || self.debit_column.is_some() || self.credit_column.is_some()
    }
}

/// How vouchers are balanced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancingConfig {
    #[serde(default)]
    pub style: BalancingStyle,
    /// The balancing (offset) main account.
    pub account: ValueSource,
    /// Dimensions of the balancing account.
    #[serde(default)]
    pub dimensions: BTreeMap<String, ValueSource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BalancingStyle {
    /// Each voucher gets balancing line(s) on the balancing account for the voucher's total.
    #[default]
    Lines,
    /// Each line carries the balancing account as its offset account (single-line vouchers).
    Offset,
}

/// Where the rounding residue goes.
///
/// Each detail line is rounded to the currency on its own; the balancing side is the rounded
/// *total* of the exact amounts (what Looker said). The difference, the residue, is booked either
/// onto the largest detail line of the voucher (ties: the earliest row) or to a rounding account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundingConfig {
    #[serde(default)]
    pub book_to: RoundingTarget,
    /// Required when `book_to = "account"`.
    #[serde(default)]
    pub account: Option<String>,
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
}

impl Default for RoundingConfig {
    fn default() -> Self {
        Self {
            book_to: RoundingTarget::LargestLine,
            account: None,
            dimensions: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoundingTarget {
    #[default]
    LargestLine,
    Account,
}

impl InstanceConfig {
    /// Parses and checks a TOML config. Every error names the key it is about.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: InstanceConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Structural checks beyond what serde enforces.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.instance.trim().is_empty()
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err(invalid(
                "instance",
                "use letters, digits, `-` or `_` (it is part of keys and URLs)",
            ));
        }
        self.source.resolve()?;
        if let Some(q) = &self.source.query {
            if q.fields.is_empty() {
                return Err(invalid("source.query.fields", "list at least one field"));
            }
        }
        if self.d365.batch_operations == 0 {
            return Err(invalid("d365.batch_operations", "must be at least 1"));
        }
        if self.journal.max_voucher_lines < 3 {
            return Err(invalid(
                "journal.max_voucher_lines",
                "must be at least 3 (a detail line, a balancing line and a rounding line)",
            ));
        }
        if self.d365.posting == Posting::Batch
            && self.journal.max_voucher_lines > self.d365.batch_operations
        {
            return Err(invalid(
                "journal.max_voucher_lines",
                format!(
                    "a voucher is posted atomically in one $batch request, so it may not have more lines than d365.batch_operations ({})",
                    self.d365.batch_operations
                ),
            ));
        }
        if self.journal.max_journal_lines < self.journal.max_voucher_lines {
            return Err(invalid(
                "journal.max_journal_lines",
                format!(
                    "must be at least journal.max_voucher_lines ({}): a voucher is never split across two journal headers",
                    self.journal.max_voucher_lines
                ),
            ));
        }
        if self.looker.max_rows == 0 {
            return Err(invalid("looker.max_rows", "must be at least 1"));
        }
        self.check_budgets()?;
        self.journal.legal_entity.check("journal.legal_entity")?;
        self.journal.currency.check("journal.currency")?;
        self.journal.trans_date.resolve()?;
        if self.journal.journal_name.trim().is_empty() {
            return Err(invalid("journal.journal_name", "is empty"));
        }
        if self.journal.max_text_len < 30 {
            return Err(invalid(
                "journal.max_text_len",
                "must leave room for the lineage reference (at least 30)",
            ));
        }
        let rules = self.line_rules()?;
        if self.amount.max_abs <= Decimal::ZERO {
            return Err(invalid(
                "amount.max_abs",
                format!(
                    "is {}; it must be positive (the largest absolute amount of one source amount or journal line, default {DEFAULT_MAX_ABS})",
                    self.amount.max_abs
                ),
            ));
        }
        for (dim, src) in &self.dimensions {
            src.check(&format!("dimensions.{dim}"))?;
        }
        for rule in &rules {
            rule.account.check(&rule.field("account"))?;
        }
        for (i, spec) in self.lines.iter().enumerate() {
            for (dim, src) in &spec.dimensions {
                src.check(&format!("lines[{i}].dimensions.{dim}"))?;
            }
        }
        self.balancing.account.check("balancing.account")?;
        for (dim, src) in &self.balancing.dimensions {
            src.check(&format!("balancing.dimensions.{dim}"))?;
        }
        if self.rounding.book_to == RoundingTarget::Account
            && self.rounding.account.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "rounding.account",
                "required when `rounding.book_to = \"account\"`",
            ));
        }
        Ok(())
    }

    /// Request budgets and retry knobs of both services, each checked with its key named.
    fn check_budgets(&self) -> Result<(), ConfigError> {
        let range = |key: &str, v: u64, lo: u64, hi: u64, why: &str| {
            if v < lo || v > hi {
                Err(invalid(
                    key,
                    format!("is {v}; it must be between {lo} and {hi} ({why})"),
                ))
            } else {
                Ok(())
            }
        };
        let (l, d) = (&self.looker, &self.d365);
        range(
            "looker.max_requests_per_minute",
            l.max_requests_per_minute.into(),
            0,
            10_000,
            "0 turns the limit off",
        )?;
        for (svc, attempts, wait) in [
            ("looker", l.max_retry_attempts, l.max_retry_wait_secs),
            ("d365", d.max_retry_attempts, d.max_retry_wait_secs),
        ] {
            range(
                &format!("{svc}.max_retry_attempts"),
                attempts.into(),
                1,
                20,
                "1 means no retry",
            )?;
            range(
                &format!("{svc}.max_retry_wait_secs"),
                wait,
                1,
                900,
                "a Lambda runs at most 15 minutes",
            )?;
        }
        range(
            "d365.max_concurrent_requests",
            d.max_concurrent_requests as u64,
            1,
            64,
            "F&O throttles per user/app; keep it small",
        )?;
        range(
            "d365.max_requests_per_window",
            d.max_requests_per_window.into(),
            0,
            1_000_000,
            "0 turns the throttle off",
        )?;
        range(
            "d365.window_secs",
            d.window_secs,
            1,
            3600,
            "the throttle's sliding window",
        )?;
        Ok(())
    }

    /// The journal lines each row makes, in line order: the `[[lines]]` entries, or the one
    /// line of `[amount]` + `[account]` + `[dimensions]`. Errors name the key.
    pub fn line_rules(&self) -> Result<Vec<LineRule<'_>>, ConfigError> {
        let top: BTreeMap<&str, &ValueSource> = self
            .dimensions
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        if self.lines.is_empty() {
            let amount = self.amount.resolve()?;
            let account = self.account.as_ref().ok_or_else(|| {
                invalid(
                    "account",
                    "missing: set `[account]` (or give each `[[lines]]` entry its own `account`)",
                )
            })?;
            return Ok(vec![LineRule {
                key: String::new(),
                amount,
                lineage: None,
                account,
                dimensions: top,
                text: &self.journal.text,
            }]);
        }
        if self.amount.names_a_column() {
            return Err(invalid(
                "amount",
                "with `[[lines]]` each line names its own amount column: remove `column`/`debit_column`/`credit_column` from `[amount]` (it keeps `zero` and `max_abs`)",
            ));
        }
        let mut rules: Vec<LineRule<'_>> = Vec::with_capacity(self.lines.len());
        for (i, spec) in self.lines.iter().enumerate() {
            let key = format!("lines[{i}]");
            let amount = spec.rule(&key)?;
            let lineage = spec.lineage_column();
            if let Some(j) = rules.iter().position(|r| r.lineage == Some(lineage)) {
                return Err(invalid(
                    format!("{key}.column"),
                    format!(
                        "`{lineage}` is already the amount column of lines[{j}]; a line is identified in the audit trail by its row and amount column"
                    ),
                ));
            }
            let account = spec
                .account
                .as_ref()
                .or(self.account.as_ref())
                .ok_or_else(|| {
                    invalid(
                        format!("{key}.account"),
                        "missing: set `account` on this line or a top-level `[account]`",
                    )
                })?;
            let mut dimensions = top.clone();
            for (k, v) in &spec.dimensions {
                dimensions.insert(k.as_str(), v);
            }
            rules.push(LineRule {
                key,
                amount,
                lineage: Some(lineage),
                account,
                dimensions,
                text: spec.text.as_deref().unwrap_or(&self.journal.text),
            });
        }
        Ok(rules)
    }

    /// Every (config key, account rule) of detail lines: `account`, `lines[1].account`, ….
    pub fn account_rules(&self) -> Vec<(String, &ValueSource)> {
        let mut out: Vec<(String, &ValueSource)> = Vec::new();
        if let Some(a) = &self.account {
            out.push(("account".into(), a));
        }
        for (i, spec) in self.lines.iter().enumerate() {
            if let Some(a) = &spec.account {
                out.push((format!("lines[{i}].account"), a));
            }
        }
        out
    }

    /// Every financial dimension name the config sets (detail, per line, balancing).
    pub fn dimension_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .dimensions
            .keys()
            .chain(self.lines.iter().flat_map(|l| l.dimensions.keys()))
            .chain(self.balancing.dimensions.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// A short hash identifying this exact configuration, recorded with every run.
    pub fn version(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(&canonical);
        hex::encode(&h.finalize()[..6])
    }

    /// Every Looker column the mapping reads (for `check` and for clear missing-column errors).
    pub fn referenced_columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = Vec::new();
        let mut add = |c: &str| {
            if !cols.iter().any(|x| x == c) {
                cols.push(c.to_string());
            }
        };
        for c in self.journal.legal_entity.columns() {
            add(c);
        }
        for c in self.journal.currency.columns() {
            add(c);
        }
        if let Ok(TransDate::Column(c)) = self.journal.trans_date.resolve() {
            add(c);
        }
        let rules = self.line_rules().unwrap_or_default();
        for rule in &rules {
            for c in rule.amount_columns() {
                add(c);
            }
            for c in rule.account.columns() {
                add(c);
            }
            for src in rule.dimensions.values() {
                for c in src.columns() {
                    add(c);
                }
            }
        }
        for c in self.balancing.account.columns() {
            add(c);
        }
        for src in self.balancing.dimensions.values() {
            for c in src.columns() {
                add(c);
            }
        }
        let texts = [
            self.journal.text.as_str(),
            self.journal.description.as_str(),
        ]
        .into_iter()
        .chain(self.lines.iter().filter_map(|l| l.text.as_deref()));
        for t in texts {
            for name in template_names(t) {
                if name.contains('.') {
                    add(&name);
                }
            }
        }
        cols
    }

    /// Looker filters with `{period_start}`, `{period_end}`, `{period}` substituted.
    pub fn query_for_period(&self, period: &Period) -> Option<InlineQuery> {
        let mut q = self.source.query.clone()?;
        for v in q.filters.values_mut() {
            *v = v
                .replace("{period_start}", &period.start.to_string())
                .replace("{period_end}", &period.end.to_string())
                .replace(
                    "{period_end_exclusive}",
                    &(period.end + Duration::days(1)).to_string(),
                )
                .replace("{period}", &period.label);
        }
        Some(q)
    }
}

/// Placeholder names used in a `{…}` template.
pub fn template_names(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                out.push(after[..close].to_string());
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str =
        include_str!("../../infra/config/weekly-marketplace-fees.toml");

    /// `version()` of the example config. Adding `[[lines]]` left its serialized form (asserted
    /// below) and so this hash unchanged (9bc6877337ea); the default of
    /// `d365.max_concurrent_requests` going from 4 to 8 (journal parts written in parallel)
    /// changed it, as a changed effective setting should.
    const EXAMPLE_VERSION: &str = "8a899cf12714";

    #[test]
    fn example_config_parses_and_checks() {
        let cfg = InstanceConfig::from_toml(EXAMPLE).expect("example config is valid");
        assert_eq!(cfg.instance, "weekly-marketplace-fees");
        assert!(matches!(cfg.source.resolve().unwrap(), Source::Query(_)));
        let cols = cfg.referenced_columns();
        assert!(cols.contains(&"marketplace_fees.total_amount".to_string()));
        assert!(cols.contains(&"marketplace_fees.channel".to_string()));
        assert_eq!(cfg.version(), cfg.clone().version());
    }

    #[test]
    fn errors_name_the_key() {
        let bad = EXAMPLE.replace("[account]\ncolumn", "[account]\nconstant = \"1\"\ncolumn");
        let e = InstanceConfig::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("`account`"), "{e}");
        let bad = EXAMPLE.replace("journal_name = \"GenJrn\"", "journal_nam = \"GenJrn\"");
        let e = InstanceConfig::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("journal_nam"), "{e}");
    }

    #[test]
    fn max_journal_lines_defaults_and_must_hold_a_voucher() {
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(cfg.journal.max_journal_lines, 2000);
        let small = EXAMPLE.replace(
            "max_voucher_lines = 100",
            "max_voucher_lines = 100\nmax_journal_lines = 99",
        );
        let e = InstanceConfig::from_toml(&small).unwrap_err().to_string();
        assert!(
            e.contains("journal.max_journal_lines") && e.contains("max_voucher_lines (100)"),
            "{e}"
        );
        let ok = EXAMPLE.replace(
            "max_voucher_lines = 100",
            "max_voucher_lines = 100\nmax_journal_lines = 100",
        );
        assert_eq!(
            InstanceConfig::from_toml(&ok)
                .unwrap()
                .journal
                .max_journal_lines,
            100
        );
    }

    #[test]
    fn amount_max_abs_defaults_parses_and_must_be_positive() {
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(cfg.amount.max_abs, Decimal::from(1_000_000_000_000u64));
        assert_eq!(DEFAULT_MAX_ABS.to_string(), "1000000000000");
        let with = |line: &str| EXAMPLE.replacen("[amount]\n", &format!("[amount]\n{line}\n"), 1);
        // The default, left out or written out, keeps the config version of configs from before
        // the key existed.
        let explicit = InstanceConfig::from_toml(&with("max_abs = 1_000_000_000_000")).unwrap();
        assert_eq!(explicit.version(), cfg.version());
        assert!(!serde_json::to_string(&cfg).unwrap().contains("max_abs"));
        for (line, want) in [
            ("max_abs = 5_000", "5000"),
            ("max_abs = 2500.5", "2500.5"),
            ("max_abs = \"1000000.25\"", "1000000.25"),
        ] {
            let c = InstanceConfig::from_toml(&with(line)).unwrap();
            assert_eq!(c.amount.max_abs.to_string(), want, "{line}");
            assert_ne!(c.version(), cfg.version(), "{line}");
            // It survives the round trip through the stored (JSON) form.
            let back: InstanceConfig =
                serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
        for line in ["max_abs = 0", "max_abs = -1", "max_abs = \"-0.01\""] {
            let e = InstanceConfig::from_toml(&with(line))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("amount.max_abs") && e.contains("must be positive"),
                "{line}: {e}"
            );
        }
        let e = InstanceConfig::from_toml(&with("max_abs = \"lots\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_abs"), "{e}");
    }

    #[test]
    fn periods() {
        let thu = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let w = PeriodKind::Week.period_for(thu);
        assert_eq!(w.start, NaiveDate::from_ymd_opt(2026, 11, 16).unwrap());
        assert_eq!(w.end, NaiveDate::from_ymd_opt(2026, 11, 22).unwrap());
        assert_eq!(w.label, "2026-W47");
        let mon = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        assert_eq!(PeriodKind::Week.period_for(mon), w);
        let m = PeriodKind::Month.period_for(NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
        assert_eq!(m.label, "2026-02");
        assert_eq!(m.end, NaiveDate::from_ymd_opt(2026, 2, 28).unwrap());
        let d = PeriodKind::Day.period_for(NaiveDate::from_ymd_opt(2026, 1, 1).unwrap());
        assert_eq!(d.label, "2025-12-31");
    }

    #[test]
    fn templates() {
        assert_eq!(
            template_names("{a.b} x {period} {"),
            vec!["a.b".to_string(), "period".to_string()]
        );
    }

    #[test]
    fn budget_keys_default_parse_and_are_checked() {
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(cfg.looker.max_requests_per_minute, 60);
        assert_eq!(cfg.d365.max_concurrent_requests, 8);
        assert_eq!(
            (cfg.d365.max_requests_per_window, cfg.d365.window_secs),
            (600, 60)
        );
        assert_eq!(
            (cfg.d365.max_retry_attempts, cfg.d365.max_retry_wait_secs),
            (5, 60)
        );
        let set = |section: &str, line: &str| {
            EXAMPLE.replacen(
                &format!("[{section}]\n"),
                &format!("[{section}]\n{line}\n"),
                1,
            )
        };
        let ok = InstanceConfig::from_toml(&set(
            "d365",
            "max_requests_per_window = 100\nwindow_secs = 10\nmax_concurrent_requests = 2",
        ))
        .unwrap();
        assert_eq!(ok.d365.max_requests_per_window, 100);
        assert_eq!(ok.d365.window_secs, 10);
        assert_eq!(ok.d365.max_concurrent_requests, 2);
        let ok = InstanceConfig::from_toml(&set(
            "looker",
            "max_requests_per_minute = 30\nmax_retry_attempts = 2\nmax_retry_wait_secs = 5",
        ))
        .unwrap();
        assert_eq!(
            (
                ok.looker.max_requests_per_minute,
                ok.looker.max_retry_attempts,
                ok.looker.max_retry_wait_secs
            ),
            (30, 2, 5)
        );
        for (section, line, key) in [
            (
                "d365",
                "max_concurrent_requests = 0",
                "d365.max_concurrent_requests",
            ),
            ("d365", "window_secs = 0", "d365.window_secs"),
            ("d365", "max_retry_attempts = 0", "d365.max_retry_attempts"),
            (
                "d365",
                "max_retry_wait_secs = 3600",
                "d365.max_retry_wait_secs",
            ),
            (
                "looker",
                "max_retry_attempts = 50",
                "looker.max_retry_attempts",
            ),
            (
                "looker",
                "max_requests_per_minute = 100000",
                "looker.max_requests_per_minute",
            ),
        ] {
            let e = InstanceConfig::from_toml(&set(section, line))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{line}: {e}");
        }
        // A negative number is a type error naming the key, not a silent default.
        let e = InstanceConfig::from_toml(&set("d365", "window_secs = -5"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("window_secs"), "{e}");
    }

    const SIDE_BY_SIDE: &str = include_str!("../../infra/config/weekly-fees-and-commissions.toml");

    #[test]
    fn side_by_side_example_parses_and_resolves_its_lines() {
        let cfg = InstanceConfig::from_toml(SIDE_BY_SIDE).expect("side-by-side example is valid");
        let rules = cfg.line_rules().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].lineage, Some("channel_costs.fee_amount"));
        assert_eq!(rules[1].lineage, Some("channel_costs.commission_amount"));
        assert_eq!(rules[1].account.constant.as_deref(), Some("600170"));
        // Overrides add to (or replace) the shared dimensions.
        assert_eq!(
            rules[1].dimensions.keys().copied().collect::<Vec<_>>(),
            vec!["Channel", "CostCenter", "Department"]
        );
        assert_eq!(rules[0].dimensions.len(), 2);
        let cols = cfg.referenced_columns();
        for c in [
            "channel_costs.fee_amount",
            "channel_costs.commission_amount",
            "channel_costs.channel",
        ] {
            assert!(cols.contains(&c.to_string()), "{c}: {cols:?}");
        }
        assert_eq!(
            cfg.dimension_names(),
            vec!["Channel", "CostCenter", "Department"]
        );
        let keys: Vec<String> = cfg.account_rules().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["lines[0].account", "lines[1].account"]);
        // Survives the stored (JSON) form.
        let back: InstanceConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn single_line_configs_serialize_as_before() {
        // The version hash is over the serialized config: the new keys must not appear in it
        // for a config that does not use them, and `account` serializes as the plain rule.
        let cfg = InstanceConfig::from_toml(EXAMPLE).unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!json.contains("\"lines\":"), "{json}");
        assert!(
            json.contains(
                "\"account\":{\"constant\":null,\"column\":\"marketplace_fees.fee_type\""
            ),
            "{json}"
        );
        assert_eq!(cfg.version(), EXAMPLE_VERSION);
        let rules = cfg.line_rules().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].lineage, None);
        assert_eq!(rules[0].field("account"), "account");
    }

    #[test]
    fn side_by_side_errors_name_the_key() {
        let err = |text: &str| InstanceConfig::from_toml(text).unwrap_err().to_string();
        // A column in [amount] as well as [[lines]].
        let e = err(&SIDE_BY_SIDE.replace(
            "zero = \"skip\"",
            "zero = \"skip\"\ncolumn = \"channel_costs.fee_amount\"",
        ));
        assert!(e.contains("`amount`") && e.contains("[[lines]]"), "{e}");
        // Two lines on one column: their lineage would be ambiguous.
        let e = err(&SIDE_BY_SIDE.replace(
            "column = \"channel_costs.commission_amount\"",
            "column = \"channel_costs.fee_amount\"",
        ));
        assert!(
            e.contains("lines[1].column") && e.contains("lines[0]"),
            "{e}"
        );
        // A line with no account and no top-level [account].
        let e = err(&SIDE_BY_SIDE.replace("account = { constant = \"600170\" }\n", ""));
        assert!(e.contains("lines[1].account"), "{e}");
        // ... which a top-level [account] then supplies.
        let with_top = SIDE_BY_SIDE
            .replace("account = { constant = \"600170\" }\n", "")
            .replace(
                "[dimensions]\n",
                "[account]\nconstant = \"600170\"\n\n[dimensions]\n",
            );
        let cfg = InstanceConfig::from_toml(&with_top).unwrap();
        assert_eq!(
            cfg.line_rules().unwrap()[1].account.constant.as_deref(),
            Some("600170")
        );
        // No amount column on a line.
        let e = err(&SIDE_BY_SIDE.replace("column = \"channel_costs.commission_amount\"\n", ""));
        assert!(e.contains("lines[1]"), "{e}");
        // A bad dimension override.
        let e = err(&SIDE_BY_SIDE.replace(
            "Department = { constant = \"010\" }",
            "Department = { constant = \"\" }",
        ));
        assert!(e.contains("lines[1].dimensions.Department"), "{e}");
        // Without [[lines]], [account] is required as before.
        let e = err(&EXAMPLE.replace(
            "[account]\ncolumn = \"marketplace_fees.fee_type\"\nlookup = { \"Marketplace fee\" = \"618100\", \"Commission\" = \"618200\" }\n",
            "",
        ));
        assert!(e.contains("`account`"), "{e}");
    }
}
