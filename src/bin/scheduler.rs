//! Lambda `scheduler`: EventBridge Scheduler (ScheduleV2) input
//! `{instance, scheduled_time, execution_id}` → one sync. See `ml_connector::lambda::scheduler`.

use ml_connector::lambda::{scheduler, LambdaContext};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ml_connector::lambda::init_tracing();
    let ctx = LambdaContext::from_env().await?;
    let ctx = &ctx;
    lambda_runtime::run(lambda_runtime::service_fn(move |event| {
        scheduler::scheduler_handler(ctx, event)
    }))
    .await
}
