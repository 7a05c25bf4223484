//! [`SecretSource`] on AWS Secrets Manager: one secret per instance, named
//! `{prefix}{instance}`, holding a [`SecretDocument`] as JSON (its `SecretString`).
//!
//! Secrets are cached per instance for a fixed time to live: a warm Lambda reads each instance's
//! secret once per TTL (once per cold start if the TTL outlives the execution environment), and
//! a rotated secret (new `AWSCURRENT` version) is picked up at the latest one TTL after
//! rotation. Failures are not cached, so a secret created after a `NotFound` is seen at once.
//!
//! Nothing here logs or returns secret material: a malformed document is described by its
//! shape only (missing or empty field names, the number of unexpected fields, the position of
//! a JSON syntax error).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::error::DisplayErrorContext;
use aws_sdk_secretsmanager::Client;

use super::{InstanceSecrets, SecretDocument, SecretSource, SecretsError};
use crate::ports::Cause;

/// The fields of a [`SecretDocument`], all required non-empty strings.
const FIELDS: [&str; 6] = [
    "looker_client_id",
    "looker_client_secret",
    "d365_tenant_id",
    "d365_client_id",
    "d365_client_secret",
    "webhook_secret",
];

/// Optional fields of a [`SecretDocument`]: non-empty strings when present.
const OPTIONAL_FIELDS: [&str; 3] = [
    "looker_webhook_token",
    "slack_webhook_url",
    "teams_webhook_url",
];

/// Longest instance name looked up (Secrets Manager names are at most 512 characters).
const MAX_INSTANCE_LEN: usize = 128;

/// Instance secrets from AWS Secrets Manager, cached per instance for `ttl`.
pub struct SecretsManagerSource {
    client: Client,
    prefix: String,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, InstanceSecrets)>>,
}

impl std::fmt::Debug for SecretsManagerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsManagerSource")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl SecretsManagerSource {
    /// Reads secret `{prefix}{instance}` (e.g. prefix `ml-connector/`), keeping each for `ttl`.
    /// Does no I/O.
    pub fn new(client: Client, prefix: impl Into<String>, ttl: Duration) -> Self {
        Self {
            client,
            prefix: prefix.into(),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The secret id (name) read for `instance`.
    pub fn secret_id(&self, instance: &str) -> String {
        format!("{}{instance}", self.prefix)
    }

    fn cached(&self, instance: &str) -> Option<InstanceSecrets> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(instance)
            .filter(|(fetched, _)| fetched.elapsed() < self.ttl)
            .map(|(_, secrets)| secrets.clone())
    }

    async fn fetch(&self, instance: &str) -> Result<InstanceSecrets, SecretsError> {
        let id = self.secret_id(instance);
        let out = match self.client.get_secret_value().secret_id(&id).send().await {
            Ok(out) => out,
            Err(e) => {
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception())
                {
                    return Err(SecretsError::NotFound {
                        instance: instance.to_string(),
                        detail: format!("Secrets Manager has no secret {id}"),
                    });
                }
                return Err(sdk_failure(format!("GetSecretValue {id}"), e));
            }
        };
        let Some(text) = out.secret_string() else {
            return Err(malformed(
                instance,
                format!("secret {id} has no SecretString (binary secrets are not supported)"),
            ));
        };
        parse_document(instance, text).map(InstanceSecrets::from)
    }
}

#[async_trait::async_trait]
impl SecretSource for SecretsManagerSource {
    async fn instance_secrets(&self, instance: &str) -> Result<InstanceSecrets, SecretsError> {
        if !valid_instance(instance) {
            // Instance names come from request paths: never let one name another secret.
            return Err(SecretsError::NotFound {
                instance: instance.chars().take(MAX_INSTANCE_LEN).collect(),
                detail: "not a valid instance name (letters, digits, '.', '_' and '-')".to_string(),
            });
        }
        if let Some(secrets) = self.cached(instance) {
            return Ok(secrets);
        }
        let secrets = self.fetch(instance).await?;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(instance.to_string(), (Instant::now(), secrets.clone()));
        Ok(secrets)
    }
}

