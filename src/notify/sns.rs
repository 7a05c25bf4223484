//! The stack's SNS topic (`NOTIFY_TOPIC_ARN`): subject + short text body per notification.

use super::NotifyError;
use crate::controls::RunNotification;

/// Environment variable: ARN of the topic run notifications are published to (unset: none).
pub const ENV_NOTIFY_TOPIC_ARN: &str = "NOTIFY_TOPIC_ARN";

/// One SNS topic and a client for it.
#[derive(Clone)]
pub struct SnsTopic {
    client: aws_sdk_sns::Client,
    arn: String,
}

impl SnsTopic {
    pub fn new(client: aws_sdk_sns::Client, arn: impl Into<String>) -> Self {
        SnsTopic {
            client,
            arn: arn.into(),
        }
    }

    /// Publishes; returns SNS's message id.
    pub async fn publish(&self, n: &RunNotification) -> Result<String, NotifyError> {
        let out = self
            .client
            .publish()
            .topic_arn(&self.arn)
            .subject(&n.subject)
            .message(n.text())
            .send()
            .await
            .map_err(|e| {
                NotifyError::Sns(format!("{}", aws_sdk_sns::error::DisplayErrorContext(&e)))
            })?;
        Ok(out.message_id.unwrap_or_default())
    }
}
