//! Lambda `webhook`: Function URL receiving Looker scheduled-plan deliveries on
//! `POST /ingest/{instance}/{secret}`. `lambda_http` turns each Function URL event into an
//! `http::Request`; the handler answers an `http::Response`, sent back as the Function URL
//! response. See `ml_connector::lambda::webhook` (and `function_url_handler` there for why
//! this is not `lambda_http::run`).

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
