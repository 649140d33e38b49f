//! Service configuration: defaults, then an optional TOML file, then environment variables.
//!
//! This module is the single list of the variables the services read. Each one is a [`VarSpec`]
//! constant; the typed loaders below can only read a variable through its constant, so a name
//! that is not declared here cannot be read anywhere. The docker-compose test checks the
//! compose file against these lists, and the README documents exactly these names.
//!
//! Everything is read once at startup and validated into typed structs. A bad value is a
//! [`ConfigError`] whose one-line message names the variable, the value and what is allowed.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// One configuration variable: its environment name, its default and what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VarSpec {
    pub name: &'static str,
    /// Default as the user would write it; `None` means "unset" has its own meaning.
    pub default: Option<&'static str>,
    /// What values are allowed, as shown in an error message.
    pub allowed: &'static str,
}

const fn var(name: &'static str, default: Option<&'static str>, allowed: &'static str) -> VarSpec {
    VarSpec {
        name,
        default,
        allowed,
    }
}

// ---- shared by both services ----
pub const CONFIG_FILE: VarSpec = var("CONFIG_FILE", None, "a path to a TOML file");
pub const STREAM_NAME: VarSpec = var(
    "STREAM_NAME",
    Some("demo-stream"),
    "a Kinesis stream name (1-128 characters of a-z, A-Z, 0-9, _ . -)",
);
pub const STREAM_WAIT_TIMEOUT_MS: VarSpec = var(
    "STREAM_WAIT_TIMEOUT_MS",
    Some("60000"),
    "a whole number of milliseconds, 1 or more",
);
pub const LOG_FORMAT: VarSpec = var("LOG_FORMAT", Some("text"), "`text` or `json`");
pub const HTTP_ADDR: VarSpec = var(
    "HTTP_ADDR",
    None,
    "unset (no HTTP server) or an address and port such as 0.0.0.0:8080",
);
pub const KINESIS_ATTEMPT_TIMEOUT_MS: VarSpec = var(
    "KINESIS_ATTEMPT_TIMEOUT_MS",
    Some("5000"),
    "a whole number of milliseconds from 100 to 600000",
);
pub const KINESIS_CALL_TIMEOUT_MS: VarSpec = var(
    "KINESIS_CALL_TIMEOUT_MS",
    Some("10000"),
    "a whole number of milliseconds from 100 to 600000",
);
pub const DYNAMODB_ATTEMPT_TIMEOUT_MS: VarSpec = var(
    "DYNAMODB_ATTEMPT_TIMEOUT_MS",
    Some("1000"),
    "a whole number of milliseconds from 100 to 600000",
);
pub const DYNAMODB_CALL_TIMEOUT_MS: VarSpec = var(
    "DYNAMODB_CALL_TIMEOUT_MS",
    Some("2500"),
    "a whole number of milliseconds from 100 to 600000",
);

// ---- producer ----
pub const PRODUCER_INTERVAL_MS: VarSpec = var(
    "PRODUCER_INTERVAL_MS",
    Some("1000"),
    "a whole number of milliseconds, 0 (as fast as possible) or more",
);
pub const PRODUCER_COUNT: VarSpec = var(
    "PRODUCER_COUNT",
    None,
    "unset (run until stopped) or a whole number of messages, 1 or more",
);
pub const PRODUCER_PARTITION_KEY: VarSpec = var(
    "PRODUCER_PARTITION_KEY",
    None,
    "unset (each message's Id) or a key of 1-256 characters",
);
pub const PRODUCER_MESSAGES_PER_TICK: VarSpec = var(
    "PRODUCER_MESSAGES_PER_TICK",
    Some("1"),
    "a whole number from 1 to 100000",
);
pub const PRODUCER_LINGER_MS: VarSpec = var(
    "PRODUCER_LINGER_MS",
    Some("100"),
    "a whole number of milliseconds, 0 or more",
);
pub const PRODUCER_MAX_BUFFERED_RECORDS: VarSpec = var(
    "PRODUCER_MAX_BUFFERED_RECORDS",
    Some("100000"),
    "a whole number of records, 1 or more",
);
pub const PRODUCER_MAX_BUFFERED_BYTES: VarSpec = var(
    "PRODUCER_MAX_BUFFERED_BYTES",
    Some("67108864"),
    "a whole number of bytes, 1048576 (1 MiB) or more",
);
pub const PRODUCER_MAX_IN_FLIGHT: VarSpec = var(
    "PRODUCER_MAX_IN_FLIGHT",
    Some("8"),
    "a whole number of concurrent PutRecords calls from 1 to 256",
);
pub const PRODUCER_RECORD_TTL_MS: VarSpec = var(
    "PRODUCER_RECORD_TTL_MS",
    Some("30000"),
    "a whole number of milliseconds, 1 or more",
);
pub const PRODUCER_SOURCE: VarSpec = var(
    "PRODUCER_SOURCE",
    None,
    "unset (no `Source` field) or any text put in each message's `Source`",
);
pub const PRODUCER_AGGREGATION: VarSpec = var(
    "PRODUCER_AGGREGATION",
    Some("false"),
    "`true` (pack records into KPL aggregated records) or `false`",
);
pub const PRODUCER_AGGREGATION_MAX_BYTES: VarSpec = var(
    "PRODUCER_AGGREGATION_MAX_BYTES",
    Some("51200"),
    "a whole number of bytes from 1024 to 1048000",
);
pub const PRODUCER_SHARD_RATE_LIMIT: VarSpec = var(
    "PRODUCER_SHARD_RATE_LIMIT",
    Some("100"),
    "a percentage from 0 (no limit) to 1000 of each shard's 1,000 records and 1 MiB a second",
);
pub const PRODUCER_SHUTDOWN_TIMEOUT_MS: VarSpec = var(
    "PRODUCER_SHUTDOWN_TIMEOUT_MS",
    Some("4000"),
    "a whole number of milliseconds, 0 or more",
);

