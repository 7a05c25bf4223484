//! The replay Lambda: a DynamoDB stream on the audit table asks for replays.
//!
//! Records acted on:
//! - `INSERT` of a replay request item (`pk` starting with `REPLAY#`, attributes `run_id` and
//!   `requested_by`), as `ml-connector replay RUN_ID --request` writes it;
//! - `MODIFY` of a run item (`pk = RUN#{run_id}`, `sk = RUN`) whose new image has
//!   `replay_requested = true` and whose old image does not.
//!
//! Everything else (other items, TTL `REMOVE`s) is ignored. Each replay loads the run to find
//! its instance, loads that instance's config, secrets and clients, and calls `engine.replay`.
//!
//! Per-record idempotency on `replay#{eventID}` (the stream re-delivers records after the
//! checkpoint). A record whose replay may succeed later (run failed again, period busy, store or
//! secrets unavailable, being handled elsewhere) is reported in `batchItemFailures` by its
//! **SequenceNumber**; a permanent problem (run unknown or not replayable, no config) is logged,
//! recorded in the run's audit events when the run exists, and not retried, so it cannot block
//! the shard. Needs `FunctionResponseTypes: [ReportBatchItemFailures]` on the event source.

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use serde::Deserialize;

use super::context::{Invocation, LambdaContext};
use super::{acquire, complete, release, Idempotency, LambdaError, RunSummary};
use crate::domain::run::{AuditEvent, EventKind, EventLevel, RunStatus};
use crate::engine::{Engine, EngineError, Outcome};

/// What a stream record asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayAction {
    Replay {
        run_id: String,
        requested_by: Option<String>,
    },
    Ignore(&'static str),
}

#[derive(Debug, Default, Deserialize)]
struct Image {
    #[serde(default)]
    pk: Option<String>,
    #[serde(default)]
    sk: Option<String>,
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    requested_by: Option<String>,
    #[serde(default)]
    replay_requested: Option<bool>,
}

fn image(item: &serde_dynamo::Item, which: &str) -> Result<Image, String> {
    if item.is_empty() {
        return Ok(Image::default());
    }
    serde_dynamo::from_item(item.clone()).map_err(|e| format!("{which} cannot be read: {e}"))
}

/// Decides what a record asks for. `Err` = a record of interest that cannot be read.
pub fn classify(rec: &EventRecord) -> Result<ReplayAction, String> {
    match rec.event_name.as_str() {
        "INSERT" => {
            let new = image(&rec.change.new_image, "NewImage")?;
            if !new.pk.as_deref().is_some_and(|p| p.starts_with("REPLAY#")) {
                return Ok(ReplayAction::Ignore("not a replay request"));
            }
            let run_id = new
                .run_id
                .filter(|r| !r.trim().is_empty())
                .ok_or("a replay request item without `run_id`")?;
            Ok(ReplayAction::Replay {
                run_id,
                requested_by: new.requested_by,
            })
        }
        "MODIFY" => {
            let new = image(&rec.change.new_image, "NewImage")?;
            let Some(run_id) = new.pk.as_deref().and_then(|p| p.strip_prefix("RUN#")) else {
                return Ok(ReplayAction::Ignore("not a run item"));
            };
            if new.sk.as_deref() != Some("RUN") {
                return Ok(ReplayAction::Ignore("not the run record itself"));
            }
            if new.replay_requested != Some(true) {
                return Ok(ReplayAction::Ignore("no replay requested"));
            }
            // Old image unreadable or absent → treat as "not requested before".
            let old = image(&rec.change.old_image, "OldImage").unwrap_or_default();
            if old.replay_requested == Some(true) {
                return Ok(ReplayAction::Ignore("replay was already requested"));
            }
            Ok(ReplayAction::Replay {
                run_id: new.run_id.unwrap_or_else(|| run_id.to_string()),
                requested_by: new.requested_by,
            })
        }
        _ => Ok(ReplayAction::Ignore("neither INSERT nor MODIFY")),
    }
}

