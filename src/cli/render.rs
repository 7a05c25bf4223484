//! Plain-text rendering of journals, runs and audit trails for the terminal.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use rust_decimal::Decimal;

use super::hints::Hints;
use crate::domain::journal::Journal;
use crate::domain::reference::DimensionFormat;
use crate::domain::run::{AuditEvent, LineRecord, RunRecord, SourceRowRecord};
use crate::engine::{Outcome, RunReport};

/// Table rows are cut to this many characters unless `--wide`.
pub const WIDTH: usize = 120;

static WIDE: AtomicBool = AtomicBool::new(false);

/// `--wide`: print table rows whole.
pub fn set_wide(wide: bool) {
    WIDE.store(wide, Ordering::Relaxed);
}

/// A table row as printed: whole with `--wide`, else cut to [`WIDTH`] with a `…`.
fn fit(line: String) -> String {
    if WIDE.load(Ordering::Relaxed) || line.chars().count() <= WIDTH {
        line
    } else {
        let mut cut: String = line.chars().take(WIDTH - 1).collect();
        cut.push('…');
        cut
    }
}

/// `writeln!` for a table row (see [`fit`]).
macro_rules! row {
    ($s:expr, $($t:tt)*) => {{
        let _ = writeln!($s, "{}", fit(format!($($t)*)));
    }};
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Posted => "POSTED",
        Outcome::AlreadyPosted => "ALREADY POSTED",
        Outcome::Previewed => "PREVIEW (nothing written)",
        Outcome::Rejected => "REJECTED (nothing written)",
        Outcome::Conflict => "CONFLICT (nothing written)",
        Outcome::Busy => "BUSY (nothing written)",
        Outcome::Failed => "FAILED",
        Outcome::Interrupted => "INTERRUPTED (resumable with replay)",
        Outcome::DuplicatePosted => "DUPLICATE POSTED IN D365 (reverse needed)",
        Outcome::NothingToPost => "NOTHING TO POST (nothing written)",
    }
}

/// `1 voucher`, `2 vouchers`.
fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn fallback_format() -> DimensionFormat {
    DimensionFormat {
        name: "(not read)".into(),
        segments: vec!["MainAccount".into()],
        delimiter: '-',
    }
}

/// A journal as a table, with totals and a balance check.
pub fn journal_table(j: &Journal, format: &DimensionFormat, batch: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Journal {}/{}{}  name {}  \"{}\"",
        j.legal_entity,
        batch.unwrap_or("(new)"),
        if j.part.is_split() {
            format!(" ({})", j.part)
        } else {
            String::new()
        },
        j.journal_name,
        j.description
    );
    row!(
        s,
        "  {:>4} {:>4} {:<10} {:<24} {:<10} {:>14} {:>14} {:<3}  Text",
        "Line",
        "Vchr",
        "Date",
        "Account",
        "Offset",
        "Debit",
        "Credit",
        "Cur"
    );
    // Checked: a rejected run's journal (shown by `preview`/`run`) under a very large
    // `amount.max_abs` may add up past a decimal; the total then says so instead of panicking.
    let mut totals: Option<(Decimal, Decimal)> = Some((Decimal::ZERO, Decimal::ZERO));
    for l in &j.lines {
        totals = totals.and_then(|(d, c)| {
            let (d, c) = (d.checked_add(l.debit())?, c.checked_add(l.credit())?);
            if l.offset_account.is_some() {
                Some((d.checked_add(l.credit())?, c.checked_add(l.debit())?))
            } else {
                Some((d, c))
            }
        });
        row!(
            s,
            "  {:>4} {:>4} {:<10} {:<24} {:<10} {:>14} {:>14} {:<3}  {}",
            l.line_no,
            l.voucher,
            l.trans_date,
            l.account.display_value(format),
            l.offset_account
                .as_ref()
                .map(|o| o.display_value(format))
                .unwrap_or_default(),
            if l.debit().is_zero() {
                String::new()
            } else {
                l.debit().to_string()
            },
            if l.credit().is_zero() {
                String::new()
            } else {
                l.credit().to_string()
            },
            l.currency,
            l.text
        );
    }
    // Not cut: its last column says whether the journal balances.
    let _ = writeln!(
        s,
        "  {:>4} {:>4} {:<10} {:<24} {:<10} {:>14} {:>14}      {}",
        "",
        "",
        "Total",
        format!(
            "{}, {}",
            plural(j.lines.len(), "line"),
            plural(j.voucher_count(), "voucher")
        ),
        "",
        totals.map_or("out of range".to_string(), |t| t.0.to_string()),
        totals.map_or("out of range".to_string(), |t| t.1.to_string()),
        match totals {
            None => "totals out of range",
            Some((d, c)) if d == c => "balanced",
            Some(_) => "NOT BALANCED",
        }
    );
    s
}

