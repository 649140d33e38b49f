//! The timer-driven producer service: every tick it builds `PRODUCER_MESSAGES_PER_TICK`
//! `DataMessage`s and hands them to the batching [`Producer`], logging `record sent` for each
//! acknowledged record with the shard and sequence number Kinesis returned.
//!
//! With `PRODUCER_INTERVAL_MS=0` it keeps the buffer full: it never waits for one record's
//! acknowledgement before handing over the next. With `PRODUCER_COUNT=N` it hands over exactly
//! N messages, waits for their acknowledgements and returns; it is an error if any failed.
//!
//! Messages are handed over tagged ([`Producer::enqueue_tagged`]) and their outcomes come back
//! in batches, one per `PutRecords` answer: the tag finds the message's id and `CreatedOn` for its
//! log line in `Handed`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use kinesis_common::config::ProducerSettings;
use kinesis_common::http::Probe;
use kinesis_common::message::DataMessage;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::batching::{Outcomes, Producer, ProducerConfig, ProducerRecord};
use crate::metrics::ProducerMetrics;
use crate::status::ProducerStatus;

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Records Kinesis acknowledged.
    pub acknowledged: u64,
    /// Records given up on.
    pub failed: u64,
    /// Handed over but neither acknowledged nor failed when the shutdown timeout ran out.
    pub unsent: u64,
}

