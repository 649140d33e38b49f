//! One held lease's shard: wait for the parents, read from the checkpoint, hand batches to the
//! processor, and end in exactly one of: shard ended, shutdown requested, lease lost.
//!
//! Cancellation is checked between batches only (and during the reader's waits and calls), so
//! a batch in hand is always processed and checkpointed before a graceful stop. When the lease
//! is lost (another writer, or no successful write for the failover time) the task stops at
//! once, whatever it was doing, and the processor hears `lease_lost`.
//!
//! Where reading starts (the Java KCL's rule): at a checkpointed sequence number itself, not
//! after it, with the user records at or before the checkpoint skipped, so a checkpoint inside a
//! KPL aggregate (even at its first user record) resumes with the next user record. A `LATEST`
//! lease is pinned to the time it is first read (`latestStartTimestamp`) and every holder reads
//! from that time until the first real checkpoint, so a lease that moves before any record
//! arrived loses nothing written after the application first read the shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kinesis_common::backoff::Backoff;
use kinesis_common::config::InitialPosition;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::failure::{Deliverer, Delivery, FailurePolicy};
use super::held::{HeldLease, LeaseWriteError};
use super::processor::{
    Checkpointer, InitializationInput, KinesisClientRecord, ProcessRecordsInput, RecordProcessor,
};
use super::sync::{parents_done, pending_parents};
use super::table::{Checkpoint, ExtendedSequenceNumber, Lease, LeaseTable};
use crate::reader::{ReadError, StartPosition};
use crate::retrieval::Retrieval;

/// What every shard task of a worker shares.
pub(crate) struct ShardContext {
    pub kinesis: aws_sdk_kinesis::Client,
    pub table: LeaseTable,
    pub stream: String,
    pub worker_id: String,
    pub initial_position: InitialPosition,
    /// Polling or fan-out, ready to open shards.
    pub retrieval: Retrieval,
    /// How often a child re-reads its parents' leases while it waits.
    pub parent_poll: Duration,
    /// Asks the coordinator for a shard sync (a shard ended: its children need leases).
    pub sync_now: Arc<Notify>,
    /// What happens to a batch whose processing keeps failing.
    pub failure: FailurePolicy,
}

/// How a shard task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ShardOutcome {
    /// Read to its end and checkpointed at `SHARD_END` (now or earlier).
    Ended,
    /// Stop requested; the lease is released by the coordinator.
    Stopped,
    Lost,
    Failed(String),
    /// The stream was deleted: the whole worker has nothing left to do.
    StreamGone(String),
}

/// Where to read from, given the lease's checkpoint; `None` at `SHARD_END`. `LATEST` here is a
/// lease never pinned (see [`consume`]).
pub(crate) fn start_position(
    checkpoint: &Checkpoint,
    latest_start: Option<DateTime<Utc>>,
    initial: InitialPosition,
) -> Option<StartPosition> {
    Some(match checkpoint {
        Checkpoint::ShardEnd => return None,
        Checkpoint::TrimHorizon => StartPosition::TrimHorizon,
        Checkpoint::Latest => match latest_start {
            Some(at) => StartPosition::AtTimestamp(at),
            None => StartPosition::Latest,
        },
        Checkpoint::AtTimestamp => match initial {
            InitialPosition::AtTimestamp(t) => StartPosition::AtTimestamp(t),
            // A lease written elsewhere without our timestamp: read everything retained.
            _ => StartPosition::TrimHorizon,
        },
        // At the record itself: what of it was processed is skipped (see `Resume`).
        Checkpoint::At(esn) => StartPosition::AtSequence(esn.sequence_number.clone()),
    })
}

/// Drops what a checkpoint says was processed from the first user records read after it:
/// everything at or before the checkpointed position, so a checkpoint inside a KPL aggregate
/// (even at its first user record) resumes with the next user record.
#[derive(Debug)]
pub(crate) struct Resume {
    after: Option<ExtendedSequenceNumber>,
}

impl Resume {
    pub(crate) fn new(checkpoint: &Checkpoint) -> Self {
        Self {
            after: match checkpoint {
                Checkpoint::At(esn) => Some(esn.clone()),
                _ => None,
            },
        }
    }