/// How to word a run report: the commands it suggests and whether the run is in the store.
pub struct ReportContext<'a> {
    /// Fills the real config file and store into suggested commands.
    pub hints: &'a Hints,
    /// What to do next (for runs that did not end well), as chosen by the caller.
    pub fix: Option<String>,
    /// Whether the run was recorded (a preview is not, so `show` cannot find it).
    pub stored: bool,
}

/// What `run`, `preview`, `replay` and `demo` print.
pub fn run_report(r: &RunReport, ctx: &ReportContext<'_>) -> String {
    let mut s = String::new();
    let run = &r.run;
    let _ = writeln!(
        s,
        "\n{}  run {}  instance {}  period {}  run key {}",
        outcome_label(r.outcome),
        run.run_id,
        run.instance,
        run.period,
        run.keys.run_key
    );
    if let Some(m) = &run.message {
        let _ = writeln!(s, "{}", ctx.hints.apply(m));
    }
    if r.outcome == Outcome::Posted {
        let undo = if ctx.hints.config.is_some() {
            ctx.hints.apply(&format!(
                " Undo while it is unposted with `ml-connector reverse {id} --config FILE --delete-unposted`, once posted with `ml-connector reverse {id} --config FILE`.",
                id = run.run_id
            ))
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "The connector never posts: finance reviews and posts the journal(s) in D365 (General ledger > Journal entries > General journals > Validate, then Post — or Submit when the journal name requires workflow approval).{undo}",
        );
    }
    if let Some(fix) = &ctx.fix {
        let _ = writeln!(s, "Fix: {}", ctx.hints.apply(fix));
    }
    if !r.issues.is_empty() {
        let _ = writeln!(s, "\nProblems ({}):", r.issues.len());
        for i in &r.issues {
            let _ = writeln!(s, "  - {i}");
        }
    }
    let fallback = fallback_format();
    for j in &r.journals {
        // A legal entity may have several headers (parts): match the part, falling back to
        // the recorded order (parts are posted in order).
        let batch = r
            .posted
            .iter()
            .find(|p| p.legal_entity == j.legal_entity && p.part == j.part)
            .map(|p| p.batch_number.as_str())
            .or_else(|| {
                run.journals
                    .iter()
                    .filter(|(le, _)| *le == j.legal_entity)
                    .nth(j.part.part.saturating_sub(1) as usize)
                    .map(|(_, b)| b.as_str())
            });
        let _ = writeln!(s);
        s.push_str(&journal_table(
            j,
            r.formats.get(&j.legal_entity).unwrap_or(&fallback),
            batch,
        ));
    }
    let t = &run.totals;
    let _ = writeln!(
        s,
        "\nTotals: {} source rows, Looker total {}, mapped total {}, rounding residue {}, {} journal lines",
        t.source_rows, t.source_total, t.mapped_total, t.rounding_residue, t.journal_lines
    );
    if t.created_lines > 0 {
        let _ = writeln!(
            s,
            "In D365 (read back): {} lines, debit {}, credit {}",
            t.created_lines, t.created_debit, t.created_credit
        );
    }
    if ctx.stored
        && r.outcome != Outcome::Previewed
        && !(r.outcome == Outcome::Rejected
            && r.journals.is_empty()
            && t.source_rows == 0
            && run.message.is_none())
    {
        let _ = writeln!(
            s,
            "Audit trail: {}",
            ctx.hints
                .apply(&format!("`ml-connector show {}`", run.run_id))
                .replace('`', "")
        );
    }
    s
}

