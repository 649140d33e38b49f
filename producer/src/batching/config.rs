//! [`ProducerConfig`], the tuning of a producer, and the check [`super::Producer::start`] makes
//! of it.

use std::time::Duration;

use tokio::sync::Semaphore;

use super::record::RECORD_OVERHEAD_BYTES;
use crate::metrics::ProducerMetrics;

/// Why [`super::Producer::start`] refused a [`ProducerConfig`]: the field, its value and what is
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid producer configuration: {field} = {value}; allowed: {allowed}")]
pub struct InvalidConfig {
    /// The field's name.
    pub field: &'static str,
    /// Its value.
    pub value: String,
    /// What it accepts.
    pub allowed: &'static str,
}

/// Tuning of a [`super::Producer`], checked by [`ProducerConfig::validate`] when it starts.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// The stream written to.
    pub stream_name: String,
    /// A batch (and an open aggregate) is sent when full or when its oldest record waited
    /// this long.
    pub linger: Duration,
    /// Backpressure: handing over waits while this many records are unacknowledged.
    pub max_buffered_records: usize,
    /// Backpressure by bytes: each record counts its data, its partition key and
    /// 1 KiB of bookkeeping.
    pub max_buffered_bytes: usize,
    /// Concurrent `PutRecords` calls.
    pub max_in_flight: usize,
    /// A record is retried until this long after it was handed over, then answered
    /// [`SendError::Expired`](crate::SendError::Expired).
    pub record_ttl: Duration,
    /// Pack user records bound for the same shard into KPL aggregated records.
    pub aggregation: bool,
    /// Largest aggregated record, in bytes (the KPL's default is 51200).
    pub aggregation_max_bytes: usize,
    /// Keep each shard under this percentage of its write limits (1,000 records and 1 MiB a
    /// second); 0 turns the limiter off.
    pub shard_rate_limit_percent: u32,
    /// First wait before retrying a failed call (exponential backoff with jitter).
    pub retry_base: Duration,
    /// Longest wait before a retry.
    pub retry_cap: Duration,
    /// Where to count what happens (the Prometheus metrics [`ProducerMetrics::register`]
    /// registers); `None`: nothing is counted.
    pub metrics: Option<ProducerMetrics>,
}

impl ProducerConfig {
    /// The defaults for `stream_name`: 100 ms linger, 100,000 records or 64 MiB buffered,
    /// 8 calls in flight, 30 s time to live, aggregation off, 100 % of the shard limits.
    pub fn new(stream_name: impl Into<String>) -> Self {
        Self {
            stream_name: stream_name.into(),
            linger: Duration::from_millis(100),
            max_buffered_records: 100_000,
            max_buffered_bytes: 64 << 20,
            max_in_flight: 8,
            record_ttl: Duration::from_secs(30),
            aggregation: false,
            aggregation_max_bytes: 51_200,
            shard_rate_limit_percent: 100,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(5),
            metrics: None,
        }
    }

