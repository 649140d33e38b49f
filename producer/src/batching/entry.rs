//! What the buffer holds: a handed-over record with its share of the buffer ([`Pending`]), and
//! a Kinesis record to put ([`Entry`]): one user record, or an aggregate of several.

use std::sync::Arc;

use bytes::Bytes;
use kinesis_common::kpl::DIGEST_LEN;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::outcome::{Notify, Resolution};
use super::record::{Ack, ProducerRecord, SendError};

/// A record in the buffer with what it holds of the buffer's capacity: the permits return when
/// it is dropped, or with the outcome batch that reports it (a tagged record).
pub(super) struct Pending {
    pub(super) record: ProducerRecord,
    pub(super) notify: Notify,
    pub(super) enqueued: Instant,
    pub(super) deadline: Instant,
    /// `PutRecords` calls of entries this record was in before it was taken out of them again
    /// (an aggregate regrouped by a new shard map, or put again after it landed on a shard
    /// some member does not hash to), counted in its [`Ack::attempts`].
    pub(super) earlier_attempts: u32,
    pub(super) _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    /// Counts the record in `kinesis_producer_buffered_records` while it lives.
    pub(super) _buffered: Option<BufferedGuard>,
}

/// What a handle sends the background task: one record, or a batch handed over at once.
pub(super) enum Handover {
    One(Pending),
    Many(Vec<Pending>),
}

/// Raises the buffered-records gauge for as long as it lives.
pub(super) struct BufferedGuard(prometheus_client::metrics::gauge::Gauge);

impl BufferedGuard {
    pub(super) fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for BufferedGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Pending {
    /// The hash key the record routes by.
    pub(super) fn hash_key(&self) -> u128 {
        kinesis_common::kpl::effective_hash_key(
            &self.record.partition_key,
            self.record.explicit_hash_key.as_deref(),
        )
    }
}

/// One Kinesis record to put: a single user record, or an aggregate of several.
pub(super) struct Entry {
    pub(super) partition_key: String,
    pub(super) explicit_hash_key: Option<String>,
    /// The record's data; for an aggregate, all of it but its MD5 digest, which the call's
    /// body appends (`request_body`: one call's aggregates are hashed together).
    pub(super) data: Bytes,
    pub(super) members: Vec<Pending>,
    /// The shard the shard map says this record lands on (when a map is in use); the id is
    /// the map's, shared.
    pub(super) predicted_shard: Option<Arc<str>>,
    pub(super) aggregated: bool,
    pub(super) attempts: u32,
    /// Why the last call did not take it (shared by the entries one answer failed alike);
    /// empty before any.
    pub(super) last_error: Arc<str>,
    pub(super) deadline: Instant,
}

impl Entry {
    pub(super) fn single(p: Pending, predicted_shard: Option<Arc<str>>) -> Self {
        Self {
            partition_key: p.record.partition_key.clone(),
            explicit_hash_key: p.record.explicit_hash_key.clone(),
            data: p.record.data.clone(),
            deadline: p.deadline,
            members: vec![p],
            predicted_shard,
            aggregated: false,
            attempts: 0,
            last_error: "".into(),
        }
    }

    /// Bytes the entry counts for against the `PutRecords` size limits.
    pub(super) fn size(&self) -> usize {
        self.data_len() + self.partition_key.len()
    }

    /// Bytes of the data Kinesis stores: an aggregate's with its digest.
    pub(super) fn data_len(&self) -> usize {
        self.data.len() + if self.aggregated { DIGEST_LEN } else { 0 }
    }

    /// Takes the entry apart into its records, each carrying the calls it was in.
    pub(super) fn into_members(self) -> impl Iterator<Item = Pending> {
        let attempts = self.attempts;
        self.members.into_iter().map(move |mut p| {
            p.earlier_attempts += attempts;
            p
        })
    }

    pub(super) fn fail(self, err: SendError, out: &mut Resolution<'_>) {
        if let Some(m) = out.metrics() {
            m.failed(err.code(), self.members.len() as u64);
        }
        for p in self.members {
            out.resolve(p, Err(err.clone()));
        }
    }

    /// Resolves every member's receipt with an [`Ack`]: the one place an `Ack` is made.
    pub(super) fn succeed(self, shard_id: &str, sequence_number: &str, out: &mut Resolution<'_>) {
        if let Some(m) = out.metrics() {
            let n = self.members.len() as u64;
            m.kinesis_records_put.inc();
            m.user_records_put.inc_by(n);
            m.user_records_per_kinesis_record.observe(n as f64);
        }
        let aggregated = self.aggregated;
        let (shard_id, sequence_number): (Arc<str>, Arc<str>) =
            (shard_id.into(), sequence_number.into());
        let attempts = self.attempts;
        for (i, p) in self.members.into_iter().enumerate() {
            let ack = Ack {
                shard_id: shard_id.clone(),
                sequence_number: sequence_number.clone(),
                sub_sequence_number: aggregated.then_some(i as u64),
                attempts: attempts + p.earlier_attempts,
            };
            out.resolve(p, Ok(ack));
        }
    }
}

/// A record as the buffer holds it, for unit tests of the modules that work on them; the
/// receiver is its receipt.
#[cfg(test)]
pub(super) fn test_pending(
    record: ProducerRecord,
    deadline: Instant,
) -> (
    Pending,
    tokio::sync::oneshot::Receiver<Result<Ack, SendError>>,
) {
    use std::sync::OnceLock;
    use tokio::sync::Semaphore;
    // One pair for every test record, as a producer's: an entry merges its members' permits.
    static BUFFER: OnceLock<(Arc<Semaphore>, Arc<Semaphore>)> = OnceLock::new();
    let (records, bytes) = BUFFER.get_or_init(|| {
        let semaphore = || Arc::new(Semaphore::new(Semaphore::MAX_PERMITS));
        (semaphore(), semaphore())
    });
    let permit = |s: &Arc<Semaphore>| s.clone().try_acquire_owned().unwrap();
    let (done, rx) = tokio::sync::oneshot::channel();
    let pending = Pending {
        record,
        notify: Notify::Receipt(done),
        enqueued: Instant::now(),
        deadline,
        earlier_attempts: 0,
        _permits: (permit(records), permit(bytes)),
        _buffered: None,
    };
    (pending, rx)
}
