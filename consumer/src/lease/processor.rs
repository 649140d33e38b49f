//! The library API of leased mode: a [`RecordProcessor`] per shard lease, and the
//! [`Checkpointer`] it records its progress with. Modelled on the Java KCL 2.x
//! `ShardRecordProcessor`.
//!
//! Life of one processor (one shard, one lease):
//! 1. [`RecordProcessor::initialize`] with the checkpoint it resumes after.
//! 2. [`RecordProcessor::process_records`] for every non-empty batch of user records, in shard
//!    order: KPL aggregates are unpacked, and what the checkpoint covers is skipped, by the
//!    library. An `Err` applies the worker's failure policy ([`super::FailurePolicy`]); by
//!    default the same batch is offered again after a pause, for ever (nothing is skipped), so
//!    make processing idempotent. A [`ShardFailed`] error instead releases the lease: the shard
//!    is read again later from its checkpoint. With
//!    [`RecordProcessor::process_empty_batches`], reads that brought nothing are delivered too.
//! 3. Exactly one ending:
//!    - [`RecordProcessor::shard_ended`]: every record was processed; after it returns `Ok` the
//!      worker checkpoints the lease at `SHARD_END`, which lets the children start.
//!    - [`RecordProcessor::shutdown_requested`]: the worker is stopping, or another worker took
//!      the lease with a graceful handoff; checkpoint what was processed, the lease is handed
//!      over (or released) right after.
//!    - [`RecordProcessor::lease_lost`]: another worker holds the shard now; checkpointing is no
//!      longer possible, stop quickly.
//!
//! Delivery is at-least-once: records after the last checkpoint are delivered again to whoever
//! holds the lease next. Checkpoint only what was processed.

use std::future::Future;
use std::sync::{Arc, Mutex};

use super::held::{HeldLease, LeaseWriteError};
use super::table::{is_sequence_number, Checkpoint, ExtendedSequenceNumber};
pub use crate::record::KinesisClientRecord;

/// What [`RecordProcessor::initialize`] learns.
#[derive(Debug, Clone)]
pub struct InitializationInput {
    /// The shard this processor is given.
    pub shard_id: String,
    /// Where processing resumes: every user record up to and including a [`Checkpoint::At`]
    /// position was processed before, and is not delivered again (the library skips it, even
    /// inside a KPL aggregate). `LATEST` means: from the time the application first read this
    /// shard (pinned in the lease, so a new holder starts there too).
    pub checkpoint: Checkpoint,
    /// A position a previous holder prepared with [`Checkpointer::prepare_checkpoint`] and did
    /// not commit (the lease's `pendingCheckpoint`), for a processor that must finish what it
    /// prepared. Processing still resumes from [`InitializationInput::checkpoint`].
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// The shard's `(startingHashKey, endingHashKey)`, when the lease records it.
    pub hash_key_range: Option<(String, String)>,
}

/// One batch of user records, in shard order.
pub struct ProcessRecordsInput<'a> {
    /// Deaggregated: each member of a KPL aggregate is one record here.
    pub records: &'a [KinesisClientRecord],
    /// How far behind the tip of the shard the read was, when Kinesis says.
    pub millis_behind_latest: Option<i64>,
    /// Records what was processed (see [`Checkpointer`]).
    pub checkpointer: &'a Checkpointer,
}

