//! A library user's own record processor: it reads the demo's `DataMessage`s with the leased
//! worker (lease table, checkpoints, balancing, failover, resharding all from the library),
//! keeps a count per partition key, and commits its progress with a two-phase checkpoint every
//! `EXAMPLE_CHECKPOINT_EVERY` records (default 100) and on shutdown.
//!
//! Run it against the local stack (`scripts/run-local.sh` prints the endpoints; or
//! `docker compose up`), with the service's variables:
//!
//! ```sh
//! AWS_ENDPOINT_URL=http://localhost:4566 AWS_REGION=us-east-1 \
//! AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
//! CONSUMER_APPLICATION_NAME=custom-processor-example \
//! cargo run -p kinesis-consumer --example custom_processor
//! ```
//!
//! It stops on Ctrl-C or SIGTERM, checkpointing what it processed.

use std::collections::BTreeMap;

use kinesis_common::config::ConsumerSettings;
use kinesis_common::message::DataMessage;
use kinesis_consumer::lease::{
    Checkpointer, InitializationInput, ProcessRecordsInput, RecordProcessor,
    RecordProcessorFactory, Worker, WorkerConfig,
};

/// One per shard lease: counts messages per partition key.
pub struct Counter {
    shard_id: String,
    per_key: BTreeMap<String, u64>,
    since_checkpoint: u64,
    checkpoint_every: u64,
}

impl Counter {
    /// Two phases: the intent first (`pendingCheckpoint`), then, once whatever the records
    /// fed was flushed (nothing to flush here), the checkpoint itself.
    async fn commit(&mut self, checkpointer: &Checkpointer) -> anyhow::Result<()> {
        let prepared = match checkpointer.prepare_checkpoint().await {
            Ok(prepared) => prepared,
            // Nothing delivered yet: nothing to commit.
            Err(e) => return Ok(e.unless_nothing_delivered()?),
        };
        prepared.checkpoint().await?;
        tracing::info!(
            shard_id = %self.shard_id,
            sequence_number = %prepared.position().sequence_number,
            sub_sequence_number = prepared.position().sub_sequence_number,
            keys = self.per_key.len(),
            "example checkpoint"
        );
        self.since_checkpoint = 0;
        Ok(())
    }
}

impl RecordProcessor for Counter {
    async fn initialize(&mut self, input: InitializationInput) -> anyhow::Result<()> {
        tracing::info!(shard_id = %input.shard_id, checkpoint = %input.checkpoint, "example shard started");
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> anyhow::Result<()> {
        for record in input.records {
            // KPL aggregates arrive unpacked: each record is one user record.
            match DataMessage::from_json(&record.data) {
                Ok(message) => {
                    *self
                        .per_key
                        .entry(record.partition_key.to_string())
                        .or_default() += 1;
                    tracing::info!(
                        shard_id = %self.shard_id,
                        id = %message.id,
                        sequence_number = %record.sequence_number,
                        sub_sequence_number = record.sub_sequence_number,
                        aggregated = record.aggregated,
                        "example record"
                    );
                }
                // Not ours to stop the shard for: note it and go on.
                Err(err) => {
                    tracing::warn!(shard_id = %self.shard_id, sequence_number = %record.sequence_number, error = %err, "example skipped a record")
                }
            }
            self.since_checkpoint += 1;
        }
        if self.since_checkpoint >= self.checkpoint_every {
            self.commit(input.checkpointer).await?;
        }
        Ok(())
    }

    async fn lease_lost(&mut self) {
        tracing::info!(shard_id = %self.shard_id, "example lost the lease");
    }

    async fn shard_ended(&mut self, checkpointer: &Checkpointer) -> anyhow::Result<()> {
        // The library writes SHARD_END after this; commit the last records first.
        self.commit(checkpointer).await
    }

    async fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> anyhow::Result<()> {
        self.commit(checkpointer).await
    }
}

pub struct Counters {
    pub checkpoint_every: u64,
}

impl RecordProcessorFactory for Counters {
    type Processor = Counter;

    fn create(&self, shard_id: &str) -> Counter {
        Counter {
            shard_id: shard_id.to_string(),
            per_key: BTreeMap::new(),
            since_checkpoint: 0,
            checkpoint_every: self.checkpoint_every,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The service's variables (STREAM_NAME, CONSUMER_APPLICATION_NAME, CONSUMER_FAILOVER_MS,
    // CONSUMER_ON_FAILURE, ...), checked the same way.
    let settings = ConsumerSettings::from_env()?;
    let checkpoint_every = match std::env::var("EXAMPLE_CHECKPOINT_EVERY") {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("EXAMPLE_CHECKPOINT_EVERY: {v:?} is not a number"))?,
        Err(_) => 100,
    };
    kinesis_common::telemetry::init(settings.shared.log_format);
    let sdk = kinesis_common::aws::load().await?;
    let worker_id = kinesis_consumer::lease::worker_id(&settings);
    let config = WorkerConfig::from_settings(&settings, worker_id);
    let kinesis = kinesis_common::aws::kinesis(&sdk, &settings.shared.timeouts);
    let dynamodb = kinesis_common::aws::dynamodb(&sdk, &settings.shared.timeouts);
    Worker::new(config, kinesis, dynamodb, Counters { checkpoint_every })
        .run(kinesis_common::shutdown::on_signal())
        .await
}
