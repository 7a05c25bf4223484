//! Simulated F&O OData service: bearer-token checks, throttling, entity-set queries with
//! `$filter/$select/$top`, cross-company visibility and paging, and journal header/line inserts
//! validated the way F&O validates them (answers in F&O's error shape with Infolog text).

use std::str::FromStr;
use std::time::Instant;

use axum::http::header::AUTHORIZATION;
use axum::http::{Method, StatusCode};
use chrono::{NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

use crate::d365::names::{
    self, dimension_format as df, dimension_parameters as dp, dimension_value as dv,
    fiscal_period as fp, header as h, journal_name as jn, ledger as lg, ledger_period as lp,
    line as l, main_account as ma,
};
use crate::domain::reference::{PeriodStatus, VoucherAllocation};

use super::filter::{self, Val};
use super::{SimHeader, SimLine, SimRequest, SimResponse, State, WriteFailure};

type Row = Vec<(&'static str, Val)>;

/// One simulated entity set.
pub(super) struct EntityDef {
    pub(super) set: &'static str,
    /// OData type name (`Microsoft.Dynamics.DataEntities.X`).
    type_name: &'static str,
    /// Company-specific (has dataAreaId): only the default company is visible without
    /// `cross-company=true`.
    company: bool,
}

pub(super) const ENTITIES: &[EntityDef] = &[
    EntityDef {
        set: lg::SET,
        type_name: "Ledger",
        company: false,
    },
    EntityDef {
        set: ma::SET,
        type_name: "MainAccount",
        company: false,
    },
    EntityDef {
        set: dv::SET,
        type_name: "FinancialDimensionValue",
        company: false,
    },
    EntityDef {
        set: df::SET,
        type_name: "DimensionIntegrationFormat",
        company: false,
    },
    EntityDef {
        set: dp::SET,
        type_name: "DimensionParameter",
        company: false,
    },
    EntityDef {
        set: jn::SET,
        type_name: "JournalName",
        company: true,
    },
    EntityDef {
        set: fp::SET,
        type_name: "FiscalPeriod",
        company: false,
    },
    EntityDef {
        set: lp::SET,
        type_name: "LedgerFiscalPeriodV2",
        company: false,
    },
    EntityDef {
        set: h::SET,
        type_name: "LedgerJournalHeader",
        company: true,
    },
    EntityDef {
        set: l::SET,
        type_name: "LedgerJournalLine",
        company: true,
    },
];

/// Percent-decoding without `+` → space (F&O reads `+` literally).
pub(crate) fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Responses

pub(super) fn odata_error(
    status: StatusCode,
    message: &str,
    inner: Option<(&str, &str)>,
) -> SimResponse {
    let mut err = serde_json::json!({ "code": "", "message": message });
    if let Some((m, t)) = inner {
        err["innererror"] = serde_json::json!({ "message": m, "type": t, "stacktrace": "   at Microsoft.Dynamics.Platform.Integration.Services.OData (sandbox)" });
    }
    SimResponse::json(status, serde_json::json!({ "error": err }).to_string())
}

/// F&O's answer when an entity insert fails validation.
pub(super) fn write_failed(entity_type: &str, msgs: &[String]) -> SimResponse {
    let infolog = msgs
        .iter()
        .map(|m| format!("Warning: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let inner = format!("Write failed for table row of type '{entity_type}'. Infolog: {infolog}");
    odata_error(
        StatusCode::BAD_REQUEST,
        "An error has occurred.",
        Some((
            &inner,
            "Microsoft.Dynamics.Platform.Integration.Services.OData.AxODataWriteException",
        )),
    )
}

fn bad_query(msg: &str) -> SimResponse {
    odata_error(
        StatusCode::BAD_REQUEST,
        "The query specified in the URI is not valid.",
        Some((msg, "Microsoft.OData.ODataException")),
    )
}

pub(super) fn bad_body(msg: &str) -> SimResponse {
    odata_error(
        StatusCode::BAD_REQUEST,
        "An error has occurred.",
        Some((msg, "Microsoft.OData.ODataException")),
    )
}

fn unauthorized() -> SimResponse {
    SimResponse {
        status: StatusCode::UNAUTHORIZED,
        headers: vec![("www-authenticate", "Bearer".into())],
        body: String::new(),
        drop_connection: false,
    }
}

fn val_json(v: &Val) -> String {
    match v {
        Val::Str(s) | Val::Enum(s) => serde_json::to_string(s).expect("string"),
        Val::Num(d) => d.to_string(),
        Val::DateTime(dt) => format!("\"{}\"", dt.format("%Y-%m-%dT%H:%M:%SZ")),
    }
}

fn row_json(row: &Row) -> String {
    let mut s = String::from("{\"@odata.etag\":\"W/\\\"sandbox\\\"\"");
    for (k, v) in row {
        s.push(',');
        s.push_str(&serde_json::to_string(k).expect("key"));
        s.push(':');
        s.push_str(&val_json(v));
    }
    s.push('}');
    s
}

// ---------------------------------------------------------------------------------------------
// Rows

fn s(v: &str) -> Val {
    Val::Str(v.to_string())
}

fn noyes(b: bool) -> Val {
    Val::Enum(if b { names::YES } else { names::NO }.into())
}

fn noon(d: NaiveDate) -> NaiveDateTime {
    d.and_hms_opt(12, 0, 0).expect("noon")
}

/// F&O dates: empty → 1900-01-01T12:00:00Z, open end → 2154-12-31T23:59:59Z.
fn date_val(d: Option<NaiveDate>, open_end: bool) -> Val {
    Val::DateTime(match (d, open_end) {
        (Some(d), _) => noon(d),
        (None, false) => noon(NaiveDate::from_ymd_opt(1900, 1, 1).expect("date")),
        (None, true) => NaiveDate::from_ymd_opt(2154, 12, 31)
            .expect("date")
            .and_hms_opt(23, 59, 59)
            .expect("time"),
    })
}

fn new_voucher_symbol(v: VoucherAllocation) -> &'static str {
    match v {
        VoucherAllocation::InConnectionWithBalance => jn::NEW_VOUCHER_BALANCE[0],
        VoucherAllocation::OneVoucherNumberOnly => jn::NEW_VOUCHER_ONE[0],
        VoucherAllocation::Manual => jn::NEW_VOUCHER_MANUAL[0],
    }
}

fn status_symbol(p: PeriodStatus) -> &'static str {
    match p {
        PeriodStatus::Open => lp::STATUS_OPEN[0],
        PeriodStatus::OnHold => lp::STATUS_ON_HOLD[0],
        PeriodStatus::Closed => lp::STATUS_CLOSED[0],
    }
}

fn header_row(hd: &SimHeader) -> Row {
    vec![
        (names::DATA_AREA_ID, s(&hd.legal_entity)),
        (h::BATCH_NUMBER, s(&hd.batch_number)),
        (h::JOURNAL_NAME, s(&hd.journal_name)),
        (h::DESCRIPTION, s(&hd.description)),
        (h::POSTING_LAYER, Val::Enum(hd.posting_layer.clone())),
        (h::IS_POSTED, noyes(hd.is_posted)),
        (h::TOTAL_DEBIT, Val::Num(hd.total_debit)),
        (h::TOTAL_CREDIT, Val::Num(hd.total_credit)),
    ]
}

fn line_row(ln: &SimLine) -> Row {
    vec![
        (names::DATA_AREA_ID, s(&ln.legal_entity)),
        (l::BATCH_NUMBER, s(&ln.batch_number)),
        (l::LINE_NUMBER, Val::Num(Decimal::from(ln.line_number))),
        (l::VOUCHER, s(&ln.voucher)),
        (l::TRANS_DATE, Val::DateTime(noon(ln.trans_date))),
        (l::ACCOUNT_TYPE, Val::Enum(ln.account_type.clone())),
        (l::ACCOUNT, s(&ln.account_display)),
        (
            l::OFFSET_ACCOUNT_TYPE,
            Val::Enum(ln.offset_account_type.clone()),
        ),
        (l::OFFSET_ACCOUNT, s(&ln.offset_display)),
        (l::DEBIT, Val::Num(ln.debit)),
        (l::CREDIT, Val::Num(ln.credit)),
        (l::CURRENCY, s(&ln.currency)),
        (l::TEXT, s(&ln.text)),
        ("Document", s(&ln.document)),
        ("ExchRate", Val::Num(Decimal::from(100))),
    ]
}

fn period_status_of(st: &State, le: &str, cal: &str, year: &str, period: &str) -> PeriodStatus {
    st.seed
        .period_status
        .get(&(
            le.to_string(),
            cal.to_string(),
            year.to_string(),
            period.to_string(),
        ))
        .copied()
        .unwrap_or(PeriodStatus::Open)
}

fn rows(st: &State, set: &str) -> Vec<Row> {
    let seed = &st.seed;
    match set {
        x if x == lg::SET => seed
            .ledgers
            .iter()
            .map(|x| {
                vec![
                    (lg::NAME, s(&x.legal_entity.to_uppercase())),
                    (
                        lg::DESCRIPTION,
                        s(&format!("Ledger {}", x.legal_entity.to_uppercase())),
                    ),
                    // F&O shows company ids upper case here; filters compare case-insensitively.
                    (lg::LEGAL_ENTITY, s(&x.legal_entity.to_uppercase())),
                    (lg::CHART_OF_ACCOUNTS, s(&x.chart_of_accounts)),
                    (lg::FISCAL_CALENDAR, s(&x.fiscal_calendar)),
                    (lg::ACCOUNTING_CURRENCY, s(&x.accounting_currency)),
                    ("ReportingCurrency", s("")),
                ]
            })
            .collect(),
        x if x == ma::SET => seed
            .main_accounts
            .iter()
            .map(|a| {
                vec![
                    (ma::CHART_OF_ACCOUNTS, s(&a.chart_of_accounts)),
                    (ma::ID, s(&a.id)),
                    (ma::NAME, s(&a.name)),
                    (ma::TYPE, Val::Enum(a.account_type.clone())),
                    (ma::IS_SUSPENDED, noyes(a.suspended)),
                    (
                        ma::DO_NOT_ALLOW_MANUAL_ENTRY,
                        noyes(a.do_not_allow_manual_entry),
                    ),
                    (ma::ACTIVE_FROM, date_val(a.active_from, false)),
                    (ma::ACTIVE_TO, date_val(a.active_to, true)),
                ]
            })
            .collect(),
        x if x == dv::SET => seed
            .dimension_values
            .iter()
            .map(|v| {
                vec![
                    (dv::DIMENSION, s(&v.dimension)),
                    (dv::VALUE, s(&v.value)),
                    (dv::LEGAL_ENTITY, s(&v.legal_entity.to_uppercase())),
                    (dv::DESCRIPTION, s(&v.description)),
                    (dv::IS_SUSPENDED, noyes(v.suspended)),
                    (
                        dv::IS_BLOCKED_FOR_MANUAL_ENTRY,
                        noyes(v.blocked_for_manual_entry),
                    ),
                    (dv::IS_TOTAL, noyes(v.is_total)),
                    (dv::ACTIVE_FROM, date_val(v.active_from, false)),
                    (dv::ACTIVE_TO, date_val(v.active_to, true)),
                ]
            })
            .collect(),
        x if x == df::SET => seed
            .formats
            .iter()
            .map(|f| {
                vec![
                    (df::NAME, s(&f.name)),
                    (df::TYPE, Val::Enum(f.format_type.clone())),
                    (df::IS_ACTIVE, noyes(f.active)),
                    (df::FORMAT, s(&f.format)),
                ]
            })
            .collect(),
        x if x == dp::SET => vec![vec![(dp::DELIMITER, s(&seed.delimiter.to_string()))]],
        x if x == jn::SET => seed
            .journal_names
            .iter()
            .map(|j| {
                vec![
                    (names::DATA_AREA_ID, s(&j.legal_entity)),
                    (jn::NAME, s(&j.name)),
                    (jn::DESCRIPTION, s(&j.description)),
                    (jn::TYPE, Val::Enum(j.journal_type.clone())),
                    (
                        jn::NEW_VOUCHER,
                        Val::Enum(new_voucher_symbol(j.new_voucher).into()),
                    ),
                    (jn::VOUCHER_SERIES, s(&j.voucher_series)),
                    (jn::IS_WORKFLOW_APPROVAL_ACTIVE, noyes(j.workflow_approval)),
                    (jn::POSTING_LAYER, Val::Enum("Current".into())),
                ]
            })
            .collect(),
        x if x == fp::SET => seed
            .periods
            .iter()
            .map(|p| {
                vec![
                    (fp::CALENDAR, s(&p.calendar)),
                    (fp::YEAR, s(&p.year)),
                    (fp::NAME, s(&p.name)),
                    (fp::START, Val::DateTime(noon(p.start))),
                    (fp::END, Val::DateTime(noon(p.end))),
                    (fp::TYPE, Val::Enum(p.period_type.clone())),
                ]
            })
            .collect(),
        x if x == lp::SET => {
            let mut out = Vec::new();
            for led in &seed.ledgers {
                for p in seed
                    .periods
                    .iter()
                    .filter(|p| p.calendar == led.fiscal_calendar)
                {
                    let status =
                        period_status_of(st, &led.legal_entity, &p.calendar, &p.year, &p.name);
                    out.push(vec![
                        (lp::LEDGER_NAME, s(&led.legal_entity.to_uppercase())),
                        (lp::LEGAL_ENTITY, s(&led.legal_entity.to_uppercase())),
                        (lp::CALENDAR, s(&p.calendar)),
                        (lp::YEAR, s(&p.year)),
                        (lp::PERIOD, s(&p.name)),
                        (lp::STATUS, Val::Enum(status_symbol(status).into())),
                        ("LedgerAccessLevel", Val::Enum("AllowAll".into())),
                    ]);
                }
            }
            out
        }
        x if x == h::SET => st.headers.iter().map(header_row).collect(),
        x if x == l::SET => st.lines.iter().map(line_row).collect(),
        _ => vec![],
    }
}

/// Field names of an entity set (from a template row, so empty sets still validate).
fn schema(set: &str) -> Vec<&'static str> {
    let hd = SimHeader {
        legal_entity: String::new(),
        batch_number: String::new(),
        journal_name: String::new(),
        description: String::new(),
        posting_layer: String::new(),
        is_posted: false,
        total_debit: Decimal::ZERO,
        total_credit: Decimal::ZERO,
    };
    let ln = SimLine {
        legal_entity: String::new(),
        batch_number: String::new(),
        line_number: 0,
        voucher: String::new(),
        trans_date: NaiveDate::from_ymd_opt(2000, 1, 1).expect("date"),
        account_type: String::new(),
        account_display: String::new(),
        offset_account_type: String::new(),
        offset_display: String::new(),
        debit: Decimal::ZERO,
        credit: Decimal::ZERO,
        currency: String::new(),
        text: String::new(),
        document: String::new(),
    };
    let row = match set {
        x if x == h::SET => header_row(&hd),
        x if x == l::SET => line_row(&ln),
        _ => {
            let seed =
                super::seed::D365Seed::demo(NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"));
            let tmp = template_state(seed);
            rows(&tmp, set).into_iter().next().unwrap_or_default()
        }
    };
    row.into_iter().map(|(k, _)| k).collect()
}

fn template_state(seed: super::seed::D365Seed) -> State {
    State {
        env_url: String::new(),
        authority_url: String::new(),
        seed,
        registered: BTreeMap::new(),
        headers: vec![],
        lines: vec![],
        next_batch: BTreeMap::new(),
        next_voucher: BTreeMap::new(),
        tokens: Default::default(),
        token_lifetime: 0,
        page_size: 1,
        throttle_remaining: 0,
        throttle_retry_after: None,
        write_failures: vec![],
        batch_failures: vec![],
        batch_max_operations: 200,
        reject_containing: vec![],
        latency: std::time::Duration::ZERO,
        cost: Default::default(),
        writing: Default::default(),
        in_flight: 0,
        peak_writing: 0,
        log: vec![],
    }
}

// ---------------------------------------------------------------------------------------------
// Entry point

pub(super) fn handle(st: &mut State, req: &SimRequest) -> SimResponse {
    // Authentication first: unknown/expired token, wrong audience, unregistered app → 401.
    let token = req
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = st.tokens.get(token).is_some_and(|t| {
        t.expires_at > Instant::now()
            && t.audience == st.env_url
            && st.registered.get(&t.client_id).copied().unwrap_or(false)
    });
    if !ok {
        return unauthorized();
    }
    if st.throttle_remaining > 0 {
        st.throttle_remaining -= 1;
        let mut r = odata_error(
            StatusCode::TOO_MANY_REQUESTS,
            "This request could not be processed at this time due to system experiencing high resource utilization.",
            None,
        );
        if let Some(secs) = st.throttle_retry_after {
            r.headers.push(("retry-after", secs.to_string()));
        }
        return r;
    }
    if req.path == "/data/$batch" || req.path.eq_ignore_ascii_case("/data/%24batch") {
        return super::batch::handle(st, req);
    }
    let Some(set) = req.path.strip_prefix("/data/") else {
        return odata_error(
            StatusCode::NOT_FOUND,
            "No HTTP resource was found that matches the request URI.",
            None,
        );
    };
    if let Some((name, rest)) = set.split_once('(') {
        let Some(def) = ENTITIES.iter().find(|e| e.set == name) else {
            return odata_error(
                StatusCode::NOT_FOUND,
                &format!("Resource not found for the segment '{name}'."),
                None,
            );
        };
        let Some(key) = rest.strip_suffix(')') else {
            return bad_query("The key segment is not closed by ')'.");
        };
        return match req.method {
            Method::DELETE if def.set == h::SET || def.set == l::SET => {
                with_write_failure(st, |st| delete(st, def, &percent_decode(key)))
            }
            _ => odata_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!(
                    "The sandbox does not support {} on {name}(key).",
                    req.method
                ),
                None,
            ),
        };
    }
    let Some(def) = ENTITIES.iter().find(|e| e.set == set) else {
        return odata_error(
            StatusCode::NOT_FOUND,
            &format!("Resource not found for the segment '{set}'."),
            None,
        );
    };
    match req.method {
        Method::GET => query(st, req, def),
        Method::POST if def.set == h::SET || def.set == l::SET => {
            with_write_failure(st, |st| create(st, &req.body, def))
        }
        _ => odata_error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("The sandbox does not support {} on {set}.", req.method),
            None,
        ),
    }
}