    /// Refuses a configuration that cannot work: one that would never send (no call slot, no
    /// room for a record, no time to live), a stream name Kinesis refuses, aggregates Kinesis
    /// would refuse, or times so long that deadlines overflow. The bounds are those of the
    /// service's variables (README, "Configuration") where it has one, with the byte bound
    /// free to go below 1 MiB: a record larger than it is refused when handed over.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        const DAY: Duration = Duration::from_secs(86_400);
        let check = |ok: bool, field, value: String, allowed| {
            if ok {
                Ok(())
            } else {
                Err(InvalidConfig {
                    field,
                    value,
                    allowed,
                })
            }
        };
        let ms = |d: Duration| format!("{} ms", d.as_millis());
        check(
            kinesis_common::kinesis::is_valid_stream_name(&self.stream_name),
            "stream_name",
            format!("{:?}", self.stream_name),
            "1-128 characters of a-z, A-Z, 0-9, _ . -",
        )?;
        check(
            self.linger <= Duration::from_secs(60),
            "linger",
            ms(self.linger),
            "0 to 60 s",
        )?;
        check(
            (1..=Semaphore::MAX_PERMITS).contains(&self.max_buffered_records),
            "max_buffered_records",
            self.max_buffered_records.to_string(),
            "at least 1",
        )?;
        // The smallest record (a one-character key, one byte) must fit.
        check(
            (RECORD_OVERHEAD_BYTES + 2..=Semaphore::MAX_PERMITS).contains(&self.max_buffered_bytes),
            "max_buffered_bytes",
            self.max_buffered_bytes.to_string(),
            "at least 1026 (the smallest record with its 1024 bytes of bookkeeping)",
        )?;
        check(
            self.max_in_flight >= 1,
            "max_in_flight",
            self.max_in_flight.to_string(),
            "at least 1",
        )?;
        check(
            !self.record_ttl.is_zero() && self.record_ttl <= DAY,
            "record_ttl",
            ms(self.record_ttl),
            "1 ms to 1 day",
        )?;
        check(
            (1024..=1_048_000).contains(&self.aggregation_max_bytes),
            "aggregation_max_bytes",
            self.aggregation_max_bytes.to_string(),
            "1024 to 1048000",
        )?;
        check(
            self.shard_rate_limit_percent <= 1000,
            "shard_rate_limit_percent",
            self.shard_rate_limit_percent.to_string(),
            "0 (no limit) to 1000",
        )?;
        check(
            !self.retry_base.is_zero() && self.retry_base <= DAY,
            "retry_base",
            ms(self.retry_base),
            "1 ms to 1 day",
        )?;
        check(
            self.retry_base <= self.retry_cap && self.retry_cap <= DAY,
            "retry_cap",
            ms(self.retry_cap),
            "retry_base to 1 day",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_that_cannot_work_is_refused_naming_the_field() {
        assert_eq!(ProducerConfig::new("s").validate(), Ok(()));
        let refused = |change: fn(&mut ProducerConfig)| {
            let mut config = ProducerConfig::new("s");
            change(&mut config);
            config.validate().expect_err("refused").field
        };
        assert_eq!(
            refused(|c| c.stream_name = "no spaces".into()),
            "stream_name"
        );
        assert_eq!(refused(|c| c.stream_name.clear()), "stream_name");
        assert_eq!(refused(|c| c.linger = Duration::MAX), "linger");
        assert_eq!(
            refused(|c| c.max_buffered_records = 0),
            "max_buffered_records"
        );
        assert_eq!(refused(|c| c.max_buffered_bytes = 0), "max_buffered_bytes");
        assert_eq!(
            refused(|c| c.max_buffered_bytes = RECORD_OVERHEAD_BYTES + 1),
            "max_buffered_bytes"
        );
        assert_eq!(
            refused(|c| c.max_buffered_bytes = usize::MAX),
            "max_buffered_bytes"
        );
        assert_eq!(refused(|c| c.max_in_flight = 0), "max_in_flight");
        assert_eq!(refused(|c| c.record_ttl = Duration::ZERO), "record_ttl");
        assert_eq!(refused(|c| c.record_ttl = Duration::MAX), "record_ttl");
        assert_eq!(
            refused(|c| c.aggregation_max_bytes = 2 << 20),
            "aggregation_max_bytes"
        );
        assert_eq!(
            refused(|c| c.shard_rate_limit_percent = 1001),
            "shard_rate_limit_percent"
        );
        assert_eq!(refused(|c| c.retry_base = Duration::ZERO), "retry_base");
        assert_eq!(
            refused(|c| c.retry_cap = Duration::from_millis(1)),
            "retry_cap"
        );
        let err = {
            let mut c = ProducerConfig::new("s");
            c.max_in_flight = 0;
            c.validate().unwrap_err().to_string()
        };
        assert_eq!(
            err,
            "invalid producer configuration: max_in_flight = 0; allowed: at least 1"
        );
    }
}
