//! The library API of leased mode: a [`RecordProcessor`] per shard lease, and the
//! [`Checkpointer`] it records its progress with. Modelled on the Java KCL 2.x
//! `ShardRecordProcessor`.
//!
//! Life of one processor (one shard, one lease):
//! 1. [`RecordProcessor::initialize`] with the checkpoint it resumes after.
//! 2. [`RecordProcessor::process_records`] for every non-empty batch, in shard order. An `Err`
//!    makes the worker offer the same batch again after a pause (at-least-once: nothing is
//!    skipped), so make processing idempotent.
//! 3. Exactly one ending:
//!    - [`RecordProcessor::shard_ended`]: every record was processed; after it returns `Ok` the
//!      worker checkpoints the lease at `SHARD_END`, which lets the children start.
//!    - [`RecordProcessor::shutdown_requested`]: the worker is stopping; checkpoint what was
//!      processed, the lease is released right after.
//!    - [`RecordProcessor::lease_lost`]: another worker holds the shard now; checkpointing is no
//!      longer possible, stop quickly.
//!
//! Delivery is at-least-once: records after the last checkpoint are delivered again to whoever
//! holds the lease next. Checkpoint only what was processed.

use std::future::Future;
use std::sync::{Arc, Mutex};

use aws_sdk_kinesis::types::Record;

use super::held::{HeldLease, LeaseWriteError};
use super::table::{is_sequence_number, Checkpoint, ExtendedSequenceNumber};

/// What [`RecordProcessor::initialize`] learns.
#[derive(Debug, Clone)]
pub struct InitializationInput {
    pub shard_id: String,
    /// Where processing resumes: records up to and including a [`Checkpoint::At`] position were
    /// processed before. The shard is read again *at* that sequence number (the Java KCL's
    /// rule): the checkpointed record is dropped when it is an ordinary record or a KPL
    /// aggregate with nothing after the checkpoint; otherwise the first batch starts with that
    /// aggregate, whole, and the processor skips its user records up to and including the
    /// checkpoint's sub-sequence number (even 0: the first user record was processed).
    /// `LATEST` means: from the time the application first read this shard (pinned in the
    /// lease, so a new holder starts there too).
    pub checkpoint: Checkpoint,
    /// The shard's `(startingHashKey, endingHashKey)`, when the lease records it.
    pub hash_key_range: Option<(String, String)>,
}

/// One batch of records.
pub struct ProcessRecordsInput<'a> {
    pub records: &'a [Record],
    pub millis_behind_latest: Option<i64>,
    pub checkpointer: &'a Checkpointer,
}

/// Handles the records of one shard. One instance per lease taken; see the module docs for the
/// order of calls.
pub trait RecordProcessor: Send + 'static {
    fn initialize(
        &mut self,
        input: InitializationInput,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

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

    /// The worker is stopping (SIGTERM): checkpoint what was processed; keep it short, the
    /// process exits within 5 seconds.
    fn shutdown_requested(
        &mut self,
        checkpointer: &Checkpointer,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Makes a processor for each lease the worker takes.
pub trait RecordProcessorFactory: Send + Sync + 'static {
    type Processor: RecordProcessor;
    fn create(&self, shard_id: &str) -> Self::Processor;
}

/// Why a checkpoint was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Another worker holds the shard now; stop processing it.
    #[error("lease of shard {0} lost: another worker holds it")]
    LeaseLost(String),
    /// A position that was not delivered yet, or not a sequence number.
    #[error("cannot checkpoint shard {shard_id} at {position}: {reason}")]
    Invalid {
        shard_id: String,
        position: String,
        reason: &'static str,
    },
    /// DynamoDB failed (after the SDK's retries); the checkpoint may be tried again.
    #[error("checkpoint of shard {shard_id} failed: {message}")]
    Failed { shard_id: String, message: String },
}

#[derive(Debug, Default)]
struct Progress {
    /// Largest sequence number handed to the processor: a checkpoint may not go beyond it.
    delivered: Option<String>,
    checkpointed: Option<ExtendedSequenceNumber>,
}