/// Handles the user records of one shard. One instance per lease taken; see the module docs
/// for the order of calls.
///
/// ```no_run
/// use kinesis_consumer::lease::{
///     Checkpointer, InitializationInput, ProcessRecordsInput, RecordProcessor,
///     RecordProcessorFactory,
/// };
///
/// /// Counts the bytes of each shard and checkpoints after every batch.
/// struct Counter {
///     bytes: usize,
/// }
///
/// impl RecordProcessor for Counter {
///     async fn initialize(&mut self, input: InitializationInput) -> anyhow::Result<()> {
///         println!("{} resumes after {}", input.shard_id, input.checkpoint);
///         Ok(())
///     }
///
///     async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> anyhow::Result<()> {
///         self.bytes += input.records.iter().map(|r| r.data.len()).sum::<usize>();
///         // Everything delivered so far was processed: record it.
///         input.checkpointer.checkpoint().await?;
///         Ok(())
///     }
///
///     async fn lease_lost(&mut self) {}
///
///     async fn shard_ended(&mut self, _: &Checkpointer) -> anyhow::Result<()> {
///         Ok(())
///     }
///
///     async fn shutdown_requested(&mut self, checkpointer: &Checkpointer) -> anyhow::Result<()> {
///         // Nothing is delivered after a shutdown request: commit what was processed.
///         checkpointer.checkpoint().await.or_else(|e| e.unless_nothing_delivered())?;
///         Ok(())
///     }
/// }
///
/// struct Counters;
///
/// impl RecordProcessorFactory for Counters {
///     type Processor = Counter;
///     fn create(&self, _shard_id: &str) -> Counter {
///         Counter { bytes: 0 }
///     }
/// }
/// ```
pub trait RecordProcessor: Send + 'static {
    /// Called once, before any records: where the shard resumes.
    fn initialize(
        &mut self,
        input: InitializationInput,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Processes one batch. An `Err` applies the worker's [`FailurePolicy`](super::FailurePolicy)
    /// (`crate::lease::FailurePolicy`): by default the same records are offered again after a
    /// pause, for ever.
    fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The lease is gone: do not checkpoint (it would fail), release resources.
    fn lease_lost(&mut self) -> impl Future<Output = ()> + Send;

    /// Every record of the shard was delivered; `SHARD_END` is written after this returns `Ok`.
    fn shard_ended(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// The worker is stopping (SIGTERM) or handing the lease to another worker: checkpoint
    /// what was processed; keep it short, the process exits within 5 seconds.
    fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Whether [`RecordProcessor::process_records`] is also called for a read that brought no
    /// new record (the Java KCL's `callProcessRecordsEvenForEmptyRecordList`), outside the
    /// failure policy: an `Err` then fails the shard. Default: no.
    fn process_empty_batches(&self) -> bool {
        false
    }
}

/// Makes a processor for each lease the worker takes.
pub trait RecordProcessorFactory: Send + Sync + 'static {
    /// The processor it makes.
    type Processor: RecordProcessor;
    /// A new processor for the lease of `shard_id`.
    fn create(&self, shard_id: &str) -> Self::Processor;
}

/// Why a checkpoint was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Another worker holds the shard now; stop processing it.
    #[error("lease of shard {0} lost: another worker holds it")]
    LeaseLost(String),
    /// A position that was not delivered yet, before the last checkpoint (for a prepared
    /// one), or not a sequence number; or nothing was delivered yet.
    #[error("cannot checkpoint shard {shard_id} at {position}: {reason}")]
    Invalid {
        /// The shard.
        shard_id: String,
        /// The position asked for.
        position: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// DynamoDB failed (after the SDK's retries); the checkpoint may be tried again.
    #[error("checkpoint of shard {shard_id} failed: {message}")]
    Failed {
        /// The shard.
        shard_id: String,
        /// DynamoDB's error.
        message: String,
    },
}

impl CheckpointError {
    /// `Ok` for the error [`Checkpointer::checkpoint`] gives when no record was delivered yet
    /// (there is nothing to record), the error itself otherwise.
    pub fn unless_nothing_delivered(self) -> Result<(), CheckpointError> {
        match self {
            CheckpointError::Invalid { reason, .. } if reason == NOTHING_DELIVERED => Ok(()),
            other => Err(other),
        }
    }
}

const NOTHING_DELIVERED: &str = "no record was delivered yet";

/// An error [`RecordProcessor::process_records`] returns to stop the shard at once instead of
/// applying the failure policy: the batch is not processed, the lease is released, and the
/// shard is taken again later (by this worker after a backoff) from its checkpoint. For a
/// processor that cannot go on at all, such as a child process that died.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShardFailed(pub String);

#[derive(Debug, Default)]
struct Progress {
    /// Last user record handed to the processor, and not in a batch whose processing failed
    /// since: a checkpoint may not go beyond it.
    delivered: Option<ExtendedSequenceNumber>,
    checkpointed: Option<ExtendedSequenceNumber>,
}

/// Records how far a shard was processed, in the lease. Cheap to clone.
///
/// A checkpoint says: every user record up to and including this position was processed, so
/// whoever holds the lease next starts after it. It may not go beyond the last record
/// delivered; one at or before the last checkpoint is accepted and not written.
///
/// ```no_run
/// # async fn example(
/// #     checkpointer: &kinesis_consumer::lease::Checkpointer,
/// #     records: &[kinesis_consumer::lease::KinesisClientRecord],
/// # ) -> anyhow::Result<()> {
/// // After the last record delivered:
/// checkpointer.checkpoint().await?;
/// // After one record (say, the last one written to a database):
/// checkpointer.checkpoint_record(&records[0]).await?;
/// // Two phases: record the intent, do the work elsewhere, then commit.
/// let prepared = checkpointer.prepare_checkpoint().await?;
/// // ... flush to the sink ...
/// prepared.checkpoint().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Checkpointer {
    lease: Arc<HeldLease>,
    progress: Arc<Mutex<Progress>>,
}

impl Checkpointer {
    pub(crate) fn new(lease: Arc<HeldLease>, resumed_from: &Checkpoint) -> Self {
        let checkpointed = match resumed_from {
            Checkpoint::At(esn) => Some(esn.clone()),
            _ => None,
        };
        Self {
            lease,
            progress: Arc::new(Mutex::new(Progress {
                delivered: None,
                checkpointed,
            })),
        }
    }

