//! AWS SDK configuration, built in one place and passed down, and the one classification of AWS
//! errors the services branch on.
//!
//! Region, credentials and endpoint come from the SDK's standard chain: `AWS_REGION`,
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, container and instance roles, and
//! `AWS_ENDPOINT_URL` or the per-service `AWS_ENDPOINT_URL_KINESIS`/`_DYNAMODB`. Unset the
//! endpoint variables and the same binary talks to real AWS.
//!
//! Every client gets deadlines ([`AwsTimeouts`]): one per HTTP attempt and one per call with the
//! SDK's own retries, so a connection that is accepted and never answered cannot hold a call
//! (and whatever waits on it: a lease, a producer slot, a shutdown) for longer than that.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

use crate::config::AwsTimeouts;

/// Loads the shared SDK configuration, failing with one line when no region is configured.
pub async fn load() -> anyhow::Result<SdkConfig> {
    load_in_region(None).await
}

/// [`load`], with `region` (when given) instead of the one the standard chain finds: the
/// MultiLangDaemon's `regionName`.
pub async fn load_in_region(region: Option<String>) -> anyhow::Result<SdkConfig> {
    // Whole-call throttling and transient errors are retried by the SDK (standard mode, 3
    // attempts, tunable with AWS_MAX_ATTEMPTS / AWS_RETRY_MODE); the services' own loops retry
    // on top of that, and where the SDK cannot (the failed entries of a partial PutRecords).
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    let config = loader.load().await;
    if config.region().is_none() {
        anyhow::bail!(
            "no AWS region configured: set AWS_REGION (for example AWS_REGION=us-east-1) or a profile with a region"
        );
    }
    Ok(config)
}

fn timeout_config(attempt: Duration, call: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(attempt.min(Duration::from_secs(3)))
        .operation_attempt_timeout(attempt)
        .operation_timeout(call)
        .build()
}

/// A Kinesis client for the given SDK configuration, with the Kinesis deadlines.
pub fn kinesis(config: &SdkConfig, timeouts: &AwsTimeouts) -> aws_sdk_kinesis::Client {
    kinesis_at(config, timeouts, None)
}

/// [`kinesis`], at `endpoint` when given (the MultiLangDaemon's `kinesisEndpoint`, which wins
/// over the `AWS_ENDPOINT_URL*` variables).
pub fn kinesis_at(
    config: &SdkConfig,
    timeouts: &AwsTimeouts,
    endpoint: Option<&str>,
) -> aws_sdk_kinesis::Client {
    let mut conf = aws_sdk_kinesis::config::Builder::from(config).timeout_config(timeout_config(
        timeouts.kinesis_attempt,
        timeouts.kinesis_call,
    ));
    if let Some(url) = endpoint {
        conf = conf.endpoint_url(url);
    }
    let conf = conf.build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

/// A DynamoDB client (the consumer's lease table), with the DynamoDB deadlines.
pub fn dynamodb(config: &SdkConfig, timeouts: &AwsTimeouts) -> aws_sdk_dynamodb::Client {
    dynamodb_at(config, timeouts, None)
}

/// [`dynamodb`], at `endpoint` when given (the MultiLangDaemon's `dynamoDBEndpoint`).
pub fn dynamodb_at(
    config: &SdkConfig,
    timeouts: &AwsTimeouts,
    endpoint: Option<&str>,
) -> aws_sdk_dynamodb::Client {
    let mut conf = aws_sdk_dynamodb::config::Builder::from(config).timeout_config(timeout_config(
        timeouts.dynamodb_attempt,
        timeouts.dynamodb_call,
    ));
    if let Some(url) = endpoint {
        conf = conf.endpoint_url(url);
    }
    let conf = conf.build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// What an AWS error means for the caller: whether to retry, and how to report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Over a rate limit: retry with backoff.
    Throttled,
    /// A server fault, a timeout, a dropped connection, a 5xx: retry with backoff.
    Transient,
    /// The stream, shard, table or item does not exist (`ResourceNotFoundException`).
    NotFound,
    /// Credentials or permissions: will not heal by retrying.
    AccessDenied,
    /// A conditional write found another value (`ConditionalCheckFailedException`).
    ConditionFailed,
    /// A shard iterator older than 5 minutes (`ExpiredIteratorException`).
    ExpiredIterator,
    /// The resource is busy or exists already (`ResourceInUseException`).
    InUse,
    /// The request itself is wrong (validation, bad argument): a bug or a bad setting.
    Invalid,
    /// Anything else: permanent.
    Other,
}

/// The AWS error codes this project knows, with their kind (Kinesis, DynamoDB and the codes
/// every AWS service may answer). A code not listed is [`ErrorKind::Other`] unless its HTTP
/// status says more.
pub const KNOWN_ERROR_CODES: &[(&str, ErrorKind)] = &[
    (
        "ProvisionedThroughputExceededException",
        ErrorKind::Throttled,
    ),
    ("LimitExceededException", ErrorKind::Throttled),
    ("ThrottlingException", ErrorKind::Throttled),
    ("Throttling", ErrorKind::Throttled),
    ("RequestLimitExceeded", ErrorKind::Throttled),
    ("TooManyRequestsException", ErrorKind::Throttled),
    ("KMSThrottlingException", ErrorKind::Throttled),
    ("InternalFailure", ErrorKind::Transient),
    ("InternalFailureException", ErrorKind::Transient),
    ("InternalServerError", ErrorKind::Transient),
    ("InternalServerErrorException", ErrorKind::Transient),
    ("ServiceUnavailable", ErrorKind::Transient),
    ("ServiceUnavailableException", ErrorKind::Transient),
    ("RequestTimeout", ErrorKind::Transient),
    ("RequestTimeoutException", ErrorKind::Transient),
    ("TransactionInProgressException", ErrorKind::Transient),
    ("ResourceNotFoundException", ErrorKind::NotFound),
    ("AccessDeniedException", ErrorKind::AccessDenied),
    ("UnrecognizedClientException", ErrorKind::AccessDenied),
    ("InvalidSignatureException", ErrorKind::AccessDenied),
    (
        "MissingAuthenticationTokenException",
        ErrorKind::AccessDenied,
    ),
    ("IncompleteSignature", ErrorKind::AccessDenied),
    ("KMSAccessDeniedException", ErrorKind::AccessDenied),
    ("KMSDisabledException", ErrorKind::AccessDenied),
    ("KMSNotFoundException", ErrorKind::AccessDenied),
    ("KMSInvalidStateException", ErrorKind::AccessDenied),
    (
        "ConditionalCheckFailedException",
        ErrorKind::ConditionFailed,
    ),
    ("ExpiredIteratorException", ErrorKind::ExpiredIterator),
    ("ResourceInUseException", ErrorKind::InUse),
    ("ValidationException", ErrorKind::Invalid),
    ("InvalidArgumentException", ErrorKind::Invalid),
    ("SerializationException", ErrorKind::Invalid),
];

impl ErrorKind {
    /// Whether the same call may succeed later.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Throttled | ErrorKind::Transient)
    }

    /// The kind an AWS error code stands for; `None` for a code [`KNOWN_ERROR_CODES`] does not
    /// list.
    pub fn from_code(code: &str) -> Option<Self> {
        KNOWN_ERROR_CODES
            .iter()
            .find(|(known, _)| *known == code)
            .map(|(_, kind)| *kind)
    }

    /// The kind an HTTP status stands for when the answer carries no known AWS error code, as
    /// from a proxy or load balancer in front of AWS.
    pub fn from_status(status: u16) -> Self {
        match status {
            429 => ErrorKind::Throttled,
            500..=599 => ErrorKind::Transient,
            403 => ErrorKind::AccessDenied,
            _ => ErrorKind::Other,
        }
    }
}

