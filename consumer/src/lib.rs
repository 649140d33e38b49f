//! The consumer: reads every shard of a Kinesis stream and logs each `DataMessage`.
//!
//! - [`reader`]: one shard's `GetRecords` loop with rate limits, iterator renewal and retries.
//! - [`polling`]: polling mode, which reads all shards in one process and follows resharding
//!   (parents before children).
//! - [`lease`]: leased mode, which shares the shards among any number of consumer processes
//!   through a KCL-compatible DynamoDB lease table, with checkpoints (at-least-once).
//! - [`record`]: decoding and logging; a record that is not a `DataMessage` is logged as a
//!   warning naming its shard and sequence number, and skipped.
//!
//! Run it with `cargo run -p consumer` (see the README for the variables).

pub mod lease;
pub mod polling;
pub mod reader;
pub mod record;

use common::config::{ConsumerMode, ConsumerSettings};
use tokio_util::sync::CancellationToken;

/// Runs the consumer until `cancel` fires, with AWS clients built from `sdk` (the standard
/// chain: `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_DYNAMODB` and all).
pub async fn run(
    settings: ConsumerSettings,
    sdk: &aws_config::SdkConfig,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let client = common::aws::kinesis(sdk, &settings.shared.timeouts);
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
    match settings.mode {
        ConsumerMode::Polling => Ok(polling::run(&settings, client, cancel).await?),
        ConsumerMode::Leased => {
            lease::run(
                &settings,
                client,
                common::aws::dynamodb(sdk, &settings.shared.timeouts),
                cancel,
            )
            .await
        }
    }
}