/// Runs a single write, honouring an injected [`WriteFailure`].
fn with_write_failure(
    st: &mut State,
    write: impl FnOnce(&mut State) -> SimResponse,
) -> SimResponse {
    let failure = if st.write_failures.is_empty() {
        None
    } else {
        Some(st.write_failures.remove(0))
    };
    match failure {
        Some(WriteFailure {
            status,
            commit: false,
        }) => gateway_failure(status),
        Some(WriteFailure {
            status,
            commit: true,
        }) => {
            let r = write(st);
            if r.status.is_success() {
                gateway_failure(status)
            } else {
                r
            }
        }
        None => write(st),
    }
}

/// Parses an OData key predicate (`a='x',b=1`) into name → raw value (strings unquoted).
pub(super) fn parse_key(key: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = key.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.trim().is_empty() {
            return Err(format!("Bad key predicate '{key}'."));
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        value.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("Unterminated string in key '{key}'.")),
                }
            }
            match chars.next() {
                None => {
                    out.push((name.trim().to_string(), value));
                    return Ok(out);
                }
                Some(',') => {}
                Some(_) => return Err(format!("Bad key predicate '{key}'.")),
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
            let done = chars.peek().is_none();
            out.push((name.trim().to_string(), value.trim().to_string()));
            if done {
                return Ok(out);
            }
            continue;
        }
        out.push((name.trim().to_string(), value));
    }
}

