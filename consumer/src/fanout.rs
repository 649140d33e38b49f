//! Enhanced fan-out (`CONSUMER_RETRIEVAL=fanout`): Kinesis pushes each shard's records to a
//! registered stream consumer over a `SubscribeToShard` event stream, with the consumer's own
//! 2 MiB/s per shard instead of the 5 `GetRecords` calls a second every polling consumer of the
//! shard shares.
//!
//! - [`register`]: the stream consumer (`CONSUMER_EFO_NAME`) is registered if missing and
//!   waited for until `ACTIVE`, or reused as it is. It is never deregistered here: every worker
//!   of the application shares it, and it outlives any one of them.
//! - [`FanoutReader`]: one shard, one subscription at a time, yielding the same
//!   [`Batch`]es as the polling [`crate::reader::ShardReader`], so deaggregation, checkpoints,
//!   resharding and the processor API do not depend on how records arrived.
//!
//! A subscription lasts at most 5 minutes. The reader replaces it after
//! `CONSUMER_EFO_RENEW_MS`, when Kinesis ends it, when it fails, and when it delivers no event
//! for `CONSUMER_EFO_IDLE_MS`; the new one starts after the last event's continuation sequence
//! number (`AFTER_SEQUENCE_NUMBER`), and a record at or before the last one handed out is never
//! handed out again, so nothing is skipped or repeated across subscriptions. At most one
//! `SubscribeToShard` a second per shard (the Kinesis limit per consumer and shard), with
//! backoff on throttling (`LimitExceededException`), a subscription still held
//! (`ResourceInUseException`) and dropped connections; errors are reported as the polling
//! reader reports them (the first of a run, then once a minute).
//!
//! The end of a shard: Kinesis sends a last event with `ChildShards` (and no continuation). An
//! emulator that never does (kinesis-mock 0.6.2 keeps a closed shard's subscription open, with
//! empty events) is covered too: once the subscription is caught up on a shard the last listing
//! showed closed ([`ClosedShards`]), one `GetRecords` after the last record confirms the end
//! and names the children.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::SdkError;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, Record, Shard, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;
use kinesis_common::aws::{classify, ErrorKind};
use kinesis_common::backoff::Backoff;
use kinesis_common::kinesis::error_text;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lease::table::compare_sequence_numbers;
use crate::observe::observer;
use crate::reader::{stream_gone, Batch, Failure, Failures, ReadError, StartPosition};

/// Kinesis accepts one `SubscribeToShard` a second per consumer and shard.
pub const SUBSCRIBE_SPACING: Duration = Duration::from_secs(1);

/// After this reader ended a subscription itself, the service may still hold it for a moment
/// (Kinesis refuses a new one within 5 seconds of the last; kinesis-mock until it notices the
/// closed connection): a refusal in that window is retried each second without a report.
const RELEASE_GRACE: Duration = Duration::from_secs(10);

/// How often a caught-up subscription on a closed shard may be checked for the shard's end.
const END_CHECK_SPACING: Duration = Duration::from_secs(1);

/// A registered stream consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConsumer {
    pub name: String,
    pub arn: String,
}

/// Why [`register`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("stop requested while registering stream consumer {0:?}")]
    Cancelled(String),
    #[error("stream consumer {consumer:?} of stream {stream:?} is not ACTIVE after {waited:?} (last seen: {last}); raise STREAM_WAIT_TIMEOUT_MS or check the consumer with `aws kinesis describe-stream-consumer`")]
    Timeout {
        consumer: String,
        stream: String,
        waited: Duration,
        last: String,
    },
    #[error("cannot register stream consumer {consumer:?} of stream {stream:?}: {message}")]
    Fatal {
        consumer: String,
        stream: String,
        message: String,
    },
}

