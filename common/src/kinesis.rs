//! Kinesis helpers both services need: waiting for a stream at startup, listing its shards,
//! telling transient errors from permanent ones, and reading a `PutRecords` answer entry by
//! entry.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{PutRecordsResultEntry, Shard, StreamStatus};
use aws_sdk_kinesis::Client;
use tokio_util::sync::CancellationToken;

/// Why [`wait_for_stream`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum StreamWaitError {
    /// The stream was not `ACTIVE` in time.
    #[error("stream {stream:?} did not become ACTIVE within {waited:?} (last seen: {last}); create it or raise STREAM_WAIT_TIMEOUT_MS")]
    Timeout {
        /// The stream's name.
        stream: String,
        /// How long it was waited for.
        waited: Duration,
        /// Its last status, or the last error.
        last: String,
    },
    /// The cancellation token fired; the stream's name.
    #[error("stop requested while waiting for stream {0:?}")]
    Cancelled(String),
    /// An error that waiting cannot cure (no permission, say): the stream and the message.
    #[error("cannot describe stream {stream:?}: {message}")]
    Fatal {
        /// The stream's name.
        stream: String,
        /// The error.
        message: String,
    },
}

/// Waits until `stream` is ACTIVE (or UPDATING, which still serves reads and writes), polling
/// once a second and logging every five seconds, at most `timeout`.
pub async fn wait_for_stream(
    client: &Client,
    stream: &str,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(), StreamWaitError> {
    let started = Instant::now();
    let mut last_log = started;
    loop {
        let described = tokio::select! {
            _ = cancel.cancelled() => return Err(StreamWaitError::Cancelled(stream.to_string())),
            described = client.describe_stream_summary().stream_name(stream).send() => described,
        };
        let last = match described {
            Ok(out) => {
                let status = out
                    .stream_description_summary()
                    .map(|s| s.stream_status().clone());
                match status {
                    Some(StreamStatus::Active) | Some(StreamStatus::Updating) => return Ok(()),
                    Some(other) => format!("status {}", other.as_str()),
                    None => "no description".to_string(),
                }
            }
            Err(err) if error_code(&err) == Some("ResourceNotFoundException") => {
                "not found".to_string()
            }
            Err(err) if is_retryable(&err) => format!("transient error: {}", error_text(&err)),
            Err(err) => {
                return Err(StreamWaitError::Fatal {
                    stream: stream.to_string(),
                    message: error_text(&err),
                })
            }
        };
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(StreamWaitError::Timeout {
                stream: stream.to_string(),
                waited,
                last,
            });
        }
        if last_log.elapsed() >= Duration::from_secs(5) {
            tracing::info!(stream = stream, state = %last, waited_s = waited.as_secs(), "waiting for stream to become ACTIVE");
            last_log = Instant::now();
        }
        let pause = Duration::from_secs(1).min(timeout - waited);
        tokio::select! {
            _ = cancel.cancelled() => return Err(StreamWaitError::Cancelled(stream.to_string())),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Every shard of the stream (open and closed), following `ListShards` pagination.
pub async fn list_shards(client: &Client, stream: &str) -> anyhow::Result<Vec<Shard>> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // With a NextToken the stream name must not be sent again.
        let request = match token.take() {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("ListShards on {stream:?}: {}", error_text(&e)))?;
        shards.extend(out.shards().iter().cloned());
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(shards),
        }
    }
}

/// Whether the shard still takes writes (it has no ending sequence number).
pub fn is_open(shard: &Shard) -> bool {
    shard
        .sequence_number_range()
        .is_none_or(|r| r.ending_sequence_number().is_none())
}

/// The shard's inclusive hash key range as numbers.
pub fn hash_range(shard: &Shard) -> Option<(u128, u128)> {
    let range = shard.hash_key_range()?;
    Some((
        range.starting_hash_key().parse().ok()?,
        range.ending_hash_key().parse().ok()?,
    ))
}

/// The service error code, if the call reached the service.
pub fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

/// Whether an entry-level error code of a partial `PutRecords` (or any AWS error code) is one
/// that passes: throttling and internal failures. See [`crate::aws::ErrorKind`].
pub fn is_retryable_code(code: &str) -> bool {
    crate::aws::ErrorKind::from_code(code).is_some_and(crate::aws::ErrorKind::is_retryable)
}

/// True for throttling, server faults (by code, or by a 429/5xx status without a known code)
/// and transport failures (timeouts, connection resets). See [`crate::aws::classify`].
pub fn is_retryable<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    crate::aws::classify(err).is_retryable()
}

