//! The consumer service's settings.

use super::*;

/// Where a consumer starts reading a shard it has no checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    /// `TRIM_HORIZON`: the oldest record the stream keeps.
    TrimHorizon,
    /// `LATEST`: records written after the shard is first read.
    Latest,
    /// `AT_TIMESTAMP`: records that arrived at or after this time (`CONSUMER_START_TIMESTAMP`).
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
    /// Who decides which worker holds which lease.
    pub assignment: LeaseAssignment,
    /// Lease cleanup: how often it looks, how often it deletes the leases of shards read to
    /// their end, and of shards that no longer exist.
    pub cleanup: LeaseCleanupSettings,
    /// The worker-metrics item every worker publishes (the Java KCL 3.x's).
    pub worker_metrics: WorkerMetricsSettings,
}

/// Where a worker's CPU utilisation is read from. More sources may come within a version
/// series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuSource {
    /// The first that can be read of cgroup v2, cgroup v1, `/proc/stat`.
    Auto,
    /// cgroup v2: `cpu.stat`'s `usage_usec` against the limit in `cpu.max`.
    CgroupV2,
    /// cgroup v1: `cpuacct.usage` against the CFS quota and period.
    CgroupV1,
    /// The whole machine's `/proc/stat`.
    ProcStat,
    /// None: a "default" worker, balanced by its leases' throughput.
    None,
    /// As the Java KCL 3.x chooses (`WorkerMetricsSelector`): on ECS (with the v4 metadata
    /// endpoint) or EKS the cgroup, on EC2 `/proc/stat`, elsewhere none, so that a fleet
    /// mixing Java and Rust workers publishes alike. Resolved once at start.
    Kcl,
}

impl CpuSource {
    /// The value of `CONSUMER_WORKER_CPU_SOURCE` that names it.
    pub fn name(self) -> &'static str {
        match self {
            CpuSource::Auto => "auto",
            CpuSource::CgroupV2 => "cgroup-v2",
            CpuSource::CgroupV1 => "cgroup-v1",
            CpuSource::ProcStat => "proc",
            CpuSource::None => "none",
            CpuSource::Kcl => "kcl",
        }
    }
}

/// The worker-metrics item and where the Java KCL 3.x keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerMetricsSettings {
    /// How often the item is written (`workerMetricsReporterFreqInMillis`).
    pub interval: Duration,
    /// Where the CPU utilisation is read from (`CONSUMER_WORKER_CPU_SOURCE`).
    pub cpu: CpuSource,
    /// The KCL 3.0-3.4 worker-metrics table.
    pub legacy_table: String,
    /// The KCL 3.0-3.4 coordinator-state table, whose table migration record says where the
    /// items live.
    pub coordinator_state_table: String,
    /// Phase 2 of the KCL 3.5 table migration (`migrateAllEntitiesToLeaseTable`).
    pub migrate_to_lease_table: bool,
}

/// Who decides which worker holds which lease (`CONSUMER_LEASE_ASSIGNMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAssignment {
    /// Every worker takes expired and unowned leases and steals towards
    /// `ceil(leases / live workers)` (the KCL 2.x way, and the KCL 3.4.3 lease-count strategy).
    Count,
    /// The KCL 3.x way: the workers elect a leader through a DynamoDB lock item; the leader
    /// assigns leases by load (throughput, CPU) to every worker that publishes fresh worker
    /// metrics, Java or ours; the others take only what is assigned to them.
    Leader {
        /// The lock's `leaseDuration`: another worker takes the lock once it has seen the
        /// same version for this long (KCL: `dynamoDbLockBasedLeaderLeaseDurationInMillis`).
        lease_duration: Duration,
        /// How often the holder writes a new version, and the others read the lock (KCL:
        /// `dynamoDbLockBasedLeaderHeartbeatPeriodInMillis`).
        heartbeat: Duration,
    },
}