/// Records how far a shard was processed, in the lease. Cheap to clone.
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

    pub fn shard_id(&self) -> &str {
        self.lease.shard_id()
    }

    /// Called by the worker before a batch is handed over.
    pub(crate) fn delivered(&self, sequence_number: &str) {
        if let Ok(mut p) = self.progress.lock() {
            p.delivered = Some(sequence_number.to_string());
        }
    }

    /// The last position written by this checkpointer (or resumed from).
    pub fn last_checkpoint(&self) -> Option<ExtendedSequenceNumber> {
        self.progress
            .lock()
            .ok()
            .and_then(|p| p.checkpointed.clone())
    }

    /// Records that every record up to and including `(sequence_number, sub_sequence_number)`
    /// was processed. A position at or before the last checkpoint is accepted and not written.
    pub async fn checkpoint(
        &self,
        sequence_number: &str,
        sub_sequence_number: i64,
    ) -> Result<(), CheckpointError> {
        let position = ExtendedSequenceNumber::new(sequence_number, sub_sequence_number);
        let invalid = |reason| CheckpointError::Invalid {
            shard_id: self.shard_id().to_string(),
            position: format!("{sequence_number}/{sub_sequence_number}"),
            reason,
        };
        if !is_sequence_number(sequence_number) || sub_sequence_number < 0 {
            return Err(invalid("not a sequence number"));
        }
        {
            let progress = self.progress.lock().map_err(|_| invalid("poisoned"))?;
            let beyond = progress
                .delivered
                .as_deref()
                .is_none_or(|d| super::table::compare_sequence_numbers(sequence_number, d).is_gt());
            if beyond {
                return Err(invalid("beyond the last record delivered"));
            }
            if progress
                .checkpointed
                .as_ref()
                .is_some_and(|c| position <= *c)
            {
                return Ok(());
            }
        }
        match self
            .lease
            .checkpoint(&Checkpoint::At(position.clone()), &[])
            .await
        {
            Ok(()) => {
                if let Some(o) = crate::observe::observer() {
                    o.metrics.checkpoints.inc();
                }
                tracing::info!(
                    shard_id = %self.shard_id(),
                    worker_id = %self.lease.worker_id(),
                    sequence_number = %sequence_number,
                    sub_sequence_number,
                    "checkpoint"
                );
                if let Ok(mut p) = self.progress.lock() {
                    p.checkpointed = Some(position);
                }
                Ok(())
            }
            Err(LeaseWriteError::LeaseLost(shard)) => {
                if let Some(o) = crate::observe::observer() {
                    o.metrics.checkpoint_failures.inc();
                }
                Err(CheckpointError::LeaseLost(shard))
            }
            Err(LeaseWriteError::Failed { message, .. }) => {
                if let Some(o) = crate::observe::observer() {
                    o.metrics.checkpoint_failures.inc();
                }
                Err(CheckpointError::Failed {
                    shard_id: self.shard_id().to_string(),
                    message,
                })
            }
        }
    }
}

/// The service's processor: expands KPL aggregates, logs each user record (`record received`)
/// and checkpoints after each batch at its last user record, so a crash repeats at most the
/// batch in hand.
#[derive(Debug)]
pub struct LoggingProcessor {
    shard_id: String,
    hash_range: Option<(u128, u128)>,
    /// Resumed inside an aggregate: its user records up to here were already processed.
    resume_after: Option<ExtendedSequenceNumber>,
}

/// Makes a [`LoggingProcessor`] per shard.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingProcessorFactory;

impl RecordProcessorFactory for LoggingProcessorFactory {
    type Processor = LoggingProcessor;

    fn create(&self, shard_id: &str) -> LoggingProcessor {
        LoggingProcessor {
            shard_id: shard_id.to_string(),
            hash_range: None,
            resume_after: None,
        }
    }
}

impl RecordProcessor for LoggingProcessor {
    async fn initialize(&mut self, input: InitializationInput) -> anyhow::Result<()> {
        tracing::info!(shard_id = %input.shard_id, checkpoint = %input.checkpoint, "processing shard");
        self.hash_range = input
            .hash_key_range
            .and_then(|(start, end)| Some((start.parse().ok()?, end.parse().ok()?)));
        if let Checkpoint::At(esn) = input.checkpoint {
            self.resume_after = Some(esn);
        }
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> anyhow::Result<()> {
        let mut last = None;
        for record in input.records {
            let users = crate::record::user_records(record);
            for user in users.iter() {
                let position = ExtendedSequenceNumber::new(
                    user.sequence_number,
                    user.sub_sequence_number.unwrap_or(0) as i64,
                );
                if self.resume_after.as_ref().is_some_and(|r| position <= *r) {
                    continue;
                }
                crate::record::warn_if_outside_range(&self.shard_id, self.hash_range, &user);
                crate::record::log_user_record(&self.shard_id, &user);
                last = Some(position);
            }
        }
        self.resume_after = None;
        let Some(last) = last else {
            return Ok(());
        };
        match input
            .checkpointer
            .checkpoint(&last.sequence_number, last.sub_sequence_number)
            .await
        {
            // A later batch's checkpoint covers this one; meanwhile a crash repeats a bit more.
            Err(CheckpointError::Failed { message, .. }) => {
                tracing::warn!(shard_id = %self.shard_id, error = %message, "checkpoint failed, the next batch will try again");
                Ok(())
            }
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