/// Classifies an SDK error: by its AWS error code when it has a known one, else by the HTTP
/// status (429 throttled, 5xx transient, 403 access denied, other 4xx permanent), and transport
/// failures (timeouts, refused or dropped connections) as transient.
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> ErrorKind {
    match err {
        SdkError::ServiceError(e) => e
            .err()
            .code()
            .and_then(ErrorKind::from_code)
            .unwrap_or_else(|| ErrorKind::from_status(e.raw().status().as_u16())),
        // An answer the SDK could not read: an error answer without an AWS error code (what
        // gateways and load balancers send) is judged by its status; a success it could not
        // read, by a dropped connection mid-body, say, is transient.
        SdkError::ResponseError(e) => match e.raw().status().as_u16() {
            status if status >= 300 => ErrorKind::from_status(status),
            _ => ErrorKind::Transient,
        },
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ErrorKind::Transient,
        SdkError::ConstructionFailure(_) => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decide_before_statuses() {
        assert_eq!(
            ErrorKind::from_code("ProvisionedThroughputExceededException"),
            Some(ErrorKind::Throttled)
        );
        assert_eq!(
            ErrorKind::from_code("InternalFailure"),
            Some(ErrorKind::Transient)
        );
        assert_eq!(
            ErrorKind::from_code("AccessDeniedException"),
            Some(ErrorKind::AccessDenied)
        );
        assert_eq!(ErrorKind::from_code("SomethingNew"), None);
        assert!(!ErrorKind::from_code("ValidationException")
            .unwrap()
            .is_retryable());
        assert!(!ErrorKind::from_code("ResourceNotFoundException")
            .unwrap()
            .is_retryable());
    }

    #[test]
    fn bare_statuses_from_proxies_are_classified() {
        for status in [500, 502, 503, 504] {
            assert_eq!(ErrorKind::from_status(status), ErrorKind::Transient);
        }
        assert_eq!(ErrorKind::from_status(429), ErrorKind::Throttled);
        assert_eq!(ErrorKind::from_status(403), ErrorKind::AccessDenied);
        assert!(!ErrorKind::from_status(400).is_retryable());
    }
}
