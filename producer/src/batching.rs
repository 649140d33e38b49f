//! A buffered, batching Kinesis producer: hand it records, get back their sequence numbers.
//!
//! Guarantees:
//! - **Nothing is reported sent that Kinesis did not acknowledge**: a [`Receipt`] resolves to
//!   an [`Ack`] only with the shard id and sequence number Kinesis returned for that very entry.
//! - **Nothing is lost silently**: every record ends as an `Ack` or a [`SendError`]. Failed
//!   entries of a partial `PutRecords` and whole calls that failed transiently are retried with
//!   exponential backoff and full jitter until the record's time to live runs out.
//! - **Bounded memory**: [`Producer::enqueue`] waits while the buffer holds
//!   `max_buffered_records` records or `max_buffered_bytes` bytes (backpressure).
//!
//! Not guaranteed: order across retries. A record retried after a partial failure lands after
//! records of the same partition key that succeeded in the meantime, as with the KPL.
//!
//! Records are grouped into `PutRecords` calls of at most 500 entries and 5 MiB, sent when a
//! batch is full or when its oldest record has waited `linger`; at most `max_in_flight` calls
//! run at once.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use bytes::Bytes;
use common::backoff::Backoff;
use common::kinesis::{error_text, is_retryable, is_retryable_code};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Kinesis limits for one `PutRecords` call and one record.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// What the caller wants on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
}

impl UserRecord {
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
        }
    }

    /// Bytes the record counts for against the `PutRecords` size limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// Kinesis's acknowledgement of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub shard_id: String,
    pub sequence_number: String,
    /// `PutRecords` calls this record took, 1 when it went through at once.
    pub attempts: u32,
}

/// Why a record was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("record rejected before sending: {0}")]
    Invalid(String),
    #[error("gave up after {attempts} attempts within the record time to live; last error: {last_error}")]
    Expired { attempts: u32, last_error: String },
    #[error("Kinesis rejected the record: {0}")]
    Rejected(String),
    #[error("the producer stopped before the record was acknowledged")]
    Stopped,
}

/// Tuning of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub stream_name: String,
    pub linger: Duration,
    pub max_buffered_records: usize,
    pub max_buffered_bytes: usize,
    pub max_in_flight: usize,
    pub record_ttl: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

impl ProducerConfig {
    pub fn new(stream_name: impl Into<String>) -> Self {
        Self {
            stream_name: stream_name.into(),
            linger: Duration::from_millis(100),
            max_buffered_records: 100_000,
            max_buffered_bytes: 64 << 20,
            max_in_flight: 8,
            record_ttl: Duration::from_secs(30),
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(5),
        }
    }
}

/// Resolves when the record it was issued for is acknowledged or has definitively failed.
pub struct Receipt(oneshot::Receiver<Result<Ack, SendError>>);

impl Future for Receipt {
    type Output = Result<Ack, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(SendError::Stopped)))
    }
}

/// A record in the buffer with what it holds of the buffer's capacity.
struct Pending {
    record: UserRecord,
    done: oneshot::Sender<Result<Ack, SendError>>,
    deadline: Instant,
    attempts: u32,
    last_error: String,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Pending {
    fn finish(self, result: Result<Ack, SendError>) {
        // The caller may have dropped its receipt: nobody to tell, nothing lost.
        let _ = self.done.send(result);
    }
}

/// Handle to a running producer. Cloning is cheap; the background task ends when
/// [`Producer::close`] is called on one handle and every clone is dropped.
#[derive(Clone)]
pub struct Producer {
    tx: mpsc::UnboundedSender<Pending>,
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    config: Arc<ProducerConfig>,
}

/// The background task of a producer; await [`Flusher::finish`] after closing.
pub struct Flusher {
    task: tokio::task::JoinHandle<()>,
    records: Arc<Semaphore>,
    max_records: usize,
}

impl Producer {
    /// Starts the background task sending to `config.stream_name`.
    pub fn start(client: Client, config: ProducerConfig) -> (Self, Flusher) {
        let (tx, rx) = mpsc::unbounded_channel();
        let records = Arc::new(Semaphore::new(config.max_buffered_records));
        let bytes = Arc::new(Semaphore::new(config.max_buffered_bytes));
        let config = Arc::new(config);
        let task = tokio::spawn(Worker::new(client, config.clone(), rx).run());
        let flusher = Flusher {
            task,
            records: records.clone(),
            max_records: config.max_buffered_records,
        };
        (
            Self {
                tx,
                records,
                bytes,
                config,
            },
            flusher,
        )
    }

