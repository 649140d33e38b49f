//! The `PutRecords` call: a [`Batch`] within the call's limits goes out, and its answer is read
//! entry by entry into a [`CallOutcome`].

use std::sync::Arc;

use aws_sdk_kinesis::Client;
use kinesis_common::kinesis::{error_text, is_retryable, is_retryable_code};
use tokio::time::Instant;

use super::entry::Entry;
use super::outcome::Reporter;
use super::record::SendError;
use super::request_body::{replace_body, BodyPool};

/// Kinesis limits for one `PutRecords` call.
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;

/// The error code of a shard over its write limits (an entry's, or a whole call's).
const THROTTLED: &str = "ProvisionedThroughputExceededException";

/// The entries of one call, within its limits.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) entries: Vec<Entry>,
    bytes: usize,
}

impl Batch {
    /// Whether an entry of `size` bytes still fits (one entry always does).
    pub(super) fn fits(&self, size: usize) -> bool {
        self.entries.len() < MAX_BATCH_RECORDS
            && (self.bytes + size <= MAX_BATCH_BYTES || self.entries.is_empty())
    }

    pub(super) fn push(&mut self, entry: Entry) {
        self.bytes += entry.size();
        self.entries.push(entry);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Outcome of one `PutRecords` call.
#[derive(Default)]
pub(super) struct CallOutcome {
    /// Entries to try again after a pause.
    pub(super) retry: Vec<Entry>,
    /// Aggregates Kinesis stored on another shard than predicted: not acknowledged until the
    /// landing shard's hash key range is known to hold every member.
    pub(super) landed_elsewhere: Vec<Landed>,
    /// A record landed on another shard than predicted: the map is stale.
    pub(super) shard_map_stale: bool,
}

/// An aggregate stored on another shard than the shard map predicted (the map was stale: a
/// split or merge). Kinesis routes an aggregate by its first member's hash key, so the other
/// members may hash to another shard; the Java KCL then drops the whole aggregate. So its
/// members are acknowledged only when the landing shard's range holds every one of them, and
/// put again under the refreshed map otherwise, as the KPL does ("Wrong Shard").
pub(super) struct Landed {
    pub(super) entry: Entry,
    pub(super) shard_id: String,
    pub(super) sequence_number: String,
}

/// One `PutRecords` call for `batch`, bounded by the earliest time to live among its records.
/// Each answer entry is matched to the request entry at its position: acknowledged, rejected
/// for good, landed elsewhere than predicted (an aggregate: see [`Landed`]), or to be retried.
pub(super) async fn put_records(
    client: Client,
    stream: String,
    batch: Batch,
    reporter: Reporter,
    bodies: BodyPool,
) -> CallOutcome {
    let mut batch = batch.entries;
    let metrics = reporter.metrics.as_ref();
    let started = Instant::now();
    for e in &mut batch {
        e.attempts += 1;
    }
    // The body is ours (see `request_body`); the SDK is given no records to serialize.
    let body = bodies.body(&stream, &batch);
    let mut outcome = CallOutcome::default();
    let call = client
        .put_records()
        .stream_name(&stream)
        .set_records(Some(Vec::new()))
        .customize()
        .mutate_request(move |request| replace_body(request, &body))
        .send();
    // However the network behaves, the call ends when the first of its records' time to live
    // does (the SDK's own timeouts usually end it sooner).
    let first_deadline = batch.iter().map(|e| e.deadline).min();
    let result = match first_deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(stream = %stream, records = batch.len(), "PutRecords did not answer within the records' time to live; abandoned");
                let why: Arc<str> = "PutRecords did not answer within the record's time to live (Kinesis may still have stored it)".into();
                let mut tally = metrics.and_then(|m| m.shards.tally());
                for mut e in batch {
                    if let Some(t) = &mut tally {
                        t.retried(e.predicted_shard.as_deref(), e.members.len(), false);
                    }
                    e.last_error = why.clone();
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
            let mut resolution = reporter.resolution();
            resolution.reserve(batch.iter().map(|e| e.members.len()).sum());
            // Per shard, for the status page: one lock for the whole answer.
            let mut tally = metrics.and_then(|m| m.shards.tally());
            let results = out.records();
            // Entries failed alike share one error text.
            let mut last_error: Arc<str> = "".into();
            for (i, mut e) in batch.into_iter().enumerate() {
                let Some(entry) = results.get(i) else {
                    if let Some(t) = &mut tally {
                        t.retried(e.predicted_shard.as_deref(), e.members.len(), false);
                    }
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
                        if let Some(t) = &mut tally {
                            t.acknowledged(
                                shard,
                                e.size(),
                                e.members.iter().map(|p| p.record.partition_key.as_str()),
                            );
                        }
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
                        e.succeed(shard, seq, &mut resolution);
                    }
                    (Some(code), _, _) if !is_retryable_code(code) => {
                        let msg = format!("{code}: {}", entry.error_message().unwrap_or_default());
                        e.fail(SendError::Rejected(msg), &mut resolution);
                    }
                    (code, _, _) => {
                        if let Some(t) = &mut tally {
                            t.retried(
                                e.predicted_shard.as_deref(),
                                e.members.len(),
                                code == Some(THROTTLED),
                            );
                        }
                        let text = format!(
                            "{}: {}",
                            code.unwrap_or("NoSequenceNumber"),
                            entry.error_message().unwrap_or_default()
                        );
                        if *last_error != *text {
                            last_error = text.into();
                        }
                        e.last_error = last_error.clone();
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
            let text: Arc<str> = text.into();
            let throttled = kinesis_common::kinesis::error_code(&err) == Some(THROTTLED);
            let mut tally = metrics.and_then(|m| m.shards.tally());
            for mut e in batch {
                if let Some(t) = &mut tally {
                    t.retried(e.predicted_shard.as_deref(), e.members.len(), throttled);
                }
                e.last_error = text.clone();
                outcome.retry.push(e);
            }
        }
        Err(err) => {
            let text = error_text(&err);
            tracing::error!(stream = %stream, records = batch.len(), error = %text, "PutRecords rejected");
            let mut resolution = reporter.resolution();
            for e in batch {
                e.fail(SendError::Rejected(text.clone()), &mut resolution);
            }
        }
    }
    outcome
}
