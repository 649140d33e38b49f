//! The settings both services share.

use super::*;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, fields at the top level.
    Json,
}

/// Settings both services share.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// The stream to write or read (`STREAM_NAME`).
    pub stream_name: String,
    /// How long to wait at start for the stream to be `ACTIVE` (`STREAM_WAIT_TIMEOUT_MS`).
    pub stream_wait_timeout: Duration,
    /// Text or JSON log lines (`LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Deadlines of AWS calls.
    pub timeouts: AwsTimeouts,
    /// Where the HTTP server (metrics, health, status) listens; `None`: no server.
    pub http_addr: Option<std::net::SocketAddr>,
}

/// Deadlines for AWS calls: one HTTP attempt, and one call with the SDK's retries. A hung
/// connection (accepted, never answered) costs at most the attempt timeout per attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    /// One HTTP attempt of a Kinesis call (`KINESIS_ATTEMPT_TIMEOUT_MS`).
    pub kinesis_attempt: Duration,
    /// One Kinesis call with the SDK's retries (`KINESIS_CALL_TIMEOUT_MS`).
    pub kinesis_call: Duration,
    /// Lease-table calls; kept well under the lease renewal interval (a third of
    /// `CONSUMER_FAILOVER_MS`) so a hung call cannot outlive a renewal.
    pub dynamodb_attempt: Duration,
    /// One lease-table call with the SDK's retries (`DYNAMODB_CALL_TIMEOUT_MS`).
    pub dynamodb_call: Duration,
}

impl Default for AwsTimeouts {
    fn default() -> Self {
        Self {
            kinesis_attempt: Duration::from_millis(5000),
            kinesis_call: Duration::from_millis(10_000),
            dynamodb_attempt: Duration::from_millis(1000),
            dynamodb_call: Duration::from_millis(2500),
        }
    }
}

impl SharedSettings {
    /// Checks the shared variables in `raw`; the error names the first bad one.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            stream_name: raw
                .text(&STREAM_NAME, crate::kinesis::is_valid_stream_name)?
                .unwrap_or_default(),
            stream_wait_timeout: raw.millis(&STREAM_WAIT_TIMEOUT_MS, 1, 86_400_000)?,
            log_format: raw.choice(
                &LOG_FORMAT,
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )?,
            http_addr: match raw.get(&HTTP_ADDR) {
                None => None,
                Some(v) => Some(v.parse().map_err(|_| raw.invalid(&HTTP_ADDR, v))?),
            },
            timeouts: AwsTimeouts {
                kinesis_attempt: raw.millis(&KINESIS_ATTEMPT_TIMEOUT_MS, 100, 600_000)?,
                kinesis_call: raw.millis(&KINESIS_CALL_TIMEOUT_MS, 100, 600_000)?,
                dynamodb_attempt: raw.millis(&DYNAMODB_ATTEMPT_TIMEOUT_MS, 100, 600_000)?,
                dynamodb_call: raw.millis(&DYNAMODB_CALL_TIMEOUT_MS, 100, 600_000)?,
            },
        })
    }
}
