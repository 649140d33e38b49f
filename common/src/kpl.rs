//! The KPL aggregation format (awslabs/kinesis-aggregation, `aggregation-format.md`).
//!
//! One Kinesis record carries many user records:
//! `F3 89 9A C2` ++ protobuf `AggregatedRecord` ++ MD5(protobuf bytes).
//! A record without the magic prefix, or whose digest or protobuf does not check, is an
//! ordinary record ([`deaggregate`] returns `None`), as the format specifies; so is one whose
//! keys Kinesis itself would refuse.
//!
//! Partition keys map to shards by the MD5 of the key read as a big-endian 128-bit number
//! ([`hash_key`]), unless an explicit hash key (a decimal 128-bit number) is given.
//!
//! ```
//! use kinesis_common::kpl::{deaggregate, Aggregator};
//!
//! let mut aggregator = Aggregator::new();
//! aggregator.add("user-1", None, b"first");
//! aggregator.add("user-2", None, b"second");
//! let record = aggregator.finish(); // the data of one Kinesis record
//!
//! let aggregate = deaggregate(&record).expect("an aggregated record");
//! let members: Vec<_> = aggregate.iter().map(|m| (m.partition_key, m.data)).collect();
//! assert_eq!(members, [("user-1", &b"first"[..]), ("user-2", &b"second"[..])]);
//! assert!(deaggregate(b"an ordinary record").is_none());
//! ```

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

/// The four bytes every aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Bytes of the MD5 digest that ends an aggregate.
pub const DIGEST_LEN: usize = 16;

/// protobuf messages of the format (proto2; field numbers as in `kpl_agg.proto`).
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AggregatedRecord {
        #[prost(string, repeated, tag = "1")]
        pub partition_key_table: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub explicit_hash_key_table: Vec<String>,
        #[prost(message, repeated, tag = "3")]
        pub records: Vec<Record>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Record {
        #[prost(uint64, required, tag = "1")]
        pub partition_key_index: u64,
        #[prost(uint64, optional, tag = "2")]
        pub explicit_hash_key_index: Option<u64>,
        #[prost(bytes = "vec", required, tag = "3")]
        pub data: Vec<u8>,
        #[prost(message, repeated, tag = "4")]
        pub tags: Vec<Tag>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tag {
        #[prost(string, required, tag = "1")]
        pub key: String,
        #[prost(string, optional, tag = "2")]
        pub value: Option<String>,
    }
}

/// The 128-bit hash key Kinesis derives from a partition key.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(md5_many::md5(partition_key.as_bytes()))
}

/// The hash key a user record routes by: its explicit hash key if valid, else its key's MD5.
pub fn effective_hash_key(partition_key: &str, explicit_hash_key: Option<&str>) -> u128 {
    explicit_hash_key
        .and_then(|k| k.parse::<u128>().ok())
        .unwrap_or_else(|| hash_key(partition_key))
}

/// [`effective_hash_key`] of many records, `(partition key, explicit hash key)` each, in order:
/// the partition keys that route are hashed together (in SIMD lanes where the CPU has them).
pub fn effective_hash_keys(records: &[(&str, Option<&str>)]) -> Vec<u128> {
    let explicit: Vec<Option<u128>> = records
        .iter()
        .map(|(_, ehk)| ehk.and_then(|k| k.parse::<u128>().ok()))
        .collect();
    let keys: Vec<&[u8]> = records
        .iter()
        .zip(&explicit)
        .filter(|(_, e)| e.is_none())
        .map(|((key, _), _)| key.as_bytes())
        .collect();
    let mut digests = vec![[0; 16]; keys.len()];
    md5_many::md5_many(&keys, &mut digests);
    let mut digests = digests.into_iter();
    explicit
        .into_iter()
        .map(|e| e.unwrap_or_else(|| u128::from_be_bytes(digests.next().unwrap_or_default())))
        .collect()
}

