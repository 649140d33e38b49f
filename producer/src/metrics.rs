//! The producer's Prometheus metrics, named after the KPL's CloudWatch metrics they stand for
//! (in brackets). Every series carries the `stream` label; nothing else is unbounded:
//! `error_code` takes the AWS error codes [`kinesis_common::aws::ErrorKind`] knows, or the kind of
//! failure (`Expired`, `Rejected`, `Invalid`).
//!
//! - `kinesis_producer_user_records_put_total` (UserRecordsPut): user records acknowledged.
//! - `kinesis_producer_kinesis_records_put_total` (KinesisRecordsPut): Kinesis records
//!   acknowledged (an aggregate counts once).
//! - `kinesis_producer_user_records_failed_total{error_code}` (ErrorsByCode): user records that
//!   ended in an error.
//! - `kinesis_producer_retries_total` (RetriesPerRecord): user records sent again.
//! - `kinesis_producer_buffered_records` (UserRecordsPending): handed over, not yet finished.
//! - `kinesis_producer_max_buffered_records`: the bound on the above
//!   (`PRODUCER_MAX_BUFFERED_RECORDS`); callers wait (backpressure) while it is reached.
//! - `kinesis_producer_in_flight_calls`: `PutRecords` calls under way.
//! - `kinesis_producer_buffering_seconds` (BufferingTime): from handing over to the first call.
//! - `kinesis_producer_put_records_seconds`: duration of each `PutRecords` call.
//! - `kinesis_producer_user_records_per_kinesis_record` (UserRecordsPerKinesisRecord).
//! - `kinesis_producer_shard_records_put_total{shard_id}`,
//!   `kinesis_producer_shard_bytes_put_total{shard_id}`: Kinesis records and their bytes (data
//!   and partition key) acknowledged on each shard, against its write limits.
//! - `kinesis_producer_shard_throttles_total{shard_id}`: entries throttled on each shard.
//!
//! `shard_id` is bounded by [`crate::shard_stats::MAX_SHARDS`]; the status page's per-shard view
//! (rates, busiest partition keys) is [`ShardStats`].

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::shard_stats::{ShardFamilies, ShardStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorCode {
    pub error_code: String,
}

/// Handles to the producer's metrics; cloning shares them.
#[derive(Clone, Debug)]
pub struct ProducerMetrics {
    pub(crate) user_records_put: Counter,
    pub(crate) kinesis_records_put: Counter,
    pub(crate) user_records_failed: Family<ErrorCode, Counter>,
    pub(crate) retries: Counter,
    pub(crate) buffered_records: Gauge,
    pub(crate) max_buffered_records: Gauge,
    pub(crate) in_flight_calls: Gauge,
    pub(crate) buffering_seconds: Histogram,
    pub(crate) put_records_seconds: Histogram,
    pub(crate) user_records_per_kinesis_record: Histogram,
    /// What the calls did to each shard (see [`ShardStats`]).
    pub(crate) shards: Arc<ShardStats>,
}

impl ProducerMetrics {
    /// Creates the metrics and registers them under `kinesis_producer_` with `stream`.
    pub fn register(registry: &mut Registry, stream: &str) -> Self {
        let families = ShardFamilies::default();
        let metrics = Self {
            user_records_put: Counter::default(),
            kinesis_records_put: Counter::default(),
            user_records_failed: Family::default(),
            retries: Counter::default(),
            buffered_records: Gauge::default(),
            max_buffered_records: Gauge::default(),
            in_flight_calls: Gauge::default(),
            // 1 ms to about 65 s.
            buffering_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            put_records_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 1 to 1024 user records in one Kinesis record.
            user_records_per_kinesis_record: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            shards: Arc::new(ShardStats::exported(families.clone())),
        };
        let r = registry
            .sub_registry_with_prefix("kinesis_producer")
            .sub_registry_with_label(("stream".into(), stream.to_string().into()));
        r.register(
            "user_records_put",
            "User records acknowledged by Kinesis",
            metrics.user_records_put.clone(),
        );
        r.register(
            "kinesis_records_put",
            "Kinesis records acknowledged (an aggregate counts once)",
            metrics.kinesis_records_put.clone(),
        );
        r.register(
            "user_records_failed",
            "User records that ended in an error, by error code",
            metrics.user_records_failed.clone(),
        );
        r.register(
            "retries",
            "User records put again after a failed attempt",
            metrics.retries.clone(),
        );
        r.register(
            "buffered_records",
            "User records handed over and not yet acknowledged or failed",
            metrics.buffered_records.clone(),
        );
        r.register(
            "max_buffered_records",
            "The bound on buffered user records (PRODUCER_MAX_BUFFERED_RECORDS): callers wait while it is reached",
            metrics.max_buffered_records.clone(),
        );
        r.register(
            "in_flight_calls",
            "PutRecords calls under way",
            metrics.in_flight_calls.clone(),
        );
        r.register(
            "buffering_seconds",
            "Time from handing a user record over to its first PutRecords call",
            metrics.buffering_seconds.clone(),
        );
        r.register(
            "put_records_seconds",
            "Duration of PutRecords calls",
            metrics.put_records_seconds.clone(),
        );
        r.register(
            "user_records_per_kinesis_record",
            "User records carried by each acknowledged Kinesis record",
            metrics.user_records_per_kinesis_record.clone(),
        );
        r.register(
            "shard_records_put",
            "Kinesis records acknowledged on each shard (against its limit of 1,000 a second)",
            families.records,
        );
        r.register(
            "shard_bytes_put",
            "Bytes (data and partition key) acknowledged on each shard (against its limit of 1 MiB a second)",
            families.bytes,
        );
        r.register(
            "shard_throttles",
            "PutRecords entries throttled on each shard (ProvisionedThroughputExceededException), each retried",
            families.throttles,
        );
        // Every code a failure can carry starts at 0, so that the first failure shows as an
        // increase (a series that appears at 1 shows none): the kinds of failure, and the AWS
        // codes one can end in.
        for code in ["Invalid", "Stopped", "Rejected", "Expired"]
            .into_iter()
            .chain(
                kinesis_common::aws::KNOWN_ERROR_CODES
                    .iter()
                    .map(|(code, _)| *code),
            )
        {
            metrics.failed(code, 0);
        }
        metrics
    }

    /// Counts `n` user records failed with `code`.
    pub(crate) fn failed(&self, code: &str, n: u64) {
        self.user_records_failed
            .get_or_create(&ErrorCode {
                error_code: code.to_string(),
            })
            .inc_by(n);
    }
}
