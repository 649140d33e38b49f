//! AWS SDK configuration, built in one place and passed down.
//!
//! Region, credentials and endpoint come from the SDK's standard chain: `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, container and instance roles, and
//! `AWS_ENDPOINT_URL` or the per-service `AWS_ENDPOINT_URL_KINESIS`/`_DYNAMODB`. Unset the
//! endpoint variables and the same binary talks to real AWS.

use aws_config::{BehaviorVersion, SdkConfig};

/// Loads the shared SDK configuration, failing with one line when no region is configured.
pub async fn load() -> anyhow::Result<SdkConfig> {
    // Whole-call throttling and transient errors are retried by the SDK (standard mode, 3
    // attempts, tunable with AWS_MAX_ATTEMPTS / AWS_RETRY_MODE); the services' own loops retry
    // on top of that, and where the SDK cannot (the failed entries of a partial PutRecords).
    let config = aws_config::defaults(BehaviorVersion::latest()).load().await;
    if config.region().is_none() {
        anyhow::bail!(
            "no AWS region configured: set AWS_REGION (for example AWS_REGION=us-east-1) or a profile with a region"
        );
    }
    Ok(config)
}

/// A Kinesis client for the given SDK configuration.
pub fn kinesis(config: &SdkConfig) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::new(config)
}

/// A DynamoDB client (the consumer's lease table) for the given SDK configuration.
pub fn dynamodb(config: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(config)
}
