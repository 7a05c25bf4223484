//! Lambda `replay`: DynamoDB stream records asking for a replay → `Engine::replay`, failed
//! records reported by SequenceNumber. See `ml_connector::lambda::replay`.

use ml_connector::lambda::{replay, LambdaContext};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ml_connector::lambda::init_tracing();
    let ctx = LambdaContext::from_env().await?;
    let ctx = &ctx;
    lambda_runtime::run(lambda_runtime::service_fn(move |event| {
        replay::stream_handler(ctx, event)
    }))
    .await
}
