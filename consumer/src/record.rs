//! Turning Kinesis records into logged `DataMessage`s.
//!
//! A Kinesis record may be a KPL aggregated record: it is expanded into its user records, each
//! with the record's sequence number and its own sub-sequence number (its index in the
//! aggregate). A record with the magic prefix but a bad digest or protobuf is an ordinary
//! record, as the format specifies. Unlike the Java KCL, a user record whose hash key falls
//! outside the shard's range is still delivered, with a warning, never dropped.

use std::sync::Arc;

use aws_sdk_kinesis::types::Record;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use common::kpl;
use common::message::DataMessage;

use crate::lease::table::ExtendedSequenceNumber;

/// One user record as a [`RecordProcessor`](crate::lease::RecordProcessor) receives it (the
/// Java KCL's `KinesisClientRecord`): a record put by an ordinary `PutRecord(s)`, or one member
/// of a KPL aggregated record, unpacked by the library.
///
/// Owned and cheap to clone: the data is [`Bytes`] moved out of the Kinesis record (never copied), and
/// the strings that members of one aggregate share (sequence number, keys) are shared, not
/// repeated, so a batch costs memory in proportion to the records' own size.
///
/// ```
/// use consumer::record::KinesisClientRecord;
///
/// # fn show(record: &KinesisClientRecord) {
/// // Where the record is, for a checkpoint or a log line.
/// let position = record.position();
/// println!(
///     "{} bytes, key {}, at {}/{}{}",
///     record.data.len(),
///     record.partition_key,
///     position.sequence_number,
///     position.sub_sequence_number,
///     if record.aggregated { " (from a KPL aggregate)" } else { "" },
/// );
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisClientRecord {
    /// The Kinesis record's sequence number (shared by every member of an aggregate).
    pub sequence_number: Arc<str>,
    /// The member's index in its KPL aggregate; 0 for an ordinary record.
    pub sub_sequence_number: i64,
    pub partition_key: Arc<str>,
    /// Only members of KPL aggregates carry one.
    pub explicit_hash_key: Option<Arc<str>>,
    /// When Kinesis accepted the record (the whole aggregate, for a member).
    pub approximate_arrival_timestamp: Option<DateTime<Utc>>,
    pub data: Bytes,
    /// Whether it came out of a KPL aggregated record.
    pub aggregated: bool,
}

impl KinesisClientRecord {
    /// `(sequence number, sub-sequence number)`: what a checkpoint records.
    pub fn position(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::new(&*self.sequence_number, self.sub_sequence_number)
    }

    /// The sub-sequence number as logs show it: `None` for an ordinary record.
    pub fn logged_sub_sequence_number(&self) -> Option<i64> {
        self.aggregated.then_some(self.sub_sequence_number)
    }

    /// A borrowed view, for [`log_user_record`].
    pub fn as_user_record(&self) -> UserRecord<'_> {
        UserRecord {
            sequence_number: &self.sequence_number,
            sub_sequence_number: self.aggregated.then_some(self.sub_sequence_number as u64),
            partition_key: &self.partition_key,
            explicit_hash_key: self.explicit_hash_key.as_deref(),
            data: &self.data,
        }
    }
}