impl ProducerConfig {
    /// The library configuration the service's variables describe.
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
    kinesis_common::http::run_with_server(
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
    kinesis_common::kinesis::wait_for_stream(
        &client,
        &stream,
        settings.shared.stream_wait_timeout,
        cancel,
    )
    .await
    .or_else(|e| match e {
        kinesis_common::kinesis::StreamWaitError::Cancelled(_) => Ok(()),
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
    let (producer, flusher, outcomes) = Producer::start_with_outcomes(client, config)?;
    let handed = Arc::new(Mutex::new(Handed::new(settings.max_buffered_records)));
    let acks = tokio::spawn(log_acks(outcomes, handed.clone(), status.clone()));

    let handed_over = feed(settings, &producer, &handed, cancel).await;
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
    // The outcome stream ends with the background task, whether it drained or was stopped.
    let (acknowledged, failed) = acks.await.context("while collecting acknowledgements")?;
    let summary = RunSummary {
        acknowledged,
        failed,
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
    handed: &Mutex<Handed>,
    cancel: &CancellationToken,
) -> u64 {
    let mut ticker = (!settings.interval.is_zero()).then(|| {
        let mut t = tokio::time::interval(settings.interval);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut handed_over = 0u64;
    let mut scratch = Vec::new();
    // One message renewed for each record: its `Source` is not copied each time.
    let mut message = DataMessage::new();
    message.source = settings.source.clone();
    let limit = settings.count.unwrap_or(u64::MAX);
    // A batch takes at most a quarter of the buffer, so that it never waits for all of it.
    let max_batch_records = (settings.max_buffered_records / 4).clamp(1, HAND_OVER_AT_ONCE);
    let max_batch_bytes = (settings.max_buffered_bytes / 4).max(1);
    while handed_over < limit {
        if let Some(t) = ticker.as_mut() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = t.tick() => {}
            }
        } else if cancel.is_cancelled() {
            break;
        }
        let mut left_in_tick = settings.messages_per_tick;
        while left_in_tick > 0 && handed_over < limit {
            // A batch: at most `HAND_OVER_AT_ONCE` messages and a quarter of the buffer.
            let mut batch = Vec::with_capacity(HAND_OVER_AT_ONCE.min(left_in_tick as usize));
            let (mut batch_bytes, mut ids) = (0usize, Vec::new());
            {
                let mut handed = lock(handed);
                while left_in_tick > 0
                    && handed_over + (batch.len() as u64) < limit
                    && batch.len() < max_batch_records
                {
                    message.renew();
                    let key = settings.partition_key.clone().unwrap_or_else(|| {
                        // The hyphenated form `to_string` gives, without the formatting machinery.
                        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
                        message.id.hyphenated().encode_lower(&mut buf).to_owned()
                    });
                    let record = to_record(&message, key, &mut scratch);
                    batch_bytes += record.buffered_size();
                    if !batch.is_empty() && batch_bytes > max_batch_bytes {
                        // The next batch starts with it (renewed again: a new id and time).
                        break;
                    }
                    // Remembered before the record is handed over: its outcome may come at once.
                    let tag = handed.remember(message.id, message.created_on);
                    ids.push((tag, message.id));
                    batch.push((record, tag));
                    left_in_tick -= 1;
                }
            }
            // Hand-over first: when there is room it is ready at once, and the cancellation
            // future is never polled (polling it registers a waiter, a lock per batch).
            let result = tokio::select! {
                biased;
                r = producer.enqueue_tagged_batch(batch) => r,
                _ = cancel.cancelled() => {
                    // Nothing of the batch was handed over.
                    let mut handed = lock(handed);
                    for (tag, _) in ids {
                        handed.take(tag);
                    }
                    return handed_over;
                }
            };
            let refused = match result {
                Ok(refused) => refused,
                Err(err) => ids.iter().map(|(tag, _)| (*tag, err.clone())).collect(),
            };
            handed_over += (ids.len() - refused.len()) as u64;
            for (tag, err) in refused {
                lock(handed).take(tag);
                let id = ids.iter().find(|(t, _)| *t == tag).map(|(_, id)| *id);
                tracing::error!(id = %id.unwrap_or_default(), error = %err, "message not handed over")
            }
        }
    }
    handed_over
}

/// Messages handed over in one batch, at most (a tick of more is handed over in several).
const HAND_OVER_AT_ONCE: usize = 256;

/// The record for a message: its JSON, in an allocation of exactly its length, since the
/// producer's byte bound counts lengths. It is encoded into `scratch`, reused from message to
/// message, and copied out once.
fn to_record(message: &DataMessage, key: String, scratch: &mut Vec<u8>) -> ProducerRecord {
    scratch.clear();
    message.write_json(scratch);
    ProducerRecord::new(key, bytes::Bytes::copy_from_slice(scratch))
}

/// What the service keeps of each message handed over until its outcome is logged: its id and
/// `CreatedOn`, by tag. Tags count up in the order messages are handed over, so they live in a
/// ring indexed by tag; the messages still waiting when the ring reaches its limit (a few
/// retried for long while thousands after them were acknowledged) move to a map, so the ring
/// never holds more than `limit` slots whatever one record's fate.
struct Handed {
    /// The tag of `ring[0]`.
    first: u64,
    /// `None` once logged (or never handed over).
    ring: VecDeque<Option<Message>>,
    stragglers: HashMap<u64, Message>,
    limit: usize,
}

type Message = (Uuid, DateTime<Utc>);

impl Handed {
    /// Room for twice `max_buffered_records` messages in the ring: the producer holds no more
    /// than that many at once.
    fn new(max_buffered_records: usize) -> Self {
        Self {
            first: 0,
            ring: VecDeque::new(),
            stragglers: HashMap::new(),
            limit: max_buffered_records.saturating_mul(2).max(2),
        }
    }

    /// Keeps a message; returns its tag.
    fn remember(&mut self, id: Uuid, created_on: DateTime<Utc>) -> u64 {
        if self.ring.len() >= self.limit {
            // Move the older half out: the still waiting ones to the map.
            for _ in 0..self.limit / 2 {
                if let Some(Some(message)) = self.ring.pop_front() {
                    self.stragglers.insert(self.first, message);
                }
                self.first += 1;
            }
        }
        self.ring.push_back(Some((id, created_on)));
        self.first + self.ring.len() as u64 - 1
    }

    /// The message of `tag`, forgotten now; `None` if it was taken already.
    fn take(&mut self, tag: u64) -> Option<Message> {
        let Some(i) = tag.checked_sub(self.first) else {
            return self.stragglers.remove(&tag);
        };
        let message = self.ring.get_mut(i as usize)?.take();
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.first += 1;
        }
        message
    }
}

fn lock(handed: &Mutex<Handed>) -> std::sync::MutexGuard<'_, Handed> {
    // Nothing panics while holding it; a poisoned lock still holds consistent data.
    handed.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Logs each outcome as its batch arrives, until the producer's background task ended; returns
/// (acknowledged, failed).
async fn log_acks(
    mut outcomes: Outcomes,
    handed: Arc<Mutex<Handed>>,
    status: Arc<ProducerStatus>,
) -> (u64, u64) {
    let (mut acked, mut failed) = (0u64, 0u64);
    let mut last_report = Instant::now();
    let mut acked_at_report = 0u64;
    while let Some(batch) = outcomes.recv().await {
        let messages: Vec<Option<Message>> = {
            let mut handed = lock(&handed);
            batch
                .outcomes()
                .iter()
                .map(|(tag, _)| handed.take(*tag))
                .collect()
        };
        for ((_, result), message) in batch.outcomes().iter().zip(messages) {
            let Some((id, created_on)) = message else {
                continue;
            };
            match result {
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
            }
        }
        // The records' room in the buffer goes back now.
        drop(batch);
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
    (acked, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_found_by_its_tag_once_even_behind_one_that_waits_long() {
        let mut handed = Handed::new(4); // a ring of 8
        let now = Utc::now();
        let ids: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
        let mut tags = Vec::new();
        for id in &ids {
            tags.push(handed.remember(*id, now));
            // Every message but the first is logged at once; the first waits.
            if tags.len() > 1 {
                assert_eq!(handed.take(*tags.last().unwrap()), Some((*id, now)));
            }
            assert!(handed.ring.len() <= 8, "{} slots", handed.ring.len());
        }
        assert_eq!(tags, (0..40).collect::<Vec<u64>>());
        assert_eq!(handed.stragglers.len(), 1);
        assert_eq!(handed.take(0), Some((ids[0], now)));
        assert_eq!(handed.take(0), None);
        assert_eq!(handed.take(39), None);
        assert!(handed.stragglers.is_empty());
    }

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
