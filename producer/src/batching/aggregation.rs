//! KPL aggregation: one open aggregate per predicted shard, sealed into an [`Entry`] when the
//! next record would not fit, or when the event loop says so (linger over, closing).
//!
//! An aggregate routes by its first member's hash key (as its explicit hash key), so it lands
//! on the shard all its members were grouped under, as long as the shard map they were grouped
//! by is current.

use std::sync::Arc;

use bytes::Bytes;
use kinesis_common::kpl::Aggregator;
use rustc_hash::FxHashMap;
use tokio::time::Instant;

use super::entry::{Entry, Pending};

/// Most members a new aggregate makes room for in advance: about 100 KB a shard, whatever
/// the shard's rate now.
const MAX_ROOM: usize = 512;

/// The open aggregates, by the shard their members are predicted to land on.
pub(super) struct Aggregates {
    /// Fx hashing: one lookup per user record, by a shard id of the shard map.
    open: FxHashMap<Arc<str>, OpenAggregate>,
    /// Aggregators emptied by a seal, for the next aggregates: their buffer and key tables are
    /// allocated already (at most one per shard aggregated to at once).
    spare: Vec<Aggregator>,
    max_bytes: usize,
    /// Members of the last aggregate sealed full, at most [`MAX_ROOM`]: a new aggregate's lists
    /// start with room for as many (grown one push at a time, records of about 180 bytes each
    /// were copied over and over).
    last_members: usize,
}

/// An aggregate being filled for one shard.
struct OpenAggregate {
    aggregator: Aggregator,
    members: Vec<Pending>,
    /// Where each member's data starts in the aggregate.
    offsets: Vec<usize>,
}

impl Aggregates {
    /// Aggregates of at most `max_bytes` (a single record larger than that goes alone).
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            open: FxHashMap::default(),
            spare: Vec::new(),
            max_bytes,
            last_members: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Adds a record to `shard`'s aggregate; returns that shard's aggregate sealed first when
    /// the record would not have fitted in it.
    pub(super) fn add(&mut self, shard: Arc<str>, p: Pending) -> Option<Entry> {
        let (spare, max_bytes, room) = (&mut self.spare, self.max_bytes, self.last_members);
        let new_aggregate = |spare: &mut Vec<Aggregator>| OpenAggregate {
            aggregator: spare
                .pop()
                .unwrap_or_else(|| Aggregator::with_capacity(max_bytes)),
            members: Vec::with_capacity(room),
            offsets: Vec::with_capacity(room),
        };
        let open = match self.open.get_mut(&shard) {
            Some(open) => open,
            None => self
                .open
                .entry(shard.clone())
                .or_insert_with(|| new_aggregate(spare)),
        };
        let (key, ehk) = (
            p.record.partition_key.as_str(),
            p.record.explicit_hash_key.as_deref(),
        );
        if let Some(at) = open
            .aggregator
            .add_within(max_bytes, key, ehk, &p.record.data)
        {
            open.offsets.push(at);
            open.members.push(p);
            return None;
        }
        // Full: seal it, and start the shard's next aggregate with this record.
        let full = std::mem::replace(open, new_aggregate(spare));
        open.offsets
            .push(open.aggregator.add(key, ehk, &p.record.data));
        open.members.push(p);
        self.last_members = full.members.len().min(MAX_ROOM);
        let (entry, aggregator) = full.seal(shard);
        self.spare.push(aggregator);
        entry
    }

    /// Seals every open aggregate.
    pub(super) fn seal_all(&mut self) -> impl Iterator<Item = Entry> + '_ {
        let spare = &mut self.spare;
        self.open.drain().filter_map(|(shard, open)| {
            let (entry, aggregator) = open.seal(shard);
            spare.push(aggregator);
            entry
        })
    }

    /// Drops every open aggregate and returns its records, in order per shard (to be grouped
    /// again by a new shard map).
    pub(super) fn take_members(&mut self) -> impl Iterator<Item = Pending> + '_ {
        let spare = &mut self.spare;
        self.open.drain().flat_map(|(_, mut open)| {
            open.aggregator.clear();
            spare.push(open.aggregator);
            open.members
        })
    }
}

