//! A lease this worker holds: the driver of its [`LeaseMachine`].
//!
//! Every write to the lease (renewals from the renewer, progress from the shard's processor,
//! the end of a handoff, the release or hand-over) goes through one [`HeldLease`]: the machine
//! says which conditional write to send, the answer (or, after a failed condition, a consistent
//! read of the item) goes back to it, and what it asks for next is done. One write at a time: an
//! async mutex is held across the DynamoDB call, so each write is conditional on the counter
//! the previous one returned. The machine's expiry runs on its own timer
//! ([`HeldLease::until_lost`]), outside that mutex, so a lease runs out (and its shard task is
//! aborted) even while every call hangs.
//!
//! What the machine decides, and why, is in [`super::machine`]; this file only carries it out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kinesis_common::aws::ErrorKind;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::machine::{Action, Event, Gone, LeaseMachine, Op, State, TaskEnd};
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

/// What a progress write ([`Op::Checkpoint`], [`Op::CheckpointInHandoff`]) writes.
#[derive(Clone, Copy)]
enum Progress<'a> {
    Checkpoint(&'a Checkpoint, &'a [String]),
    Prepare(&'a ExtendedSequenceNumber),
    PinLatest(DateTime<Utc>),
}

/// What driving one event came to.
#[derive(Default)]
struct Driven {
    /// The machine refused the progress write asked for: the lease is not ours.
    refused: bool,
    /// The last call failed (nothing known of whether it was applied).
    failed: Option<(ErrorKind, String)>,
}

/// Shared by every lease of one worker: a second live process with this worker's id is
/// reported once.
#[derive(Debug, Default)]
pub struct DuplicateReport(AtomicBool);

impl DuplicateReport {
    pub fn report(&self, worker_id: &str, shard_id: &str) {
        if !self.0.swap(true, Ordering::SeqCst) {
            tracing::error!(worker_id = %worker_id, shard_id = %shard_id, "another live worker uses this worker id: give every worker its own CONSUMER_WORKER_ID (leases it seems to hold are not taken until they expire)");
        }
    }
}

pub struct HeldLease {
    shard_id: String,
    worker_id: String,
    table: LeaseTable,
    machine: Mutex<LeaseMachine<Instant>>,
    /// The item as last written or read, kept in step with what the machine saw.
    lease: Mutex<Lease>,
    /// One write at a time.
    writing: tokio::sync::Mutex<()>,
    /// Woken when the machine's next deadline may have moved (a write kept the lease).
    changed: Notify,
    /// Cancelled when the lease is lost or expired: the shard task stops at once.
    lost: CancellationToken,
    lost_logged: AtomicBool,
    /// Stops the shard task gracefully (a handoff); a child of the worker's stop token.
    stop: CancellationToken,
    duplicates: Arc<DuplicateReport>,
}

fn now() -> Instant {
    Instant::now()
}

