//! The life of one lease at one worker: one state machine, with no I/O.
//!
//! [`LeaseMachine::on`] is the only place where a lease changes state. The worker (`held.rs`,
//! `worker.rs`) feeds it events (a timer, the shard task's progress, the answer to a write) and
//! does what it answers: send a write, start, stop or abort the shard task. The model check
//! (`consumer/tests/lease_model.rs`) drives the same function against a model of the lease
//! table, so what it proves is about this code, not a copy.
//!
//! ```text
//!          take / steal (Written)                         ParentsDone
//!   [Taking] ─────────────────────────▶ [WaitingForParents] ───────────▶ [Reading]
//!      │  checkpointOwner = another           ▲                         │  │  │
//!      └──────────▶ [AwaitingHandoff] ────────┘ it cleared it,           │  │  │ task stopped
//!                      (no task yet)    or we did at the deadline        │  │  ▼
//!                                                                       │  │ [Parked] ── LetGo ─┐
//!      a conflict shows checkpointOwner = me                            │  │ Ended / Failed     │
//!   [Reading] ─────────────────────────────▶ [HandingOff] ── TaskEnded ─┼──┴──────▶ [LettingGo] ◀┘
//!                                             (no renewals)             │                │
//!                                                                       ▼                ▼
//!   any holding state ── another writer, or no write for the failover time ──▶ [Gone]
//! ```
//!
//! The writes, each one conditional `UpdateItem` (see [`Op`] for what each does to `leaseOwner`,
//! `checkpointOwner` and `leaseCounter`, and the condition guarding it). A worker has at most one
//! write in flight per lease (the driver serialises them), and a write's answer is fed back as
//! [`Event::Written`], [`Event::Conflict`] (with the item as a consistent read then shows it) or
//! [`Event::Failed`].
//!
//! The rules that keep two workers off one shard:
//! 1. **Expiry by our own timer.** A held lease is [`Gone`] (the task aborted at once) when no
//!    write that keeps it succeeded for the failover time, counted from when the last one was
//!    *sent*. Any other worker counts the failover time from when it *saw* the counter last
//!    move, which is later, so the holder has stopped before anyone may take the lease as
//!    expired.
//! 2. **A conflict is ours only if it is exactly ours.** A failed condition followed by a read
//!    showing `leaseOwner = me`, the counter one above the one we wrote on, and no
//!    `checkpointOwner` naming us, means our own write went through unseen (its answer was
//!    lost); anything else is another writer. A lease that shows our id but a counter we did
//!    not write was written by another live process with this worker's id
//!    ([`Action::DuplicateWorkerId`]), or was handed back to us (`handedOverBy`); either way
//!    this holder stops.
//! 3. **A handoff is finished by the one who is finishing.** `checkpointOwner` names the worker
//!    still finishing a batch; only that worker clears it ([`Op::FinishHandoff`]), or the new
//!    owner once the failover time and a margin have passed since it took the lease (by then
//!    the old one's timer stopped it). Taking a lease clears another worker's
//!    `checkpointOwner` only when the lease expired ([`Op::TakeExpired`]); otherwise the taker
//!    waits for that handoff as the worker it took the lease from did.
//! 4. **A lease shown as ours is taken like anyone else's** ([`take_rule`]): at once only when a
//!    stopping worker handed it to us (`handedOverBy`), otherwise only once it expired, so a
//!    second process with the same worker id never takes a lease the first one is reading.

use std::ops::Add;
use std::time::Duration;

/// What the machine knows of a lease item: the attributes that decide who may write it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ownership {
    /// `leaseOwner`: the worker holding the lease; `None` when nobody does.
    pub owner: Option<String>,
    /// `checkpointOwner` (KCL 3.x): the previous owner, still finishing its batch.
    pub checkpoint_owner: Option<String>,
    /// `leaseCounter`: raised by one by every write but a handoff write.
    pub counter: i64,
    /// `handedOverBy` (this project's): a stopping worker gave the lease to `owner`, who has
    /// not taken it up yet.
    pub handed_over: bool,
}

impl Ownership {
    fn owned_by(&self, me: &str) -> bool {
        self.owner.as_deref() == Some(me)
    }
}