impl OpenAggregate {
    /// The Kinesis record to put: the aggregate, or its only member as an ordinary record
    /// (as the KPL does). Each member's data becomes a slice of the aggregate, so the buffer
    /// holds the data once (the byte bound counts it once), and the aggregate's allocation is
    /// no more than a quarter larger than the aggregate.
    /// The aggregator comes back emptied, for another aggregate.
    fn seal(mut self, shard: Arc<str>) -> (Option<Entry>, Aggregator) {
        if self.members.len() <= 1 {
            self.aggregator.clear();
            let entry = self.members.pop().map(|p| Entry::single(p, Some(shard)));
            return (entry, self.aggregator);
        }
        // The digest is the call's to add (see `Entry::data`).
        let encoded = self.aggregator.finish_undigested();
        let data = if encoded.capacity() > encoded.len() + encoded.len() / 4 {
            // The encoder's buffer grew by doubling: keep an exact copy instead.
            Bytes::copy_from_slice(&encoded)
        } else {
            Bytes::from(encoded)
        };
        for (p, at) in self.members.iter_mut().zip(&self.offsets) {
            p.record.data = data.slice(*at..*at + p.record.data.len());
        }
        let first = &self.members[0];
        let entry = Entry {
            partition_key: first.record.partition_key.clone(),
            // Route by the first member's hash key: the shard all members map to.
            explicit_hash_key: Some(first.hash_key().to_string()),
            data,
            deadline: self
                .members
                .iter()
                .map(|p| p.deadline)
                .min()
                .unwrap_or_else(Instant::now),
            members: self.members,
            predicted_shard: Some(shard),
            aggregated: true,
            attempts: 0,
            last_error: "".into(),
        };
        (Some(entry), self.aggregator)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::entry::test_pending;
    use super::super::record::ProducerRecord;
    use super::*;

    fn pending(key: &str, len: usize, deadline: Instant) -> Pending {
        test_pending(ProducerRecord::new(key, vec![b'x'; len]), deadline).0
    }

    #[test]
    fn an_aggregate_routes_by_its_first_member_and_lives_as_long_as_its_first_deadline() {
        let now = Instant::now();
        let mut aggregates = Aggregates::new(51_200);
        assert!(aggregates
            .add("s".into(), pending("a", 10, now + Duration::from_secs(9)))
            .is_none());
        assert!(aggregates
            .add("s".into(), pending("b", 10, now + Duration::from_secs(5)))
            .is_none());
        let sealed: Vec<Entry> = aggregates.seal_all().collect();
        assert_eq!(sealed.len(), 1);
        let entry = &sealed[0];
        assert!(entry.aggregated);
        assert_eq!(entry.members.len(), 2);
        assert_eq!(entry.partition_key, "a");
        assert_eq!(
            entry.explicit_hash_key,
            Some(kinesis_common::kpl::hash_key("a").to_string())
        );
        assert_eq!(entry.predicted_shard.as_deref(), Some("s"));
        assert_eq!(entry.deadline, now + Duration::from_secs(5));
        let mut data = entry.data.to_vec();
        let [digest] = kinesis_common::kpl::digests(&[&data]);
        data.extend_from_slice(&digest);
        let decoded = kinesis_common::kpl::deaggregate(&data).expect("an aggregate");
        let keys: Vec<&str> = decoded.iter().map(|m| m.partition_key).collect();
        assert_eq!(keys, ["a", "b"]);
        // The members' data is now the aggregate's: held once, not twice.
        let aggregate = entry.data.as_ptr_range();
        for p in &entry.members {
            assert_eq!(p.record.data, vec![b'x'; 10]);
            assert!(aggregate.contains(&p.record.data.as_ptr()));
        }
        assert!(aggregates.is_empty());
    }

    #[test]
    fn a_record_that_would_not_fit_seals_the_aggregate_and_a_lone_record_goes_as_it_is() {
        let later = Instant::now() + Duration::from_secs(30);
        let mut aggregates = Aggregates::new(1024);
        assert!(aggregates
            .add("s".into(), pending("a", 400, later))
            .is_none());
        assert!(aggregates
            .add("s".into(), pending("b", 400, later))
            .is_none());
        let sealed = aggregates
            .add("s".into(), pending("c", 400, later))
            .expect("the third would pass 1024 bytes");
        assert!(sealed.aggregated && sealed.members.len() == 2);
        assert!(sealed.data_len() <= 1024);
        let alone: Vec<Entry> = aggregates.seal_all().collect();
        assert_eq!(alone.len(), 1);
        assert!(
            !alone[0].aggregated,
            "one record is sent as an ordinary record"
        );
        assert_eq!(alone[0].partition_key, "c");
        assert_eq!(alone[0].explicit_hash_key, None);
    }
}
