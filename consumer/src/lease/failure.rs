//! Handing one batch of user records to the processor, under the worker's [`FailurePolicy`]:
//! retries with capped backoff, bisection down to the failing record, a maximum record age,
//! and what happens to the records given up on (stop the shard, skip them, or put them on a
//! failure stream), modelled on the AWS Lambda Kinesis event source mapping.
//!
//! Records are always processed in order: a half is offered only after everything before it
//! was processed or given up on, so a checkpoint past records given up on never skips one that
//! was not handled. A slice counts as delivered (what [`Checkpointer::checkpoint`] may record)
//! while `process_records` has it, and stays so only when that returned `Ok` or the records
//! were given up on: after an `Err` the checkpointer forgets it again, so a checkpoint taken
//! later, in `shutdown_requested` during the retry backoff or after `stop` halted the shard,
//! stops before the records that failed.

use std::ops::Range;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use base64::Engine as _;
use chrono::Utc;
use kinesis_common::aws::classify;
use kinesis_common::backoff::Backoff;
pub use kinesis_common::config::{FailurePolicy, OnFailure};
use kinesis_common::kinesis::{error_text, is_retryable_code, put_entries, PutEntry};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::processor::{
    CheckpointError, Checkpointer, KinesisClientRecord, ProcessRecordsInput, RecordProcessor,
    ShardFailed,
};
use crate::reader::{Failure, Failures};

/// How handing a batch over ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Every record was processed or given up on as the policy says.
    Done,
    /// Stop requested while retrying: the rest was not processed (the next holder gets it).
    Cancelled,
    /// Given up on with [`OnFailure::Stop`]: the shard must stop, keeping its lease.
    Halted(String),
    /// The processor returned [`ShardFailed`]: the shard stops and its lease is released.
    Failed(String),
}

/// A Kinesis record may hold 1 MiB of data plus partition key: a failed record whose data
/// would not fit (base64 grows it by a third) is sent without it.
const FAILURE_RECORD_MAX: usize = 1_000_000;

/// What [`deliver`] needs besides the records.
pub(crate) struct Deliverer<'a> {
    pub policy: &'a FailurePolicy,
    pub kinesis: &'a aws_sdk_kinesis::Client,
    /// Where the records come from, for the failure stream's metadata.
    pub stream: &'a str,
    pub application: &'a str,
    pub worker_id: &'a str,
    pub shard_id: &'a str,
}

