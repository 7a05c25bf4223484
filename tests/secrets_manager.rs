//! `SecretsManagerSource` against a local moto server (started by `.ci/test`): reading an
//! instance's secret, caching with a TTL across rotation, missing and malformed secrets.
#![cfg(feature = "aws")]

mod common;

use std::time::Duration;

use ml_connector::secrets::aws::SecretsManagerSource;
use ml_connector::secrets::{SecretSource, SecretsError};

fn document(looker_secret: &str, webhook_secret: &str) -> String {
    serde_json::json!({
        "looker_client_id": "looker-id",
        "looker_client_secret": looker_secret,
        "d365_tenant_id": "tenant-1",
        "d365_client_id": "d365-id",
        "d365_client_secret": "d365-s3cret",
        "webhook_secret": webhook_secret,
    })
    .to_string()
}

/// A source with a unique prefix, and a helper to create `{prefix}{instance}`.
struct Fixture {
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
}

impl Fixture {
    async fn new() -> Self {
        Self {
            client: common::aws::secretsmanager().await,
            prefix: format!("{}/", common::aws::unique("ml-connector")),
        }
    }

    fn source(&self, ttl: Duration) -> SecretsManagerSource {
        SecretsManagerSource::new(self.client.clone(), self.prefix.clone(), ttl)
    }

    async fn create(&self, instance: &str, text: &str) {
        self.client
            .create_secret()
            .name(format!("{}{instance}", self.prefix))
            .secret_string(text)
            .send()
            .await
            .expect("CreateSecret");
    }

    async fn rotate(&self, instance: &str, text: &str) {
        self.client
            .put_secret_value()
            .secret_id(format!("{}{instance}", self.prefix))
            .secret_string(text)
            .send()
            .await
            .expect("PutSecretValue");
    }
}

#[tokio::test]
async fn reads_the_instances_secret_document() {
    let f = Fixture::new().await;
    f.create("fees", &document("looker-s3cret", "hook-1")).await;
    f.create("other", &document("other-s3cret", "hook-2")).await;
    let source = f.source(Duration::from_secs(300));
    assert_eq!(source.secret_id("fees"), format!("{}fees", f.prefix));
    let got = source.instance_secrets("fees").await.expect("secrets");
    assert_eq!(got.credentials.looker_client_id, "looker-id");
    assert_eq!(
        got.credentials.looker_client_secret.expose(),
        "looker-s3cret"
    );
    assert_eq!(got.credentials.d365_tenant_id, "tenant-1");
    assert_eq!(got.credentials.d365_client_id, "d365-id");
    assert_eq!(got.credentials.d365_client_secret.expose(), "d365-s3cret");
    assert_eq!(got.webhook_secret.expose(), "hook-1");
    let other = source.instance_secrets("other").await.expect("secrets");
    assert_eq!(other.webhook_secret.expose(), "hook-2");
    // Debug output of what was read never shows the secrets.
    let debug = format!("{got:?} {source:?}");
    assert!(
        !debug.contains("s3cret") && !debug.contains("hook-1"),
        "{debug}"
    );
}

#[tokio::test]
async fn a_rotated_secret_is_seen_only_after_the_ttl() {
    let f = Fixture::new().await;
    f.create("fees", &document("v1", "hook-v1")).await;
    let ttl = Duration::from_millis(1500);
    let source = f.source(ttl);
    let first = source.instance_secrets("fees").await.expect("v1");
    assert_eq!(first.webhook_secret.expose(), "hook-v1");

    f.rotate("fees", &document("v2", "hook-v2")).await;
    let cached = source.instance_secrets("fees").await.expect("cached");
    assert_eq!(
        cached.webhook_secret.expose(),
        "hook-v1",
        "within the TTL the cached secret is used"
    );
    // A new source (a cold start) reads the current version at once.
    let cold = f.source(ttl).instance_secrets("fees").await.expect("cold");
    assert_eq!(cold.webhook_secret.expose(), "hook-v2");

    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let fresh = source.instance_secrets("fees").await.expect("v2");
    assert_eq!(fresh.webhook_secret.expose(), "hook-v2");
    assert_eq!(fresh.credentials.looker_client_secret.expose(), "v2");
}

#[tokio::test]
async fn within_the_ttl_secrets_manager_is_not_asked_again() {
    let f = Fixture::new().await;
    f.create("fees", &document("s", "hook")).await;
    let source = f.source(Duration::from_secs(300));
    source.instance_secrets("fees").await.expect("first read");
    // Gone from Secrets Manager: a cached read still succeeds, an uncached one does not.
    f.client
        .delete_secret()
        .secret_id(format!("{}fees", f.prefix))
        .force_delete_without_recovery(true)
        .send()
        .await
        .expect("DeleteSecret");
    let again = source.instance_secrets("fees").await.expect("cached read");
    assert_eq!(again.webhook_secret.expose(), "hook");
    assert!(f
        .source(Duration::from_secs(300))
        .instance_secrets("fees")
        .await
        .is_err());
}

#[tokio::test]
async fn a_missing_secret_is_not_found_and_not_cached() {
    let f = Fixture::new().await;
    let source = f.source(Duration::from_secs(300));
    match source.instance_secrets("nobody").await {
        Err(SecretsError::NotFound { instance, detail }) => {
            assert_eq!(instance, "nobody");
            assert!(detail.contains(&format!("{}nobody", f.prefix)), "{detail}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Created afterwards: found at once (failures are not cached).
    f.create("nobody", &document("s", "hook")).await;
    source.instance_secrets("nobody").await.expect("now found");
}

#[tokio::test]
async fn a_malformed_secret_is_reported_without_its_text() {
    const CANARY: &str = "CANARY-hunter2-do-not-log";
    let f = Fixture::new().await;
    let cases = [
        ("plain", CANARY.to_string()),
        (
            "truncated",
            format!("{{\"looker_client_secret\": \"{CANARY}\""),
        ),
        ("array", format!("[\"{CANARY}\"]")),
        (
            "missing-field",
            document(CANARY, "hook").replace("\"webhook_secret\"", "\"webhook\""),
        ),
        (
            "wrong-type",
            document("x", "hook").replace("\"x\"", &format!("[\"{CANARY}\"]")),
        ),
        ("empty-value", document(CANARY, "")),
        (
            "secret-as-key",
            document("x", "hook").replace("\"looker_client_id\"", &format!("\"{CANARY}\"")),
        ),
    ];
    for (instance, text) in &cases {
        f.create(instance, text).await;
    }
    let source = f.source(Duration::from_secs(300));
    for (instance, _) in &cases {
        let err = source
            .instance_secrets(instance)
            .await
            .expect_err("malformed");
        let shown = format!("{err} / {err:?}");
        assert!(
            matches!(err, SecretsError::Malformed { .. }),
            "{instance}: {shown}"
        );
        assert!(!shown.contains("hunter2"), "{instance}: {shown}");
        assert!(
            shown.contains(instance),
            "{instance}: names the instance: {shown}"
        );
    }
}

#[tokio::test]
async fn instance_names_cannot_reach_other_secrets() {
    let f = Fixture::new().await;
    f.create("fees", &document("s", "hook")).await;
    let source = f.source(Duration::from_secs(300));
    for bad in ["", "../fees", "fees/x", "fees extra"] {
        match source.instance_secrets(bad).await {
            Err(SecretsError::NotFound { detail, .. }) => {
                assert!(detail.contains("not a valid instance name"), "{detail}")
            }
            other => panic!("{bad:?}: expected NotFound, got {other:?}"),
        }
    }
}