/// Finds the stream consumer `name` of `stream`, registering it if it is missing, and waits
/// until it is `ACTIVE` (at most `timeout`, polling every second, logging every 5 s). Racing
/// workers of one application end up with the same consumer: a registration refused because
/// it exists already is followed by a look at it. Transient errors and throttling (at most 5
/// registrations a second per account) are retried until the deadline; access denied and
/// invalid requests end it at once.
pub async fn register(
    client: &Client,
    stream: &str,
    name: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<StreamConsumer, RegisterError> {
    let started = Instant::now();
    let mut last_log = started;
    let mut registered = false;
    let mut stream_arn: Option<String> = None;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let fatal = |message: String| RegisterError::Fatal {
        consumer: name.to_string(),
        stream: stream.to_string(),
        message,
    };
    loop {
        let step = async {
            let arn = match &stream_arn {
                Some(arn) => arn.clone(),
                None => {
                    let out = client
                        .describe_stream_summary()
                        .stream_name(stream)
                        .send()
                        .await
                        .map_err(|e| {
                            (
                                classify(&e),
                                format!("DescribeStreamSummary: {}", error_text(&e)),
                            )
                        })?;
                    let arn = out
                        .stream_description_summary()
                        .map(|s| s.stream_arn().to_string())
                        .unwrap_or_default();
                    stream_arn = Some(arn.clone());
                    arn
                }
            };
            let described = client
                .describe_stream_consumer()
                .stream_arn(&arn)
                .consumer_name(name)
                .send()
                .await;
            match described {
                Ok(out) => match out.consumer_description() {
                    Some(c) if *c.consumer_status() == ConsumerStatus::Active => {
                        Ok(Some(StreamConsumer {
                            name: name.to_string(),
                            arn: c.consumer_arn().to_string(),
                        }))
                    }
                    Some(c) => Err((
                        ErrorKind::Transient,
                        format!("status {}", c.consumer_status().as_str()),
                    )),
                    None => Err((ErrorKind::Transient, "no description".to_string())),
                },
                Err(e) if classify(&e) == ErrorKind::NotFound => {
                    match client
                        .register_stream_consumer()
                        .stream_arn(&arn)
                        .consumer_name(name)
                        .send()
                        .await
                    {
                        Ok(_) => {
                            registered = true;
                            Err((ErrorKind::Transient, "registered, CREATING".to_string()))
                        }
                        // Registered by another worker meanwhile, or still being deleted.
                        Err(e) if classify(&e) == ErrorKind::InUse => Err((
                            ErrorKind::Transient,
                            format!("RegisterStreamConsumer: {}", error_text(&e)),
                        )),
                        Err(e) => Err((
                            classify(&e),
                            format!("RegisterStreamConsumer: {}", error_text(&e)),
                        )),
                    }
                }
                Err(e) => Err((
                    classify(&e),
                    format!("DescribeStreamConsumer: {}", error_text(&e)),
                )),
            }
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return Err(RegisterError::Cancelled(name.to_string())),
            outcome = step => outcome,
        };
        let (last, pause) = match outcome {
            Ok(Some(consumer)) => {
                let what = if registered {
                    "stream consumer registered"
                } else {
                    "stream consumer found"
                };
                tracing::info!(stream = %stream, consumer_name = %consumer.name, consumer_arn = %consumer.arn, "{what}");
                return Ok(consumer);
            }
            Ok(None) => unreachable!("a step either finds the consumer or says why not"),
            Err((ErrorKind::AccessDenied | ErrorKind::Invalid, message)) => {
                return Err(fatal(message))
            }
            Err((ErrorKind::Throttled, message)) => (message, backoff.next_delay()),
            // CREATING, DELETING, registered just now, or a transient fault.
            Err((_, message)) => (message, Duration::from_secs(1)),
        };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(RegisterError::Timeout {
                consumer: name.to_string(),
                stream: stream.to_string(),
                waited,
                last,
            });
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(stream = %stream, consumer_name = %name, state = %last, waited_s = waited.as_secs(), "waiting for stream consumer to become ACTIVE");
            last_log = Instant::now();
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(RegisterError::Cancelled(name.to_string())),
            _ = tokio::time::sleep(pause.min(timeout - waited)) => {}
        }
    }
}