/// Whether some member of `aggregate` hashes outside the shard's inclusive `hash_range` (never,
/// when the range is unknown). Kinesis stores an aggregate by one hash key, so such an
/// aggregate was built from a stale shard map: the Java KCL drops it whole, and the producers
/// that check where their aggregates land (this workspace's, the KPL) put its members again.
pub fn is_misplaced(hash_range: Option<(u128, u128)>, aggregate: &Aggregate) -> bool {
    let Some((start, end)) = hash_range else {
        return false;
    };
    aggregate.iter().any(|m| {
        let hash = effective_hash_key(m.partition_key, m.explicit_hash_key);
        hash < start || hash > end
    })
}

/// A decoded aggregated record: the key tables once, and the members pointing into them.
///
/// Members borrow their keys from the tables ([`Aggregate::iter`]) rather than copying them, so
/// memory stays proportional to the record's size even when thousands of members share one
/// long key.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    partition_keys: Vec<String>,
    explicit_hash_keys: Vec<String>,
    records: Vec<pb::Record>,
}

/// One user record of an [`Aggregate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubRecord<'a> {
    /// The member's partition key.
    pub partition_key: &'a str,
    /// Its explicit hash key, when the producer set one.
    pub explicit_hash_key: Option<&'a str>,
    /// Its data.
    pub data: &'a [u8],
}

impl Aggregate {
    /// Number of user records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it has no user records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The user records, in order. Indexes were checked by [`deaggregate`].
    pub fn iter(&self) -> impl ExactSizeIterator<Item = SubRecord<'_>> + '_ {
        self.records.iter().map(|r| SubRecord {
            partition_key: &self.partition_keys[r.partition_key_index as usize],
            explicit_hash_key: r
                .explicit_hash_key_index
                .map(|i| self.explicit_hash_keys[i as usize].as_str()),
            data: &r.data,
        })
    }
}

/// One member of an [`Aggregate`] taken apart by [`Aggregate::into_parts`]: indexes into the
/// key tables, and its data, moved rather than copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Index into the aggregate's partition key table.
    pub partition_key_index: usize,
    /// Index into its explicit hash key table, when the member has one.
    pub explicit_hash_key_index: Option<usize>,
    /// The member's data.
    pub data: Vec<u8>,
}

impl Aggregate {
    /// The partition key table, the explicit hash key table and the members, in order, without
    /// copying any member's data. Indexes were checked by [`deaggregate`].
    pub fn into_parts(self) -> (Vec<String>, Vec<String>, Vec<Member>) {
        let members = self
            .records
            .into_iter()
            .map(|r| Member {
                partition_key_index: r.partition_key_index as usize,
                explicit_hash_key_index: r.explicit_hash_key_index.map(|i| i as usize),
                data: r.data,
            })
            .collect();
        (self.partition_keys, self.explicit_hash_keys, members)
    }
}

/// Whether Kinesis would accept this partition key: 1 to 256 characters.
pub fn is_valid_partition_key(key: &str) -> bool {
    // Cheap bound first: a huge key is rejected without counting its characters.
    !key.is_empty() && key.len() <= 256 * 4 && key.chars().count() <= 256
}

/// Whether Kinesis accepts this explicit hash key on a record: the pattern `0|([1-9]\d{0,38})`
/// of the `PutRecords` API, below 2^128. kinesis-mock refuses a whole `PutRecords` call for one
/// entry with such a key (`producer/tests/library.rs`), so a producer checks each record first.
pub fn is_valid_explicit_hash_key(key: &str) -> bool {
    (key == "0" || !key.starts_with('0')) && is_decimal_hash_key(key)
}

/// Whether a reader can route by this hash key: a decimal number below 2^128, leading zeros
/// allowed (the Java KCL parses it as a `BigInteger`). Inside an aggregate's table Kinesis never
/// looks at it, so this, not [`is_valid_explicit_hash_key`], is what [`deaggregate`] checks.
fn is_decimal_hash_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) && key.parse::<u128>().is_ok()
}