/// What a `PutRecords` answer says about one record sent, by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutEntry<'a> {
    /// Stored: the entry names a shard and a sequence number, and no error code.
    Stored {
        /// The shard the record was stored in.
        shard_id: &'a str,
        /// Its sequence number.
        sequence_number: &'a str,
    },
    /// Refused with this error code (see [`is_retryable_code`]).
    Failed {
        /// The error code (`ProvisionedThroughputExceededException`, say).
        code: &'a str,
        /// The error message.
        message: &'a str,
    },
    /// The answer does not say: it has another number of entries than records were sent (so
    /// no entry can be matched to a record), or this entry has neither an error code nor a
    /// shard id and sequence number. Kinesis may or may not have stored the record; putting it
    /// again is the only course that loses nothing.
    Unconfirmed(&'static str),
}

/// Checks every entry of a `PutRecords` answer (`records`) against the `sent` records of the
/// request: one [`PutEntry`] per record sent, in the request's order. Only [`PutEntry::Stored`]
/// may count as stored.
pub fn put_entries(records: &[PutRecordsResultEntry], sent: usize) -> Vec<PutEntry<'_>> {
    if records.len() != sent {
        return vec![
            PutEntry::Unconfirmed(
                "PutRecords answered another number of entries than records were sent"
            );
            sent
        ];
    }
    records
        .iter()
        .map(|entry| {
            match (
                entry.error_code(),
                entry.shard_id(),
                entry.sequence_number(),
            ) {
                (Some(code), _, _) => PutEntry::Failed {
                    code,
                    message: entry.error_message().unwrap_or("no message"),
                },
                (None, Some(shard_id), Some(sequence_number)) => PutEntry::Stored {
                    shard_id,
                    sequence_number,
                },
                (None, _, _) => PutEntry::Unconfirmed(
                    "PutRecords answer entry has neither an error code nor a sequence number",
                ),
            }
        })
        .collect()
}

/// One line describing an SDK error: its code and message, or the transport problem.
pub fn error_text<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    err: &SdkError<E, R>,
) -> String {
    match err {
        SdkError::ServiceError(e) => format!(
            "{}: {}",
            e.err().code().unwrap_or("UnknownError"),
            e.err().message().unwrap_or("no message")
        ),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

/// Whether Kinesis accepts this stream name: 1-128 characters of `a-z A-Z 0-9 _ . -`.
pub fn is_valid_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_retryable_and_validation_is_not() {
        assert!(is_retryable_code("ProvisionedThroughputExceededException"));
        assert!(is_retryable_code("InternalFailure"));
        assert!(!is_retryable_code("ValidationException"));
        assert!(!is_retryable_code("ResourceNotFoundException"));
        assert!(!is_retryable_code("AccessDeniedException"));
    }

    #[test]
    fn only_an_answer_entry_with_a_sequence_number_and_no_error_counts_as_stored() {
        let stored = |seq: &str| {
            PutRecordsResultEntry::builder()
                .shard_id("shardId-000000000000")
                .sequence_number(seq)
                .build()
        };
        let failed = PutRecordsResultEntry::builder()
            .error_code("ProvisionedThroughputExceededException")
            .error_message("slow down")
            .build();
        let blank = PutRecordsResultEntry::builder().build();
        let no_shard = PutRecordsResultEntry::builder()
            .sequence_number("3")
            .build();
        let answer = [stored("1"), failed, blank, no_shard];
        let checked = put_entries(&answer, 4);
        assert_eq!(
            checked[0],
            PutEntry::Stored {
                shard_id: "shardId-000000000000",
                sequence_number: "1"
            }
        );
        assert_eq!(
            checked[1],
            PutEntry::Failed {
                code: "ProvisionedThroughputExceededException",
                message: "slow down"
            }
        );
        assert!(matches!(checked[2], PutEntry::Unconfirmed(_)));
        assert!(matches!(checked[3], PutEntry::Unconfirmed(_)));

        // A short (or long) answer cannot be matched to the records: none counts as stored.
        for answer in [
            vec![stored("1")],
            vec![stored("1"), stored("2"), stored("3")],
        ] {
            let checked = put_entries(&answer, 2);
            assert_eq!(checked.len(), 2);
            assert!(checked
                .iter()
                .all(|e| matches!(e, PutEntry::Unconfirmed(_))));
        }
        assert!(put_entries(&[], 0).is_empty());
    }
}
