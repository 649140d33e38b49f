//! The consumer's Prometheus metrics, named after the Java KCL's CloudWatch metrics they stand
//! for (in brackets). Every series carries `stream`; per-shard series carry `shard_id`, so the
//! label set is bounded by the shards this process read in its life. The lag gauge of a shard is
//! removed when this worker stops reading it (a stale lag would mislead); counters stay, so they
//! never go backwards.
//!
//! - `kinesis_consumer_records_processed_total{shard_id}` (RecordsProcessed): user records
//!   handed to the processor.
//! - `kinesis_consumer_bytes_processed_total{shard_id}` (DataBytesProcessed).
//! - `kinesis_consumer_millis_behind_latest{shard_id}` (MillisBehindLatest): from the last
//!   `GetRecords` answer, or the last `SubscribeToShard` event with fan-out.
//! - `kinesis_consumer_leases_held` (CurrentLeases).
//! - `kinesis_consumer_lease_acquisitions_total` (TakenLeases),
//!   `kinesis_consumer_leases_lost_total` (LostLeases).
//! - `kinesis_consumer_checkpoints_total`, `kinesis_consumer_checkpoint_failures_total`.
//! - `kinesis_consumer_malformed_records_total`: records skipped as not a `DataMessage`.
//! - `kinesis_consumer_get_records_seconds` (KinesisDataFetcher.getRecords.Time) and
//!   `kinesis_consumer_process_records_seconds` (RecordProcessor.processRecords.Time).
//! - `kinesis_consumer_workers`: workers seen alive in the lease table.
//! - `kinesis_consumer_records_given_up_total{shard_id, action}`: user records the failure
//!   policy gave up on (`action`: `stop`, `skip`, `stream`), and
//!   `kinesis_consumer_shards_stopped`: shards stopped by `CONSUMER_ON_FAILURE=stop`.
//! - `kinesis_consumer_shard_failures_total{shard_id}`: times a shard's processing failed here
//!   (its lease released, taken again after a backoff).
//! - `kinesis_consumer_unheld_lease_seconds` (leased mode): of the leases of shards not yet
//!   ended, as this worker's last scan of the table saw them, the longest time one has gone
//!   without a live holder: since it was released, or since its holder last renewed it once that
//!   is longer ago than the failover time; 0 when every such lease is held. With
//!   `kinesis_consumer_failover_seconds` (the failover time this worker uses), it tells that a
//!   shard is read by nobody.
//! - `kinesis_consumer_info{mode, retrieval}`: always 1; how this process shares the shards
//!   (`polling`, `leased`) and fetches records (`polling`, `fanout`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The labels of `kinesis_consumer_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Info {
    pub mode: String,
    pub retrieval: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Shard {
    pub shard_id: String,
}

impl Shard {
    fn of(shard_id: &str) -> Self {
        Self {
            shard_id: shard_id.to_string(),
        }
    }
}

/// Handles to the consumer's metrics; cloning shares them.
#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    pub records_processed: Family<Shard, Counter>,
    pub bytes_processed: Family<Shard, Counter>,
    pub millis_behind_latest: Family<Shard, Gauge>,
    pub leases_held: Gauge,
    pub lease_acquisitions: Counter,
    pub leases_lost: Counter,
    pub checkpoints: Counter,
    pub checkpoint_failures: Counter,
    pub malformed_records: Counter,
    pub get_records_seconds: Histogram,
    pub process_records_seconds: Histogram,
    pub workers: Gauge,
    pub info: Family<Info, Gauge>,
    pub records_given_up: Family<GivenUp, Counter>,
    pub shards_stopped: Gauge,
    pub shard_failures: Family<Shard, Counter>,
    pub unheld_lease_seconds: Gauge<f64, AtomicU64>,
    pub failover_seconds: Gauge<f64, AtomicU64>,
    pub worker_cpu_percent: Gauge<f64, AtomicU64>,
    pub worker_metrics_reports: Family<Outcome, Counter>,
}

/// The labels of `kinesis_consumer_worker_metrics_reports_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok` or `failed`.
    pub result: String,
}

/// The labels of `kinesis_consumer_records_given_up_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GivenUp {
    pub shard_id: String,
    /// `stop`, `skip` or `stream` (`CONSUMER_ON_FAILURE`).
    pub action: String,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self {
            records_processed: Family::default(),
            bytes_processed: Family::default(),
            millis_behind_latest: Family::default(),
            leases_held: Gauge::default(),
            lease_acquisitions: Counter::default(),
            leases_lost: Counter::default(),
            checkpoints: Counter::default(),
            checkpoint_failures: Counter::default(),
            malformed_records: Counter::default(),
            // 1 ms to about 65 s.
            get_records_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            process_records_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            workers: Gauge::default(),
            info: Family::default(),
            records_given_up: Family::default(),
            shards_stopped: Gauge::default(),
            shard_failures: Family::default(),
            unheld_lease_seconds: Gauge::default(),
            failover_seconds: Gauge::default(),
            worker_cpu_percent: Gauge::default(),
            worker_metrics_reports: Family::default(),
        }
    }
}

