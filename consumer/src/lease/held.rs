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
    /// Another worker took the lease with a graceful handoff naming this one as
    /// `checkpointOwner`: the shard is being stopped; checkpoints are conditional on
    /// `checkpointOwner`, renewals stop, and the release clears `checkpointOwner`.
    handing_off: bool,
}

/// What one conditional write came to.
enum Sent {
    Written(Lease),
    /// The lease was taken from us with a graceful handoff (the item as read).
    HandingOff(Lease),
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
    /// Stops the shard task gracefully (a handoff); a child of the worker's stop token.
    stop: CancellationToken,
}

impl HeldLease {
    /// Wraps a lease just taken (the item `take` returned), renewed at `taken_at`. `stop` is
    /// the shard task's own stop token: cancelled for a graceful handoff.
    pub fn new(
        lease: Lease,
        worker_id: &str,
        table: LeaseTable,
        failover: Duration,
        taken_at: Instant,
        stop: CancellationToken,
    ) -> Self {
        Self {
            shard_id: lease.key.clone(),
            worker_id: worker_id.to_string(),
            table,
            failover,
            state: Mutex::new(State {
                lease,
                done: false,
                handing_off: false,
            }),
            renewed: watch::Sender::new(taken_at),
            lost: CancellationToken::new(),
            lost_logged: AtomicBool::new(false),
            stop,
        }
    }

    /// Whether another worker took the lease with a graceful handoff from this one.
    pub async fn is_handing_off(&self) -> bool {
        self.state.lock().await.handing_off
    }