/// Which shards the last shard listing showed closed. The code that lists shards anyway
/// (polling mode's shard sync, the lease coordinator's) publishes here; fan-out readers look,
/// to know when a caught-up subscription may be at its shard's end.
#[derive(Debug, Clone)]
pub struct ClosedShards(Arc<watch::Sender<HashSet<String>>>);

impl Default for ClosedShards {
    fn default() -> Self {
        Self(Arc::new(watch::channel(HashSet::new()).0))
    }
}

impl ClosedShards {
    /// Records what a listing of the stream showed. Closed shards stay closed: the set only
    /// grows.
    pub fn note_listing(&self, shards: &[Shard]) {
        let closed: Vec<String> = shards
            .iter()
            .filter(|s| !kinesis_common::kinesis::is_open(s))
            .map(|s| s.shard_id().to_string())
            .collect();
        self.0.send_if_modified(|set| {
            let before = set.len();
            set.extend(closed);
            set.len() != before
        });
    }

    pub fn contains(&self, shard_id: &str) -> bool {
        self.0.borrow().contains(shard_id)
    }
}

/// What every [`FanoutReader`] of a process shares.
#[derive(Debug, Clone)]
pub struct FanOutContext {
    pub consumer: Arc<StreamConsumer>,
    pub renew_interval: Duration,
    pub idle_timeout: Duration,
    pub closed: ClosedShards,
}

/// One open subscription.
struct Subscription {
    events: aws_sdk_kinesis::primitives::event_stream::EventReceiver<
        SubscribeToShardEventStream,
        SubscribeToShardEventStreamError,
    >,
    renew_at: Instant,
    last_event_at: Instant,
    events_seen: u64,
}

/// What waiting on a subscription gave.
enum Next {
    Renew,
    Idle,
    Event(SubscribeToShardEventStream),
    /// Kinesis ended the subscription.
    Finished,
    Failed {
        kind: ErrorKind,
        text: String,
        /// An error the service sent (not a dropped connection).
        from_service: bool,
    },
}

impl Next {
    fn received<R: std::fmt::Debug>(
        received: Result<
            Option<SubscribeToShardEventStream>,
            SdkError<SubscribeToShardEventStreamError, R>,
        >,
    ) -> Self {
        match received {
            Ok(Some(event)) => Next::Event(event),
            Ok(None) => Next::Finished,
            Err(err) => Next::Failed {
                kind: classify_event_error(&err),
                text: format!("SubscribeToShard event stream: {}", error_text(&err)),
                from_service: matches!(err, SdkError::ServiceError(_)),
            },
        }
    }
}

/// Reads one shard through `SubscribeToShard`; see the module docs.
pub struct FanoutReader {
    client: Client,
    stream: String,
    shard_id: String,
    ctx: FanOutContext,
    start: StartPosition,
    /// The last event's continuation sequence number: the next subscription starts after it.
    continuation: Option<String>,
    /// The last record handed out: nothing at or before it is handed out again.
    last_sequence: Option<String>,
    subscription: Option<Subscription>,
    next_subscribe_at: Instant,
    /// Set when this reader ended a subscription itself: see [`RELEASE_GRACE`].
    releasing_until: Option<Instant>,
    last_end_check: Option<Instant>,
    failures: Failures,
    ended: bool,
}

impl Drop for FanoutReader {
    fn drop(&mut self) {
        if let Some(o) = observer() {
            o.stopped_reading(&self.shard_id);
        }
    }
}