/// One conditional write on the lease item. `c` is the counter last seen, `o` the owner last
/// seen; `me` is this worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// Takes an unowned or expired lease, or one handed to `me`.
    /// If `leaseCounter = c` and `leaseOwner = o` (or absent): `leaseOwner = me`, `c + 1`,
    /// `handedOverBy` removed; `checkpointOwner` removed if it names `me` (our own old task is
    /// over), kept if it names another worker (who may still be finishing: we wait for it).
    Take,
    /// Takes a lease that expired: as [`Op::Take`], but `checkpointOwner` is removed whoever
    /// it names. The lease's counter has not moved for the failover time, so any handoff on it
    /// started longer ago than that: its old owner could not renew since, and its own timer
    /// stopped it.
    TakeExpired,
    /// Steals a live worker's lease with a graceful handoff (KCL 3.x).
    /// If `leaseCounter = c`, `leaseOwner = o` and no `checkpointOwner`: `leaseOwner = me`,
    /// `checkpointOwner = o`, `c + 1`.
    TakeWithHandoff,
    /// "Still alive". If `leaseCounter = c` and `leaseOwner = me`: `c + 1`.
    Renew,
    /// Progress (a checkpoint, a prepared checkpoint, the pinned `LATEST`).
    /// If `leaseCounter = c` and `leaseOwner = me`: the position, `c + 1`.
    Checkpoint,
    /// Progress by the old owner while it hands the lease off.
    /// If `checkpointOwner = me`: the position; the counter is left alone, so the new owner's
    /// renewals do not trip over it.
    CheckpointInHandoff,
    /// The new owner stops waiting for the old one (the deadline passed).
    /// If `leaseCounter = c` and `leaseOwner = me`: `checkpointOwner` removed, `c + 1`.
    ClearHandoff,
    /// The old owner is done. If `checkpointOwner = me`: `checkpointOwner` removed.
    FinishHandoff,
    /// Gives the lease up so that anyone may take it at once.
    /// If `leaseCounter = c` and `leaseOwner = me`: `leaseOwner` removed, `c + 1`
    /// (`checkpointOwner` stays: a handoff still running goes on under the next owner).
    Release,
    /// A stopping worker gives the lease to a live one, which finds it by the owner index.
    /// If `leaseCounter = c` and `leaseOwner = me`: `leaseOwner = to`, `handedOverBy = me`,
    /// `c + 1` (`checkpointOwner` stays).
    HandOver(String),
}

impl Op {
    /// Whether a success keeps the lease for another failover time (a write conditional on the
    /// counter and on `leaseOwner = me`).
    fn keeps_lease(&self) -> bool {
        matches!(
            self,
            Op::Take
                | Op::TakeExpired
                | Op::TakeWithHandoff
                | Op::Renew
                | Op::Checkpoint
                | Op::ClearHandoff
        )
    }
}

/// Where a lease is in its life at this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// A take or a steal is in flight.
    Taking,
    /// Ours, but `checkpointOwner` names the previous owner, still finishing its batch. No
    /// shard task yet; renewed as usual.
    AwaitingHandoff,
    /// Ours; the shard task waits for every parent shard to reach `SHARD_END`.
    WaitingForParents,
    /// Ours; the shard task reads, processes and checkpoints.
    Reading,
    /// Another worker took it with a graceful handoff naming us: the task finishes its batch
    /// and may still checkpoint (conditional on `checkpointOwner`); no more renewals.
    HandingOff,
    /// The shard task stopped (the worker is stopping): still ours and renewed until the worker
    /// lets it go.
    Parked,
    /// A release, hand-over or end of handoff is in flight; nothing else is written.
    LettingGo,
    /// No longer ours; nothing is written any more.
    Gone(Gone),
}

/// Why a lease is no longer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gone {
    /// The take did not go through.
    NotTaken,
    /// We gave it up: released, handed over, or the handoff finished.
    LetGo,
    /// Giving it up failed: it stays ours in the table until it expires.
    Abandoned,
    /// Another writer changed it.
    Lost,
    /// No write kept it for the failover time.
    Expired,
}

