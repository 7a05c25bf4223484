//! The scheduler Lambda: EventBridge Scheduler (ScheduleV2) invokes it asynchronously with the
//! `Input` the schedule defines:
//!
//! ```json
//! {"instance": "weekly-marketplace-fees",
//!  "scheduled_time": "<aws.scheduler.scheduled-time>",
//!  "execution_id": "<aws.scheduler.execution-id>"}
//! ```
//!
//! The run date is `scheduled_time`'s UTC date (so a late retry still covers the period the
//! schedule meant), and `engine.run` extracts through the Looker API. Idempotency key
//! `schedule#{instance}#{scheduled_time}`: a duplicate delivery returns the recorded summary.
//!
//! Only retryable failures are returned as `Err` (the async invoke then retries and finally goes
//! to the on-failure destination): the run failed or the period was busy, the store or Secrets
//! Manager was unavailable, or the same schedule firing is being handled right now. A run that
//! ended rejected or in conflict is a recorded outcome, and a permanent problem (bad input,
//! missing config or secret) is answered `{"status": "error", …}` and logged at error level.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::context::{Invocation, LambdaContext};
use super::{acquire, complete, release, Idempotency, LambdaError, RunSummary};
use crate::engine::{Engine, EngineError, Mode, Outcome, RunOptions};

/// The schedule's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInput {
    pub instance: String,
    pub scheduled_time: DateTime<Utc>,
    #[serde(default)]
    pub execution_id: Option<String>,
}

/// Runs one scheduled sync. See the module docs for what is `Err`.
pub async fn handle_schedule(
    ctx: &LambdaContext,
    input: ScheduleInput,
    inv: &Invocation,
) -> Result<serde_json::Value, LambdaError> {
    let instance = input.instance.trim().to_string();
    let time = input
        .scheduled_time
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let key = format!("schedule#{instance}#{time}");
    let ttl = ctx.settings.idempotency_ttl;
    tracing::info!(
        %instance,
        scheduled_time = %time,
        execution_id = input.execution_id.as_deref().unwrap_or("-"),
        "scheduled run"
    );
    match acquire(ctx.store.as_ref(), &key, inv, ttl).await? {
        Idempotency::Run => {}
        Idempotency::Completed(result) => {
            tracing::info!(%instance, scheduled_time = %time, "already handled; returning the recorded result");
            return Ok(serde_json::from_str(&result).unwrap_or_else(|_| json!({"status": "completed"})));
        }
        Idempotency::InProgress(until) => {
            return Err(LambdaError::Retryable(format!(
                "the run scheduled at {time} for `{instance}` is being handled by another invocation (until {until})"
            )))
        }
    }
    match run(ctx, &instance, &input, inv).await {
        Ok((mut summary, outcome)) => {
            // Out of time: the replay function continues the run (see `continuation`); only
            // when no continuation could be queued does the scheduler's retry take it on.
            let mut continued = false;
            if outcome == Outcome::Interrupted {
                use super::continuation::{continue_interrupted, Continuation};
                let c = continue_interrupted(ctx, &summary.run_id).await;
                continued = !matches!(c, Continuation::Unavailable(_));
                summary.continuation = Some(c.describe(&summary.run_id));
            }
            let value = serde_json::to_value(&summary).unwrap_or(serde_json::Value::Null);
            match outcome {
                // Handed on: the continuation (or, when the chain gave up, a person) finishes
                // the run; this schedule's event is done.
                Outcome::Interrupted if continued => {
                    tracing::warn!(%instance, run_id = %summary.run_id, continuation = summary.continuation.as_deref().unwrap_or("-"), "scheduled run out of time; handed on");
                    complete(ctx.store.as_ref(), &key, inv, &value.to_string(), ttl).await;
                    Ok(value)
                }
                // Interrupted (out of time): the retry starts a new run of the same data, which
                // finds the journal by its natural key, posts only the rest and closes the
                // interrupted run as superseded.
                Outcome::Failed | Outcome::Busy | Outcome::Interrupted => {
                    release(ctx.store.as_ref(), &key, inv).await;
                    tracing::error!(%instance, run_id = %summary.run_id, status = %summary.status, "scheduled run did not finish; asking for a retry");
                    Err(LambdaError::Retryable(format!(
                        "run {} for `{instance}` ended `{}`: {}",
                        summary.run_id,
                        summary.status,
                        summary.message.clone().unwrap_or_default()
                    )))
                }
                _ => {
                    let level_error = matches!(
                        outcome,
                        Outcome::Rejected | Outcome::Conflict | Outcome::DuplicatePosted
                    );
                    if level_error {
                        tracing::error!(%instance, run_id = %summary.run_id, status = %summary.status, "scheduled run recorded without posting");
                    } else {
                        tracing::info!(%instance, run_id = %summary.run_id, status = %summary.status, "scheduled run finished");
                    }
                    complete(ctx.store.as_ref(), &key, inv, &value.to_string(), ttl).await;
                    Ok(value)
                }
            }
        }
        Err(e) => {
            release(ctx.store.as_ref(), &key, inv).await;
            if e.is_retryable() {
                tracing::error!(%instance, error = %e, "scheduled run failed; asking for a retry");
                Err(e)
            } else {
                tracing::error!(%instance, error = %e, kind = e.kind(), "scheduled run cannot run");
                Ok(json!({ "status": "error", "instance": instance, "error": e.to_string() }))
            }
        }
    }
}

async fn run(
    ctx: &LambdaContext,
    instance: &str,
    input: &ScheduleInput,
    inv: &Invocation,
) -> Result<(RunSummary, Outcome), LambdaError> {
    let inst = ctx.instance(instance, None).await?;
    // Every wait of the clients and every write of the engine ends before this.
    let deadline = inv.work_deadline(ctx.settings.deadline_margin);
    let clients = inst.clients.with_deadline(deadline);
    let progress = ctx.progress(&inst);
    let engine = Engine {
        extractor: &clients.looker,
        ledger: &clients.d365,
        store: ctx.store.as_ref(),
        progress: &progress,
    };
    let opts = RunOptions {
        run_date: input.scheduled_time.date_naive(),
        trigger: "schedule".into(),
        mode: Mode::Post,
        lease: inv.period_lease(),
        deadline: Some(deadline),
        supersede: false,
    };
    let report = engine.run(&inst.config, &opts).await.map_err(|e| match e {
        EngineError::Store(s) => LambdaError::Store(s),
        other => LambdaError::Engine(other),
    })?;
    Ok((RunSummary::of(&report), report.outcome))
}

/// The `LambdaEvent` adapter the `scheduler` binary runs. An input that is not a schedule input
/// is a permanent problem: answered `{"status": "error"}`, not retried.
pub async fn scheduler_handler(
    ctx: &LambdaContext,
    event: lambda_runtime::LambdaEvent<serde_json::Value>,
) -> Result<serde_json::Value, LambdaError> {
    let inv = Invocation::from_lambda(&event.context);
    match serde_json::from_value::<ScheduleInput>(event.payload) {
        Ok(input) => handle_schedule(ctx, input, &inv).await,
        Err(e) => {
            let e = LambdaError::BadEvent(format!(
                "expected {{\"instance\", \"scheduled_time\" (RFC 3339), \"execution_id\"}}: {e}"
            ));
            tracing::error!(error = %e, "scheduler input refused");
            Ok(json!({ "status": "error", "error": e.to_string() }))
        }
    }
}
