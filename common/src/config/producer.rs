//! The producer service's settings.

use super::*;

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
