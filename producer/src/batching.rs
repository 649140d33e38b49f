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
//! - **The time to live holds whatever the network does**: a record still queued (held back by
//!   the rate limiter, say) when its `record_ttl` runs out fails then, and a `PutRecords` call
//!   is abandoned when the earliest time to live among its records runs out, so a hung
//!   connection neither stretches a record's life nor keeps one of the `max_in_flight` slots.
//!
//! Order: the records of one partition key (or explicit hash key) are put in the order they
//! were handed over. A call carries them in that order (members of an aggregate too), and no
//! call carries one while a record of its key handed over earlier is still buffered (queued,
//! held back by the rate limiter, in an open aggregate), across a split or merge too: a new
//! shard map regroups everything buffered, in order. Two exceptions, as with the KPL: with
//! `max_in_flight` above 1 two calls may land in either order, and a record retried (a failed
//! entry, a throttled or failed call, an aggregate stored on the wrong side of a split) lands
//! after records of its key sent meanwhile. So with `max_in_flight = 1` and no retries Kinesis
//! receives them in order (and kinesis-mock stores them so; the `PutRecords` documentation does
//! not promise the order of one call's entries).
//!
//! With `aggregation`, user records bound for the same shard (by the stream's shard map, which
//! is refreshed when a record lands elsewhere than predicted, after a split or merge) are
//! packed into KPL aggregated records of at most `aggregation_max_bytes`; every member's
//! [`Ack`] then carries the aggregate's sequence number and its own sub-sequence number. An
//! aggregate stored on a shard whose hash key range does not hold every member (built from a
//! stale map) is never acknowledged: its members are put again under the refreshed map, as the
//! KPL does, since the Java KCL skips such an aggregate whole.
//!
//! Records are grouped into `PutRecords` calls of at most 500 entries and 5 MiB, sent when a
//! batch is full or when its oldest record has waited `linger`; at most `max_in_flight` calls
//! run at once.

use std::collections::{HashMap, VecDeque};
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
use common::kpl::{effective_hash_key, Aggregator};

use crate::metrics::ProducerMetrics;
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
    /// Shared by every record of one aggregate, hence reference-counted.
    pub shard_id: Arc<str>,
    pub sequence_number: Arc<str>,
    /// The record's index inside the aggregated Kinesis record that carried it (KPL
    /// sub-sequence number); `None` when it was sent on its own.
    pub sub_sequence_number: Option<u64>,
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

impl SendError {
    /// A short, bounded code for metrics: the AWS error code behind the failure when it is one
    /// [`common::aws::ErrorKind`] knows, else the kind of failure.
    pub fn code(&self) -> &str {
        let known = |text: &str| {
            let code = text.split(':').next().unwrap_or_default().trim();
            common::aws::ErrorKind::from_code(code).map(|_| code.len())
        };
        match self {
            SendError::Invalid(_) => "Invalid",
            SendError::Stopped => "Stopped",
            SendError::Rejected(text) => known(text).map_or("Rejected", |n| &text[..n]),
            SendError::Expired { last_error, .. } => {
                known(last_error).map_or("Expired", |n| &last_error[..n])
            }
        }
    }
}

/// Why [`Producer::start`] refused a [`ProducerConfig`]: the field, its value and what is
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid producer configuration: {field} = {value}; allowed: {allowed}")]
pub struct InvalidConfig {
    pub field: &'static str,
    pub value: String,
    pub allowed: &'static str,
}

/// Tuning of a [`Producer`], checked by [`ProducerConfig::validate`] when it starts.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub stream_name: String,
    pub linger: Duration,
    pub max_buffered_records: usize,
    pub max_buffered_bytes: usize,
    pub max_in_flight: usize,
    pub record_ttl: Duration,
    /// Pack user records bound for the same shard into KPL aggregated records.
    pub aggregation: bool,
    /// Largest aggregated record, in bytes (the KPL's default is 51200).
    pub aggregation_max_bytes: usize,
    /// Keep each shard under this percentage of its write limits (1,000 records and 1 MiB a
    /// second); 0 turns the limiter off.
    pub shard_rate_limit_percent: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Where to count what happens (see [`crate::metrics`]); `None`: nothing is counted.
    pub metrics: Option<ProducerMetrics>,
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
            aggregation: false,
            aggregation_max_bytes: 51_200,
            shard_rate_limit_percent: 100,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(5),
            metrics: None,
        }
    }

    /// Refuses a configuration that cannot work: one that would never send (no call slot, no
    /// room for a record, no time to live), a stream name Kinesis refuses, aggregates Kinesis
    /// would refuse, or times so long that deadlines overflow. The bounds are those of the
    /// service's variables (README, "Configuration") where it has one, with the byte bound
    /// free to go below 1 MiB: a record larger than it is refused when handed over.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        const DAY: Duration = Duration::from_secs(86_400);
        let check = |ok: bool, field, value: String, allowed| {
            if ok {
                Ok(())
            } else {
                Err(InvalidConfig {
                    field,
                    value,
                    allowed,
                })
            }
        };
        let ms = |d: Duration| format!("{} ms", d.as_millis());
        check(
            common::kinesis::is_valid_stream_name(&self.stream_name),
            "stream_name",
            format!("{:?}", self.stream_name),
            "1-128 characters of a-z, A-Z, 0-9, _ . -",
        )?;
        check(
            self.linger <= Duration::from_secs(60),
            "linger",
            ms(self.linger),
            "0 to 60 s",
        )?;
        check(
            (1..=Semaphore::MAX_PERMITS).contains(&self.max_buffered_records),
            "max_buffered_records",
            self.max_buffered_records.to_string(),
            "at least 1",
        )?;
        check(
            (1..=Semaphore::MAX_PERMITS).contains(&self.max_buffered_bytes),
            "max_buffered_bytes",
            self.max_buffered_bytes.to_string(),
            "at least 1",
        )?;
        check(
            self.max_in_flight >= 1,
            "max_in_flight",
            self.max_in_flight.to_string(),
            "at least 1",
        )?;
        check(
            !self.record_ttl.is_zero() && self.record_ttl <= DAY,
            "record_ttl",
            ms(self.record_ttl),
            "1 ms to 1 day",
        )?;
        check(
            (1024..=1_048_000).contains(&self.aggregation_max_bytes),
            "aggregation_max_bytes",
            self.aggregation_max_bytes.to_string(),
            "1024 to 1048000",
        )?;
        check(
            self.shard_rate_limit_percent <= 1000,
            "shard_rate_limit_percent",
            self.shard_rate_limit_percent.to_string(),
            "0 (no limit) to 1000",
        )?;
        check(
            !self.retry_base.is_zero() && self.retry_base <= DAY,
            "retry_base",
            ms(self.retry_base),
            "1 ms to 1 day",
        )?;
        check(
            self.retry_base <= self.retry_cap && self.retry_cap <= DAY,
            "retry_cap",
            ms(self.retry_cap),
            "retry_base to 1 day",
        )
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
    enqueued: Instant,
    deadline: Instant,
    /// `PutRecords` calls of aggregates this record was put in again after they landed on a
    /// shard some member does not hash to (see [`Landed`]).
    earlier_attempts: u32,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    /// Counts the record in `kinesis_producer_buffered_records` while it lives.
    _buffered: Option<BufferedGuard>,
}