// ---- consumer ----
pub const CONSUMER_INITIAL_POSITION: VarSpec = var(
    "CONSUMER_INITIAL_POSITION",
    Some("TRIM_HORIZON"),
    "`TRIM_HORIZON`, `LATEST` or `AT_TIMESTAMP`",
);
pub const CONSUMER_START_TIMESTAMP: VarSpec = var(
    "CONSUMER_START_TIMESTAMP",
    None,
    "an RFC 3339 time such as 2026-01-31T12:00:00Z (required with AT_TIMESTAMP)",
);
pub const CONSUMER_POLL_INTERVAL_MS: VarSpec = var(
    "CONSUMER_POLL_INTERVAL_MS",
    Some("1000"),
    "a whole number of milliseconds from 200 to 60000",
);
pub const CONSUMER_MAX_RECORDS: VarSpec = var(
    "CONSUMER_MAX_RECORDS",
    Some("10000"),
    "a whole number from 1 to 10000",
);
pub const CONSUMER_SHARD_SYNC_MS: VarSpec = var(
    "CONSUMER_SHARD_SYNC_MS",
    Some("10000"),
    "a whole number of milliseconds from 100 to 3600000",
);

pub const CONSUMER_MODE: VarSpec = var(
    "CONSUMER_MODE",
    Some("polling"),
    "`polling` (one process reads every shard, no checkpoints) or `leased` (shards shared among workers through a DynamoDB lease table, with checkpoints)",
);
pub const CONSUMER_APPLICATION_NAME: VarSpec = var(
    "CONSUMER_APPLICATION_NAME",
    Some("demo-consumer"),
    "a DynamoDB table name for the leases (3-255 characters of a-z, A-Z, 0-9, _ . -)",
);
pub const CONSUMER_WORKER_ID: VarSpec = var(
    "CONSUMER_WORKER_ID",
    None,
    "unset (host name plus a random suffix) or 1-256 characters without spaces",
);
pub const CONSUMER_FAILOVER_MS: VarSpec = var(
    "CONSUMER_FAILOVER_MS",
    Some("10000"),
    "a whole number of milliseconds from 300 to 3600000",
);
pub const CONSUMER_HANDOFF_TIMEOUT_MS: VarSpec = var(
    "CONSUMER_HANDOFF_TIMEOUT_MS",
    Some("30000"),
    "0 (a lease taken from a live worker starts at once, without a graceful handoff) or a whole number of milliseconds from 1000 to 3600000",
);
pub const CONSUMER_LEASE_CLEANUP_MS: VarSpec = var(
    "CONSUMER_LEASE_CLEANUP_MS",
    Some("60000"),
    "a whole number of milliseconds from 100 to 86400000",
);
pub const CONSUMER_COMPLETED_LEASE_CLEANUP_MS: VarSpec = var(
    "CONSUMER_COMPLETED_LEASE_CLEANUP_MS",
    Some("300000"),
    "a whole number of milliseconds from 100 to 86400000",
);
pub const CONSUMER_GARBAGE_LEASE_CLEANUP_MS: VarSpec = var(
    "CONSUMER_GARBAGE_LEASE_CLEANUP_MS",
    Some("1800000"),
    "a whole number of milliseconds from 100 to 86400000",
);
pub const CONSUMER_MAX_LEASES_PER_WORKER: VarSpec = var(
    "CONSUMER_MAX_LEASES_PER_WORKER",
    None,
    "unset (no limit) or a whole number of leases from 1 to 100000",
);
pub const CONSUMER_RETRIEVAL: VarSpec = var(
    "CONSUMER_RETRIEVAL",
    Some("polling"),
    "`polling` (GetRecords, the shard's read limits shared with every other consumer) or `fanout` (enhanced fan-out: SubscribeToShard pushes records to a registered stream consumer)",
);
pub const CONSUMER_EFO_NAME: VarSpec = var(
    "CONSUMER_EFO_NAME",
    None,
    "unset (CONSUMER_APPLICATION_NAME) or a stream consumer name of 1-128 characters of a-z, A-Z, 0-9, _ . -",
);
pub const CONSUMER_EFO_RENEW_MS: VarSpec = var(
    "CONSUMER_EFO_RENEW_MS",
    Some("290000"),
    "a whole number of milliseconds from 1000 to 300000 (a subscription lasts 5 minutes)",
);
pub const CONSUMER_EFO_IDLE_MS: VarSpec = var(
    "CONSUMER_EFO_IDLE_MS",
    Some("35000"),
    "a whole number of milliseconds from 1000 to 300000",
);
pub const CONSUMER_RETRY_ATTEMPTS: VarSpec = var(
    "CONSUMER_RETRY_ATTEMPTS",
    Some("-1"),
    "-1 (retry a failing batch until it succeeds) or a whole number of retries from 0 to 10000",
);
pub const CONSUMER_RETRY_BACKOFF_MAX_MS: VarSpec = var(
    "CONSUMER_RETRY_BACKOFF_MAX_MS",
    Some("5000"),
    "a whole number of milliseconds from 200 to 3600000",
);
pub const CONSUMER_BISECT_ON_ERROR: VarSpec = var(
    "CONSUMER_BISECT_ON_ERROR",
    Some("false"),
    "`true` or `false`",
);
pub const CONSUMER_MAX_RECORD_AGE_SECONDS: VarSpec = var(
    "CONSUMER_MAX_RECORD_AGE_SECONDS",
    Some("-1"),
    "-1 (no limit) or a whole number of seconds from 1 to 31536000",
);
pub const CONSUMER_ON_FAILURE: VarSpec = var(
    "CONSUMER_ON_FAILURE",
    Some("stop"),
    "`stop` (keep the lease, stop reading the shard), `skip` (log the records and checkpoint past them) or `stream:NAME` (put them on Kinesis stream NAME, then checkpoint past them)",
);

/// Variables both services read.
pub const SHARED_VARS: &[VarSpec] = &[
    CONFIG_FILE,
    STREAM_NAME,
    STREAM_WAIT_TIMEOUT_MS,
    LOG_FORMAT,
    HTTP_ADDR,
    KINESIS_ATTEMPT_TIMEOUT_MS,
    KINESIS_CALL_TIMEOUT_MS,
    DYNAMODB_ATTEMPT_TIMEOUT_MS,
    DYNAMODB_CALL_TIMEOUT_MS,
];

/// Variables only the producer reads.
pub const PRODUCER_VARS: &[VarSpec] = &[
    PRODUCER_INTERVAL_MS,
    PRODUCER_COUNT,
    PRODUCER_PARTITION_KEY,
    PRODUCER_MESSAGES_PER_TICK,
    PRODUCER_LINGER_MS,
    PRODUCER_MAX_BUFFERED_RECORDS,
    PRODUCER_MAX_BUFFERED_BYTES,
    PRODUCER_MAX_IN_FLIGHT,
    PRODUCER_RECORD_TTL_MS,
    PRODUCER_SOURCE,
    PRODUCER_AGGREGATION,
    PRODUCER_AGGREGATION_MAX_BYTES,
    PRODUCER_SHARD_RATE_LIMIT,
    PRODUCER_SHUTDOWN_TIMEOUT_MS,
];