    /// The shard this checkpointer records.
    pub fn shard_id(&self) -> &str {
        self.lease.shard_id()
    }

    /// Called by the worker before records are handed over: `last` is the last one.
    pub(crate) fn delivered(&self, last: ExtendedSequenceNumber) {
        if let Ok(mut p) = self.progress.lock() {
            p.delivered = Some(last);
        }
    }

    /// Called by the worker when processing the records handed over last failed: what was
    /// delivered before them (`None`: nothing) is again the most a checkpoint may record.
    pub(crate) fn rewind_delivered(&self, to: Option<ExtendedSequenceNumber>) {
        if let Ok(mut p) = self.progress.lock() {
            p.delivered = to;
        }
    }

    /// The last position written by this checkpointer (or resumed from).
    pub fn last_checkpoint(&self) -> Option<ExtendedSequenceNumber> {
        self.progress
            .lock()
            .ok()
            .and_then(|p| p.checkpointed.clone())
    }

    /// The last user record handed to the processor, if any, leaving out those of a batch
    /// whose `process_records` returned `Err` (until they are offered again).
    pub fn last_delivered(&self) -> Option<ExtendedSequenceNumber> {
        self.progress.lock().ok().and_then(|p| p.delivered.clone())
    }

    /// Records that every user record delivered so far was processed.
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        let last = self.last_delivered_or_error()?;
        self.write(last, false).await
    }

    /// Records that every user record up to and including `record` was processed.
    pub async fn checkpoint_record(
        &self,
        record: &KinesisClientRecord,
    ) -> Result<(), CheckpointError> {
        self.checkpoint_at(&record.sequence_number, record.sub_sequence_number)
            .await
    }

    /// Records that every user record up to and including `(sequence_number,
    /// sub_sequence_number)` was processed (0 for a record that is not from an aggregate).
    pub async fn checkpoint_at(
        &self,
        sequence_number: &str,
        sub_sequence_number: i64,
    ) -> Result<(), CheckpointError> {
        let position = self.valid(sequence_number, sub_sequence_number)?;
        self.write(position, false).await
    }

    /// The first phase of a two-phase checkpoint at the last record delivered: writes the
    /// position to the lease's `pendingCheckpoint` (the Java KCL's `prepareCheckpoint`), which
    /// the next holder learns from [`InitializationInput::pending_checkpoint`] should this one
    /// stop before [`PreparedCheckpointer::checkpoint`]. Processing resumes from the last
    /// committed checkpoint all the same.
    pub async fn prepare_checkpoint(&self) -> Result<PreparedCheckpointer, CheckpointError> {
        let last = self.last_delivered_or_error()?;
        self.prepare(last).await
    }

    /// [`Checkpointer::prepare_checkpoint`] at a given position (not before the last
    /// checkpoint, not after the last record delivered).
    pub async fn prepare_checkpoint_at(
        &self,
        sequence_number: &str,
        sub_sequence_number: i64,
    ) -> Result<PreparedCheckpointer, CheckpointError> {
        let position = self.valid(sequence_number, sub_sequence_number)?;
        self.prepare(position).await
    }

    fn invalid(&self, position: &ExtendedSequenceNumber, reason: &'static str) -> CheckpointError {
        CheckpointError::Invalid {
            shard_id: self.shard_id().to_string(),
            position: format!(
                "{}/{}",
                position.sequence_number, position.sub_sequence_number
            ),
            reason,
        }
    }

    fn last_delivered_or_error(&self) -> Result<ExtendedSequenceNumber, CheckpointError> {
        self.last_delivered()
            .ok_or_else(|| CheckpointError::Invalid {
                shard_id: self.shard_id().to_string(),
                position: "the last record delivered".into(),
                reason: NOTHING_DELIVERED,
            })
    }

    /// A position a checkpoint may name: a sequence number, not beyond what was delivered.
    fn valid(
        &self,
        sequence_number: &str,
        sub_sequence_number: i64,
    ) -> Result<ExtendedSequenceNumber, CheckpointError> {
        let position = ExtendedSequenceNumber::new(sequence_number, sub_sequence_number);
        if !is_sequence_number(sequence_number) || sub_sequence_number < 0 {
            return Err(self.invalid(&position, "not a sequence number"));
        }
        let beyond = self
            .last_delivered()
            .is_none_or(|delivered| position > delivered);
        if beyond {
            return Err(self.invalid(&position, "beyond the last record delivered"));
        }
        Ok(position)
    }

    async fn prepare(
        &self,
        position: ExtendedSequenceNumber,
    ) -> Result<PreparedCheckpointer, CheckpointError> {
        if self.last_checkpoint().is_some_and(|c| position < c) {
            return Err(self.invalid(&position, "before the last checkpoint"));
        }
        let written = self.lease.prepare_checkpoint(&position).await;
        self.outcome(written)?;
        tracing::info!(
            shard_id = %self.shard_id(),
            worker_id = %self.lease.worker_id(),
            sequence_number = %position.sequence_number,
            sub_sequence_number = position.sub_sequence_number,
            "checkpoint prepared"
        );
        Ok(PreparedCheckpointer {
            checkpointer: self.clone(),
            position,
        })
    }

    /// Writes `position` unless the last checkpoint covers it (and nothing prepared is to be
    /// cleared: `commit`).
    async fn write(
        &self,
        position: ExtendedSequenceNumber,
        commit: bool,
    ) -> Result<(), CheckpointError> {
        if !commit && self.last_checkpoint().is_some_and(|c| position <= c) {
            return Ok(());
        }
        let written = self
            .lease
            .checkpoint(&Checkpoint::At(position.clone()), &[])
            .await;
        self.outcome(written)?;
        if let Some(o) = crate::observe::observer() {
            o.metrics.checkpoints.inc();
        }
        tracing::info!(
            shard_id = %self.shard_id(),
            worker_id = %self.lease.worker_id(),
            sequence_number = %position.sequence_number,
            sub_sequence_number = position.sub_sequence_number,
            "checkpoint"
        );
        if let Ok(mut p) = self.progress.lock() {
            p.checkpointed = Some(position);
        }
        Ok(())
    }

    fn outcome(&self, written: Result<(), LeaseWriteError>) -> Result<(), CheckpointError> {
        let error = match written {
            Ok(()) => return Ok(()),
            Err(LeaseWriteError::LeaseLost(shard)) => CheckpointError::LeaseLost(shard),
            Err(LeaseWriteError::Failed { message, .. }) => CheckpointError::Failed {
                shard_id: self.shard_id().to_string(),
                message,
            },
        };
        if let Some(o) = crate::observe::observer() {
            o.metrics.checkpoint_failures.inc();
        }
        Err(error)
    }
}

