//! Reads one shard with `GetRecords`, politely: at most 5 calls a second (the Kinesis limit
//! shared by all polling consumers of a shard), at once again while the shard returns data,
//! after `poll_interval` when it returned nothing. Expired iterators are renewed from the last
//! sequence number read; throttling and transient errors are retried with backoff.

use std::time::Duration;

use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use aws_sdk_kinesis::Client;
use chrono::{DateTime, Utc};
use common::backoff::Backoff;
use common::kinesis::{error_code, error_text, is_retryable};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Minimum time between two `GetRecords` calls on one shard (5 calls a second).
pub const MIN_CALL_SPACING: Duration = Duration::from_millis(200);

/// Where to start reading a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    AtTimestamp(DateTime<Utc>),
    /// Just after this sequence number (resuming from a checkpoint).
    AfterSequence(String),
    /// At this sequence number (resuming inside an aggregated record).
    AtSequence(String),
}

/// What one call returned.
#[derive(Debug)]
pub struct Batch {
    pub records: Vec<Record>,
    pub millis_behind_latest: Option<i64>,
    /// `Some` once the shard is closed and fully read: the ids of its child shards.
    pub ended: Option<Vec<String>>,
}

/// Why a reader stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stop requested")]
    Cancelled,
    #[error("shard {shard_id}: {message}")]
    Fatal { shard_id: String, message: String },
}

pub struct ShardReader {
    client: Client,
    stream: String,
    shard_id: String,
    start: StartPosition,
    iterator: Option<String>,
    /// Last sequence number handed out, to renew an expired iterator without gaps or repeats.
    last_sequence: Option<String>,
    max_records: i32,
    poll_interval: Duration,
    next_call_at: Instant,
    ended: bool,
}

impl ShardReader {
    pub fn new(
        client: Client,
        stream: impl Into<String>,
        shard_id: impl Into<String>,
        start: StartPosition,
        max_records: i32,
        poll_interval: Duration,
    ) -> Self {
        Self {
            client,
            stream: stream.into(),
            shard_id: shard_id.into(),
            start,
            iterator: None,
            last_sequence: None,
            max_records,
            poll_interval,
            next_call_at: Instant::now(),
            ended: false,
        }
    }

    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The next batch, waiting as the rate limits require. After a batch with `ended`, the
    /// reader must not be called again.
    pub async fn next_batch(&mut self, cancel: &CancellationToken) -> Result<Batch, ReadError> {
        debug_assert!(!self.ended, "shard already ended");
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err(ReadError::Cancelled),
                _ = tokio::time::sleep_until(self.next_call_at) => {}
            }
            let iterator = match self.iterator.clone() {
                Some(it) => it,
                None => match self.new_iterator().await {
                    Ok(it) => it,
                    Err(Retry::Transient(text)) => {
                        self.pause_after_error(&mut backoff, &text);
                        continue;
                    }
                    Err(Retry::Fatal(message)) => return Err(self.fatal(message)),
                },
            };
            let result = self
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(self.max_records)
                .send()
                .await;
            self.next_call_at = Instant::now() + MIN_CALL_SPACING;
            let out = match result {
                Ok(out) => out,
                Err(err) if error_code(&err) == Some("ExpiredIteratorException") => {
                    tracing::info!(shard_id = %self.shard_id, "shard iterator expired, renewing it");
                    self.iterator = None;
                    continue;
                }
                Err(err) if is_retryable(&err) => {
                    self.pause_after_error(&mut backoff, &error_text(&err));
                    continue;
                }
                Err(err) => return Err(self.fatal(format!("GetRecords: {}", error_text(&err)))),
            };
            let records = out.records().to_vec();
            if let Some(last) = records.last() {
                self.last_sequence = Some(last.sequence_number().to_string());
            }
            self.iterator = out.next_shard_iterator().map(str::to_string);
            let ended = if self.iterator.is_none() {
                self.ended = true;
                Some(
                    out.child_shards()
                        .iter()
                        .map(|c| c.shard_id().to_string())
                        .collect(),
                )
            } else {
                None
            };
            let behind = out.millis_behind_latest();
            if records.is_empty() && ended.is_none() && behind.unwrap_or(0) == 0 {
                // Caught up: wait before asking again.
                self.next_call_at = Instant::now() + self.poll_interval.max(MIN_CALL_SPACING);
            }
            return Ok(Batch {
                records,
                millis_behind_latest: behind,
                ended,
            });
        }
    }

    fn fatal(&self, message: String) -> ReadError {
        ReadError::Fatal {
            shard_id: self.shard_id.clone(),
            message,
        }
    }

    fn pause_after_error(&mut self, backoff: &mut Backoff, error: &str) {
        let delay = backoff.next_delay();
        tracing::warn!(shard_id = %self.shard_id, error = %error, retry_in_ms = delay.as_millis() as u64, "transient error reading shard, retrying");
        self.next_call_at = Instant::now() + delay.max(MIN_CALL_SPACING);
    }

    async fn new_iterator(&self) -> Result<String, Retry> {
        let mut request = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&self.shard_id);
        request = match (&self.last_sequence, &self.start) {
            (Some(seq), _) | (None, StartPosition::AfterSequence(seq)) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            (None, StartPosition::AtSequence(seq)) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq),
            (None, StartPosition::TrimHorizon) => {
                request.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            (None, StartPosition::Latest) => request.shard_iterator_type(ShardIteratorType::Latest),
            (None, StartPosition::AtTimestamp(t)) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(
                    t.timestamp_millis(),
                )),
        };
        match request.send().await {
            Ok(out) => out
                .shard_iterator()
                .map(str::to_string)
                .ok_or_else(|| Retry::Fatal("GetShardIterator returned no iterator".into())),
            Err(err) if is_retryable(&err) => Err(Retry::Transient(error_text(&err))),
            Err(err) => Err(Retry::Fatal(format!(
                "GetShardIterator: {}",
                error_text(&err)
            ))),
        }
    }
}

enum Retry {
    Transient(String),
    Fatal(String),
}