/// Unpacks Kinesis records into user records, in order: each KPL aggregate into its members
/// (each with the record's sequence number and its own sub-sequence number), any other record
/// as itself. A member whose hash key falls outside `hash_range` (the shard's, inclusive) is
/// still delivered, with a warning naming the shard and the record (the Java KCL drops the
/// whole aggregate).
pub fn deaggregate(
    shard_id: &str,
    hash_range: Option<(u128, u128)>,
    records: Vec<Record>,
) -> Vec<KinesisClientRecord> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let arrival = record
            .approximate_arrival_timestamp
            .and_then(|t| DateTime::from_timestamp_millis(t.to_millis().ok()?));
        let sequence_number: Arc<str> = record.sequence_number.into();
        let data = record.data.into_inner();
        let Some(aggregate) = kpl::deaggregate(&data) else {
            out.push(KinesisClientRecord {
                sequence_number,
                sub_sequence_number: 0,
                partition_key: record.partition_key.unwrap_or_default().into(),
                explicit_hash_key: None,
                approximate_arrival_timestamp: arrival,
                data: Bytes::from(data),
                aggregated: false,
            });
            continue;
        };
        drop(data);
        let (partition_keys, explicit_hash_keys, members) = aggregate.into_parts();
        let partition_keys: Vec<Arc<str>> = partition_keys.into_iter().map(Into::into).collect();
        let explicit_hash_keys: Vec<Arc<str>> =
            explicit_hash_keys.into_iter().map(Into::into).collect();
        out.reserve(members.len());
        for (i, member) in members.into_iter().enumerate() {
            let user = KinesisClientRecord {
                sequence_number: sequence_number.clone(),
                sub_sequence_number: i as i64,
                partition_key: partition_keys[member.partition_key_index].clone(),
                explicit_hash_key: member
                    .explicit_hash_key_index
                    .map(|k| explicit_hash_keys[k].clone()),
                approximate_arrival_timestamp: arrival,
                data: Bytes::from(member.data),
                aggregated: true,
            };
            warn_if_outside_range(shard_id, hash_range, &user.as_user_record());
            out.push(user);
        }
    }
    out
}

/// Parses a lease's `(startingHashKey, endingHashKey)`.
pub fn parse_hash_range(range: Option<&(String, String)>) -> Option<(u128, u128)> {
    range.and_then(|(start, end)| Some((start.parse().ok()?, end.parse().ok()?)))
}

/// One user record, as the application sees it. It borrows from the Kinesis record (and its
/// decoded aggregate): nothing is copied per user record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRecord<'a> {
    pub sequence_number: &'a str,
    /// Index inside the aggregated record; `None` for an ordinary record.
    pub sub_sequence_number: Option<u64>,
    pub partition_key: &'a str,
    pub explicit_hash_key: Option<&'a str>,
    pub data: &'a [u8],
}

/// The user records one Kinesis record carries: see [`user_records`].
#[derive(Debug)]
pub enum UserRecords<'a> {
    Aggregated {
        record: &'a Record,
        aggregate: kpl::Aggregate,
    },
    Ordinary(&'a Record),
}

impl UserRecords<'_> {
    pub fn len(&self) -> usize {
        match self {
            UserRecords::Aggregated { aggregate, .. } => aggregate.len(),
            UserRecords::Ordinary(_) => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The user records in order.
    pub fn iter(&self) -> impl Iterator<Item = UserRecord<'_>> + '_ {
        let (aggregated, ordinary) = match self {
            UserRecords::Aggregated { record, aggregate } => (Some((*record, aggregate)), None),
            UserRecords::Ordinary(record) => (None, Some(*record)),
        };
        let members = aggregated.into_iter().flat_map(|(record, aggregate)| {
            aggregate
                .iter()
                .enumerate()
                .map(move |(i, sub)| UserRecord {
                    sequence_number: record.sequence_number(),
                    sub_sequence_number: Some(i as u64),
                    partition_key: sub.partition_key,
                    explicit_hash_key: sub.explicit_hash_key,
                    data: sub.data,
                })
        });
        let single = ordinary.into_iter().map(|record| UserRecord {
            sequence_number: record.sequence_number(),
            sub_sequence_number: None,
            partition_key: record.partition_key().unwrap_or_default(),
            explicit_hash_key: None,
            data: record.data().as_ref(),
        });
        members.chain(single)
    }
}

/// The user records a Kinesis record carries: the members of a KPL aggregate, or the record
/// itself when it is not one (see [`kpl::deaggregate`]).
pub fn user_records(record: &Record) -> UserRecords<'_> {
    match kpl::deaggregate(record.data().as_ref()) {
        Some(aggregate) => UserRecords::Aggregated { record, aggregate },
        None => UserRecords::Ordinary(record),
    }
}

/// Logs every user record of `record` (see [`log_user_record`]), warning about aggregated ones
/// whose hash key is outside `hash_range` (see [`warn_if_outside_range`]); returns how many were
/// valid.
pub fn log_record_in_range(
    shard_id: &str,
    hash_range: Option<(u128, u128)>,
    record: &Record,
) -> usize {
    let observer = crate::observe::observer();
    user_records(record)
        .iter()
        .filter(|user| {
            if let Some(o) = observer {
                o.metrics.processed(shard_id, 1, user.data.len() as u64);
            }
            warn_if_outside_range(shard_id, hash_range, user);
            log_user_record(shard_id, user)
        })
        .count()
}

