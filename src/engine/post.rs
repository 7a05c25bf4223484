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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rust_decimal::Decimal;
use tokio::sync::{watch, Mutex};

use super::budget::Budget;
use super::writer::{content_of_new, HeaderKey, JournalSpec, JournalWriter, WriteEnd, WriterHooks};
use super::{CrashPoint, Engine, EngineError};
use crate::domain::config::InstanceConfig;
use crate::domain::converge::{fingerprint, ConflictReport, Deletion, PlannedLine};
use crate::domain::journal::JournalPart;
use crate::domain::mapping::{description_prefix, header_of_run, part_key, render_description};
use crate::domain::money::{self, Overflow};
use crate::domain::reference::VoucherAllocation;
use crate::domain::run::{
    EventKind, EventLevel, LineRecord, LineStatus, RunKeys, RunRecord, RunStatus,
};
use crate::ports::{LedgerError, LedgerHeader, LedgerLine, NewLedgerLine};

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
    /// Duplicate headers or line groups this run removed from D365 (other posters' copies).
    pub cleaned: usize,
}

/// Why posting one journal stopped.
enum Stop {
    Failed(String),
    Conflict(String),
    /// Injected crash: the engine stops without recording anything more.
    Crashed(CrashPoint),
    /// Stopped on purpose before the deadline, between two writes; the audit says where.
    Interrupted(String),
    /// D365 holds posted duplicates: only a reversal fixes it.
    DuplicatePosted(String),
    /// Not started: the legal entity's first part stopped before it owned its header.
    NotStarted,
}

/// What the journals of one run share while they are posted concurrently.
struct RunShared<'r> {
    /// Held across the store write of the record, so two journals never write an older copy
    /// over a newer one.
    run: Mutex<&'r mut RunRecord>,
    run_id: String,
    period: String,
    /// Lines of the run in D365 so far (progress).
    done: AtomicUsize,
    total: usize,
}

/// What every journal part of one run needs, whatever its legal entity.
struct PostContext<'a, 'r> {
    config: &'a InstanceConfig,
    keys: &'a RunKeys,
    budget: &'a Budget,
    supersede: bool,
    shared: RunShared<'r>,
}

/// What the parts of one legal entity's journal have in common, read from D365 once before any
/// part is written (not once per part: the reference read pages through every account).
struct EntityContext {
    /// Journals reversed by `ml-connector reverse`: no longer postings of the period.
    reversed: BTreeSet<String>,
    /// Whether the journal name wants the connector to number vouchers.
    manual_vouchers: bool,
    /// Opens once part 1's header is this plan's in D365 (read back), closes if part 1 stops
    /// before: the other parts wait for it. Part 1 is the journal's claim, as when parts went
    /// one after another: a poster of another mapping (or split) that finds part 1 stops, so it
    /// never writes a later part, and D365 never holds parts of two mappings.
    gate: watch::Sender<Gate>,
}

/// See [`EntityContext::gate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Waiting,
    Open,
    Closed,
}

