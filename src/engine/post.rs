//! Posting: write a run's lines to D365 so that a retry never double-posts.
//!
//! OData has no idempotency key, so every header carries the run key in its Description and
//! every line carries its lineage reference (`{run_key}.L0001`) at the start of its Text. Before
//! writing, the engine asks D365 what already exists under those keys and writes only what is
//! missing; after writing, it reads the lines back and ties them out against the plan.
//!
//! A journal split at `journal.max_journal_lines` is posted part by part, each part under its
//! own header keyed `{run_key}/P2of3` (see `mapping::part_key`); lines record their part, so a
//! retry or replay reconciles each part against its own header.

use std::collections::BTreeMap;

use chrono::Utc;
use rust_decimal::Decimal;

use super::budget::Budget;
use super::{CrashPoint, Engine, EngineError};
use crate::domain::config::{InstanceConfig, Posting};
use crate::domain::journal::JournalPart;
use crate::domain::mapping::{
    description_prefix, header_of_run, parse_line_ref, part_key, render_description,
};
use crate::domain::money::{self, Overflow};
use crate::domain::reference::VoucherAllocation;
use crate::domain::run::{LineRecord, LineStatus, RunKeys, RunRecord, RunStatus};
use crate::ports::{LedgerError, LedgerHeader, LedgerLine, NewLedgerLine, VoucherOutcome};

/// What happened to one journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostSummary {
    pub legal_entity: String,
    /// Which part of the legal entity's journal (part 1 of 1 when it was not split).
    pub part: JournalPart,
    pub batch_number: String,
    pub header_created: bool,
    pub lines_created: usize,
    pub lines_found: usize,
    /// Debit and credit totals as read back from D365.
    pub debit: Decimal,
    pub credit: Decimal,
    pub is_posted: bool,
}

/// Why posting one journal stopped.
enum Stop {
    Failed(String),
    Conflict(String),
    /// Injected crash: the engine stops without recording anything more.
    Crashed(CrashPoint),
    /// Stopped on purpose before the deadline, between two writes; the audit says where.
    Interrupted(String),
}

/// Attempts for a line whose create came back with an unknown outcome and was then confirmed
/// absent by reading D365 (the re-send is not blind: it follows a reconciliation).
const UNKNOWN_OUTCOME_ATTEMPTS: u32 = 3;