/// Variables only the consumer reads.
pub const CONSUMER_VARS: &[VarSpec] = &[
    CONSUMER_INITIAL_POSITION,
    CONSUMER_START_TIMESTAMP,
    CONSUMER_POLL_INTERVAL_MS,
    CONSUMER_MAX_RECORDS,
    CONSUMER_SHARD_SYNC_MS,
    CONSUMER_MODE,
    CONSUMER_APPLICATION_NAME,
    CONSUMER_WORKER_ID,
    CONSUMER_FAILOVER_MS,
    CONSUMER_HANDOFF_TIMEOUT_MS,
    CONSUMER_LEASE_CLEANUP_MS,
    CONSUMER_COMPLETED_LEASE_CLEANUP_MS,
    CONSUMER_GARBAGE_LEASE_CLEANUP_MS,
    CONSUMER_MAX_LEASES_PER_WORKER,
    CONSUMER_RETRIEVAL,
    CONSUMER_EFO_NAME,
    CONSUMER_EFO_RENEW_MS,
    CONSUMER_EFO_IDLE_MS,
    CONSUMER_RETRY_ATTEMPTS,
    CONSUMER_RETRY_BACKOFF_MAX_MS,
    CONSUMER_BISECT_ON_ERROR,
    CONSUMER_MAX_RECORD_AGE_SECONDS,
    CONSUMER_ON_FAILURE,
];

/// Variables read not by this module but by the AWS SDK's standard chain and by the log filter.
/// They are listed so that the compose test and the README can tell a valid name from a typo.
pub const STANDARD_VARS: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_KINESIS",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_CLOUDWATCH",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
    "RUST_LOG",
];

/// Which service is loading its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Producer,
    Consumer,
}

impl Service {
    /// Every variable this service reads itself (shared ones first).
    pub fn vars(self) -> Vec<VarSpec> {
        let own = match self {
            Service::Producer => PRODUCER_VARS,
            Service::Consumer => CONSUMER_VARS,
        };
        SHARED_VARS.iter().chain(own).copied().collect()
    }
}

/// A setting that could not be accepted. Its `Display` is the one line a user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for {var}: {value:?} (allowed: {allowed})")]
    Invalid {
        var: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("{var} is required when {because} (allowed: {allowed})")]
    Missing {
        var: &'static str,
        because: String,
        allowed: &'static str,
    },
    #[error("CONFIG_FILE {path:?} could not be read: {reason}")]
    File { path: PathBuf, reason: String },
}

impl ConfigError {
    /// The variable this error is about.
    pub fn var(&self) -> &'static str {
        match self {
            ConfigError::Invalid { var, .. } | ConfigError::Missing { var, .. } => var,
            ConfigError::File { .. } => CONFIG_FILE.name,
        }
    }
}

/// Raw string values after layering defaults, the optional file and the environment.
#[derive(Debug, Clone, Default)]
pub struct RawConfig {
    values: HashMap<String, String>,
}

impl RawConfig {
    /// Layers the file named by `CONFIG_FILE` (if set) under the given environment.
    /// Empty values count as unset, so `PRODUCER_COUNT=` in a compose file means "forever".
    pub fn load<I, K, V>(env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env: HashMap<String, String> = env
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let mut values = match env.get(CONFIG_FILE.name) {
            Some(path) => read_file(PathBuf::from(path))?,
            None => HashMap::new(),
        };
        values.extend(env);
        Ok(Self { values })
    }

    /// Loads the process environment. A variable of `service` whose value is not valid UTF-8 is
    /// a [`ConfigError::Invalid`] (shown with its bytes decoded lossily) instead of a panic;
    /// other variables that are not UTF-8 are none of our business and are ignored.
    pub fn from_env(service: Service) -> Result<Self, ConfigError> {
        let ours = service.vars();
        let mut env = Vec::new();
        for (key, value) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            match value.into_string() {
                Ok(value) => env.push((key.to_string(), value)),
                Err(bad) => {
                    if let Some(spec) = ours.iter().find(|v| v.name == key) {
                        return Err(ConfigError::Invalid {
                            var: spec.name,
                            value: format!("{} (not valid UTF-8)", bad.to_string_lossy()),
                            allowed: spec.allowed,
                        });
                    }
                }
            }
        }
        Self::load(env)
    }

    /// The value of `spec`, or its default.
    pub fn get(&self, spec: &VarSpec) -> Option<&str> {
        self.values
            .get(spec.name)
            .map(|s| s.trim())
            .or(spec.default)
    }

    fn invalid(&self, spec: &VarSpec, value: &str) -> ConfigError {
        ConfigError::Invalid {
            var: spec.name,
            value: value.to_string(),
            allowed: spec.allowed,
        }
    }

    /// Parses `spec` as a number within `min..=max`; `None` when unset with no default.
    pub fn number<T>(&self, spec: &VarSpec, min: T, max: T) -> Result<Option<T>, ConfigError>
    where
        T: FromStr + PartialOrd + Copy,
    {
        let Some(raw) = self.get(spec) else {
            return Ok(None);
        };
        match raw.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(Some(n)),
            _ => Err(self.invalid(spec, raw)),
        }
    }

    /// Like [`RawConfig::number`] for variables that have a default.
    pub fn required_number<T>(&self, spec: &VarSpec, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Copy,
    {
        self.number(spec, min, max)?
            .ok_or_else(|| ConfigError::Missing {
                var: spec.name,
                because: "it has no default".into(),
                allowed: spec.allowed,
            })
    }

    /// A duration in milliseconds within `min_ms..=max_ms`.
    pub fn millis(
        &self,
        spec: &VarSpec,
        min_ms: u64,
        max_ms: u64,
    ) -> Result<Duration, ConfigError> {
        self.required_number(spec, min_ms, max_ms)
            .map(Duration::from_millis)
    }

    /// A string checked by `valid`.
    pub fn text(
        &self,
        spec: &VarSpec,
        valid: impl Fn(&str) -> bool,
    ) -> Result<Option<String>, ConfigError> {
        match self.get(spec) {
            None => Ok(None),
            Some(v) if valid(v) => Ok(Some(v.to_string())),
            Some(v) => Err(self.invalid(spec, v)),
        }
    }

    /// One of a fixed set of words, compared without regard to case.
    pub fn choice<T: Copy>(&self, spec: &VarSpec, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let raw = self.get(spec).unwrap_or_default();
        choices
            .iter()
            .find(|(word, _)| word.eq_ignore_ascii_case(raw))
            .map(|(_, v)| *v)
            .ok_or_else(|| self.invalid(spec, raw))
    }
}

