//! What the producer's calls did to each shard, for the status page: records and bytes
//! acknowledged (against the shard's write limits), throttles and retries, and the partition
//! keys that send it the most records lately.
//!
//! The `PutRecords` answer is read under one lock per call ([`ShardStats::tally`]); each entry
//! then costs a map look-up by shard id, and each user record one pseudo-random draw: one in
//! [`KEY_SAMPLE`] has its partition key counted (a scan of the shard's few key slots, with no
//! allocation once the slots' strings have grown to the keys' length), so the key counts are
//! estimates, scaled back up.
//!
//! The records, bytes and throttles are also Prometheus counters by `shard_id` when the stats
//! come from [`ProducerMetrics::register`](crate::metrics::ProducerMetrics::register) (each
//! shard's counters are looked up once, when the shard is first seen).
//!
//! Memory is bounded: at most [`MAX_SHARDS`] shards are kept (records of others count under
//! [`OTHER_SHARDS`]), each with [`KEY_SLOTS`] partition keys of at most 256 bytes (the Kinesis
//! limit) and [`RATE_SAMPLES`] samples for its rate.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

/// Kinesis write limits of one shard.
pub const SHARD_RECORDS_PER_SECOND: u64 = 1000;
pub const SHARD_BYTES_PER_SECOND: u64 = 1024 * 1024;
/// Shards kept; records of further shards count under [`OTHER_SHARDS`].
pub const MAX_SHARDS: usize = 512;
pub const OTHER_SHARDS: &str = "(other shards)";
/// The name failed entries go under when the shard map predicted no shard for them.
pub const UNKNOWN_SHARD: &str = "(unknown)";
/// Partition keys counted per shard (the "space-saving" top-N: a new key takes the slot of the
/// least counted one and starts from its count, so a key sending many records stays in).
pub const KEY_SLOTS: usize = 8;
/// One user record in this many (drawn at random, so no pattern of keys escapes it) has its
/// partition key counted.
pub const KEY_SAMPLE: u64 = 8;
/// Top keys shown per shard.
pub const TOP_KEYS: usize = 5;
/// Ticks (one a second, see [`ShardStats::tick`]) over which the top keys are counted: the page
/// shows the last complete window's.
pub const KEY_WINDOW_TICKS: u32 = 10;
/// Samples of the cumulative counts, one a tick: rates are over the last 10 s.
pub const RATE_SAMPLES: usize = 11;

#[derive(Debug, Default)]
struct KeySlots {
    slots: Vec<(String, u64)>,
}

impl KeySlots {
    fn count(&mut self, key: &str) {
        if let Some(slot) = self.slots.iter_mut().find(|(k, _)| k == key) {
            slot.1 += 1;
        } else if self.slots.len() < KEY_SLOTS {
            self.slots.push((key.to_string(), 1));
        } else if let Some(min) = self.slots.iter_mut().min_by_key(|(_, n)| *n) {
            // The slot's buffer is reused: no allocation once it is as long as the keys.
            min.0.clear();
            min.0.push_str(key);
            min.1 += 1;
        }
    }

    fn clear(&mut self) {
        for slot in &mut self.slots {
            slot.1 = 0;
        }
    }

    fn top(&self) -> Vec<KeyCount> {
        let mut top: Vec<KeyCount> = self
            .slots
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| KeyCount {
                key: k.clone(),
                records: *n * KEY_SAMPLE,
            })
            .collect();
        top.sort_by(|a, b| b.records.cmp(&a.records).then(a.key.cmp(&b.key)));
        top.truncate(TOP_KEYS);
        top
    }
}

#[derive(Debug, Default)]
struct Shard {
    /// Kinesis records the shard stored (an aggregate counts once, as for the write limit; one
    /// stored on the wrong side of a split too, though its members are put again).
    records: u64,
    /// Their bytes, data and partition key, as Kinesis counts them for the limit.
    bytes: u64,
    /// User records those Kinesis records carry.
    user_records: u64,
    /// Entries answered `ProvisionedThroughputExceededException`, and the entries of calls
    /// throttled whole.
    throttles: u64,
    /// User records to be put again, whatever the reason (throttles included).
    retries: u64,
    /// (records, bytes) at each of the last ticks.
    samples: VecDeque<(u64, u64)>,
    keys: KeySlots,
    /// The last complete window's top keys.
    last_keys: Vec<KeyCount>,
    exported: Option<ShardCounters>,
}

/// The shard's Prometheus counters.
#[derive(Debug)]
struct ShardCounters {
    records: Counter,
    bytes: Counter,
    throttles: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard_id: String,
}