    /// Filters one batch; from the first user record past the checkpoint on, passes everything.
    pub(crate) fn filter(
        &mut self,
        mut records: Vec<KinesisClientRecord>,
    ) -> Vec<KinesisClientRecord> {
        let Some(after) = &self.after else {
            return records;
        };
        let covered = records
            .iter()
            .take_while(|r| r.position() <= *after)
            .count();
        if covered < records.len() {
            self.after = None;
        }
        records.drain(..covered);
        records
    }
}

pub(crate) async fn consume<P: RecordProcessor>(
    ctx: Arc<ShardContext>,
    held: Arc<HeldLease>,
    mut processor: P,
    stop: CancellationToken,
) -> ShardOutcome {
    // The lease can be lost (or run out) at any point: that ends everything else at once.
    let outcome = tokio::select! {
        biased;
        _ = held.until_lost() => ShardOutcome::Lost,
        outcome = process(&ctx, &held, &mut processor, &stop) => outcome,
    };
    if outcome == ShardOutcome::Lost {
        processor.lease_lost().await;
    }
    outcome
}

async fn process<P: RecordProcessor>(
    ctx: &ShardContext,
    held: &Arc<HeldLease>,
    processor: &mut P,
    stop: &CancellationToken,
) -> ShardOutcome {
    let lease = held.snapshot().await;
    let shard_id = lease.key.clone();
    if let Some(outcome) = wait_for_parents(ctx, &lease, stop).await {
        return outcome;
    }
    held.parents_done();
    // The parents may have been waited for a while: the checkpoint is what was taken, and only
    // this worker can have changed it since.
    let mut lease = held.snapshot().await;
    if lease.checkpoint == Checkpoint::Latest && lease.latest_start.is_none() {
        match pin_latest(held, stop).await {
            Ok(at) => lease.latest_start = Some(at),
            Err(outcome) => return outcome,
        }
    }
    let Some(start) = start_position(&lease.checkpoint, lease.latest_start, ctx.initial_position)
    else {
        return ShardOutcome::Ended;
    };
    let checkpointer = Checkpointer::new(held.clone(), &lease.checkpoint);
    if let Err(err) = processor
        .initialize(InitializationInput {
            shard_id: shard_id.clone(),
            checkpoint: lease.checkpoint.clone(),
            pending_checkpoint: lease.pending_checkpoint.clone(),
            hash_key_range: lease.hash_key_range.clone(),
        })
        .await
    {
        return ShardOutcome::Failed(format!("initialize: {err:#}"));
    }
    let mut resume = Resume::new(&lease.checkpoint);
    let hash_range = crate::record::parse_hash_range(lease.hash_key_range.as_ref());
    let deliverer = Deliverer {
        policy: &ctx.failure,
        kinesis: &ctx.kinesis,
        stream: &ctx.stream,
        application: ctx.table.name(),
        worker_id: &ctx.worker_id,
        shard_id: &shard_id,
    };
    let mut reader = ctx
        .retrieval
        .open(ctx.kinesis.clone(), &ctx.stream, &shard_id, start);
    loop {
        let batch = match reader.next_batch(stop).await {
            Ok(batch) => batch,
            Err(ReadError::Cancelled) => return shutdown(processor, &checkpointer).await,
            Err(err @ ReadError::StreamGone { .. }) => {
                return ShardOutcome::StreamGone(err.to_string())
            }
        };
        let records = resume.filter(crate::record::deaggregate(
            &shard_id,
            hash_range,
            batch.records,
        ));
        if !records.is_empty() {
            match deliverer
                .deliver(
                    processor,
                    &checkpointer,
                    &records,
                    batch.millis_behind_latest,
                    stop,
                )
                .await
            {
                Delivery::Done => {}
                Delivery::Cancelled => return shutdown(processor, &checkpointer).await,
                Delivery::Failed(reason) => return ShardOutcome::Failed(reason),
                Delivery::Halted(reason) => {
                    // Keep the lease (the renewer goes on), read nothing more, until stopped.
                    drop(reader);
                    if let Some(o) = crate::observe::observer() {
                        o.shard_stopped(&shard_id, &reason);
                    }
                    stop.cancelled().await;
                    if let Some(o) = crate::observe::observer() {
                        o.shard_released(&shard_id);
                    }
                    return shutdown(processor, &checkpointer).await;
                }
            }
        } else if processor.process_empty_batches() {
            let input = ProcessRecordsInput {
                records: &[],
                millis_behind_latest: batch.millis_behind_latest,
                checkpointer: &checkpointer,
            };
            if let Err(err) = processor.process_records(input).await {
                return ShardOutcome::Failed(format!("{err:#}"));
            }
        }
        if let Some(children) = batch.ended {
            return end_shard(ctx, held, processor, &checkpointer, &children, stop).await;
        }
        if stop.is_cancelled() {
            return shutdown(processor, &checkpointer).await;
        }
    }
}

