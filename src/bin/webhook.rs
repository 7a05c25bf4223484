//! Lambda `webhook`: Function URL receiving Looker scheduled-plan deliveries on
//! `POST /ingest/{instance}/{secret}`. See `ml_connector::lambda::webhook`.

use ml_connector::lambda::{webhook, LambdaContext};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ml_connector::lambda::init_tracing();
    let ctx = LambdaContext::from_env().await?;
    let ctx = &ctx;
    lambda_runtime::run(lambda_runtime::service_fn(move |event| {
        webhook::function_url_handler(ctx, event)
    }))
    .await
}
