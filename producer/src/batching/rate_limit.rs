//! The per-shard rate limit: token buckets for the Kinesis write limits ([`RateLimiter`]), and
//! the queues of records they hold back ([`Backlogs`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::entry::Entry;
use super::put_records::Batch;

/// Token buckets per shard for the Kinesis write limits: records and bytes a second, with up
/// to one second's worth of burst.
#[derive(Debug)]
pub struct RateLimiter {
    records_per_sec: f64,
    bytes_per_sec: f64,
    shards: HashMap<String, Budget>,
}

#[derive(Debug)]
struct Budget {
    records: f64,
    bytes: f64,
    at: Instant,
}

impl RateLimiter {
    /// Per-shard limits of 1,000 records and 1 MiB a second, scaled by `percent`.
    pub fn new(percent: u32) -> Self {
        let scale = f64::from(percent) / 100.0;
        Self {
            records_per_sec: 1000.0 * scale,
            bytes_per_sec: 1_048_576.0 * scale,
            shards: HashMap::new(),
        }
    }

    /// The shard's budget brought up to `now` (a full one for a shard not seen before).
    fn budget(&mut self, shard: &str, now: Instant) -> &mut Budget {
        let (max_records, max_bytes) = (self.records_per_sec, self.bytes_per_sec);
        // Look up before inserting: no key allocation on the hot path.
        if !self.shards.contains_key(shard) {
            self.shards.insert(
                shard.to_string(),
                Budget {
                    records: max_records,
                    bytes: max_bytes,
                    at: now,
                },
            );
        }
        let budget = self.shards.get_mut(shard).expect("inserted above");
        let elapsed = now.saturating_duration_since(budget.at).as_secs_f64();
        budget.records = (budget.records + elapsed * max_records).min(max_records);
        budget.bytes = (budget.bytes + elapsed * max_bytes).min(max_bytes);
        budget.at = now;
        budget
    }

    /// Takes one record of `bytes` from the shard's budget if it has room now.
    pub fn try_take(&mut self, shard: &str, bytes: usize, now: Instant) -> bool {
        // A record larger than a whole second's byte budget may go when the budget is full.
        let bytes = (bytes as f64).min(self.bytes_per_sec);
        let budget = self.budget(shard, now);
        if budget.records >= 1.0 && budget.bytes >= bytes {
            budget.records -= 1.0;
            budget.bytes -= bytes;
            true
        } else {
            false
        }
    }

    /// When the shard's budget will have room for one record of `bytes` (`now` if it has).
    pub fn ready_at(&self, shard: &str, bytes: usize, now: Instant) -> Instant {
        let Some(budget) = self.shards.get(shard) else {
            return now;
        };
        let bytes = (bytes as f64).min(self.bytes_per_sec);
        let wait_records = (1.0 - budget.records).max(0.0) / self.records_per_sec;
        let wait_bytes = (bytes - budget.bytes).max(0.0) / self.bytes_per_sec;
        // A millisecond more, so the budget is surely there when the timer fires.
        budget.at + Duration::from_secs_f64(wait_records.max(wait_bytes)) + Duration::from_millis(1)
    }
}

/// Records the limiter held back, per predicted shard, in the order they came. A shard's
/// records leave from here before any newer record of that shard, and each record is moved
/// here once, so waiting for a budget costs no rescans of the event loop's queue.
pub(super) struct Backlogs {
    limiter: RateLimiter,
    queues: HashMap<Arc<str>, VecDeque<Entry>>,
    len: usize,
}

impl Backlogs {
    /// Backlogs under limits of `percent` of each shard's write limits.
    pub(super) fn new(percent: u32) -> Self {
        Self {
            limiter: RateLimiter::new(percent),
            queues: HashMap::new(),
            len: 0,
        }
    }

    /// Records held back.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Moves held-back records into `batch`, each shard's oldest first, as far as its budget
    /// and the batch allow.
    pub(super) fn release(&mut self, batch: &mut Batch, now: Instant) {
        for (shard, queue) in self.queues.iter_mut() {
            while let Some(e) = queue.front() {
                let size = e.size();
                if !batch.fits(size) || !self.limiter.try_take(shard, size, now) {
                    break;
                }
                if let Some(e) = queue.pop_front() {
                    batch.push(e);
                    self.len -= 1;
                }
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
    }

    /// Gives `entry` back when it may go now: its shard has budget and no older record held
    /// back (or it has no predicted shard). Otherwise holds it behind its shard's backlog.
    pub(super) fn admit(&mut self, entry: Entry, now: Instant) -> Option<Entry> {
        let Some(shard) = entry.predicted_shard.clone() else {
            return Some(entry);
        };
        if !self.queues.contains_key(&shard) && self.limiter.try_take(&shard, entry.size(), now) {
            return Some(entry);
        }
        self.queues.entry(shard).or_default().push_back(entry);
        self.len += 1;
        None
    }

    /// When the first shard with a backlog has room for its oldest record.
    pub(super) fn ready_at(&self, now: Instant) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|(shard, q)| Some(self.limiter.ready_at(shard, q.front()?.size(), now)))
            .min()
    }