impl Engine<'_> {
    /// Posts every line of `run`; returns the final status, a message and per-journal summaries.
    ///
    /// Different journals (legal entities, parts) do not conflict in F&O, so they are posted
    /// concurrently, up to `d365.max_concurrent_requests` at a time; the writes to one journal
    /// stay sequential (F&O answers overlapping writes to one journal with an update conflict).
    /// When one journal stops, the journals already started finish their current work and no
    /// new one starts; a crash stops everything at once, like a dead process.
    pub(super) async fn post_all(
        &self,
        run: &mut RunRecord,
        config: &InstanceConfig,
        lines: Vec<LineRecord>,
        keys: &RunKeys,
        supersede: bool,
        budget: &Budget,
    ) -> Result<(RunStatus, String, Vec<PostSummary>), EngineError> {
        // One journal header per legal entity and part (parts as recorded at mapping time, so
        // a replay writes into the same headers).
        let mut by_journal: BTreeMap<(String, JournalPart), Vec<LineRecord>> = BTreeMap::new();
        for l in lines {
            by_journal
                .entry((l.legal_entity.clone(), l.part))
                .or_default()
                .push(l);
        }
        let total: usize = by_journal.values().map(Vec::len).sum();

        // Once per legal entity, before anything is written: the period's journals in D365
        // (a journal of other data, or of this data split another way, stops the run) and the
        // journal name's voucher numbering.
        let mut entities: BTreeMap<String, EntityContext> = BTreeMap::new();
        for (le, part) in by_journal.keys() {
            if entities.contains_key(le) {
                continue;
            }
            match self.entity_context(run, config, keys, le, part.of).await {
                Ok(c) => {
                    entities.insert(le.clone(), c);
                }
                Err(Stop::Failed(m)) => return Ok((RunStatus::Failed, m, Vec::new())),
                Err(Stop::Conflict(m)) => return Ok((RunStatus::Conflict, m, Vec::new())),
                Err(Stop::DuplicatePosted(m)) => {
                    return Ok((RunStatus::DuplicatePosted, m, Vec::new()))
                }
                Err(Stop::Interrupted(m)) => return Ok((RunStatus::Interrupted, m, Vec::new())),
                // entity_context starts no journal, so it never answers this.
                Err(Stop::NotStarted) => {
                    return Ok((
                        RunStatus::Failed,
                        format!("the journal of {le} was not started"),
                        Vec::new(),
                    ))
                }
                Err(Stop::Crashed(p)) => return Err(EngineError::Crashed(p)),
            }
        }

        let run_id = run.run_id.clone();
        let cx = PostContext {
            config,
            keys,
            budget,
            supersede,
            shared: RunShared {
                run_id: run.run_id.clone(),
                period: run.period.clone(),
                run: Mutex::new(run),
                done: AtomicUsize::new(0),
                total,
            },
        };
        let limit = config.d365.max_concurrent_requests.max(1);
        let mut waiting = by_journal.into_iter();
        let mut running = FuturesUnordered::new();
        let mut ended: Vec<((String, JournalPart), Result<PostSummary, Stop>)> = Vec::new();
        let mut stopping = false;
        loop {
            while !stopping && running.len() < limit {
                let Some(((le, part), mut lines)) = waiting.next() else {
                    break;
                };
                let (cx, entity) = (&cx, &entities[&le]);
                running.push(Box::pin(async move {
                    if part.part > 1 {
                        let mut gate = entity.gate.subscribe();
                        let open = gate
                            .wait_for(|g| *g != Gate::Waiting)
                            .await
                            .map(|g| *g == Gate::Open)
                            .unwrap_or(false);
                        if !open {
                            return ((le, part), Err(Stop::NotStarted));
                        }
                    }
                    lines.sort_by_key(|l| l.line.line_no);
                    let r = self.post_journal(cx, &le, part, entity, &mut lines).await;
                    if part.part == 1 {
                        // Converged opened it; a stop before owning the header closes it.
                        entity.gate.send_if_modified(|g| {
                            let was = *g;
                            if was == Gate::Waiting {
                                *g = if r.is_ok() { Gate::Open } else { Gate::Closed };
                            }
                            *g != was
                        });
                    }
                    ((le, part), r)
                }));
            }
            let Some((key, r)) = running.next().await else {
                break;
            };
            if let Err(Stop::Crashed(p)) = r {
                return Err(EngineError::Crashed(p));
            }
            stopping |= r.is_err();
            ended.push((key, r));
        }
        drop(running);
        let done = cx.shared.done.load(Ordering::Relaxed);
        let run = cx.shared.run.into_inner();
        ended.sort_by(|a, b| a.0.cmp(&b.0));
        // The run's journals in part order, whichever header was created first.
        let order: Vec<(String, String)> = ended
            .iter()
            .filter_map(|((le, _), r)| {
                r.as_ref()
                    .ok()
                    .map(|s| (le.clone(), s.batch_number.clone()))
            })
            .collect();
        run.journals
            .sort_by_key(|j| order.iter().position(|o| o == j).unwrap_or(usize::MAX));
        let mut summaries = Vec::new();
        let mut stops = Vec::new();
        for (_, r) in ended {
            match r {
                Ok(s) => summaries.push(s),
                Err(stop) => stops.push(stop),
            }
        }
        if let Some((status, msg)) = stopped(stops, &run_id, done, total) {
            return Ok((status, msg, summaries));
        }
        Ok(summarize(run, summaries))
    }

    /// What the parts of `le`'s journal share, read from D365 once; a stop when D365 holds the
    /// period's journal under another key.
    async fn entity_context(
        &self,
        run: &RunRecord,
        config: &InstanceConfig,
        keys: &RunKeys,
        le: &str,
        parts: u32,
    ) -> Result<EntityContext, Stop> {
        let failed = |what: &str, e: LedgerError| Stop::Failed(format!("{what} in {le}: {e}"));
        // 1. Does D365 hold this period under another key (other data, another split)?
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
        // `P1of30`): this run's headers (any part, ours), this run's data split another way,
        // and other data.
        let mut ours = 0usize;
        let mut split_otherwise = Vec::new();
        let mut others = Vec::new();
        for h in headers {
            match header_of_run(&h.description, &keys.run_key) {
                Some(p) if p.of == parts => ours += 1,
                Some(_) => split_otherwise.push(h),
                None => others.push(h),
            }
        }
        if !split_otherwise.is_empty() {
            let list = split_otherwise
                .iter()
                .map(|h| format!("{} \"{}\"", h.batch_number, h.description))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Stop::Conflict(format!(
                "D365 already holds journal(s) of this data for period {} in {le} split into a different number of parts: {list}; this attempt splits it into {parts} (was journal.max_journal_lines changed?). Nothing more was written. Restore the setting, or reverse or delete those journals and run again.",
                run.period
            )));
        }
        if ours == 0 && !others.is_empty() {
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
        let manual_vouchers = match self.ledger.reference(le).await {
            Ok(r) => r
                .journal_names
                .get(&config.journal.journal_name)
                .map(|j| j.voucher_allocation == VoucherAllocation::Manual)
                .unwrap_or(false),
            Err(e) => return Err(failed("could not read the journal name", e)),
        };
        Ok(EntityContext {
            reversed,
            manual_vouchers,
            gate: watch::channel(Gate::Waiting).0,
        })
    }

    async fn post_journal(
        &self,
        cx: &PostContext<'_, '_>,
        le: &str,
        part: JournalPart,
        entity: &EntityContext,
        lines: &mut [LineRecord],
    ) -> Result<PostSummary, Stop> {
        let (config, keys, shared) = (cx.config, cx.keys, &cx.shared);
        let run_id = shared.run_id.clone();
        // This header's own natural key: the run key, or `{run_key}/P2of3` for a part.
        let key = part_key(&keys.run_key, part);
        let of_part = if part.is_split() {
            format!(" ({part})")
        } else {
            String::new()
        };

        // 2. The plan: exactly these lines, once, under this key.
        let mut spec = journal_spec(
            config,
            keys,
            le,
            part,
            &shared.period,
            lines,
            entity.manual_vouchers,
        );
        spec.exclude = entity.reversed.clone();
        spec.supersede = cx.supersede;

        // 3. Converge D365 on one copy (see `writer` and `domain::converge`).
        let writer = JournalWriter {
            ledger: self.ledger,
        };
        let mut hooks = PostHooks {
            engine: self,
            shared,
            lines,
            budget: cx.budget,
            le,
            of_part: &of_part,
            journal_name: &config.journal.journal_name,
            removed: Vec::new(),
            batch: None,
            gate: (part.part == 1).then_some(&entity.gate),
        };
        let end = writer.converge(&spec, &mut hooks).await;
        let removed = std::mem::take(&mut hooks.removed);
        // This part's header (the journal of this legal entity's part, not another part's).
        let this_batch = hooks.batch.take();
        drop(hooks);
        // Duplicates removed from D365 are no journals of this run any more.
        if !removed.is_empty() {
            shared
                .run
                .lock()
                .await
                .journals
                .retain(|(l, b)| !(l == le && removed.contains(b)));
        }
        match end {
            WriteEnd::Converged {
                header,
                header_created,
                lines: held,
                created,
                cleaned,
            } => {
                let batch = header.batch_number.clone();
                let (debit, credit) = mark_converged(lines, &held, le, &batch)?;
                if let Err(e) = self.store.put_lines(lines).await {
                    return Err(Stop::Failed(format!("audit store: {e}")));
                }
                {
                    let mut run = shared.run.lock().await;
                    if !run.journals.iter().any(|(l, b)| l == le && *b == batch) {
                        run.journals.push((le.to_string(), batch.clone()));
                    }
                    if let Err(e) = self.store.update_run(&run).await {
                        return Err(Stop::Failed(format!("audit store: {e}")));
                    }
                }
                let lines_found = lines.len().saturating_sub(created);
                self.event(
                    &run_id,
                    EventLevel::Info,
                    EventKind::Post,
                    format!(
                        "journal {le}/{batch}{of_part}: {created} line(s) created, {lines_found} already present{}; read back: exactly one copy of each line, D365 holds debit {debit}, credit {credit}",
                        if cleaned > 0 {
                            format!(", {cleaned} duplicate(s) or incomplete voucher(s) removed")
                        } else {
                            String::new()
                        }
                    ),
                )
                .await;
                Ok(PostSummary {
                    legal_entity: le.to_string(),
                    part,
                    batch_number: batch,
                    header_created,
                    lines_created: created,
                    lines_found,
                    debit,
                    credit,
                    is_posted: header.is_posted,
                    cleaned,
                })
            }
            WriteEnd::Conflict(c) => {
                let msg = {
                    let run = shared.run.lock().await;
                    self.changed_mapping_message(&run, le, &of_part, &c).await
                };
                self.event(&run_id, EventLevel::Error, EventKind::Conflict, msg.clone())
                    .await;
                Err(Stop::Conflict(msg))
            }
            WriteEnd::DuplicatePosted { batches, detail } => Err(self
                .duplicate_posted(shared, le, &key, &of_part, &batches, &detail)
                .await),
            WriteEnd::Refused {
                lines: refused_lines,
                message,
            } => {
                let batch = this_batch.unwrap_or_default();
                let msg = self
                    .refused(&run_id, le, &batch, lines, &refused_lines, &message)
                    .await;
                Err(Stop::Failed(msg))
            }
            WriteEnd::Failed(m) => {
                let _ = self.store.put_lines(lines).await;
                Err(Stop::Failed(format!(
                    "{m}; replay run {run_id} to finish it"
                )))
            }
            WriteEnd::Interrupted { left, batch } => {
                let _ = self.store.put_lines(lines).await;
                Err(self
                    .interrupted(&run_id, le, batch.as_deref(), &of_part, lines, left)
                    .await)
            }
            WriteEnd::Crashed(p) => Err(Stop::Crashed(p)),
        }
    }

    /// D365 holds posted duplicates of this journal: they are recorded as the run's journals,
    /// and the stop says how to reverse them.
    async fn duplicate_posted(
        &self,
        shared: &RunShared<'_>,
        le: &str,
        key: &str,
        of_part: &str,
        batches: &[String],
        detail: &str,
    ) -> Stop {
        let run_id = shared.run_id.as_str();
        {
            let mut run = shared.run.lock().await;
            for b in batches {
                if !run.journals.iter().any(|(l, x)| l == le && x == b) {
                    run.journals.push((le.to_string(), b.clone()));
                }
            }
            let _ = self.store.update_run(&run).await;
        }
        let list = batches
            .iter()
            .map(|b| format!("{le}/{b}"))
            .collect::<Vec<_>>()
            .join(" and ");
        let msg = format!(
            "D365 holds posted duplicates of journal key {key}{of_part}: {list} ({detail}). Posted entries are never changed by the connector and nothing was written. Reverse them with `ml-connector reverse {run_id} --config FILE`, then run the period again to post exactly one copy."
        );
        self.event(
            run_id,
            EventLevel::Error,
            EventKind::DuplicatePosted,
            msg.clone(),
        )
        .await;
        Stop::DuplicatePosted(msg)
    }

    /// The CONFLICT message for a journal whose key D365 holds with other lines: what differs,
    /// and the commands that resolve it (only commands that work as printed).
    async fn changed_mapping_message(
        &self,
        run: &RunRecord,
        le: &str,
        of_part: &str,
        c: &ConflictReport,
    ) -> String {
        // The run that created it, if this store knows it.
        let creator = self
            .store
            .runs_for_period(&run.instance, &run.keys.period_key)
            .await
            .ok()
            .and_then(|rs| {
                rs.into_iter().find(|r| {
                    r.run_id != run.run_id
                        && r.keys.run_key == run.keys.run_key
                        && r.journals.iter().any(|(l, b)| l == le && *b == c.batch)
                })
            });
        let fix = match (&creator, c.posted) {
            (Some(r), true) => format!(
                "If the new mapping is right: `ml-connector reverse {} --config FILE`, then run again.",
                r.run_id
            ),
            (Some(r), false) => format!(
                "If the new mapping is right: run again with `--supersede` to replace the unposted journal, or `ml-connector reverse {} --config FILE --delete-unposted` and run again.",
                r.run_id
            ),
            (None, true) => "If the new mapping is right: reverse the posted journal (`ml-connector reverse RUN_ID --config FILE` with the run that created it, found with `ml-connector trace` on one of its line texts), then run again.".to_string(),
            (None, false) => "If the new mapping is right: run again with `--supersede` to replace the unposted journal.".to_string(),
        };
        format!(
            "D365 already holds journal {le}/{}{of_part} ({}) for this data and period, but the lines differ from what the config maps now: {}. Nothing was written. {fix}",
            c.batch,
            if c.posted { "posted" } else { "unposted" },
            c.describe(8)
        )
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
        self.event(
            run_id,
            EventLevel::Warn,
            EventKind::Interrupted,
            msg.clone(),
        )
        .await;
        Stop::Interrupted(msg)
    }

    /// Records lines D365 refused and returns the operator message.
    async fn refused(
        &self,
        run_id: &str,
        le: &str,
        batch: &str,
        lines: &mut [LineRecord],
        refused_lines: &[u32],
        why: &str,
    ) -> String {
        let in_d365 = lines
            .iter()
            .filter(|l| l.status == LineStatus::Created)
            .count();
        let mut recs = Vec::new();
        for rec in lines
            .iter_mut()
            .filter(|r| refused_lines.contains(&r.line.line_no))
        {
            rec.status = LineStatus::Failed;
            rec.journal_batch = Some(batch.to_string());
            rec.d365_response = Some(why.to_string());
            recs.push(rec.clone());
        }
        let _ = self.store.put_lines(&recs).await;
        let first = recs.first();
        let line = first.map(|r| r.line.line_no).unwrap_or_default();
        let row = first
            .and_then(|r| r.line.source_rows.first())
            .map(|r| format!(" (source row {r})"))
            .unwrap_or_default();
        let msg = format!(
            "D365 did not accept line {line}{row} of journal {le}/{batch}: {why}. {in_d365} line(s) of this journal are in D365; the journal is unposted. Fix the cause, then replay run {run_id} to post the rest."
        );
        self.event(run_id, EventLevel::Error, EventKind::Post, msg.clone())
            .await;
        msg
    }
}

