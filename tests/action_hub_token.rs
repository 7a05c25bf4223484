//! The action hub's token in Secrets Manager (local moto server, started by `.ci/test`): read
//! as a plain string or `{"token": …}`, cached for its TTL, picked up after rotation, and used by
//! the hub on every route.
#![cfg(feature = "aws")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ml_connector::lambda::action_hub::token::{HubTokenSource, SecretsManagerHubToken};
use ml_connector::lambda::action_hub::{ActionHub, ActionHubSettings};
use ml_connector::lambda::webhook::{handle_webhook, WebhookRequest};
use ml_connector::lambda::{Invocation, LambdaContext, Settings};
use ml_connector::secrets::{InstanceSecrets, SecretSource, SecretsError};
use ml_connector::store::sqlite::SqliteStore;
use ml_connector::store::{ConfigStore, StoreError};

struct NoConfigs;
#[async_trait::async_trait]
impl ConfigStore for NoConfigs {
    async fn put_config(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get_config(&self, _: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(None)
    }
}

struct NoSecrets;
#[async_trait::async_trait]
impl SecretSource for NoSecrets {
    async fn instance_secrets(&self, instance: &str) -> Result<InstanceSecrets, SecretsError> {
        Err(SecretsError::NotFound {
            instance: instance.into(),
            detail: "none".into(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_token_comes_from_secrets_manager_and_follows_rotation() {
    let client = common::aws::secretsmanager().await;
    let name = common::aws::unique("ml-connector/action-hub");
    client
        .create_secret()
        .name(&name)
        .secret_string(r#"{"token":"first-token-0123456789"}"#)
        .send()
        .await
        .expect("CreateSecret");
    let source = SecretsManagerHubToken::new(client.clone(), name.clone(), Duration::ZERO);
    assert_eq!(
        source.hub_token().await.unwrap().expose(),
        "first-token-0123456789"
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("a.sqlite")).unwrap());
    let ctx = LambdaContext::new(
        store.clone(),
        Arc::new(NoConfigs),
        Arc::new(NoSecrets),
        Settings::default(),
    )
    .with_action_hub(ActionHub {
        token: Arc::new(source),
        settings: ActionHubSettings::default(),
    });
    let list = |token: &str| WebhookRequest {
        method: "POST".into(),
        path: "/actions".into(),
        authorization: Some(format!("Token token=\"{token}\"")),
        ..WebhookRequest::default()
    };
    let inv = Invocation::with_timeout("i", chrono::Duration::minutes(1));
    assert_eq!(
        handle_webhook(&ctx, list("first-token-0123456789"), &inv)
            .await
            .status,
        200
    );

    // Rotated (a plain string this time): the old token is refused, the new one works.
    client
        .put_secret_value()
        .secret_id(&name)
        .secret_string("second-token-9876543210\n")
        .send()
        .await
        .expect("PutSecretValue");
    assert_eq!(
        handle_webhook(&ctx, list("first-token-0123456789"), &inv)
            .await
            .status,
        403
    );
    assert_eq!(
        handle_webhook(&ctx, list("second-token-9876543210"), &inv)
            .await
            .status,
        200
    );

    // Cached for its TTL: a rotation shows only after it.
    let cached =
        SecretsManagerHubToken::new(client.clone(), name.clone(), Duration::from_secs(300));
    assert_eq!(
        cached.hub_token().await.unwrap().expose(),
        "second-token-9876543210"
    );
    client
        .put_secret_value()
        .secret_id(&name)
        .secret_string("third-token-5555555555")
        .send()
        .await
        .expect("PutSecretValue");
    assert_eq!(
        cached.hub_token().await.unwrap().expose(),
        "second-token-9876543210"
    );

    // A missing secret: the hub answers 503 (never 200, never a hint of the token).
    let missing = SecretsManagerHubToken::new(client, format!("{name}-missing"), Duration::ZERO);
    assert!(missing.hub_token().await.is_err());
    let ctx = LambdaContext::new(
        store,
        Arc::new(NoConfigs),
        Arc::new(NoSecrets),
        Settings::default(),
    )
    .with_action_hub(ActionHub {
        token: Arc::new(missing),
        settings: ActionHubSettings::default(),
    });
    assert_eq!(
        handle_webhook(&ctx, list("anything"), &inv).await.status,
        503
    );
}