/// The user records of an aggregated record, or `None` when `data` is an ordinary record: no
/// magic prefix, wrong digest, undecodable protobuf, a dangling table index, or a key Kinesis
/// itself would refuse (a partition key of more than 256 characters, an explicit hash key that
/// is not a decimal 128-bit number). Such a record is then handled like any other payload, so
/// a hostile aggregate costs no more than its own bytes.
pub fn deaggregate(data: &[u8]) -> Option<Aggregate> {
    let body = data.strip_prefix(&MAGIC)?;
    if body.len() < DIGEST_LEN {
        return None;
    }
    let (message, digest) = body.split_at(body.len() - DIGEST_LEN);
    if md5_many::md5(message).as_slice() != digest {
        return None;
    }
    let agg = pb::AggregatedRecord::decode(message).ok()?;
    let keys_valid = agg
        .partition_key_table
        .iter()
        .all(|k| is_valid_partition_key(k))
        && agg
            .explicit_hash_key_table
            .iter()
            .all(|k| is_decimal_hash_key(k));
    let indexes_valid = agg.records.iter().all(|r| {
        r.partition_key_index < agg.partition_key_table.len() as u64
            && r.explicit_hash_key_index
                .is_none_or(|i| i < agg.explicit_hash_key_table.len() as u64)
    });
    (keys_valid && indexes_valid).then_some(Aggregate {
        partition_keys: agg.partition_key_table,
        explicit_hash_keys: agg.explicit_hash_key_table,
        records: agg.records,
    })
}