/// The per-shard Prometheus counter families (`kinesis_producer_shard_*_total{shard_id}`).
#[derive(Clone, Debug, Default)]
pub struct ShardFamilies {
    pub records: Family<ShardLabel, Counter>,
    pub bytes: Family<ShardLabel, Counter>,
    pub throttles: Family<ShardLabel, Counter>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyCount {
    pub key: String,
    /// User records over the window, estimated from the sample (an upper bound for a key that
    /// took another's slot).
    pub records: u64,
}

/// One shard as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ShardRow {
    pub shard_id: String,
    /// Kinesis records and bytes acknowledged per second over the last 10 s.
    pub records_per_second: f64,
    pub bytes_per_second: f64,
    /// The larger of the two rates as a share of the shard's limit (1 = at the limit).
    pub limit_share: f64,
    pub records_put: u64,
    pub user_records_put: u64,
    pub throttles: u64,
    pub retries: u64,
    /// The partition keys with the most user records over the last window, most first.
    pub top_keys: Vec<KeyCount>,
}

#[derive(Debug)]
struct Inner {
    shards: BTreeMap<String, Shard>,
    ticks: u32,
    /// xorshift64 state for the key sample.
    draw: u64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            shards: BTreeMap::new(),
            ticks: 0,
            draw: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// The shard `id` (or [`OTHER_SHARDS`] past the bound), added at zero when new.
fn shard<'a>(
    shards: &'a mut BTreeMap<String, Shard>,
    families: Option<&ShardFamilies>,
    id: &str,
) -> &'a mut Shard {
    let id = if shards.len() < MAX_SHARDS || shards.contains_key(id) {
        id
    } else {
        OTHER_SHARDS
    };
    if !shards.contains_key(id) {
        // Its first sample at zero, so that its rate shows from the next tick.
        let mut new = Shard::default();
        new.samples.push_back((0, 0));
        new.exported = families.map(|f| {
            let label = ShardLabel {
                shard_id: id.to_string(),
            };
            ShardCounters {
                records: f.records.get_or_create(&label).clone(),
                bytes: f.bytes.get_or_create(&label).clone(),
                throttles: f.throttles.get_or_create(&label).clone(),
            }
        });
        shards.insert(id.to_string(), new);
    }
    shards.get_mut(id).expect("inserted above")
}

/// Per-shard counts, shared by the producer library (which counts) and the status page.
#[derive(Debug, Default)]
pub struct ShardStats {
    inner: Mutex<Inner>,
    families: Option<ShardFamilies>,
}

/// The counts locked for one `PutRecords` answer.
pub struct Tally<'a>(MutexGuard<'a, Inner>, Option<&'a ShardFamilies>);

impl Tally<'_> {
    /// An entry acknowledged on `shard`: one Kinesis record of `bytes`, carrying user records
    /// with these partition keys.
    pub fn acknowledged<'k>(
        &mut self,
        shard: &str,
        bytes: usize,
        keys: impl ExactSizeIterator<Item = &'k str>,
    ) {
        let inner = &mut *self.0;
        let s = self::shard(&mut inner.shards, self.1, shard);
        s.records += 1;
        s.bytes += bytes as u64;
        if let Some(c) = &s.exported {
            c.records.inc();
            c.bytes.inc_by(bytes as u64);
        }
        s.user_records += keys.len() as u64;
        for key in keys {
            // xorshift64: a few instructions a record.
            let mut x = inner.draw;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            inner.draw = x;
            if x.is_multiple_of(KEY_SAMPLE) {
                s.keys.count(key);
            }
        }
    }

    /// `records` user records of an entry bound for `shard` (`None`: not predicted) to be put
    /// again; `throttled` when Kinesis said the shard's limit was exceeded.
    pub fn retried(&mut self, shard: Option<&str>, records: usize, throttled: bool) {
        let s = self::shard(&mut self.0.shards, self.1, shard.unwrap_or(UNKNOWN_SHARD));
        s.retries += records as u64;
        if throttled {
            s.throttles += 1;
            if let Some(c) = &s.exported {
                c.throttles.inc();
            }
        }
    }
}

impl ShardStats {
    /// Stats that also count in these Prometheus families.
    pub fn exported(families: ShardFamilies) -> Self {
        Self {
            inner: Mutex::default(),
            families: Some(families),
        }
    }