/// The second phase of a two-phase checkpoint (see [`Checkpointer::prepare_checkpoint`]).
pub struct PreparedCheckpointer {
    checkpointer: Checkpointer,
    position: ExtendedSequenceNumber,
}

impl PreparedCheckpointer {
    /// The position prepared.
    pub fn position(&self) -> &ExtendedSequenceNumber {
        &self.position
    }

    /// Commits the prepared position as the checkpoint (clearing `pendingCheckpoint`, even
    /// when the checkpoint was there already).
    pub async fn checkpoint(&self) -> Result<(), CheckpointError> {
        self.checkpointer.write(self.position.clone(), true).await
    }
}

/// The service's processor: logs each user record (`record received`, or a warning naming the
/// shard and sequence number for one that is not a `DataMessage`) and checkpoints after each
/// batch, so a crash repeats at most the batch in hand.
#[derive(Debug)]
pub struct LoggingProcessor {
    shard_id: String,
}

/// Makes a [`LoggingProcessor`] per shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingProcessorFactory;

impl RecordProcessorFactory for LoggingProcessorFactory {
    type Processor = LoggingProcessor;

    fn create(&self, shard_id: &str) -> LoggingProcessor {
        LoggingProcessor {
            shard_id: shard_id.to_string(),
        }
    }
}

impl RecordProcessor for LoggingProcessor {
    async fn initialize(&mut self, input: InitializationInput) -> anyhow::Result<()> {
        tracing::info!(shard_id = %input.shard_id, checkpoint = %input.checkpoint, "processing shard");
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> anyhow::Result<()> {
        for record in input.records {
            crate::record::log_user_record(&self.shard_id, &record.as_user_record());
        }
        match input.checkpointer.checkpoint().await {
            // A later batch's checkpoint covers this one; meanwhile a crash repeats a bit more.
            Err(CheckpointError::Failed { message, .. }) => {
                tracing::warn!(shard_id = %self.shard_id, error = %message, "checkpoint failed, the next batch will try again");
                Ok(())
            }
            // The records were logged; the shard task stops on its own (`lease lost` is logged
            // where it was noticed), and the next holder repeats them.
            Err(CheckpointError::LeaseLost(_)) => Ok(()),
            other => other.map_err(Into::into),
        }
    }

    async fn lease_lost(&mut self) {}

    async fn shard_ended(&mut self, _checkpointer: &Checkpointer) -> anyhow::Result<()> {
        Ok(())
    }

    async fn shutdown_requested(&mut self, _checkpointer: &Checkpointer) -> anyhow::Result<()> {
        // Every batch was checkpointed as it was processed.
        Ok(())
    }
}