impl FanoutReader {
    pub fn new(
        client: Client,
        stream: impl Into<String>,
        shard_id: impl Into<String>,
        start: StartPosition,
        ctx: FanOutContext,
    ) -> Self {
        let shard_id = shard_id.into();
        if let Some(o) = observer() {
            o.reading(&shard_id);
        }
        Self {
            client,
            stream: stream.into(),
            shard_id,
            ctx,
            start,
            continuation: None,
            last_sequence: None,
            subscription: None,
            next_subscribe_at: Instant::now(),
            releasing_until: None,
            last_end_check: None,
            failures: Failures::default(),
            ended: false,
        }
    }

    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The next batch of records (never an empty one, unless it reports the shard's end).
    /// After a batch with `ended`, the reader must not be called again. Every failure is
    /// retried here; only `cancel` (also during a call or a wait) and the stream being deleted
    /// end the reader.
    pub async fn next_batch(&mut self, cancel: &CancellationToken) -> Result<Batch, ReadError> {
        debug_assert!(!self.ended, "shard already ended");
        loop {
            let Some(sub) = self.subscription.as_mut() else {
                tokio::select! {
                    _ = cancel.cancelled() => return Err(ReadError::Cancelled),
                    _ = tokio::time::sleep_until(self.next_subscribe_at) => {}
                }
                match self.subscribe(cancel).await? {
                    Ok(sub) => self.subscription = Some(sub),
                    Err(Some(failure)) => self.failed(failure),
                    Err(None) => self.retry_quietly(),
                }
                continue;
            };
            let idle_at = sub.last_event_at + self.ctx.idle_timeout;
            let next = tokio::select! {
                _ = cancel.cancelled() => return Err(ReadError::Cancelled),
                _ = tokio::time::sleep_until(sub.renew_at) => Next::Renew,
                received = tokio::time::timeout_at(idle_at, sub.events.recv()) => match received {
                    Ok(received) => Next::received(received),
                    Err(_) => Next::Idle,
                },
            };
            match next {
                Next::Renew => {
                    tracing::info!(shard_id = %self.shard_id, after = self.continuation.as_deref().unwrap_or(""), "subscription renewed");
                    self.end_subscription();
                }
                Next::Idle => {
                    self.end_subscription();
                    let idle_ms = self.ctx.idle_timeout.as_millis() as u64;
                    self.failed(Failure::Transient(format!(
                        "SubscribeToShard: no event for {idle_ms} ms, subscription replaced"
                    )));
                }
                Next::Event(SubscribeToShardEventStream::SubscribeToShardEvent(event)) => {
                    sub.events_seen += 1;
                    sub.last_event_at = Instant::now();
                    self.releasing_until = None;
                    self.failures.recovered(&self.shard_id);
                    let behind = event.millis_behind_latest();
                    if let Some(o) = observer() {
                        o.behind(&self.shard_id, behind);
                    }
                    let children: Vec<String> = event
                        .child_shards()
                        .iter()
                        .map(|c| c.shard_id().to_string())
                        .collect();
                    let records = self.fresh(event.records);
                    // The last event of a closed shard: its children, and no continuation.
                    let ended =
                        if !children.is_empty() || event.continuation_sequence_number.is_empty() {
                            Some(children)
                        } else {
                            self.continuation = Some(event.continuation_sequence_number);
                            None
                        };
                    let ended = match ended {
                        None if records.is_empty() && behind == 0 => self.check_end(cancel).await?,
                        ended => ended,
                    };
                    if ended.is_some() {
                        self.ended = true;
                        self.subscription = None;
                    } else if records.is_empty() {
                        continue;
                    }
                    return Ok(Batch {
                        records,
                        millis_behind_latest: Some(behind),
                        ended,
                    });
                }
                // A kind of event this SDK does not know: nothing to hand out.
                Next::Event(_) => {}
                Next::Finished => {
                    // Kinesis ends a subscription after 5 minutes; one that ends before its
                    // first event is a failure, or it would be renewed in a loop.
                    let empty = sub.events_seen == 0;
                    self.subscription = None;
                    if empty {
                        self.failed(Failure::Transient(
                            "SubscribeToShard: the subscription ended before its first event"
                                .into(),
                        ));
                    } else {
                        tracing::debug!(shard_id = %self.shard_id, "subscription ended, renewing it");
                    }
                }
                Next::Failed {
                    kind,
                    text,
                    from_service,
                } => {
                    self.subscription = None;
                    if from_service && self.releasing() {
                        tracing::debug!(shard_id = %self.shard_id, error = %text, "previous subscription not released yet");
                        self.retry_quietly();
                        continue;
                    }
                    let failure = self.judge(kind, text, cancel).await?;
                    self.failed(failure);
                }
            }
        }
    }

    /// The records not handed out yet, remembering the last.
    fn fresh(&mut self, records: Vec<Record>) -> Vec<Record> {
        let records: Vec<Record> = match &self.last_sequence {
            None => records,
            Some(last) => records
                .into_iter()
                .filter(|r| compare_sequence_numbers(r.sequence_number(), last).is_gt())
                .collect(),
        };
        if let Some(r) = records.last() {
            self.last_sequence = Some(r.sequence_number().to_string());
        }
        records
    }

    /// Drops the open subscription on purpose (renewal, silence).
    fn end_subscription(&mut self) {
        self.subscription = None;
        self.releasing_until = Some(Instant::now() + RELEASE_GRACE);
    }

    fn releasing(&self) -> bool {
        self.releasing_until.is_some_and(|t| Instant::now() < t)
    }

    /// Where the next subscription starts.
    fn starting_position(&self) -> StartingPosition {
        let builder = StartingPosition::builder();
        let builder = match (&self.continuation, &self.start) {
            (Some(seq), _) | (None, StartPosition::AfterSequence(seq)) => builder
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
            (None, StartPosition::AtSequence(seq)) => builder
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(seq),
            (None, StartPosition::TrimHorizon) => builder.r#type(ShardIteratorType::TrimHorizon),
            (None, StartPosition::Latest) => builder.r#type(ShardIteratorType::Latest),
            (None, StartPosition::AtTimestamp(t)) => {
                builder.r#type(ShardIteratorType::AtTimestamp).timestamp(
                    aws_sdk_kinesis::primitives::DateTime::from_millis(t.timestamp_millis()),
                )
            }
        };
        builder
            .build()
            .expect("a starting position always has its type")
    }