/// The run's status and message when journals stopped: the most serious stop decides the
/// status (posted duplicates, then conflicts, then failures, then the deadline), and every
/// stopped journal's message is kept. `None` when none stopped.
fn stopped(
    stops: Vec<Stop>,
    run_id: &str,
    done: usize,
    total: usize,
) -> Option<(RunStatus, String)> {
    let stops: Vec<Stop> = stops
        .into_iter()
        .filter(|s| !matches!(s, Stop::NotStarted))
        .collect();
    let rank = |s: &Stop| match s {
        Stop::Crashed(_) => 0,
        Stop::DuplicatePosted(_) => 1,
        Stop::Conflict(_) => 2,
        Stop::Failed(_) => 3,
        Stop::Interrupted(_) | Stop::NotStarted => 4,
    };
    let worst = stops.iter().map(rank).min()?;
    let status = match worst {
        1 => RunStatus::DuplicatePosted,
        2 => RunStatus::Conflict,
        3 => RunStatus::Failed,
        _ => RunStatus::Interrupted,
    };
    let mut msgs: Vec<String> = stops
        .into_iter()
        .map(|s| match s {
            Stop::Crashed(p) => format!("crashed at {p:?}"),
            Stop::DuplicatePosted(m)
            | Stop::Conflict(m)
            | Stop::Failed(m)
            | Stop::Interrupted(m) => m,
            Stop::NotStarted => String::new(),
        })
        .collect();
    if status == RunStatus::Interrupted {
        msgs.push(format!(
            "In all {done} of {total} line(s) of this run are in D365, each recorded in the audit, and the period lock is released: finish it with `ml-connector replay {run_id} --config FILE` (AWS: `ml-connector replay {run_id} --request --table TABLE`)."
        ));
    }
    Some((status, msgs.join(" ")))
}