impl HeldLease {
    /// Wraps a lease just taken: `machine` has seen the take's answer, `lease` is the item the
    /// take returned. `stop` is the shard task's own stop token: cancelled for a graceful
    /// handoff.
    pub fn new(
        machine: LeaseMachine<Instant>,
        lease: Lease,
        table: LeaseTable,
        stop: CancellationToken,
        duplicates: Arc<DuplicateReport>,
    ) -> Self {
        Self {
            shard_id: lease.key.clone(),
            worker_id: machine.me().to_string(),
            table,
            machine: Mutex::new(machine),
            lease: Mutex::new(lease),
            writing: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            lost: CancellationToken::new(),
            lost_logged: AtomicBool::new(false),
            stop,
            duplicates,
        }
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, LeaseMachine<Instant>> {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn item(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
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

    pub fn state(&self) -> State {
        self.machine().state()
    }

    /// The lease as last written or read.
    pub async fn snapshot(&self) -> Lease {
        self.item().clone()
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

    /// Feeds one event to the machine and carries out what it asks, but for writes, which are
    /// returned for the caller (who holds `writing`) to send.
    fn feed(&self, event: Event<Instant>, driven: &mut Driven) -> Option<Op> {
        let (actions, state, expired_at) = {
            let mut machine = self.machine();
            let actions = machine.on(event, now());
            (actions, machine.state(), machine.expires_at())
        };
        let mut send = None;
        for action in actions {
            match action {
                Action::Send(op) => send = Some(op),
                Action::StartTask => {}
                Action::StopTask => {
                    let new_owner = self.item().owner.clone().unwrap_or_default();
                    tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, new_owner = %new_owner, "lease handoff requested, stopping the shard");
                    self.stop.cancel();
                }
                Action::AbortTask => {}
                Action::Refuse => driven.refused = true,
                Action::DuplicateWorkerId => {
                    self.duplicates.report(&self.worker_id, &self.shard_id)
                }
            }
        }
        match state {
            State::Gone(Gone::Expired) => {
                let _ = expired_at;
                self.mark_lost("not renewed within the failover time");
            }
            State::Gone(Gone::Lost) => {
                let owner = self.item().owner.clone();
                let owner = owner.as_deref().unwrap_or("nobody");
                self.mark_lost(&format!("now held by {owner}"));
            }
            _ => {}
        }
        self.changed.notify_waiters();
        send
    }

    /// Drives one event through to the end: every write the machine asks for is sent and its
    /// answer fed back. The caller holds `writing`.
    async fn drive(&self, event: Event<Instant>, progress: Option<Progress<'_>>) -> Driven {
        let mut driven = Driven::default();
        let mut next = self.feed(event, &mut driven);
        while let Some(op) = next {
            let result = self.send(&op, progress).await;
            let event = match result {
                Ok(lease) => {
                    let own = lease.ownership();
                    *self.item() = lease;
                    driven.failed = None;
                    Event::Written(own)
                }
                Err(WriteError::Conflict(_)) => match self.table.get(&self.shard_id).await {
                    Ok(current) => {
                        let own = current.as_ref().map(Lease::ownership);
                        let event = Event::Conflict(own.clone());
                        next = self.feed(event, &mut driven);
                        // The machine adopted the item read: so does the driver.
                        if let (Some(current), Some(own)) = (current, own) {
                            if *self.machine().seen() == own {
                                *self.item() = current;
                            }
                        }
                        continue;
                    }
                    Err(err) => {
                        driven.failed = Some((err.kind, err.to_string()));
                        Event::Failed
                    }
                },
                Err(WriteError::Failed { kind, message, .. }) => {
                    driven.failed = Some((kind, message));
                    Event::Failed
                }
            };
            next = self.feed(event, &mut driven);
        }
        driven
    }

    /// The DynamoDB call for `op`, conditional on the item as last seen.
    async fn send(&self, op: &Op, progress: Option<Progress<'_>>) -> Result<Lease, WriteError> {
        let lease = self.item().clone();
        let me = self.worker_id.as_str();
        let table = &self.table;
        match (op, progress) {
            (Op::Take, _) => table.take(&lease, me, false).await,
            (Op::TakeExpired, _) => table.take(&lease, me, true).await,
            (Op::TakeWithHandoff, _) => table.take_with_handoff(&lease, me).await,
            (Op::Checkpoint, Some(Progress::Checkpoint(cp, children))) => {
                table.checkpoint(&lease, cp, children).await
            }
            (Op::Checkpoint, Some(Progress::Prepare(position))) => {
                table.prepare_checkpoint(&lease, position).await
            }
            (Op::Checkpoint, Some(Progress::PinLatest(at))) => table.pin_latest(&lease, at).await,
            (Op::CheckpointInHandoff, Some(Progress::Checkpoint(cp, children))) => {
                table.checkpoint_in_handoff(&lease, cp, children, me).await
            }
            (Op::CheckpointInHandoff, Some(Progress::Prepare(position))) => {
                table
                    .prepare_checkpoint_in_handoff(&lease, position, me)
                    .await
            }
            (Op::CheckpointInHandoff, Some(Progress::PinLatest(at))) => {
                table.pin_latest_in_handoff(&lease, at, me).await
            }
            (Op::Renew | Op::Checkpoint | Op::CheckpointInHandoff, _) => table.renew(&lease).await,
            (Op::ClearHandoff, _) => table.clear_handoff(&lease).await,
            (Op::FinishHandoff, _) => table.finish_handoff(&lease, me).await,
            (Op::Release, _) => table.release(&lease).await,
            (Op::HandOver(to), _) => table.hand_over(&lease, to).await,
        }
    }

    /// Returns once the lease is lost: another writer took it, or no write succeeded for the
    /// failover time (the machine's timer, checked even while every call hangs).
    pub async fn until_lost(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (gone, deadline) = {
                let machine = self.machine();
                (machine.is_gone(), machine.next_deadline())
            };
            if gone {
                if self.is_lost() {
                    return;
                }
                // Let go of, or never taken: it is not lost; nothing more to wait for.
                std::future::pending::<()>().await;
            }
            tokio::select! {
                _ = self.lost.cancelled() => return,
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(|| now() + Duration::from_secs(3600))) => {
                    let mut driven = Driven::default();
                    // `Tick` never asks for a write.
                    let _ = self.feed(Event::Tick(now()), &mut driven);
                }
            }
        }
    }

    /// Renews the lease. Returns `false` once it is lost.
    pub async fn renew(&self) -> bool {
        let _writing = self.writing.lock().await;
        let driven = self.drive(Event::RenewDue, None).await;
        if let Some((_, message)) = driven.failed {
            if !self.is_lost() {
                tracing::warn!(shard_id = %self.shard_id, error = %message, "lease renewal failed, retrying at the next renewal");
            }
        }
        !self.is_lost()
    }

    async fn progress(&self, progress: Progress<'_>) -> Result<(), LeaseWriteError> {
        let _writing = self.writing.lock().await;
        let driven = self.drive(Event::CheckpointDue, Some(progress)).await;
        if driven.refused || self.is_lost() {
            return Err(LeaseWriteError::LeaseLost(self.shard_id.clone()));
        }
        match driven.failed {
            Some((kind, message)) => Err(LeaseWriteError::Failed { kind, message }),
            None => Ok(()),
        }
    }

    /// Writes a checkpoint (with the children, for `SHARD_END`).
    pub async fn checkpoint(
        &self,
        checkpoint: &Checkpoint,
        child_shard_ids: &[String],
    ) -> Result<(), LeaseWriteError> {
        self.progress(Progress::Checkpoint(checkpoint, child_shard_ids))
            .await
    }

    /// Writes a prepared checkpoint (`pendingCheckpoint`).
    pub async fn prepare_checkpoint(
        &self,
        position: &ExtendedSequenceNumber,
    ) -> Result<(), LeaseWriteError> {
        self.progress(Progress::Prepare(position)).await
    }

    /// Records where a `LATEST` lease is first read.
    pub async fn pin_latest(&self, at: DateTime<Utc>) -> Result<(), LeaseWriteError> {
        self.progress(Progress::PinLatest(at)).await
    }

    /// The new owner's side of a graceful handoff: reads the item every `poll` until the
    /// previous owner cleared `checkpointOwner`, or the machine's deadline passed (then it
    /// clears it itself). The lease state is then the item as the old owner left it, its last
    /// checkpoint included. `false` when the lease was lost meanwhile.
    pub async fn await_handoff(&self, poll: Duration) -> bool {
        let old = self.item().checkpoint_owner.clone();
        tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, previous_owner = old.as_deref().unwrap_or(""), "waiting for the previous owner to hand the shard over");
        loop {
            match self.state() {
                State::AwaitingHandoff => {}
                State::Gone(_) => return false,
                _ => return true,
            }
            tokio::time::sleep(poll).await;
            let _writing = self.writing.lock().await;
            let read = match self.table.get(&self.shard_id).await {
                Ok(read) => read,
                Err(err) => {
                    tracing::warn!(shard_id = %self.shard_id, error = %err, "reading a lease in handoff failed");
                    continue;
                }
            };
            let own = read.as_ref().map(Lease::ownership);
            let cleared_by_old = own.as_ref().is_some_and(|o| o.checkpoint_owner.is_none());
            if let (Some(read), Some(own)) = (&read, &own) {
                let seen = self.machine().seen().clone();
                if own.owner == seen.owner && own.counter == seen.counter {
                    *self.item() = read.clone();
                }
            }
            let driven = self.drive(Event::Read(own), None).await;
            if let Some((_, message)) = driven.failed {
                tracing::warn!(shard_id = %self.shard_id, error = %message, "clearing checkpointOwner failed, retrying");
            }
            match self.state() {
                State::WaitingForParents | State::Reading => {
                    let checkpoint = self.item().checkpoint.clone();
                    if cleared_by_old {
                        tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, checkpoint = %checkpoint, "shard handed over");
                    } else {
                        tracing::warn!(shard_id = %self.shard_id, worker_id = %self.worker_id, previous_owner = old.as_deref().unwrap_or(""), "handoff timed out, starting anyway");
                    }
                    return true;
                }
                State::Gone(_) => return false,
                _ => {}
            }
        }
    }

    /// Every parent shard is at `SHARD_END`: the task reads from now on.
    pub fn parents_done(&self) {
        let mut driven = Driven::default();
        let _ = self.feed(Event::ParentsDone, &mut driven);
    }

    /// The shard task is over: the lease is released (shard ended or failed), the handoff
    /// finished (taken from us gracefully), or kept until the worker lets it go (stopped).
    /// Returns whether the lease is no longer this worker's.
    pub async fn task_ended(&self, end: TaskEnd) -> bool {
        let _writing = self.writing.lock().await;
        let before = self.state();
        let driven = self.drive(Event::TaskEnded(end), None).await;
        self.report_let_go(before, driven);
        self.machine().is_gone()
    }

    /// The worker stops: hands the lease to `to` (which finds it through the owner index), or
    /// releases it. A handoff in progress is finished instead. Returns whether it is let go.
    pub async fn let_go(&self, to: Option<String>) -> bool {
        let _writing = self.writing.lock().await;
        let before = self.state();
        let driven = self.drive(Event::LetGo { to }, None).await;
        self.report_let_go(before, driven)
    }

    fn report_let_go(&self, before: State, driven: Driven) -> bool {
        let state = self.state();
        let lease = self.item().clone();
        match state {
            State::Gone(Gone::LetGo) => {
                let new_owner = lease.owner.as_deref().unwrap_or("");
                if before == State::HandingOff {
                    tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, new_owner = new_owner, checkpoint = %lease.checkpoint, "lease handed off");
                } else if lease.owner.is_some() {
                    tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, new_owner = new_owner, checkpoint = %lease.checkpoint, "lease handed over");
                } else {
                    tracing::info!(shard_id = %self.shard_id, worker_id = %self.worker_id, checkpoint = %lease.checkpoint, "lease released");
                }
                true
            }
            State::Gone(Gone::Abandoned) => {
                let message = driven.failed.map(|(_, m)| m).unwrap_or_default();
                tracing::warn!(shard_id = %self.shard_id, error = %message, "giving the lease up failed; it will expire instead");
                false
            }
            _ => false,
        }
    }
}