fn read_file(path: PathBuf) -> Result<HashMap<String, String>, ConfigError> {
    let fail = |reason: String| ConfigError::File {
        path: path.clone(),
        reason,
    };
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let table: HashMap<String, config::Value> = config::Config::builder()
        .add_source(config::File::from(path.as_path()).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| fail(e.to_string()))?;
    table
        .into_iter()
        .map(|(k, v)| {
            let key = k.to_ascii_uppercase();
            v.into_string()
                .map(|s| (key.clone(), s))
                .map_err(|e| fail(format!("key {key}: {e}")))
        })
        .collect()
}

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
    pub stream_name: String,
    pub stream_wait_timeout: Duration,
    pub log_format: LogFormat,
    pub timeouts: AwsTimeouts,
    /// Where the HTTP server (metrics, health, status) listens; `None`: no server.
    pub http_addr: Option<std::net::SocketAddr>,
}

/// Deadlines for AWS calls: one HTTP attempt, and one call with the SDK's retries. A hung
/// connection (accepted, never answered) costs at most the attempt timeout per attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    pub kinesis_attempt: Duration,
    pub kinesis_call: Duration,
    /// Lease-table calls; kept well under the lease renewal interval (a third of
    /// `CONSUMER_FAILOVER_MS`) so a hung call cannot outlive a renewal.
    pub dynamodb_attempt: Duration,
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

/// The producer service's settings.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub shared: SharedSettings,
    /// Time between ticks; zero means "as fast as the buffer accepts".
    pub interval: Duration,
    /// Stop after this many acknowledged messages.
    pub count: Option<u64>,
    pub partition_key: Option<String>,
    pub messages_per_tick: u32,
    pub linger: Duration,
    pub max_buffered_records: usize,
    pub max_buffered_bytes: usize,
    pub max_in_flight: usize,
    pub record_ttl: Duration,
    pub source: Option<String>,
    pub aggregation: bool,
    pub aggregation_max_bytes: usize,
    /// Percentage of each shard's write limits to stay under; 0 = no limiter.
    pub shard_rate_limit_percent: u32,
    pub shutdown_timeout: Duration,
}

impl ProducerSettings {
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            shared: SharedSettings::from_raw(raw)?,
            interval: raw.millis(&PRODUCER_INTERVAL_MS, 0, 86_400_000)?,
            count: raw.number(&PRODUCER_COUNT, 1, u64::MAX)?,
            partition_key: raw.text(&PRODUCER_PARTITION_KEY, |k| {
                (1..=256).contains(&k.chars().count())
            })?,
            messages_per_tick: raw.required_number(&PRODUCER_MESSAGES_PER_TICK, 1, 100_000)?,
            linger: raw.millis(&PRODUCER_LINGER_MS, 0, 60_000)?,
            max_buffered_records: raw.required_number(
                &PRODUCER_MAX_BUFFERED_RECORDS,
                1,
                100_000_000,
            )?,
            max_buffered_bytes: raw.required_number(
                &PRODUCER_MAX_BUFFERED_BYTES,
                1 << 20,
                1 << 40,
            )?,
            max_in_flight: raw.required_number(&PRODUCER_MAX_IN_FLIGHT, 1, 256)?,
            record_ttl: raw.millis(&PRODUCER_RECORD_TTL_MS, 1, 86_400_000)?,
            source: raw.text(&PRODUCER_SOURCE, |_| true)?,
            aggregation: raw.choice(&PRODUCER_AGGREGATION, &[("true", true), ("false", false)])?,
            aggregation_max_bytes: raw.required_number(
                &PRODUCER_AGGREGATION_MAX_BYTES,
                1024,
                1_048_000,
            )?,
            shard_rate_limit_percent: raw.required_number(&PRODUCER_SHARD_RATE_LIMIT, 0, 1000)?,
            shutdown_timeout: raw.millis(&PRODUCER_SHUTDOWN_TIMEOUT_MS, 0, 600_000)?,
        })
    }

    /// Reads the process environment (the only place the producer does).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_raw(&RawConfig::from_env(Service::Producer)?)
    }
}

/// Where a consumer starts reading a shard it has no checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    TrimHorizon,
    Latest,
    AtTimestamp(DateTime<Utc>),
}

impl fmt::Display for InitialPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitialPosition::TrimHorizon => f.write_str("TRIM_HORIZON"),
            InitialPosition::Latest => f.write_str("LATEST"),
            InitialPosition::AtTimestamp(t) => write!(f, "AT_TIMESTAMP {}", t.to_rfc3339()),
        }
    }
}

/// How the consumer shares a stream's shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerMode {
    /// One process reads every shard; no checkpoints.
    Polling,
    /// Workers share the shards through a KCL-compatible DynamoDB lease table.
    Leased,
}

/// The lease settings of [`ConsumerMode::Leased`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Names the DynamoDB lease table (as the Java KCL's application name does).
    pub application_name: String,
    /// `None`: the host name plus a random suffix, chosen at start.
    pub worker_id: Option<String>,
    /// A lease whose counter has not moved for this long is expired and may be taken.
    pub failover: Duration,
    /// `None`: no cap on the leases one worker holds.
    pub max_leases_per_worker: Option<usize>,
    /// How long the new owner of a lease taken from a live worker waits for the old owner to
    /// checkpoint and let go (never less than `failover`); zero: no graceful handoff.
    pub handoff_timeout: Duration,
    /// Lease cleanup: how often it looks, how often it deletes the leases of shards read to
    /// their end, and of shards that no longer exist.
    pub cleanup: LeaseCleanupSettings,
}

/// When leases of finished or vanished shards are deleted (the Java KCL's `LeaseCleanupConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCleanupSettings {
    pub interval: Duration,
    pub completed_interval: Duration,
    pub garbage_interval: Duration,
}

impl LeaseSettings {
    /// How often held leases are renewed, and how often the table is scanned to take leases:
    /// a third of the failover time, as the KCL does, so two renewals may fail before a lease
    /// expires.
    pub fn renew_interval(&self) -> Duration {
        Duration::from_millis((self.failover.as_millis() / 3) as u64)
    }
}