fn valid_instance(instance: &str) -> bool {
    !instance.is_empty()
        && instance.len() <= MAX_INSTANCE_LEN
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A Secrets Manager call that failed while doing `context`: described with the SDK error's
/// causes (its own text is only "service error"), and kept as the source.
pub(crate) fn sdk_failure(
    context: String,
    e: impl std::error::Error + Send + Sync + 'static,
) -> SecretsError {
    SecretsError::Backend {
        context,
        source: Cause::described(DisplayErrorContext(&e).to_string(), e),
    }
}

fn malformed(instance: &str, detail: String) -> SecretsError {
    SecretsError::Malformed {
        instance: instance.to_string(),
        detail,
    }
}

/// Parses the secret text without ever quoting it back: errors name fields, not values.
pub(crate) fn parse_document(instance: &str, text: &str) -> Result<SecretDocument, SecretsError> {
    let expected = format!(
        "a JSON object with string fields {} (optional: {})",
        FIELDS.join(", "),
        OPTIONAL_FIELDS.join(", ")
    );
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        malformed(
            instance,
            format!(
                "not valid JSON (error at line {}, column {}); expected {expected}",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err(malformed(instance, format!("expected {expected}")));
    };
    let mut problems = Vec::new();
    for (field, required) in FIELDS
        .iter()
        .map(|f| (*f, true))
        .chain(OPTIONAL_FIELDS.iter().map(|f| (*f, false)))
    {
        match object.get(field) {
            None if !required => {}
            None => problems.push(format!("missing field {field}")),
            Some(serde_json::Value::String(v)) if v.is_empty() => {
                problems.push(format!("field {field} is empty"))
            }
            Some(serde_json::Value::String(_)) => {}
            Some(_) => problems.push(format!("field {field} is not a string")),
        }
    }
    for field in OPTIONAL_FIELDS {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(v)) if v.is_empty() => problems.push(format!(
                "field {field} is empty (remove it, or set the token)"
            )),
            Some(serde_json::Value::String(_)) => {}
            Some(_) => problems.push(format!("field {field} is not a string")),
        }
    }
    // Unexpected keys are counted, not named: a key is secret text too (a value pasted as a
    // key would otherwise end up in the logs).
    let unexpected = object
        .keys()
        .filter(|k| !FIELDS.contains(&k.as_str()) && !OPTIONAL_FIELDS.contains(&k.as_str()))
        .count();
    if unexpected > 0 {
        problems.push(format!(
            "{unexpected} unexpected field(s) (names not shown)"
        ));
    }
    if !problems.is_empty() {
        return Err(malformed(
            instance,
            format!("{}; expected {expected}", problems.join("; ")),
        ));
    }
    serde_json::from_value(value)
        .map_err(|_| malformed(instance, format!("does not match {expected}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_error_reads_as_before_and_keeps_the_sdk_error_as_its_source() {
        use aws_sdk_secretsmanager::error::SdkError;
        use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
        use std::error::Error as _;
        let e = SdkError::<GetSecretValueError>::construction_failure(std::io::Error::other(
            "no endpoint",
        ));
        let described = DisplayErrorContext(&e).to_string();
        let err = sdk_failure("GetSecretValue ml-connector/fees".into(), e);
        assert_eq!(
            err.to_string(),
            format!("secrets backend: GetSecretValue ml-connector/fees: {described}")
        );
        let cause = err.source().expect("the cause is the source");
        assert_eq!(cause.to_string(), described);
        let sdk = cause.source().expect("the SDK error is the next link");
        assert!(sdk
            .downcast_ref::<SdkError<GetSecretValueError>>()
            .is_some());
        let mut root = sdk;
        while let Some(next) = root.source() {
            root = next;
        }
        assert_eq!(root.to_string(), "no endpoint");
    }

    const GOOD: &str = r#"{"looker_client_id":"lid","looker_client_secret":"hunter2","d365_tenant_id":"t","d365_client_id":"did","d365_client_secret":"s3cr3t","webhook_secret":"wh"}"#;

    #[test]
    fn parses_the_document() {
        let d = parse_document("fees", GOOD).expect("valid");
        assert_eq!(d.looker_client_secret.expose(), "hunter2");
        assert_eq!(d.webhook_secret.expose(), "wh");
        assert!(d.looker_webhook_token.is_none());
        let with_token = GOOD.replace("}", r#","looker_webhook_token":"tok"}"#);
        let d = parse_document("fees", &with_token).expect("valid with the optional token");
        assert_eq!(d.looker_webhook_token.unwrap().expose(), "tok");
        let e = parse_document("fees", &GOOD.replace("}", r#","looker_webhook_token":""}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("looker_webhook_token is empty"), "{e}");
    }

    #[test]
    fn chat_webhook_urls_are_optional() {
        let d = parse_document("fees", GOOD).unwrap();
        assert!(d.slack_webhook_url.is_none() && d.teams_webhook_url.is_none());
        let with = GOOD.replace(
            "\"webhook_secret\":\"wh\"",
            "\"webhook_secret\":\"wh\",\"slack_webhook_url\":\"https://hooks.slack.com/services/T/B/hunter2\",\"teams_webhook_url\":\"https://t.example/hunter2\"",
        );
        let s: InstanceSecrets = parse_document("fees", &with).unwrap().into();
        assert_eq!(
            s.notify.slack.as_ref().map(|u| u.expose()),
            Some("https://hooks.slack.com/services/T/B/hunter2")
        );
        assert!(s.notify.teams.is_some());
        // Set but empty is an error naming the field, never its value.
        let e = parse_document("fees", &with.replace("https://t.example/hunter2", ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field teams_webhook_url is empty") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(!format!("{:?}", s.notify).contains("hunter2"));
    }

    #[test]
    fn errors_never_quote_values() {
        for text in [
            "hunter2",
            r#"{"looker_client_id": "hunter2""#,
            r#"["hunter2"]"#,
            r#"{"looker_client_id": 1, "looker_client_secret": "hunter2"}"#,
            &GOOD.replace("\"wh\"", "\"\"").replace("lid", "hunter2"),
            &GOOD.replace("\"webhook_secret\"", "\"hunter2 \""),
        ] {
            let e = parse_document("fees", text).expect_err(text).to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("malformed"), "{e}");
        }
        let e = parse_document("fees", &GOOD.replace("webhook_secret", "webhook"))
            .expect_err("renamed")
            .to_string();
        assert!(
            e.contains("missing field webhook_secret") && e.contains("1 unexpected field(s)"),
            "{e}"
        );
    }

    #[test]
    fn instance_names_are_plain() {
        assert!(valid_instance("weekly-marketplace-fees"));
        assert!(valid_instance("a.b_c-1"));
        for bad in [
            "",
            "../x",
            "a/b",
            "arn:aws:secretsmanager",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(!valid_instance(bad), "{bad}");
        }
    }
}