/// How a shard task ended, as the machine needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskEnd {
    /// Read to its end and checkpointed at `SHARD_END`.
    Ended,
    /// Stopped on request (the worker stops, or a handoff); the lease is kept until let go.
    Stopped,
    /// Processing failed: the lease is released so that the shard is retried (elsewhere).
    Failed,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event<T> {
    /// The clock: expiry, and the end of a handoff wait.
    Tick(T),
    /// The renewal interval passed.
    RenewDue,
    /// The shard task wants to record progress.
    CheckpointDue,
    /// Every parent shard is at `SHARD_END` (or has no lease).
    ParentsDone,
    /// The shard task is over.
    TaskEnded(TaskEnd),
    /// The worker stops: give the lease to `to`, or release it when `None`.
    LetGo { to: Option<String> },
    /// The write in flight went through; the item as it is now.
    Written(Ownership),
    /// The write in flight failed its condition; the item as a consistent read then showed it
    /// (`None`: no such item, or the read failed).
    Conflict(Option<Ownership>),
    /// The write in flight failed (throttled, timed out): whether it was applied is unknown.
    Failed,
    /// The item as read while waiting for a handoff.
    Read(Option<Ownership>),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send this write (one at a time per lease).
    Send(Op),
    /// Start the shard task.
    StartTask,
    /// Ask the shard task to finish its batch and stop.
    StopTask,
    /// Stop the shard task at once: another worker may be reading the shard.
    AbortTask,
    /// The progress write asked for is not made: the lease is not ours (any more).
    Refuse,
    /// Another live process writes this lease with this worker's id.
    DuplicateWorkerId,
}

/// Timings every lease of a worker shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timing {
    /// No successful write for this long: the lease is no longer ours.
    pub failover: Duration,
    /// How long a new owner waits for the old one to finish a handoff (at least `failover`
    /// plus `margin`).
    pub handoff_wait: Duration,
    /// How much later than the old owner's own expiry a new owner starts without it: room for
    /// the old owner's timer to fire and its task to stop.
    pub margin: Duration,
}

/// How a worker that does not hold a lease may take it, from what it saw of it; `None` when it
/// may not. `expired`: its counter and owner have not changed for longer than the failover time
/// as this worker observed them (an unowned lease too can be expired). Which of the allowed
/// leases to take is balancing's choice.
pub fn take_rule(seen: &Ownership, me: &str, expired: bool, handoffs: bool) -> Option<Op> {
    if expired {
        return Some(Op::TakeExpired);
    }
    match seen.owner.as_deref() {
        None => Some(Op::Take),
        // Handed to us by a stopping worker; otherwise ours only in name (a previous run, or a
        // second live process with our id): taken only once it expired.
        Some(owner) if owner == me => seen.handed_over.then_some(Op::Take),
        Some(_) if handoffs && seen.checkpoint_owner.is_none() => Some(Op::TakeWithHandoff),
        Some(_) => None,
    }
}

/// How a worker that follows a leader (`CONSUMER_LEASE_ASSIGNMENT=leader`, the KCL 3.x way)
/// may take a lease: only one the table shows as its own, assigned to it by the leader or
/// handed over by a stopping worker. At once when `handedOverBy` marks it (our leaders and our
/// stopping workers write it), otherwise once expired as [`take_rule`] would (a Java leader
/// does not mark it, and a lease merely showing our id may be held by a second live process
/// with it). Never an unowned lease or another worker's: the leader assigns those.
pub fn follow_rule(seen: &Ownership, me: &str, expired: bool) -> Option<Op> {
    if seen.owner.as_deref() != Some(me) {
        return None;
    }
    if expired {
        Some(Op::TakeExpired)
    } else {
        seen.handed_over.then_some(Op::Take)
    }
}

/// One lease's life at one worker. `T` is the driver's clock (`tokio::time::Instant` in
/// production, a plain duration in the model).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseMachine<T> {
    me: String,
    timing: Timing,
    state: State,
    /// The item as last written or read.
    seen: Ownership,
    /// When the last write that kept the lease was sent.
    renewed: T,
    /// `AwaitingHandoff`: when the new owner stops waiting.
    handoff_deadline: Option<T>,
    /// The write in flight, when it was sent, and whether it is already a retry.
    in_flight: Option<(Op, T, bool)>,
}