/// The stable `--json` shape of `run`, `preview` and `replay` (documented in the README): the
/// outcome and its exit code, the run as recorded, what to do next, the problems, and the
/// journals exactly as planned.
pub fn run_json(r: &RunReport, ctx: &ReportContext<'_>, exit_code: i32) -> serde_json::Value {
    let run = &r.run;
    serde_json::json!({
        "outcome": outcome_key(r.outcome),
        "exit_code": exit_code,
        "stored": ctx.stored,
        "run_id": run.run_id,
        "instance": run.instance,
        "period": run.period,
        "run_key": run.keys.run_key,
        "status": run.status.as_str(),
        "message": run.message.as_deref().map(|m| ctx.hints.apply(m)),
        "fix": ctx.fix.as_deref().map(|f| ctx.hints.apply(f)),
        "issues": r.issues.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "totals": run.totals,
        "journals": r.journals,
        "posted": run
            .journals
            .iter()
            .map(|(le, b)| serde_json::json!({ "legal_entity": le, "batch_number": b }))
            .collect::<Vec<_>>(),
    })
}

/// The outcome as a stable machine-readable word.
fn outcome_key(o: Outcome) -> &'static str {
    match o {
        Outcome::Posted => "posted",
        Outcome::AlreadyPosted => "already_posted",
        Outcome::Previewed => "previewed",
        Outcome::Rejected => "rejected",
        Outcome::Conflict => "conflict",
        Outcome::Busy => "busy",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
        Outcome::DuplicatePosted => "duplicate_posted",
        Outcome::NothingToPost => "nothing_to_post",
    }
}