/// `DELETE /data/LedgerJournalHeaders(dataAreaId='…',JournalBatchNumber='…')` (with its lines)
/// or `DELETE /data/LedgerJournalLines(…,LineNumber=n)`; refused on posted journals.
pub(super) fn delete(st: &mut State, def: &EntityDef, key: &str) -> SimResponse {
    let pairs = match parse_key(key) {
        Ok(p) => p,
        Err(m) => return bad_query(&m),
    };
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let needed: &[&str] = if def.set == h::SET {
        &[names::DATA_AREA_ID, h::BATCH_NUMBER]
    } else {
        &[names::DATA_AREA_ID, l::BATCH_NUMBER, l::LINE_NUMBER]
    };
    if pairs.len() != needed.len() || needed.iter().any(|k| get(k).is_none()) {
        return bad_query(&format!(
            "The key of {} must have exactly these fields: {}.",
            def.set,
            needed.join(", ")
        ));
    }
    let company = get(names::DATA_AREA_ID)
        .expect("checked")
        .to_ascii_lowercase();
    let batch = get(h::BATCH_NUMBER).expect("checked");
    let not_found = || {
        odata_error(
            StatusCode::NOT_FOUND,
            "No resources were found when selecting for update.",
            None,
        )
    };
    let Some(hidx) = st
        .headers
        .iter()
        .position(|x| x.legal_entity == company && x.batch_number == batch)
    else {
        return not_found();
    };
    let et = if def.set == h::SET {
        h::ENTITY_TYPE
    } else {
        l::ENTITY_TYPE
    };
    if st.headers[hidx].is_posted {
        return write_failed(
            et,
            &[format!(
                "Journal {batch} has been posted and cannot be deleted."
            )],
        );
    }
    if def.set == h::SET {
        st.headers.remove(hidx);
        st.lines
            .retain(|x| !(x.legal_entity == company && x.batch_number == batch));
    } else {
        let Ok(n) = get(l::LINE_NUMBER).expect("checked").parse::<Decimal>() else {
            return bad_query("LineNumber in the key is not a number.");
        };
        let Some(lidx) = st.lines.iter().position(|x| {
            x.legal_entity == company
                && x.batch_number == batch
                && Decimal::from(x.line_number) == n
        }) else {
            return not_found();
        };
        let gone = st.lines.remove(lidx);
        st.headers[hidx].total_debit -= gone.debit;
        st.headers[hidx].total_credit -= gone.credit;
    }
    SimResponse {
        status: StatusCode::NO_CONTENT,
        headers: vec![("odata-version", "4.0".into())],
        body: String::new(),
        drop_connection: false,
    }
}

