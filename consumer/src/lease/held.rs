//! A lease this worker holds, and every write it makes to it.
//!
//! Renewals (the renewer task), checkpoints (the shard's processor) and the final release all
//! go through one [`HeldLease`], serialised by an async mutex held across the one DynamoDB call:
//! each write is conditional on the counter the previous one returned, so two writes of our own
//! never trip over each other, and a failed condition really means another writer.
//!
//! A lease is lost, for good, when
//! - a conditional write fails and a consistent read shows another owner (or no owner),
//! - or it could not be renewed for the failover time (other workers may take it by now).
//!
//! After that no write is attempted: a worker that lost a lease never checkpoints it again.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::table::{Checkpoint, Lease, LeaseTable, WriteError};

/// Why a write on a held lease did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseWriteError {
    #[error("lease {0} is no longer held by this worker")]
    LeaseLost(String),
    #[error("{0}")]
    Failed(String),
}

struct State {
    lease: Lease,
    /// When the last successful write was sent: the lease is ours until `failover` after it.
    last_renewed: Instant,
    done: bool,
}

pub struct HeldLease {
    shard_id: String,
    worker_id: String,
    table: LeaseTable,
    failover: Duration,
    state: Mutex<State>,
    /// Cancelled when the lease is lost (not when it is released).
    lost: CancellationToken,
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
            state: Mutex::new(State {
                lease,
                last_renewed: taken_at,
                done: false,
            }),
            lost: CancellationToken::new(),
        }
    }

    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Fires when the lease is lost.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// The lease as last written or read.
    pub async fn snapshot(&self) -> Lease {
        self.state.lock().await.lease.clone()
    }

    fn mark_lost(&self, state: &mut State, reason: &str) {
        state.done = true;
        if !self.lost.is_cancelled() {
            tracing::warn!(shard_id = %self.shard_id, worker_id = %self.worker_id, reason = reason, "lease lost");
            self.lost.cancel();
        }
    }

    /// Renews the lease. Returns `false` once it is lost.
    pub async fn renew(&self) -> bool {
        let mut state = self.state.lock().await;
        if state.done {
            return !self.is_lost();
        }
        if state.last_renewed.elapsed() > self.failover {
            self.mark_lost(&mut state, "not renewed within the failover time");
            return false;
        }
        let sent = Instant::now();
        match self.write(&mut state, &Op::Renew).await {
            Ok(lease) => {
                state.lease = lease;
                state.last_renewed = sent;
                true
            }
            Err(LeaseWriteError::LeaseLost(_)) => false,
            Err(LeaseWriteError::Failed(message)) => {
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
        let mut state = self.state.lock().await;
        if state.done || state.last_renewed.elapsed() > self.failover {
            if !state.done {
                self.mark_lost(&mut state, "not renewed within the failover time");
            }
            return Err(LeaseWriteError::LeaseLost(self.shard_id.clone()));
        }
        let sent = Instant::now();
        let lease = self
            .write(&mut state, &Op::Checkpoint(checkpoint, child_shard_ids))
            .await?;
        state.lease = lease;
        state.last_renewed = sent;
        Ok(())
    }

    /// Gives the lease up so another worker can take it at once. Nothing is written after.
    pub async fn release(&self) -> bool {
        let mut state = self.state.lock().await;
        if state.done {
            return false;
        }
        let released = self.write(&mut state, &Op::Release).await;
        state.done = true;
        match released {
            Ok(lease) => {
                state.lease = lease;
                tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, checkpoint = %state.lease.checkpoint, "lease released");
                true
            }
            Err(LeaseWriteError::LeaseLost(_)) => false,
            Err(LeaseWriteError::Failed(message)) => {
                tracing::warn!(shard_id = %self.shard_id, error = %message, "lease release failed; it will expire instead");
                false
            }
        }
    }

    /// Runs one conditional write. On a conflict, a consistent read tells whether somebody else
    /// wrote (lost) or our own earlier write went through unseen (its answer was lost on the
    /// way): then the write is tried once more on the counter read.
    async fn write(&self, state: &mut State, op: &Op<'_>) -> Result<Lease, LeaseWriteError> {
        for attempt in 0..2 {
            let result = match op {
                Op::Renew => self.table.renew(&state.lease).await,
                Op::Checkpoint(cp, children) => {
                    self.table.checkpoint(&state.lease, cp, children).await
                }
                Op::Release => self.table.release(&state.lease).await,
            };
            match result {
                Ok(lease) => return Ok(lease),
                Err(WriteError::Failed { message, .. }) => {
                    return Err(LeaseWriteError::Failed(message))
                }
                Err(WriteError::Conflict(_)) => {}
            }
            let current = match self.table.get(&self.shard_id).await {
                Ok(current) => current,
                Err(err) => return Err(LeaseWriteError::Failed(format!("{err:#}"))),
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
                    self.mark_lost(state, &format!("now held by {owner}"));
                    return Err(LeaseWriteError::LeaseLost(self.shard_id.clone()));
                }
            }
        }
        Err(LeaseWriteError::Failed(
            "lease keeps changing under its owner".into(),
        ))
    }
}

enum Op<'a> {
    Renew,
    Checkpoint(&'a Checkpoint, &'a [String]),
    Release,
}