/// When leases of finished or vanished shards are deleted (the Java KCL's `LeaseCleanupConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCleanupSettings {
    /// How often cleanup looks whether it is due (`CONSUMER_LEASE_CLEANUP_MS`).
    pub interval: Duration,
    /// How often leases of shards read to their end are deleted
    /// (`CONSUMER_COMPLETED_LEASE_CLEANUP_MS`).
    pub completed_interval: Duration,
    /// How often leases of shards that no longer exist are deleted
    /// (`CONSUMER_GARBAGE_LEASE_CLEANUP_MS`).
    pub garbage_interval: Duration,
}

impl WorkerMetricsSettings {
    /// The defaults for `application_name` (what the variables' defaults give).
    pub fn defaults(application_name: &str) -> Self {
        Self {
            interval: Duration::from_secs(30),
            cpu: CpuSource::Auto,
            legacy_table: format!("{application_name}-WorkerMetricStats"),
            coordinator_state_table: format!("{application_name}-CoordinatorState"),
            migrate_to_lease_table: false,
        }
    }
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
    /// The variable's value for this retrieval: `polling` or `fanout`.
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
    /// The settings both services share.
    pub shared: SharedSettings,
    /// Where a shard without a checkpoint is read from (`CONSUMER_INITIAL_POSITION`).
    pub initial_position: InitialPosition,
    /// Wait after a `GetRecords` that returned nothing.
    pub poll_interval: Duration,
    /// The `GetRecords` limit (`CONSUMER_MAX_RECORDS`).
    pub max_records: i32,
    /// How often the shard list is refreshed to notice new shards.
    pub shard_sync_interval: Duration,
    /// Polling mode (one process, no state) or leased mode (`CONSUMER_MODE`).
    pub mode: ConsumerMode,
    /// Read in every mode so that a bad value is reported even before it matters.
    pub lease: LeaseSettings,
    /// Polling (`GetRecords`) or enhanced fan-out (`CONSUMER_RETRIEVAL`).
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
    /// Checks the consumer's variables in `raw`; the error names the first bad one.
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
                application_name: application_name.clone(),
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
                assignment: match raw.choice(
                    &CONSUMER_LEASE_ASSIGNMENT,
                    &[("count", false), ("leader", true)],
                )? {
                    false => LeaseAssignment::Count,
                    true => {
                        let lease_duration =
                            raw.millis(&CONSUMER_LEADER_LEASE_DURATION_MS, 1000, 3_600_000)?;
                        let heartbeat =
                            raw.millis(&CONSUMER_LEADER_HEARTBEAT_MS, 100, 3_600_000)?;
                        if heartbeat >= lease_duration {
                            return Err(raw.invalid(
                                &CONSUMER_LEADER_HEARTBEAT_MS,
                                &heartbeat.as_millis().to_string(),
                            ));
                        }
                        LeaseAssignment::Leader {
                            lease_duration,
                            heartbeat,
                        }
                    }
                },
                worker_metrics: WorkerMetricsSettings {
                    interval: raw.millis(&CONSUMER_WORKER_METRICS_INTERVAL_MS, 1000, 3_600_000)?,
                    cpu: raw.choice(
                        &CONSUMER_WORKER_CPU_SOURCE,
                        &[
                            CpuSource::Auto,
                            CpuSource::CgroupV2,
                            CpuSource::CgroupV1,
                            CpuSource::ProcStat,
                            CpuSource::None,
                            CpuSource::Kcl,
                        ]
                        .map(|s| (s.name(), s)),
                    )?,
                    legacy_table: raw
                        .text(&CONSUMER_WORKER_METRICS_TABLE, valid_table_name)?
                        .unwrap_or_else(|| format!("{application_name}-WorkerMetricStats")),
                    coordinator_state_table: raw
                        .text(&CONSUMER_COORDINATOR_STATE_TABLE, valid_table_name)?
                        .unwrap_or_else(|| format!("{application_name}-CoordinatorState")),
                    migrate_to_lease_table: raw.choice(
                        &CONSUMER_MIGRATE_TO_LEASE_TABLE,
                        &[("true", true), ("false", false)],
                    )?,
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
