//! The invariants, checked against D365's own state (the simulator's tables), not against what
//! any poster believes:
//!
//! - one journal header per part key (the key token of the Description, `MLC <key> …`);
//! - one copy of each line reference (`<run key>.L0007`, the first token of a line's Text), and
//!   every line under a header of its own run;
//! - every voucher (D365's `Voucher` within a journal) balanced, a line with an offset account
//!   balancing itself;
//! - D365's total equal to the Looker total to the cent (the net of every line not on the
//!   balancing account);
//! - every run's recorded outcome agrees with D365: a `completed` / `already_posted` run's planned
//!   lines are exactly what D365 holds under its key (account, offset, debit, credit, date,
//!   currency, text; in the header of the planned part; nothing more under its key); a
//!   `conflict` run's plan differs from what D365 holds (or another key holds the period); a
//!   `rejected` run cannot happen here (the config and data are valid); failed, interrupted,
//!   busy and unfinished (crashed) runs claim nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rust_decimal::Decimal;

use crate::domain::journal::JournalPart;
use crate::domain::mapping::{description_key, line_ref, parse_part_key, part_key};
use crate::domain::run::{LineRecord, RunRecord, RunStatus};
use crate::sandbox::d365::{SimHeader, SimLine};

/// What D365 holds.
#[derive(Debug, Clone, Default)]
pub struct D365State {
    pub headers: Vec<SimHeader>,
    pub lines: Vec<SimLine>,
}

/// What the source says.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// The exact total of the Looker rows.
    pub looker_total: Decimal,
    /// Main account of the balancing side (excluded from the total).
    pub balancing_account: String,
    /// Segment delimiter of `AccountDisplayValue`.
    pub delimiter: char,
}

/// One run as a store recorded it: its status and the lines it planned.
#[derive(Debug, Clone)]
pub struct RunClaim {
    /// Which store it came from (for the report).
    pub store: String,
    pub run: RunRecord,
    pub lines: Vec<LineRecord>,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Two or more headers carry the same part key.
    DuplicateHeader {
        legal_entity: String,
        key: String,
        batches: Vec<String>,
    },
    /// Two or more lines carry the same lineage reference.
    DuplicateLine {
        legal_entity: String,
        reference: String,
        /// `batch#LineNumber` of each copy.
        copies: Vec<String>,
    },
    /// A line whose journal is missing, or whose journal belongs to another run.
    MisplacedLine {
        legal_entity: String,
        batch: String,
        line_number: u32,
        reference: String,
        header: Option<String>,
    },
    /// A voucher whose debits and credits differ.
    Unbalanced {
        legal_entity: String,
        batch: String,
        voucher: String,
        net: Decimal,
    },
    /// D365's total is not the Looker total.
    TotalMismatch { d365: Decimal, looker: Decimal },
    /// A run's recorded status says something D365 does not show.
    OutcomeDisagrees {
        store: String,
        run_id: String,
        status: String,
        detail: String,
    },
    /// The final run with no faults did not end posted / already posted.
    NotSettled { detail: String },
    /// A poster's engine stopped with an error that is not an injected crash.
    EngineError { poster: String, error: String },
    /// The seed did not finish in time.
    Timeout { detail: String },
}