/// How records are fetched from a shard, in either [`ConsumerMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retrieval {
    /// `GetRecords` calls (at most 5 a second per shard, shared with every other consumer).
    Polling,
    /// Enhanced fan-out: `SubscribeToShard` pushes records to a registered stream consumer,
    /// with its own 2 MiB/s per shard.
    FanOut,
}

impl Retrieval {
    pub fn as_str(self) -> &'static str {
        match self {
            Retrieval::Polling => "polling",
            Retrieval::FanOut => "fanout",
        }
    }
}

/// The enhanced fan-out settings of [`Retrieval::FanOut`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOutSettings {
    /// The registered stream consumer's name; workers of one application share it.
    pub consumer_name: String,
    /// A subscription is replaced by a new one (from where it stopped) after this long, before
    /// Kinesis ends it at 5 minutes.
    pub renew_interval: Duration,
    /// A subscription that delivers no event for this long is replaced.
    pub idle_timeout: Duration,
}

/// What happens to a batch of records whose processing keeps failing, in leased mode: modelled on
/// the AWS Lambda Kinesis event source mapping (`MaximumRetryAttempts`,
/// `BisectBatchOnFunctionError`, `MaximumRecordAgeInSeconds`, on-failure destination).
///
/// The default loses nothing: retry for ever (with backoff capped at 5 s), and `Stop` should
/// a limit be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Retries after the first attempt; `None`: until it succeeds.
    pub retry_attempts: Option<u32>,
    /// The longest wait between two attempts (the backoff doubles from 200 ms up to it).
    pub retry_backoff_max: Duration,
    /// Split a failing batch of several records in two halves and process each on its own,
    /// down to the one record that fails (its retries are counted then).
    pub bisect_on_error: bool,
    /// A failing record older than this (by its approximate arrival time) is given up on at
    /// once, without more retries; `None`: no limit.
    pub max_record_age: Option<Duration>,
    /// What happens to the records given up on.
    pub on_failure: OnFailure,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            retry_attempts: None,
            retry_backoff_max: Duration::from_secs(5),
            bisect_on_error: false,
            max_record_age: None,
            on_failure: OnFailure::Stop,
        }
    }
}

/// What happens to records given up on (see [`FailurePolicy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop reading the shard and keep its lease (renewed, so nobody else takes it): nothing
    /// is skipped; the worker logs an error, and its metrics and status page show the shard
    /// stopped until the worker restarts.
    Stop,
    /// Log a warning naming the shard and the records' sequence numbers, and checkpoint past
    /// them.
    Skip,
    /// Put each record, with its metadata, on this Kinesis stream, then checkpoint past them.
    Stream(String),
}

impl OnFailure {
    /// Its name in metrics: `stop`, `skip` or `stream`.
    pub fn action(&self) -> &'static str {
        match self {
            OnFailure::Stop => "stop",
            OnFailure::Skip => "skip",
            OnFailure::Stream(_) => "stream",
        }
    }
}

impl FailurePolicy {
    fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let retry_attempts = match raw.get(&CONSUMER_RETRY_ATTEMPTS) {
            Some("-1") | None => None,
            Some(_) => Some(raw.required_number(&CONSUMER_RETRY_ATTEMPTS, 0u32, 10_000)?),
        };
        let max_record_age = match raw.get(&CONSUMER_MAX_RECORD_AGE_SECONDS) {
            Some("-1") | None => None,
            Some(_) => Some(Duration::from_secs(raw.required_number(
                &CONSUMER_MAX_RECORD_AGE_SECONDS,
                1u64,
                31_536_000,
            )?)),
        };
        let on_failure = match raw.get(&CONSUMER_ON_FAILURE).unwrap_or("stop") {
            word if word.eq_ignore_ascii_case("stop") => OnFailure::Stop,
            word if word.eq_ignore_ascii_case("skip") => OnFailure::Skip,
            word => match word.split_once(':') {
                Some((kind, name))
                    if kind.eq_ignore_ascii_case("stream") && valid_consumer_name(name) =>
                {
                    OnFailure::Stream(name.to_string())
                }
                _ => return Err(raw.invalid(&CONSUMER_ON_FAILURE, word)),
            },
        };
        if on_failure != OnFailure::Stop && retry_attempts.is_none() && max_record_age.is_none() {
            return Err(ConfigError::Missing {
                var: CONSUMER_RETRY_ATTEMPTS.name,
                because: format!(
                    "CONSUMER_ON_FAILURE is {}, which retrying for ever (-1 here and in CONSUMER_MAX_RECORD_AGE_SECONDS) never reaches",
                    raw.get(&CONSUMER_ON_FAILURE).unwrap_or_default()
                ),
                allowed: CONSUMER_RETRY_ATTEMPTS.allowed,
            });
        }
        Ok(Self {
            retry_attempts,
            retry_backoff_max: raw.millis(&CONSUMER_RETRY_BACKOFF_MAX_MS, 200, 3_600_000)?,
            bisect_on_error: raw.choice(
                &CONSUMER_BISECT_ON_ERROR,
                &[("true", true), ("false", false)],
            )?,
            max_record_age,
            on_failure,
        })
    }
}

/// The consumer service's settings.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub shared: SharedSettings,
    pub initial_position: InitialPosition,
    /// Wait after a `GetRecords` that returned nothing.
    pub poll_interval: Duration,
    pub max_records: i32,
    /// How often the shard list is refreshed to notice new shards.
    pub shard_sync_interval: Duration,
    pub mode: ConsumerMode,
    /// Read in every mode so that a bad value is reported even before it matters.
    pub lease: LeaseSettings,
    pub retrieval: Retrieval,
    /// Read whatever `retrieval` is, for the same reason.
    pub fan_out: FanOutSettings,
    /// Leased mode: what happens to a batch whose processing keeps failing.
    pub failure: FailurePolicy,
}

