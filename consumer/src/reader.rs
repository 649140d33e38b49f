//! Reads one shard with `GetRecords`, politely: at most 5 calls a second (the Kinesis limit
//! shared by all polling consumers of a shard), at once again while the shard returns data,
//! after `poll_interval` when it returned nothing. Expired iterators are renewed from the last
//! sequence number read. Every failed call is retried from the same position with backoff,
//! except when the stream was deleted, which ends the reader ([`ReadError::StreamGone`]).

use std::time::Duration;

use aws_sdk_kinesis::types::{Record, ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;
use chrono::{DateTime, Utc};
use kinesis_common::aws::{classify, ErrorKind};
use kinesis_common::backoff::Backoff;
use kinesis_common::kinesis::error_text;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::observe::observer;

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

/// Why a reader stopped. Every other failure is retried inside the reader (see
/// [`ShardReader::next_batch`]).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stop requested")]
    Cancelled,
    /// The stream no longer exists (or is being deleted): nothing will ever be read again.
    #[error("stream {stream:?} was deleted while shard {shard_id} was being read ({message})")]
    StreamGone {
        stream: String,
        shard_id: String,
        message: String,
    },
}

/// How often a shard that keeps failing is reported again while it is retried.
const REPORT_EVERY: Duration = Duration::from_secs(60);

pub struct ShardReader {
    client: Client,
    stream: String,
    shard_id: String,
    start: StartPosition,
    iterator: Option<String>,
    /// Last sequence number handed out: an iterator renewed after an error or an expiry starts
    /// just after it, so nothing is skipped or repeated.
    last_sequence: Option<String>,
    max_records: i32,
    poll_interval: Duration,
    next_call_at: Instant,
    ended: bool,
    failures: Failures,
}

/// The current run of failed calls, for backoff and for reporting it without flooding the log.
#[derive(Debug)]
pub(crate) struct Failures {
    /// Transient errors (throttling, 5xx, timeouts): short waits.
    transient: Backoff,
    /// Errors that need someone to act (access denied, a missing shard, a rejected request):
    /// longer waits, up to a minute.
    persistent: Backoff,
    count: u64,
    last_report: Option<Instant>,
}

impl Default for Failures {
    fn default() -> Self {
        Self {
            transient: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            persistent: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
            count: 0,
            last_report: None,
        }
    }
}

/// What to log about a failure: the first of a run, then at most one reminder a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    First,
    Still { failures: u64 },
}

impl Failures {
    /// Counts and reports one failed call of `shard_id`'s reader (the first of a run, then once
    /// a minute); returns the wait before the next call. Shared by both ways of reading.
    pub(crate) fn failed(&mut self, shard_id: &str, failure: Failure) -> Duration {
        let (error, persistent) = match failure {
            Failure::Transient(error) => (error, false),
            Failure::Persistent(error) => (error, true),
        };
        let (delay, report) = self.note(Instant::now(), persistent);
        let retry_in_ms = delay.as_millis() as u64;
        match (report, persistent) {
            (None, _) => {}
            (Some(Report::First), false) => {
                tracing::warn!(shard_id = %shard_id, error = %error, retry_in_ms, "transient error reading shard, retrying")
            }
            (Some(Report::First), true) => {
                tracing::error!(shard_id = %shard_id, error = %error, retry_in_ms, "cannot read shard, retrying with backoff")
            }
            (Some(Report::Still { failures }), _) => {
                tracing::error!(shard_id = %shard_id, error = %error, failures, retry_in_ms, "shard still failing, retrying with backoff")
            }
        }
        delay
    }

    /// A call succeeded: the run of failures, if any, is over.
    pub(crate) fn recovered(&mut self, shard_id: &str) {
        if self.count > 0 {
            tracing::info!(shard_id = %shard_id, failures = self.count, "reading shard again");
        }
        *self = Failures::default();
    }

    /// Counts one failure at `now`: the wait before the next call, and what to log, if anything.
    fn note(&mut self, now: Instant, persistent: bool) -> (Duration, Option<Report>) {
        self.count += 1;
        let delay = if persistent {
            // Jittered, but never under the base: nobody fixes a permission in 0 ms.
            self.persistent.next_delay().max(Duration::from_secs(1))
        } else {
            self.transient.next_delay()
        };
        let due = self
            .last_report
            .is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
        if !due {
            return (delay, None);
        }
        self.last_report = Some(now);
        let report = match self.count {
            1 => Report::First,
            failures => Report::Still { failures },
        };
        (delay, Some(report))
    }
}

/// What to do about one failed call.
pub(crate) enum Failure {
    /// Throttling or a transient fault: retry soon.
    Transient(String),
    /// Will not heal by itself soon (access denied, missing shard, bad request): retry with
    /// long waits, report once a minute.
    Persistent(String),
}