pub(super) fn gateway_failure(status: u16) -> SimResponse {
    if status == 0 {
        // An answer that announces more bytes than it has: hyper closes the connection and
        // the client gets no complete response.
        return SimResponse {
            status: StatusCode::OK,
            headers: vec![(
                "content-type",
                "multipart/mixed; boundary=batchresponse_dropped".into(),
            )],
            body: "--batchresponse_dropped\r\nContent-Type: multipart/mixed; boundary=changesetresponse_dropped\r\n\r\n".into(),
            drop_connection: true,
        };
    }
    SimResponse {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        headers: vec![("content-type", "text/html".into())],
        body: format!("<html><head><title>{status} - Web server received an invalid response while acting as a gateway or proxy server.</title></head><body></body></html>"),
        drop_connection: false,
    }
}

// ---------------------------------------------------------------------------------------------
// Queries

fn query(st: &State, req: &SimRequest, def: &EntityDef) -> SimResponse {
    let params: Vec<(String, String)> = req
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    for (k, _) in &params {
        if k.starts_with('$')
            && !matches!(
                k.as_str(),
                "$filter" | "$select" | "$top" | "$skiptoken" | "$count" | "$orderby"
            )
        {
            return bad_query(&format!("The query parameter '{k}' is not supported."));
        }
    }
    let cross_company = get(names::CROSS_COMPANY).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let fields = schema(def.set);
    let unknown = |f: &str| {
        bad_query(&format!(
            "Could not find a property named '{f}' on type 'Microsoft.Dynamics.DataEntities.{}'.",
            def.type_name
        ))
    };
    let expr = match get("$filter").map(filter::parse) {
        None => None,
        Some(Ok(e)) => {
            let mut used = vec![];
            e.fields(&mut used);
            if let Some(f) = used.iter().find(|f| !fields.contains(&f.as_str())) {
                return unknown(f);
            }
            Some(e)
        }
        Some(Err(e)) => return bad_query(&format!("Syntax error in $filter: {e}")),
    };
    let select: Option<Vec<String>> =
        get("$select").map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    if let Some(sel) = &select {
        if let Some(f) = sel.iter().find(|f| !fields.contains(&f.as_str())) {
            return unknown(f);
        }
    }
    let top: Option<usize> = match get("$top").map(str::parse) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return bad_query("Invalid value for $top."),
    };
    let skip: usize = get("$skiptoken").and_then(|v| v.parse().ok()).unwrap_or(0);

    let mut matched = Vec::new();
    for row in rows(st, def.set) {
        if def.company && !cross_company {
            let visible = row.iter().any(|(k, v)| {
                *k == names::DATA_AREA_ID
                    && matches!(v, Val::Str(c) if c.eq_ignore_ascii_case(&st.seed.default_company))
            });
            if !visible {
                continue;
            }
        }
        if let Some(e) = &expr {
            let lookup = |f: &str| row.iter().find(|(k, _)| *k == f).map(|(_, v)| v);
            match e.eval(&lookup) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(msg) => return bad_query(&msg),
            }
        }
        matched.push(row);
    }
    if let Some(t) = top {
        matched.truncate(t);
    }
    let prefer = req
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix("odata.maxpagesize=")
                .and_then(|n| n.trim().parse::<usize>().ok())
        });
    let page_size = prefer.map_or(st.page_size, |p| p.clamp(1, st.page_size));
    let end = (skip + page_size).min(matched.len());
    let page = if skip < matched.len() {
        &matched[skip..end]
    } else {
        &[][..]
    };

    let mut body = format!(
        "{{\"@odata.context\":{},\"value\":[",
        serde_json::to_string(&format!("{}/data/$metadata#{}", st.env_url, def.set)).expect("str")
    );
    for (i, row) in page.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let projected: Row = match &select {
            Some(sel) => row
                .iter()
                .filter(|(k, _)| sel.iter().any(|s| s == k))
                .cloned()
                .collect(),
            None => row.clone(),
        };
        body.push_str(&row_json(&projected));
    }
    body.push(']');
    if end < matched.len() {
        let mut q: Vec<String> = req
            .query
            .split('&')
            .filter(|p| {
                !p.is_empty() && !p.starts_with("$skiptoken=") && !p.starts_with("%24skiptoken=")
            })
            .map(str::to_string)
            .collect();
        q.push(format!("$skiptoken={end}"));
        let next = format!("{}{}?{}", st.env_url, req.path, q.join("&"));
        body.push_str(&format!(
            ",\"@odata.nextLink\":{}",
            serde_json::to_string(&next).expect("str")
        ));
    }
    body.push('}');
    let mut r = SimResponse::json(StatusCode::OK, body);
    r.headers.push(("odata-version", "4.0".into()));
    if let Some(p) = prefer {
        r.headers
            .push(("preference-applied", format!("odata.maxpagesize={p}")));
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Inserts

type Body = BTreeMap<String, Box<RawValue>>;

fn body_str(b: &Body, k: &str) -> Result<Option<String>, SimResponse> {
    match b.get(k).map(|r| r.get().trim()) {
        None | Some("null") => Ok(None),
        Some(raw) if raw.starts_with('"') => serde_json::from_str::<String>(raw)
            .map(Some)
            .map_err(|e| bad_body(&format!("Invalid string for property '{k}': {e}"))),
        Some(raw) => Err(bad_body(&format!(
            "Cannot convert the literal '{raw}' to the expected type 'Edm.String' for property '{k}'."
        ))),
    }
}

fn body_dec(b: &Body, k: &str) -> Result<Option<Decimal>, SimResponse> {
    match b.get(k).map(|r| r.get().trim()) {
        None | Some("null") => Ok(None),
        Some(raw) if raw.starts_with('"') => Err(bad_body(&format!(
            "Cannot convert a primitive value to the expected type 'Edm.Decimal' for property '{k}'. A JSON number was expected."
        ))),
        Some(raw) => Decimal::from_str(raw)
            .or_else(|_| Decimal::from_scientific(raw))
            .map(Some)
            .map_err(|_| bad_body(&format!("Invalid number '{raw}' for property '{k}'."))),
    }
}

fn check_properties(b: &Body, allowed: &[&str], type_name: &str) -> Result<(), SimResponse> {
    match b.keys().find(|k| !k.starts_with('@') && !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad_body(&format!(
            "The property '{k}' does not exist on type 'Microsoft.Dynamics.DataEntities.{type_name}' or is not writable. Make sure to only use property names that are defined by the type."
        ))),
        None => Ok(()),
    }
}