impl Deliverer<'_> {
    /// Hands `records` to `processor`, in order, until each was processed or given up on.
    pub(crate) async fn deliver<P: RecordProcessor>(
        &self,
        processor: &mut P,
        checkpointer: &Checkpointer,
        records: &[KinesisClientRecord],
        millis_behind_latest: Option<i64>,
        stop: &CancellationToken,
    ) -> Delivery {
        // A stack of ranges still to process, the next on top.
        let mut pending: Vec<Range<usize>> = Vec::with_capacity(8);
        pending.push(0..records.len());
        while let Some(mut range) = pending.pop() {
            let mut attempts = 0u32;
            let mut backoff =
                Backoff::new(Duration::from_millis(200), self.policy.retry_backoff_max);
            while !range.is_empty() {
                let slice = &records[range.clone()];
                let Some(last) = slice.last() else { break };
                let before = checkpointer.last_delivered();
                checkpointer.delivered(last.position());
                let started = std::time::Instant::now();
                let result = processor
                    .process_records(ProcessRecordsInput {
                        records: slice,
                        millis_behind_latest,
                        checkpointer,
                    })
                    .await;
                if let Some(o) = crate::observe::observer() {
                    o.metrics
                        .process_records_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                let error = match result {
                    Ok(()) => {
                        if let Some(o) = crate::observe::observer() {
                            let bytes = slice.iter().map(|r| r.data.len() as u64).sum();
                            o.metrics
                                .processed(self.shard_id, slice.len() as u64, bytes);
                        }
                        break;
                    }
                    Err(err) => {
                        // Not processed: no checkpoint may pass it until it is.
                        checkpointer.rewind_delivered(before);
                        if err.downcast_ref::<ShardFailed>().is_some() {
                            return Delivery::Failed(format!("{err:#}"));
                        }
                        format!("{err:#}")
                    }
                };
                attempts += 1;
                if self.policy.bisect_on_error && slice.len() > 1 {
                    let middle = range.start + slice.len() / 2;
                    tracing::warn!(shard_id = %self.shard_id, records = slice.len(), first_sequence_number = %slice[0].sequence_number, error = %error, "processing a batch failed, splitting it in two");
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                    break;
                }
                if let Some(max_age) = self.policy.max_record_age {
                    let now = Utc::now();
                    let too_old = slice
                        .iter()
                        .take_while(|r| {
                            r.approximate_arrival_timestamp
                                .is_some_and(|t| (now - t).to_std().is_ok_and(|age| age > max_age))
                        })
                        .count();
                    if too_old > 0 {
                        let given_up = &slice[..too_old];
                        let reason = format!(
                            "older than CONSUMER_MAX_RECORD_AGE_SECONDS ({} s)",
                            max_age.as_secs()
                        );
                        match self
                            .give_up(checkpointer, given_up, &error, attempts, &reason, stop)
                            .await
                        {
                            Delivery::Done => {}
                            other => return other,
                        }
                        range.start += too_old;
                        continue;
                    }
                }
                if self.policy.retry_attempts.is_some_and(|max| attempts > max) {
                    let reason = format!("failed {attempts} times");
                    match self
                        .give_up(checkpointer, slice, &error, attempts, &reason, stop)
                        .await
                    {
                        Delivery::Done => break,
                        other => return other,
                    }
                }
                let delay = backoff.next_delay();
                tracing::error!(shard_id = %self.shard_id, records = slice.len(), first_sequence_number = %slice[0].sequence_number, attempts, error = %error, retry_in_ms = delay.as_millis() as u64, "processing a batch failed, offering it again");
                tokio::select! {
                    // Not processed: it is delivered again to whoever holds the lease next.
                    _ = stop.cancelled() => return Delivery::Cancelled,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        Delivery::Done
    }

    /// Applies the on-failure action to `records`, which processing failed on.
    async fn give_up(
        &self,
        checkpointer: &Checkpointer,
        records: &[KinesisClientRecord],
        error: &str,
        attempts: u32,
        reason: &str,
        stop: &CancellationToken,
    ) -> Delivery {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Delivery::Done;
        };
        let action = self.policy.on_failure.action();
        if let Some(o) = crate::observe::observer() {
            o.metrics
                .records_given_up(self.shard_id, action, records.len() as u64);
        }
        // The fields every give-up event carries.
        macro_rules! given_up {
            ($level:ident, $message:literal $(, $field:ident = $value:expr)*) => {
                tracing::$level!(
                    shard_id = %self.shard_id,
                    $($field = %$value,)*
                    first_sequence_number = %first.sequence_number,
                    first_sub_sequence_number = first.sub_sequence_number,
                    last_sequence_number = %last.sequence_number,
                    last_sub_sequence_number = last.sub_sequence_number,
                    records = records.len(),
                    attempts,
                    error = %error,
                    reason = %reason,
                    $message
                )
            };
        }
        match &self.policy.on_failure {
            OnFailure::Stop => {
                given_up!(
                    error,
                    "shard stopped: records keep failing; the lease is kept and nothing after them is processed until this worker restarts",
                    worker_id = self.worker_id
                );
                return Delivery::Halted(format!(
                    "records from {}/{} {reason}: {error}",
                    first.sequence_number, first.sub_sequence_number
                ));
            }
            OnFailure::Skip => given_up!(warn, "records skipped after failing"),
            OnFailure::Stream(name) => {
                if !self
                    .put_failed(name, records, error, attempts, reason, stop)
                    .await
                {
                    return Delivery::Cancelled;
                }
                given_up!(
                    warn,
                    "failed records put on the failure stream",
                    failure_stream = name
                );
            }
        }
        // Everything before them was processed: the checkpoint may pass them.
        checkpointer.delivered(last.position());
        match checkpointer.checkpoint_record(last).await {
            Ok(()) => {}
            Err(CheckpointError::Failed { message, .. }) => {
                tracing::warn!(shard_id = %self.shard_id, error = %message, "checkpoint past the records given up on failed; the next checkpoint covers them");
            }
            // Lost: the shard task ends on its own. Invalid cannot happen (delivered).
            Err(_) => {}
        }
        Delivery::Done
    }

    /// Puts `records` with their metadata on the failure stream `name`, retrying until Kinesis
    /// acknowledged each (an answer entry with a sequence number and no error code: a short
    /// answer or a blank entry is no acknowledgement); `false` when stopped first.
    async fn put_failed(
        &self,
        name: &str,
        records: &[KinesisClientRecord],
        error: &str,
        attempts: u32,
        reason: &str,
        stop: &CancellationToken,
    ) -> bool {
        let failed_at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut entries: Vec<PutRecordsRequestEntry> = records
            .iter()
            .map(|record| {
                let body = FailedRecord {
                    source_stream: self.stream,
                    application: self.application,
                    worker_id: self.worker_id,
                    shard_id: self.shard_id,
                    sequence_number: &record.sequence_number,
                    sub_sequence_number: record.sub_sequence_number,
                    aggregated: record.aggregated,
                    partition_key: &record.partition_key,
                    explicit_hash_key: record.explicit_hash_key.as_deref(),
                    approximate_arrival_timestamp: record
                        .approximate_arrival_timestamp
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    error,
                    reason,
                    attempts,
                    failed_at: &failed_at,
                    data_bytes: record.data.len(),
                    data: None,
                };
                PutRecordsRequestEntry::builder()
                    .partition_key(&*record.partition_key)
                    .data(Blob::new(
                        body.encode(&record.data, record.partition_key.len()),
                    ))
                    .build()
                    .expect("partition key and data are set")
            })
            .collect();
        let mut failures = Failures::default();
        while !entries.is_empty() {
            // At most 500 records and 5 MiB a call: failed records are small batches, mostly.
            let mut size = 0;
            let count = entries
                .iter()
                .take_while(|e| {
                    size += e.data.as_ref().len() + e.partition_key.as_deref().map_or(0, str::len);
                    size <= 4 * 1024 * 1024
                })
                .count()
                .clamp(1, 500);
            let call = self
                .kinesis
                .put_records()
                .stream_name(name)
                .set_records(Some(entries[..count].to_vec()))
                .send();
            let result = tokio::select! {
                _ = stop.cancelled() => return false,
                result = call => result,
            };
            let delay = match result {
                Ok(out) => {
                    let mut unstored = Vec::new();
                    let mut first_error = None;
                    let mut persistent = false;
                    let answers = put_entries(out.records(), count);
                    for (entry, answer) in entries.drain(..count).zip(answers) {
                        let error = match answer {
                            PutEntry::Stored { .. } => continue,
                            PutEntry::Failed { code, message } => {
                                persistent |= !is_retryable_code(code);
                                format!("{code}: {message}")
                            }
                            PutEntry::Unconfirmed(why) => why.to_string(),
                        };
                        first_error.get_or_insert(error);
                        unstored.push(entry);
                    }
                    let Some(first_error) = first_error else {
                        failures.recovered(self.shard_id);
                        continue;
                    };
                    let message = format!(
                        "PutRecords to failure stream {name}: {} of {count} records not stored ({first_error})",
                        unstored.len(),
                    );
                    unstored.append(&mut entries);
                    entries = unstored;
                    failures.failed(
                        self.shard_id,
                        if persistent {
                            Failure::Persistent(message)
                        } else {
                            Failure::Transient(message)
                        },
                    )
                }
                Err(err) => {
                    let kind = classify(&err);
                    let message =
                        format!("PutRecords to failure stream {name}: {}", error_text(&err));
                    failures.failed(
                        self.shard_id,
                        if kind.is_retryable() {
                            Failure::Transient(message)
                        } else {
                            Failure::Persistent(message)
                        },
                    )
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        true
    }
}

/// One record on the failure stream: JSON, its data in base64.
#[derive(Serialize)]
struct FailedRecord<'a> {
    source_stream: &'a str,
    application: &'a str,
    worker_id: &'a str,
    shard_id: &'a str,
    sequence_number: &'a str,
    sub_sequence_number: i64,
    aggregated: bool,
    partition_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    explicit_hash_key: Option<&'a str>,
    approximate_arrival_timestamp: Option<String>,
    error: &'a str,
    reason: &'a str,
    attempts: u32,
    failed_at: &'a str,
    data_bytes: usize,
    /// Base64; `null` when it would not fit in one Kinesis record.
    data: Option<String>,
}

impl FailedRecord<'_> {
    fn encode(mut self, data: &[u8], key_len: usize) -> Vec<u8> {
        let encoded_len = data.len().div_ceil(3) * 4;
        let without = serde_json::to_vec(&self).expect("serializable");
        if without.len() + encoded_len + key_len + 16 <= FAILURE_RECORD_MAX {
            self.data = Some(base64::engine::general_purpose::STANDARD.encode(data));
            return serde_json::to_vec(&self).expect("serializable");
        }
        // Too big even so (a huge error message, say): cut the message.
        if without.len() + key_len > FAILURE_RECORD_MAX {
            let keep = FAILURE_RECORD_MAX / 2;
            let cut: String = self.error.chars().take(keep / 4).collect();
            return serde_json::to_vec(&FailedRecord {
                error: &cut,
                ..self
            })
            .expect("serializable");
        }
        without
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed<'a>(error: &'a str) -> FailedRecord<'a> {
        FailedRecord {
            source_stream: "s",
            application: "app",
            worker_id: "w",
            shard_id: "shardId-000000000000",
            sequence_number: "49600",
            sub_sequence_number: 2,
            aggregated: true,
            partition_key: "k",
            explicit_hash_key: None,
            approximate_arrival_timestamp: None,
            error,
            reason: "failed 3 times",
            attempts: 3,
            failed_at: "2026-11-24T00:00:00.000Z",
            data_bytes: 0,
            data: None,
        }
    }

    #[test]
    fn a_failed_record_carries_its_data_unless_it_would_not_fit_in_one_kinesis_record() {
        let small = failed("boom").encode(b"payload", 1);
        let json: serde_json::Value = serde_json::from_slice(&small).unwrap();
        assert_eq!(json["data"], "cGF5bG9hZA==");
        assert_eq!(json["sequence_number"], "49600");
        assert_eq!(json["sub_sequence_number"], 2);
        assert_eq!(json["attempts"], 3);

        let big = vec![7u8; 900_000];
        let out = failed("boom").encode(&big, 1);
        assert!(out.len() < FAILURE_RECORD_MAX);
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(json["data"].is_null());

        let huge_error = "e".repeat(2_000_000);
        let out = failed(&huge_error).encode(b"x", 1);
        assert!(out.len() < FAILURE_RECORD_MAX);
    }
}