/// Pins a `LATEST` lease to now, retrying a failed write with backoff.
async fn pin_latest(
    held: &HeldLease,
    stop: &CancellationToken,
) -> Result<DateTime<Utc>, ShardOutcome> {
    let at = Utc::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match held.pin_latest(at).await {
            Ok(()) => {
                tracing::info!(shard_id = %held.shard_id(), worker_id = %held.worker_id(), at = %at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "LATEST pinned");
                return Ok(at);
            }
            Err(LeaseWriteError::LeaseLost(_)) => return Err(ShardOutcome::Lost),
            Err(LeaseWriteError::Failed { message, .. }) => {
                let delay = backoff.next_delay();
                tracing::warn!(shard_id = %held.shard_id(), error = %message, retry_in_ms = delay.as_millis() as u64, "pinning LATEST failed, retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Err(ShardOutcome::Stopped),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn shutdown<P: RecordProcessor>(
    processor: &mut P,
    checkpointer: &Checkpointer,
) -> ShardOutcome {
    if let Err(err) = processor.shutdown_requested(checkpointer).await {
        tracing::warn!(shard_id = %checkpointer.shard_id(), error = %format!("{err:#}"), "processor failed on shutdown");
    }
    ShardOutcome::Stopped
}

async fn end_shard<P: RecordProcessor>(
    ctx: &ShardContext,
    held: &HeldLease,
    processor: &mut P,
    checkpointer: &Checkpointer,
    children: &[String],
    stop: &CancellationToken,
) -> ShardOutcome {
    if let Err(err) = processor.shard_ended(checkpointer).await {
        return ShardOutcome::Failed(format!("shard_ended: {err:#}"));
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        match held.checkpoint(&Checkpoint::ShardEnd, children).await {
            Ok(()) => {
                tracing::info!(shard_id = %held.shard_id(), worker_id = %ctx.worker_id, child_shards = ?children, "shard ended");
                ctx.sync_now.notify_one();
                return ShardOutcome::Ended;
            }
            Err(LeaseWriteError::LeaseLost(_)) => return ShardOutcome::Lost,
            Err(LeaseWriteError::Failed { message, .. }) if backoff.attempts() < 5 => {
                tracing::warn!(shard_id = %held.shard_id(), error = %message, "SHARD_END checkpoint failed, retrying");
                tokio::select! {
                    // Read to the end but not checkpointed: the next holder reads it again.
                    _ = stop.cancelled() => return ShardOutcome::Stopped,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(LeaseWriteError::Failed { message, .. }) => {
                return ShardOutcome::Failed(format!("SHARD_END checkpoint: {message}"))
            }
        }
    }
}

/// Waits until every parent is at `SHARD_END` (or has no lease). `Some` when the task must end
/// instead. The coordinator takes a child only when its parents are done, so this waits only
/// for a lease taken some other way (an older version, or by hand).
async fn wait_for_parents(
    ctx: &ShardContext,
    lease: &Lease,
    stop: &CancellationToken,
) -> Option<ShardOutcome> {
    let mut logged = false;
    loop {
        let mut parents: HashMap<String, Option<Lease>> = HashMap::new();
        let mut unreadable = false;
        for parent in &lease.parent_shard_ids {
            let read = tokio::select! {
                _ = stop.cancelled() => return Some(ShardOutcome::Stopped),
                read = ctx.table.get(parent) => read,
            };
            match read {
                Ok(found) => {
                    parents.insert(parent.clone(), found);
                }
                Err(err) => {
                    tracing::warn!(shard_id = %lease.key, parent = %parent, error = %err, "cannot read a parent lease");
                    unreadable = true;
                }
            }
        }
        if !unreadable
            && parents_done(
                parents
                    .iter()
                    .map(|(id, lease)| (id.as_str(), lease.as_ref())),
            )
        {
            return None;
        }
        if !logged {
            tracing::info!(shard_id = %lease.key, worker_id = %ctx.worker_id, parents = ?pending_parents(lease, &parents), "waiting for parent shards to end");
            logged = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return Some(ShardOutcome::Stopped),
            _ = tokio::time::sleep(ctx.parent_poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::primitives::Blob;

    #[test]
    fn a_checkpoint_resumes_at_its_record() {
        let at = |seq: &str, sub| Checkpoint::At(ExtendedSequenceNumber::new(seq, sub));
        let p = InitialPosition::TrimHorizon;
        for sub in [0, 3] {
            assert_eq!(
                start_position(&at("42", sub), None, p),
                Some(StartPosition::AtSequence("42".into()))
            );
        }
        assert_eq!(start_position(&Checkpoint::ShardEnd, None, p), None);
        assert_eq!(
            start_position(&Checkpoint::Latest, None, p),
            Some(StartPosition::Latest)
        );
        let t = chrono::Utc::now();
        assert_eq!(
            start_position(&Checkpoint::Latest, Some(t), p),
            Some(StartPosition::AtTimestamp(t))
        );
        assert_eq!(
            start_position(&Checkpoint::AtTimestamp, None, p),
            Some(StartPosition::TrimHorizon)
        );
        assert_eq!(
            start_position(
                &Checkpoint::AtTimestamp,
                None,
                InitialPosition::AtTimestamp(t)
            ),
            Some(StartPosition::AtTimestamp(t))
        );
    }

    fn record(seq: &str, data: Vec<u8>) -> aws_sdk_kinesis::types::Record {
        aws_sdk_kinesis::types::Record::builder()
            .sequence_number(seq)
            .partition_key("k")
            .data(Blob::new(data))
            .build()
            .unwrap()
    }

    fn aggregate(members: usize) -> Vec<u8> {
        let mut agg = kinesis_common::kpl::Aggregator::new();
        for i in 0..members {
            agg.add(&format!("k{i}"), None, b"x");
        }
        agg.finish()
    }

    fn users(records: Vec<aws_sdk_kinesis::types::Record>) -> Vec<KinesisClientRecord> {
        crate::record::deaggregate("shardId-000000000000", None, records)
    }

    fn positions(records: &[KinesisClientRecord]) -> Vec<(String, i64)> {
        records
            .iter()
            .map(|r| (r.sequence_number.to_string(), r.sub_sequence_number))
            .collect()
    }

    fn p(seq: &str, sub: i64) -> (String, i64) {
        (seq.to_string(), sub)
    }

    #[test]
    fn what_the_checkpoint_covers_is_dropped_down_to_the_user_record() {
        let at = |seq: &str, sub| Checkpoint::At(ExtendedSequenceNumber::new(seq, sub));
        // An ordinary record at the checkpoint was processed.
        let mut resume = Resume::new(&at("10", 0));
        let out = resume.filter(users(vec![
            record("10", b"a".to_vec()),
            record("11", b"b".to_vec()),
        ]));
        assert_eq!(positions(&out), vec![p("11", 0)]);
        // The first user record of three: the other two come.
        let mut resume = Resume::new(&at("10", 0));
        let out = resume.filter(users(vec![
            record("10", aggregate(3)),
            record("11", b"b".to_vec()),
        ]));
        assert_eq!(positions(&out), vec![p("10", 1), p("10", 2), p("11", 0)]);
        assert!(out[0].aggregated && !out[2].aggregated);
        // Its last user record: nothing of it is left.
        let mut resume = Resume::new(&at("10", 2));
        let out = resume.filter(users(vec![record("10", aggregate(3))]));
        assert!(out.is_empty());
        // Once past the checkpoint, everything passes.
        let out = resume.filter(users(vec![record("12", aggregate(3))]));
        assert_eq!(out.len(), 3);
        // An empty batch keeps the filter for the next one; earlier records are dropped.
        let mut resume = Resume::new(&at("10", 0));
        assert!(resume.filter(Vec::new()).is_empty());
        let out = resume.filter(users(vec![
            record("9", b"a".to_vec()),
            record("10", b"a".to_vec()),
        ]));
        assert!(out.is_empty());
        let out = resume.filter(users(vec![record("11", b"a".to_vec())]));
        assert_eq!(positions(&out), vec![p("11", 0)]);
        let out = resume.filter(users(vec![record("10", b"a".to_vec())]));
        assert_eq!(positions(&out), vec![p("10", 0)], "the filter is spent");
        // No sequence-number checkpoint: nothing filtered.
        let mut resume = Resume::new(&Checkpoint::TrimHorizon);
        assert_eq!(
            resume.filter(users(vec![record("1", b"a".to_vec())])).len(),
            1
        );
    }
}