/// The run's totals and final status once every journal converged.
fn summarize(
    run: &mut RunRecord,
    summaries: Vec<PostSummary>,
) -> (RunStatus, String, Vec<PostSummary>) {
    // Checked sums (`Iterator::sum` panics on overflow): mapping bounds every line by
    // `amount.max_abs` and checks its sums, but an audit from before that may not be.
    let (Ok(debit), Ok(credit)) = (
        money::sum(summaries.iter().map(|s| s.debit)),
        money::sum(summaries.iter().map(|s| s.credit)),
    ) else {
        let msg = format!("the journals are in D365, but their debit and credit totals cannot be computed: {Overflow}");
        return (RunStatus::Failed, msg, summaries);
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
        (
            RunStatus::AlreadyPosted,
            format!("already posted, nothing new written: {journals}"),
            summaries,
        )
    } else {
        (
            RunStatus::Completed,
            format!("journal(s) created and left unposted for review: {journals}"),
            summaries,
        )
    }
}

/// Marks each line of a converged journal created (as D365 holds it) and totals what D365 holds.
fn mark_converged(
    lines: &mut [LineRecord],
    held: &BTreeMap<u32, LedgerLine>,
    le: &str,
    batch: &str,
) -> Result<(Decimal, Decimal), Stop> {
    let mut debit = Decimal::ZERO;
    let mut credit = Decimal::ZERO;
    for rec in lines.iter_mut() {
        let Some(l) = held.get(&rec.line.line_no) else {
            continue; // cannot happen: converged means every planned line is there
        };
        if rec.status != LineStatus::Created
            || rec.journal_batch.as_deref() != Some(batch)
            || rec.d365_line_number.as_deref() != Some(l.line_number.as_str())
        {
            mark_created(rec, batch, l, "already in D365");
        }
        // Checked (`+` panics on overflow): an audit from before `amount.max_abs` may hold
        // amounts mapping no longer allows.
        let mut add = || -> Result<(), Overflow> {
            money::add_to(&mut debit, l.debit)?;
            money::add_to(&mut credit, l.credit)?;
            if rec.offset_display.is_some() {
                money::add_to(&mut debit, l.credit)?;
                money::add_to(&mut credit, l.debit)?;
            }
            Ok(())
        };
        if let Err(e) = add() {
            return Err(Stop::Failed(format!(
                "journal {le}/{batch} is in D365, but its totals cannot be computed: {e}"
            )));
        }
    }
    Ok((debit, credit))
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

/// The plan of one journal part, as the writer needs it.
fn journal_spec(
    config: &InstanceConfig,
    keys: &RunKeys,
    le: &str,
    part: JournalPart,
    period: &str,
    lines: &[LineRecord],
    manual_vouchers: bool,
) -> JournalSpec {
    let key = part_key(&keys.run_key, part);
    let news: BTreeMap<u32, NewLedgerLine> = lines
        .iter()
        .map(|r| {
            let voucher =
                manual_vouchers.then(|| format!("MLC{}-{:04}", keys.period_key, r.line.voucher));
            (r.line.line_no, new_line(le, "", r, voucher))
        })
        .collect();
    let plan: Vec<PlannedLine> = lines
        .iter()
        .filter_map(|r| {
            news.get(&r.line.line_no).map(|n| PlannedLine {
                line_no: r.line.line_no,
                voucher: r.line.voucher,
                content: content_of_new(n),
            })
        })
        .collect();
    let fp = fingerprint(&plan);
    JournalSpec {
        legal_entity: le.to_string(),
        journal_name: config.journal.journal_name.clone(),
        key: HeaderKey::Part {
            run_key: keys.run_key.clone(),
            part,
        },
        description: render_description(config, &key, Some(&fp), period),
        line_key: keys.run_key.clone(),
        fingerprint: Some(fp),
        plan,
        lines: news,
        posting: config.d365.posting,
        batch_operations: config.d365.batch_operations,
        exclude: Default::default(),
        supersede: false,
    }
}

/// What the engine records while the writer converges one journal.
struct PostHooks<'e, 'a, 'r> {
    engine: &'e Engine<'a>,
    shared: &'e RunShared<'r>,
    lines: &'e mut [LineRecord],
    budget: &'e Budget,
    le: &'e str,
    of_part: &'e str,
    journal_name: &'e str,
    /// Duplicate headers the writer removed.
    removed: Vec<String>,
    /// The header this journal part writes into, once known.
    batch: Option<String>,
    /// Part 1's: opened once its header is this plan's (see [`EntityContext::gate`]).
    gate: Option<&'e watch::Sender<Gate>>,
}