    /// The new owner's side of a graceful handoff: waits until the old owner cleared
    /// `checkpointOwner` (polling the item every `poll`), or `timeout` passed (then clears it
    /// itself, so the old owner can no longer checkpoint). The lease state is then the item as
    /// the old owner left it, its last checkpoint included. `false` when the lease was lost
    /// meanwhile.
    pub async fn await_handoff(&self, timeout: Duration, poll: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let old = self.state.lock().await.lease.checkpoint_owner.clone();
        tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, previous_owner = old.as_deref().unwrap_or(""), "waiting for the previous owner to hand the shard over");
        loop {
            if self.is_lost() {
                return false;
            }
            if Instant::now() >= deadline {
                tracing::warn!(shard_id = %self.shard_id, worker_id = %self.worker_id, previous_owner = old.as_deref().unwrap_or(""), timeout_ms = timeout.as_millis() as u64, "handoff timed out, starting anyway");
                return match self.write(&Op::ClearHandoff).await {
                    Ok(()) => true,
                    Err(LeaseWriteError::LeaseLost(_)) => false,
                    // Not cleared: the old owner stopped long ago (its lease ran out before
                    // the timeout did); try again at the next poll.
                    Err(LeaseWriteError::Failed { message, .. }) => {
                        tracing::warn!(shard_id = %self.shard_id, error = %message, "clearing checkpointOwner failed, retrying");
                        tokio::time::sleep(poll).await;
                        continue;
                    }
                };
            }
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
            let read = match self.table.get(&self.shard_id).await {
                Ok(read) => read,
                Err(err) => {
                    tracing::warn!(shard_id = %self.shard_id, error = %err, "reading a lease in handoff failed");
                    continue;
                }
            };
            let mut state = self.state.lock().await;
            match read {
                Some(lease) if lease.is_owned_by(&self.worker_id) => {
                    if lease.checkpoint_owner.is_none() {
                        tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, checkpoint = %lease.checkpoint, "shard handed over");
                        state.lease = lease;
                        return true;
                    }
                }
                other => {
                    drop(state);
                    let owner = other
                        .and_then(|l| l.owner)
                        .unwrap_or_else(|| "nobody".into());
                    self.mark_lost(&format!("now held by {owner}"));
                    return false;
                }
            }
        }
    }

    /// Hands the lease to `to` (this worker stops and no longer processes it). Nothing is
    /// written after.
    pub async fn hand_over(&self, to: &str) -> bool {
        let mut state = self.state.lock().await;
        if state.done || self.is_lost() || state.handing_off {
            drop(state);
            return self.release().await;
        }
        state.done = true;
        match self.table.hand_over(&state.lease, to).await {
            Ok(lease) => {
                state.lease = lease;
                tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, new_owner = %to, checkpoint = %state.lease.checkpoint, "lease handed over");
                true
            }
            Err(err) => {
                tracing::warn!(shard_id = %self.shard_id, error = %err, "handing a lease over failed; it will expire instead");
                false
            }
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
        // A handoff is finished even after the lease ran out here: the shard task has ended,
        // and clearing `checkpointOwner` lets the new owner start at once.
        if state.done || (self.is_lost() && !state.handing_off) {
            return false;
        }
        if !state.handing_off {
            let released = self.send(&mut state, &Op::Release).await;
            match released {
                Ok(Sent::HandingOff(lease)) => {
                    state.lease = lease;
                    state.handing_off = true;
                }
                Ok(Sent::Written(lease)) => {
                    state.done = true;
                    state.lease = lease;
                    tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, checkpoint = %state.lease.checkpoint, "lease released");
                    return true;
                }
                Err(LeaseWriteError::LeaseLost(_)) => {
                    state.done = true;
                    return false;
                }
                Err(LeaseWriteError::Failed { message, .. }) => {
                    state.done = true;
                    tracing::warn!(shard_id = %self.shard_id, error = %message, "lease release failed; it will expire instead");
                    return false;
                }
            }
        }
        {
            state.done = true;
            match self
                .table
                .finish_handoff(&state.lease, &self.worker_id)
                .await
            {
                Ok(lease) => {
                    tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, new_owner = lease.owner.as_deref().unwrap_or(""), checkpoint = %lease.checkpoint, "lease handed off");
                    state.lease = lease;
                    true
                }
                Err(err) => {
                    tracing::warn!(shard_id = %self.shard_id, error = %err, "ending a handoff failed; the new owner starts at its timeout");
                    false
                }
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
        if state.handing_off {
            return self.write_in_handoff(&mut state, op).await;
        }
        let sent = Instant::now();
        match self.send(&mut state, op).await? {
            Sent::Written(lease) => {
                state.lease = lease;
                // A write that came back after the lease ran out does not revive it: the timer
                // may have stopped the shard already, and others may hold it.
                if !self.is_lost() {
                    self.renewed.send_replace(sent);
                }
                Ok(())
            }
            Sent::HandingOff(lease) => {
                tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, new_owner = lease.owner.as_deref().unwrap_or(""), "lease handoff requested, stopping the shard");
                state.lease = lease;
                state.handing_off = true;
                self.stop.cancel();
                self.write_in_handoff(&mut state, op).await
            }
        }
    }

    /// A write while handing off: checkpoints conditional on `checkpointOwner`; no renewal
    /// (the lease stays ours only until the failover time after the last one, and the new
    /// owner waits at least that long before starting without us).
    async fn write_in_handoff(
        &self,
        state: &mut State,
        op: &Op<'_>,
    ) -> Result<(), LeaseWriteError> {
        let result = match op {
            Op::Renew | Op::ClearHandoff | Op::Release => return Ok(()),
            Op::Checkpoint(cp, children) => {
                self.table
                    .checkpoint_in_handoff(&state.lease, cp, children, &self.worker_id)
                    .await
            }
            Op::PinLatest(at) => {
                self.table
                    .pin_latest_in_handoff(&state.lease, *at, &self.worker_id)
                    .await
            }
            Op::Prepare(position) => {
                self.table
                    .prepare_checkpoint_in_handoff(&state.lease, position, &self.worker_id)
                    .await
            }
        };
        match result {
            Ok(lease) => {
                state.lease = lease;
                Ok(())
            }
            Err(WriteError::Failed { kind, message, .. }) => {
                Err(LeaseWriteError::Failed { kind, message })
            }
            Err(WriteError::Conflict(_)) => {
                self.mark_lost("the handoff is over (checkpointOwner no longer names this worker)");
                Err(LeaseWriteError::LeaseLost(self.shard_id.clone()))
            }
        }
    }

    /// Runs one conditional write. On a conflict, a consistent read tells whether somebody else
    /// wrote (lost) or our own earlier write went through unseen (its answer was lost on the
    /// way): then the write is tried once more on the counter read.
    async fn send(&self, state: &mut State, op: &Op<'_>) -> Result<Sent, LeaseWriteError> {
        for attempt in 0..2 {
            let result = match op {
                Op::Renew => self.table.renew(&state.lease).await,
                Op::ClearHandoff => self.table.clear_handoff(&state.lease).await,
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
                Ok(lease) => return Ok(Sent::Written(lease)),
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
                // Taken with a graceful handoff: we may still checkpoint, then let go.
                Some(lease)
                    if lease.checkpoint_owner.as_deref() == Some(self.worker_id.as_str()) =>
                {
                    return Ok(Sent::HandingOff(lease));
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
    /// The new owner ends a handoff that timed out.
    ClearHandoff,
    Checkpoint(&'a Checkpoint, &'a [String]),
    Prepare(&'a ExtendedSequenceNumber),
    PinLatest(DateTime<Utc>),
    Release,
}
