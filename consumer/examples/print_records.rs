//! The smallest consumer application (docs/library.md shows it whole): prints each user record
//! of `STREAM_NAME`, shares the shards with every process of the same
//! `CONSUMER_APPLICATION_NAME`, and checkpoints after each batch. Stop it with Ctrl-C.
use kinesis_common::config::ConsumerSettings;
use kinesis_consumer::lease::{self, Checkpointer, InitializationInput, ProcessRecordsInput};
use kinesis_consumer::lease::{RecordProcessor, RecordProcessorFactory, Worker, WorkerConfig};

struct Printer;

impl RecordProcessor for Printer {
    async fn initialize(&mut self, input: InitializationInput) -> anyhow::Result<()> {
        println!("{}: resuming after {}", input.shard_id, input.checkpoint);
        Ok(())
    }
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> anyhow::Result<()> {
        for r in input.records {
            println!("{} {}: {:?}", r.partition_key, r.sequence_number, r.data);
        }
        Ok(input.checkpointer.checkpoint().await?) // at-least-once: after processing
    }
    async fn lease_lost(&mut self) {}
    async fn shard_ended(&mut self, _: &Checkpointer) -> anyhow::Result<()> {
        Ok(())
    }
    async fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> anyhow::Result<()> {
        Ok(checkpointer
            .checkpoint()
            .await
            .or_else(|e| e.unless_nothing_delivered())?)
    }
}

struct Printers;

impl RecordProcessorFactory for Printers {
    type Processor = Printer;
    fn create(&self, _shard_id: &str) -> Printer {
        Printer
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = ConsumerSettings::from_env()?; // the consumer service's variables
    let sdk = kinesis_common::aws::load().await?;
    let config = WorkerConfig::from_settings(&settings, lease::worker_id(&settings));
    let kinesis = kinesis_common::aws::kinesis(&sdk, &settings.shared.timeouts);
    let dynamodb = kinesis_common::aws::dynamodb(&sdk, &settings.shared.timeouts);
    let worker = Worker::new(config, kinesis, dynamodb, Printers);
    worker.run(kinesis_common::shutdown::on_signal()).await
}
