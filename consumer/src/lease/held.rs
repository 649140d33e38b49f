//! A lease this worker holds, and every write it makes to it.
//!
//! Renewals (the renewer task), checkpoints (the shard's processor) and the final release all
//! go through one [`HeldLease`], serialised by an async mutex held across the one DynamoDB call:
//! each write is conditional on the counter the previous one returned, so two writes of our own
//! never trip over each other, and a failed condition really means another writer.
//!
//! A lease is lost, for good, when
//! - a conditional write fails and a consistent read shows another owner (or no owner),
//! - or no write succeeded for the failover time: from then on another worker may take it.
//!   A timer ([`HeldLease::until_lost`]) notices this on its own, even while every call hangs,
//!   so the shard stops being processed before anybody else can start on it.
//!
//! After that no write is attempted: a worker that lost a lease never checkpoints it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::aws::ErrorKind;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::table::{Checkpoint, ExtendedSequenceNumber, Lease, LeaseTable, WriteError};

/// Why a write on a held lease did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseWriteError {
    #[error("lease {0} is no longer held by this worker")]
    LeaseLost(String),
    /// The call failed; the lease is still ours until the failover time runs out.
    #[error("{message}")]
    Failed { kind: ErrorKind, message: String },
}

struct State {
    lease: Lease,
    /// Released: nothing more is written.
    done: bool,
}

pub struct HeldLease {
    shard_id: String,
    worker_id: String,
    table: LeaseTable,
    failover: Duration,
    state: Mutex<State>,
    /// When the last successful write was sent: the lease is ours until `failover` after it.
    /// Outside the mutex, so the expiry timer reads it while a write hangs.
    renewed: watch::Sender<Instant>,
    /// Cancelled when the lease is lost (not when it is released).
    lost: CancellationToken,
    lost_logged: AtomicBool,
}

impl HeldLease {
    /// Wraps a lease just taken (the item `take` returned), renewed at `taken_at`.
    pub fn new(
        lease: Lease,
        worker_id: &str,
        table: LeaseTable,
        failover: Duration,
        taken_at: Instant,
    ) -> Self {
        Self {
            shard_id: lease.key.clone(),
            worker_id: worker_id.to_string(),
            table,
            failover,
            state: Mutex::new(State { lease, done: false }),
            renewed: watch::Sender::new(taken_at),
            lost: CancellationToken::new(),
            lost_logged: AtomicBool::new(false),
        }
    }

    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// The lease as last written or read.
    pub async fn snapshot(&self) -> Lease {
        self.state.lock().await.lease.clone()
    }

    /// When the lease runs out unless a write succeeds before.
    fn expires_at(&self) -> Instant {
        *self.renewed.borrow() + self.failover
    }

    fn mark_lost(&self, reason: &str) {
        if !self.lost_logged.swap(true, Ordering::SeqCst) {
            if let Some(o) = crate::observe::observer() {
                o.metrics.leases_lost.inc();
            }
            tracing::warn!(shard_id = %self.shard_id, worker_id = %self.worker_id, reason = reason, "lease lost");
        }
        self.lost.cancel();
    }

    /// Returns once the lease is lost: another writer took it, or no write succeeded for the
    /// failover time (checked by a timer, not only when the next write is tried).
    pub async fn until_lost(&self) {
        let mut renewed = self.renewed.subscribe();
        loop {
            let expires_at = self.expires_at();
            tokio::select! {
                _ = self.lost.cancelled() => return,
                _ = renewed.changed() => {}
                _ = tokio::time::sleep_until(expires_at) => {
                    if Instant::now() >= self.expires_at() {
                        self.mark_lost("not renewed within the failover time");
                        return;
                    }
                }
            }
        }
    }

    /// Renews the lease. Returns `false` once it is lost.
    pub async fn renew(&self) -> bool {
        match self.write(&Op::Renew).await {
            Ok(()) => true,
            Err(LeaseWriteError::LeaseLost(_)) => false,
            Err(LeaseWriteError::Failed { message, .. }) => {
                tracing::warn!(shard_id = %self.shard_id, error = %message, "lease renewal failed, retrying at the next renewal");
                true
            }
        }
    }

    /// Writes a checkpoint (with the children, for `SHARD_END`).
    pub async fn checkpoint(
        &self,
        checkpoint: &Checkpoint,
        child_shard_ids: &[String],
    ) -> Result<(), LeaseWriteError> {
        self.write(&Op::Checkpoint(checkpoint, child_shard_ids))
            .await
    }

