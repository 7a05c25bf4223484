//! Plain-text rendering of journals, runs and audit trails for the terminal.

use std::fmt::Write;
use std::path::Path;

use rust_decimal::Decimal;

use crate::domain::journal::Journal;
use crate::domain::reference::DimensionFormat;
use crate::domain::run::{AuditEvent, LineRecord, RunRecord, SourceRowRecord};
use crate::engine::{Outcome, RunReport};

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
    let _ = writeln!(
        s,
        "  {:>4} {:>4} {:<10} {:<24} {:<10} {:>14} {:>14} {:<3}  Text",
        "Line", "Vchr", "Date", "Account", "Offset", "Debit", "Credit", "Cur"
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
        let _ = writeln!(
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
    let _ = writeln!(
        s,
        "  {:>4} {:>4} {:<10} {:<24} {:<10} {:>14} {:>14}      {}",
        "",
        "",
        "Total",
        format!("{} lines, {} vouchers", j.lines.len(), j.voucher_count()),
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

/// What `run`, `preview`, `replay` and `demo` print.
pub fn run_report(r: &RunReport, store: &Path) -> String {
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
        let _ = writeln!(s, "{m}");
    }
    if r.outcome == Outcome::Posted {
        let _ = writeln!(
            s,
            "The connector never posts: finance reviews and posts the journal(s) in D365 (General ledger > Journal entries > General journals > Validate, then Post — or Submit when the journal name requires workflow approval). Undo with `ml-connector reverse {}`.",
            run.run_id
        );
    }
    if r.outcome != Outcome::Previewed {
        if let Some(n) = crate::controls::RunNotification::for_run(run) {
            let _ = writeln!(s, "Fix: {}", n.fix);
        }
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
    if r.outcome != Outcome::Previewed
        && !(r.outcome == Outcome::Rejected
            && r.journals.is_empty()
            && t.source_rows == 0
            && run.message.is_none())
    {
        let _ = writeln!(
            s,
            "Audit trail: ml-connector show {} --store {}",
            run.run_id,
            store.display()
        );
    }
    s
}

/// `runs`: one line per run.
pub fn runs_table(runs: &[RunRecord]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<24} {:<16} {:<26} {:<10} {:<8} {:>6} {:>14}  Journals",
        "Run", "Status", "Instance", "Period", "Trigger", "Lines", "Source total"
    );
    for r in runs {
        let _ = writeln!(
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
        "  totals          Looker {} → mapped {} (+ rounding residue {}) → D365 debit {} / credit {} in {} of {} lines",
        t.source_total, t.mapped_total, t.rounding_residue, t.created_debit, t.created_credit, t.created_lines, t.journal_lines
    );

    let _ = writeln!(s, "\nJournal lines ({})", lines.len());
    let _ = writeln!(
        s,
        "  {:>4} {:<5} {:<8} {:<10} {:<24} {:>14} {:>14} {:<8} {:<8} Source rows / D365",
        "Line", "Ent.", "Batch", "Date", "Account", "Debit", "Credit", "Status", "D365 no"
    );
    for l in lines {
        let _ = writeln!(
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
        let _ = writeln!(
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
        let message = match e.kind.as_str() {
            crate::controls::KIND_RECONCILIATION => {
                match serde_json::from_str::<crate::controls::Reconciliation>(&e.message) {
                    Ok(r) if r.is_clean() => "reconciled: no difference".to_string(),
                    Ok(r) => format!("reconciled: {} difference(s)", r.differences.len()),
                    Err(_) => "reconciliation (unreadable)".to_string(),
                }
            }
            _ => e.message.clone(),
        };
        let _ = writeln!(
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