#[async_trait]
impl WriterHooks for PostHooks<'_, '_, '_> {
    async fn header(&mut self, batch: &str, created: bool) {
        let le = self.le;
        self.batch = Some(batch.to_string());
        {
            let mut run = self.shared.run.lock().await;
            if !run.journals.iter().any(|(l, b)| l == le && b == batch) {
                run.journals.push((le.to_string(), batch.to_string()));
                if let Err(e) = self.engine.store.update_run(&run).await {
                    tracing::error!(run_id = %self.shared.run_id, "audit store: {e}");
                }
            }
        }
        let of_part = self.of_part;
        let msg = if created {
            format!(
                "created journal {le}/{batch}{of_part} ({})",
                self.journal_name
            )
        } else {
            format!("found journal {le}/{batch}{of_part} from an earlier attempt; reconciling its lines")
        };
        self.engine
            .event(&self.shared.run_id, EventLevel::Info, EventKind::Post, msg)
            .await;
    }

    async fn written(&mut self, batch: &str, rows: &[(u32, LedgerLine)]) {
        let mut changed = Vec::with_capacity(rows.len());
        for (n, row) in rows {
            if let Some(rec) = self.lines.iter_mut().find(|r| r.line.line_no == *n) {
                mark_created(rec, batch, row, "created");
                changed.push(rec.clone());
            }
        }
        if let Err(e) = self.engine.store.put_lines(&changed).await {
            tracing::error!(run_id = %self.shared.run_id, "audit store: {e}");
        }
        let done = self.shared.done.fetch_add(rows.len(), Ordering::Relaxed) + rows.len();
        self.engine.progress.line_posted(done, self.shared.total);
    }

    async fn cleaned(&mut self, deletion: &Deletion, result: &str) {
        // Lines the audit shows in D365 that are gone now are pending again (rewritten whole).
        let mut changed = Vec::new();
        match deletion {
            Deletion::Header { batch } => {
                self.removed.push(batch.clone());
                for rec in self.lines.iter_mut() {
                    if rec.journal_batch.as_deref() == Some(batch.as_str()) {
                        unmark(rec, result);
                        changed.push(rec.clone());
                    }
                }
            }
            Deletion::Lines {
                batch,
                line_numbers,
                ..
            } => {
                for rec in self.lines.iter_mut() {
                    if rec.journal_batch.as_deref() == Some(batch.as_str())
                        && rec
                            .d365_line_number
                            .as_ref()
                            .is_some_and(|n| line_numbers.contains(n))
                    {
                        unmark(rec, result);
                        changed.push(rec.clone());
                    }
                }
            }
        }
        if !changed.is_empty() {
            let n = changed.len();
            let _ = self
                .shared
                .done
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                    Some(d.saturating_sub(n))
                });
            if let Err(e) = self.engine.store.put_lines(&changed).await {
                tracing::error!(run_id = %self.shared.run_id, "audit store: {e}");
            }
        }
        self.engine
            .event(
                &self.shared.run_id,
                EventLevel::Warn,
                EventKind::Cleanup,
                result,
            )
            .await;
    }

    async fn unknown(&mut self, what: &str) {
        self.engine
            .event(&self.shared.run_id, EventLevel::Warn, EventKind::Post, what)
            .await;
    }

    fn crash_at(&self, point: CrashPoint) -> bool {
        self.engine.progress.crash_at(point)
    }

    fn short(&self) -> Option<std::time::Duration> {
        self.budget.short()
    }

    fn took(&self, started: tokio::time::Instant) {
        self.budget.took(started)
    }

    fn has_deadline(&self) -> bool {
        self.budget.has_deadline()
    }

    fn owned(&mut self, _batch: &str) {
        if let Some(g) = self.gate {
            g.send_if_modified(|g| {
                let open = *g == Gate::Waiting;
                if open {
                    *g = Gate::Open;
                }
                open
            });
        }
    }
}

fn unmark(rec: &mut LineRecord, why: &str) {
    rec.status = LineStatus::Pending;
    rec.journal_batch = None;
    rec.d365_line_number = None;
    rec.d365_response = Some(why.to_string());
}
