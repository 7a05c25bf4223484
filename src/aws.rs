//! Shared AWS SDK set-up for the Lambda entry points and the AWS adapters
//! ([`crate::store::dynamodb`], [`crate::secrets::aws`]).
//!
//! Load the configuration **once** per process (in `main`, before the runtime loop) and build
//! every client from it: each client keeps its own connection pool.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// How long one HTTP attempt to an AWS API may take before it is retried.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one SDK operation may take in total, retries included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(25);

/// The SDK configuration from the environment, the standard way
/// (`load_defaults(BehaviorVersion::latest())`): region, credentials and endpoint come from the
/// usual sources, so in Lambda the function's role and `AWS_REGION` are used, and
/// `AWS_ENDPOINT_URL` (or a per-service `AWS_ENDPOINT_URL_DYNAMODB`, …) redirects every client —
/// that is how the tests point the adapters at a local moto server without any test hook here.
///
/// Adds operation timeouts (the SDK has none by default, so a stalled connection would otherwise
/// run into the Lambda timeout): [`ATTEMPT_TIMEOUT`] per attempt, [`OPERATION_TIMEOUT`] in total.
///
/// Outside AWS, set `AWS_REGION` (or `AWS_EC2_METADATA_DISABLED=true`): without a region the
/// loader probes the EC2 instance metadata service, which can cost seconds per call.
pub async fn aws_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await
}
