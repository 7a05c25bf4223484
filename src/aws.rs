//! Shared AWS SDK set-up for the Lambda entry points and the AWS adapters
//! ([`crate::store::dynamodb`], [`crate::secrets::aws`]).
//!
//! Load the configuration **once** per process (in `main`, before the runtime loop) and build
//! every client from it: each client keeps its own connection pool.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::shared::IntoShared;

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
///
/// Every client (DynamoDB, Secrets Manager, and STS inside the credential chain) shares one
/// [`deferred_tls_https_client`], so the TLS set-up happens once, on the first AWS request,
/// not during the Lambda init.
pub async fn aws_sdk_config() -> SdkConfig {
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(deferred_tls_https_client())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    // Lambda puts the function role's credentials in the environment. The default chain would
    // return exactly those (the environment is its first source) but first builds every other
    // provider (profile files, web identity with its STS client, ECS, IMDS) at init.
    let loader = if env_has_credentials(|k| std::env::var(k).ok()) {
        loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        )
    } else {
        loader
    };
    loader.load().await
}

/// Whether `env` holds the static credentials the SDK's environment provider accepts: an
/// access key id and a secret key (`AWS_SECRET_ACCESS_KEY`, or its older name
/// `SECRET_ACCESS_KEY`), both non-empty.
fn env_has_credentials(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    set("AWS_ACCESS_KEY_ID") && (set("AWS_SECRET_ACCESS_KEY") || set("SECRET_ACCESS_KEY"))
}

/// The SDK's default HTTPS client (hyper 1.x, rustls with aws-lc, proxy settings from the
/// environment: the same recipe as `aws-smithy-runtime`'s `default_https_client`), except that
/// the TLS root store is not built when a client is constructed.
///
/// Why: the SDK builds a connector in `validate_base_client_config`, i.e. inside
/// `Client::new` and inside `aws_config::load` (the credential chain's STS client), "so that
/// native certs load at client initialization time". Loading the native roots reads and parses
/// every certificate of the OS store (a bundle and a directory of a few hundred files): most of
/// the Lambdas' init beyond a hello-world. Deferred, it runs once per process on the first AWS
/// request instead (the SDK caches the parsed roots process-wide), which the first invocation
/// pays for anyway, and not at all in an init that fails before any request.
pub fn deferred_tls_https_client() -> SharedHttpClient {
    let inner = Builder::new().build_with_connector_fn(|settings, components| {
        let mut conn =
            ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc));
        conn.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            conn.set_sleep_impl(components.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    });
    DeferredTls(inner).into_shared()
}

/// Delegates to the inner client but skips its eager connector construction (see
/// [`deferred_tls_https_client`]); connectors are built and cached by the inner client on the
/// first request, as usual.
#[derive(Debug)]
struct DeferredTls(SharedHttpClient);

impl HttpClient for DeferredTls {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(
        &self,
    ) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

#[cfg(test)]
mod tests {
    use super::env_has_credentials;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn static_credentials_in_the_environment() {
        assert!(env_has_credentials(env(&[
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "s")
        ])));
        assert!(env_has_credentials(env(&[
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("SECRET_ACCESS_KEY", "s")
        ])));
        assert!(!env_has_credentials(env(&[("AWS_ACCESS_KEY_ID", "AKIA")])));
        assert!(!env_has_credentials(env(&[
            ("AWS_ACCESS_KEY_ID", " "),
            ("AWS_SECRET_ACCESS_KEY", "s")
        ])));
        assert!(!env_has_credentials(env(&[])));
    }
}
