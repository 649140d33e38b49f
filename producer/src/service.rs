//! The timer-driven producer service: every tick it builds `PRODUCER_MESSAGES_PER_TICK`
//! `DataMessage`s and hands them to the batching [`Producer`], logging `record sent` for each
//! acknowledged record with the shard and sequence number Kinesis returned.
//!
//! With `PRODUCER_INTERVAL_MS=0` it keeps the buffer full: it never waits for one record's
//! acknowledgement before handing over the next. With `PRODUCER_COUNT=N` it hands over exactly
//! N messages, waits for their acknowledgements and returns; it is an error if any failed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use common::config::ProducerSettings;
use common::http::Probe;
use common::message::DataMessage;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::batching::{Producer, ProducerConfig, ProducerRecord, Receipt};
use crate::metrics::ProducerMetrics;
use crate::status::ProducerStatus;

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub acknowledged: u64,
    pub failed: u64,
    /// Handed over but neither acknowledged nor failed when the shutdown timeout ran out.
    pub unsent: u64,
}

impl ProducerConfig {
    pub fn from_settings(s: &ProducerSettings) -> Self {
        Self {
            linger: s.linger,
            max_buffered_records: s.max_buffered_records,
            max_buffered_bytes: s.max_buffered_bytes,
            max_in_flight: s.max_in_flight,
            record_ttl: s.record_ttl,
            aggregation: s.aggregation,
            aggregation_max_bytes: s.aggregation_max_bytes,
            shard_rate_limit_percent: s.shard_rate_limit_percent,
            ..ProducerConfig::new(s.shared.stream_name.clone())
        }
    }
}

/// Runs the service until `PRODUCER_COUNT` messages are acknowledged or `cancel` fires, with the
/// HTTP server (metrics, health, status) on `HTTP_ADDR` for as long as it runs.
pub async fn run(
    settings: ProducerSettings,
    client: aws_sdk_kinesis::Client,
    cancel: CancellationToken,
) -> anyhow::Result<RunSummary> {
    let stream = settings.shared.stream_name.clone();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ProducerMetrics::register(&mut registry, &stream);
    metrics
        .max_buffered_records
        .set(i64::try_from(settings.max_buffered_records).unwrap_or(i64::MAX));
    let probe = Arc::new(Probe::default());
    let status = ProducerStatus::new(&stream, metrics.clone(), probe.clone());
    // The server outlives the main loop's cancellation: it answers during the final flush.
    let routes = crate::status::routes(status.clone());
    common::http::run_with_server(
        settings.shared.http_addr,
        probe.clone(),
        registry,
        routes,
        |stop| status.clone().sample(stop),
        run_service(&settings, client, metrics, &probe, &status, &cancel),
    )
    .await
}

async fn run_service(
    settings: &ProducerSettings,
    client: aws_sdk_kinesis::Client,
    metrics: ProducerMetrics,
    probe: &Probe,
    status: &Arc<ProducerStatus>,
    cancel: &CancellationToken,
) -> anyhow::Result<RunSummary> {
    let stream = settings.shared.stream_name.clone();
    probe.set_not_ready(format!("waiting for stream {stream} to become ACTIVE"));
    common::kinesis::wait_for_stream(
        &client,
        &stream,
        settings.shared.stream_wait_timeout,
        cancel,
    )
    .await
    .or_else(|e| match e {
        common::kinesis::StreamWaitError::Cancelled(_) => Ok(()),
        other => Err(other),
    })?;
    if cancel.is_cancelled() {
        return Ok(RunSummary::default());
    }
    probe.set_ready();
    tracing::info!(
        stream = %stream,
        interval_ms = settings.interval.as_millis() as u64,
        messages_per_tick = settings.messages_per_tick,
        count = settings.count,
        "producer started"
    );

    let config = ProducerConfig {
        metrics: Some(metrics),
        ..ProducerConfig::from_settings(settings)
    };
    let (producer, flusher) = Producer::start(client, config)?;
    let (receipts_tx, receipts_rx) = mpsc::channel(16_384);
    let acks = tokio::spawn(log_acks(receipts_rx, status.clone()));

    let handed_over = feed(settings, &producer, &receipts_tx, cancel).await;
    drop(receipts_tx);
    drop(producer);

    let unsent = flusher
        .finish(if cancel.is_cancelled() {
            settings.shutdown_timeout
        } else {
            // Finite run: wait as long as a record may live.
            settings.record_ttl + Duration::from_secs(5)
        })
        .await as u64;
    if unsent > 0 {
        tracing::warn!(
            unsent,
            "shutdown timeout reached: records still buffered were not sent"
        );
    }
    let (acknowledged, failed) = acks.await.context("while collecting acknowledgements")?;
    let summary = RunSummary {
        acknowledged,
        failed: failed - unsent.min(failed),
        unsent,
    };
    tracing::info!(
        handed_over,
        acknowledged,
        failed = summary.failed,
        unsent,
        "producer stopped"
    );
    if let Some(count) = settings.count {
        if !cancel.is_cancelled() && acknowledged != count {
            anyhow::bail!(
                "only {acknowledged} of {count} messages were acknowledged ({} failed, {unsent} unsent)",
                summary.failed
            );
        }
    }
    Ok(summary)
}