impl<T> LeaseMachine<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    /// Starts taking a lease seen as `seen`, with `op` (from [`take_rule`]), at `now`. The
    /// driver sends `op` and feeds its answer back.
    pub fn take(me: &str, seen: Ownership, op: Op, timing: Timing, now: T) -> Self {
        debug_assert!(matches!(
            op,
            Op::Take | Op::TakeExpired | Op::TakeWithHandoff
        ));
        Self {
            me: me.to_string(),
            timing,
            state: State::Taking,
            seen,
            renewed: now,
            handoff_deadline: None,
            in_flight: Some((op, now, false)),
        }
    }

    /// The write the machine was created with.
    pub fn first_write(&self) -> Option<&Op> {
        self.in_flight.as_ref().map(|(op, _, _)| op)
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// This worker's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn seen(&self) -> &Ownership {
        &self.seen
    }

    /// When the lease runs out unless a write keeps it before.
    pub fn expires_at(&self) -> T {
        self.renewed + self.timing.failover
    }

    /// When the next [`Event::Tick`] has something to do (expiry or the end of a handoff
    /// wait); `None` once the lease is not held.
    pub fn next_deadline(&self) -> Option<T> {
        match self.state {
            State::Taking | State::LettingGo | State::Gone(_) => None,
            State::AwaitingHandoff => Some(
                self.handoff_deadline
                    .map_or(self.expires_at(), |d| d.min(self.expires_at())),
            ),
            _ => Some(self.expires_at()),
        }
    }

    pub fn is_gone(&self) -> bool {
        matches!(self.state, State::Gone(_))
    }

    /// Whether the shard task may be reading records now.
    pub fn is_processing(&self) -> bool {
        matches!(self.state, State::Reading | State::HandingOff)
    }

    /// Whether a write is in flight.
    pub fn is_writing(&self) -> bool {
        self.in_flight.is_some()
    }

    fn send(&mut self, op: Op, now: T, retry: bool) -> Action {
        self.in_flight = Some((op.clone(), now, retry));
        Action::Send(op)
    }

    fn gone(&mut self, why: Gone, actions: &mut Vec<Action>) {
        if matches!(
            self.state,
            State::WaitingForParents | State::Reading | State::HandingOff | State::Parked
        ) {
            actions.push(Action::AbortTask);
        }
        self.state = State::Gone(why);
        self.handoff_deadline = None;
    }

    /// Expires a held lease whose time ran out: the task is aborted, nothing more is written.
    fn expire_if_due(&mut self, now: T, actions: &mut Vec<Action>) -> bool {
        if self.next_deadline().is_some() && now >= self.expires_at() {
            self.gone(Gone::Expired, actions);
            return true;
        }
        false
    }

    /// The one transition function: the new state is kept, the actions returned. Every event
    /// but [`Event::Tick`] may ask for a write, so the driver feeds them one at a time, never
    /// while a write is in flight; `Tick` only ever expires the lease, so a timer may feed it
    /// at any time.
    pub fn on(&mut self, event: Event<T>, now: T) -> Vec<Action> {
        let mut actions = Vec::new();
        // A lease that ran out is gone before anything else is looked at, so that nothing is
        // written or started on it. The answer to a write is looked at first: a write that kept
        // the lease moves its expiry to the failover time after it was sent.
        let answer = matches!(
            event,
            Event::Written(_) | Event::Conflict(_) | Event::Failed
        );
        if !answer && self.expire_if_due(now, &mut actions) {
            if matches!(event, Event::CheckpointDue) {
                actions.push(Action::Refuse);
            }
            return actions;
        }
        match event {
            Event::Tick(_) => {}
            Event::RenewDue => {
                if matches!(
                    self.state,
                    State::AwaitingHandoff
                        | State::WaitingForParents
                        | State::Reading
                        | State::Parked
                ) && !self.is_writing()
                {
                    actions.push(self.send(Op::Renew, now, false));
                }
            }
            Event::CheckpointDue => match self.state {
                State::Reading | State::WaitingForParents | State::Parked if !self.is_writing() => {
                    actions.push(self.send(Op::Checkpoint, now, false))
                }
                State::HandingOff if !self.is_writing() => {
                    actions.push(self.send(Op::CheckpointInHandoff, now, false))
                }
                _ => actions.push(Action::Refuse),
            },
            Event::ParentsDone => {
                if self.state == State::WaitingForParents {
                    self.state = State::Reading;
                }
            }
            Event::TaskEnded(end) => match (self.state, end) {
                (State::HandingOff, _) if !self.is_writing() => {
                    self.state = State::LettingGo;
                    actions.push(self.send(Op::FinishHandoff, now, false));
                }
                (State::WaitingForParents | State::Reading | State::Parked, TaskEnd::Stopped) => {
                    self.state = State::Parked
                }
                (State::WaitingForParents | State::Reading | State::Parked, _)
                    if !self.is_writing() =>
                {
                    self.state = State::LettingGo;
                    actions.push(self.send(Op::Release, now, false));
                }
                _ => {}
            },
            Event::LetGo { to } => {
                if !self.is_writing() {
                    self.let_go(to, now, &mut actions);
                }
            }
            Event::Read(read) => {
                if self.state == State::AwaitingHandoff && !self.is_writing() {
                    match read {
                        Some(item)
                            if item.owned_by(&self.me) && item.counter == self.seen.counter =>
                        {
                            if item.checkpoint_owner.is_none() {
                                self.seen = item;
                                self.start(&mut actions);
                            } else if self.handoff_deadline.is_some_and(|d| now >= d) {
                                actions.push(self.send(Op::ClearHandoff, now, false));
                            }
                        }
                        // Changed by somebody else: not ours any more.
                        Some(_) => self.gone(Gone::Lost, &mut actions),
                        None => {}
                    }
                }
            }
            Event::Written(item) => self.written(item, &mut actions),
            Event::Conflict(current) => self.conflict(current, now, &mut actions),
            Event::Failed => {
                if self.in_flight.take().is_some() {
                    match self.state {
                        State::Taking => self.state = State::Gone(Gone::NotTaken),
                        State::LettingGo => self.state = State::Gone(Gone::Abandoned),
                        _ => {}
                    }
                }
            }
        }
        // A take or a write whose answer came after the lease's time ran out keeps nothing.
        self.expire_if_due(now, &mut actions);
        actions
    }

    fn let_go(&mut self, to: Option<String>, now: T, actions: &mut Vec<Action>) {
        match self.state {
            State::HandingOff => {
                actions.push(Action::AbortTask);
                self.state = State::LettingGo;
                actions.push(self.send(Op::FinishHandoff, now, false));
            }
            State::AwaitingHandoff | State::WaitingForParents | State::Reading | State::Parked => {
                if matches!(self.state, State::WaitingForParents | State::Reading) {
                    actions.push(Action::AbortTask);
                }
                self.state = State::LettingGo;
                let op = to.map_or(Op::Release, Op::HandOver);
                actions.push(self.send(op, now, false));
            }
            _ => {}
        }
    }

    fn start(&mut self, actions: &mut Vec<Action>) {
        self.handoff_deadline = None;
        self.state = State::WaitingForParents;
        actions.push(Action::StartTask);
    }

    fn written(&mut self, item: Ownership, actions: &mut Vec<Action>) {
        let Some((op, sent, _)) = self.in_flight.take() else {
            return;
        };
        self.seen = item;
        if op.keeps_lease() {
            self.renewed = sent;
        }
        match (self.state, op) {
            (State::Taking, _) => self.taken(sent, actions),
            // Cleared by us at the deadline, or found cleared by a renewal.
            (State::AwaitingHandoff, _) if self.seen.checkpoint_owner.is_none() => {
                self.start(actions)
            }
            (State::LettingGo, _) => self.state = State::Gone(Gone::LetGo),
            _ => {}
        }
    }

    /// A take went through: start now, or wait for the previous owner to finish its handoff.
    fn taken(&mut self, sent: T, actions: &mut Vec<Action>) {
        match &self.seen.checkpoint_owner {
            Some(previous) if *previous != self.me => {
                // Never before the failover time (and a margin) after the take: by then the
                // previous owner's own timer stopped it, since it could not renew.
                let wait = self
                    .timing
                    .handoff_wait
                    .max(self.timing.failover + self.timing.margin);
                self.handoff_deadline = Some(sent + wait);
                self.state = State::AwaitingHandoff;
            }
            _ => self.start(actions),
        }
    }

    fn conflict(&mut self, current: Option<Ownership>, now: T, actions: &mut Vec<Action>) {
        let Some((op, sent, retried)) = self.in_flight.take() else {
            return;
        };
        match self.state {
            State::Taking => {
                self.state = State::Gone(Gone::NotTaken);
                return;
            }
            State::HandingOff => {
                // `checkpointOwner` no longer names us: the new owner stopped waiting.
                self.gone(Gone::Lost, actions);
                if op == Op::CheckpointInHandoff {
                    actions.push(Action::Refuse);
                }
                return;
            }
            State::Gone(_) => return,
            _ => {}
        }
        let Some(current) = current else {
            self.gone(Gone::Lost, actions);
            if op == Op::Checkpoint {
                actions.push(Action::Refuse);
            }
            return;
        };
        // Our own writes never name us as `checkpointOwner` of a lease we own.
        let ours = current.owned_by(&self.me)
            && current.counter == self.seen.counter + 1
            && current.checkpoint_owner.as_deref() != Some(self.me.as_str());
        let mine_in_name = current.owned_by(&self.me) && !ours;
        if self.state == State::LettingGo {
            // A release that went through unseen shows no owner and our counter.
            let released = op == Op::Release
                && current.owner.is_none()
                && current.counter == self.seen.counter + 1;
            let handed = matches!(&op, Op::HandOver(to) if current.owned_by(to))
                && current.counter == self.seen.counter + 1;
            self.seen = current;
            self.state = State::Gone(if released || handed {
                Gone::LetGo
            } else {
                Gone::Lost
            });
            return;
        }
        if ours {
            // Our own earlier write went through unseen: go on from it, and try once more.
            self.seen = current;
            self.renewed = sent;
            if op != Op::Renew && !retried {
                actions.push(self.send(op, now, true));
            } else if op != Op::Renew {
                actions.push(Action::Refuse);
            }
            return;
        }
        if current.checkpoint_owner.as_deref() == Some(self.me.as_str())
            && !current.owned_by(&self.me)
        {
            // Taken from us with a graceful handoff: finish the batch, checkpoint, let go.
            self.seen = current;
            let was_processing = matches!(self.state, State::Reading | State::WaitingForParents);
            match self.state {
                State::Reading | State::WaitingForParents | State::Parked => {
                    self.state = State::HandingOff;
                    if was_processing {
                        actions.push(Action::StopTask);
                    }
                    if op == Op::Checkpoint {
                        actions.push(self.send(Op::CheckpointInHandoff, now, true));
                    } else if self.state == State::HandingOff && !was_processing {
                        // No task to wait for: end the handoff now.
                        self.state = State::LettingGo;
                        actions.push(self.send(Op::FinishHandoff, now, false));
                    }
                }
                // Not started yet (`AwaitingHandoff`): nothing of ours to finish.
                _ => self.gone(Gone::Lost, actions),
            }
            return;
        }
        if mine_in_name
            && !current.handed_over
            && current.checkpoint_owner.as_deref() != Some(self.me.as_str())
        {
            actions.push(Action::DuplicateWorkerId);
        }
        self.seen = current;
        self.gone(Gone::Lost, actions);
        if op == Op::Checkpoint {
            actions.push(Action::Refuse);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(owner: Option<&str>, handed_over: bool) -> Ownership {
        Ownership {
            owner: owner.map(str::to_string),
            checkpoint_owner: None,
            counter: 3,
            handed_over,
        }
    }

    #[test]
    fn a_follower_takes_only_what_the_table_shows_as_its_own() {
        // Unowned, or another worker's: the leader's to assign, expired or not.
        for expired in [false, true] {
            assert_eq!(follow_rule(&item(None, false), "me", expired), None);
            assert_eq!(follow_rule(&item(Some("other"), true), "me", expired), None);
        }
        // Marked by our leader (or a stopping worker): at once.
        assert_eq!(
            follow_rule(&item(Some("me"), true), "me", false),
            Some(Op::Take)
        );
        // A Java leader's assignment, or a second process with our id: once expired.
        assert_eq!(follow_rule(&item(Some("me"), false), "me", false), None);
        assert_eq!(
            follow_rule(&item(Some("me"), false), "me", true),
            Some(Op::TakeExpired)
        );
    }
}