impl ConsumerMetrics {
    /// Creates the metrics and registers them under `kinesis_consumer_` with `stream`.
    pub fn register(registry: &mut Registry, stream: &str) -> Self {
        let m = Self::default();
        let r = registry
            .sub_registry_with_prefix("kinesis_consumer")
            .sub_registry_with_label(("stream".into(), stream.to_string().into()));
        r.register(
            "records_processed",
            "User records handed to the record processor",
            m.records_processed.clone(),
        );
        r.register(
            "bytes_processed",
            "Bytes of user records handed to the record processor",
            m.bytes_processed.clone(),
        );
        r.register(
            "millis_behind_latest",
            "How far the last GetRecords answer (or fan-out event) was behind the tip of the shard",
            m.millis_behind_latest.clone(),
        );
        r.register(
            "leases_held",
            "Leases this worker holds",
            m.leases_held.clone(),
        );
        r.register(
            "lease_acquisitions",
            "Leases this worker took (new, expired or stolen)",
            m.lease_acquisitions.clone(),
        );
        r.register(
            "leases_lost",
            "Leases this worker lost to another worker",
            m.leases_lost.clone(),
        );
        r.register("checkpoints", "Checkpoints written", m.checkpoints.clone());
        r.register(
            "checkpoint_failures",
            "Checkpoints that could not be written",
            m.checkpoint_failures.clone(),
        );
        r.register(
            "malformed_records",
            "Records skipped because they are not a valid DataMessage",
            m.malformed_records.clone(),
        );
        r.register(
            "get_records_seconds",
            "Duration of GetRecords calls",
            m.get_records_seconds.clone(),
        );
        r.register(
            "process_records_seconds",
            "Time the record processor took per batch",
            m.process_records_seconds.clone(),
        );
        r.register(
            "workers",
            "Workers of the application seen alive in the lease table",
            m.workers.clone(),
        );
        r.register(
            "records_given_up",
            "User records the failure policy gave up on, by CONSUMER_ON_FAILURE action",
            m.records_given_up.clone(),
        );
        r.register(
            "shards_stopped",
            "Shards this worker stopped reading because records kept failing (CONSUMER_ON_FAILURE=stop)",
            m.shards_stopped.clone(),
        );
        r.register(
            "shard_failures",
            "Times a shard's processing failed in this worker",
            m.shard_failures.clone(),
        );
        r.register(
            "unheld_lease_seconds",
            "Longest time a lease of a shard not yet ended has gone without a live holder, as this worker's last lease table scan saw it",
            m.unheld_lease_seconds.clone(),
        );
        r.register(
            "failover_seconds",
            "The failover time this worker uses (CONSUMER_FAILOVER_MS)",
            m.failover_seconds.clone(),
        );
        r.register(
            "worker_cpu_percent",
            "The CPU utilisation this worker last published in its worker-metrics item (the average since the previous report; -1: none could be read)",
            m.worker_cpu_percent.clone(),
        );
        r.register(
            "worker_metrics_reports",
            "Writes of this worker's worker-metrics item, by result",
            m.worker_metrics_reports.clone(),
        );
        r.register(
            "info",
            "Always 1: how this process shares the shards (mode) and fetches records (retrieval)",
            m.info.clone(),
        );
        m
    }

    /// Records the consumer mode and the retrieval in `kinesis_consumer_info`.
    pub fn retrieval(&self, mode: &str, retrieval: &str) {
        self.info
            .get_or_create(&Info {
                mode: mode.to_string(),
                retrieval: retrieval.to_string(),
            })
            .set(1);
    }

    /// Counts user records the failure policy gave up on.
    pub fn records_given_up(&self, shard_id: &str, action: &str, records: u64) {
        self.records_given_up
            .get_or_create(&GivenUp {
                shard_id: shard_id.to_string(),
                action: action.to_string(),
            })
            .inc_by(records);
    }

    /// Counts a batch of user records handed to the processor.
    pub fn processed(&self, shard_id: &str, records: u64, bytes: u64) {
        let shard = Shard::of(shard_id);
        self.records_processed.get_or_create(&shard).inc_by(records);
        self.bytes_processed.get_or_create(&shard).inc_by(bytes);
    }

    pub fn behind(&self, shard_id: &str, millis: i64) {
        self.millis_behind_latest
            .get_or_create(&Shard::of(shard_id))
            .set(millis);
    }

    /// Starts the failure counters of a shard this worker is about to read at 0, so that the
    /// first failure shows as an increase (a series that appears at 1 shows none).
    pub fn shard_started(&self, shard_id: &str, action: &str) {
        let shard = Shard::of(shard_id);
        let _ = self.shard_failures.get_or_create(&shard);
        let _ = self.records_given_up.get_or_create(&GivenUp {
            shard_id: shard.shard_id,
            action: action.to_string(),
        });
    }

    /// Counts a failure of a shard's processing.
    pub fn shard_failed(&self, shard_id: &str) {
        self.shard_failures
            .get_or_create(&Shard::of(shard_id))
            .inc();
    }

    /// Drops the lag of a shard this worker no longer reads.
    pub fn forget_shard(&self, shard_id: &str) {
        self.millis_behind_latest.remove(&Shard::of(shard_id));
    }
}
