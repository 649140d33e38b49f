//! The consumer: reads every shard of a Kinesis stream and logs each `DataMessage`.
//!
//! - [`reader`]: one shard's `GetRecords` loop with rate limits, iterator renewal and retries.
//! - [`polling`]: polling mode, which reads all shards in one process and follows resharding
//!   (parents before children).
//! - [`record`]: decoding and logging; a record that is not a `DataMessage` is logged as a
//!   warning naming its shard and sequence number, and skipped.
//!
//! Run it with `cargo run -p consumer` (see the README for the variables).

pub mod polling;
pub mod reader;
pub mod record;

use common::config::ConsumerSettings;
use tokio_util::sync::CancellationToken;

/// Runs the consumer until `cancel` fires.
pub async fn run(
    settings: ConsumerSettings,
    client: aws_sdk_kinesis::Client,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let stream = &settings.shared.stream_name;
    match common::kinesis::wait_for_stream(
        &client,
        stream,
        settings.shared.stream_wait_timeout,
        &cancel,
    )
    .await
    {
        Ok(()) => {}
        Err(common::kinesis::StreamWaitError::Cancelled(_)) => return Ok(()),
        Err(other) => return Err(other.into()),
    }
    polling::run(&settings, client, cancel).await
}
