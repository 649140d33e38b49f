//! `consumer multilang FILE`: a drop-in for the Java KCL's MultiLangDaemon. KCL applications
//! written in Python (amazon-kclpy), Node.js (`aws-kcl`), .NET or Ruby run unchanged, with
//! the same properties file, and no JVM.
//!
//! - `properties`: the daemon's properties file, read into the consumer's settings.
//! - `protocol`: the JSON-lines messages, as the Java daemon writes and reads them.
//! - `child`: the [`crate::lease::RecordProcessor`] that runs one child process per lease
//!   held and speaks the protocol with it.
//!
//! Everything else is leased mode as it is: the lease table in the KCL's format, checkpoints,
//! load balancing, handoff, polling or fan-out, metrics, health and the status page. The
//! guarantees are leased mode's: at-least-once (a child's checkpoints are written only when it
//! asks, and only up to the records it was given), and a shard whose child fails is taken again
//! from its checkpoint.

mod child;
mod properties;
mod protocol;

use kinesis_common::telemetry::RecentEvents;
use tokio_util::sync::CancellationToken;

pub use child::{ChildConfig, ChildProcessorFactory};
pub use properties::{load, MultiLangSettings, PropertiesError};

/// Runs the application of `settings` until `cancel` fires.
pub async fn run(
    settings: MultiLangSettings,
    cancel: CancellationToken,
    recent: RecentEvents,
) -> anyhow::Result<()> {
    for (key, instead) in &settings.unimplemented {
        tracing::warn!(key = %key, instead = %instead, "property not implemented");
    }
    let sdk = kinesis_common::aws::load_in_region(settings.region.clone()).await?;
    let timeouts = &settings.consumer.shared.timeouts;
    let kinesis =
        kinesis_common::aws::kinesis_at(&sdk, timeouts, settings.kinesis_endpoint.as_deref());
    let dynamodb =
        kinesis_common::aws::dynamodb_at(&sdk, timeouts, settings.dynamodb_endpoint.as_deref());
    tracing::info!(
        command = %settings.command.join(" "),
        timeout_seconds = settings.timeout.map(|t| t.as_secs()),
        "multilang daemon starting"
    );
    let factory = ChildProcessorFactory::new(ChildConfig {
        command: settings.command,
        timeout: settings.timeout,
        empty_batches: settings.empty_batches,
    });
    crate::serve(
        settings.consumer,
        kinesis,
        dynamodb,
        factory,
        cancel,
        recent,
    )
    .await
}