/// Warns about an aggregated user record whose hash key is outside the shard's inclusive
/// `hash_range`. It is delivered all the same (the Java KCL drops the whole aggregate).
pub fn warn_if_outside_range(
    shard_id: &str,
    hash_range: Option<(u128, u128)>,
    user: &UserRecord<'_>,
) {
    let (Some((start, end)), Some(_)) = (hash_range, user.sub_sequence_number) else {
        return;
    };
    let hash = kpl::effective_hash_key(user.partition_key, user.explicit_hash_key);
    if hash < start || hash > end {
        tracing::warn!(
            shard_id = %shard_id,
            sequence_number = %user.sequence_number,
            sub_sequence_number = user.sub_sequence_number,
            partition_key = %user.partition_key,
            "user record hashes outside its shard's range; delivered anyway"
        );
    }
}

/// Logs one user record as `record received`, or as a `malformed record skipped` warning naming
/// the shard and sequence number when it is not a `DataMessage` (counted in
/// `kinesis_consumer_malformed_records_total`). Returns whether it was valid.
pub fn log_user_record(shard_id: &str, user: &UserRecord<'_>) -> bool {
    let observer = crate::observe::observer();
    match DataMessage::from_json(user.data) {
        Ok(message) => {
            tracing::info!(
                id = %message.id,
                created_on = %message.created_on.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                partition_key = %user.partition_key,
                shard_id = %shard_id,
                sequence_number = %user.sequence_number,
                sub_sequence_number = user.sub_sequence_number,
                "record received"
            );
            true
        }
        Err(err) => {
            if let Some(o) = observer {
                o.metrics.malformed_records.inc();
            }
            tracing::warn!(
                shard_id = %shard_id,
                sequence_number = %user.sequence_number,
                sub_sequence_number = user.sub_sequence_number,
                partition_key = %user.partition_key,
                bytes = user.data.len(),
                error = %err,
                "malformed record skipped"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::Blob;

    fn record(data: Vec<u8>) -> Record {
        Record::builder()
            .sequence_number("49600")
            .partition_key("outer")
            .data(Blob::new(data))
            .build()
            .unwrap()
    }

    #[test]
    fn an_aggregated_record_expands_with_sub_sequence_numbers() {
        let mut agg = kpl::Aggregator::new();
        agg.add("k1", None, b"first");
        agg.add("k2", Some("7"), b"second");
        let record = record(agg.finish());
        let expanded = user_records(&record);
        let users: Vec<UserRecord> = expanded.iter().collect();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].sub_sequence_number, Some(0));
        assert_eq!(users[0].partition_key, "k1");
        assert_eq!(users[1].sub_sequence_number, Some(1));
        assert_eq!(users[1].explicit_hash_key, Some("7"));
        assert!(users.iter().all(|u| u.sequence_number == "49600"));
    }

    #[test]
    fn an_ordinary_record_is_one_user_record() {
        let record = record(b"plain".to_vec());
        let expanded = user_records(&record);
        let users: Vec<UserRecord> = expanded.iter().collect();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].sub_sequence_number, None);
        assert_eq!(users[0].partition_key, "outer");
        assert_eq!(users[0].data, b"plain");
    }

    #[test]
    fn a_corrupt_aggregate_is_delivered_as_an_ordinary_record() {
        let mut agg = kpl::Aggregator::new();
        agg.add("k1", None, b"first");
        let mut bytes = agg.finish();
        bytes[6] ^= 0x55;
        let record = record(bytes.clone());
        let expanded = user_records(&record);
        let users: Vec<UserRecord> = expanded.iter().collect();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].data, bytes);
    }

    #[test]
    fn out_of_range_user_records_are_still_delivered() {
        let mut agg = kpl::Aggregator::new();
        for _ in 0..3 {
            agg.add("k", Some("5"), &DataMessage::new().to_json());
        }
        // The shard owns hash keys 100..=200; every user record says 5.
        assert_eq!(
            log_record_in_range("shard-1", Some((100, 200)), &record(agg.finish())),
            3
        );
    }
}