    /// Every held-back record, each shard's in order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.queues.values().flatten()
    }

    /// Takes every held-back record out, each shard's in order.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Entry> + '_ {
        self.len = 0;
        self.queues.drain().flat_map(|(_, q)| q)
    }

    /// Moves the records whose time to live ran out by `now` into `expired`.
    pub(super) fn expire(&mut self, now: Instant, expired: &mut Vec<Entry>) {
        for queue in self.queues.values_mut() {
            let before = queue.len();
            let (keep, gone): (VecDeque<Entry>, VecDeque<Entry>) = std::mem::take(queue)
                .into_iter()
                .partition(|e| e.deadline > now);
            *queue = keep;
            self.len -= before - queue.len();
            expired.extend(gone);
        }
        self.queues.retain(|_, q| !q.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::super::entry::test_pending;
    use super::super::record::ProducerRecord;
    use super::*;

    #[test]
    fn rate_limiter_holds_each_shard_to_its_budget() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(100);
        let taken = (0..1500).filter(|_| limiter.try_take("a", 100, t0)).count();
        assert_eq!(taken, 1000, "one second's worth of records at once");
        assert!(
            limiter.try_take("b", 100, t0),
            "shards have their own budgets"
        );
        assert!(!limiter.try_take("a", 100, t0 + Duration::from_millis(0)));
        let later = t0 + Duration::from_millis(100);
        let refilled = (0..500)
            .filter(|_| limiter.try_take("a", 100, later))
            .count();
        assert_eq!(refilled, 100, "100 ms refills 100 records");
        let mut bytes = RateLimiter::new(50);
        assert!(bytes.try_take("a", 400_000, t0));
        assert!(!bytes.try_take("a", 400_000, t0), "half of 1 MiB a second");
    }

    #[test]
    fn rate_limiter_says_when_a_shard_has_room_again() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1); // 10 records a second
        assert_eq!(limiter.ready_at("a", 100, t0), t0, "unknown shard: now");
        while limiter.try_take("a", 100, t0) {}
        let at = limiter.ready_at("a", 100, t0);
        let wait = at - t0;
        assert!(
            wait >= Duration::from_millis(100) && wait <= Duration::from_millis(102),
            "{wait:?}"
        );
        assert!(!limiter.try_take("a", 100, at - Duration::from_millis(2)));
        assert!(limiter.try_take("a", 100, at), "room when it said so");
    }

    fn entry(shard: &str, key: &str) -> Entry {
        let later = Instant::now() + Duration::from_secs(60);
        let (p, _) = test_pending(ProducerRecord::new(key, vec![b'x'; 10]), later);
        Entry::single(p, Some(shard.into()))
    }

    #[test]
    fn a_shards_held_back_records_leave_before_any_newer_one_of_that_shard() {
        let t0 = Instant::now();
        let mut backlogs = Backlogs::new(1); // 10 records a second
        let admitted = (0..15)
            .filter_map(|i| backlogs.admit(entry("a", &format!("a{i}")), t0))
            .count();
        assert_eq!(
            (admitted, backlogs.len()),
            (10, 5),
            "one second's burst goes"
        );
        assert!(
            backlogs.admit(entry("b", "b0"), t0).is_some(),
            "another shard's budget"
        );
        let later = t0 + Duration::from_secs(1);
        assert!(
            backlogs.admit(entry("a", "a15"), later).is_none(),
            "budget again, but older records of its shard wait"
        );
        assert!(backlogs.ready_at(t0).is_some_and(|at| at > t0));
        let mut batch = Batch::default();
        backlogs.release(&mut batch, later);
        let keys: Vec<&str> = batch
            .entries
            .iter()
            .map(|e| e.partition_key.as_str())
            .collect();
        assert_eq!(keys, ["a10", "a11", "a12", "a13", "a14", "a15"]);
        assert!(backlogs.len() == 0 && backlogs.ready_at(later).is_none());
    }

    #[test]
    fn held_back_records_past_their_time_to_live_are_taken_out() {
        let t0 = Instant::now();
        let mut backlogs = Backlogs::new(1);
        for i in 0..12 {
            backlogs.admit(entry("a", &format!("a{i}")), t0);
        }
        assert_eq!(backlogs.len(), 2);
        let mut expired = Vec::new();
        backlogs.expire(t0 + Duration::from_secs(61), &mut expired);
        assert_eq!((expired.len(), backlogs.len()), (2, 0));
        assert_eq!(backlogs.iter().count(), 0);
    }
}