/// Builds one aggregated record, encoding as records arrive.
///
/// The protobuf is written incrementally: a new partition (or explicit hash) key's table entry
/// goes out just before the first record that uses it. protobuf parsers collect repeated
/// fields in the order they appear, wherever they are, so this is the same message the KPL
/// writes with its tables first, without holding every record twice.
#[derive(Debug)]
pub struct Aggregator {
    /// Magic prefix followed by the protobuf written so far.
    buf: Vec<u8>,
    /// What each new `buf` is allocated with: growing one by doubling copies it over and over
    /// and touches fresh memory each time.
    capacity: usize,
    /// The key tables: each key's index. Fx hashing, not SipHash: a lookup per user record was
    /// a tenth of the producer's CPU, and a table lives for one aggregate (at most about 1 MB
    /// of keys), so keys chosen to collide can slow down only their own aggregate.
    keys: KeyTable,
    hash_keys: KeyTable,
    records: usize,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

fn magic_buf(capacity: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(capacity.max(MAGIC.len()));
    buf.extend_from_slice(&MAGIC);
    buf
}

fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// A key's place in its table: its index, and whether it is new (its table entry is still to
/// be written).
#[derive(Debug, Clone, Copy)]
struct KeyIndex {
    index: u64,
    new: bool,
    hash: u64,
}

/// A key table of the aggregate being built: each key's index by the key, which is not copied
/// but read where the table entry wrote it in the aggregate's buffer.
#[derive(Debug, Default)]
struct KeyTable(HashTable<KeyEntry>);

#[derive(Debug, Clone, Copy)]
struct KeyEntry {
    hash: u64,
    /// Where the key is in the aggregate's buffer.
    start: usize,
    len: usize,
    index: u64,
}

impl KeyTable {
    fn lookup(&self, buf: &[u8], key: &str) -> KeyIndex {
        let hash = FxBuildHasher.hash_one(key.as_bytes());
        let found = self.0.find(hash, |e| {
            e.hash == hash && buf.get(e.start..e.start + e.len) == Some(key.as_bytes())
        });
        match found {
            Some(e) => KeyIndex {
                index: e.index,
                new: false,
                hash,
            },
            None => KeyIndex {
                index: self.0.len() as u64,
                new: true,
                hash,
            },
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Writes a new key's table entry (field `tag`) and keeps its index.
fn add_key(table: &mut KeyTable, buf: &mut Vec<u8>, tag: u32, key: &str, at: KeyIndex) {
    if at.new {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(key.len() as u64, buf);
        let entry = KeyEntry {
            hash: at.hash,
            start: buf.len(),
            len: key.len(),
            index: at.index,
        };
        buf.extend_from_slice(key.as_bytes());
        table.0.insert_unique(at.hash, entry, |e| e.hash);
    }
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// An aggregator whose aggregates are built in buffers of `capacity` bytes (they grow past
    /// it if they must), and whose key tables keep their room from one aggregate to the next:
    /// for a caller that builds aggregates of a known size one after another.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: magic_buf(capacity),
            capacity,
            keys: KeyTable::default(),
            hash_keys: KeyTable::default(),
            records: 0,
        }
    }

    /// User records in the aggregate being built.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the aggregate being built has no user records.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes of the finished aggregate (magic, protobuf and digest) as it stands.
    pub fn size(&self) -> usize {
        self.buf.len() + DIGEST_LEN
    }

    /// What [`Aggregator::size`] would be after adding this record.
    pub fn size_with(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) -> usize {
        let key = self.keys.lookup(&self.buf, partition_key);
        let hash_key = explicit_hash_key.map(|ehk| self.hash_keys.lookup(&self.buf, ehk));
        self.size_with_indexes(partition_key, key, explicit_hash_key, hash_key, data_len)
    }

    fn size_with_indexes(
        &self,
        partition_key: &str,
        key: KeyIndex,
        explicit_hash_key: Option<&str>,
        hash_key: Option<KeyIndex>,
        data_len: usize,
    ) -> usize {
        let mut table = 0;
        if key.new {
            table += field_len(partition_key.len());
        }
        if let (Some(ehk), Some(KeyIndex { new: true, .. })) = (explicit_hash_key, hash_key) {
            table += field_len(ehk.len());
        }
        let record = record_len(key.index, hash_key.map(|k| k.index), data_len);
        self.size() + table + field_len(record)
    }

    /// Appends a user record; returns where its data starts in the finished aggregate, so a
    /// caller can keep the data as a slice of the aggregate rather than a second copy.
    pub fn add(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: &[u8],
    ) -> usize {
        let key = self.keys.lookup(&self.buf, partition_key);
        let hash_key = explicit_hash_key.map(|ehk| self.hash_keys.lookup(&self.buf, ehk));
        self.add_with_indexes(partition_key, key, explicit_hash_key, hash_key, data)
    }

    /// [`Aggregator::add`] when the aggregate stays within `max_bytes` with the record, or
    /// when it is empty (a record alone always goes in); `None` otherwise, nothing added. One
    /// key table lookup where [`Aggregator::size_with`] then [`Aggregator::add`] take two.
    pub fn add_within(
        &mut self,
        max_bytes: usize,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: &[u8],
    ) -> Option<usize> {
        let key = self.keys.lookup(&self.buf, partition_key);
        let hash_key = explicit_hash_key.map(|ehk| self.hash_keys.lookup(&self.buf, ehk));
        let size =
            self.size_with_indexes(partition_key, key, explicit_hash_key, hash_key, data.len());
        if size > max_bytes && !self.is_empty() {
            return None;
        }
        Some(self.add_with_indexes(partition_key, key, explicit_hash_key, hash_key, data))
    }

    fn add_with_indexes(
        &mut self,
        partition_key: &str,
        key: KeyIndex,
        explicit_hash_key: Option<&str>,
        hash_key: Option<KeyIndex>,
        data: &[u8],
    ) -> usize {
        add_key(&mut self.keys, &mut self.buf, 1, partition_key, key);
        if let (Some(ehk), Some(at)) = (explicit_hash_key, hash_key) {
            add_key(&mut self.hash_keys, &mut self.buf, 2, ehk, at);
        }
        let (key_index, hash_key_index) = (key.index, hash_key.map(|k| k.index));
        let buf = &mut self.buf;
        encode_key(3, WireType::LengthDelimited, buf);
        encode_varint(
            record_len(key_index, hash_key_index, data.len()) as u64,
            buf,
        );
        encode_key(1, WireType::Varint, buf);
        encode_varint(key_index, buf);
        if let Some(i) = hash_key_index {
            encode_key(2, WireType::Varint, buf);
            encode_varint(i, buf);
        }
        encode_key(3, WireType::LengthDelimited, buf);
        encode_varint(data.len() as u64, buf);
        let offset = buf.len();
        buf.extend_from_slice(data);
        self.records += 1;
        offset
    }

    /// Drops what was added; the aggregator is empty again, its buffer and tables keeping
    /// their room.
    pub fn clear(&mut self) {
        self.buf.truncate(MAGIC.len());
        self.keys.clear();
        self.hash_keys.clear();
        self.records = 0;
    }

    /// The aggregated record's bytes; the aggregator is empty again afterwards (with a new
    /// buffer of its capacity).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.finish_undigested();
        let [digest] = digests(&[&out]);
        out.extend_from_slice(&digest);
        out
    }