    /// Puts the record in the buffer, waiting while the buffer is full, and returns the receipt
    /// that resolves once Kinesis acknowledged it (or it failed).
    pub async fn enqueue(&self, record: UserRecord) -> Result<Receipt, SendError> {
        validate(&record)?;
        let size = u32::try_from(record.size().max(1)).unwrap_or(u32::MAX);
        let (Ok(r), Ok(b)) = (
            self.records.clone().acquire_owned().await,
            self.bytes.clone().acquire_many_owned(size).await,
        ) else {
            return Err(SendError::Stopped);
        };
        let (done, rx) = oneshot::channel();
        let pending = Pending {
            record,
            done,
            deadline: Instant::now() + self.config.record_ttl,
            attempts: 0,
            last_error: String::new(),
            _permits: (r, b),
        };
        self.tx.send(pending).map_err(|_| SendError::Stopped)?;
        Ok(Receipt(rx))
    }

    /// Enqueues and waits for the acknowledgement.
    pub async fn send(&self, record: UserRecord) -> Result<Ack, SendError> {
        self.enqueue(record).await?.await
    }
}

impl Flusher {
    /// Waits until every buffered record is acknowledged or failed, at most `timeout` (after all
    /// [`Producer`] handles were dropped). Returns how many records were still unsent when the
    /// time ran out; their receipts resolve to [`SendError::Stopped`].
    pub async fn finish(self, timeout: Duration) -> usize {
        let Flusher {
            mut task,
            records,
            max_records,
        } = self;
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(_) => 0,
            Err(_) => {
                let unsent = max_records - records.available_permits();
                task.abort();
                let _ = task.await;
                unsent
            }
        }
    }
}

fn validate(record: &UserRecord) -> Result<(), SendError> {
    let key_len = record.partition_key.chars().count();
    if !(1..=256).contains(&key_len) {
        return Err(SendError::Invalid(format!(
            "partition key must have 1 to 256 characters, has {key_len}"
        )));
    }
    if record.size() > MAX_RECORD_BYTES {
        return Err(SendError::Invalid(format!(
            "record is {} bytes with its partition key, the limit is {MAX_RECORD_BYTES}",
            record.size()
        )));
    }
    Ok(())
}

/// Outcome of one `PutRecords` call: records to try again after a pause.
struct CallOutcome {
    retry: Vec<Pending>,
}

struct Worker {
    client: Client,
    config: Arc<ProducerConfig>,
    rx: mpsc::UnboundedReceiver<Pending>,
    queue: VecDeque<Pending>,
    queue_bytes: usize,
    /// When the oldest record in `queue` arrived, for the linger timer.
    oldest: Option<Instant>,
    calls: JoinSet<CallOutcome>,
    /// Retries wait here until their backoff ends.
    retry_tx: mpsc::UnboundedSender<Pending>,
    retry_rx: mpsc::UnboundedReceiver<Pending>,
    waiting_retries: usize,
}

impl Worker {
    fn new(
        client: Client,
        config: Arc<ProducerConfig>,
        rx: mpsc::UnboundedReceiver<Pending>,
    ) -> Self {
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        Self {
            client,
            config,
            rx,
            queue: VecDeque::new(),
            queue_bytes: 0,
            oldest: None,
            calls: JoinSet::new(),
            retry_tx,
            retry_rx,
            waiting_retries: 0,
        }
    }

    fn push(&mut self, p: Pending) {
        self.queue_bytes += p.record.size();
        self.oldest.get_or_insert_with(Instant::now);
        self.queue.push_back(p);
    }

    fn batch_full(&self) -> bool {
        self.queue.len() >= MAX_BATCH_RECORDS || self.queue_bytes >= MAX_BATCH_BYTES
    }

    async fn run(mut self) {
        let mut open = true;
        loop {
            // Send every batch that is ready while call slots are free.
            while !self.queue.is_empty() && self.calls.len() < self.config.max_in_flight {
                let linger_over = self
                    .oldest
                    .is_some_and(|t| t.elapsed() >= self.config.linger);
                if !(self.batch_full() || linger_over || !open) {
                    break;
                }
                self.spawn_call();
            }
            if !open && self.queue.is_empty() && self.calls.is_empty() && self.waiting_retries == 0
            {
                return;
            }
            let linger_at = self
                .oldest
                .filter(|_| self.calls.len() < self.config.max_in_flight)
                .map(|t| t + self.config.linger);
            tokio::select! {
                msg = self.rx.recv(), if open => match msg {
                    Some(p) => self.push(p),
                    None => open = false,
                },
                Some(p) = self.retry_rx.recv() => {
                    self.waiting_retries -= 1;
                    self.push(p);
                }
                Some(done) = self.calls.join_next(), if !self.calls.is_empty() => {
                    if let Ok(outcome) = done {
                        self.schedule_retries(outcome.retry);
                    }
                }
                _ = sleep_until_opt(linger_at) => {}
            }
        }
    }

