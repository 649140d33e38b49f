//! The handle a program holds: [`Producer`] hands records over (taking room in the buffer, or
//! waiting for it), [`Receipt`] resolves with the outcome (or [`Outcomes`] yields tagged
//! records' outcomes in batches), [`Flusher`] waits for the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::config::{InvalidConfig, ProducerConfig};
use super::entry::{BufferedGuard, Handover, Pending};
use super::event_loop::EventLoop;
use super::outcome::{Notify, Outcomes};
use super::record::{validate, Ack, ProducerRecord, SendError};

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

/// Handle to a running producer. Cloning is cheap; the background task ends when
/// every handle is dropped; then [`Flusher::finish`] waits for what is still buffered.
///
/// ```no_run
/// use std::time::Duration;
///
/// use kinesis_producer::{Producer, ProducerConfig, ProducerRecord};
///
/// # async fn example() -> anyhow::Result<()> {
/// let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
/// let client = aws_sdk_kinesis::Client::new(&sdk);
/// let (producer, flusher) = Producer::start(client, ProducerConfig::new("my-stream"))?;
///
/// // One record, waiting for Kinesis's answer.
/// let ack = producer.send(ProducerRecord::new("user-42", "hello")).await?;
/// println!("stored in {} as {}", ack.shard_id, ack.sequence_number);
///
/// // Many: hand them over (batched and retried in the background), then read the receipts.
/// let mut receipts = Vec::new();
/// for i in 0..1000 {
///     let record = ProducerRecord::new(format!("user-{i}"), format!("message {i}"));
///     receipts.push(producer.enqueue(record).await?);
/// }
/// for receipt in receipts {
///     receipt.await?;
/// }
///
/// drop(producer); // the background task ends with the last handle
/// let unsent = flusher.finish(Duration::from_secs(5)).await;
/// assert_eq!(unsent, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Producer {
    tx: mpsc::UnboundedSender<Handover>,
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    config: Arc<ProducerConfig>,
    /// Started with an outcome stream: [`Producer::enqueue_tagged`] may be used.
    tagged: bool,
}

/// The background task of a producer; await [`Flusher::finish`] after closing.
pub struct Flusher {
    task: tokio::task::JoinHandle<()>,
    records: Arc<Semaphore>,
    max_records: usize,
}

impl Producer {
    /// Starts the background task sending to `config.stream_name`, once the configuration is
    /// checked ([`ProducerConfig::validate`]).
    pub fn start(client: Client, config: ProducerConfig) -> Result<(Self, Flusher), InvalidConfig> {
        Self::start_inner(client, config, None)
    }