    /// The aggregated record's bytes but its digest, to be completed with [`digests`] (which
    /// hashes many aggregates at once); the aggregator is empty again afterwards.
    pub fn finish_undigested(&mut self) -> Vec<u8> {
        let out = std::mem::replace(&mut self.buf, magic_buf(self.capacity));
        self.keys.clear();
        self.hash_keys.clear();
        self.records = 0;
        out
    }
}

/// The digest (the last [`DIGEST_LEN`] bytes) of each aggregate of `undigested`, aggregates as
/// [`Aggregator::finish_undigested`] leaves them. Hashed together: in SIMD lanes where the CPU
/// has them, many times faster than one by one.
pub fn digests<const N: usize>(undigested: &[&[u8]; N]) -> [[u8; DIGEST_LEN]; N] {
    let mut out = [[0; DIGEST_LEN]; N];
    digests_into(undigested, &mut out);
    out
}

/// [`digests`] for any number of aggregates: the digest of `undigested[i]` goes to `out[i]`.
///
/// # Panics
/// If `out` is shorter than `undigested`.
pub fn digests_into(undigested: &[&[u8]], out: &mut [[u8; DIGEST_LEN]]) {
    let messages: Vec<&[u8]> = undigested
        .iter()
        .map(|a| a.get(MAGIC.len()..).unwrap_or_default())
        .collect();
    md5_many::md5_many(&messages, out);
}

/// Encoded length of a `Record` message body.
fn record_len(key_index: u64, hash_key_index: Option<u64>, data_len: usize) -> usize {
    1 + encoded_len_varint(key_index)
        + hash_key_index.map_or(0, |i| 1 + encoded_len_varint(i))
        + field_len(data_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};
    use rand::{Rng, SeedableRng};

    #[test]
    fn digests_are_md5s_of_each_aggregate_after_its_magic() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..30 {
            let owned: Vec<Vec<u8>> = (0..rng.gen_range(0..40))
                .map(|_| {
                    let mut a = MAGIC.to_vec();
                    let len = rng.gen_range(0..3000);
                    a.extend((0..len).map(|_| rng.gen::<u8>()));
                    a
                })
                .collect();
            let aggregates: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            let mut out = vec![[0; DIGEST_LEN]; aggregates.len()];
            digests_into(&aggregates, &mut out);
            for (a, d) in aggregates.iter().zip(&out) {
                assert_eq!(Md5::digest(&a[MAGIC.len()..]).as_slice(), d, "seed {seed}");
            }
        }
        assert_eq!(hash_key("k"), u128::from_be_bytes(Md5::digest(b"k").into()));
        let records: Vec<(String, Option<String>)> = (0..rng.gen_range(0..100))
            .map(|i| {
                let key = format!("key-{}", rng.gen::<u64>());
                let ehk = match i % 3 {
                    0 => Some(rng.gen::<u128>().to_string()),
                    1 => Some("not a number".to_string()),
                    _ => None,
                };
                (key, ehk)
            })
            .collect();
        let pairs: Vec<(&str, Option<&str>)> = records
            .iter()
            .map(|(k, e)| (k.as_str(), e.as_deref()))
            .collect();
        let one_by_one: Vec<u128> = pairs
            .iter()
            .map(|(k, e)| effective_hash_key(k, *e))
            .collect();
        assert_eq!(effective_hash_keys(&pairs), one_by_one, "seed {seed}");
    }