    /// Opens a subscription; the inner `Err` is a failure to report (`None`: the previous
    /// subscription is being released, retry quietly), the outer one the reader's end.
    async fn subscribe(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Result<Subscription, Option<Failure>>, ReadError> {
        let position = self.starting_position();
        tracing::debug!(shard_id = %self.shard_id, position = ?position, "subscribing");
        let now = Instant::now();
        self.next_subscribe_at = now + SUBSCRIBE_SPACING;
        // This loop retries with at least a second between calls; the SDK's own retries would
        // not keep to the one-call-a-second limit.
        let call = self
            .client
            .subscribe_to_shard()
            .consumer_arn(&self.ctx.consumer.arn)
            .shard_id(&self.shard_id)
            .starting_position(position)
            .customize()
            .config_override(
                aws_sdk_kinesis::config::Builder::default()
                    .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled()),
            )
            .send();
        // `send` returns after the first message of the event stream, which no SDK timeout
        // bounds: a subscription whose stream stays silent from the start is replaced like one
        // that goes silent later.
        let idle = self.ctx.idle_timeout;
        let result = tokio::select! {
            _ = cancel.cancelled() => return Err(ReadError::Cancelled),
            result = tokio::time::timeout(idle, call) => result,
        };
        let Ok(result) = result else {
            return Ok(Err(Some(Failure::Transient(format!(
                "SubscribeToShard: no event for {} ms, subscription replaced",
                idle.as_millis()
            )))));
        };
        match result {
            Ok(out) => {
                let now = Instant::now();
                Ok(Ok(Subscription {
                    events: out.event_stream,
                    renew_at: now + self.ctx.renew_interval,
                    last_event_at: now,
                    events_seen: 0,
                }))
            }
            Err(err) => {
                let kind = classify(&err);
                let text = format!("SubscribeToShard: {}", error_text(&err));
                if kind == ErrorKind::InUse && self.releasing() {
                    tracing::debug!(shard_id = %self.shard_id, error = %text, "previous subscription not released yet");
                    return Ok(Err(None));
                }
                Ok(Err(Some(self.judge(kind, text, cancel).await?)))
            }
        }
    }