/// How one record ended.
#[derive(Debug)]
enum RecordResult {
    Done,
    Permanent(String),
    Retry(String),
}

/// Handles a batch; failed records are reported by SequenceNumber. `Err` (the whole batch is
/// retried) only when a failed record has no SequenceNumber to report.
pub async fn handle_replay(
    ctx: &LambdaContext,
    event: Event,
    inv: &Invocation,
) -> Result<DynamoDbEventResponse, LambdaError> {
    let mut response = DynamoDbEventResponse::default();
    for rec in &event.records {
        let seq = rec.change.sequence_number.clone().filter(|s| !s.is_empty());
        let result = handle_record(ctx, rec, inv).await;
        match result {
            RecordResult::Done => {}
            RecordResult::Permanent(why) => {
                tracing::error!(event_id = %rec.event_id, sequence_number = seq.as_deref().unwrap_or("-"), reason = %why, "replay record dropped (not retryable)");
            }
            RecordResult::Retry(why) => {
                tracing::error!(event_id = %rec.event_id, sequence_number = seq.as_deref().unwrap_or("-"), reason = %why, "replay record failed; reporting it for retry");
                let Some(seq) = seq else {
                    return Err(LambdaError::BadEvent(format!(
                        "record {} failed ({why}) and has no SequenceNumber to report",
                        rec.event_id
                    )));
                };
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = Some(seq);
                response.batch_item_failures.push(failure);
            }
        }
    }
    Ok(response)
}

async fn handle_record(ctx: &LambdaContext, rec: &EventRecord, inv: &Invocation) -> RecordResult {
    let (run_id, requested_by) = match classify(rec) {
        Ok(ReplayAction::Replay {
            run_id,
            requested_by,
        }) => (run_id, requested_by),
        Ok(ReplayAction::Ignore(why)) => {
            tracing::debug!(event_id = %rec.event_id, event_name = %rec.event_name, why, "stream record ignored");
            return RecordResult::Done;
        }
        Err(why) => return RecordResult::Permanent(why),
    };
    let id = if rec.event_id.is_empty() {
        rec.change.sequence_number.clone().unwrap_or_default()
    } else {
        rec.event_id.clone()
    };
    if id.is_empty() {
        return RecordResult::Permanent("record has neither eventID nor SequenceNumber".into());
    }
    let key = format!("replay#{id}");
    let ttl = ctx.settings.idempotency_ttl;
    match acquire(ctx.store.as_ref(), &key, inv, ttl).await {
        Err(e) => return RecordResult::Retry(format!("idempotency lock: {e}")),
        Ok(Idempotency::Completed(_)) => {
            tracing::info!(%run_id, event_id = %rec.event_id, "replay record already handled");
            return RecordResult::Done;
        }
        Ok(Idempotency::InProgress(until)) => {
            return RecordResult::Retry(format!(
                "being handled by another invocation until {until}"
            ))
        }
        Ok(Idempotency::Run) => {}
    }
    tracing::info!(%run_id, requested_by = requested_by.as_deref().unwrap_or("-"), event_id = %rec.event_id, "replay requested");
    let result = replay(ctx, &run_id, requested_by.as_deref(), inv).await;
    match &result {
        RecordResult::Done => {
            complete(ctx.store.as_ref(), &key, inv, "done", ttl).await;
        }
        RecordResult::Permanent(why) => {
            complete(
                ctx.store.as_ref(),
                &key,
                inv,
                &format!("dropped: {why}"),
                ttl,
            )
            .await;
            audit(
                ctx,
                &run_id,
                EventLevel::Error,
                &format!("replay request not carried out: {why}"),
            )
            .await;
        }
        RecordResult::Retry(_) => release(ctx.store.as_ref(), &key, inv).await,
    }
    result
}

