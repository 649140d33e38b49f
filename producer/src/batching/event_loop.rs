//! The producer's background task: the one owner of everything buffered. It takes handed-over
//! records from the [`Producer`](super::Producer) handles, groups them by the shard map
//! (aggregating when asked), holds them to each shard's rate budget, sends `PutRecords` calls
//! and handles their outcomes (acknowledge, retry, check where an aggregate landed), and ends
//! when every handle is dropped and nothing is left.
//!
//! [`EventLoop::run`] is the whole life of the task; the methods after it are its steps, in the
//! order a record meets them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use kinesis_common::backoff::Backoff;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::aggregation::Aggregates;
use super::config::ProducerConfig;
use super::entry::{Entry, Handover, Pending};
use super::outcome::{OutcomeBatch, Reporter};
use super::put_records::{put_records, Batch, CallOutcome, Landed};
use super::put_records::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS};
use super::rate_limit::Backlogs;
use super::record::SendError;
use super::request_body::BodyPool;
use super::shard_map::{self, ShardMap};

/// A shard map is listed again at most this often when records land elsewhere than predicted.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Handed-over records taken from the channel in one wake-up, at most (a batch handed over at
/// once is taken whole, so one may pass it).
const DRAIN_AT_ONCE: usize = 4096;

pub(super) struct EventLoop {
    client: Client,
    config: Arc<ProducerConfig>,
    reporter: Reporter,
    rx: mpsc::UnboundedReceiver<Handover>,
    /// Records taken from the channel in one wake-up (empty between wake-ups; kept for its room).
    drained: Vec<Pending>,
    /// Entries waiting for a call, in the order they were made.
    queue: VecDeque<Entry>,
    queue_bytes: usize,
    /// When the oldest buffered record arrived, for the linger timer.
    oldest: Option<Instant>,
    calls: JoinSet<CallOutcome>,
    /// Body buffers of finished calls, one per call in flight at most.
    bodies: BodyPool,
    /// Failed entries waiting out their backoff, by when it ends (and a sequence number):
    /// one timer for all of them, no task each.
    retries: BTreeMap<(Instant, u64), Entry>,
    retry_seq: u64,
    /// The shard map records are grouped by (aggregation, rate limit); `None` until listed.
    shard_map: Option<ShardMap>,
    refresh: Option<JoinHandle<Option<ShardMap>>>,
    last_refresh: Option<Instant>,
    /// When to list the shards again after a failed listing (or a refresh that had to wait).
    refresh_retry: Option<Instant>,
    refresh_backoff: Backoff,
    /// Open aggregates, when aggregating.
    aggregates: Aggregates,
    /// Records the rate limiter held back, when it is on.
    backlogs: Option<Backlogs>,
    /// When the first held-back shard gets room again.
    rate_wait: Option<Instant>,
    /// No queued, held-back or unverified record expires before this.
    next_expiry: Option<Instant>,
    /// Aggregates stored on a shard the shard map does not list yet, waiting for a listing to
    /// tell whether that shard's range holds all their members (see [`Landed`]).
    unverified: Vec<Landed>,
}

impl EventLoop {
    pub(super) fn new(
        client: Client,
        config: Arc<ProducerConfig>,
        rx: mpsc::UnboundedReceiver<Handover>,
        outcomes: Option<mpsc::UnboundedSender<OutcomeBatch>>,
    ) -> Self {
        let backlogs = (config.shard_rate_limit_percent > 0)
            .then(|| Backlogs::new(config.shard_rate_limit_percent));
        Self {
            client,
            reporter: Reporter {
                metrics: config.metrics.clone(),
                outcomes,
            },
            aggregates: Aggregates::new(config.aggregation_max_bytes),
            bodies: BodyPool::new(config.max_in_flight),
            config,
            rx,
            drained: Vec::new(),
            queue: VecDeque::new(),
            queue_bytes: 0,
            oldest: None,
            calls: JoinSet::new(),
            retries: BTreeMap::new(),
            retry_seq: 0,
            shard_map: None,
            refresh: None,
            last_refresh: None,
            refresh_retry: None,
            refresh_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            backlogs,
            rate_wait: None,
            next_expiry: None,
            unverified: Vec::new(),
        }
    }

