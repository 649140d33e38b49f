//! The producer service's settings.

use super::*;

/// The producer service's settings.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// The settings both services share.
    pub shared: SharedSettings,
    /// Time between ticks; zero means "as fast as the buffer accepts".
    pub interval: Duration,
    /// Stop after this many acknowledged messages.
    pub count: Option<u64>,
    /// One partition key for every message (`PRODUCER_PARTITION_KEY`); `None`: each message's `Id`.
    pub partition_key: Option<String>,
    /// Messages built each tick (`PRODUCER_MESSAGES_PER_TICK`).
    pub messages_per_tick: u32,
    /// How long a batch or an open aggregate may wait for more records (`PRODUCER_LINGER_MS`).
    pub linger: Duration,
    /// Backpressure: unacknowledged records at most (`PRODUCER_MAX_BUFFERED_RECORDS`).
    pub max_buffered_records: usize,
    /// Backpressure by bytes (`PRODUCER_MAX_BUFFERED_BYTES`).
    pub max_buffered_bytes: usize,
    /// Concurrent `PutRecords` calls (`PRODUCER_MAX_IN_FLIGHT`).
    pub max_in_flight: usize,
    /// How long a record is retried after it was handed over (`PRODUCER_RECORD_TTL_MS`).
    pub record_ttl: Duration,
    /// Written into each message's `Source` field (`PRODUCER_SOURCE`).
    pub source: Option<String>,
    /// KPL aggregation on or off (`PRODUCER_AGGREGATION`).
    pub aggregation: bool,
    /// Largest aggregated record in bytes (`PRODUCER_AGGREGATION_MAX_BYTES`).
    pub aggregation_max_bytes: usize,
    /// Percentage of each shard's write limits to stay under; 0 = no limiter.
    pub shard_rate_limit_percent: u32,
    /// How long a stop may flush what is buffered (`PRODUCER_SHUTDOWN_TIMEOUT_MS`).
    pub shutdown_timeout: Duration,
}

impl ProducerSettings {
    /// Checks the producer's variables in `raw`; the error names the first bad one.
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
