//! Runs that outgrow one invocation finish by themselves.
//!
//! A run that stops at its deadline (`interrupted`) has every written line in its audit, and a
//! replay posts only what is missing. So instead of waiting for a person, the function that ran
//! out of time queues a replay request item (`REPLAY#{run_id}`, as `ml-connector replay RUN_ID
//! --request` writes it); its stream record starts the replay function, which takes the run on
//! from where it stopped, and queues the next continuation if it runs out of time too.
//!
//! The chain is bounded ([`Settings::max_continuations`](super::Settings)): each continuation is
//! an audit event of kind [`KIND`] on the run, counted before the next one is queued. When the
//! chain reaches its maximum, the run stays `interrupted`, the audit says so and the log line is
//! at ERROR (the functions' error alarms see it), and a person finishes it with `replay`.

use super::LambdaContext;
use crate::domain::run::{AuditEvent, EventKind, EventLevel};

/// Audit event kind of the continuation chain.
pub const KIND: EventKind = EventKind::Continuation;

/// What became of an interrupted run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Continuation {
    /// Continuation `n` (of at most `max`) is queued: the replay function takes the run on.
    Queued { n: u32, max: u32 },
    /// The chain reached its maximum: the run waits for a person.
    GaveUp { max: u32 },
    /// Nothing was queued (no queue in this context, or the store failed): the caller falls
    /// back to its own retry.
    Unavailable(String),
}

impl Continuation {
    /// One line for the answer and the log.
    pub fn describe(&self, run_id: &str) -> String {
        match self {
            Continuation::Queued { n, max } => format!(
                "continuation {n} of at most {max} queued: the replay function takes run {run_id} on from where it stopped"
            ),
            Continuation::GaveUp { max } => format!(
                "run {run_id} was continued {max} times (the maximum, MAX_CONTINUATIONS) and is still not finished; finish it with `ml-connector replay {run_id} --request --table TABLE`"
            ),
            Continuation::Unavailable(why) => {
                format!("no continuation queued ({why}); the invocation's retry takes it on")
            }
        }
    }
}

/// Queues the next continuation of the interrupted run `run_id`, unless the chain is at its
/// maximum. The audit event is written before the request, so the count never undercounts.
pub async fn continue_interrupted(ctx: &LambdaContext, run_id: &str) -> Continuation {
    let Some(queue) = ctx.continuations.as_ref() else {
        return Continuation::Unavailable("this function has no replay queue".into());
    };
    let max = ctx.settings.max_continuations;
    let so_far = match ctx.store.events(run_id).await {
        Ok(events) => events
            .iter()
            .filter(|e| e.kind == KIND && e.level == EventLevel::Info)
            .count(),
        Err(e) => return Continuation::Unavailable(format!("audit store: {e}")),
    };
    let so_far = u32::try_from(so_far).unwrap_or(u32::MAX);
    if so_far >= max {
        let gave_up = Continuation::GaveUp { max };
        let msg = gave_up.describe(run_id);
        tracing::error!(run_id, continuations = so_far, "{msg}");
        let _ = audit(ctx, run_id, EventLevel::Error, msg).await;
        return gave_up;
    }
    let queued = Continuation::Queued { n: so_far + 1, max };
    if let Err(e) = audit(ctx, run_id, EventLevel::Info, queued.describe(run_id)).await {
        return Continuation::Unavailable(format!("audit store: {e}"));
    }
    let by = format!("continuation {} of at most {max}", so_far + 1);
    if let Err(e) = queue.request_replay(run_id, &by).await {
        let why = format!("the replay request could not be written: {e}");
        let _ = audit(
            ctx,
            run_id,
            EventLevel::Warn,
            format!("continuation not queued: {why}"),
        )
        .await;
        return Continuation::Unavailable(why);
    }
    tracing::info!(run_id, "{}", queued.describe(run_id));
    queued
}

async fn audit(
    ctx: &LambdaContext,
    run_id: &str,
    level: EventLevel,
    message: String,
) -> Result<(), crate::store::StoreError> {
    let ev = AuditEvent::new(run_id, level, KIND, message);
    let r = ctx.store.append_event(&ev).await;
    if let Err(e) = &r {
        tracing::error!(run_id, error = %e, "could not record audit event");
    }
    r
}
