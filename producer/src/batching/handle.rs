//! The handle a program holds: [`Producer`] hands records over (taking room in the buffer, or
//! waiting for it), [`Receipt`] resolves with the outcome (or [`Outcomes`] yields tagged
//! records' outcomes in batches), [`Flusher`] waits for the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use super::config::{InvalidConfig, ProducerConfig};
use super::entry::{BufferedGuard, Pending};
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
    tx: mpsc::UnboundedSender<Pending>,
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
        if !self.tagged {
            return Err(SendError::Invalid(
                "enqueue_tagged needs a producer started with Producer::start_with_outcomes".into(),
            ));
        }
        self.hand_over(record, Notify::Tag(tag)).await
    }

    async fn hand_over(&self, record: ProducerRecord, notify: Notify) -> Result<(), SendError> {
        if let Err(err) = validate(&record, self.config.max_buffered_bytes) {
            if let Some(m) = &self.config.metrics {
                m.failed(err.code(), 1);
            }
            return Err(err);
        }
        let size = u32::try_from(record.buffered_size()).unwrap_or(u32::MAX);
        let (Ok(r), Ok(b)) = (
            self.records.clone().acquire_owned().await,
            self.bytes.clone().acquire_many_owned(size).await,
        ) else {
            return Err(SendError::Stopped);
        };
        let now = Instant::now();
        let pending = Pending {
            record,
            notify,
            enqueued: now,
            deadline: now + self.config.record_ttl,
            earlier_attempts: 0,
            _permits: (r, b),
            _buffered: self
                .config
                .metrics
                .as_ref()
                .map(|m| BufferedGuard::new(&m.buffered_records)),
        };
        self.tx.send(pending).map_err(|_| SendError::Stopped)
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
