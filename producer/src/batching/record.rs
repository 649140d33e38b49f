//! What a caller hands over and gets back: a [`ProducerRecord`], then an [`Ack`] or a
//! [`SendError`]; and the check a record passes when it is handed over.

use std::sync::Arc;

use bytes::Bytes;

use super::MAX_RECORD_BYTES;

/// Bytes of `max_buffered_bytes` each record takes beyond its own: what the producer keeps per
/// record (its place in the buffer, its receipt, its entry in a call or a retry) is about a
/// kilobyte, as much as a hundred small records' data, so the byte bound counts it too
/// (`producer/tests/memory.rs`).
pub const RECORD_OVERHEAD_BYTES: usize = 1024;

/// What the caller wants on the stream (the KPL's `UserRecord`; named apart from the
/// consumer's `UserRecord`, a view of what was read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Decides the shard (its MD5 hash), unless `explicit_hash_key` is set; 1-256 characters.
    pub partition_key: String,
    /// A decimal hash key (0 to 2^128 - 1) that picks the shard instead of the partition key.
    pub explicit_hash_key: Option<String>,
    /// The record's data.
    pub data: Bytes,
}

impl ProducerRecord {
    /// A record with this partition key and data, and no explicit hash key.
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

    /// Bytes the record takes of `max_buffered_bytes`: its size and
    /// `RECORD_OVERHEAD_BYTES`.
    pub fn buffered_size(&self) -> usize {
        self.size() + RECORD_OVERHEAD_BYTES
    }
}

/// Kinesis's acknowledgement of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Shared by every record of one aggregate, hence reference-counted.
    pub shard_id: Arc<str>,
    /// Its sequence number.
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
    /// Not a valid record (a key or size out of bounds); never sent.
    #[error("record rejected before sending: {0}")]
    Invalid(String),
    /// Still failing when its time to live ran out.
    #[error("gave up after {attempts} attempts within the record time to live; last error: {last_error}")]
    Expired {
        /// `PutRecords` calls it took.
        attempts: u32,
        /// The last failure.
        last_error: String,
    },
    /// Refused by Kinesis with an error that retrying cannot cure.
    #[error("Kinesis rejected the record: {0}")]
    Rejected(String),
    /// The producer stopped first.
    #[error("the producer stopped before the record was acknowledged")]
    Stopped,
}

impl SendError {
    /// A short, bounded code for metrics: the AWS error code behind the failure when it is one
    /// [`kinesis_common::aws::ErrorKind`] knows, else the kind of failure.
    pub fn code(&self) -> &str {
        let known = |text: &str| {
            let code = text.split(':').next().unwrap_or_default().trim();
            kinesis_common::aws::ErrorKind::from_code(code).map(|_| code.len())
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

/// What Kinesis would refuse (so that one bad record never fails a whole call), and what the
/// buffer could never hold (so that it never waits forever).
pub(super) fn validate(
    record: &ProducerRecord,
    max_buffered_bytes: usize,
) -> Result<(), SendError> {
    if !kinesis_common::kpl::is_valid_partition_key(&record.partition_key) {
        return Err(SendError::Invalid(format!(
            "partition key must have 1 to 256 characters, has {}",
            record.partition_key.chars().count()
        )));
    }
    if let Some(key) = &record.explicit_hash_key {
        if !kinesis_common::kpl::is_valid_explicit_hash_key(key) {
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
    if record.buffered_size() > max_buffered_bytes {
        return Err(SendError::Invalid(format!(
            "record takes {} bytes of the buffer ({} with its partition key, and \
             {RECORD_OVERHEAD_BYTES} of bookkeeping), more than the whole buffer \
             (max_buffered_bytes {max_buffered_bytes})",
            record.buffered_size(),
            record.size()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_kinesis_or_the_buffer_would_refuse_are_invalid() {
        let check = |r: ProducerRecord| validate(&r, 1 << 20);
        let invalid = |r: ProducerRecord| matches!(check(r), Err(SendError::Invalid(_)));
        assert!(check(ProducerRecord::new("k", vec![0u8; 10])).is_ok());
        assert!(invalid(ProducerRecord::new("", vec![1u8])));
        assert!(invalid(ProducerRecord::new("k".repeat(257), vec![1u8])));
        assert!(invalid(ProducerRecord::new(
            "k",
            vec![0u8; MAX_RECORD_BYTES]
        )));
        let with_hash_key = |key: &str| ProducerRecord {
            explicit_hash_key: Some(key.to_string()),
            ..ProducerRecord::new("k", vec![1u8])
        };
        assert!(check(with_hash_key("0")).is_ok());
        assert!(check(with_hash_key("340282366920938463463374607431768211455")).is_ok());
        for bad in ["", "abc", "0123", "340282366920938463463374607431768211456"] {
            match check(with_hash_key(bad)) {
                Err(SendError::Invalid(why)) => assert!(why.contains("explicit hash key"), "{why}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let bound = 100 + RECORD_OVERHEAD_BYTES;
        assert!(validate(&ProducerRecord::new("k", vec![0u8; 99]), bound).is_ok());
        assert!(matches!(
            validate(&ProducerRecord::new("k", vec![0u8; 100]), bound),
            Err(SendError::Invalid(_))
        ));
    }
}