    /// Writes a prepared checkpoint (`pendingCheckpoint`).
    pub async fn prepare_checkpoint(
        &self,
        position: &ExtendedSequenceNumber,
    ) -> Result<(), LeaseWriteError> {
        self.write(&Op::Prepare(position)).await
    }

    /// Records where a `LATEST` lease is first read.
    pub async fn pin_latest(&self, at: DateTime<Utc>) -> Result<(), LeaseWriteError> {
        self.write(&Op::PinLatest(at)).await
    }

    /// Gives the lease up so another worker can take it at once. Nothing is written after.
    pub async fn release(&self) -> bool {
        let mut state = self.state.lock().await;
        if state.done || self.is_lost() {
            return false;
        }
        let released = self.send(&mut state, &Op::Release).await;
        state.done = true;
        match released {
            Ok(lease) => {
                state.lease = lease;
                tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, checkpoint = %state.lease.checkpoint, "lease released");
                true
            }
            Err(LeaseWriteError::LeaseLost(_)) => false,
            Err(LeaseWriteError::Failed { message, .. }) => {
                tracing::warn!(shard_id = %self.shard_id, error = %message, "lease release failed; it will expire instead");
                false
            }
        }
    }

    /// One write that keeps the lease (renewal, checkpoint, pin): refused once the lease is
    /// lost or ran out; on success the lease is ours for another failover time.
    async fn write(&self, op: &Op<'_>) -> Result<(), LeaseWriteError> {
        let lost = || LeaseWriteError::LeaseLost(self.shard_id.clone());
        let mut state = self.state.lock().await;
        if self.is_lost() || state.done {
            return Err(lost());
        }
        if Instant::now() >= self.expires_at() {
            self.mark_lost("not renewed within the failover time");
            return Err(lost());
        }
        let sent = Instant::now();
        let lease = self.send(&mut state, op).await?;
        state.lease = lease;
        // A write that came back after the lease ran out does not revive it: the timer may
        // have stopped the shard already, and others may hold it.
        if !self.is_lost() {
            self.renewed.send_replace(sent);
        }
        Ok(())
    }

    /// Runs one conditional write. On a conflict, a consistent read tells whether somebody else
    /// wrote (lost) or our own earlier write went through unseen (its answer was lost on the
    /// way): then the write is tried once more on the counter read.
    async fn send(&self, state: &mut State, op: &Op<'_>) -> Result<Lease, LeaseWriteError> {
        for attempt in 0..2 {
            let result = match op {
                Op::Renew => self.table.renew(&state.lease).await,
                Op::Checkpoint(cp, children) => {
                    self.table.checkpoint(&state.lease, cp, children).await
                }
                Op::Prepare(position) => {
                    self.table.prepare_checkpoint(&state.lease, position).await
                }
                Op::PinLatest(at) => self.table.pin_latest(&state.lease, *at).await,
                Op::Release => self.table.release(&state.lease).await,
            };
            match result {
                Ok(lease) => return Ok(lease),
                Err(WriteError::Failed { kind, message, .. }) => {
                    return Err(LeaseWriteError::Failed { kind, message })
                }
                Err(WriteError::Conflict(_)) => {}
            }
            let current = match self.table.get(&self.shard_id).await {
                Ok(current) => current,
                Err(err) => {
                    return Err(LeaseWriteError::Failed {
                        kind: err.kind,
                        message: err.to_string(),
                    })
                }
            };
            match current {
                Some(lease) if lease.is_owned_by(&self.worker_id) => {
                    // Our own earlier write went through unseen: go on from what it wrote.
                    tracing::debug!(shard_id = %self.shard_id, attempt, "lease counter moved under its owner, retrying on it");
                    state.lease = lease;
                }
                other => {
                    let owner = other
                        .and_then(|l| l.owner)
                        .unwrap_or_else(|| "nobody".into());
                    self.mark_lost(&format!("now held by {owner}"));
                    return Err(LeaseWriteError::LeaseLost(self.shard_id.clone()));
                }
            }
        }
        Err(LeaseWriteError::Failed {
            kind: ErrorKind::Other,
            message: "lease keeps changing under its owner".into(),
        })
    }
}

enum Op<'a> {
    Renew,
    Checkpoint(&'a Checkpoint, &'a [String]),
    Prepare(&'a ExtendedSequenceNumber),
    PinLatest(DateTime<Utc>),
    Release,
}