impl Violation {
    /// Short name, for summaries.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::DuplicateHeader { .. } => "duplicate-header",
            Violation::DuplicateLine { .. } => "duplicate-line",
            Violation::MisplacedLine { .. } => "misplaced-line",
            Violation::Unbalanced { .. } => "unbalanced-voucher",
            Violation::TotalMismatch { .. } => "total-mismatch",
            Violation::OutcomeDisagrees { .. } => "outcome-disagrees",
            Violation::NotSettled { .. } => "not-settled",
            Violation::EngineError { .. } => "engine-error",
            Violation::Timeout { .. } => "timeout",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::DuplicateHeader {
                legal_entity,
                key,
                batches,
            } => write!(
                f,
                "duplicate header: key {key} in {legal_entity} on {} journals ({})",
                batches.len(),
                batches.join(", ")
            ),
            Violation::DuplicateLine {
                legal_entity,
                reference,
                copies,
            } => write!(
                f,
                "duplicate line: {reference} in {legal_entity} {} times ({})",
                copies.len(),
                copies.join(", ")
            ),
            Violation::MisplacedLine {
                legal_entity,
                batch,
                line_number,
                reference,
                header,
            } => match header {
                None => write!(
                    f,
                    "misplaced line: {reference} ({legal_entity}/{batch}#{line_number}) has no journal header"
                ),
                Some(d) => write!(
                    f,
                    "misplaced line: {reference} ({legal_entity}/{batch}#{line_number}) is under header \"{d}\" of another run"
                ),
            },
            Violation::Unbalanced {
                legal_entity,
                batch,
                voucher,
                net,
            } => write!(
                f,
                "unbalanced voucher: {voucher} of {legal_entity}/{batch} nets {net}"
            ),
            Violation::TotalMismatch { d365, looker } => write!(
                f,
                "total mismatch: D365 holds {d365} on the non-balancing accounts, Looker says {looker}"
            ),
            Violation::OutcomeDisagrees {
                store,
                run_id,
                status,
                detail,
            } => write!(
                f,
                "outcome disagrees: run {run_id} in {store} is `{status}`, but {detail}"
            ),
            Violation::NotSettled { detail } => {
                write!(f, "not settled: the final fault-free run {detail}")
            }
            Violation::EngineError { poster, error } => {
                write!(f, "engine error: {poster}: {error}")
            }
            Violation::Timeout { detail } => write!(f, "timeout: {detail}"),
        }
    }
}

/// The lineage reference at the start of a line's Text, if it has one.
fn reference(l: &SimLine) -> Option<(&str, u32)> {
    crate::domain::mapping::parse_line_ref(&l.text)
}

fn main_account(display: &str, delimiter: char) -> &str {
    display.split(delimiter).next().unwrap_or("")
}

/// How a D365 line differs from the planned one, if it does.
fn differs(rec: &LineRecord, l: &SimLine) -> Option<String> {
    let planned_offset = rec.offset_display.as_deref().unwrap_or("");
    let mut d = Vec::new();
    if l.account_display != rec.account_display {
        d.push(format!(
            "account {} (planned {})",
            l.account_display, rec.account_display
        ));
    }
    if l.offset_display != planned_offset {
        d.push(format!(
            "offset {:?} (planned {:?})",
            l.offset_display, planned_offset
        ));
    }
    if l.debit != rec.line.debit() || l.credit != rec.line.credit() {
        d.push(format!(
            "debit/credit {}/{} (planned {}/{})",
            l.debit,
            l.credit,
            rec.line.debit(),
            rec.line.credit()
        ));
    }
    if l.trans_date != rec.line.trans_date {
        d.push(format!(
            "date {} (planned {})",
            l.trans_date, rec.line.trans_date
        ));
    }
    if l.currency != rec.line.currency {
        d.push(format!(
            "currency {} (planned {})",
            l.currency, rec.line.currency
        ));
    }
    if l.text != rec.line.text {
        d.push(format!("text {:?} (planned {:?})", l.text, rec.line.text));
    }
    (!d.is_empty()).then(|| d.join(", "))
}

