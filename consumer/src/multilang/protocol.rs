//! The MultiLangDaemon protocol's messages, one JSON object a line, with the field names and
//! shapes the Java daemon (`amazon-kinesis-client-multilang`, Jackson with its defaults) writes
//! and reads: `action` first, absent values written as `null`, record data in base64.
//!
//! To the child: `initialize`, `processRecords`, `leaseLost`, `shardEnded`,
//! `shutdownRequested`, the legacy `shutdown` (with a `reason`), and the answer to each
//! `checkpoint` request. From the child: `checkpoint` requests and `status` replies.

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::lease::item::Checkpoint;
use crate::lease::KinesisClientRecord;

/// A message the daemon writes to the child's standard input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action")]
pub enum ToChild {
    #[serde(rename = "initialize", rename_all = "camelCase")]
    Initialize {
        shard_id: String,
        /// The checkpoint the shard resumes after: a sequence number, or the sentinel the
        /// lease holds (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`), as the Java daemon sends it.
        sequence_number: Option<String>,
        sub_sequence_number: Option<i64>,
    },
    #[serde(rename = "processRecords", rename_all = "camelCase")]
    ProcessRecords {
        records: Vec<JsonRecord>,
        millis_behind_latest: Option<i64>,
    },
    #[serde(rename = "leaseLost")]
    LeaseLost,
    #[serde(rename = "shardEnded")]
    ShardEnded,
    #[serde(rename = "shutdownRequested")]
    ShutdownRequested,
    /// Version 1 processors' ending (`TERMINATE` or `ZOMBIE`). The Java daemon 2.x and later
    /// no longer sends it (the client libraries turn `shardEnded` and `leaseLost` into it for
    /// their version 1 processors), and neither does this one; kept for completeness of the
    /// protocol's types.
    #[serde(rename = "shutdown")]
    #[cfg_attr(not(test), allow(dead_code))]
    Shutdown { reason: String },
    /// The answer to a checkpoint request: the position asked for, as asked, and on failure
    /// the simple class name of the Java exception the KCL would have thrown.
    #[serde(rename = "checkpoint", rename_all = "camelCase")]
    Checkpoint {
        sequence_number: Option<String>,
        sub_sequence_number: Option<i64>,
        error: Option<String>,
    },
}

impl ToChild {
    /// The `initialize` message for a shard resuming after `checkpoint`.
    pub fn initialize(shard_id: &str, checkpoint: &Checkpoint) -> Self {
        ToChild::Initialize {
            shard_id: shard_id.to_string(),
            sequence_number: Some(checkpoint.value().to_string()),
            sub_sequence_number: Some(checkpoint.sub_sequence_number()),
        }
    }

    pub fn process_records(
        records: &[KinesisClientRecord],
        millis_behind_latest: Option<i64>,
    ) -> Self {
        ToChild::ProcessRecords {
            records: records.iter().map(JsonRecord::from).collect(),
            millis_behind_latest,
        }
    }

    /// The `action` value, which the child's `status` must name.
    pub fn action(&self) -> &'static str {
        match self {
            ToChild::Initialize { .. } => "initialize",
            ToChild::ProcessRecords { .. } => "processRecords",
            ToChild::LeaseLost => "leaseLost",
            ToChild::ShardEnded => "shardEnded",
            ToChild::ShutdownRequested => "shutdownRequested",
            ToChild::Shutdown { .. } => "shutdown",
            ToChild::Checkpoint { .. } => "checkpoint",
        }
    }

    /// One line of the protocol, without its line end.
    pub fn to_line(&self) -> String {
        // Only strings, numbers and nulls: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One user record as the Java daemon's `JsonFriendlyRecord` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonRecord {
    /// Base64 (standard alphabet, padded), as Jackson writes a `byte[]`.
    pub data: String,
    pub partition_key: String,
    pub sequence_number: String,
    /// Milliseconds since the epoch.
    pub approximate_arrival_timestamp: Option<i64>,
    pub sub_sequence_number: i64,
    /// Always `record`.
    pub action: &'static str,
}

impl From<&KinesisClientRecord> for JsonRecord {
    fn from(r: &KinesisClientRecord) -> Self {
        JsonRecord {
            data: base64::engine::general_purpose::STANDARD.encode(&r.data),
            partition_key: r.partition_key.to_string(),
            sequence_number: r.sequence_number.to_string(),
            approximate_arrival_timestamp: r
                .approximate_arrival_timestamp
                .map(|t| t.timestamp_millis()),
            sub_sequence_number: r.sub_sequence_number,
            action: "record",
        }
    }
}

/// A message the child writes to its standard output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "action")]
pub enum FromChild {
    /// Checkpoint at this position; no sequence number: at the last record delivered.
    #[serde(rename = "checkpoint", rename_all = "camelCase")]
    Checkpoint {
        #[serde(default)]
        sequence_number: Option<String>,
        #[serde(default, deserialize_with = "number_or_numeric_string")]
        sub_sequence_number: Option<i64>,
    },
    /// The action named is done.
    #[serde(rename = "status", rename_all = "camelCase")]
    Status { response_for: String },
}

/// Why a line from the child is not a message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a protocol message ({reason}): {line}")]
pub struct NotProtocol {
    pub reason: String,
    /// The line, cut to 200 characters.
    pub line: String,
}

impl FromChild {
    /// Reads one line; `Ok(None)` for a blank line (kclpy writes an empty line before each
    /// message).
    pub fn parse(line: &str) -> Result<Option<FromChild>, NotProtocol> {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        serde_json::from_str(trimmed)
            .map(Some)
            .map_err(|err| NotProtocol {
                reason: err.to_string(),
                line: trimmed.chars().take(200).collect(),
            })
    }
}