/// Raises the buffered-records gauge for as long as it lives.
struct BufferedGuard(prometheus_client::metrics::gauge::Gauge);

impl BufferedGuard {
    fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for BufferedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Pending {
    fn finish(self, result: Result<Ack, SendError>) {
        // The caller may have dropped its receipt: nobody to tell, nothing lost.
        let _ = self.done.send(result);
    }
}

/// Handle to a running producer. Cloning is cheap; the background task ends when
/// every handle is dropped; then [`Flusher::finish`] waits for what is still buffered.
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
    /// Starts the background task sending to `config.stream_name`, once the configuration is
    /// checked ([`ProducerConfig::validate`]).
    pub fn start(client: Client, config: ProducerConfig) -> Result<(Self, Flusher), InvalidConfig> {
        config.validate()?;
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
        Ok((
            Self {
                tx,
                records,
                bytes,
                config,
            },
            flusher,
        ))
    }

    /// Puts the record in the buffer, waiting while the buffer is full, and returns the receipt
    /// that resolves once Kinesis acknowledged it (or it failed).
    pub async fn enqueue(&self, record: UserRecord) -> Result<Receipt, SendError> {
        if let Err(err) = validate(&record, self.config.max_buffered_bytes) {
            if let Some(m) = &self.config.metrics {
                m.failed(err.code(), 1);
            }
            return Err(err);
        }
        let size = u32::try_from(record.size().max(1)).unwrap_or(u32::MAX);
        let (Ok(r), Ok(b)) = (
            self.records.clone().acquire_owned().await,
            self.bytes.clone().acquire_many_owned(size).await,
        ) else {
            return Err(SendError::Stopped);
        };
        let (done, rx) = oneshot::channel();
        let now = Instant::now();
        let pending = Pending {
            record,
            done,
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

/// What Kinesis would refuse (so that one bad record never fails a whole call), and what the
/// buffer could never hold (so that it never waits forever).
fn validate(record: &UserRecord, max_buffered_bytes: usize) -> Result<(), SendError> {
    if !common::kpl::is_valid_partition_key(&record.partition_key) {
        return Err(SendError::Invalid(format!(
            "partition key must have 1 to 256 characters, has {}",
            record.partition_key.chars().count()
        )));
    }
    if let Some(key) = &record.explicit_hash_key {
        if !common::kpl::is_valid_explicit_hash_key(key) {
            return Err(SendError::Invalid(format!(
                "explicit hash key {key:?} is not a decimal number from 0 to 2^128 - 1 without \
                 leading zeros"
            )));
        }
    }
    if record.size() > MAX_RECORD_BYTES {
        return Err(SendError::Invalid(format!(
            "record is {} bytes with its partition key, the limit is {MAX_RECORD_BYTES}",
            record.size()
        )));
    }
    if record.size() > max_buffered_bytes {
        return Err(SendError::Invalid(format!(
            "record is {} bytes with its partition key, more than the whole buffer \
             (max_buffered_bytes {max_buffered_bytes})",
            record.size()
        )));
    }
    Ok(())
}

/// One Kinesis record to put: a single user record, or an aggregate of several.
struct Entry {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: Bytes,
    members: Vec<Pending>,
    /// The shard the shard map says this record lands on (when a map is in use).
    predicted_shard: Option<String>,
    aggregated: bool,
    attempts: u32,
    last_error: String,
    deadline: Instant,
}

impl Entry {
    fn single(p: Pending, predicted_shard: Option<String>) -> Self {
        Self {
            partition_key: p.record.partition_key.clone(),
            explicit_hash_key: p.record.explicit_hash_key.clone(),
            data: p.record.data.clone(),
            deadline: p.deadline,
            members: vec![p],
            predicted_shard,
            aggregated: false,
            attempts: 0,
            last_error: String::new(),
        }
    }

    fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }

    fn fail(self, err: SendError, metrics: Option<&ProducerMetrics>) {
        if let Some(m) = metrics {
            m.failed(err.code(), self.members.len() as u64);
        }
        for p in self.members {
            p.finish(Err(err.clone()));
        }
    }

    fn succeed(self, shard_id: &str, sequence_number: &str, metrics: Option<&ProducerMetrics>) {
        if let Some(m) = metrics {
            let n = self.members.len() as u64;
            m.kinesis_records_put.inc();
            m.user_records_put.inc_by(n);
            m.user_records_per_kinesis_record.observe(n as f64);
        }
        let aggregated = self.aggregated;
        let (shard_id, sequence_number): (Arc<str>, Arc<str>) =
            (shard_id.into(), sequence_number.into());
        for (i, p) in self.members.into_iter().enumerate() {
            let ack = Ack {
                shard_id: shard_id.clone(),
                sequence_number: sequence_number.clone(),
                sub_sequence_number: aggregated.then_some(i as u64),
                attempts: self.attempts + p.earlier_attempts,
            };
            p.finish(Ok(ack));
        }
    }
}

/// An aggregate being filled for one shard.
struct OpenAggregate {
    aggregator: Aggregator,
    members: Vec<Pending>,
}

/// Outcome of one `PutRecords` call.
struct CallOutcome {
    /// Entries to try again after a pause.
    retry: Vec<Entry>,
    /// Aggregates Kinesis stored on another shard than predicted: not acknowledged until the
    /// landing shard's hash key range is known to hold every member.
    landed_elsewhere: Vec<Landed>,
    /// A record landed on another shard than predicted: the map is stale.
    shard_map_stale: bool,
}

/// An aggregate stored on another shard than the shard map predicted (the map was stale: a
/// split or merge). Kinesis routes an aggregate by its first member's hash key, so the other
/// members may hash to another shard; the Java KCL then drops the whole aggregate. So its
/// members are acknowledged only when the landing shard's range holds every one of them, and
/// put again under the refreshed map otherwise, as the KPL does ("Wrong Shard").
struct Landed {
    entry: Entry,
    shard_id: String,
    sequence_number: String,
}

struct Worker {
    client: Client,
    config: Arc<ProducerConfig>,
    rx: mpsc::UnboundedReceiver<Pending>,
    queue: VecDeque<Entry>,
    queue_bytes: usize,
    /// When the oldest buffered record arrived, for the linger timer.
    oldest: Option<Instant>,
    calls: JoinSet<CallOutcome>,
    /// Retries wait here until their backoff ends.
    retry_tx: mpsc::UnboundedSender<Entry>,
    retry_rx: mpsc::UnboundedReceiver<Entry>,
    waiting_retries: usize,
    /// Aggregation state: the open shards' hash ranges and one open aggregate per shard.
    shard_map: Option<ShardMap>,
    aggregates: HashMap<String, OpenAggregate>,
    refresh: Option<tokio::task::JoinHandle<Option<ShardMap>>>,
    last_refresh: Option<Instant>,
    /// Per-shard budgets, when rate limiting is on.
    limiter: Option<RateLimiter>,
    /// Records the limiter held back, per shard in the order they came: a shard's records go
    /// out of here before any newer record of that shard, and each record is moved here once,
    /// so waiting for a budget costs no rescans of the queue.
    held: HashMap<String, VecDeque<Entry>>,
    held_count: usize,
    /// When the first held-back shard gets room again.
    rate_wait: Option<Instant>,
    /// After a failed shard map listing (while there is no map): when to list again.
    refresh_retry: Option<Instant>,
    refresh_backoff: Backoff,
    /// No queued, held-back or unverified record expires before this.
    next_expiry: Option<Instant>,
    /// Aggregates stored on a shard the shard map does not list yet, waiting for a listing to
    /// tell whether that shard's range holds all their members (see [`Landed`]).
    unverified: Vec<Landed>,
}

impl Worker {
    fn new(
        client: Client,
        config: Arc<ProducerConfig>,
        rx: mpsc::UnboundedReceiver<Pending>,
    ) -> Self {
        let (retry_tx, retry_rx) = mpsc::unbounded_channel();
        let limiter = (config.shard_rate_limit_percent > 0)
            .then(|| RateLimiter::new(config.shard_rate_limit_percent));
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
            shard_map: None,
            aggregates: HashMap::new(),
            refresh: None,
            last_refresh: None,
            limiter,
            held: HashMap::new(),
            held_count: 0,
            rate_wait: None,
            refresh_retry: None,
            refresh_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            next_expiry: None,
            unverified: Vec::new(),
        }
    }

    fn expire_by(&mut self, deadline: Instant) {
        self.next_expiry = Some(self.next_expiry.map_or(deadline, |t| t.min(deadline)));
    }

    fn push_entry(&mut self, entry: Entry) {
        self.expire_by(entry.deadline);
        self.queue_bytes += entry.size();
        self.queue.push_back(entry);
    }

    /// Takes a new user record: into its shard's aggregate when aggregating, else as is.
    fn push(&mut self, p: Pending) {
        self.oldest.get_or_insert_with(Instant::now);
        let shard = self
            .shard_map
            .as_ref()
            .and_then(|map| map.shard_for(&p.record))
            .map(str::to_string);
        let shard = match shard {
            Some(shard) if self.config.aggregation => shard,
            other => {
                self.push_entry(Entry::single(p, other));
                return;
            }
        };
        let (key, ehk, len) = (
            p.record.partition_key.as_str(),
            p.record.explicit_hash_key.as_deref(),
            p.record.data.len(),
        );
        let limit = self.config.aggregation_max_bytes;
        let must_seal = self.aggregates.get(&shard).is_some_and(|open| {
            !open.aggregator.is_empty() && open.aggregator.size_with(key, ehk, len) > limit
        });
        if must_seal {
            self.seal(&shard);
        }
        let open = self
            .aggregates
            .entry(shard)
            .or_insert_with(|| OpenAggregate {
                aggregator: Aggregator::new(),
                members: Vec::new(),
            });
        open.aggregator.add(key, ehk, &p.record.data);
        open.members.push(p);
    }

    /// Closes the shard's open aggregate into a queued entry.
    fn seal(&mut self, shard: &str) {
        let Some(mut open) = self.aggregates.remove(shard) else {
            return;
        };
        if open.members.len() <= 1 {
            // One record is sent as it is, as the KPL does.
            if let Some(p) = open.members.pop() {
                self.push_entry(Entry::single(p, Some(shard.to_string())));
            }
            return;
        }
        let first = &open.members[0].record;
        let hash = effective_hash_key(&first.partition_key, first.explicit_hash_key.as_deref());
        let entry = Entry {
            partition_key: first.partition_key.clone(),
            // Route the aggregate by its first member's hash key: the shard all members map to.
            explicit_hash_key: Some(hash.to_string()),
            data: Bytes::from(open.aggregator.finish()),
            deadline: open
                .members
                .iter()
                .map(|p| p.deadline)
                .min()
                .unwrap_or_else(Instant::now),
            members: open.members,
            predicted_shard: Some(shard.to_string()),
            aggregated: true,
            attempts: 0,
            last_error: String::new(),
        };
        self.push_entry(entry);
    }

    fn seal_all(&mut self) {
        let shards: Vec<String> = self.aggregates.keys().cloned().collect();
        for shard in shards {
            self.seal(&shard);
        }
    }

    fn buffered(&self) -> bool {
        self.lingering() || self.held_count > 0 || !self.unverified.is_empty()
    }

    /// Whether records wait for a batch to fill or their linger to pass (held-back ones wait
    /// for the rate limiter instead).
    fn lingering(&self) -> bool {
        !self.queue.is_empty() || !self.aggregates.is_empty()
    }

    fn batch_full(&self) -> bool {
        self.queue.len() >= MAX_BATCH_RECORDS || self.queue_bytes >= MAX_BATCH_BYTES
    }

    /// Starts a shard map refresh unless one ran in the last five seconds.
    fn refresh_shard_map(&mut self) {
        if self
            .last_refresh
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.start_refresh();
    }

    fn start_refresh(&mut self) {
        self.refresh_retry = None;
        if !(self.config.aggregation || self.limiter.is_some()) || self.refresh.is_some() {
            return;
        }
        self.last_refresh = Some(Instant::now());
        let client = self.client.clone();
        let stream = self.config.stream_name.clone();
        self.refresh = Some(tokio::spawn(async move {
            match common::kinesis::list_shards(&client, &stream).await {
                Ok(shards) => Some(ShardMap::from_shards(&shards)),
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "shard map refresh failed; until it works records go out unaggregated and not rate limited");
                    None
                }
            }
        }));
    }

    async fn run(mut self) {
        // Learn the shard map before the first record, so aggregation starts at once. Records
        // queue up meanwhile; if the listing fails they go out unaggregated until it works.
        self.refresh_shard_map();
        if let Some(first) = self.refresh.take() {
            let map = first.await.ok().flatten();
            self.shard_map_listed(map);
        }
        let mut open = true;
        loop {
            let linger_over = self
                .oldest
                .is_some_and(|t| t.elapsed() >= self.config.linger);
            if linger_over || !open {
                self.seal_all();
            }
            if self.next_expiry.is_some_and(|t| t <= Instant::now()) {
                self.next_expiry = self.expire_queued(Instant::now());
            }
            // Send every batch that is ready while call slots are free. Held-back records are
            // ready as soon as their shard has room: their linger is long over.
            let held_ready = self.rate_wait.is_some_and(|t| t <= Instant::now());
            while (!self.queue.is_empty() || self.held_count > 0)
                && self.calls.len() < self.config.max_in_flight
            {
                let ready = self.batch_full() || linger_over || !open || held_ready;
                if !ready || !self.spawn_call() {
                    break;
                }
            }
            if !self.lingering() {
                self.oldest = None;
            }
            if !open && !self.buffered() && self.calls.is_empty() && self.waiting_retries == 0 {
                return;
            }
            if let Some(m) = &self.config.metrics {
                m.in_flight_calls.set(self.calls.len() as i64);
            }
            // Timers that lead to a call only matter while a call slot is free.
            let slot_free = self.calls.len() < self.config.max_in_flight;
            let linger_at = self
                .oldest
                .filter(|_| slot_free)
                .map(|t| t + self.config.linger);
            let rate_wait = self.rate_wait.filter(|_| slot_free);
            tokio::select! {
                msg = self.rx.recv(), if open => match msg {
                    Some(p) => {
                        self.push(p);
                        // Take whatever else is waiting in one go: one wake-up per burst rather
                        // than per record.
                        for _ in 0..4096 {
                            match self.rx.try_recv() {
                                Ok(p) => self.push(p),
                                Err(_) => break,
                            }
                        }
                    }
                    None => open = false,
                },
                Some(entry) = self.retry_rx.recv() => {
                    self.waiting_retries -= 1;
                    self.oldest.get_or_insert_with(Instant::now);
                    self.requeue(entry);
                }
                Some(done) = self.calls.join_next(), if !self.calls.is_empty() => {
                    if let Ok(outcome) = done {
                        if outcome.shard_map_stale {
                            self.refresh_shard_map();
                        }
                        self.check_landed(outcome.landed_elsewhere, false);
                        self.schedule_retries(outcome.retry);
                    }
                }
                refreshed = join_opt(&mut self.refresh) => {
                    self.refresh = None;
                    self.shard_map_listed(refreshed);
                }
                _ = sleep_until_opt(linger_at) => {}
                _ = sleep_until_opt(rate_wait) => {}
                _ = sleep_until_opt(self.refresh_retry) => self.start_refresh(),
                _ = sleep_until_opt(self.next_expiry) => {}
            }
        }
    }

    /// Takes in a shard map listing: the new map, or after a failure (while there is no map
    /// yet) a retry with backoff.
    fn shard_map_listed(&mut self, map: Option<ShardMap>) {
        match map {
            Some(map) => {
                self.shard_map = Some(map);
                self.refresh_backoff.reset();
                self.refresh_retry = None;
                self.regroup();
                let landed = std::mem::take(&mut self.unverified);
                self.check_landed(landed, true);
            }
            // No map to group by, or aggregates to check against a fresh one: list again.
            None if self.shard_map.is_none() || !self.unverified.is_empty() => {
                let delay = self.refresh_backoff.ceiling();
                self.refresh_backoff.next_delay();
                self.refresh_retry = Some(Instant::now() + delay);
            }
            // A stale map that could not be refreshed stays in use; the next misplaced
            // aggregate asks again.
            None => {}
        }
    }

    /// Groups every buffered record again by the shard map just listed, in the order they were
    /// handed over: held-back records (older than any queued record of their shard), then the
    /// queue, then the open aggregates. Records of one key thus keep their order across a split
    /// or merge: none held back under a parent stays behind newer ones that a child would
    /// send at once, and no aggregate built by the old map is sent to where that map said.
    fn regroup(&mut self) {
        let held: Vec<VecDeque<Entry>> = self.held.drain().map(|(_, q)| q).collect();
        self.held_count = 0;
        self.rate_wait = None;
        let queued = std::mem::take(&mut self.queue);
        self.queue_bytes = 0;
        let open: Vec<OpenAggregate> = self.aggregates.drain().map(|(_, a)| a).collect();
        for entry in held.into_iter().flatten().chain(queued) {
            self.requeue(entry);
        }
        for p in open.into_iter().flat_map(|a| a.members) {
            self.push(p);
        }
    }

    /// Queues an entry again (a retry, or one being regrouped): as it is when the shard it was
    /// predicted for is still open in the map; otherwise a lone record with its new shard, and
    /// an aggregate taken apart into its records, grouped anew.
    fn requeue(&mut self, mut entry: Entry) {
        let map = match (&self.shard_map, entry.predicted_shard.as_deref()) {
            (Some(map), Some(shard)) if !map.is_open(shard) => map,
            // Still open, or never predicted (sent while there was no map: it routes itself).
            _ => return self.push_entry(entry),
        };
        if !entry.aggregated {
            entry.predicted_shard = entry
                .members
                .first()
                .and_then(|p| map.shard_for(&p.record))
                .map(str::to_string);
            return self.push_entry(entry);
        }
        let attempts = entry.attempts;
        for mut p in entry.members {
            p.earlier_attempts += attempts;
            self.push(p);
        }
    }

    /// Acknowledges each aggregate that landed on another shard than predicted when the
    /// landing shard's range holds every member, and puts the members of the others again
    /// under the current map. One that landed on a shard the map does not list waits for the
    /// next listing (`listed_now`: this map was just listed, so such a shard is treated as one
    /// that does not hold them).
    fn check_landed(&mut self, landed: Vec<Landed>, listed_now: bool) {
        for l in landed {
            let holds_all = self.shard_map.as_ref().and_then(|map| {
                l.entry.members.iter().try_fold(true, |all, p| {
                    let hash = effective_hash_key(
                        &p.record.partition_key,
                        p.record.explicit_hash_key.as_deref(),
                    );
                    Some(all && map.holds(&l.shard_id, hash)?)
                })
            });
            match holds_all {
                Some(true) => l.entry.succeed(
                    &l.shard_id,
                    &l.sequence_number,
                    self.config.metrics.as_ref(),
                ),
                Some(false) => self.put_again(l),
                None if listed_now => self.put_again(l),
                None => {
                    self.expire_by(l.entry.deadline);
                    self.unverified.push(l);
                }
            }
        }
        if !self.unverified.is_empty() && self.refresh.is_none() {
            self.refresh_shard_map();
            if self.refresh.is_none() && self.refresh_retry.is_none() {
                // Listed less than 5 s ago: list again when that is over.
                self.refresh_retry = self.last_refresh.map(|t| t + Duration::from_secs(5));
            }
        }
    }

    /// The members of an aggregate stored on a shard some of them do not hash to go back into
    /// the buffer, to be grouped by the current map; the misplaced copy stays in the stream,
    /// where readers that check ranges (the Java KCL, this consumer) skip it.
    fn put_again(&mut self, l: Landed) {
        tracing::info!(
            shard_id = %l.shard_id,
            sequence_number = %l.sequence_number,
            predicted_shard_id = l.entry.predicted_shard.as_deref().unwrap_or_default(),
            user_records = l.entry.members.len(),
            "aggregate stored on a shard its records do not all hash to; putting them again"
        );
        if let Some(m) = &self.config.metrics {
            m.retries.inc_by(l.entry.members.len() as u64);
        }
        let attempts = l.entry.attempts;
        for mut p in l.entry.members {
            p.earlier_attempts += attempts;
            self.push(p);
        }
    }

    /// Fails every queued, held-back or unverified record whose time to live ran out; returns
    /// when the next one will.
    fn expire_queued(&mut self, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let mut take_expired = |queue: &mut VecDeque<Entry>| {
            let (keep, gone): (VecDeque<Entry>, VecDeque<Entry>) = std::mem::take(queue)
                .into_iter()
                .partition(|e| e.deadline > now);
            *queue = keep;
            let n = gone.len();
            expired.extend(gone);
            n
        };
        take_expired(&mut self.queue);
        for held in self.held.values_mut() {
            self.held_count -= take_expired(held);
        }
        self.held.retain(|_, q| !q.is_empty());
        let (keep, gone): (Vec<Landed>, Vec<Landed>) = std::mem::take(&mut self.unverified)
            .into_iter()
            .partition(|l| l.entry.deadline > now);
        self.unverified = keep;
        expired.extend(gone.into_iter().map(|mut l| {
            l.entry.last_error = format!(
                "stored on shard {} as {}, but the shard map could not be listed to check that \
                 the shard's range holds every record of the aggregate",
                l.shard_id, l.sequence_number
            );
            l.entry
        }));
        if !expired.is_empty() {
            self.queue_bytes = self.queue.iter().map(Entry::size).sum();
        }
        for e in expired {
            let attempts = e.attempts
                + e.members
                    .iter()
                    .map(|p| p.earlier_attempts)
                    .max()
                    .unwrap_or(0);
            let last_error = if !e.last_error.is_empty() {
                e.last_error.clone()
            } else if attempts == 0 {
                "never sent: still queued when its time to live ran out".to_string()
            } else {
                // Taken out of an aggregate put before (regrouped, or put again).
                "still queued to be put again when its time to live ran out".to_string()
            };
            e.fail(
                SendError::Expired {
                    attempts,
                    last_error,
                },
                self.config.metrics.as_ref(),
            );
        }
        self.queue
            .iter()
            .chain(self.held.values().flatten())
            .chain(self.unverified.iter().map(|l| &l.entry))
            .map(|e| e.deadline)
            .min()
    }

    /// Sends the next batch; false when every queued record waits for its shard's rate budget.
    fn spawn_call(&mut self) -> bool {
        let now = Instant::now();
        let mut batch = Vec::new();
        let mut bytes = 0;
        let fits = |batch: &Vec<Entry>, bytes: usize, size: usize| {
            batch.len() < MAX_BATCH_RECORDS && (bytes + size <= MAX_BATCH_BYTES || batch.is_empty())
        };
        // Held-back records first, each shard's in order, as far as its budget allows.
        if let Some(limiter) = self.limiter.as_mut() {
            for (shard, held) in self.held.iter_mut() {
                while let Some(e) = held.front() {
                    let size = e.size();
                    if !fits(&batch, bytes, size) || !limiter.try_take(shard, size, now) {
                        break;
                    }
                    if let Some(e) = held.pop_front() {
                        bytes += size;
                        batch.push(e);
                        self.held_count -= 1;
                    }
                }
            }
            self.held.retain(|_, q| !q.is_empty());
        }
        while let Some(e) = self.queue.pop_front() {
            let size = e.size();
            if !fits(&batch, bytes, size) {
                self.queue.push_front(e);
                break;
            }
            self.queue_bytes -= size;
            let shard = match (self.limiter.as_mut(), e.predicted_shard.as_deref()) {
                (Some(limiter), Some(shard)) => {
                    // Behind older held-back records of its shard, or over the budget: held.
                    if !self.held.contains_key(shard) && limiter.try_take(shard, size, now) {
                        None
                    } else {
                        Some(shard.to_string())
                    }
                }
                _ => None,
            };
            match shard {
                Some(shard) => {
                    self.held.entry(shard).or_default().push_back(e);
                    self.held_count += 1;
                }
                None => {
                    bytes += size;
                    batch.push(e);
                }
            }
        }
        // Wake up when the first held-back shard has room for its oldest record, but not
        // before a linger has passed: budget trickles back one record at a time, and a call
        // per record would cost far more than the wait.
        let linger = self.config.linger;
        self.rate_wait = self.limiter.as_ref().and_then(|limiter| {
            self.held
                .iter()
                .filter_map(|(shard, q)| Some(limiter.ready_at(shard, q.front()?.size(), now)))
                .min()
                .map(|at| at.max(now + linger))
        });
        if batch.is_empty() {
            return false;
        }
        self.oldest = self.lingering().then(Instant::now);
        let client = self.client.clone();
        let stream = self.config.stream_name.clone();
        let metrics = self.config.metrics.clone();
        if let Some(m) = &metrics {
            for p in batch
                .iter()
                .filter(|e| e.attempts == 0)
                .flat_map(|e| &e.members)
            {
                m.buffering_seconds
                    .observe(now.saturating_duration_since(p.enqueued).as_secs_f64());
            }
        }
        self.calls
            .spawn(put_records(client, stream, batch, metrics));
        true
    }

    /// Failed entries wait out their backoff, then return to the queue; those past their time
    /// to live fail now.
    fn schedule_retries(&mut self, retry: Vec<Entry>) {
        let now = Instant::now();
        for entry in retry {
            let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_cap);
            for _ in 1..entry.attempts {
                backoff.next_delay();
            }
            let delay = backoff.next_delay();
            if now + delay >= entry.deadline {
                let err = SendError::Expired {
                    attempts: entry.attempts,
                    last_error: entry.last_error.clone(),
                };
                entry.fail(err, self.config.metrics.as_ref());
                continue;
            }
            self.waiting_retries += 1;
            if let Some(m) = &self.config.metrics {
                m.retries.inc_by(entry.members.len() as u64);
            }
            let tx = self.retry_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(entry);
            });
        }
    }
}