fn us_date(d: NaiveDate) -> String {
    d.format("%-m/%-d/%Y").to_string()
}

fn created(st: &State, def: &EntityDef, row: &Row, key: String) -> SimResponse {
    let mut r = SimResponse::json(StatusCode::CREATED, row_json(row));
    r.headers.push((
        "location",
        format!("{}/data/{}({key})", st.env_url, def.set),
    ));
    r.headers.push(("odata-version", "4.0".into()));
    r
}

pub(super) fn create(st: &mut State, body: &[u8], def: &EntityDef) -> SimResponse {
    let body: Body = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return bad_body(&format!("The request body is not a valid JSON object: {e}")),
    };
    let r = if def.set == h::SET {
        create_header(st, &body, def)
    } else {
        create_line(st, &body, def)
    };
    r.unwrap_or_else(|e| e)
}

fn create_header(st: &mut State, b: &Body, def: &EntityDef) -> Result<SimResponse, SimResponse> {
    check_properties(
        b,
        &[
            names::DATA_AREA_ID,
            h::JOURNAL_NAME,
            h::DESCRIPTION,
            h::POSTING_LAYER,
            h::BATCH_NUMBER,
        ],
        def.type_name,
    )?;
    let et = h::ENTITY_TYPE;
    let company = body_str(b, names::DATA_AREA_ID)?
        .unwrap_or_else(|| st.seed.default_company.clone())
        .to_ascii_lowercase();
    if !st.seed.ledgers.iter().any(|x| x.legal_entity == company) {
        return Err(write_failed(
            et,
            &[format!("Company '{company}' does not exist.")],
        ));
    }
    if body_str(b, h::BATCH_NUMBER)?.is_some_and(|v| !v.is_empty()) {
        return Err(write_failed(et, &["The number sequence for Journal batch number is not set to allow manual numbers; do not send JournalBatchNumber.".into()]));
    }
    let Some(name) = body_str(b, h::JOURNAL_NAME)?.filter(|v| !v.is_empty()) else {
        return Err(write_failed(
            et,
            &["Field 'Name' must be filled in.".into()],
        ));
    };
    let Some(jname) = st
        .seed
        .journal_names
        .iter()
        .find(|j| j.legal_entity == company && j.name.eq_ignore_ascii_case(&name))
        .cloned()
    else {
        return Err(write_failed(
            et,
            &[
                format!("The value '{name}' in field 'Name' is not found in the related table 'Journal names'."),
                format!("validateField failed on field '{et}.JournalName'."),
            ],
        ));
    };
    let first = st.seed.first_batch_number;
    let n = st.next_batch.entry(company.clone()).or_insert(first);
    let batch_number = format!("{:05}", *n);
    *n += 1;
    let hd = SimHeader {
        legal_entity: company.clone(),
        batch_number: batch_number.clone(),
        journal_name: jname.name.clone(),
        description: body_str(b, h::DESCRIPTION)?.unwrap_or(jname.description.clone()),
        posting_layer: body_str(b, h::POSTING_LAYER)?.unwrap_or_else(|| "Current".into()),
        is_posted: false,
        total_debit: Decimal::ZERO,
        total_credit: Decimal::ZERO,
    };
    let row = header_row(&hd);
    st.headers.push(hd);
    Ok(created(
        st,
        def,
        &row,
        format!("dataAreaId='{company}',JournalBatchNumber='{batch_number}'"),
    ))
}