    fn spawn_call(&mut self) {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(p) = self.queue.front() {
            let size = p.record.size();
            if batch.len() == MAX_BATCH_RECORDS
                || (bytes + size > MAX_BATCH_BYTES && !batch.is_empty())
            {
                break;
            }
            bytes += size;
            batch.extend(self.queue.pop_front());
        }
        self.queue_bytes -= bytes;
        self.oldest = if self.queue.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        let client = self.client.clone();
        let stream = self.config.stream_name.clone();
        self.calls.spawn(put_records(client, stream, batch));
    }

    /// Failed entries wait out their backoff, then return to the queue; those past their time
    /// to live fail now.
    fn schedule_retries(&mut self, retry: Vec<Pending>) {
        let now = Instant::now();
        for p in retry {
            let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_cap);
            for _ in 1..p.attempts {
                backoff.next_delay();
            }
            let delay = backoff.next_delay();
            if now + delay >= p.deadline {
                let err = SendError::Expired {
                    attempts: p.attempts,
                    last_error: p.last_error.clone(),
                };
                p.finish(Err(err));
                continue;
            }
            self.waiting_retries += 1;
            let tx = self.retry_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(p);
            });
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn put_records(client: Client, stream: String, mut batch: Vec<Pending>) -> CallOutcome {
    let entries: Vec<PutRecordsRequestEntry> = batch
        .iter_mut()
        .filter_map(|p| {
            p.attempts += 1;
            PutRecordsRequestEntry::builder()
                .data(Blob::new(p.record.data.to_vec()))
                .partition_key(p.record.partition_key.clone())
                .set_explicit_hash_key(p.record.explicit_hash_key.clone())
                .build()
                .ok()
        })
        .collect();
    let result = client
        .put_records()
        .stream_name(&stream)
        .set_records(Some(entries))
        .send()
        .await;
    let mut retry = Vec::new();
    match result {
        Ok(out) => {
            let results = out.records();
            for (i, mut p) in batch.into_iter().enumerate() {
                let Some(entry) = results.get(i) else {
                    p.last_error = "PutRecords answered fewer entries than sent".into();
                    retry.push(p);
                    continue;
                };
                match (
                    entry.error_code(),
                    entry.shard_id(),
                    entry.sequence_number(),
                ) {
                    (None, Some(shard), Some(seq)) => {
                        let ack = Ack {
                            shard_id: shard.to_string(),
                            sequence_number: seq.to_string(),
                            attempts: p.attempts,
                        };
                        p.finish(Ok(ack));
                    }
                    (Some(code), _, _) if !is_retryable_code(code) => {
                        let msg = format!("{code}: {}", entry.error_message().unwrap_or_default());
                        p.finish(Err(SendError::Rejected(msg)));
                    }
                    (code, _, _) => {
                        p.last_error = format!(
                            "{}: {}",
                            code.unwrap_or("NoSequenceNumber"),
                            entry.error_message().unwrap_or_default()
                        );
                        retry.push(p);
                    }
                }
            }
            if !retry.is_empty() {
                tracing::debug!(stream = %stream, failed = retry.len(), "partial PutRecords failure, retrying failed entries");
            }
        }
        Err(err) if is_retryable(&err) => {
            let text = error_text(&err);
            tracing::warn!(stream = %stream, records = batch.len(), error = %text, "PutRecords failed, will retry");
            for mut p in batch {
                p.last_error = text.clone();
                retry.push(p);
            }
        }
        Err(err) => {
            let text = error_text(&err);
            tracing::error!(stream = %stream, records = batch.len(), error = %text, "PutRecords rejected");
            for p in batch {
                p.finish(Err(SendError::Rejected(text.clone())));
            }
        }
    }
    CallOutcome { retry }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_and_size_are_validated() {
        assert!(validate(&UserRecord::new("k", vec![0u8; 10])).is_ok());
        assert!(matches!(
            validate(&UserRecord::new("", vec![1u8])),
            Err(SendError::Invalid(_))
        ));
        assert!(matches!(
            validate(&UserRecord::new("k".repeat(257), vec![1u8])),
            Err(SendError::Invalid(_))
        ));
        assert!(matches!(
            validate(&UserRecord::new("k", vec![0u8; MAX_RECORD_BYTES])),
            Err(SendError::Invalid(_))
        ));
    }
}