    #[test]
    fn a_key_seen_before_in_the_aggregate_is_written_once_and_found_again() {
        let mut agg = Aggregator::new();
        let records = [
            ("a", None, "1"),
            ("b", Some("7"), "2"),
            ("a", Some("7"), "3"),
            ("b", None, "4"),
            ("c", Some("8"), "5"),
            ("a", None, "6"),
        ];
        for (key, ehk, data) in records {
            agg.add(key, ehk, data.as_bytes());
        }
        let bytes = agg.finish();
        let decoded = deaggregate(&bytes).expect("an aggregate");
        assert_eq!(decoded.partition_keys, ["a", "b", "c"]);
        assert_eq!(decoded.explicit_hash_keys, ["7", "8"]);
        let read: Vec<(&str, Option<&str>, &[u8])> = decoded
            .iter()
            .map(|m| (m.partition_key, m.explicit_hash_key, m.data))
            .collect();
        let expected: Vec<(&str, Option<&str>, &[u8])> = records
            .iter()
            .map(|(k, e, d)| (*k, *e, d.as_bytes()))
            .collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn an_undigested_aggregate_with_its_digest_is_the_finished_one() {
        let mut agg = Aggregator::new();
        agg.add("a", None, b"one");
        agg.add("b", Some("7"), b"two");
        let mut undigested = agg.finish_undigested();
        let [digest] = digests(&[&undigested]);
        undigested.extend_from_slice(&digest);
        agg.add("a", None, b"one");
        agg.add("b", Some("7"), b"two");
        assert_eq!(undigested, agg.finish());
        assert_eq!(deaggregate(&undigested).map(|a| a.records.len()), Some(2));
    }

    #[test]
    fn add_says_where_each_records_data_is_in_the_finished_aggregate() {
        let mut agg = Aggregator::new();
        let data: [&[u8]; 3] = [b"first", b"", &[7u8; 300]];
        let offsets: Vec<usize> = data.iter().map(|d| agg.add("k", None, d)).collect();
        let bytes = agg.finish();
        for (d, at) in data.iter().zip(offsets) {
            assert_eq!(&bytes[at..at + d.len()], *d);
        }
    }

    #[test]
    fn add_within_adds_what_fits_and_a_lone_record_always() {
        let mut agg = Aggregator::new();
        let max = 100;
        let mut added = 0;
        while agg.add_within(max, "key", Some("12"), &[1u8; 20]).is_some() {
            added += 1;
            assert!(agg.size() <= max, "{} bytes", agg.size());
        }
        assert_eq!(agg.len(), added);
        let before = agg.size();
        assert!(
            agg.size_with("key", Some("12"), 20) > max,
            "refused only what would not fit"
        );
        assert_eq!(agg.size(), before, "nothing added when refused");
        let bytes = agg.finish();
        assert_eq!(bytes.len(), before);
        assert_eq!(deaggregate(&bytes).expect("aggregated").len(), added);
        // Alone, a record larger than the bound still goes in (it is sent as it is).
        assert!(agg.add_within(max, "key", None, &[1u8; 500]).is_some());
        assert!(agg.add_within(max, "key", None, &[1u8; 1]).is_none());
    }

    #[test]
    fn an_aggregator_reused_after_clear_or_finish_builds_what_a_new_one_builds() {
        let build = |agg: &mut Aggregator| {
            agg.add("a", None, b"one");
            agg.add("b", Some("7"), b"two");
            agg.add("a", None, b"three");
            agg.finish()
        };
        let expected = build(&mut Aggregator::new());
        let mut reused = Aggregator::with_capacity(1024);
        reused.add("stale", Some("1"), b"dropped");
        reused.clear();
        assert!(reused.is_empty());
        assert_eq!(build(&mut reused), expected);
        assert_eq!(build(&mut reused), expected, "after finish");
        let again = build(&mut reused);
        assert_eq!(again, expected);
        assert!(
            again.capacity() >= 1024,
            "built in a buffer of the capacity asked"
        );
    }

    #[test]
    fn round_trip_keeps_order_keys_and_data() {
        let mut agg = Aggregator::new();
        agg.add("a", None, b"one");
        agg.add("b", Some("12345"), b"two");
        agg.add("a", None, b"");
        let predicted = agg.size();
        let bytes = agg.finish();
        assert_eq!(bytes.len(), predicted, "size is tracked exactly");
        assert!(agg.is_empty());
        let agg = deaggregate(&bytes).expect("aggregated");
        let subs: Vec<SubRecord> = agg.iter().collect();
        assert_eq!(subs.len(), 3);
        assert_eq!(
            subs[0],
            SubRecord {
                partition_key: "a",
                explicit_hash_key: None,
                data: b"one"
            }
        );
        assert_eq!(subs[1].explicit_hash_key, Some("12345"));
        assert_eq!(subs[1].data, b"two");
        assert_eq!(subs[2].partition_key, "a");
    }

    #[test]
    fn members_share_their_key_instead_of_copying_it() {
        let mut agg = Aggregator::new();
        let key = "k".repeat(200);
        for _ in 0..3 {
            agg.add(&key, None, b"x");
        }
        let decoded = deaggregate(&agg.finish()).unwrap();
        let keys: Vec<*const u8> = decoded.iter().map(|s| s.partition_key.as_ptr()).collect();
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "one key in memory");
    }