/// Splits a display value on unescaped delimiters, removing the backslash escapes.
fn split_display(s: &str, delim: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                parts.last_mut().expect("non-empty").push(n);
            }
        } else if c == delim {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("non-empty").push(c);
        }
    }
    parts
}

fn active(from: Option<NaiveDate>, to: Option<NaiveDate>, d: NaiveDate) -> bool {
    from.is_none_or(|f| f <= d) && to.is_none_or(|t| d <= t)
}

/// Validates a ledger display value like F&O: active format, main account, dimension values.
fn validate_account(
    st: &State,
    company: &str,
    chart: &str,
    date: NaiveDate,
    display: &str,
    field: &str,
) -> Vec<String> {
    let mut msgs = Vec::new();
    let Some(format) = st
        .seed
        .formats
        .iter()
        .find(|f| f.active && f.format_type == df::TYPE_LEDGER)
    else {
        return vec!["No active financial dimension format for integrating applications of type 'Ledger dimension format' exists.".into()];
    };
    let segments: Vec<&str> = format.format.split(st.seed.delimiter).collect();
    let parts = split_display(display, st.seed.delimiter);
    let main = parts[0].trim();
    if main.is_empty() {
        msgs.push("Field 'Main account' must be filled in.".into());
    } else {
        match st
            .seed
            .main_accounts
            .iter()
            .find(|a| a.chart_of_accounts == chart && a.id.eq_ignore_ascii_case(main))
        {
            None => msgs.push(format!(
                "The value '{main}' in field 'Main account' is not found in the related table 'Main accounts'."
            )),
            Some(a) if a.suspended => msgs.push(format!("Main account {} is suspended.", a.id)),
            Some(a) if !active(a.active_from, a.active_to, date) => msgs.push(format!(
                "Main account {} is not active on {}.",
                a.id,
                us_date(date)
            )),
            Some(_) => {}
        }
    }
    // Missing trailing segments are blank; extra segments are dropped.
    for (i, dim) in segments.iter().enumerate().skip(1) {
        let value = parts.get(i).map(|v| v.trim()).unwrap_or("");
        if value.is_empty() {
            continue;
        }
        let candidates: Vec<_> = st
            .seed
            .dimension_values
            .iter()
            .filter(|v| v.dimension == *dim && v.value.eq_ignore_ascii_case(value))
            .filter(|v| v.legal_entity.is_empty() || v.legal_entity == company)
            .collect();
        let v = candidates
            .iter()
            .find(|v| v.legal_entity == company)
            .or_else(|| candidates.first());
        match v {
            None => msgs.push(format!(
                "The value '{value}' in field '{dim}' is not found in the related table 'Financial dimension values'."
            )),
            Some(v) if v.suspended => msgs.push(format!(
                "Financial dimension value {} for {dim} is suspended.",
                v.value
            )),
            Some(v) if v.is_total => msgs.push(format!(
                "Financial dimension value {} for {dim} is a total and cannot be posted to.",
                v.value
            )),
            Some(v) if !active(v.active_from, v.active_to, date) => msgs.push(format!(
                "Financial dimension value {} for {dim} is not active on {}.",
                v.value,
                us_date(date)
            )),
            Some(_) => {}
        }
    }
    if !msgs.is_empty() {
        msgs.push(format!(
            "validateField failed on field '{}.{field}'.",
            l::ENTITY_TYPE
        ));
    }
    msgs
}