/// Hands messages to the producer tick by tick; returns how many it handed over.
async fn feed(
    settings: &ProducerSettings,
    producer: &Producer,
    receipts: &mpsc::Sender<Handed>,
    cancel: &CancellationToken,
) -> u64 {
    let mut ticker = (!settings.interval.is_zero()).then(|| {
        let mut t = tokio::time::interval(settings.interval);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut handed_over = 0u64;
    let mut scratch = Vec::new();
    let limit = settings.count.unwrap_or(u64::MAX);
    while handed_over < limit {
        if let Some(t) = ticker.as_mut() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = t.tick() => {}
            }
        } else if cancel.is_cancelled() {
            break;
        }
        for _ in 0..settings.messages_per_tick {
            if handed_over >= limit {
                break;
            }
            let mut message = DataMessage::new();
            message.source = settings.source.clone();
            let key = settings
                .partition_key
                .clone()
                .unwrap_or_else(|| message.id.to_string());
            let record = to_record(&message, key, &mut scratch);
            let receipt = tokio::select! {
                _ = cancel.cancelled() => return handed_over,
                r = producer.enqueue(record) => r,
            };
            match receipt {
                Ok(receipt) => {
                    handed_over += 1;
                    let handed = (message.id, message.created_on, receipt);
                    if receipts.send(handed).await.is_err() {
                        return handed_over;
                    }
                }
                Err(err) => {
                    tracing::error!(id = %message.id, error = %err, "message not handed over")
                }
            }
        }
    }
    handed_over
}

/// The record for a message: its JSON, in an allocation of exactly its length, since the
/// producer's byte bound counts lengths. It is encoded into `scratch`, reused from message to
/// message, and copied out once.
fn to_record(message: &DataMessage, key: String, scratch: &mut Vec<u8>) -> ProducerRecord {
    scratch.clear();
    message.write_json(scratch);
    ProducerRecord::new(key, bytes::Bytes::copy_from_slice(scratch))
}

/// A message handed to the producer: its id, its `CreatedOn` and the receipt to wait on.
type Handed = (Uuid, DateTime<Utc>, Receipt);

type Outcome = (Uuid, DateTime<Utc>, Result<crate::Ack, crate::SendError>);

async fn outcome((id, created_on, receipt): Handed) -> Outcome {
    (id, created_on, receipt.await)
}

/// Logs each acknowledgement as it arrives; returns (acknowledged, failed).
async fn log_acks(mut receipts: mpsc::Receiver<Handed>, status: Arc<ProducerStatus>) -> (u64, u64) {
    let mut pending = FuturesUnordered::new();
    let (mut acked, mut failed) = (0u64, 0u64);
    let mut open = true;
    let mut last_report = Instant::now();
    let mut acked_at_report = 0u64;
    loop {
        tokio::select! {
            next = receipts.recv(), if open => match next {
                Some(first) => {
                    pending.push(outcome(first));
                    while let Ok(next) = receipts.try_recv() {
                        pending.push(outcome(next));
                    }
                }
                None => open = false,
            },
            Some((id, created_on, result)) = pending.next(), if !pending.is_empty() => match result {
                Ok(ack) => {
                    acked += 1;
                    tracing::info!(
                        id = %id,
                        shard_id = %ack.shard_id,
                        sequence_number = %ack.sequence_number,
                        sub_sequence_number = ack.sub_sequence_number,
                        attempts = ack.attempts,
                        "record sent"
                    );
                }
                // Records cut off by the shutdown timeout are one count in `producer
                // stopped` (`unsent`), not one error line each.
                Err(crate::SendError::Stopped) => failed += 1,
                Err(err) => {
                    failed += 1;
                    status.error(&id.to_string(), &err.to_string());
                    tracing::error!(
                        id = %id,
                        created_on = %created_on.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        error = %err,
                        "record not sent"
                    );
                }
            },
            else => return (acked, failed),
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            let rate = (acked - acked_at_report) as f64 / last_report.elapsed().as_secs_f64();
            tracing::info!(
                acknowledged = acked,
                failed,
                per_second = rate.round() as u64,
                "producer progress"
            );
            last_report = Instant::now();
            acked_at_report = acked;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The producer's byte bound counts a record's length: the allocation behind it must not
    /// be larger (`serde_json::to_vec` grows its buffer by doubling, up to twice the length:
    /// 8 KB messages held 16 KB each, and a 64 MiB bound about 130 MB).
    #[test]
    fn a_record_holds_no_more_memory_than_its_length() {
        let mut scratch = Vec::new();
        for source_len in [0, 100, 1000, 8000, 20_000] {
            let mut message = DataMessage::new();
            message.source = Some("x".repeat(source_len));
            let record = to_record(&message, "k".into(), &mut scratch);
            assert_eq!(DataMessage::from_json(&record.data).unwrap(), message);
            let data = Vec::<u8>::from(record.data);
            assert_eq!(
                data.capacity(),
                data.len(),
                "a {source_len}-character source"
            );
        }
    }
}