    pub(super) async fn run(mut self) {
        // Learn the shard map before the first record, so aggregation starts at once. Records
        // queue up meanwhile; if the listing fails they go out unaggregated until it works.
        self.refresh_shard_map();
        if let Some(first) = self.refresh.take() {
            let map = first.await.ok().flatten();
            self.shard_map_listed(map);
        }
        let mut open = true;
        loop {
            let linger_over = self
                .oldest
                .is_some_and(|t| t.elapsed() >= self.config.linger);
            if linger_over || !open {
                self.seal_aggregates();
            }
            if self.next_expiry.is_some_and(|t| t <= Instant::now()) {
                self.next_expiry = self.expire(Instant::now());
            }
            // Send every batch that is ready while call slots are free. Held-back records are
            // ready as soon as their shard has room: their linger is long over.
            let held_ready = self.rate_wait.is_some_and(|t| t <= Instant::now());
            while (!self.queue.is_empty() || self.held_back() > 0)
                && self.calls.len() < self.config.max_in_flight
            {
                let ready = self.batch_full() || linger_over || !open || held_ready;
                if !ready || !self.spawn_call() {
                    break;
                }
            }
            if !self.lingering() {
                self.oldest = None;
            }
            if !open && !self.buffered() && self.calls.is_empty() && self.retries.is_empty() {
                return;
            }
            if let Some(m) = &self.config.metrics {
                m.in_flight_calls.set(self.calls.len() as i64);
            }
            // Timers that lead to a call only matter while a call slot is free.
            let slot_free = self.calls.len() < self.config.max_in_flight;
            let linger_at = self
                .oldest
                .filter(|_| slot_free)
                .map(|t| t + self.config.linger);
            let rate_wait = self.rate_wait.filter(|_| slot_free);
            tokio::select! {
                msg = self.rx.recv(), if open => match msg {
                    Some(handover) => {
                        // Take whatever else is waiting in one go: one wake-up per burst rather
                        // than per record, and their hash keys computed together.
                        let mut drained = std::mem::take(&mut self.drained);
                        let mut next = Some(handover);
                        while let Some(handover) = next.take() {
                            match handover {
                                Handover::One(p) => drained.push(p),
                                Handover::Many(mut batch) => drained.append(&mut batch),
                            }
                            if drained.len() < DRAIN_AT_ONCE {
                                next = self.rx.try_recv().ok();
                            }
                        }
                        self.push_all(&mut drained);
                        self.drained = drained;
                    }
                    None => open = false,
                },
                _ = sleep_until_opt(self.retries.first_key_value().map(|(k, _)| k.0)) => {
                    self.retries_due(Instant::now());
                }
                Some(done) = self.calls.join_next(), if !self.calls.is_empty() => {
                    if let Ok(outcome) = done {
                        self.call_done(outcome);
                    }
                }
                refreshed = join_opt(&mut self.refresh) => {
                    self.refresh = None;
                    self.shard_map_listed(refreshed);
                }
                _ = sleep_until_opt(linger_at) => {}
                _ = sleep_until_opt(rate_wait) => {}
                _ = sleep_until_opt(self.refresh_retry) => self.start_refresh(),
                _ = sleep_until_opt(self.next_expiry) => {}
            }
        }
    }

    // ---- Taking records in ----

    /// Takes a handed-over record: into its shard's aggregate when aggregating, else as an
    /// entry of its own.
    fn push(&mut self, p: Pending) {
        let shard = self
            .shard_map
            .as_ref()
            .and_then(|map| map.shared_shard_for(&p.record));
        self.push_routed(p, shard);
    }

    /// [`Self::push`] for many records, in order, their hash keys computed together.
    fn push_all(&mut self, records: &mut Vec<Pending>) {
        let Some(map) = &self.shard_map else {
            return records.drain(..).for_each(|p| self.push_routed(p, None));
        };
        let keys: Vec<(&str, Option<&str>)> = records
            .iter()
            .map(|p| {
                let r = &p.record;
                (r.partition_key.as_str(), r.explicit_hash_key.as_deref())
            })
            .collect();
        let hashes = kinesis_common::kpl::effective_hash_keys(&keys);
        let shards: Vec<Option<Arc<str>>> = hashes
            .into_iter()
            .map(|h| map.shard_id_for_hash(h).cloned())
            .collect();
        for (p, shard) in records.drain(..).zip(shards) {
            self.push_routed(p, shard);
        }
    }