async fn audit(ctx: &LambdaContext, run_id: &str, level: EventLevel, message: &str) {
    let ev = AuditEvent::new(run_id, level, EventKind::ReplayRequest, message);
    if let Err(e) = ctx.store.append_event(&ev).await {
        tracing::error!(run_id, error = %e, "could not record audit event");
    }
}

async fn replay(
    ctx: &LambdaContext,
    run_id: &str,
    requested_by: Option<&str>,
    inv: &Invocation,
) -> RecordResult {
    let run = match ctx.store.get_run(run_id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return RecordResult::Permanent(format!("run {run_id} is not in the audit store"))
        }
        Err(e) => return RecordResult::Retry(format!("audit store: {e}")),
    };
    if !matches!(
        run.status,
        RunStatus::Failed
            | RunStatus::Posting
            | RunStatus::Busy
            | RunStatus::Completed
            | RunStatus::Interrupted
    ) {
        return RecordResult::Permanent(format!(
            "run {run_id} is `{}`; only failed, interrupted or busy runs can be replayed",
            run.status.as_str()
        ));
    }
    let inst = match ctx.instance(&run.instance, None).await {
        Ok(i) => i,
        Err(e) if e.is_retryable() => return RecordResult::Retry(e.to_string()),
        Err(e) => return RecordResult::Permanent(e.to_string()),
    };
    audit(
        ctx,
        run_id,
        EventLevel::Info,
        &format!(
            "replay requested by {} (stream record)",
            requested_by.unwrap_or("an unnamed requester")
        ),
    )
    .await;
    let deadline = inv.work_deadline(ctx.settings.deadline_margin);
    let clients = inst.clients.with_deadline(deadline);
    let progress = ctx.progress(&inst);
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: ctx.store.as_ref(),
        progress: &progress,
    };
    match engine
        .replay_until(&inst.config, run_id, inv.period_lease(), Some(deadline))
        .await
    {
        Ok(report) => {
            let summary = RunSummary::of(&report);
            match report.outcome {
                Outcome::Posted | Outcome::AlreadyPosted => {
                    tracing::info!(run_id, status = %summary.status, lines_created = summary.lines_created, "replay finished");
                    RecordResult::Done
                }
                // Interrupted: the next continuation is queued as a new request item (its own
                // stream record), so this record is done; without a queue, the stream retries
                // this record and that replay continues.
                Outcome::Interrupted => {
                    use super::continuation::{continue_interrupted, Continuation};
                    let c = continue_interrupted(ctx, run_id).await;
                    match c {
                        Continuation::Queued { .. } => RecordResult::Done,
                        Continuation::GaveUp { .. } => RecordResult::Permanent(c.describe(run_id)),
                        Continuation::Unavailable(_) => RecordResult::Retry(format!(
                            "replay ended `{}`: {}; {}",
                            summary.status,
                            summary.message.unwrap_or_default(),
                            c.describe(run_id)
                        )),
                    }
                }
                Outcome::Failed | Outcome::Busy => RecordResult::Retry(format!(
                    "replay ended `{}`: {}",
                    summary.status,
                    summary.message.unwrap_or_default()
                )),
                _ => RecordResult::Permanent(format!(
                    "replay ended `{}`: {}",
                    summary.status,
                    summary.message.unwrap_or_default()
                )),
            }
        }
        Err(EngineError::RunNotFound(r)) => {
            RecordResult::Permanent(format!("run {r} is not in the audit store"))
        }
        // After the status check above, the engine's remaining refusal is a busy period lock.
        Err(e) => RecordResult::Retry(e.to_string()),
    }
}

/// The `LambdaEvent` adapter the `replay` binary runs.
pub async fn stream_handler(
    ctx: &LambdaContext,
    event: lambda_runtime::LambdaEvent<Event>,
) -> Result<DynamoDbEventResponse, LambdaError> {
    let inv = Invocation::from_lambda(&event.context);
    handle_replay(ctx, event.payload, &inv).await
}
