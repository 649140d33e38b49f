//! One held lease's shard: wait for the parents, read from the checkpoint, hand batches to the
//! processor, and end in exactly one of: shard ended, shutdown requested, lease lost.
//!
//! Cancellation is checked between batches only (and during the reader's waits), so a batch in
//! hand is always processed and checkpointed before a graceful stop. When the lease is lost the
//! task stops at once, whatever it was waiting for, and the processor hears `lease_lost`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::backoff::Backoff;
use common::config::InitialPosition;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::held::{HeldLease, LeaseWriteError};
use super::processor::{Checkpointer, InitializationInput, ProcessRecordsInput, RecordProcessor};
use super::sync::{parents_done, pending_parents};
use super::table::{Checkpoint, Lease, LeaseTable};
use crate::reader::{ReadError, ShardReader, StartPosition};

/// What every shard task of a worker shares.
pub(crate) struct ShardContext {
    pub kinesis: aws_sdk_kinesis::Client,
    pub table: LeaseTable,
    pub stream: String,
    pub worker_id: String,
    pub initial_position: InitialPosition,
    pub max_records: i32,
    pub poll_interval: Duration,
    /// How often a child re-reads its parents' leases while it waits.
    pub parent_poll: Duration,
    /// Asks the coordinator for a shard sync (a shard ended: its children need leases).
    pub sync_now: Arc<Notify>,
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
}

/// Where to read from, given the lease's checkpoint; `None` at `SHARD_END`.
pub(crate) fn start_position(
    checkpoint: &Checkpoint,
    initial: InitialPosition,
) -> Option<StartPosition> {
    Some(match checkpoint {
        Checkpoint::ShardEnd => return None,
        Checkpoint::TrimHorizon => StartPosition::TrimHorizon,
        Checkpoint::Latest => StartPosition::Latest,
        Checkpoint::AtTimestamp => match initial {
            InitialPosition::AtTimestamp(t) => StartPosition::AtTimestamp(t),
            // A lease written elsewhere without our timestamp: read everything retained.
            _ => StartPosition::TrimHorizon,
        },
        // Inside an aggregated record: read it again, the processor skips what was done.
        Checkpoint::At(esn) if esn.sub_sequence_number > 0 => {
            StartPosition::AtSequence(esn.sequence_number.clone())
        }
        Checkpoint::At(esn) => StartPosition::AfterSequence(esn.sequence_number.clone()),
    })
}