    /// Sorts a failure: retried soon, retried with long waits, or the end (the stream is gone,
    /// or a stop was requested while that was being checked).
    async fn judge(
        &self,
        kind: ErrorKind,
        text: String,
        cancel: &CancellationToken,
    ) -> Result<Failure, ReadError> {
        Ok(match kind {
            // Throttled (one call a second) or the subscription still held elsewhere.
            kind if kind.is_retryable() || kind == ErrorKind::InUse => Failure::Transient(text),
            // A missing shard or stream consumer, or a deleted stream: only the last one ends
            // the reader.
            ErrorKind::NotFound => {
                let gone = tokio::select! {
                    _ = cancel.cancelled() => return Err(ReadError::Cancelled),
                    gone = stream_gone(&self.client, &self.stream) => gone,
                };
                if gone {
                    return Err(ReadError::StreamGone {
                        stream: self.stream.clone(),
                        shard_id: self.shard_id.clone(),
                        message: text,
                    });
                }
                Failure::Persistent(text)
            }
            _ => Failure::Persistent(text),
        })
    }

    fn retry_quietly(&mut self) {
        self.next_subscribe_at = self
            .next_subscribe_at
            .max(Instant::now() + SUBSCRIBE_SPACING);
    }

    fn failed(&mut self, failure: Failure) {
        let delay = self.failures.failed(&self.shard_id, failure);
        self.next_subscribe_at = self
            .next_subscribe_at
            .max(Instant::now() + delay.max(SUBSCRIBE_SPACING));
    }

    /// On a shard the last listing showed closed, with the subscription caught up: whether the
    /// shard was read to its end, by one `GetRecords` after the last record handed out. `Some`
    /// with the child shards when it was. Any failure here just means "not known yet".
    async fn check_end(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<String>>, ReadError> {
        if !self.ctx.closed.contains(&self.shard_id)
            || self
                .last_end_check
                .is_some_and(|at| at.elapsed() < END_CHECK_SPACING)
        {
            return Ok(None);
        }
        self.last_end_check = Some(Instant::now());
        let check = async {
            let request = self
                .client
                .get_shard_iterator()
                .stream_name(&self.stream)
                .shard_id(&self.shard_id);
            let request = match (&self.last_sequence, &self.start) {
                (Some(seq), _) | (None, StartPosition::AfterSequence(seq)) => request
                    .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                    .starting_sequence_number(seq),
                (None, StartPosition::AtSequence(seq)) => request
                    .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                    .starting_sequence_number(seq),
                (None, StartPosition::Latest) => {
                    request.shard_iterator_type(ShardIteratorType::Latest)
                }
                (None, StartPosition::AtTimestamp(t)) => request
                    .shard_iterator_type(ShardIteratorType::AtTimestamp)
                    .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(
                        t.timestamp_millis(),
                    )),
                (None, StartPosition::TrimHorizon) => {
                    request.shard_iterator_type(ShardIteratorType::TrimHorizon)
                }
            };
            let iterator = request
                .send()
                .await
                .map_err(|e| format!("GetShardIterator: {}", error_text(&e)))?
                .shard_iterator
                .ok_or_else(|| "GetShardIterator returned no iterator".to_string())?;
            let out = self
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(1)
                .send()
                .await
                .map_err(|e| format!("GetRecords: {}", error_text(&e)))?;
            Ok::<_, String>(
                (out.records().is_empty() && out.next_shard_iterator().is_none()).then(|| {
                    out.child_shards()
                        .iter()
                        .map(|c| c.shard_id().to_string())
                        .collect()
                }),
            )
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return Err(ReadError::Cancelled),
            result = check => result,
        };
        Ok(match result {
            Ok(ended) => ended,
            Err(error) => {
                tracing::debug!(shard_id = %self.shard_id, error = %error, "shard end check failed, trying again later");
                None
            }
        })
    }
}

