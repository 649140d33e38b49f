//! A Kinesis consumer library compatible with the Java KCL, and the `consumer` service built
//! on it.
//!
//! The library is [`lease`]: a [`lease::Worker`] shares a stream's shards with the other workers
//! of its application through a DynamoDB lease table in the KCL 2.x format (balancing,
//! failover, graceful handoff, resharding with parents first), reads them by polling or
//! enhanced fan-out, unpacks KPL aggregates, and hands each shard's user records, in order, to
//! your [`lease::RecordProcessor`], which records its progress with a [`lease::Checkpointer`].
//! Delivery is at-least-once: what was processed after the last checkpoint is delivered again
//! to the next holder. `examples/custom_processor.rs` is a complete application.
//!
//! The service around it (`cargo run -p kinesis-consumer`, variables in the README):
//!
//! - [`run`] and [`serve`]: polling mode (one process reads every shard and keeps no state) or
//!   leased mode, with the HTTP server (metrics, health, status page);
//! - [`multilang`]: `consumer multilang FILE`, a drop-in for the KCL's MultiLangDaemon: leased
//!   mode with a child process per lease, spoken to by the daemon's JSON-lines protocol.
//!
//! Inside: `reader` (one shard's `GetRecords` loop), `fanout` (one shard's `SubscribeToShard`
//! subscriptions), `retrieval` (one interface over both), `polling`, `record` (decoding and
//! deaggregation), `metrics` and `observe` (Prometheus metrics and the status page).

#![warn(missing_docs)]

mod fanout;
pub mod lease;
mod metrics;
pub mod multilang;
mod observe;
mod polling;
mod reader;
mod record;
mod retrieval;

use std::sync::Arc;

use kinesis_common::config::{ConsumerMode, ConsumerSettings};
use kinesis_common::http::Probe;
use kinesis_common::telemetry::RecentEvents;
use tokio_util::sync::CancellationToken;

use crate::lease::RecordProcessorFactory;
use crate::metrics::ConsumerMetrics;
use crate::observe::Observer;

/// Runs the consumer until `cancel` fires, with AWS clients built from `sdk` (the standard
/// chain: `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_DYNAMODB` and all), and the HTTP server
/// (metrics, health, status) on `HTTP_ADDR` for as long as it runs. `recent` holds the last
/// warnings and errors logged, for the status page. In leased mode each record is logged
/// ([`lease::LoggingProcessorFactory`]).
pub async fn run(
    settings: ConsumerSettings,
    sdk: &aws_config::SdkConfig,
    cancel: CancellationToken,
    recent: RecentEvents,
) -> anyhow::Result<()> {
    let kinesis = kinesis_common::aws::kinesis(sdk, &settings.shared.timeouts);
    let dynamodb = kinesis_common::aws::dynamodb(sdk, &settings.shared.timeouts);
    serve(
        settings,
        kinesis,
        dynamodb,
        lease::LoggingProcessorFactory,
        cancel,
        recent,
    )
    .await
}

/// [`run`] with the given clients and, in leased mode, a processor from `factory` per lease.
pub async fn serve<F: RecordProcessorFactory>(
    settings: ConsumerSettings,
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    factory: F,
    cancel: CancellationToken,
    recent: RecentEvents,
) -> anyhow::Result<()> {
    let stream = settings.shared.stream_name.clone();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ConsumerMetrics::register(&mut registry, &stream);
    let probe = Arc::new(Probe::default());
    let leased = settings.mode == ConsumerMode::Leased;
    let worker_id = leased.then(|| lease::worker_id(&settings));
    let observer = Observer::install(
        metrics,
        probe.clone(),
        &stream,
        if leased { "leased" } else { "polling" },
        settings.retrieval.as_str(),
        worker_id.clone(),
        leased.then(|| settings.lease.application_name.clone()),
        recent,
    );
    let routes = observe::routes(observer.clone());
    kinesis_common::http::run_with_server(
        settings.shared.http_addr,
        probe.clone(),
        registry,
        routes,
        |stop| observer.sample(stop),
        run_service(
            &settings,
            Clients { kinesis, dynamodb },
            factory,
            worker_id,
            &probe,
            cancel,
        ),
    )
    .await
}

struct Clients {
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
}

async fn run_service<F: RecordProcessorFactory>(
    settings: &ConsumerSettings,
    clients: Clients,
    factory: F,
    worker_id: Option<String>,
    probe: &Probe,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let client = clients.kinesis;
    let stream = &settings.shared.stream_name;
    probe.set_not_ready(format!("waiting for stream {stream} to become ACTIVE"));
    match kinesis_common::kinesis::wait_for_stream(
        &client,
        stream,
        settings.shared.stream_wait_timeout,
        &cancel,
    )
    .await
    {
        Ok(()) => {}
        Err(kinesis_common::kinesis::StreamWaitError::Cancelled(_)) => return Ok(()),
        Err(other) => return Err(other.into()),
    }
    match settings.mode {
        ConsumerMode::Polling => {
            probe.set_ready();
            Ok(polling::run(settings, client, cancel).await?)
        }
        ConsumerMode::Leased => {
            // Ready once the lease table answers: the coordinator says so after each scan.
            probe.set_not_ready(format!(
                "waiting for lease table {}",
                settings.lease.application_name
            ));
            let config =
                lease::WorkerConfig::from_settings(settings, worker_id.unwrap_or_default());
            lease::Worker::new(config, client, clients.dynamodb, factory)
                .run(cancel)
                .await
        }
    }
}