pub(crate) async fn consume<P: RecordProcessor>(
    ctx: Arc<ShardContext>,
    held: Arc<HeldLease>,
    mut processor: P,
    stop: CancellationToken,
) -> ShardOutcome {
    let lease = held.snapshot().await;
    let shard_id = lease.key.clone();
    if let Some(outcome) = wait_for_parents(&ctx, &held, &lease, &stop).await {
        return outcome;
    }
    // The parents may have been waited for a while: the checkpoint is what was taken, and only
    // this worker can have changed it since.
    let lease = held.snapshot().await;
    let Some(start) = start_position(&lease.checkpoint, ctx.initial_position) else {
        return ShardOutcome::Ended;
    };
    let checkpointer = Checkpointer::new(held.clone(), &lease.checkpoint);
    if let Err(err) = processor
        .initialize(InitializationInput {
            shard_id: shard_id.clone(),
            checkpoint: lease.checkpoint.clone(),
            hash_key_range: lease.hash_key_range.clone(),
        })
        .await
    {
        return ShardOutcome::Failed(format!("initialize: {err:#}"));
    }
    let mut reader = ShardReader::new(
        ctx.kinesis.clone(),
        &ctx.stream,
        &shard_id,
        start,
        ctx.max_records,
        ctx.poll_interval,
    );
    loop {
        let batch = tokio::select! {
            biased;
            _ = held.lost().cancelled() => return lost(&mut processor).await,
            batch = reader.next_batch(&stop) => batch,
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(ReadError::Cancelled) => return shutdown(&mut processor, &checkpointer).await,
            Err(err @ ReadError::Fatal { .. }) => return ShardOutcome::Failed(err.to_string()),
        };
        if held.is_lost() {
            return lost(&mut processor).await;
        }
        if let Some(last) = batch.records.last() {
            checkpointer.delivered(last.sequence_number());
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            loop {
                let input = ProcessRecordsInput {
                    records: &batch.records,
                    millis_behind_latest: batch.millis_behind_latest,
                    checkpointer: &checkpointer,
                };
                let Err(err) = processor.process_records(input).await else {
                    break;
                };
                if held.is_lost() {
                    return lost(&mut processor).await;
                }
                let delay = backoff.next_delay();
                tracing::error!(shard_id = %shard_id, error = %format!("{err:#}"), retry_in_ms = delay.as_millis() as u64, "processing a batch failed, offering it again");
                tokio::select! {
                    _ = held.lost().cancelled() => return lost(&mut processor).await,
                    // Not processed: it is delivered again to whoever holds the lease next.
                    _ = stop.cancelled() => return shutdown(&mut processor, &checkpointer).await,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            if held.is_lost() {
                return lost(&mut processor).await;
            }
        }
        if let Some(children) = batch.ended {
            return end_shard(&ctx, &held, &mut processor, &checkpointer, &children).await;
        }
        if stop.is_cancelled() {
            return shutdown(&mut processor, &checkpointer).await;
        }
    }
}

async fn lost<P: RecordProcessor>(processor: &mut P) -> ShardOutcome {
    processor.lease_lost().await;
    ShardOutcome::Lost
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
            Err(LeaseWriteError::LeaseLost(_)) => return lost(processor).await,
            Err(LeaseWriteError::Failed(message)) if backoff.attempts() < 5 => {
                tracing::warn!(shard_id = %held.shard_id(), error = %message, "SHARD_END checkpoint failed, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(LeaseWriteError::Failed(message)) => {
                return ShardOutcome::Failed(format!("SHARD_END checkpoint: {message}"))
            }
        }
    }
}

/// Waits until every parent is at `SHARD_END` (or has no lease). `Some` when the task must end
/// instead.
async fn wait_for_parents(
    ctx: &ShardContext,
    held: &HeldLease,
    lease: &Lease,
    stop: &CancellationToken,
) -> Option<ShardOutcome> {
    let mut logged = false;
    loop {
        let mut parents: HashMap<String, Option<Lease>> = HashMap::new();
        let mut unreadable = false;
        for parent in &lease.parent_shard_ids {
            match ctx.table.get(parent).await {
                Ok(found) => {
                    parents.insert(parent.clone(), found);
                }
                Err(err) => {
                    tracing::warn!(shard_id = %lease.key, parent = %parent, error = %format!("{err:#}"), "cannot read a parent lease");
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
            _ = held.lost().cancelled() => return Some(ShardOutcome::Lost),
            _ = stop.cancelled() => return Some(ShardOutcome::Stopped),
            _ = tokio::time::sleep(ctx.parent_poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::table::ExtendedSequenceNumber;

    #[test]
    fn a_checkpoint_resumes_after_its_record_or_at_a_partly_processed_aggregate() {
        let at = |seq: &str, sub| Checkpoint::At(ExtendedSequenceNumber::new(seq, sub));
        let p = InitialPosition::TrimHorizon;
        assert_eq!(
            start_position(&at("42", 0), p),
            Some(StartPosition::AfterSequence("42".into()))
        );
        assert_eq!(
            start_position(&at("42", 3), p),
            Some(StartPosition::AtSequence("42".into()))
        );
        assert_eq!(start_position(&Checkpoint::ShardEnd, p), None);
        assert_eq!(
            start_position(&Checkpoint::Latest, p),
            Some(StartPosition::Latest)
        );
        assert_eq!(
            start_position(&Checkpoint::AtTimestamp, p),
            Some(StartPosition::TrimHorizon)
        );
        let t = chrono::Utc::now();
        assert_eq!(
            start_position(&Checkpoint::AtTimestamp, InitialPosition::AtTimestamp(t)),
            Some(StartPosition::AtTimestamp(t))
        );
    }
}
