//! The stream's shard map: which open shard a hash key lands on, and the range of every listed
//! shard, to check where an aggregate landed.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_kinesis::Client;

use super::record::ProducerRecord;

/// Lists the stream's shards into a map; `None` (with a warning) when the listing failed.
pub(super) async fn list(client: &Client, stream: &str) -> Option<ShardMap> {
    match kinesis_common::kinesis::list_shards(client, stream).await {
        Ok(shards) => Some(ShardMap::from_shards(&shards)),
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "shard map refresh failed; until it works records go out unaggregated and not rate limited");
            None
        }
    }
}

/// The open shards' hash key ranges, to group user records by the shard they will land on,
/// and every listed shard's range (closed ones too), to check where an aggregate landed.
#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    /// (starting hash key, ending hash key, shard id) of the open shards, sorted by start.
    ranges: Vec<(u128, u128, Arc<str>)>,
    /// Every listed shard's range, open or closed: a shard an aggregate landed on may have
    /// been split since.
    listed: HashMap<String, (u128, u128)>,
}

impl ShardMap {
    pub fn from_shards(shards: &[aws_sdk_kinesis::types::Shard]) -> Self {
        let listed: HashMap<String, (u128, u128)> = shards
            .iter()
            .filter_map(|s| {
                Some((
                    s.shard_id().to_string(),
                    kinesis_common::kinesis::hash_range(s)?,
                ))
            })
            .collect();
        let mut ranges: Vec<(u128, u128, Arc<str>)> = shards
            .iter()
            .filter(|s| kinesis_common::kinesis::is_open(s))
            .filter_map(|s| {
                let (start, end) = listed.get(s.shard_id())?;
                Some((*start, *end, s.shard_id().into()))
            })
            .collect();
        ranges.sort();
        Self { ranges, listed }
    }

    /// The open shards' ids, by starting hash key.
    pub fn open_shards(&self) -> impl Iterator<Item = &str> {
        self.ranges.iter().map(|(_, _, id)| &**id)
    }

    /// Whether `shard_id` is an open shard of the map.
    pub fn is_open(&self, shard_id: &str) -> bool {
        self.ranges.iter().any(|(_, _, id)| &**id == shard_id)
    }

    /// Whether the listed shard `shard_id`'s range holds `hash`; `None` for a shard not listed.
    pub fn holds(&self, shard_id: &str, hash: u128) -> Option<bool> {
        let (start, end) = self.listed.get(shard_id)?;
        Some((*start..=*end).contains(&hash))
    }

    /// The shard whose range holds `hash`.
    #[cfg(test)]
    fn shard_for_hash(&self, hash: u128) -> Option<&str> {
        self.shard_id_for_hash(hash).map(|id| &**id)
    }

    /// The open shard `record` lands on.
    #[cfg(test)]
    fn shard_for(&self, record: &ProducerRecord) -> Option<&str> {
        self.shard_for_hash(kinesis_common::kpl::effective_hash_key(
            &record.partition_key,
            record.explicit_hash_key.as_deref(),
        ))
    }

    /// [`ShardMap::shard_for`], as the map's own shared id (for the records that carry it).
    pub(super) fn shared_shard_for(&self, record: &ProducerRecord) -> Option<Arc<str>> {
        let hash = kinesis_common::kpl::effective_hash_key(
            &record.partition_key,
            record.explicit_hash_key.as_deref(),
        );
        self.shard_id_for_hash(hash).cloned()
    }

    /// The shard whose range holds `hash`, as the map's own shared id.
    pub(super) fn shard_id_for_hash(&self, hash: u128) -> Option<&Arc<str>> {
        let i = self.ranges.partition_point(|(start, _, _)| *start <= hash);
        let (_, end, shard) = self.ranges.get(i.checked_sub(1)?)?;
        (hash <= *end).then_some(shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, start: u128, end: u128, closed: bool) -> aws_sdk_kinesis::types::Shard {
        let mut range =
            aws_sdk_kinesis::types::SequenceNumberRange::builder().starting_sequence_number("1");
        if closed {
            range = range.ending_sequence_number("2");
        }
        aws_sdk_kinesis::types::Shard::builder()
            .shard_id(id)
            .hash_key_range(
                aws_sdk_kinesis::types::HashKeyRange::builder()
                    .starting_hash_key(start.to_string())
                    .ending_hash_key(end.to_string())
                    .build()
                    .unwrap(),
            )
            .sequence_number_range(range.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn shard_map_finds_the_open_shard_owning_a_hash_key() {
        let half = u128::MAX / 2;
        let map = ShardMap::from_shards(&[
            shard("closed-parent", 0, u128::MAX, true),
            shard("low", 0, half, false),
            shard("high", half + 1, u128::MAX, false),
        ]);
        assert_eq!(map.shard_for_hash(0), Some("low"));
        assert_eq!(map.shard_for_hash(half), Some("low"));
        assert_eq!(map.shard_for_hash(half + 1), Some("high"));
        assert_eq!(map.shard_for_hash(u128::MAX), Some("high"));
        let mut record = ProducerRecord::new("ignored", vec![1u8]);
        record.explicit_hash_key = Some("5".into());
        assert_eq!(map.shard_for(&record), Some("low"));
        assert_eq!(ShardMap::default().shard_for_hash(1), None);
        // Where an aggregate landed is checked against every listed shard, closed ones too.
        assert!(!map.is_open("closed-parent") && map.is_open("low"));
        assert_eq!(map.holds("closed-parent", half + 1), Some(true));
        assert_eq!(map.holds("low", half + 1), Some(false));
        assert_eq!(map.holds("high", half + 1), Some(true));
        assert_eq!(map.holds("unknown", 0), None);
    }
}
