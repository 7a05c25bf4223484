//! Lambda `webhook`: Function URL receiving Looker scheduled-plan deliveries on
//! `POST /ingest/{instance}/{secret}`. `lambda_http::run` turns each Function URL event into an
//! `http::Request` and sends the handler's `http::Response` back as the Function URL response.
//! See `ml_connector::lambda::webhook::http_handler`.

use ml_connector::lambda::{webhook, LambdaContext};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    ml_connector::lambda::init_tracing();
    let ctx = LambdaContext::from_env().await?;
    let ctx = &ctx;
    lambda_http::run(lambda_http::service_fn(move |req| {
        webhook::http_handler(ctx, req)
    }))
    .await
}