/// Checks every invariant; an empty result means the state is exactly-once and every claim
/// is true.
pub fn check(state: &D365State, expect: &Expectation, claims: &[RunClaim]) -> Vec<Violation> {
    let mut out = Vec::new();
    let le = |s: &str| s.to_ascii_lowercase();

    // Headers by (entity, batch), and by (entity, part key).
    let header_at: BTreeMap<(String, &str), &SimHeader> = state
        .headers
        .iter()
        .map(|h| ((le(&h.legal_entity), h.batch_number.as_str()), h))
        .collect();
    let mut by_key: BTreeMap<(String, &str), Vec<&str>> = BTreeMap::new();
    for h in &state.headers {
        if let Some(k) = description_key(&h.description) {
            by_key
                .entry((le(&h.legal_entity), k))
                .or_default()
                .push(&h.batch_number);
        }
    }
    for ((e, key), batches) in &by_key {
        if batches.len() > 1 {
            out.push(Violation::DuplicateHeader {
                legal_entity: e.clone(),
                key: key.to_string(),
                batches: batches.iter().map(|b| b.to_string()).collect(),
            });
        }
    }

    // Lines by (entity, lineage reference); misplaced lines.
    let mut by_ref: BTreeMap<(String, String), Vec<&SimLine>> = BTreeMap::new();
    for l in &state.lines {
        let Some((run_key, n)) = reference(l) else {
            continue; // not ours
        };
        let r = line_ref(run_key, n);
        let header = header_at.get(&(le(&l.legal_entity), l.batch_number.as_str()));
        let under_own_run = header.is_some_and(|h| {
            description_key(&h.description).is_some_and(|k| parse_part_key(k).0 == run_key)
        });
        if !under_own_run {
            out.push(Violation::MisplacedLine {
                legal_entity: le(&l.legal_entity),
                batch: l.batch_number.clone(),
                line_number: l.line_number,
                reference: r.clone(),
                header: header.map(|h| h.description.clone()),
            });
        }
        by_ref.entry((le(&l.legal_entity), r)).or_default().push(l);
    }
    for ((e, r), copies) in &by_ref {
        if copies.len() > 1 {
            out.push(Violation::DuplicateLine {
                legal_entity: e.clone(),
                reference: r.clone(),
                copies: copies
                    .iter()
                    .map(|l| format!("{}#{}", l.batch_number, l.line_number))
                    .collect(),
            });
        }
    }

    // Vouchers.
    let mut nets: BTreeMap<(String, &str, &str), Decimal> = BTreeMap::new();
    for l in &state.lines {
        let net = if l.offset_display.is_empty() {
            l.debit - l.credit
        } else {
            Decimal::ZERO // the offset account takes the other side of the same line
        };
        *nets
            .entry((le(&l.legal_entity), &l.batch_number, &l.voucher))
            .or_default() += net;
    }
    for ((e, batch, voucher), net) in nets {
        if !net.is_zero() {
            out.push(Violation::Unbalanced {
                legal_entity: e,
                batch: batch.to_string(),
                voucher: voucher.to_string(),
                net,
            });
        }
    }

    // Totals.
    let d365: Decimal = state
        .lines
        .iter()
        .filter(|l| main_account(&l.account_display, expect.delimiter) != expect.balancing_account)
        .map(|l| l.debit - l.credit)
        .sum();
    if d365 != expect.looker_total {
        out.push(Violation::TotalMismatch {
            d365,
            looker: expect.looker_total,
        });
    }

    // Claims.
    for c in claims {
        if let Some(detail) = disagreement(state, &header_at, &by_ref, c) {
            out.push(Violation::OutcomeDisagrees {
                store: c.store.clone(),
                run_id: c.run.run_id.clone(),
                status: c.run.status.as_str().to_string(),
                detail,
            });
        }
    }
    out
}