    /// Queues a record for `shard` (`None`: no map, the record routes itself).
    fn push_routed(&mut self, p: Pending, shard: Option<Arc<str>>) {
        self.oldest.get_or_insert_with(Instant::now);
        match shard {
            Some(shard) if self.config.aggregation => {
                if let Some(sealed) = self.aggregates.add(shard, p) {
                    self.push_entry(sealed);
                }
            }
            other => self.push_entry(Entry::single(p, other)),
        }
    }

    fn push_entry(&mut self, entry: Entry) {
        self.expire_by(entry.deadline);
        self.queue_bytes += entry.size();
        self.queue.push_back(entry);
    }

    /// Queues an entry again (a retry, or one being regrouped): as it is when the shard it was
    /// predicted for is still open in the map; otherwise a lone record with its new shard, and
    /// an aggregate taken apart into its records, grouped anew.
    fn requeue(&mut self, mut entry: Entry) {
        let map = match (&self.shard_map, entry.predicted_shard.as_deref()) {
            (Some(map), Some(shard)) if !map.is_open(shard) => map,
            // Still open, or never predicted (sent while there was no map: it routes itself).
            _ => return self.push_entry(entry),
        };
        if !entry.aggregated {
            entry.predicted_shard = entry
                .members
                .first()
                .and_then(|p| map.shared_shard_for(&p.record));
            return self.push_entry(entry);
        }
        for p in entry.into_members() {
            self.push(p);
        }
    }

    fn seal_aggregates(&mut self) {
        let sealed: Vec<Entry> = self.aggregates.seal_all().collect();
        for entry in sealed {
            self.push_entry(entry);
        }
    }

    // ---- What is buffered ----

    fn held_back(&self) -> usize {
        self.backlogs.as_ref().map_or(0, Backlogs::len)
    }

    fn buffered(&self) -> bool {
        self.lingering() || self.held_back() > 0 || !self.unverified.is_empty()
    }

    /// Whether records wait for a batch to fill or their linger to pass (held-back ones wait
    /// for the rate limiter instead).
    fn lingering(&self) -> bool {
        !self.queue.is_empty() || !self.aggregates.is_empty()
    }

    fn batch_full(&self) -> bool {
        self.queue.len() >= MAX_BATCH_RECORDS || self.queue_bytes >= MAX_BATCH_BYTES
    }

    fn expire_by(&mut self, deadline: Instant) {
        self.next_expiry = Some(self.next_expiry.map_or(deadline, |t| t.min(deadline)));
    }