fn create_line(st: &mut State, b: &Body, def: &EntityDef) -> Result<SimResponse, SimResponse> {
    let et = l::ENTITY_TYPE;
    if b.contains_key(l::LINE_NUMBER) {
        return Err(bad_body(&format!(
            "The property '{}' is assigned by the system and cannot be set.",
            l::LINE_NUMBER
        )));
    }
    check_properties(
        b,
        &[
            names::DATA_AREA_ID,
            l::BATCH_NUMBER,
            l::VOUCHER,
            l::TRANS_DATE,
            l::ACCOUNT_TYPE,
            l::ACCOUNT,
            l::OFFSET_ACCOUNT_TYPE,
            l::OFFSET_ACCOUNT,
            l::DEBIT,
            l::CREDIT,
            l::CURRENCY,
            l::TEXT,
            "Document",
            "ExchRate",
        ],
        def.type_name,
    )?;
    let company = body_str(b, names::DATA_AREA_ID)?
        .unwrap_or_else(|| st.seed.default_company.clone())
        .to_ascii_lowercase();
    let batch = body_str(b, l::BATCH_NUMBER)?.unwrap_or_default();
    let Some(hidx) = st
        .headers
        .iter()
        .position(|x| x.legal_entity == company && x.batch_number == batch)
    else {
        return Err(write_failed(
            et,
            &[format!("The value '{batch}' in field 'Journal batch number' is not found in the related table 'Journal table'.")],
        ));
    };
    if st.headers[hidx].is_posted {
        return Err(write_failed(
            et,
            &[format!(
                "Journal {batch} has been posted and cannot be changed."
            )],
        ));
    }
    let mut msgs: Vec<String> = Vec::new();
    let currency = body_str(b, l::CURRENCY)?.unwrap_or_default();
    if currency.trim().is_empty() {
        msgs.push("Field 'Currency' must be filled in.".into());
    }
    let date = match body_str(b, l::TRANS_DATE)? {
        None => {
            msgs.push("Field 'Date' must be filled in.".into());
            None
        }
        Some(t) => match t
            .get(..10)
            .and_then(|p| NaiveDate::parse_from_str(p, "%Y-%m-%d").ok())
        {
            Some(d) => Some(d),
            None => {
                return Err(bad_body(&format!(
                    "Cannot convert '{t}' to 'Edm.DateTimeOffset' for property 'TransDate'."
                )))
            }
        },
    };
    for (k, label) in [
        (l::ACCOUNT_TYPE, "Account type"),
        (l::OFFSET_ACCOUNT_TYPE, "Offset account type"),
    ] {
        if let Some(t) = body_str(b, k)? {
            if !t.eq_ignore_ascii_case(l::ACCOUNT_TYPE_LEDGER) {
                msgs.push(format!(
                    "{label} '{t}' is not supported by the sandbox (only Ledger)."
                ));
            }
        }
    }
    let debit = body_dec(b, l::DEBIT)?.unwrap_or(Decimal::ZERO);
    let credit = body_dec(b, l::CREDIT)?.unwrap_or(Decimal::ZERO);
    if !debit.is_zero() && !credit.is_zero() {
        msgs.push("A line can have a debit amount or a credit amount, not both.".into());
    }
    let account = body_str(b, l::ACCOUNT)?.unwrap_or_default();
    let offset = body_str(b, l::OFFSET_ACCOUNT)?.unwrap_or_default();
    let ledger = st
        .seed
        .ledgers
        .iter()
        .find(|x| x.legal_entity == company)
        .cloned();
    if let (Some(d), Some(led)) = (date, ledger.as_ref()) {
        let period = st.seed.periods.iter().find(|p| {
            p.calendar == led.fiscal_calendar
                && p.period_type == fp::TYPE_OPERATING
                && p.start <= d
                && d <= p.end
        });
        match period {
            None => msgs.push(format!(
                "The date {} is not in a fiscal period of calendar {}.",
                us_date(d),
                led.fiscal_calendar
            )),
            Some(p) => match period_status_of(st, &company, &p.calendar, &p.year, &p.name) {
                PeriodStatus::Open => {}
                PeriodStatus::OnHold => msgs.push(format!(
                    "The fiscal period {} {} is on hold for ledger {} (date {}).",
                    p.year,
                    p.name,
                    company.to_uppercase(),
                    us_date(d)
                )),
                PeriodStatus::Closed => msgs.push(format!(
                    "The fiscal period {} {} is closed for ledger {} (date {}).",
                    p.year,
                    p.name,
                    company.to_uppercase(),
                    us_date(d)
                )),
            },
        }
        msgs.extend(validate_account(
            st,
            &company,
            &led.chart_of_accounts,
            d,
            &account,
            l::ACCOUNT,
        ));
        if !offset.is_empty() {
            msgs.extend(validate_account(
                st,
                &company,
                &led.chart_of_accounts,
                d,
                &offset,
                l::OFFSET_ACCOUNT,
            ));
        }
    }
    // Voucher per the journal name's NewVoucher setting.
    let header = st.headers[hidx].clone();
    let jname = st
        .seed
        .journal_names
        .iter()
        .find(|j| j.legal_entity == company && j.name == header.journal_name)
        .cloned();
    let sent_voucher = body_str(b, l::VOUCHER)?.filter(|v| !v.trim().is_empty());
    let allocation = jname
        .as_ref()
        .map_or(VoucherAllocation::InConnectionWithBalance, |j| {
            j.new_voucher
        });
    if allocation == VoucherAllocation::Manual && sent_voucher.is_none() {
        msgs.push("Field 'Voucher' must be filled in.".into());
    }
    if !msgs.is_empty() {
        return Err(write_failed(et, &msgs));
    }
    // Constant work per insert, not a scan of every stored line (which made large journals
    // quadratic). The journal's balance is its header's running totals, which every change to
    // its lines keeps in step (this insert, `delete`, `tamper_line`, a `$batch` rollback). Its
    // last line is the one nearest the end of `st.lines`: lines are only appended here, each
    // numbered one above the journal's highest, and deletions keep the order, so that line
    // carries both the latest voucher and the highest line number. The search from the end
    // stops at once when the journal is the one being written.
    let balance = header.total_debit - header.total_credit;
    let last_line = st
        .lines
        .iter()
        .rev()
        .find(|x| x.legal_entity == company && x.batch_number == batch);
    let last_voucher = last_line.map(|x| x.voucher.clone());
    let line_number = last_line.map_or(0, |x| x.line_number) + 1;
    let voucher = match (sent_voucher, allocation, last_voucher) {
        (Some(v), _, _) => v,
        (None, VoucherAllocation::OneVoucherNumberOnly, Some(v)) => v,
        (None, VoucherAllocation::InConnectionWithBalance, Some(v)) if !balance.is_zero() => v,
        _ => {
            let n = st.next_voucher.entry(company.clone()).or_insert(1);
            let v = format!("GNJL{:06}", *n);
            *n += 1;
            v
        }
    };
    let line = SimLine {
        legal_entity: company.clone(),
        batch_number: batch.clone(),
        line_number,
        voucher,
        trans_date: date.expect("validated"),
        account_type: body_str(b, l::ACCOUNT_TYPE)?
            .unwrap_or_else(|| l::ACCOUNT_TYPE_LEDGER.into()),
        account_display: account,
        offset_account_type: body_str(b, l::OFFSET_ACCOUNT_TYPE)?
            .unwrap_or_else(|| l::ACCOUNT_TYPE_LEDGER.into()),
        offset_display: offset,
        debit,
        credit,
        currency,
        text: body_str(b, l::TEXT)?.unwrap_or_default(),
        document: body_str(b, "Document")?.unwrap_or_default(),
    };
    st.headers[hidx].total_debit += debit;
    st.headers[hidx].total_credit += credit;
    let row = line_row(&line);
    st.lines.push(line);
    Ok(created(
        st,
        def,
        &row,
        format!("dataAreaId='{company}',JournalBatchNumber='{batch}',LineNumber={line_number}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_value_unescaping() {
        assert_eq!(
            split_display("618100--022-AMZ", '-'),
            ["618100", "", "022", "AMZ"]
        );
        assert_eq!(split_display("110180-US\\-108", '-'), ["110180", "US-108"]);
        assert_eq!(split_display("a\\\\-b", '-'), ["a\\", "b"]);
    }

    #[test]
    fn key_predicates() {
        let k =
            parse_key("dataAreaId='usmf',JournalBatchNumber='O''Neil, 1',LineNumber=7").unwrap();
        assert_eq!(
            k,
            [
                ("dataAreaId".to_string(), "usmf".to_string()),
                ("JournalBatchNumber".to_string(), "O'Neil, 1".to_string()),
                ("LineNumber".to_string(), "7".to_string()),
            ]
        );
        assert!(parse_key("a='x").is_err());
        assert!(parse_key("='x'").is_err());
        assert!(parse_key("a='x'b").is_err());
    }

    #[test]
    fn percent_decoding_keeps_plus() {
        assert_eq!(percent_decode("a%20b+c%27"), "a b+c'");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