/// Why a run's recorded outcome is not what D365 shows (`None`: it agrees, or claims nothing).
fn disagreement(
    state: &D365State,
    header_at: &BTreeMap<(String, &str), &SimHeader>,
    by_ref: &BTreeMap<(String, String), Vec<&SimLine>>,
    c: &RunClaim,
) -> Option<String> {
    let key = c.run.keys.run_key.as_str();
    let le = |s: &str| s.to_ascii_lowercase();
    // The parts the run planned, per entity.
    let mut parts: BTreeMap<String, BTreeSet<JournalPart>> = BTreeMap::new();
    for rec in &c.lines {
        parts
            .entry(le(&rec.legal_entity))
            .or_default()
            .insert(rec.part);
    }
    match c.run.status {
        RunStatus::Completed | RunStatus::AlreadyPosted => {
            if c.lines.is_empty() {
                return None; // nothing to post (every row skipped)
            }
            let mut problems = Vec::new();
            let mut planned: BTreeSet<(String, String)> = BTreeSet::new();
            for rec in &c.lines {
                let e = le(&rec.legal_entity);
                let r = line_ref(key, rec.line.line_no);
                planned.insert((e.clone(), r.clone()));
                let Some(copies) = by_ref.get(&(e.clone(), r.clone())) else {
                    problems.push(format!("{r} is not in D365"));
                    continue;
                };
                let want = part_key(key, rec.part);
                for l in copies {
                    if let Some(d) = differs(rec, l) {
                        problems.push(format!("{r} holds {d}"));
                    }
                    let got = header_at
                        .get(&(e.clone(), l.batch_number.as_str()))
                        .and_then(|h| description_key(&h.description));
                    if got != Some(want.as_str()) {
                        problems.push(format!(
                            "{r} is in journal {} keyed {:?}, planned under {want}",
                            l.batch_number, got
                        ));
                    }
                }
            }
            for ((e, r), _) in by_ref.iter() {
                if r.rsplit_once(".L").map(|(k, _)| k) == Some(key)
                    && !planned.contains(&(e.clone(), r.clone()))
                {
                    problems.push(format!("D365 holds {r}, which the run did not plan"));
                }
            }
            for h in &state.headers {
                let Some((run, part)) = description_key(&h.description).map(parse_part_key) else {
                    continue;
                };
                if run == key
                    && !parts
                        .get(&le(&h.legal_entity))
                        .is_some_and(|p| p.contains(&part))
                {
                    problems.push(format!(
                        "D365 holds header {} \"{}\", a part the run did not plan",
                        h.batch_number, h.description
                    ));
                }
            }
            if problems.is_empty() {
                return None;
            }
            problems.dedup();
            let n = problems.len();
            problems.truncate(4);
            Some(format!(
                "D365 does not hold its plan: {}{}",
                problems.join("; "),
                if n > 4 {
                    format!(" (and {} more)", n - 4)
                } else {
                    String::new()
                }
            ))
        }
        RunStatus::Conflict => {
            // Some line of the plan is in D365 with other content…
            let line_differs = c.lines.iter().any(|rec| {
                by_ref
                    .get(&(le(&rec.legal_entity), line_ref(key, rec.line.line_no)))
                    .is_some_and(|copies| copies.iter().any(|l| differs(rec, l).is_some()))
            });
            // …or a header of the same period under another key or another split.
            let period = format!("{}-", c.run.keys.period_key);
            let other_header = state.headers.iter().any(|h| {
                let Some((run, part)) = description_key(&h.description).map(parse_part_key) else {
                    return false;
                };
                run.starts_with(&period)
                    && (run != key
                        || !parts
                            .get(&le(&h.legal_entity))
                            .is_some_and(|p| p.contains(&part)))
            });
            (!line_differs && !other_header).then(|| {
                "D365 holds nothing that conflicts with its plan (every planned line D365 holds is identical, and no other key or split holds the period)".to_string()
            })
        }
        RunStatus::Rejected => Some(format!(
            "the harness's config and data are valid, so nothing should be rejected: {}",
            c.run.message.as_deref().unwrap_or("")
        )),
        // Failed, interrupted, busy, and runs a crash left started/posting claim nothing; so
        // does any status added later that this checker does not know.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, Utc};

    use super::*;
    use crate::domain::journal::{JournalLine, LedgerAccount, LineKind};
    use crate::domain::run::{LineStatus, RunKeys, RunTotals};
    use crate::domain::source::SourceRef;

    const KEY: &str = "abcdef0123-123abc";

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
    }

    fn header(batch: &str, key: &str) -> SimHeader {
        SimHeader {
            legal_entity: "usmf".into(),
            batch_number: batch.into(),
            journal_name: "GenJrn".into(),
            description: format!("MLC {key} Marketplace fees 2026-W47"),
            posting_layer: "Current".into(),
            is_posted: false,
            total_debit: Decimal::ZERO,
            total_credit: Decimal::ZERO,
        }
    }

    /// A line of run `KEY`: `amount` > 0 is a debit.
    fn line(batch: &str, n: u32, voucher: &str, account: &str, amount: i64) -> SimLine {
        let a = Decimal::new(amount, 2);
        SimLine {
            legal_entity: "usmf".into(),
            batch_number: batch.into(),
            line_number: n,
            voucher: voucher.into(),
            trans_date: date(),
            account_type: "Ledger".into(),
            account_display: format!("{account}--022-AMZ"),
            offset_account_type: "Ledger".into(),
            offset_display: String::new(),
            debit: if a > Decimal::ZERO { a } else { Decimal::ZERO },
            credit: if a < Decimal::ZERO { -a } else { Decimal::ZERO },
            currency: "USD".into(),
            text: format!("{} Commission Amazon 022", line_ref(KEY, n)),
            document: String::new(),
        }
    }

    /// One journal, one voucher: 12.34 + 1.00 of fees, balanced on 200150.
    fn good() -> D365State {
        D365State {
            headers: vec![header("00042", KEY)],
            lines: vec![
                line("00042", 1, "V1", "618200", 1234),
                line("00042", 2, "V1", "618200", 100),
                line("00042", 3, "V1", "200150", -1334),
            ],
        }
    }

    fn expect() -> Expectation {
        Expectation {
            looker_total: Decimal::new(1334, 2),
            balancing_account: "200150".into(),
            delimiter: '-',
        }
    }

    /// The claim of a run that planned exactly [`good`]'s lines.
    fn claim(status: RunStatus) -> RunClaim {
        let run = RunRecord {
            run_id: "r-1".into(),
            instance: "fees".into(),
            keys: RunKeys {
                period_key: KEY.split('-').next().unwrap().into(),
                run_key: KEY.into(),
            },
            source: SourceRef::Look {
                look_id: "chaos".into(),
            },
            period: "2026-W47".into(),
            run_date: date(),
            config_version: "v".into(),
            trigger: "test".into(),
            status,
            totals: RunTotals::default(),
            journals: vec![],
            message: None,
            started_at: Utc::now(),
            finished_at: None,
        };
        let lines = good()
            .lines
            .iter()
            .map(|l| LineRecord {
                run_id: "r-1".into(),
                legal_entity: "usmf".into(),
                part: JournalPart::default(),
                line: JournalLine {
                    line_no: l.line_number,
                    voucher: 1,
                    trans_date: l.trans_date,
                    account: LedgerAccount::new(l.account_display.split('-').next().unwrap()),
                    offset_account: None,
                    currency: l.currency.clone(),
                    amount: l.debit - l.credit,
                    text: l.text.clone(),
                    kind: LineKind::Detail,
                    source_rows: vec![],
                    source_column: None,
                },
                account_display: l.account_display.clone(),
                offset_display: None,
                status: LineStatus::Created,
                journal_batch: None,
                d365_line_number: None,
                d365_response: None,
            })
            .collect();
        RunClaim {
            store: "sqlite#0".into(),
            run,
            lines,
        }
    }

    fn kinds(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(Violation::kind).collect()
    }

    #[test]
    fn a_clean_state_passes() {
        let claims = [
            claim(RunStatus::Completed),
            claim(RunStatus::AlreadyPosted),
            claim(RunStatus::Failed),
            claim(RunStatus::Posting),
            claim(RunStatus::Busy),
        ];
        assert_eq!(check(&good(), &expect(), &claims), vec![]);
    }

    #[test]
    fn a_duplicate_header_is_caught() {
        let mut s = good();
        s.headers.push(header("00043", KEY));
        let v = check(&s, &expect(), &[]);
        assert_eq!(kinds(&v), ["duplicate-header"], "{v:?}");
        assert!(v[0].to_string().contains("00042, 00043"), "{}", v[0]);
        // Parts are keys of their own: P1of2 and P2of2 are not duplicates, P1of2 twice is.
        let mut s = D365State::default();
        s.headers.push(header("00042", &format!("{KEY}/P1of2")));
        s.headers.push(header("00043", &format!("{KEY}/P2of2")));
        assert_eq!(
            check(
                &s,
                &Expectation {
                    looker_total: Decimal::ZERO,
                    ..expect()
                },
                &[]
            ),
            vec![]
        );
        s.headers.push(header("00044", &format!("{KEY}/P1of2")));
        assert_eq!(
            kinds(&check(
                &s,
                &Expectation {
                    looker_total: Decimal::ZERO,
                    ..expect()
                },
                &[]
            )),
            ["duplicate-header"]
        );
    }

    #[test]
    fn a_duplicate_line_reference_is_caught() {
        // The same voucher twice in one journal: balanced, but every line twice and the total
        // doubled.
        let mut s = good();
        let copies: Vec<SimLine> = s
            .lines
            .iter()
            .map(|l| SimLine {
                line_number: l.line_number + 3,
                voucher: "V2".into(),
                ..l.clone()
            })
            .collect();
        s.lines.extend(copies);
        let v = check(&s, &expect(), &[claim(RunStatus::Completed)]);
        let k = kinds(&v);
        assert_eq!(
            k.iter().filter(|k| **k == "duplicate-line").count(),
            3,
            "{v:?}"
        );
        assert!(k.contains(&"total-mismatch"), "{v:?}");
        assert!(!k.contains(&"unbalanced-voucher"), "{v:?}");
        assert!(
            v.iter().any(|x| x
                .to_string()
                .contains("L0001 in usmf 2 times (00042#1, 00042#4)")),
            "{v:?}"
        );
    }

    #[test]
    fn an_unbalanced_voucher_is_caught() {
        // The balancing line of the voucher is missing (a partial voucher).
        let mut s = good();
        s.lines.pop();
        let e = Expectation {
            looker_total: Decimal::new(1334, 2),
            ..expect()
        };
        let v = check(&s, &e, &[]);
        assert_eq!(kinds(&v), ["unbalanced-voucher"], "{v:?}");
        assert!(v[0].to_string().contains("V1 of usmf/00042 nets 13.34"));
        // A line with an offset account balances itself.
        let mut s = D365State {
            headers: vec![header("00042", KEY)],
            lines: vec![line("00042", 1, "V1", "618200", 1334)],
        };
        s.lines[0].offset_display = "200150".into();
        assert_eq!(check(&s, &e, &[]), vec![]);
    }

    #[test]
    fn a_total_off_by_a_cent_is_caught() {
        let e = Expectation {
            looker_total: Decimal::new(1335, 2),
            ..expect()
        };
        assert_eq!(kinds(&check(&good(), &e, &[])), ["total-mismatch"]);
    }

    #[test]
    fn a_line_outside_its_runs_journal_is_caught() {
        let mut s = good();
        s.headers.push(header("00050", "abcdef0123-999999"));
        s.lines[1].batch_number = "00050".into();
        s.lines[2].batch_number = "00051".into();
        let v = check(&s, &expect(), &[]);
        let k = kinds(&v);
        assert_eq!(
            k.iter().filter(|k| **k == "misplaced-line").count(),
            2,
            "{v:?}"
        );
    }

    #[test]
    fn a_completed_run_must_hold_its_plan() {
        // Another account than planned (a mapping change "already posted").
        let mut s = good();
        s.lines[0].account_display = "618100--022-AMZ".into();
        let v = check(&s, &expect(), &[claim(RunStatus::AlreadyPosted)]);
        assert_eq!(kinds(&v), ["outcome-disagrees"], "{v:?}");
        assert!(v[0]
            .to_string()
            .contains("account 618100--022-AMZ (planned 618200--022-AMZ)"));
        // A missing line (the total then also differs, and the voucher does not balance).
        let mut s = good();
        s.lines.remove(1);
        let v = check(&s, &expect(), &[claim(RunStatus::Completed)]);
        assert!(
            v.iter()
                .any(|x| x.to_string().contains("L0002 is not in D365")),
            "{v:?}"
        );
        // A line D365 holds under the run's key that the run did not plan.
        let mut c = claim(RunStatus::Completed);
        c.lines.remove(1);
        let v = check(&good(), &expect(), &[c]);
        assert!(
            v.iter().any(|x| x.to_string().contains("did not plan")),
            "{v:?}"
        );
        // Failed runs claim nothing.
        let v = check(&s, &expect(), &[claim(RunStatus::Failed)]);
        assert!(!kinds(&v).contains(&"outcome-disagrees"), "{v:?}");
    }

    #[test]
    fn a_conflict_must_have_something_to_conflict_with() {
        // D365 holds exactly the plan: a false conflict.
        let v = check(&good(), &expect(), &[claim(RunStatus::Conflict)]);
        assert_eq!(kinds(&v), ["outcome-disagrees"], "{v:?}");
        // D365 holds other accounts under the key: a true conflict.
        let mut s = good();
        s.lines[0].account_display = "618100--022-AMZ".into();
        assert_eq!(check(&s, &expect(), &[claim(RunStatus::Conflict)]), vec![]);
        // Another key holds the period: a true conflict.
        let mut s = good();
        s.headers[0].description = "MLC abcdef0123-999999 Marketplace fees".into();
        for l in &mut s.lines {
            l.text = l.text.replace(KEY, "abcdef0123-999999");
        }
        assert_eq!(check(&s, &expect(), &[claim(RunStatus::Conflict)]), vec![]);
        // Nothing at all in D365: a false conflict.
        let v = check(
            &D365State::default(),
            &Expectation {
                looker_total: Decimal::ZERO,
                ..expect()
            },
            &[claim(RunStatus::Conflict)],
        );
        assert_eq!(kinds(&v), ["outcome-disagrees"], "{v:?}");
    }

    #[test]
    fn a_rejected_run_is_unexpected() {
        let v = check(&good(), &expect(), &[claim(RunStatus::Rejected)]);
        assert_eq!(kinds(&v), ["outcome-disagrees"]);
    }
}