impl Engine<'_> {
    /// Posts every line of `run`; returns the final status, a message and per-journal summaries.
    pub(super) async fn post_all(
        &self,
        run: &mut RunRecord,
        config: &InstanceConfig,
        lines: Vec<LineRecord>,
        keys: &RunKeys,
        _earlier: &[RunRecord],
        budget: &Budget,
    ) -> Result<(RunStatus, String, Vec<PostSummary>), EngineError> {
        // One journal header per legal entity and part, in that order (parts as recorded at
        // mapping time, so a replay writes into the same headers).
        let mut by_journal: BTreeMap<(String, JournalPart), Vec<LineRecord>> = BTreeMap::new();
        for l in lines {
            by_journal
                .entry((l.legal_entity.clone(), l.part))
                .or_default()
                .push(l);
        }
        let total: usize = by_journal.values().map(Vec::len).sum();
        let mut done = 0usize;
        let mut summaries = Vec::new();
        // Whether each entity's journal name wants manual vouchers: read once per entity, not
        // once per part (the reference read pages through every account and dimension value).
        let mut manual_vouchers: BTreeMap<String, bool> = BTreeMap::new();
        for ((le, part), mut lines) in by_journal {
            lines.sort_by_key(|l| l.line.line_no);
            // Boxed: the journal's state machine is large, and inlining it into every caller's
            // future overflowed the 2 MiB stack of a test thread in debug builds.
            let journal = Box::pin(self.post_journal(
                run,
                config,
                keys,
                (&le, part),
                &mut lines,
                &mut done,
                total,
                budget,
                &mut manual_vouchers,
            ));
            match journal.await {
                Ok(s) => summaries.push(s),
                Err(Stop::Interrupted(m)) => {
                    let run_id = &run.run_id;
                    let msg = format!(
                        "{m} In all {done} of {total} line(s) of this run are in D365, each recorded in the audit, and the period lock is released: finish it with `ml-connector replay {run_id} --config FILE` (AWS: `ml-connector replay {run_id} --request --table TABLE`)."
                    );
                    return Ok((RunStatus::Interrupted, msg, summaries));
                }
                Err(Stop::Failed(m)) => return Ok((RunStatus::Failed, m, summaries)),
                Err(Stop::Conflict(m)) => return Ok((RunStatus::Conflict, m, summaries)),
                Err(Stop::Crashed(p)) => return Err(EngineError::Crashed(p)),
            }
        }
        // Checked sums (`Iterator::sum` panics on overflow): mapping bounds every line by
        // `amount.max_abs` and checks its sums, but an audit from before that may not be.
        let (Ok(debit), Ok(credit)) = (
            money::sum(summaries.iter().map(|s| s.debit)),
            money::sum(summaries.iter().map(|s| s.credit)),
        ) else {
            let msg = format!("the journals are in D365, but their debit and credit totals cannot be computed: {Overflow}");
            return Ok((RunStatus::Failed, msg, summaries));
        };
        run.totals.created_debit = debit;
        run.totals.created_credit = credit;
        run.totals.created_lines = summaries
            .iter()
            .map(|s| (s.lines_created + s.lines_found) as u64)
            .sum();
        let nothing_new = summaries
            .iter()
            .all(|s| !s.header_created && s.lines_created == 0);
        let journals = summaries
            .iter()
            .map(|s| {
                format!(
                    "{}/{} ({}{} lines, debit {} = credit {}{})",
                    s.legal_entity,
                    s.batch_number,
                    if s.part.is_split() {
                        format!("{}, ", s.part)
                    } else {
                        String::new()
                    },
                    s.lines_created + s.lines_found,
                    s.debit,
                    s.credit,
                    if s.is_posted {
                        ", posted"
                    } else {
                        ", unposted"
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        if nothing_new {
            Ok((
                RunStatus::AlreadyPosted,
                format!("already posted, nothing new written: {journals}"),
                summaries,
            ))
        } else {
            Ok((
                RunStatus::Completed,
                format!("journal(s) created and left unposted for review: {journals}"),
                summaries,
            ))
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn post_journal(
        &self,
        run: &mut RunRecord,
        config: &InstanceConfig,
        keys: &RunKeys,
        (le, part): (&str, JournalPart),
        lines: &mut [LineRecord],
        done: &mut usize,
        total: usize,
        budget: &Budget,
        manual_cache: &mut BTreeMap<String, bool>,
    ) -> Result<PostSummary, Stop> {
        let run_id = run.run_id.clone();
        let failed = |what: &str, e: LedgerError| Stop::Failed(format!("{what} in {le}: {e}"));
        // This header's own natural key: the run key, or `{run_key}/P2of3` for a part.
        let key = part_key(&keys.run_key, part);
        let ours_prefix = description_prefix(&key);
        let of_part = if part.is_split() {
            format!(" ({part})")
        } else {
            String::new()
        };

        // 1. What does D365 already hold for this period?
        let period_prefix = format!("{}-", description_prefix(&keys.period_key));
        let headers = self
            .ledger
            .find_headers(le, &period_prefix)
            .await
            .map_err(|e| failed("could not look up existing journals", e))?;
        // Journals reversed by `ml-connector reverse` no longer count as postings of the period.
        let reversed = crate::controls::reversed_batches(self.ledger, le, &keys.period_key)
            .await
            .map_err(|e| failed("could not look up reversal journals", e))?;
        let headers: Vec<LedgerHeader> = headers
            .into_iter()
            .filter(|h| !reversed.contains(&h.batch_number))
            .collect();
        // By whole key token (`MLC k` is a string prefix of `MLC k/P1of3`, and `P1of3` of
        // `P1of30`): this part's header, other parts of this run (ours too, never a conflict),
        // this run's data split another way, and other data.
        let mut ours = Vec::new();
        let mut our_other_parts = 0usize;
        let mut split_otherwise = Vec::new();
        let mut others = Vec::new();
        for h in headers {
            match header_of_run(&h.description, &keys.run_key) {
                Some(p) if p == part => ours.push(h),
                Some(p) if p.of == part.of => our_other_parts += 1,
                Some(_) => split_otherwise.push(h),
                None => others.push(h),
            }
        }
        ours.sort_by(|a, b| a.batch_number.cmp(&b.batch_number));
        if !split_otherwise.is_empty() {
            let list = split_otherwise
                .iter()
                .map(|h| format!("{} \"{}\"", h.batch_number, h.description))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Stop::Conflict(format!(
                "D365 already holds journal(s) of this data for period {} in {le} split into a different number of parts: {list}; this attempt splits it into {} (was journal.max_journal_lines changed?). Nothing more was written. Restore the setting, or reverse or delete those journals and run again.",
                run.period, part.of
            )));
        }
        if ours.is_empty() && our_other_parts == 0 && !others.is_empty() {
            let list = others
                .iter()
                .map(|h| format!("{} \"{}\"", h.batch_number, h.description))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Stop::Conflict(format!(
                "D365 already holds journal(s) for period {} in {le} created from different data: {list}. Nothing was written. Reverse or delete that journal, then run again.",
                run.period
            )));
        }
        if ours.len() > 1 {
            self.event(
                &run_id,
                "warn",
                "post",
                format!(
                    "{} journals in {le} carry key {}: {}; using {} — delete the others if empty",
                    ours.len(),
                    key,
                    ours.iter()
                        .map(|h| h.batch_number.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    ours[0].batch_number
                ),
            )
            .await;
        }

        // 2. Header: reuse ours, or create it.
        let (header, header_created) = match ours.into_iter().next() {
            Some(h) => {
                self.event(
                    &run_id,
                    "info",
                    "post",
                    format!(
                        "found journal {le}/{}{of_part} from an earlier attempt; reconciling its lines",
                        h.batch_number
                    ),
                )
                .await;
                (h, false)
            }
            None => {
                if let Some(left) = budget.short() {
                    return Err(self
                        .interrupted(&run_id, le, None, &of_part, lines, left)
                        .await);
                }
                let description = render_description(config, &key, &run.period);
                let started = tokio::time::Instant::now();
                let created = self
                    .ledger
                    .create_header(le, &config.journal.journal_name, &description)
                    .await;
                budget.took(started);
                match created {
                    Ok(h) => (h, true),
                    Err(LedgerError::OutcomeUnknown(m)) => {
                        // Did it land? Ask D365 before anything else.
                        let found = self
                            .ledger
                            .find_headers(le, &ours_prefix)
                            .await
                            .map_err(|e| failed("could not reconcile the journal header", e))?;
                        match found
                            .into_iter()
                            .find(|h| header_of_run(&h.description, &keys.run_key) == Some(part))
                        {
                            Some(h) => (h, true),
                            None => {
                                return Err(Stop::Failed(format!(
                                    "creating the journal header{of_part} in {le} had an unknown outcome ({m}) and it is not in D365; nothing of it was written — replay {run_id} to try again"
                                )))
                            }
                        }
                    }
                    Err(LedgerError::OutOfTime(m)) => {
                        tracing::warn!(run_id = %run_id, "journal header in {le}: {m}");
                        let left = budget.short().unwrap_or_default();
                        return Err(self
                            .interrupted(&run_id, le, None, &of_part, lines, left)
                            .await);
                    }
                    Err(e) => return Err(failed("D365 refused the journal header", e)),
                }
            }
        };
        let batch = header.batch_number.clone();
        if !run.journals.iter().any(|(l, b)| l == le && *b == batch) {
            run.journals.push((le.to_string(), batch.clone()));
        }
        if let Err(e) = self.store.update_run(run).await {
            return Err(Stop::Failed(format!("audit store: {e}")));
        }
        if self.progress.crash_at(CrashPoint::HeaderCreated) {
            return Err(Stop::Crashed(CrashPoint::HeaderCreated));
        }
        if header_created {
            self.event(
                &run_id,
                "info",
                "post",
                format!(
                    "created journal {le}/{batch}{of_part} ({})",
                    config.journal.journal_name
                ),
            )
            .await;
        }

        // 3. Which of our lines does the journal already hold?
        let existing = self
            .our_lines(le, &batch, &keys.run_key)
            .await
            .map_err(|e| failed("could not read the journal's lines", e))?;
        let mut found = 0usize;
        for rec in lines.iter_mut() {
            if let Some(l) = existing.get(&rec.line.line_no) {
                found += 1;
                mark_created(rec, &batch, l, "already in D365");
                *done += 1;
            }
        }
        if found > 0 {
            if let Err(e) = self.store.put_lines(lines).await {
                return Err(Stop::Failed(format!("audit store: {e}")));
            }
            self.progress.line_posted(*done, total);
        }
        let missing = lines.len() - found;
        if header.is_posted && missing > 0 {
            return Err(Stop::Failed(format!(
                "journal {le}/{batch} was posted in D365 before all lines were written ({missing} missing); posted journals cannot be changed — reverse it and run again"
            )));
        }
        let manual_vouchers = match manual_cache.get(le) {
            _ if missing == 0 => false,
            Some(&manual) => manual,
            None => match self.ledger.reference(le).await {
                Ok(r) => {
                    let manual = r
                        .journal_names
                        .get(&config.journal.journal_name)
                        .map(|j| j.voucher_allocation == VoucherAllocation::Manual)
                        .unwrap_or(false);
                    manual_cache.insert(le.to_string(), manual);
                    manual
                }
                Err(e) => return Err(failed("could not read the journal name", e)),
            },
        };
        let voucher_of = |rec: &LineRecord| {
            manual_vouchers.then(|| format!("MLC{}-{:04}", keys.period_key, rec.line.voucher))
        };

        // 4. Write what is missing: whole vouchers per `$batch` changeset (atomic), or one line
        // per request where `$batch` is off or unavailable. Writes to one journal go one after
        // another (F&O serializes them anyway; parallel inserts conflict on the header).
        let mut created = 0usize;
        let mut batched = false;
        if missing > 0 && config.d365.posting == Posting::Batch {
            batched = Box::pin(self.post_vouchers(
                &run_id,
                le,
                &batch,
                keys,
                lines,
                &voucher_of,
                config.d365.batch_operations,
                &mut created,
                (done, total),
                (budget, &of_part),
            ))
            .await?;
        }
        if missing > 0 && !batched {
            for i in 0..lines.len() {
                if lines[i].status == LineStatus::Created {
                    continue;
                }
                if let Some(left) = budget.short() {
                    return Err(self
                        .interrupted(&run_id, le, Some(&batch), &of_part, lines, left)
                        .await);
                }
                let rec = &mut lines[i];
                let new = new_line(le, &batch, rec, voucher_of(rec));
                let started = tokio::time::Instant::now();
                let result = self
                    .create_line_reconciled(&new, &keys.run_key, rec.line.line_no)
                    .await;
                budget.took(started);
                match result {
                    // Not refused by D365 but out of time (e.g. a Retry-After past the
                    // deadline): nothing of this line was written, so stop resumably.
                    Err(e @ LedgerError::OutOfTime(_)) => {
                        tracing::warn!(run_id = %run_id, "line {}: {e}", lines[i].line.line_no);
                        let left = budget.short().unwrap_or_default();
                        return Err(self
                            .interrupted(&run_id, le, Some(&batch), &of_part, lines, left)
                            .await);
                    }
                    Ok(l) => {
                        created += 1;
                        mark_created(rec, &batch, &l, "created");
                    }
                    Err(e) => {
                        let msg = self
                            .refused(
                                &run_id,
                                le,
                                &batch,
                                std::slice::from_mut(rec),
                                &e.to_string(),
                                created + found,
                            )
                            .await;
                        return Err(Stop::Failed(msg));
                    }
                }
                if let Err(e) = self.store.put_lines(std::slice::from_ref(rec)).await {
                    return Err(Stop::Failed(format!("audit store: {e}")));
                }
                *done += 1;
                self.progress.line_posted(*done, total);
                if self.progress.crash_at(CrashPoint::LinesWritten) {
                    return Err(Stop::Crashed(CrashPoint::LinesWritten));
                }
            }
        }

        // 5. Read back and tie out against the plan.
        let back = self
            .our_lines(le, &batch, &keys.run_key)
            .await
            .map_err(|e| failed("could not read the journal back", e))?;
        let mut debit = Decimal::ZERO;
        let mut credit = Decimal::ZERO;
        for rec in lines.iter() {
            match back.get(&rec.line.line_no) {
                None => {
                    return Err(Stop::Failed(format!(
                        "line {} is missing from journal {le}/{batch} after posting; replay run {run_id}",
                        rec.line.line_no
                    )))
                }
                Some(l) if l.debit != rec.line.debit() || l.credit != rec.line.credit() => {
                    return Err(Stop::Failed(format!(
                        "line {} of journal {le}/{batch} holds debit {} / credit {} in D365 but the connector sent {} / {}",
                        rec.line.line_no,
                        l.debit,
                        l.credit,
                        rec.line.debit(),
                        rec.line.credit()
                    )))
                }
                Some(l) => {
                    // Checked, as in `post_all`.
                    let mut add = || -> Result<(), Overflow> {
                        money::add_to(&mut debit, l.debit)?;
                        money::add_to(&mut credit, l.credit)?;
                        if rec.offset_display.is_some() {
                            money::add_to(&mut debit, l.credit)?;
                            money::add_to(&mut credit, l.debit)?;
                        }
                        Ok(())
                    };
                    add().map_err(|e| {
                        Stop::Failed(format!(
                            "journal {le}/{batch} is in D365, but its totals cannot be computed: {e}"
                        ))
                    })?;
                }
            }
        }
        self.event(
            &run_id,
            "info",
            "post",
            format!(
                "journal {le}/{batch}{of_part}: {created} line(s) created, {found} already present; D365 holds debit {debit}, credit {credit}"
            ),
        )
        .await;
        Ok(PostSummary {
            legal_entity: le.to_string(),
            part,
            batch_number: batch,
            header_created,
            lines_created: created,
            lines_found: found,
            debit,
            credit,
            is_posted: header.is_posted,
        })
    }

    /// Posts the journal's missing lines voucher by voucher through `$batch`. Returns `false`
    /// when the gateway has no atomic batch posting (the caller then posts line by line).
    /// After an unknown outcome it reads D365 and sends only vouchers confirmed absent.
    #[allow(clippy::too_many_arguments)]
    async fn post_vouchers(
        &self,
        run_id: &str,
        le: &str,
        batch: &str,
        keys: &RunKeys,
        lines: &mut [LineRecord],
        voucher_of: &(dyn Fn(&LineRecord) -> Option<String> + Sync),
        max_operations: usize,
        created: &mut usize,
        (done, total): (&mut usize, usize),
        (budget, of_part): (&Budget, &str),
    ) -> Result<bool, Stop> {
        // Rounds that ended with an unknown outcome (each followed by a reconciliation).
        let mut round = 0;
        while round < UNKNOWN_OUTCOME_ATTEMPTS {
            // Vouchers still to write, in line order, with the indexes of their lines.
            let mut groups: Vec<(u32, Vec<usize>)> = Vec::new();
            for (i, rec) in lines.iter().enumerate() {
                if rec.status == LineStatus::Created {
                    continue;
                }
                match groups.last_mut() {
                    Some((v, idx)) if *v == rec.line.voucher => idx.push(i),
                    _ => groups.push((rec.line.voucher, vec![i])),
                }
            }
            if groups.is_empty() {
                return Ok(true);
            }
            if let Some(left) = budget.short() {
                return Err(self
                    .interrupted(run_id, le, Some(batch), of_part, lines, left)
                    .await);
            }
            if budget.has_deadline() {
                // Under a deadline, one `$batch` request's worth of vouchers at a time, so the
                // time left is checked before each request.
                let mut ops = 0;
                let fit = groups
                    .iter()
                    .take_while(|(_, idx)| {
                        ops += idx.len();
                        ops <= max_operations
                    })
                    .count();
                groups.truncate(fit.max(1));
            }
            let vouchers: Vec<Vec<NewLedgerLine>> = groups
                .iter()
                .map(|(_, idx)| {
                    idx.iter()
                        .map(|&i| new_line(le, batch, &lines[i], voucher_of(&lines[i])))
                        .collect()
                })
                .collect();
            let started = tokio::time::Instant::now();
            let result = self.ledger.create_vouchers(&vouchers, max_operations).await;
            budget.took(started);
            let outcomes = match result {
                Ok(None) => return Ok(false),
                Ok(Some(o)) => o,
                Err(e) => {
                    return Err(Stop::Failed(format!(
                        "posting the lines of journal {le}/{batch} failed: {e}; replay run {run_id}"
                    )))
                }
            };
            // One outcome per voucher, one created row per line: anything else would leave lines
            // unmarked and the next round would send them again. Stop; replay reconciles first.
            let shape_ok = outcomes.len() == groups.len()
                && groups.iter().zip(&outcomes).all(|((_, idx), o)| match o {
                    VoucherOutcome::Created(rows) => rows.len() == idx.len(),
                    _ => true,
                });
            if !shape_ok {
                return Err(Stop::Failed(format!(
                    "D365 answered the `$batch` for journal {le}/{batch} with outcomes that do not match the {} voucher(s) sent; nothing is re-sent — replay run {run_id} to reconcile",
                    groups.len()
                )));
            }
            let mut unknown = None;
            for ((voucher, idx), outcome) in groups.iter().zip(outcomes) {
                match outcome {
                    VoucherOutcome::Created(rows) => {
                        for (&i, row) in idx.iter().zip(rows.iter()) {
                            mark_created(&mut lines[i], batch, row, "created");
                            *created += 1;
                            *done += 1;
                        }
                    }
                    VoucherOutcome::Failed(msg) => {
                        let mut recs: Vec<LineRecord> =
                            idx.iter().map(|&i| lines[i].clone()).collect();
                        let msg = self
                            .refused(
                                run_id,
                                le,
                                batch,
                                &mut recs,
                                &format!("voucher {voucher}: {msg}"),
                                lines
                                    .iter()
                                    .filter(|l| l.status == LineStatus::Created)
                                    .count(),
                            )
                            .await;
                        for (&i, r) in idx.iter().zip(recs) {
                            lines[i] = r;
                        }
                        let _ = self.store.put_lines(lines).await;
                        return Err(Stop::Failed(msg));
                    }
                    VoucherOutcome::OutOfTime(reason) if unknown.is_none() => {
                        // Not sent for lack of time (a Retry-After past the deadline…): nothing
                        // of it exists, so stop resumably rather than fail.
                        tracing::warn!(run_id, "voucher {voucher} of {le}/{batch}: {reason}");
                        let _ = self.store.put_lines(lines).await;
                        let left = budget.short().unwrap_or_default();
                        return Err(self
                            .interrupted(run_id, le, Some(batch), of_part, lines, left)
                            .await);
                    }
                    VoucherOutcome::NotProcessed(reason) if unknown.is_none() => {
                        let _ = self.store.put_lines(lines).await;
                        return Err(Stop::Failed(format!(
                            "D365 did not process voucher {voucher} of journal {le}/{batch} ({reason}); nothing of it was written. Replay run {run_id} to post the rest."
                        )));
                    }
                    VoucherOutcome::NotProcessed(_) | VoucherOutcome::OutOfTime(_) => {}
                    VoucherOutcome::Unknown(detail) => {
                        unknown.get_or_insert(detail);
                    }
                }
            }
            if let Err(e) = self.store.put_lines(lines).await {
                return Err(Stop::Failed(format!("audit store: {e}")));
            }
            self.progress.line_posted(*done, total);
            if self.progress.crash_at(CrashPoint::LinesWritten) {
                return Err(Stop::Crashed(CrashPoint::LinesWritten));
            }
            if let Some(detail) = unknown {
                round += 1;
                // Ask D365 what landed before sending anything again.
                self.event(
                    run_id,
                    "warn",
                    "post",
                    format!("batch outcome unknown in {le}/{batch} ({detail}); reconciling with D365 (round {round})"),
                )
                .await;
                let present = self
                    .our_lines(le, batch, &keys.run_key)
                    .await
                    .map_err(|e| {
                        Stop::Failed(format!("could not reconcile journal {le}/{batch}: {e}"))
                    })?;
                for rec in lines.iter_mut() {
                    if rec.status != LineStatus::Created {
                        if let Some(l) = present.get(&rec.line.line_no) {
                            mark_created(
                                rec,
                                batch,
                                l,
                                "confirmed in D365 after an unknown outcome",
                            );
                            *created += 1;
                            *done += 1;
                        }
                    }
                }
                if let Err(e) = self.store.put_lines(lines).await {
                    return Err(Stop::Failed(format!("audit store: {e}")));
                }
            }
        }
        if lines.iter().all(|l| l.status == LineStatus::Created) {
            return Ok(true);
        }
        Err(Stop::Failed(format!(
            "the outcome of posting to journal {le}/{batch} stayed unknown after {UNKNOWN_OUTCOME_ATTEMPTS} attempts; replay run {run_id} once D365 answers normally"
        )))
    }

    /// Records where a run stopped for lack of time (audit event `interrupted`) and returns the
    /// stop. Called only between writes, so every line is either in D365 or not sent.
    async fn interrupted(
        &self,
        run_id: &str,
        le: &str,
        batch: Option<&str>,
        of_part: &str,
        lines: &[LineRecord],
        left: std::time::Duration,
    ) -> Stop {
        let written: Vec<&LineRecord> = lines
            .iter()
            .filter(|l| l.status == LineStatus::Created)
            .collect();
        let rest: Vec<&LineRecord> = lines
            .iter()
            .filter(|l| l.status != LineStatus::Created)
            .collect();
        let vouchers = |ls: &[&LineRecord]| {
            let mut v: Vec<u32> = ls.iter().map(|l| l.line.voucher).collect();
            v.dedup();
            v.len()
        };
        let next = rest
            .first()
            .map(|l| {
                format!(
                    "; next: line {} (voucher {})",
                    l.line.line_no, l.line.voucher
                )
            })
            .unwrap_or_default();
        let journal = match batch {
            Some(b) => format!("journal {le}/{b}{of_part}"),
            None => format!("the journal of {le}{of_part} (header not created yet)"),
        };
        let msg = format!(
            "stopped before the deadline ({:.1}s left) in {journal}: {} line(s) in {} voucher(s) written, {} line(s) in {} voucher(s) not sent{next}.",
            left.as_secs_f64(),
            written.len(),
            vouchers(&written),
            rest.len(),
            vouchers(&rest),
        );
        self.event(run_id, "warn", "interrupted", msg.clone()).await;
        Stop::Interrupted(msg)
    }

    /// Records lines D365 refused and returns the operator message.
    async fn refused(
        &self,
        run_id: &str,
        le: &str,
        batch: &str,
        recs: &mut [LineRecord],
        why: &str,
        in_d365: usize,
    ) -> String {
        for rec in recs.iter_mut() {
            rec.status = LineStatus::Failed;
            rec.journal_batch = Some(batch.to_string());
            rec.d365_response = Some(why.to_string());
        }
        let _ = self.store.put_lines(recs).await;
        let first = recs.first();
        let line = first.map(|r| r.line.line_no).unwrap_or_default();
        let row = first
            .and_then(|r| r.line.source_rows.first())
            .map(|r| format!(" (source row {r})"))
            .unwrap_or_default();
        let msg = format!(
            "D365 did not accept line {line}{row} of journal {le}/{batch}: {why}. {in_d365} line(s) of this journal are in D365; the journal is unposted. Fix the cause, then replay run {run_id} to post the rest."
        );
        self.event(run_id, "error", "post", msg.clone()).await;
        msg
    }

    /// Lines of a journal that carry `run_key`, by our line number.
    async fn our_lines(
        &self,
        le: &str,
        batch: &str,
        run_key: &str,
    ) -> Result<BTreeMap<u32, LedgerLine>, LedgerError> {
        let lines = self.ledger.lines(le, batch).await?;
        let mut out = BTreeMap::new();
        for l in lines {
            if let Some((k, n)) = parse_line_ref(&l.text) {
                if k == run_key {
                    out.entry(n).or_insert(l);
                }
            }
        }
        Ok(out)
    }

    /// Creates a line; when the outcome is unknown, looks for it in D365 before trying again.
    async fn create_line_reconciled(
        &self,
        new: &NewLedgerLine,
        run_key: &str,
        line_no: u32,
    ) -> Result<LedgerLine, LedgerError> {
        let mut attempt = 1;
        loop {
            match self.ledger.create_line(new).await {
                Ok(l) => return Ok(l),
                Err(LedgerError::OutcomeUnknown(m)) => {
                    let present = self
                        .our_lines(&new.legal_entity, &new.batch_number, run_key)
                        .await?;
                    if let Some(l) = present.get(&line_no) {
                        return Ok(l.clone());
                    }
                    if attempt >= UNKNOWN_OUTCOME_ATTEMPTS {
                        return Err(LedgerError::OutcomeUnknown(format!(
                            "{m} (confirmed absent after {attempt} attempts)"
                        )));
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn new_line(le: &str, batch: &str, rec: &LineRecord, voucher: Option<String>) -> NewLedgerLine {
    NewLedgerLine {
        legal_entity: le.to_string(),
        batch_number: batch.to_string(),
        trans_date: rec.line.trans_date,
        account_display: rec.account_display.clone(),
        offset_display: rec.offset_display.clone(),
        debit: rec.line.debit(),
        credit: rec.line.credit(),
        currency: rec.line.currency.clone(),
        text: rec.line.text.clone(),
        voucher,
    }
}

fn mark_created(rec: &mut LineRecord, batch: &str, l: &LedgerLine, how: &str) {
    rec.status = LineStatus::Created;
    rec.journal_batch = Some(batch.to_string());
    rec.d365_line_number = Some(l.line_number.clone());
    rec.d365_response = Some(format!(
        "{how} at {}: line {} voucher {}",
        Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        l.line_number,
        l.voucher
    ));
}
