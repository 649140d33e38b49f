//! The variable registry: every variable the services read, as a [`VarSpec`], and which
//! service reads which.

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
pub const CONSUMER_LEASE_ASSIGNMENT: VarSpec = var(
    "CONSUMER_LEASE_ASSIGNMENT",
    Some("count"),
    "count (each worker takes and steals towards an even lease count) or leader (KCL 3.x: elect a leader, which assigns leases by load; the others follow)",
);
pub const CONSUMER_LEADER_LEASE_DURATION_MS: VarSpec = var(
    "CONSUMER_LEADER_LEASE_DURATION_MS",
    Some("120000"),
    "a whole number of milliseconds from 1000 to 3600000, more than CONSUMER_LEADER_HEARTBEAT_MS",
);
pub const CONSUMER_LEADER_HEARTBEAT_MS: VarSpec = var(
    "CONSUMER_LEADER_HEARTBEAT_MS",
    Some("30000"),
    "a whole number of milliseconds from 100 to 3600000, less than CONSUMER_LEADER_LEASE_DURATION_MS",
);
pub const CONSUMER_WORKER_METRICS_INTERVAL_MS: VarSpec = var(
    "CONSUMER_WORKER_METRICS_INTERVAL_MS",
    Some("30000"),
    "a whole number of milliseconds from 1000 to 3600000 (a Java KCL leader counts a worker as gone after twice its own interval, 30 s by default)",
);
pub const CONSUMER_WORKER_CPU_SOURCE: VarSpec = var(
    "CONSUMER_WORKER_CPU_SOURCE",
    Some("auto"),
    "`auto` (the cgroup v2, else cgroup v1, else /proc/stat), `cgroup-v2`, `cgroup-v1`, `proc`, `none` (publish no CPU: balanced by throughput) or `kcl` (as the Java KCL 3.x: the cgroup on ECS or EKS, /proc/stat on EC2, none elsewhere)",
);
pub const CONSUMER_WORKER_METRICS_TABLE: VarSpec = var(
    "CONSUMER_WORKER_METRICS_TABLE",
    None,
    "unset (<application>-WorkerMetricStats) or a DynamoDB table name (3-255 characters of a-z, A-Z, 0-9, _ . -): where a KCL 3.0-3.4 application keeps its worker metrics",
);
pub const CONSUMER_COORDINATOR_STATE_TABLE: VarSpec = var(
    "CONSUMER_COORDINATOR_STATE_TABLE",
    None,
    "unset (<application>-CoordinatorState) or a DynamoDB table name (3-255 characters of a-z, A-Z, 0-9, _ . -): a KCL 3.0-3.4 application's coordinator state (leader lock, table migration record)",
);
pub const CONSUMER_MIGRATE_TO_LEASE_TABLE: VarSpec = var(
    "CONSUMER_MIGRATE_TO_LEASE_TABLE",
    Some("false"),
    "`true` (phase 2 of the KCL 3.5 table migration: write worker metrics into the lease table) or `false`",
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
    CONSUMER_LEASE_ASSIGNMENT,
    CONSUMER_LEADER_LEASE_DURATION_MS,
    CONSUMER_LEADER_HEARTBEAT_MS,
    CONSUMER_WORKER_METRICS_INTERVAL_MS,
    CONSUMER_WORKER_CPU_SOURCE,
    CONSUMER_WORKER_METRICS_TABLE,
    CONSUMER_COORDINATOR_STATE_TABLE,
    CONSUMER_MIGRATE_TO_LEASE_TABLE,
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
/// They are listed so that the compose test and docs/configuration.md can tell a valid name from
/// a typo.
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