    /// Fails every queued, held-back or unverified record whose time to live ran out; returns
    /// when the next one will.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        let (keep, mut expired): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|e| e.deadline > now);
        self.queue = keep.into();
        if !expired.is_empty() {
            self.queue_bytes = self.queue.iter().map(Entry::size).sum();
        }
        if let Some(backlogs) = self.backlogs.as_mut() {
            backlogs.expire(now, &mut expired);
        }
        let (keep, gone): (Vec<Landed>, Vec<Landed>) = std::mem::take(&mut self.unverified)
            .into_iter()
            .partition(|l| l.entry.deadline > now);
        self.unverified = keep;
        expired.extend(gone.into_iter().map(|mut l| {
            l.entry.last_error = format!(
                "stored on shard {} as {}, but the shard map could not be listed to check that \
                 the shard's range holds every record of the aggregate",
                l.shard_id, l.sequence_number
            )
            .into();
            l.entry
        }));
        let reporter = self.reporter.clone();
        let mut out = reporter.resolution();
        for e in expired {
            let attempts = e.attempts
                + e.members
                    .iter()
                    .map(|p| p.earlier_attempts)
                    .max()
                    .unwrap_or(0);
            let last_error = if !e.last_error.is_empty() {
                e.last_error.to_string()
            } else if attempts == 0 {
                "never sent: still queued when its time to live ran out".to_string()
            } else {
                // Taken out of an aggregate put before (regrouped, or put again).
                "still queued to be put again when its time to live ran out".to_string()
            };
            e.fail(
                SendError::Expired {
                    attempts,
                    last_error,
                },
                &mut out,
            );
        }
        drop(out);
        let held_back = self.backlogs.iter().flat_map(Backlogs::iter);
        self.queue
            .iter()
            .chain(held_back)
            .chain(self.unverified.iter().map(|l| &l.entry))
            .map(|e| e.deadline)
            .min()
    }

    // ---- Sending ----

    /// Sends the next batch; false when every queued record waits for its shard's rate budget.
    fn spawn_call(&mut self) -> bool {
        let now = Instant::now();
        let mut batch = Batch::default();
        // Held-back records first, each shard's in order, as far as its budget allows.
        if let Some(backlogs) = self.backlogs.as_mut() {
            backlogs.release(&mut batch, now);
        }
        while let Some(e) = self.queue.pop_front() {
            if !batch.fits(e.size()) {
                self.queue.push_front(e);
                break;
            }
            self.queue_bytes -= e.size();
            // Behind older held-back records of its shard, or over the budget: held back.
            let admitted = match self.backlogs.as_mut() {
                Some(backlogs) => backlogs.admit(e, now),
                None => Some(e),
            };
            if let Some(e) = admitted {
                batch.push(e);
            }
        }
        // Wake up when the first held-back shard has room for its oldest record, but not
        // before a linger has passed: budget trickles back one record at a time, and a call
        // per record would cost far more than the wait.
        let linger = self.config.linger;
        self.rate_wait = self
            .backlogs
            .as_ref()
            .and_then(|b| b.ready_at(now))
            .map(|at| at.max(now + linger));
        if batch.is_empty() {
            return false;
        }
        self.oldest = self.lingering().then(Instant::now);
        if let Some(m) = &self.reporter.metrics {
            for p in batch
                .entries
                .iter()
                .filter(|e| e.attempts == 0)
                .flat_map(|e| &e.members)
            {
                m.buffering_seconds
                    .observe(now.saturating_duration_since(p.enqueued).as_secs_f64());
            }
        }
        let (client, stream) = (self.client.clone(), self.config.stream_name.clone());
        self.calls.spawn(put_records(
            client,
            stream,
            batch,
            self.reporter.clone(),
            self.bodies.clone(),
        ));
        true
    }

    // ---- A call's outcome ----

    fn call_done(&mut self, outcome: CallOutcome) {
        if outcome.shard_map_stale {
            self.refresh_shard_map();
        }
        self.check_landed(outcome.landed_elsewhere, false);
        self.schedule_retries(outcome.retry);
    }

    /// Acknowledges each aggregate that landed on another shard than predicted when the
    /// landing shard's range holds every member, and puts the members of the others again
    /// under the current map. One that landed on a shard the map does not list waits for the
    /// next listing (`listed_now`: this map was just listed, so such a shard is treated as one
    /// that does not hold them).
    fn check_landed(&mut self, landed: Vec<Landed>, listed_now: bool) {
        let reporter = self.reporter.clone();
        let mut out = reporter.resolution();
        for l in landed {
            let holds_all = self.shard_map.as_ref().and_then(|map| {
                l.entry.members.iter().try_fold(true, |all, p| {
                    Some(all && map.holds(&l.shard_id, p.hash_key())?)
                })
            });
            match holds_all {
                Some(true) => l.entry.succeed(&l.shard_id, &l.sequence_number, &mut out),
                Some(false) => self.put_again(l),
                None if listed_now => self.put_again(l),
                None => {
                    self.expire_by(l.entry.deadline);
                    self.unverified.push(l);
                }
            }
        }
        if !self.unverified.is_empty() && self.refresh.is_none() {
            self.refresh_shard_map();
            if self.refresh.is_none() && self.refresh_retry.is_none() {
                // Listed less than REFRESH_INTERVAL ago: list again when that is over.
                self.refresh_retry = self.last_refresh.map(|t| t + REFRESH_INTERVAL);
            }
        }
    }

    /// The members of an aggregate stored on a shard some of them do not hash to go back into
    /// the buffer, to be grouped by the current map; the misplaced copy stays in the stream,
    /// where readers that check ranges (the Java KCL, this consumer) skip it.
    fn put_again(&mut self, l: Landed) {
        tracing::info!(
            shard_id = %l.shard_id,
            sequence_number = %l.sequence_number,
            predicted_shard_id = l.entry.predicted_shard.as_deref().unwrap_or_default(),
            user_records = l.entry.members.len(),
            "aggregate stored on a shard its records do not all hash to; putting them again"
        );
        if let Some(m) = &self.config.metrics {
            m.retries.inc_by(l.entry.members.len() as u64);
        }
        for p in l.entry.into_members() {
            self.push(p);
        }
    }

    /// Failed entries wait out their backoff in `retries`, then return to the queue; those
    /// past their time to live fail now.
    fn schedule_retries(&mut self, retry: Vec<Entry>) {
        let now = Instant::now();
        let reporter = self.reporter.clone();
        let mut out = reporter.resolution();
        for entry in retry {
            let mut backoff = Backoff::new(self.config.retry_base, self.config.retry_cap);
            for _ in 1..entry.attempts {
                backoff.next_delay();
            }
            let delay = backoff.next_delay();
            if now + delay >= entry.deadline {
                let err = SendError::Expired {
                    attempts: entry.attempts,
                    last_error: entry.last_error.to_string(),
                };
                entry.fail(err, &mut out);
                continue;
            }
            if let Some(m) = &self.config.metrics {
                m.retries.inc_by(entry.members.len() as u64);
            }
            self.retry_seq += 1;
            self.retries.insert((now + delay, self.retry_seq), entry);
        }
    }

    /// Queues again the retries whose backoff is over.
    fn retries_due(&mut self, now: Instant) {
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let entry = entry.remove();
            self.oldest.get_or_insert_with(Instant::now);
            self.requeue(entry);
        }
    }

    // ---- The shard map ----

    /// Starts a shard map listing unless one ran in the last [`REFRESH_INTERVAL`].
    fn refresh_shard_map(&mut self) {
        if self
            .last_refresh
            .is_some_and(|t| t.elapsed() < REFRESH_INTERVAL)
        {
            return;
        }
        self.start_refresh();
    }

    fn start_refresh(&mut self) {
        self.refresh_retry = None;
        let needed = self.config.aggregation || self.backlogs.is_some();
        if !needed || self.refresh.is_some() {
            return;
        }
        self.last_refresh = Some(Instant::now());
        let client = self.client.clone();
        let stream = self.config.stream_name.clone();
        self.refresh = Some(tokio::spawn(async move {
            shard_map::list(&client, &stream).await
        }));
    }

    /// Takes in a shard map listing: the new map (everything buffered is grouped again by it,
    /// and waiting aggregates are checked against it), or after a failure, while there is no
    /// map yet or aggregates wait for one, a retry with backoff.
    fn shard_map_listed(&mut self, map: Option<ShardMap>) {
        match map {
            Some(map) => {
                if let Some(m) = &self.config.metrics {
                    m.shards.open_shards(map.open_shards());
                }
                self.shard_map = Some(map);
                self.refresh_backoff.reset();
                self.refresh_retry = None;
                self.regroup();
                let landed = std::mem::take(&mut self.unverified);
                self.check_landed(landed, true);
            }
            None if self.shard_map.is_none() || !self.unverified.is_empty() => {
                let delay = self.refresh_backoff.ceiling();
                self.refresh_backoff.next_delay();
                self.refresh_retry = Some(Instant::now() + delay);
            }
            // A stale map that could not be refreshed stays in use; the next misplaced
            // record asks again.
            None => {}
        }
    }

    /// Groups every buffered record again by the shard map just listed, in the order they were
    /// handed over: held-back records (older than any queued record of their shard), then the
    /// queue, then the open aggregates. Records of one key thus keep their order across a split
    /// or merge: none held back under a parent stays behind newer ones that a child would
    /// send at once, and no aggregate built by the old map is sent to where that map said.
    fn regroup(&mut self) {
        let held_back: Vec<Entry> = self
            .backlogs
            .as_mut()
            .map(|b| b.drain().collect())
            .unwrap_or_default();
        self.rate_wait = None;
        let queued = std::mem::take(&mut self.queue);
        self.queue_bytes = 0;
        let open: Vec<Pending> = self.aggregates.take_members().collect();
        for entry in held_back.into_iter().chain(queued) {
            self.requeue(entry);
        }
        for p in open {
            self.push(p);
        }
    }
}

async fn join_opt<T>(task: &mut Option<JoinHandle<Option<T>>>) -> Option<T> {
    match task {
        Some(handle) => handle.await.ok().flatten(),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