/// How to treat a failure delivered on the event stream: by its AWS error code when it has a
/// known one (`ResourceInUseException`: another subscription took over; KMS errors: someone must
/// act), anything else (a dropped connection, a frame that cannot be read, an exception this
/// SDK does not know) as transient.
fn classify_event_error<R>(err: &SdkError<SubscribeToShardEventStreamError, R>) -> ErrorKind {
    use aws_sdk_kinesis::error::ProvideErrorMetadata;
    match err {
        SdkError::ServiceError(e) => e
            .err()
            .code()
            .and_then(ErrorKind::from_code)
            .unwrap_or(ErrorKind::Transient),
        _ => ErrorKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::types::{HashKeyRange, SequenceNumberRange};

    fn shard(id: &str, closed: bool) -> Shard {
        let mut range = SequenceNumberRange::builder().starting_sequence_number("1");
        if closed {
            range = range.ending_sequence_number("9");
        }
        Shard::builder()
            .shard_id(id)
            .hash_key_range(
                HashKeyRange::builder()
                    .starting_hash_key("0")
                    .ending_hash_key("9")
                    .build()
                    .unwrap(),
            )
            .sequence_number_range(range.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn closed_shards_are_remembered_across_listings() {
        let closed = ClosedShards::default();
        let reader_view = closed.clone();
        closed.note_listing(&[shard("a", false), shard("b", true)]);
        assert!(reader_view.contains("b"));
        assert!(!reader_view.contains("a"));
        // A later listing that no longer shows "b" (trimmed) does not reopen it.
        closed.note_listing(&[shard("a", true)]);
        assert!(reader_view.contains("a") && reader_view.contains("b"));
    }

    fn record(seq: &str) -> Record {
        Record::builder()
            .sequence_number(seq)
            .partition_key("k")
            .data(aws_sdk_kinesis::primitives::Blob::new(b"x".to_vec()))
            .build()
            .unwrap()
    }

    fn reader(start: StartPosition) -> FanoutReader {
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .build();
        FanoutReader::new(
            Client::from_conf(conf),
            "s",
            "shardId-0",
            start,
            FanOutContext {
                consumer: Arc::new(StreamConsumer {
                    name: "c".into(),
                    arn: "arn".into(),
                }),
                renew_interval: Duration::from_secs(290),
                idle_timeout: Duration::from_secs(35),
                closed: ClosedShards::default(),
            },
        )
    }

    #[test]
    fn a_record_is_handed_out_once_whatever_a_new_subscription_repeats() {
        let mut r = reader(StartPosition::TrimHorizon);
        let seqs = |v: Vec<Record>| -> Vec<String> {
            v.iter().map(|r| r.sequence_number().to_string()).collect()
        };
        assert_eq!(
            seqs(r.fresh(vec![record("10"), record("11")])),
            ["10", "11"]
        );
        // A subscription started at an earlier position repeats 10 and 11.
        assert_eq!(
            seqs(r.fresh(vec![record("10"), record("11"), record("12")])),
            ["12"]
        );
        assert!(r.fresh(Vec::new()).is_empty());
        // Numeric order, not text order.
        assert_eq!(seqs(r.fresh(vec![record("9"), record("100")])), ["100"]);
    }

    #[test]
    fn a_new_subscription_starts_after_the_continuation_else_where_the_reader_started() {
        let mut r = reader(StartPosition::AtSequence("42".into()));
        let p = r.starting_position();
        assert_eq!(*p.r#type(), ShardIteratorType::AtSequenceNumber);
        assert_eq!(p.sequence_number(), Some("42"));
        r.continuation = Some("57".into());
        let p = r.starting_position();
        assert_eq!(*p.r#type(), ShardIteratorType::AfterSequenceNumber);
        assert_eq!(p.sequence_number(), Some("57"));
        let r = reader(StartPosition::Latest);
        assert_eq!(*r.starting_position().r#type(), ShardIteratorType::Latest);
    }
}
