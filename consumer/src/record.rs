//! Turning Kinesis records into logged `DataMessage`s.

use aws_sdk_kinesis::types::Record;
use common::message::DataMessage;

/// Logs one record as `record received`, or as a `malformed record skipped` warning naming the
/// shard and sequence number when it is not a `DataMessage`. Returns whether it was valid.
pub fn log_record(shard_id: &str, record: &Record) -> bool {
    let partition_key = record.partition_key().unwrap_or_default();
    match DataMessage::from_json(record.data().as_ref()) {
        Ok(message) => {
            tracing::info!(
                id = %message.id,
                created_on = %message.created_on.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                partition_key = %partition_key,
                shard_id = %shard_id,
                sequence_number = %record.sequence_number(),
                "record received"
            );
            true
        }
        Err(err) => {
            tracing::warn!(
                shard_id = %shard_id,
                sequence_number = %record.sequence_number(),
                partition_key = %partition_key,
                bytes = record.data().as_ref().len(),
                error = %err,
                "malformed record skipped"
            );
            false
        }
    }
}
