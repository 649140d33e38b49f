//! Leased mode (`CONSUMER_MODE=leased`): any number of consumer processes share a stream's
//! shards through a DynamoDB lease table in the Java KCL 2.x format, and record their progress
//! in it, so a restarted or replacement worker resumes where the last one stopped.
//!
//! - `item`: the lease item format (KCL attribute names); `table`: the calls on the table
//!   (its conditional writes).
//! - `balance`: which leases to take: expired ones first, then as many stolen as short in one
//!   cycle from workers above target, towards `ceil(leases / live workers)` each.
//! - `cleanup`: which leases to delete (of shards read to their end, of vanished shards).
//! - `sync`: leases for new shards, and when a child shard may start (all parents at
//!   `SHARD_END`).
//! - [`processor`]: the library API, a [`RecordProcessor`] per shard, which gets deaggregated
//!   user records ([`KinesisClientRecord`]), and its [`Checkpointer`].
//! - [`failure`]: the [`FailurePolicy`] for a batch whose processing keeps failing (retries,
//!   bisection, maximum record age; then stop, skip or a failure stream).
//! - `machine`: the life of one lease at one worker, one state machine with no I/O
//!   (model-checked by `tests/lease_model.rs`).
//! - `worker_metrics`: the Java KCL 3.x worker-metrics item (`lut`, `sts`, `opr`, `sup`/`slu`),
//!   its validity and freshness as a KCL leader judges them, and which table holds it;
//!   `metrics_reporter` publishes this worker's, with the CPU `cpu` reads;
//!   `throughput`: the `throughputKBps` each renewal writes.
//! - `leader`: the KCL 3.x leader lock; `assignment`: the leader's load-aware assignment.
//! - `held`, `shard`, `worker`: driving the machine (the writes it asks for), taking and
//!   processing.
//!
//! Guarantees: at-least-once per record (a checkpoint is written only after the records up to
//! it were processed; what a worker processed after its last checkpoint is processed again by
//! the next holder). Every write is conditional on the lease's counter and owner, so two
//! workers never both hold a shard: a worker whose write fails stops the shard and never
//! checkpoints it again, and one that could not renew a lease for the failover time stops it by
//! a timer, before anyone else may take it. Per partition key, records are processed in order, and a child shard's
//! records after all of its parents' records.
//!
//! A lease taken from a live worker is handed over gracefully (the Java KCL 3.x's
//! `checkpointOwner`): the old holder finishes its batch and checkpoints before the new one
//! starts, within `CONSUMER_HANDOFF_TIMEOUT_MS`.
//!
//! Timings: a lease expires after `CONSUMER_FAILOVER_MS` (default 10 s) without its counter
//! moving; leases are renewed every third of that, the table scanned every half of it, and the
//! `leaseOwner` index read every 500 ms.

pub(crate) mod assignment;
mod balance;
mod cleanup;
pub(crate) mod cpu;
pub mod failure;
mod held;
#[doc(hidden)]
pub mod item;
pub(crate) mod leader;
#[doc(hidden)]
pub mod machine;
pub(crate) mod metrics_reporter;
pub(crate) mod platform;
pub mod processor;
mod shard;
mod sync;
pub(crate) mod table;
pub(crate) mod throughput;
mod worker;
#[doc(hidden)]
pub mod worker_metrics;

pub use failure::{FailurePolicy, OnFailure};
pub use processor::{
    CheckpointError, Checkpointer, InitializationInput, KinesisClientRecord,
    LoggingProcessorFactory, PreparedCheckpointer, ProcessRecordsInput, RecordProcessor,
    RecordProcessorFactory, ShardFailed,
};
pub use table::{Checkpoint, ExtendedSequenceNumber, OtherStreamError};
pub use worker::{Worker, WorkerConfig};

pub use crate::retrieval::RetrievalConfig;

use kinesis_common::config::ConsumerSettings;
use tokio_util::sync::CancellationToken;

/// This worker's id: `CONSUMER_WORKER_ID`, or [`default_worker_id`].
pub fn worker_id(settings: &ConsumerSettings) -> String {
    settings
        .lease
        .worker_id
        .clone()
        .unwrap_or_else(default_worker_id)
}

/// Runs the service's leased consumer (logging each record) as `worker_id` until `cancel`
/// fires.
pub async fn run(
    settings: &ConsumerSettings,
    worker_id: String,
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let config = WorkerConfig::from_settings(settings, worker_id);
    Worker::new(config, kinesis, dynamodb, LoggingProcessorFactory)
        .run(cancel)
        .await
}

/// The host name (the container id under docker) plus a random suffix, so two processes on one
/// host, or a restarted container, never share an id.
pub fn default_worker_id() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}
