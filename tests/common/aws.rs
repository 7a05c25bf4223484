//! Shared set-up for the tests of the AWS adapters: they run against the local moto server that
//! `.ci/test` starts, never against real AWS, and never silently skip.

use std::sync::atomic::{AtomicU32, Ordering};

use aws_config::SdkConfig;

/// The local AWS endpoint from `AWS_ENDPOINT_URL`; panics (failing the test) if it is not set or
/// is not a loopback address.
pub fn endpoint() -> String {
    let url = match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "AWS_ENDPOINT_URL is not set: run the tests with .ci/test, which starts a local moto \
             server (these tests never run against real AWS and never skip)"
        ),
    };
    let host = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    assert!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "AWS_ENDPOINT_URL={url} is not a local http:// endpoint: run the tests with .ci/test, \
         which starts a local moto server"
    );
    url
}

/// The SDK configuration the adapters use in production (`aws_sdk_config()`), after checking
/// that it points at the local server.
pub async fn sdk_config() -> SdkConfig {
    let url = endpoint();
    let config = ml_connector::aws::aws_sdk_config().await;
    assert_eq!(
        config.endpoint_url(),
        Some(url.as_str()),
        "the SDK must pick up AWS_ENDPOINT_URL"
    );
    config
}

pub async fn dynamodb() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
}

pub async fn secretsmanager() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&sdk_config().await)
}

/// A name unique to this test process and call: `{prefix}-{pid}-{n}-{random}`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    )
}

/// A new audit table named `{prefix}-…` on the local server, and a client for it.
pub async fn fresh_table(prefix: &str) -> (aws_sdk_dynamodb::Client, String) {
    let client = dynamodb().await;
    let table = unique(prefix);
    ml_connector::store::dynamodb::create_table_for_tests(&client, &table)
        .await
        .expect("create table on the local DynamoDB");
    (client, table)
}

/// A DynamoDB store on a new table of its own (see [`fresh_table`]).
pub async fn dynamo_store(prefix: &str) -> ml_connector::store::dynamodb::DynamoStore {
    let (client, table) = fresh_table(prefix).await;
    ml_connector::store::dynamodb::DynamoStore::new(client, table)
}