impl Drop for ShardReader {
    fn drop(&mut self) {
        if let Some(o) = observer() {
            o.stopped_reading(&self.shard_id);
        }
    }
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
        let shard_id = shard_id.into();
        if let Some(o) = observer() {
            o.reading(&shard_id);
        }
        Self {
            client,
            stream: stream.into(),
            shard_id,
            start,
            iterator: None,
            last_sequence: None,
            max_records,
            poll_interval,
            next_call_at: Instant::now(),
            ended: false,
            failures: Failures::default(),
        }
    }

    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The next batch, waiting as the rate limits require. After a batch with `ended`, the
    /// reader must not be called again.
    ///
    /// Failed calls are retried here, from the position after the last record returned, with
    /// backoff: short for throttling and transient faults, growing to a minute for errors that
    /// need someone to act (access denied, say), which are logged when they start and then once
    /// a minute while they last. Only two things end the reader: `cancel` (also during a call)
    /// and the stream being deleted.
    pub async fn next_batch(&mut self, cancel: &CancellationToken) -> Result<Batch, ReadError> {
        debug_assert!(!self.ended, "shard already ended");
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err(ReadError::Cancelled),
                _ = tokio::time::sleep_until(self.next_call_at) => {}
            }
            let iterator = match self.iterator.clone() {
                Some(it) => it,
                None => match self.new_iterator(cancel).await? {
                    Ok(it) => it,
                    Err(failure) => {
                        self.failed(failure);
                        continue;
                    }
                },
            };
            let call = self
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(self.max_records)
                .send();
            let started = Instant::now();
            let result = tokio::select! {
                _ = cancel.cancelled() => return Err(ReadError::Cancelled),
                result = call => result,
            };
            if let Some(o) = observer() {
                o.metrics
                    .get_records_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            self.next_call_at = Instant::now() + MIN_CALL_SPACING;
            let out = match result {
                Ok(out) => out,
                Err(err) => {
                    let failure = match classify(&err) {
                        ErrorKind::ExpiredIterator => {
                            tracing::info!(shard_id = %self.shard_id, "shard iterator expired, renewing it");
                            self.iterator = None;
                            continue;
                        }
                        kind => {
                            self.judge(kind, format!("GetRecords: {}", error_text(&err)))
                                .await?
                        }
                    };
                    if matches!(failure, Failure::Persistent(_)) {
                        // The iterator itself may be what is wrong: take a new one, at the
                        // same position, next time.
                        self.iterator = None;
                    }
                    self.failed(failure);
                    continue;
                }
            };
            self.recovered();
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
            if let (Some(o), Some(ms)) = (observer(), behind) {
                o.behind(&self.shard_id, ms);
            }
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

    /// Sorts a failed call: retryable, needs-attention, or the end (the stream is gone).
    async fn judge(&self, kind: ErrorKind, text: String) -> Result<Failure, ReadError> {
        Ok(match kind {
            kind if kind.is_retryable() => Failure::Transient(text),
            ErrorKind::NotFound if stream_gone(&self.client, &self.stream).await => {
                return Err(ReadError::StreamGone {
                    stream: self.stream.clone(),
                    shard_id: self.shard_id.clone(),
                    message: text,
                })
            }
            _ => Failure::Persistent(text),
        })
    }

    fn failed(&mut self, failure: Failure) {
        let delay = self.failures.failed(&self.shard_id, failure);
        self.next_call_at = Instant::now() + delay.max(MIN_CALL_SPACING);
    }

    fn recovered(&mut self) {
        self.failures.recovered(&self.shard_id);
    }

    /// A new iterator at the current position; `Err` only when the reader must end.
    async fn new_iterator(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Result<String, Failure>, ReadError> {
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
        let result = tokio::select! {
            _ = cancel.cancelled() => return Err(ReadError::Cancelled),
            result = request.send() => result,
        };
        Ok(match result {
            Ok(out) => match out.shard_iterator() {
                Some(it) => Ok(it.to_string()),
                None => Err(Failure::Persistent(
                    "GetShardIterator returned no iterator".into(),
                )),
            },
            Err(err) => Err(self
                .judge(
                    classify(&err),
                    format!("GetShardIterator: {}", error_text(&err)),
                )
                .await?),
        })
    }
}

/// Whether `stream` is gone: `DescribeStreamSummary` says it does not exist or is being
/// deleted. Any other answer (including an error) counts as "still there".
pub async fn stream_gone(client: &Client, stream: &str) -> bool {
    match client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
    {
        Ok(out) => out
            .stream_description_summary()
            .is_some_and(|s| *s.stream_status() == StreamStatus::Deleting),
        Err(err) => classify(&err) == ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_is_reported_at_first_then_once_a_minute_with_capped_waits() {
        let mut failures = Failures::default();
        let start = Instant::now();
        let mut reports = Vec::new();
        let mut waits = Vec::new();
        // One failure a second for three minutes.
        for second in 0..180 {
            let (wait, report) = failures.note(start + Duration::from_secs(second), true);
            waits.push(wait);
            if let Some(report) = report {
                reports.push((second, report));
            }
        }
        assert_eq!(
            reports,
            vec![
                (0, Report::First),
                (60, Report::Still { failures: 61 }),
                (120, Report::Still { failures: 121 }),
            ]
        );
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(1) && *w <= Duration::from_secs(60)));

        let mut transient = Failures::default();
        for _ in 0..50 {
            let (wait, _) = transient.note(start, false);
            assert!(wait <= Duration::from_secs(10));
        }
    }
}