    /// Locks the counts for one answer; `None` if a holder panicked.
    pub fn tally(&self) -> Option<Tally<'_>> {
        let families = self.families.as_ref();
        self.inner.lock().ok().map(|inner| Tally(inner, families))
    }

    /// Shards the shard map lists as open, shown (at zero) before any record reached them.
    pub fn open_shards<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        if let Ok(mut inner) = self.inner.lock() {
            for id in ids {
                shard(&mut inner.shards, self.families.as_ref(), id);
            }
        }
    }

    /// Takes a sample for the rates; every [`KEY_WINDOW_TICKS`] ticks the top keys move to
    /// the page and counting starts again. Called once a second.
    pub fn tick(&self) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.ticks += 1;
        let window_over = inner.ticks.is_multiple_of(KEY_WINDOW_TICKS);
        for s in inner.shards.values_mut() {
            if s.samples.len() == RATE_SAMPLES {
                s.samples.pop_front();
            }
            s.samples.push_back((s.records, s.bytes));
            if window_over {
                s.last_keys = s.keys.top();
                s.keys.clear();
            }
        }
    }

    /// Every shard kept, by shard id, with its rates over the samples taken one second apart.
    pub fn rows(&self) -> Vec<ShardRow> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        inner
            .shards
            .iter()
            .map(|(id, s)| {
                let (records_per_second, bytes_per_second) =
                    match (s.samples.front(), s.samples.back()) {
                        (Some(first), Some(last)) if s.samples.len() > 1 => {
                            let secs = (s.samples.len() - 1) as f64;
                            (
                                (last.0 - first.0) as f64 / secs,
                                (last.1 - first.1) as f64 / secs,
                            )
                        }
                        _ => (0.0, 0.0),
                    };
                let limit_share = (records_per_second / SHARD_RECORDS_PER_SECOND as f64)
                    .max(bytes_per_second / SHARD_BYTES_PER_SECOND as f64);
                ShardRow {
                    shard_id: id.clone(),
                    records_per_second: (records_per_second * 10.0).round() / 10.0,
                    bytes_per_second: bytes_per_second.round(),
                    limit_share: (limit_share * 1000.0).round() / 1000.0,
                    records_put: s.records,
                    user_records_put: s.user_records,
                    throttles: s.throttles,
                    retries: s.retries,
                    // Before the first window ends, the keys counted so far.
                    top_keys: if inner.ticks < KEY_WINDOW_TICKS {
                        s.keys.top()
                    } else {
                        s.last_keys.clone()
                    },
                }
            })
            .collect()
    }

    /// Throttles over every shard.
    pub fn throttles(&self) -> u64 {
        self.inner
            .lock()
            .map(|i| i.shards.values().map(|s| s.throttles).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_sending_most_records_tops_its_shard_even_among_many_others() {
        let stats = ShardStats::default();
        {
            let mut t = stats.tally().unwrap();
            for i in 0..1000 {
                let other = format!("k{i}");
                t.acknowledged("s1", 10, [other.as_str()].into_iter());
                t.acknowledged("s1", 10, ["hot"].into_iter());
            }
        }
        let rows = stats.rows();
        assert_eq!(rows[0].top_keys[0].key, "hot");
        // About 1,000, estimated from one record in 8.
        let hot = rows[0].top_keys[0].records;
        assert!((700..=1300).contains(&hot), "{hot}");
        assert_eq!(rows[0].records_put, 2000);
        assert!(rows[0].top_keys.len() <= TOP_KEYS);
    }

    #[test]
    fn rates_come_from_samples_a_second_apart_and_shards_beyond_the_bound_count_as_others() {
        let stats = ShardStats::default();
        stats.tick();
        {
            let mut t = stats.tally().unwrap();
            for _ in 0..512 {
                t.acknowledged("s1", 2048, ["k"].into_iter());
            }
            t.retried(Some("s1"), 3, true);
            t.retried(None, 1, false);
        }
        stats.tick();
        let rows = stats.rows();
        let s1 = rows.iter().find(|r| r.shard_id == "s1").unwrap();
        assert_eq!(s1.records_per_second, 512.0);
        assert_eq!(s1.limit_share, 1.0); // 1 MiB/s: the byte limit.
        assert_eq!((s1.throttles, s1.retries), (1, 3));
        assert!(rows.iter().any(|r| r.shard_id == UNKNOWN_SHARD));
        let many: Vec<String> = (0..MAX_SHARDS + 10).map(|i| format!("x{i:04}")).collect();
        stats.open_shards(many.iter().map(String::as_str));
        assert_eq!(stats.rows().len(), MAX_SHARDS + 1);
        assert!(stats.rows().iter().any(|r| r.shard_id == OTHER_SHARDS));
    }
}
