//! Turning Kinesis records into logged `DataMessage`s.
//!
//! A Kinesis record may be a KPL aggregated record: it is expanded into its user records, each
//! with the record's sequence number and its own sub-sequence number (its index in the
//! aggregate). A record with the magic prefix but a bad digest or protobuf is an ordinary
//! record, as the format specifies.
//!
//! An aggregate with a member whose hash key falls outside the range of the shard it was read
//! from is skipped whole, with a warning, as the Java KCL does: such an aggregate was built
//! from a stale shard map and landed on the wrong side of a split or merge, and the producers
//! that check where their aggregates land (this one, the KPL) never acknowledge its members
//! there but put them again, on the right shard. Delivering it would deliver those records
//! twice.

use std::sync::Arc;

use aws_sdk_kinesis::types::Record;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use kinesis_common::kpl;
use kinesis_common::message::DataMessage;

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
/// use kinesis_consumer::lease::KinesisClientRecord;
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
    /// The partition key it was written with.
    pub partition_key: Arc<str>,
    /// Only members of KPL aggregates carry one.
    pub explicit_hash_key: Option<Arc<str>>,
    /// When Kinesis accepted the record (the whole aggregate, for a member).
    pub approximate_arrival_timestamp: Option<DateTime<Utc>>,
    /// The user record's data.
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

    /// A borrowed view, for `log_user_record`.
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
/// as itself. An aggregate with a member whose hash key falls outside `hash_range` (the
/// shard's, inclusive) is skipped with a warning (see [`kpl::is_misplaced`]).
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
        if kpl::is_misplaced(hash_range, &aggregate) {
            warn_misplaced(shard_id, &sequence_number, aggregate.len());
            continue;
        }
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

/// Logs every user record of `record` (see [`log_user_record`]), skipping an aggregate with a
/// member outside `hash_range` (see [`kpl::is_misplaced`]); returns how many were valid.
pub fn log_record_in_range(
    shard_id: &str,
    hash_range: Option<(u128, u128)>,
    record: &Record,
) -> usize {
    let observer = crate::observe::observer();
    let users = user_records(record);
    if let UserRecords::Aggregated { aggregate, .. } = &users {
        if kpl::is_misplaced(hash_range, aggregate) {
            warn_misplaced(shard_id, record.sequence_number(), aggregate.len());
            return 0;
        }
    }
    users
        .iter()
        .filter(|user| {
            if let Some(o) = observer {
                o.metrics.processed(shard_id, 1, user.data.len() as u64);
            }
            log_user_record(shard_id, user)
        })
        .count()
}

fn warn_misplaced(shard_id: &str, sequence_number: &str, user_records: usize) {
    tracing::warn!(
        shard_id = %shard_id,
        sequence_number = %sequence_number,
        user_records,
        "aggregate with records outside its shard's range skipped"
    );
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

    /// An aggregate with one member outside the shard's range is skipped whole, in both
    /// forms (the producers that check where aggregates land put those members again);
    /// without a known range, or with every member inside it, it is delivered.
    #[test]
    fn an_aggregate_with_a_member_outside_the_shards_range_is_skipped_whole() {
        let mut agg = kpl::Aggregator::new();
        agg.add("k", Some("150"), &DataMessage::new().to_json());
        agg.add("k", Some("200"), &DataMessage::new().to_json());
        let inside = record(agg.finish());
        agg.add("k", Some("150"), &DataMessage::new().to_json());
        agg.add("k", Some("201"), &DataMessage::new().to_json());
        let misplaced = record(agg.finish());
        assert_ne!(inside, misplaced);
        // The shard owns hash keys 100..=200.
        let range = Some((100, 200));
        assert_eq!(log_record_in_range("shard-1", range, &inside), 2);
        assert_eq!(log_record_in_range("shard-1", range, &misplaced), 0);
        assert_eq!(log_record_in_range("shard-1", None, &misplaced), 2);
        let read = deaggregate("shard-1", range, vec![inside.clone(), misplaced.clone()]);
        let inside_users = user_records(&inside);
        let expected: Vec<&[u8]> = inside_users.iter().map(|u| u.data).collect();
        let read_data: Vec<&[u8]> = read.iter().map(|r| r.data.as_ref()).collect();
        assert_eq!(read_data, expected, "only the aggregate inside the range");
        assert_eq!(deaggregate("shard-1", None, vec![misplaced]).len(), 2);
    }
}