fn valid_table_name(s: &str) -> bool {
    (3..=255).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_consumer_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_worker_id(s: &str) -> bool {
    (1..=256).contains(&s.chars().count()) && !s.chars().any(char::is_whitespace)
}

#[derive(Clone, Copy)]
enum PositionWord {
    TrimHorizon,
    Latest,
    AtTimestamp,
}

impl ConsumerSettings {
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let word = raw.choice(
            &CONSUMER_INITIAL_POSITION,
            &[
                ("TRIM_HORIZON", PositionWord::TrimHorizon),
                ("LATEST", PositionWord::Latest),
                ("AT_TIMESTAMP", PositionWord::AtTimestamp),
            ],
        )?;
        let timestamp = match raw.get(&CONSUMER_START_TIMESTAMP) {
            None => None,
            Some(v) => Some(
                DateTime::parse_from_rfc3339(v)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| raw.invalid(&CONSUMER_START_TIMESTAMP, v))?,
            ),
        };
        let initial_position = match (word, timestamp) {
            (PositionWord::TrimHorizon, _) => InitialPosition::TrimHorizon,
            (PositionWord::Latest, _) => InitialPosition::Latest,
            (PositionWord::AtTimestamp, Some(t)) => InitialPosition::AtTimestamp(t),
            (PositionWord::AtTimestamp, None) => {
                return Err(ConfigError::Missing {
                    var: CONSUMER_START_TIMESTAMP.name,
                    because: "CONSUMER_INITIAL_POSITION is AT_TIMESTAMP".into(),
                    allowed: CONSUMER_START_TIMESTAMP.allowed,
                })
            }
        };
        let application_name = raw
            .text(&CONSUMER_APPLICATION_NAME, valid_table_name)?
            .unwrap_or_default();
        let retrieval = raw.choice(
            &CONSUMER_RETRIEVAL,
            &[
                ("polling", Retrieval::Polling),
                ("fanout", Retrieval::FanOut),
            ],
        )?;
        let consumer_name = match raw.text(&CONSUMER_EFO_NAME, valid_consumer_name)? {
            Some(name) => name,
            // A table name is 3-255 characters, a consumer name at most 128: only an error
            // when the name is used.
            None if valid_consumer_name(&application_name) || retrieval == Retrieval::Polling => {
                application_name.clone()
            }
            None => {
                return Err(ConfigError::Missing {
                    var: CONSUMER_EFO_NAME.name,
                    because: format!(
                        "CONSUMER_APPLICATION_NAME {application_name:?} is longer than a stream consumer name may be"
                    ),
                    allowed: CONSUMER_EFO_NAME.allowed,
                })
            }
        };
        Ok(Self {
            shared: SharedSettings::from_raw(raw)?,
            initial_position,
            poll_interval: raw.millis(&CONSUMER_POLL_INTERVAL_MS, 200, 60_000)?,
            max_records: raw.required_number(&CONSUMER_MAX_RECORDS, 1, 10_000)?,
            shard_sync_interval: raw.millis(&CONSUMER_SHARD_SYNC_MS, 100, 3_600_000)?,
            mode: raw.choice(
                &CONSUMER_MODE,
                &[
                    ("polling", ConsumerMode::Polling),
                    ("leased", ConsumerMode::Leased),
                ],
            )?,
            lease: LeaseSettings {
                application_name,
                worker_id: raw.text(&CONSUMER_WORKER_ID, valid_worker_id)?,
                failover: raw.millis(&CONSUMER_FAILOVER_MS, 300, 3_600_000)?,
                max_leases_per_worker: raw.number(&CONSUMER_MAX_LEASES_PER_WORKER, 1, 100_000)?,
                handoff_timeout: match raw.millis(&CONSUMER_HANDOFF_TIMEOUT_MS, 0, 3_600_000)? {
                    t if !t.is_zero() && t < Duration::from_millis(1000) => {
                        return Err(
                            raw.invalid(&CONSUMER_HANDOFF_TIMEOUT_MS, &t.as_millis().to_string())
                        )
                    }
                    t => t,
                },
                cleanup: LeaseCleanupSettings {
                    interval: raw.millis(&CONSUMER_LEASE_CLEANUP_MS, 100, 86_400_000)?,
                    completed_interval: raw.millis(
                        &CONSUMER_COMPLETED_LEASE_CLEANUP_MS,
                        100,
                        86_400_000,
                    )?,
                    garbage_interval: raw.millis(
                        &CONSUMER_GARBAGE_LEASE_CLEANUP_MS,
                        100,
                        86_400_000,
                    )?,
                },
            },
            retrieval,
            fan_out: FanOutSettings {
                consumer_name,
                renew_interval: raw.millis(&CONSUMER_EFO_RENEW_MS, 1000, 300_000)?,
                idle_timeout: raw.millis(&CONSUMER_EFO_IDLE_MS, 1000, 300_000)?,
            },
            failure: FailurePolicy::from_raw(raw)?,
        })
    }

    /// Reads the process environment (the only place the consumer does).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_raw(&RawConfig::from_env(Service::Consumer)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawConfig {
        RawConfig::load(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let p = ProducerSettings::from_raw(&raw(&[])).unwrap();
        assert_eq!(p.shared.stream_name, "demo-stream");
        assert_eq!(p.interval, Duration::from_millis(1000));
        assert_eq!(p.count, None);
        assert_eq!(p.partition_key, None);
        assert_eq!(p.shared.log_format, LogFormat::Text);
        assert!(!p.aggregation);
        assert_eq!(p.aggregation_max_bytes, 51_200);
        let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
        assert_eq!(c.initial_position, InitialPosition::TrimHorizon);
        assert_eq!(c.max_records, 10_000);
    }

    #[test]
    fn environment_values_are_parsed() {
        let p = ProducerSettings::from_raw(&raw(&[
            ("STREAM_NAME", "orders"),
            ("PRODUCER_INTERVAL_MS", "0"),
            ("PRODUCER_COUNT", "25"),
            ("PRODUCER_PARTITION_KEY", "k1"),
            ("LOG_FORMAT", "JSON"),
        ]))
        .unwrap();
        assert_eq!(p.shared.stream_name, "orders");
        assert_eq!(p.interval, Duration::ZERO);
        assert_eq!(p.count, Some(25));
        assert_eq!(p.partition_key.as_deref(), Some("k1"));
        assert_eq!(p.shared.log_format, LogFormat::Json);
    }

    #[test]
    fn empty_value_means_unset() {
        let p = ProducerSettings::from_raw(&raw(&[("PRODUCER_COUNT", "")])).unwrap();
        assert_eq!(p.count, None);
    }

    #[test]
    fn bad_number_names_variable_value_and_allowed_values() {
        let err =
            ProducerSettings::from_raw(&raw(&[("PRODUCER_INTERVAL_MS", "soon")])).unwrap_err();
        let line = err.to_string();
        assert_eq!(err.var(), "PRODUCER_INTERVAL_MS");
        assert!(line.contains("\"soon\""), "{line}");
        assert!(line.contains("milliseconds"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn out_of_range_and_zero_count_are_rejected() {
        let err = ProducerSettings::from_raw(&raw(&[("PRODUCER_COUNT", "0")])).unwrap_err();
        assert_eq!(err.var(), "PRODUCER_COUNT");
        let err =
            ConsumerSettings::from_raw(&raw(&[("CONSUMER_MAX_RECORDS", "10001")])).unwrap_err();
        assert_eq!(err.var(), "CONSUMER_MAX_RECORDS");
        let err =
            ConsumerSettings::from_raw(&raw(&[("CONSUMER_POLL_INTERVAL_MS", "50")])).unwrap_err();
        assert_eq!(err.var(), "CONSUMER_POLL_INTERVAL_MS");
    }

    #[test]
    fn bad_stream_name_and_log_format_are_rejected() {
        let err = ConsumerSettings::from_raw(&raw(&[("STREAM_NAME", "a b")])).unwrap_err();
        assert_eq!(err.var(), "STREAM_NAME");
        let err = ConsumerSettings::from_raw(&raw(&[("LOG_FORMAT", "xml")])).unwrap_err();
        assert_eq!(err.var(), "LOG_FORMAT");
    }

    #[test]
    fn initial_positions() {
        let c =
            ConsumerSettings::from_raw(&raw(&[("CONSUMER_INITIAL_POSITION", "latest")])).unwrap();
        assert_eq!(c.initial_position, InitialPosition::Latest);
        let c = ConsumerSettings::from_raw(&raw(&[
            ("CONSUMER_INITIAL_POSITION", "AT_TIMESTAMP"),
            ("CONSUMER_START_TIMESTAMP", "2026-01-31T12:00:00Z"),
        ]))
        .unwrap();
        assert!(matches!(
            c.initial_position,
            InitialPosition::AtTimestamp(_)
        ));
        let err =
            ConsumerSettings::from_raw(&raw(&[("CONSUMER_INITIAL_POSITION", "AT_TIMESTAMP")]))
                .unwrap_err();
        assert_eq!(err.var(), "CONSUMER_START_TIMESTAMP");
        let err = ConsumerSettings::from_raw(&raw(&[("CONSUMER_INITIAL_POSITION", "START")]))
            .unwrap_err();
        assert_eq!(err.var(), "CONSUMER_INITIAL_POSITION");
        let err = ConsumerSettings::from_raw(&raw(&[
            ("CONSUMER_INITIAL_POSITION", "AT_TIMESTAMP"),
            ("CONSUMER_START_TIMESTAMP", "yesterday"),
        ]))
        .unwrap_err();
        assert_eq!(err.var(), "CONSUMER_START_TIMESTAMP");
    }

    #[test]
    fn lease_settings_defaults_and_values() {
        let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
        assert_eq!(c.mode, ConsumerMode::Polling);
        assert_eq!(c.lease.application_name, "demo-consumer");
        assert_eq!(c.lease.worker_id, None);
        assert_eq!(c.lease.failover, Duration::from_secs(10));
        assert_eq!(c.lease.renew_interval(), Duration::from_millis(3333));
        assert_eq!(c.lease.max_leases_per_worker, None);
        let c = ConsumerSettings::from_raw(&raw(&[
            ("CONSUMER_MODE", "Leased"),
            ("CONSUMER_APPLICATION_NAME", "orders-app"),
            ("CONSUMER_WORKER_ID", "host-1"),
            ("CONSUMER_FAILOVER_MS", "3000"),
            ("CONSUMER_MAX_LEASES_PER_WORKER", "4"),
        ]))
        .unwrap();
        assert_eq!(c.mode, ConsumerMode::Leased);
        assert_eq!(c.lease.application_name, "orders-app");
        assert_eq!(c.lease.worker_id.as_deref(), Some("host-1"));
        assert_eq!(c.lease.renew_interval(), Duration::from_secs(1));
        assert_eq!(c.lease.max_leases_per_worker, Some(4));
    }

    #[test]
    fn handoff_and_cleanup_settings_defaults_and_values() {
        let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
        assert_eq!(c.lease.handoff_timeout, Duration::from_secs(30));
        assert_eq!(
            c.lease.cleanup,
            LeaseCleanupSettings {
                interval: Duration::from_secs(60),
                completed_interval: Duration::from_secs(300),
                garbage_interval: Duration::from_secs(1800),
            }
        );
        let c = ConsumerSettings::from_raw(&raw(&[
            ("CONSUMER_HANDOFF_TIMEOUT_MS", "0"),
            ("CONSUMER_LEASE_CLEANUP_MS", "500"),
            ("CONSUMER_COMPLETED_LEASE_CLEANUP_MS", "1000"),
            ("CONSUMER_GARBAGE_LEASE_CLEANUP_MS", "2000"),
        ]))
        .unwrap();
        assert_eq!(c.lease.handoff_timeout, Duration::ZERO);
        assert_eq!(c.lease.cleanup.interval, Duration::from_millis(500));
        assert_eq!(c.lease.cleanup.completed_interval, Duration::from_secs(1));
        assert_eq!(c.lease.cleanup.garbage_interval, Duration::from_secs(2));
        for (var, value) in [
            ("CONSUMER_HANDOFF_TIMEOUT_MS", "500"),
            ("CONSUMER_HANDOFF_TIMEOUT_MS", "soon"),
            ("CONSUMER_LEASE_CLEANUP_MS", "0"),
            ("CONSUMER_COMPLETED_LEASE_CLEANUP_MS", "-1"),
            ("CONSUMER_GARBAGE_LEASE_CLEANUP_MS", "99999999999"),
        ] {
            let err = ConsumerSettings::from_raw(&raw(&[(var, value)])).unwrap_err();
            assert_eq!(err.var(), var);
            let line = err.to_string();
            assert!(line.contains(value) && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn bad_lease_settings_name_their_variable() {
        for (var, value) in [
            ("CONSUMER_MODE", "kcl"),
            ("CONSUMER_APPLICATION_NAME", "ab"),
            ("CONSUMER_APPLICATION_NAME", "a/b/c"),
            ("CONSUMER_WORKER_ID", "two words"),
            ("CONSUMER_FAILOVER_MS", "100"),
            ("CONSUMER_MAX_LEASES_PER_WORKER", "0"),
        ] {
            let err = ConsumerSettings::from_raw(&raw(&[(var, value)])).unwrap_err();
            assert_eq!(err.var(), var);
            let line = err.to_string();
            assert!(line.contains(value) && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn retrieval_settings_defaults_and_values() {
        let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
        assert_eq!(c.retrieval, Retrieval::Polling);
        assert_eq!(c.fan_out.consumer_name, "demo-consumer");
        assert_eq!(c.fan_out.renew_interval, Duration::from_millis(290_000));
        assert_eq!(c.fan_out.idle_timeout, Duration::from_secs(35));
        let c = ConsumerSettings::from_raw(&raw(&[
            ("CONSUMER_RETRIEVAL", "FanOut"),
            ("CONSUMER_APPLICATION_NAME", "orders-app"),
            ("CONSUMER_EFO_RENEW_MS", "3000"),
            ("CONSUMER_EFO_IDLE_MS", "2000"),
        ]))
        .unwrap();
        assert_eq!(c.retrieval, Retrieval::FanOut);
        assert_eq!(
            c.fan_out.consumer_name, "orders-app",
            "the application name"
        );
        assert_eq!(c.fan_out.renew_interval, Duration::from_secs(3));
        assert_eq!(c.fan_out.idle_timeout, Duration::from_secs(2));
        let c = ConsumerSettings::from_raw(&raw(&[("CONSUMER_EFO_NAME", "efo.1")])).unwrap();
        assert_eq!(c.fan_out.consumer_name, "efo.1");
    }

    #[test]
    fn bad_retrieval_settings_name_their_variable() {
        for (var, value) in [
            ("CONSUMER_RETRIEVAL", "push"),
            ("CONSUMER_EFO_NAME", "a/b"),
            ("CONSUMER_EFO_RENEW_MS", "999"),
            ("CONSUMER_EFO_RENEW_MS", "300001"),
            ("CONSUMER_EFO_IDLE_MS", "soon"),
        ] {
            let err = ConsumerSettings::from_raw(&raw(&[(var, value)])).unwrap_err();
            assert_eq!(err.var(), var);
            let line = err.to_string();
            assert!(line.contains(value) && !line.contains('\n'), "{line}");
        }
        // An application name too long to be a consumer name needs CONSUMER_EFO_NAME, with
        // fan-out only.
        let long = "a".repeat(129);
        assert!(ConsumerSettings::from_raw(&raw(&[("CONSUMER_APPLICATION_NAME", &long)])).is_ok());
        let err = ConsumerSettings::from_raw(&raw(&[
            ("CONSUMER_APPLICATION_NAME", &long),
            ("CONSUMER_RETRIEVAL", "fanout"),
        ]))
        .unwrap_err();
        assert_eq!(err.var(), "CONSUMER_EFO_NAME");
        let c = ConsumerSettings::from_raw(&raw(&[
            ("CONSUMER_APPLICATION_NAME", &long),
            ("CONSUMER_EFO_NAME", "short"),
        ]))
        .unwrap();
        assert_eq!(c.lease.application_name, long);
    }

    #[test]
    fn file_values_sit_under_the_environment() {
        let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("producer.toml");
        std::fs::write(
            &file,
            "stream_name = \"from-file\"\nPRODUCER_COUNT = 7\nPRODUCER_INTERVAL_MS = 5\n",
        )
        .unwrap();
        let p = ProducerSettings::from_raw(&raw(&[
            ("CONFIG_FILE", file.to_str().unwrap()),
            ("PRODUCER_INTERVAL_MS", "9"),
        ]))
        .unwrap();
        assert_eq!(p.shared.stream_name, "from-file");
        assert_eq!(p.count, Some(7));
        assert_eq!(p.interval, Duration::from_millis(9));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_config_file_is_an_error_naming_config_file() {
        let err = RawConfig::load([("CONFIG_FILE", "/nonexistent/x.toml")]).unwrap_err();
        assert_eq!(err.var(), "CONFIG_FILE");
    }

    #[test]
    fn the_failure_policy_defaults_to_losing_nothing_and_reads_every_variable() {
        let c = ConsumerSettings::from_raw(&raw(&[])).unwrap();
        assert_eq!(c.failure, FailurePolicy::default());
        assert_eq!(c.failure.on_failure, OnFailure::Stop);
        assert_eq!(c.failure.retry_attempts, None);
        let c = ConsumerSettings::from_raw(&raw(&[
            ("CONSUMER_RETRY_ATTEMPTS", "3"),
            ("CONSUMER_RETRY_BACKOFF_MAX_MS", "1000"),
            ("CONSUMER_BISECT_ON_ERROR", "true"),
            ("CONSUMER_MAX_RECORD_AGE_SECONDS", "60"),
            ("CONSUMER_ON_FAILURE", "stream:demo-failures"),
        ]))
        .unwrap();
        assert_eq!(
            c.failure,
            FailurePolicy {
                retry_attempts: Some(3),
                retry_backoff_max: Duration::from_secs(1),
                bisect_on_error: true,
                max_record_age: Some(Duration::from_secs(60)),
                on_failure: OnFailure::Stream("demo-failures".into()),
            }
        );
        let skip = ConsumerSettings::from_raw(&raw(&[
            ("CONSUMER_MAX_RECORD_AGE_SECONDS", "5"),
            ("CONSUMER_ON_FAILURE", "skip"),
        ]))
        .unwrap();
        assert_eq!(skip.failure.on_failure, OnFailure::Skip);
        for (var, value) in [
            ("CONSUMER_RETRY_ATTEMPTS", "-2"),
            ("CONSUMER_RETRY_ATTEMPTS", "many"),
            ("CONSUMER_RETRY_BACKOFF_MAX_MS", "10"),
            ("CONSUMER_BISECT_ON_ERROR", "yes"),
            ("CONSUMER_MAX_RECORD_AGE_SECONDS", "0"),
            ("CONSUMER_ON_FAILURE", "drop"),
            ("CONSUMER_ON_FAILURE", "stream:"),
            ("CONSUMER_ON_FAILURE", "stream:bad name"),
        ] {
            let err = ConsumerSettings::from_raw(&raw(&[(var, value)])).expect_err(value);
            assert_eq!(err.var(), var, "{value}");
        }
        // Skipping while retrying for ever would never skip: said at start.
        let err = ConsumerSettings::from_raw(&raw(&[("CONSUMER_ON_FAILURE", "skip")])).unwrap_err();
        assert_eq!(err.var(), "CONSUMER_RETRY_ATTEMPTS");
        assert!(
            err.to_string().contains("CONSUMER_ON_FAILURE is skip"),
            "{err}"
        );
    }

    #[test]
    fn every_declared_name_is_unique() {
        let mut names: Vec<_> = SHARED_VARS
            .iter()
            .chain(PRODUCER_VARS)
            .chain(CONSUMER_VARS)
            .map(|v| v.name)
            .chain(STANDARD_VARS.iter().copied())
            .collect();
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before);
    }
}