/// Jackson reads a `Long` from a JSON number or from a string of digits.
fn number_or_numeric_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Number(n)) => Ok(Some(n)),
        Some(Raw::Text(s)) => s.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("subSequenceNumber {s:?} is not a number"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lease::item::ExtendedSequenceNumber;

    #[test]
    fn messages_to_the_child_have_the_java_daemons_fields() {
        let init = ToChild::initialize(
            "shardId-000000000001",
            &Checkpoint::At(ExtendedSequenceNumber::new("4961", 3)),
        );
        assert_eq!(
            init.to_line(),
            r#"{"action":"initialize","shardId":"shardId-000000000001","sequenceNumber":"4961","subSequenceNumber":3}"#
        );
        let fresh = ToChild::initialize("shardId-000000000001", &Checkpoint::TrimHorizon);
        assert_eq!(
            fresh.to_line(),
            r#"{"action":"initialize","shardId":"shardId-000000000001","sequenceNumber":"TRIM_HORIZON","subSequenceNumber":0}"#
        );
        let record = KinesisClientRecord {
            sequence_number: Arc::from("4962"),
            sub_sequence_number: 0,
            partition_key: Arc::from("key"),
            explicit_hash_key: None,
            approximate_arrival_timestamp: chrono::DateTime::from_timestamp_millis(
                1_700_000_000_123,
            ),
            data: bytes::Bytes::from_static(b"hello"),
            aggregated: false,
        };
        let batch = ToChild::process_records(std::slice::from_ref(&record), Some(250));
        assert_eq!(
            batch.to_line(),
            r#"{"action":"processRecords","records":[{"data":"aGVsbG8=","partitionKey":"key","sequenceNumber":"4962","approximateArrivalTimestamp":1700000000123,"subSequenceNumber":0,"action":"record"}],"millisBehindLatest":250}"#
        );
        let no_lag = ToChild::process_records(&[], None);
        assert_eq!(
            no_lag.to_line(),
            r#"{"action":"processRecords","records":[],"millisBehindLatest":null}"#
        );
        assert_eq!(ToChild::LeaseLost.to_line(), r#"{"action":"leaseLost"}"#);
        assert_eq!(ToChild::ShardEnded.to_line(), r#"{"action":"shardEnded"}"#);
        assert_eq!(
            ToChild::ShutdownRequested.to_line(),
            r#"{"action":"shutdownRequested"}"#
        );
        assert_eq!(
            ToChild::Shutdown {
                reason: "TERMINATE".into()
            }
            .to_line(),
            r#"{"action":"shutdown","reason":"TERMINATE"}"#
        );
    }

    #[test]
    fn checkpoint_answers_echo_the_request_and_name_the_java_exception() {
        let ok = ToChild::Checkpoint {
            sequence_number: Some("4962".into()),
            sub_sequence_number: None,
            error: None,
        };
        assert_eq!(
            ok.to_line(),
            r#"{"action":"checkpoint","sequenceNumber":"4962","subSequenceNumber":null,"error":null}"#
        );
        let failed = ToChild::Checkpoint {
            sequence_number: None,
            sub_sequence_number: None,
            error: Some("ShutdownException".into()),
        };
        assert_eq!(
            failed.to_line(),
            r#"{"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null,"error":"ShutdownException"}"#
        );
    }

    #[test]
    fn what_kclpy_and_the_nodejs_kcl_write_is_read() {
        // kclpy: an empty line, then the message.
        assert_eq!(FromChild::parse(""), Ok(None));
        assert_eq!(
            FromChild::parse(r#"{"action": "status", "responseFor": "initialize"}"#),
            Ok(Some(FromChild::Status {
                response_for: "initialize".into()
            }))
        );
        assert_eq!(
            FromChild::parse(
                r#"{"action": "checkpoint", "sequenceNumber": null, "subSequenceNumber": null}"#
            ),
            Ok(Some(FromChild::Checkpoint {
                sequence_number: None,
                sub_sequence_number: None
            }))
        );
        assert_eq!(
            FromChild::parse(
                r#"{"action": "checkpoint", "sequenceNumber": "4962", "subSequenceNumber": 2}"#
            ),
            Ok(Some(FromChild::Checkpoint {
                sequence_number: Some("4962".into()),
                sub_sequence_number: Some(2)
            }))
        );
        // aws-kcl (Node.js): no subSequenceNumber at all.
        assert_eq!(
            FromChild::parse(r#"{"action":"checkpoint","sequenceNumber":"4962"}"#),
            Ok(Some(FromChild::Checkpoint {
                sequence_number: Some("4962".into()),
                sub_sequence_number: None
            }))
        );
        assert_eq!(
            FromChild::parse(
                r#"{"action":"checkpoint","sequenceNumber":"1","subSequenceNumber":"7"}"#
            ),
            Ok(Some(FromChild::Checkpoint {
                sequence_number: Some("1".into()),
                sub_sequence_number: Some(7)
            }))
        );
    }

    #[test]
    fn anything_else_is_not_the_protocol() {
        for line in [
            "hello world",
            r#"{"action":"processRecords","records":[]}"#,
            r#"{"responseFor":"initialize"}"#,
            r#"{"action":"status"}"#,
            "[1,2]",
        ] {
            let err = FromChild::parse(line).unwrap_err();
            assert_eq!(err.line, line);
        }
    }
}