/// `runs`: one line per run.
pub fn runs_table(runs: &[RunRecord]) -> String {
    let mut s = String::new();
    row!(
        s,
        "{:<24} {:<16} {:<26} {:<10} {:<8} {:>6} {:>14}  Journals",
        "Run",
        "Status",
        "Instance",
        "Period",
        "Trigger",
        "Lines",
        "Source total"
    );
    for r in runs {
        row!(
            s,
            "{:<24} {:<16} {:<26} {:<10} {:<8} {:>6} {:>14}  {}",
            r.run_id,
            r.status.as_str(),
            r.instance,
            r.period,
            r.trigger,
            r.totals.journal_lines,
            r.totals.source_total,
            r.journals
                .iter()
                .map(|(le, b)| format!("{le}/{b}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if runs.is_empty() {
        s.push_str("(no runs recorded)\n");
    }
    s
}

/// `show`: the whole audit trail of one run.
pub fn show_run(
    run: &RunRecord,
    rows: &[SourceRowRecord],
    lines: &[LineRecord],
    events: &[AuditEvent],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Run {}", run.run_id);
    let _ = writeln!(s, "  instance        {}", run.instance);
    let _ = writeln!(s, "  status          {}", run.status.as_str());
    if let Some(m) = &run.message {
        let _ = writeln!(s, "  message         {m}");
    }
    let _ = writeln!(s, "  source          {}", run.source.identity());
    let _ = writeln!(
        s,
        "  period          {} (run date {})",
        run.period, run.run_date
    );
    let _ = writeln!(
        s,
        "  run key         {} (period key {})",
        run.keys.run_key, run.keys.period_key
    );
    let _ = writeln!(s, "  config version  {}", run.config_version);
    let _ = writeln!(s, "  trigger         {}", run.trigger);
    let _ = writeln!(
        s,
        "  started         {}{}",
        run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        run.finished_at
            .map(|f| format!(", finished {}", f.format("%H:%M:%S UTC")))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "  journals        {}",
        run.journals
            .iter()
            .map(|(le, b)| format!("{le}/{b}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let t = &run.totals;
    let _ = writeln!(
        s,
        "  totals          Looker {} → mapped {} (+ rounding residue {})\n  in D365         debit {} / credit {} in {} of {} lines",
        t.source_total, t.mapped_total, t.rounding_residue, t.created_debit, t.created_credit, t.created_lines, t.journal_lines
    );

    let _ = writeln!(s, "\nJournal lines ({})", lines.len());
    row!(
        s,
        "  {:>4} {:<5} {:<8} {:<10} {:<24} {:>14} {:>14} {:<8} {:<8} Source rows / D365",
        "Line",
        "Ent.",
        "Batch",
        "Date",
        "Account",
        "Debit",
        "Credit",
        "Status",
        "D365 no"
    );
    for l in lines {
        row!(
            s,
            "  {:>4} {:<5} {:<8} {:<10} {:<24} {:>14} {:>14} {:<8} {:<8} {:?} {}",
            l.line.line_no,
            l.legal_entity,
            l.journal_batch.as_deref().unwrap_or("-"),
            l.line.trans_date,
            l.account_display,
            l.line.debit(),
            l.line.credit(),
            format!("{:?}", l.status).to_lowercase(),
            l.d365_line_number.as_deref().unwrap_or("-"),
            l.line.source_rows,
            l.d365_response.as_deref().unwrap_or("")
        );
    }

    let _ = writeln!(s, "\nSource rows ({})", rows.len());
    for r in rows {
        let cells = r
            .cells
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        row!(
            s,
            "  row {:>4} {:<8} lines {:?} hash {}  {}",
            r.row_index,
            format!("{:?}", r.status).to_lowercase(),
            r.line_nos,
            &r.row_hash[..r.row_hash.len().min(12)],
            cells
        );
        for e in &r.errors {
            let _ = writeln!(s, "           ! {e}");
        }
    }

    let _ = writeln!(s, "\nEvents ({})", events.len());
    for e in events {
        // A stored reconciliation is JSON; its summary is enough here (full report below).
        let message = if e.kind == crate::controls::KIND_RECONCILIATION {
            match serde_json::from_str::<crate::controls::Reconciliation>(&e.message) {
                Ok(r) if r.is_clean() => "reconciled: no difference".to_string(),
                Ok(r) => format!("reconciled: {} difference(s)", r.differences.len()),
                Err(_) => "reconciliation (unreadable)".to_string(),
            }
        } else {
            e.message.clone()
        };
        row!(
            s,
            "  {} {:<5} {:<10} {}",
            e.at.format("%H:%M:%S%.3f"),
            e.level,
            e.kind,
            message
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::journal::JournalPart;

    fn journal(part: JournalPart) -> Journal {
        Journal {
            legal_entity: "usmf".into(),
            journal_name: "GenJrn".into(),
            description: "MLC k Looker".into(),
            part,
            lines: vec![],
        }
    }

    #[test]
    fn a_part_of_a_split_journal_is_named_and_an_unsplit_one_is_not() {
        let f = fallback_format();
        let split = journal_table(&journal(JournalPart { part: 2, of: 3 }), &f, Some("00042"));
        assert!(
            split.starts_with("Journal usmf/00042 (part 2 of 3)  name GenJrn"),
            "{split}"
        );
        let whole = journal_table(&journal(JournalPart::default()), &f, None);
        assert!(
            whole.starts_with("Journal usmf/(new)  name GenJrn"),
            "{whole}"
        );
    }

    #[test]
    fn totals_beyond_a_decimal_are_shown_as_out_of_range() {
        use crate::domain::journal::{JournalLine, LedgerAccount, LineKind};
        let line = |line_no, amount: &str| JournalLine {
            line_no,
            voucher: line_no,
            trans_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap(),
            account: LedgerAccount::new("618100"),
            offset_account: Some(LedgerAccount::new("200150")),
            currency: "USD".into(),
            amount: amount.parse().unwrap(),
            text: String::new(),
            kind: LineKind::Detail,
            source_rows: vec![],
            source_column: None,
        };
        let mut j = journal(JournalPart::default());
        j.lines = vec![line(1, "50000000000000000000000000000")];
        let t = journal_table(&j, &fallback_format(), None);
        assert!(t.contains("balanced"), "{t}");
        j.lines.push(line(2, "-50000000000000000000000000000"));
        let t = journal_table(&j, &fallback_format(), None);
        assert!(
            t.contains("out of range") && t.contains("totals out of range"),
            "{t}"
        );
    }
}