    /// [`Producer::start`] for a caller that hands records over with
    /// [`Producer::enqueue_tagged`] and reads their outcomes in batches from [`Outcomes`]
    /// (records handed over with [`Producer::enqueue`] still get their receipt).
    pub fn start_with_outcomes(
        client: Client,
        config: ProducerConfig,
    ) -> Result<(Self, Flusher, Outcomes), InvalidConfig> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (producer, flusher) = Self::start_inner(client, config, Some(tx))?;
        Ok((producer, flusher, Outcomes(rx)))
    }

    fn start_inner(
        client: Client,
        config: ProducerConfig,
        outcomes: Option<mpsc::UnboundedSender<super::OutcomeBatch>>,
    ) -> Result<(Self, Flusher), InvalidConfig> {
        config.validate()?;
        let tagged = outcomes.is_some();
        let (tx, rx) = mpsc::unbounded_channel();
        let records = Arc::new(Semaphore::new(config.max_buffered_records));
        let bytes = Arc::new(Semaphore::new(config.max_buffered_bytes));
        let config = Arc::new(config);
        let task = tokio::spawn(EventLoop::new(client, config.clone(), rx, outcomes).run());
        let flusher = Flusher {
            task,
            records: records.clone(),
            max_records: config.max_buffered_records,
        };
        Ok((
            Self {
                tx,
                records,
                bytes,
                config,
                tagged,
            },
            flusher,
        ))
    }

    /// Puts the record in the buffer, waiting while the buffer is full, and returns the receipt
    /// that resolves once Kinesis acknowledged it (or it failed).
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<Receipt, SendError> {
        let (done, rx) = oneshot::channel();
        self.hand_over(record, Notify::Receipt(done)).await?;
        Ok(Receipt(rx))
    }

    /// Puts the record in the buffer, waiting while the buffer is full; its outcome comes in
    /// an [`OutcomeBatch`](super::OutcomeBatch) from [`Outcomes`], with `tag`. Only for a
    /// producer started with [`Producer::start_with_outcomes`] (else `SendError::Invalid`).
    pub async fn enqueue_tagged(&self, record: ProducerRecord, tag: u64) -> Result<(), SendError> {
        self.check_tagged()?;
        self.hand_over(record, Notify::Tag(tag)).await
    }

    /// Hands over several tagged records at once, in order: as [`Producer::enqueue_tagged`]
    /// for each, but with one wait for room and one hand-over for them all, which costs less
    /// per record (the service hands its messages over this way).
    ///
    /// It waits until the buffer has room for every valid record of the batch, so a batch
    /// larger than the buffer (`max_buffered_records` records, `max_buffered_bytes` bytes) is
    /// refused whole with [`SendError::Invalid`]; keep batches to a fraction of it. A record
    /// [`Producer::enqueue`] would refuse is refused alone: its tag and error are returned, in
    /// order, and the others are handed over. If the future is dropped before it completes,
    /// no record of the batch was handed over.
    pub async fn enqueue_tagged_batch(
        &self,
        records: Vec<(ProducerRecord, u64)>,
    ) -> Result<Vec<(u64, SendError)>, SendError> {
        self.check_tagged()?;
        let mut refused = Vec::new();
        let mut valid = Vec::with_capacity(records.len());
        for (record, tag) in records {
            match self.check(&record) {
                Ok(size) => valid.push((record, tag, size)),
                Err(err) => refused.push((tag, err)),
            }
        }
        if valid.is_empty() {
            return Ok(refused);
        }
        let bytes: u64 = valid.iter().map(|(_, _, size)| u64::from(*size)).sum();
        let (Ok(count), Ok(total)) = (u32::try_from(valid.len()), u32::try_from(bytes)) else {
            return Err(self.too_large(valid.len(), bytes));
        };
        if valid.len() > self.config.max_buffered_records
            || bytes > self.config.max_buffered_bytes as u64
        {
            return Err(self.too_large(valid.len(), bytes));
        }
        let (Ok(mut r), Ok(mut b)) = (
            self.records.clone().acquire_many_owned(count).await,
            self.bytes.clone().acquire_many_owned(total).await,
        ) else {
            return Err(SendError::Stopped);
        };
        let now = Instant::now();
        let pending: Vec<Pending> = valid
            .into_iter()
            .map(|(record, tag, size)| {
                // Exactly the permits taken above are split off, one record at a time.
                let permits = (
                    r.split(1).expect("a record's permit"),
                    b.split(size as usize).expect("a record's byte permits"),
                );
                self.pending(record, Notify::Tag(tag), now, permits)
            })
            .collect();
        self.tx
            .send(Handover::Many(pending))
            .map_err(|_| SendError::Stopped)?;
        Ok(refused)
    }

    fn check_tagged(&self) -> Result<(), SendError> {
        if self.tagged {
            return Ok(());
        }
        Err(SendError::Invalid(
            "enqueue_tagged needs a producer started with Producer::start_with_outcomes".into(),
        ))
    }

    fn too_large(&self, records: usize, bytes: u64) -> SendError {
        SendError::Invalid(format!(
            "a batch of {records} records and {bytes} buffered bytes can never fit the buffer \
             (max_buffered_records {}, max_buffered_bytes {})",
            self.config.max_buffered_records, self.config.max_buffered_bytes
        ))
    }

    /// The record's buffered size if it may be handed over; counted as failed if not.
    fn check(&self, record: &ProducerRecord) -> Result<u32, SendError> {
        if let Err(err) = validate(record, self.config.max_buffered_bytes) {
            if let Some(m) = &self.config.metrics {
                m.failed(err.code(), 1);
            }
            return Err(err);
        }
        Ok(u32::try_from(record.buffered_size()).unwrap_or(u32::MAX))
    }

    fn pending(
        &self,
        record: ProducerRecord,
        notify: Notify,
        now: Instant,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> Pending {
        Pending {
            record,
            notify,
            enqueued: now,
            deadline: now + self.config.record_ttl,
            earlier_attempts: 0,
            _permits: permits,
            _buffered: self
                .config
                .metrics
                .as_ref()
                .map(|m| BufferedGuard::new(&m.buffered_records)),
        }
    }

    async fn hand_over(&self, record: ProducerRecord, notify: Notify) -> Result<(), SendError> {
        let size = self.check(&record)?;
        let (Ok(r), Ok(b)) = (
            self.records.clone().acquire_owned().await,
            self.bytes.clone().acquire_many_owned(size).await,
        ) else {
            return Err(SendError::Stopped);
        };
        let pending = self.pending(record, notify, Instant::now(), (r, b));
        self.tx
            .send(Handover::One(pending))
            .map_err(|_| SendError::Stopped)
    }

    /// Enqueues and waits for the acknowledgement.
    pub async fn send(&self, record: ProducerRecord) -> Result<Ack, SendError> {
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