    #[test]
    fn keys_kinesis_would_refuse_make_an_ordinary_record() {
        let build = |key: &str, hash: Option<&str>| {
            let mut agg = Aggregator::new();
            agg.add("fine", None, b"first");
            agg.add(key, hash, b"second");
            agg.finish()
        };
        assert!(deaggregate(&build(&"x".repeat(256), None)).is_some());
        assert!(deaggregate(&build(&"é".repeat(256), None)).is_some());
        assert!(deaggregate(&build(&"x".repeat(257), None)).is_none());
        assert!(deaggregate(&build("", None)).is_none());
        let max = u128::MAX.to_string();
        assert!(deaggregate(&build("k", Some(&max))).is_some());
        assert!(
            deaggregate(&build("k", Some("340282366920938463463374607431768211456"))).is_none()
        );
        assert!(deaggregate(&build("k", Some("-1"))).is_none());
        assert!(deaggregate(&build("k", Some("+1"))).is_none());
        assert!(deaggregate(&build("k", Some("12a"))).is_none());
    }

    #[test]
    fn partition_keys_are_stored_once() {
        let mut agg = Aggregator::new();
        for _ in 0..100 {
            agg.add("same-key", None, b"x");
        }
        let bytes = agg.finish();
        let message = pb::AggregatedRecord::decode(&bytes[4..bytes.len() - 16]).unwrap();
        assert_eq!(message.partition_key_table, vec!["same-key".to_string()]);
        assert_eq!(message.records.len(), 100);
    }

    #[test]
    fn size_with_predicts_large_records_and_indexes() {
        let mut agg = Aggregator::new();
        for i in 0..300 {
            let key = format!("key-{i}");
            let data = vec![7u8; 200 + i];
            let expected = agg.size_with(&key, Some(&i.to_string()), data.len());
            agg.add(&key, Some(&i.to_string()), &data);
            assert_eq!(agg.size(), expected);
        }
        let predicted = agg.size();
        assert_eq!(agg.finish().len(), predicted);
    }

    #[test]
    fn ordinary_records_are_not_deaggregated() {
        assert_eq!(deaggregate(b"{\"Id\":1}"), None);
        assert_eq!(deaggregate(&MAGIC), None);
        let mut agg = Aggregator::new();
        agg.add("k", None, b"data");
        let mut bytes = agg.finish();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        assert_eq!(
            deaggregate(&bytes),
            None,
            "a bad digest means an ordinary record"
        );
        let mut garbage = MAGIC.to_vec();
        garbage.extend_from_slice(&[0xFF; 8]);
        garbage.extend_from_slice(&Md5::digest([0xFFu8; 8]));
        assert_eq!(
            deaggregate(&garbage),
            None,
            "bad protobuf means an ordinary record"
        );
    }

    #[test]
    fn explicit_hash_keys_are_checked_as_kinesis_and_readers_check_them() {
        for key in ["0", "1", "123", "340282366920938463463374607431768211455"] {
            assert!(is_valid_explicit_hash_key(key), "{key}");
        }
        for key in [
            "",
            "abc",
            "0123",
            "00",
            "-1",
            " 1",
            "340282366920938463463374607431768211456",
        ] {
            assert!(!is_valid_explicit_hash_key(key), "{key:?}");
        }
        assert!(is_decimal_hash_key("0123"), "readers parse leading zeros");
        assert!(!is_decimal_hash_key("abc"));
    }

    #[test]
    fn hash_key_is_the_big_endian_md5() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_eq!(effective_hash_key("x", Some("42")), 42);
        assert_eq!(effective_hash_key("", Some("not a number")), hash_key(""));
    }
}
