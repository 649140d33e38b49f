//! Turning Kinesis records into logged `DataMessage`s.
//!
//! A Kinesis record may be a KPL aggregated record: it is expanded into its user records, each
//! with the record's sequence number and its own sub-sequence number (its index in the
//! aggregate). A record with the magic prefix but a bad digest or protobuf is an ordinary
//! record, as the format specifies. Unlike the Java KCL, a user record whose hash key falls
//! outside the shard's range is still delivered, with a warning, never dropped.

use aws_sdk_kinesis::types::Record;
use common::kpl;
use common::message::DataMessage;

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
    user_records(record)
        .iter()
        .filter(|user| {
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
/// the shard and sequence number when it is not a `DataMessage`. Returns whether it was valid.
pub fn log_user_record(shard_id: &str, user: &UserRecord<'_>) -> bool {
    let observer = crate::observe::observer();
    if let Some(o) = observer {
        o.metrics.processed(shard_id, 1, user.data.len() as u64);
    }
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
