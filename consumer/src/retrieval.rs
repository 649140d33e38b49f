//! How a shard's records are fetched (`CONSUMER_RETRIEVAL`): by polling with `GetRecords`
//! ([`crate::reader`]) or pushed by enhanced fan-out ([`crate::fanout`]). Both modes open a
//! [`ShardSource`] per shard and take [`Batch`]es from it, so everything after the fetch
//! (deaggregation, logging, checkpoints, resharding, the processor API) is one code path.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::types::Shard;
use aws_sdk_kinesis::Client;
use kinesis_common::config::{ConsumerSettings, FanOutSettings};
use tokio_util::sync::CancellationToken;

use crate::fanout::{ClosedShards, FanOutContext, FanoutReader, RegisterError};
use crate::reader::{Batch, ReadError, ShardReader, StartPosition};

/// The retrieval a process uses, ready to open shards: for fan-out, with the stream consumer
/// registered. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Retrieval {
    Polling {
        max_records: i32,
        poll_interval: Duration,
    },
    FanOut(FanOutContext),
}

/// How a [`Worker`](crate::lease::Worker) reads its shards: polling or enhanced fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrievalConfig {
    /// `GetRecords` calls.
    Polling {
        /// At most this many records a call.
        max_records: i32,
        /// Wait after a call that returned nothing.
        poll_interval: Duration,
    },
    /// Enhanced fan-out (`SubscribeToShard`) through the registered stream consumer these
    /// settings name.
    FanOut(FanOutSettings),
}

impl RetrievalConfig {
    /// The retrieval the `consumer` service's variables choose.
    pub fn from_settings(settings: &ConsumerSettings) -> Self {
        match settings.retrieval {
            kinesis_common::config::Retrieval::Polling => RetrievalConfig::Polling {
                max_records: settings.max_records,
                poll_interval: settings.poll_interval,
            },
            kinesis_common::config::Retrieval::FanOut => {
                RetrievalConfig::FanOut(settings.fan_out.clone())
            }
        }
    }

    /// `polling` or `fanout`, as `CONSUMER_RETRIEVAL` writes it.
    pub fn name(&self) -> &'static str {
        match self {
            RetrievalConfig::Polling { .. } => kinesis_common::config::Retrieval::Polling.as_str(),
            RetrievalConfig::FanOut(_) => kinesis_common::config::Retrieval::FanOut.as_str(),
        }
    }
}

impl Retrieval {
    /// Makes the retrieval ready: for fan-out, registers the stream consumer if it is missing
    /// and waits until it is `ACTIVE` (at most `wait`; see [`crate::fanout::register`]).
    pub async fn prepare(
        config: &RetrievalConfig,
        client: &Client,
        stream: &str,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Self, RegisterError> {
        Ok(match config {
            RetrievalConfig::Polling {
                max_records,
                poll_interval,
            } => Retrieval::Polling {
                max_records: *max_records,
                poll_interval: *poll_interval,
            },
            RetrievalConfig::FanOut(settings) => {
                let consumer =
                    crate::fanout::register(client, stream, &settings.consumer_name, wait, cancel)
                        .await?;
                Retrieval::FanOut(FanOutContext {
                    consumer: Arc::new(consumer),
                    renew_interval: settings.renew_interval,
                    idle_timeout: settings.idle_timeout,
                    closed: ClosedShards::default(),
                })
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Retrieval::Polling { .. } => kinesis_common::config::Retrieval::Polling.as_str(),
            Retrieval::FanOut(_) => kinesis_common::config::Retrieval::FanOut.as_str(),
        }
    }

    /// A reader of `shard_id` from `start`.
    pub fn open(
        &self,
        client: Client,
        stream: &str,
        shard_id: &str,
        start: StartPosition,
    ) -> ShardSource {
        match self {
            Retrieval::Polling {
                max_records,
                poll_interval,
            } => ShardSource::Polling(ShardReader::new(
                client,
                stream,
                shard_id,
                start,
                *max_records,
                *poll_interval,
            )),
            Retrieval::FanOut(ctx) => ShardSource::FanOut(FanoutReader::new(
                client,
                stream,
                shard_id,
                start,
                ctx.clone(),
            )),
        }
    }

    /// Tells the readers what a shard listing showed (fan-out uses the closed shards to notice
    /// a shard's end on services that do not report it in the event stream), and the status
    /// page (its keyspace).
    pub fn note_listing(&self, shards: &[Shard]) {
        if let Some(o) = crate::observe::observer() {
            o.shards_listed(shards);
        }
        if let Retrieval::FanOut(ctx) = self {
            ctx.closed.note_listing(shards);
        }
    }
}

/// One shard's reader, whichever the retrieval.
// One per shard read, moved once into its task: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum ShardSource {
    Polling(ShardReader),
    FanOut(FanoutReader),
}

impl ShardSource {
    pub fn shard_id(&self) -> &str {
        match self {
            ShardSource::Polling(r) => r.shard_id(),
            ShardSource::FanOut(r) => r.shard_id(),
        }
    }

    /// The next batch; see [`ShardReader::next_batch`] and [`FanoutReader::next_batch`]. After
    /// a batch with `ended`, the source must not be called again.
    pub async fn next_batch(&mut self, cancel: &CancellationToken) -> Result<Batch, ReadError> {
        match self {
            ShardSource::Polling(r) => r.next_batch(cancel).await,
            ShardSource::FanOut(r) => r.next_batch(cancel).await,
        }
    }
}