async fn join_opt<T>(task: &mut Option<tokio::task::JoinHandle<Option<T>>>) -> Option<T> {
    match task {
        Some(handle) => handle.await.ok().flatten(),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Token buckets per shard for the Kinesis write limits: records and bytes a second, with up
/// to one second's worth of burst.
#[derive(Debug)]
pub struct RateLimiter {
    records_per_sec: f64,
    bytes_per_sec: f64,
    shards: HashMap<String, Budget>,
}

#[derive(Debug)]
struct Budget {
    records: f64,
    bytes: f64,
    at: Instant,
}

impl RateLimiter {
    /// Per-shard limits of 1,000 records and 1 MiB a second, scaled by `percent`.
    pub fn new(percent: u32) -> Self {
        let scale = f64::from(percent) / 100.0;
        Self {
            records_per_sec: 1000.0 * scale,
            bytes_per_sec: 1_048_576.0 * scale,
            shards: HashMap::new(),
        }
    }

    /// The shard's budget brought up to `now` (a full one for a shard not seen before).
    fn budget(&mut self, shard: &str, now: Instant) -> &mut Budget {
        let (max_records, max_bytes) = (self.records_per_sec, self.bytes_per_sec);
        // Look up before inserting: no key allocation on the hot path.
        if !self.shards.contains_key(shard) {
            self.shards.insert(
                shard.to_string(),
                Budget {
                    records: max_records,
                    bytes: max_bytes,
                    at: now,
                },
            );
        }
        let budget = self.shards.get_mut(shard).expect("inserted above");
        let elapsed = now.saturating_duration_since(budget.at).as_secs_f64();
        budget.records = (budget.records + elapsed * max_records).min(max_records);
        budget.bytes = (budget.bytes + elapsed * max_bytes).min(max_bytes);
        budget.at = now;
        budget
    }

    /// Takes one record of `bytes` from the shard's budget if it has room now.
    pub fn try_take(&mut self, shard: &str, bytes: usize, now: Instant) -> bool {
        // A record larger than a whole second's byte budget may go when the budget is full.
        let bytes = (bytes as f64).min(self.bytes_per_sec);
        let budget = self.budget(shard, now);
        if budget.records >= 1.0 && budget.bytes >= bytes {
            budget.records -= 1.0;
            budget.bytes -= bytes;
            true
        } else {
            false
        }
    }

    /// When the shard's budget will have room for one record of `bytes` (`now` if it has).
    pub fn ready_at(&self, shard: &str, bytes: usize, now: Instant) -> Instant {
        let Some(budget) = self.shards.get(shard) else {
            return now;
        };
        let bytes = (bytes as f64).min(self.bytes_per_sec);
        let wait_records = (1.0 - budget.records).max(0.0) / self.records_per_sec;
        let wait_bytes = (bytes - budget.bytes).max(0.0) / self.bytes_per_sec;
        // A millisecond more, so the budget is surely there when the timer fires.
        budget.at + Duration::from_secs_f64(wait_records.max(wait_bytes)) + Duration::from_millis(1)
    }
}

/// The open shards' hash key ranges, to group user records by the shard they will land on,
/// and every listed shard's range (closed ones too), to check where an aggregate landed.
#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    /// (starting hash key, ending hash key, shard id) of the open shards, sorted by start.
    ranges: Vec<(u128, u128, String)>,
    /// Every listed shard's range, open or closed: a shard an aggregate landed on may have
    /// been split since.
    listed: HashMap<String, (u128, u128)>,
}

impl ShardMap {
    pub fn from_shards(shards: &[aws_sdk_kinesis::types::Shard]) -> Self {
        let listed: HashMap<String, (u128, u128)> = shards
            .iter()
            .filter_map(|s| Some((s.shard_id().to_string(), common::kinesis::hash_range(s)?)))
            .collect();
        let mut ranges: Vec<(u128, u128, String)> = shards
            .iter()
            .filter(|s| common::kinesis::is_open(s))
            .filter_map(|s| {
                let (start, end) = listed.get(s.shard_id())?;
                Some((*start, *end, s.shard_id().to_string()))
            })
            .collect();
        ranges.sort();
        Self { ranges, listed }
    }

    /// Whether `shard_id` is an open shard of the map.
    pub fn is_open(&self, shard_id: &str) -> bool {
        self.ranges.iter().any(|(_, _, id)| id == shard_id)
    }

    /// Whether the listed shard `shard_id`'s range holds `hash`; `None` for a shard not listed.
    pub fn holds(&self, shard_id: &str, hash: u128) -> Option<bool> {
        let (start, end) = self.listed.get(shard_id)?;
        Some((*start..=*end).contains(&hash))
    }

    /// The shard whose range holds `hash`.
    pub fn shard_for_hash(&self, hash: u128) -> Option<&str> {
        let i = self.ranges.partition_point(|(start, _, _)| *start <= hash);
        let (_, end, shard) = self.ranges.get(i.checked_sub(1)?)?;
        (hash <= *end).then_some(shard.as_str())
    }

    pub fn shard_for(&self, record: &UserRecord) -> Option<&str> {
        self.shard_for_hash(effective_hash_key(
            &record.partition_key,
            record.explicit_hash_key.as_deref(),
        ))
    }
}

async fn put_records(
    client: Client,
    stream: String,
    mut batch: Vec<Entry>,
    metrics: Option<ProducerMetrics>,
) -> CallOutcome {
    let metrics = metrics.as_ref();
    let started = Instant::now();
    let entries: Vec<PutRecordsRequestEntry> = batch
        .iter_mut()
        .filter_map(|e| {
            e.attempts += 1;
            PutRecordsRequestEntry::builder()
                .data(Blob::new(e.data.to_vec()))
                .partition_key(e.partition_key.clone())
                .set_explicit_hash_key(e.explicit_hash_key.clone())
                .build()
                .ok()
        })
        .collect();
    let mut outcome = CallOutcome {
        retry: Vec::new(),
        landed_elsewhere: Vec::new(),
        shard_map_stale: false,
    };
    let call = client
        .put_records()
        .stream_name(&stream)
        .set_records(Some(entries))
        .send();
    // However the network behaves, the call ends when the first of its records' time to live
    // does (the SDK's own timeouts usually end it sooner).
    let first_deadline = batch.iter().map(|e| e.deadline).min();
    let result = match first_deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(stream = %stream, records = batch.len(), "PutRecords did not answer within the records' time to live; abandoned");
                for mut e in batch {
                    e.last_error = "PutRecords did not answer within the record's time to live (Kinesis may still have stored it)".into();
                    outcome.retry.push(e);
                }
                return outcome;
            }
        },
        None => call.await,
    };
    if let Some(m) = metrics {
        m.put_records_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    match result {
        Ok(out) => {
            let results = out.records();
            for (i, mut e) in batch.into_iter().enumerate() {
                let Some(entry) = results.get(i) else {
                    e.last_error = "PutRecords answered fewer entries than sent".into();
                    outcome.retry.push(e);
                    continue;
                };
                match (
                    entry.error_code(),
                    entry.shard_id(),
                    entry.sequence_number(),
                ) {
                    (None, Some(shard), Some(seq)) => {
                        if e.predicted_shard.as_deref().is_some_and(|p| p != shard) {
                            outcome.shard_map_stale = true;
                            // A lone record routes by its own hash key: wherever Kinesis put
                            // it is right. An aggregate's members are checked first.
                            if e.aggregated {
                                outcome.landed_elsewhere.push(Landed {
                                    entry: e,
                                    shard_id: shard.to_string(),
                                    sequence_number: seq.to_string(),
                                });
                                continue;
                            }
                        }
                        e.succeed(shard, seq, metrics);
                    }
                    (Some(code), _, _) if !is_retryable_code(code) => {
                        let msg = format!("{code}: {}", entry.error_message().unwrap_or_default());
                        e.fail(SendError::Rejected(msg), metrics);
                    }
                    (code, _, _) => {
                        e.last_error = format!(
                            "{}: {}",
                            code.unwrap_or("NoSequenceNumber"),
                            entry.error_message().unwrap_or_default()
                        );
                        outcome.retry.push(e);
                    }
                }
            }
            if !outcome.retry.is_empty() {
                tracing::debug!(stream = %stream, failed = outcome.retry.len(), "partial PutRecords failure, retrying failed entries");
            }
        }
        Err(err) if is_retryable(&err) => {
            let text = error_text(&err);
            tracing::warn!(stream = %stream, records = batch.len(), error = %text, "PutRecords failed, will retry");
            for mut e in batch {
                e.last_error = text.clone();
                outcome.retry.push(e);
            }
        }
        Err(err) => {
            let text = error_text(&err);
            tracing::error!(stream = %stream, records = batch.len(), error = %text, "PutRecords rejected");
            for e in batch {
                e.fail(SendError::Rejected(text.clone()), metrics);
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_kinesis_or_the_buffer_would_refuse_are_invalid() {
        let check = |r: UserRecord| validate(&r, 1 << 20);
        let invalid = |r: UserRecord| matches!(check(r), Err(SendError::Invalid(_)));
        assert!(check(UserRecord::new("k", vec![0u8; 10])).is_ok());
        assert!(invalid(UserRecord::new("", vec![1u8])));
        assert!(invalid(UserRecord::new("k".repeat(257), vec![1u8])));
        assert!(invalid(UserRecord::new("k", vec![0u8; MAX_RECORD_BYTES])));
        let with_hash_key = |key: &str| UserRecord {
            explicit_hash_key: Some(key.to_string()),
            ..UserRecord::new("k", vec![1u8])
        };
        assert!(check(with_hash_key("0")).is_ok());
        assert!(check(with_hash_key("340282366920938463463374607431768211455")).is_ok());
        for bad in ["", "abc", "0123", "340282366920938463463374607431768211456"] {
            match check(with_hash_key(bad)) {
                Err(SendError::Invalid(why)) => assert!(why.contains("explicit hash key"), "{why}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(validate(&UserRecord::new("k", vec![0u8; 99]), 100).is_ok());
        assert!(matches!(
            validate(&UserRecord::new("k", vec![0u8; 100]), 100),
            Err(SendError::Invalid(_))
        ));
    }

    #[test]
    fn a_configuration_that_cannot_work_is_refused_naming_the_field() {
        assert_eq!(ProducerConfig::new("s").validate(), Ok(()));
        let refused = |change: fn(&mut ProducerConfig)| {
            let mut config = ProducerConfig::new("s");
            change(&mut config);
            config.validate().expect_err("refused").field
        };
        assert_eq!(
            refused(|c| c.stream_name = "no spaces".into()),
            "stream_name"
        );
        assert_eq!(refused(|c| c.stream_name.clear()), "stream_name");
        assert_eq!(refused(|c| c.linger = Duration::MAX), "linger");
        assert_eq!(
            refused(|c| c.max_buffered_records = 0),
            "max_buffered_records"
        );
        assert_eq!(refused(|c| c.max_buffered_bytes = 0), "max_buffered_bytes");
        assert_eq!(
            refused(|c| c.max_buffered_bytes = usize::MAX),
            "max_buffered_bytes"
        );
        assert_eq!(refused(|c| c.max_in_flight = 0), "max_in_flight");
        assert_eq!(refused(|c| c.record_ttl = Duration::ZERO), "record_ttl");
        assert_eq!(refused(|c| c.record_ttl = Duration::MAX), "record_ttl");
        assert_eq!(
            refused(|c| c.aggregation_max_bytes = 2 << 20),
            "aggregation_max_bytes"
        );
        assert_eq!(
            refused(|c| c.shard_rate_limit_percent = 1001),
            "shard_rate_limit_percent"
        );
        assert_eq!(refused(|c| c.retry_base = Duration::ZERO), "retry_base");
        assert_eq!(
            refused(|c| c.retry_cap = Duration::from_millis(1)),
            "retry_cap"
        );
        let err = {
            let mut c = ProducerConfig::new("s");
            c.max_in_flight = 0;
            c.validate().unwrap_err().to_string()
        };
        assert_eq!(
            err,
            "invalid producer configuration: max_in_flight = 0; allowed: at least 1"
        );
    }

    fn shard(id: &str, start: u128, end: u128, closed: bool) -> aws_sdk_kinesis::types::Shard {
        let mut range =
            aws_sdk_kinesis::types::SequenceNumberRange::builder().starting_sequence_number("1");
        if closed {
            range = range.ending_sequence_number("2");
        }
        aws_sdk_kinesis::types::Shard::builder()
            .shard_id(id)
            .hash_key_range(
                aws_sdk_kinesis::types::HashKeyRange::builder()
                    .starting_hash_key(start.to_string())
                    .ending_hash_key(end.to_string())
                    .build()
                    .unwrap(),
            )
            .sequence_number_range(range.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn rate_limiter_holds_each_shard_to_its_budget() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(100);
        let taken = (0..1500).filter(|_| limiter.try_take("a", 100, t0)).count();
        assert_eq!(taken, 1000, "one second's worth of records at once");
        assert!(
            limiter.try_take("b", 100, t0),
            "shards have their own budgets"
        );
        assert!(!limiter.try_take("a", 100, t0 + Duration::from_millis(0)));
        let later = t0 + Duration::from_millis(100);
        let refilled = (0..500)
            .filter(|_| limiter.try_take("a", 100, later))
            .count();
        assert_eq!(refilled, 100, "100 ms refills 100 records");
        let mut bytes = RateLimiter::new(50);
        assert!(bytes.try_take("a", 400_000, t0));
        assert!(!bytes.try_take("a", 400_000, t0), "half of 1 MiB a second");
    }

    #[test]
    fn rate_limiter_says_when_a_shard_has_room_again() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1); // 10 records a second
        assert_eq!(limiter.ready_at("a", 100, t0), t0, "unknown shard: now");
        while limiter.try_take("a", 100, t0) {}
        let at = limiter.ready_at("a", 100, t0);
        let wait = at - t0;
        assert!(
            wait >= Duration::from_millis(100) && wait <= Duration::from_millis(102),
            "{wait:?}"
        );
        assert!(!limiter.try_take("a", 100, at - Duration::from_millis(2)));
        assert!(limiter.try_take("a", 100, at), "room when it said so");
    }

    #[test]
    fn shard_map_finds_the_open_shard_owning_a_hash_key() {
        let half = u128::MAX / 2;
        let map = ShardMap::from_shards(&[
            shard("closed-parent", 0, u128::MAX, true),
            shard("low", 0, half, false),
            shard("high", half + 1, u128::MAX, false),
        ]);
        assert_eq!(map.shard_for_hash(0), Some("low"));
        assert_eq!(map.shard_for_hash(half), Some("low"));
        assert_eq!(map.shard_for_hash(half + 1), Some("high"));
        assert_eq!(map.shard_for_hash(u128::MAX), Some("high"));
        let mut record = UserRecord::new("ignored", vec![1u8]);
        record.explicit_hash_key = Some("5".into());
        assert_eq!(map.shard_for(&record), Some("low"));
        assert_eq!(ShardMap::default().shard_for_hash(1), None);
    }
}
