//! A model of leased mode for the `stateright` model checker: several worker processes, each
//! running the production [`LeaseMachine`] for every lease it holds, against a model of the
//! lease table's conditional writes.
//!
//! What is modelled, and the assumptions:
//! - **The table** is one item per shard with `leaseOwner`, `checkpointOwner`, `leaseCounter`,
//!   `handedOverBy` and the checkpoint. A conditional write is applied atomically, and its
//!   condition and effect are those documented on [`Op`] (DynamoDB's conditional `UpdateItem`
//!   on one item is atomic; nothing here relies on more). A consistent read returns the item as
//!   it is.
//! - **Writes are in flight** from when they are sent until DynamoDB applies them (or refuses
//!   them by their condition) and the answer arrives, both at one step, at most one tick later
//!   (the SDK's call timeout). Before `quiet_from` an answer may be lost instead, the write
//!   applied or not (the driver hears `Failed`); a lost answer counts as a fault, so none is
//!   lost after. Not modelled: a write applied after its answer timed out, and a crashed
//!   process's write in flight landing later.
//! - **Time** is a clock of whole ticks, the same for every process (clocks run at the same
//!   rate; no two are compared). The failover time is 3 ticks, renewals and table scans happen
//!   every tick. A timer that is due fires before the clock moves on: expiry, renewals, scans, a
//!   handoff's deadline and the deadline of a write in flight.
//! - **Taking** follows [`take_rule`] with expiry as the worker judges it (a counter and owner
//!   unchanged for longer than the failover time since this process last saw them change), and
//!   a child only once every parent is at `SHARD_END` as scanned. Which lease a process takes,
//!   and whether it steals, is left free (balancing chooses one of these), within a budget of
//!   steals.
//! - **A leader** (`leader`: the KCL 3.x mode): workers take only what [`follow_rule`] allows
//!   (leases the table shows as theirs), and any live worker may act as a leader (the lock's
//!   exclusivity is not relied on: two may assign at once) within a budget of assignments:
//!   from its last scan, it assigns an unowned or expired lease directly (conditional on the
//!   counter and owner scanned: `leaseOwner = to`, `checkpointOwner` removed, counter up), or
//!   moves a live worker's lease with a graceful handoff (conditional on the owner scanned and
//!   no `checkpointOwner`: `leaseOwner = to`, `checkpointOwner` = the old owner, counter left
//!   alone), marking it `handedOverBy` or not (our leader marks it, a Java leader does not).
//!   Liveness is not checked in this mode: it rests on the leader's passes going on, which a
//!   budget cuts short. The processes listed in `counting` take by [`take_rule`] (count mode,
//!   with the budget of steals) beside the followers: the window in which workers have read
//!   the `Migration3.0` record's switch between the KCL 2.x and 3.x algorithms at different
//!   times.
//! - **Faults**: a process crashes (kill -9), is stopped (SIGTERM: its tasks finish, then each
//!   lease is handed to a live worker or released), or restarts, within a budget of faults and
//!   only before `quiet_from`, so that liveness can be checked after the last one. Two
//!   processes may share one worker id.
//! - **Records**: each shard holds `records` records; a task processes them in order and may
//!   checkpoint after any of them; a closed shard's task checkpoints `SHARD_END` after the
//!   last.

use std::time::Duration;

use kinesis_consumer::lease::machine::{
    follow_rule, take_rule, Action, Event, LeaseMachine, Op, Ownership, State, TaskEnd, Timing,
};
use stateright::{Model, Property};

/// A checkpoint: 0 is `TRIM_HORIZON`, `k` is after the k-th record, [`END`] is `SHARD_END`.
pub type Cp = u8;
pub const END: Cp = u8::MAX;

#[derive(Clone, Debug)]
pub struct ShardSpec {
    pub parents: Vec<usize>,
    /// Closed: its task reaches the end and checkpoints `SHARD_END`.
    pub closed: bool,
    pub records: u8,
}

#[derive(Clone, Debug)]
pub struct LeaseModel {
    /// The worker id of each process (two may share one).
    pub processes: Vec<String>,
    pub shards: Vec<ShardSpec>,
    pub handoffs: bool,
    pub faults: u8,
    pub steals: u8,
    /// No fault from this tick on.
    pub quiet_from: u8,
    /// The clock stops here.
    pub horizon: u8,
    /// Workers follow a leader's assignments (see the module doc).
    pub leader: bool,
    /// How many assignments the leaders make in all.
    pub assigns: u8,
    /// With `leader`: the processes that take by count all the same (see the module doc).
    pub counting: Vec<usize>,
}

const FAILOVER: u8 = 3;

/// How long after the last fault every shard must be held again: a lease left by a crashed
/// worker expires at its holder after the failover time, is seen unchanged by the others for
/// another failover time (a worker never takes a lease it holds in name only before that:
/// it might be a second process with its id), and is taken at the next scan; a handoff ends
/// after the failover time and a margin.
pub const SETTLE: u8 = 2 * FAILOVER + 3;

fn t(tick: u8) -> Duration {
    Duration::from_secs(tick as u64)
}

fn timing() -> Timing {
    Timing {
        failover: t(FAILOVER),
        handoff_wait: t(FAILOVER),
        margin: t(1),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Item {
    pub own: Ownership,
    pub checkpoint: Cp,
}

/// A write in flight: what it writes besides the ownership change, when it was sent, and
/// whether (and how) DynamoDB has applied it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pending {
    op: Op,
    checkpoint: Option<Cp>,
    sent: u8,
    /// `Some(item after)` once applied, `Some(None)` once refused by its condition.
    applied: Option<Option<Item>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Task {
    /// The next record to process (1-based).
    next: u8,
    /// Asked to finish and stop (a handoff or the process stopping).
    stopping: bool,
    /// The last checkpoint this task asked for: it asks again only past it.
    asked: Cp,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub m: LeaseMachine<Duration>,
    write: Option<Pending>,
    task: Option<Task>,
    /// The checkpoint as last written or read by this holder: where a task starts.
    checkpoint: Cp,
    /// The renewer came while a write was in flight: it renews once that write is answered
    /// (it waits for the driver's write lock).
    renew_waiting: bool,
}

/// What a process last saw of a lease at a scan, and since when its counter and owner did not
/// change.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Seen {
    item: Item,
    since: u8,
    /// Taken (or tried) since this scan: not again before the next one.
    tried: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proc {
    alive: bool,
    stopping: bool,
    pub slots: Vec<Option<Slot>>,
    seen: Vec<Option<Seen>>,
    scanned_at: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    pub now: u8,
    pub table: Vec<Item>,
    pub procs: Vec<Proc>,
    faults_left: u8,
    steals_left: u8,
    assigns_left: u8,
    /// Per shard, a bit per record processed successfully.
    processed: Vec<u8>,
    /// Per shard, the tick its last parent reached `SHARD_END` (0 for a shard without parents):
    /// from then on it can be worked on.
    available_at: Vec<u8>,
    /// The first broken rule seen by a transition.
    pub violation: Option<&'static str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    Tick,
    Scan(usize),
    Expire(usize, usize),
    PollHandoff(usize, usize),
    Take(usize, usize),
    /// Process `.0`, as a leader, assigns lease `.1` to worker id `.2` (an index into
    /// `processes`), with a handoff (`.3`), marked `handedOverBy` (`.4`); applied at once.
    Assign(usize, usize, usize, bool, bool),
    /// DynamoDB applies the write in flight (or refuses it) and the answer arrives.
    Answer(usize, usize),
    /// The answer is lost (a timeout): the write was applied or not.
    LoseAnswer(usize, usize, bool),
    ParentsDone(usize, usize),
    Process(usize, usize),
    Checkpoint(usize, usize),
    TaskStops(usize, usize),
    LetGo(usize, usize, Option<String>),
    Crash(usize),
    Stop(usize),
    Exit(usize),
    Restart(usize),
}

impl Proc {
    fn new(shards: usize) -> Self {
        Self {
            alive: true,
            stopping: false,
            slots: vec![None; shards],
            seen: vec![None; shards],
            scanned_at: None,
        }
    }
}

impl LeaseModel {
    fn parents_ended(&self, table: &[Item], s: usize) -> bool {
        self.shards[s]
            .parents
            .iter()
            .all(|&p| table[p].checkpoint == END)
    }

    /// How process `i` may take lease `s` now, from its last scan; `None` when it may not.
    fn may_take(&self, w: &World, i: usize, s: usize) -> Option<Op> {
        let p = &w.procs[i];
        if p.stopping || p.slots[s].is_some() {
            return None;
        }
        let seen = p.seen[s].as_ref().filter(|x| !x.tried)?;
        if seen.item.checkpoint == END {
            return None;
        }
        let parents_ended = self.shards[s]
            .parents
            .iter()
            .all(|&q| p.seen[q].as_ref().is_some_and(|x| x.item.checkpoint == END));
        let expired = w.now - seen.since > FAILOVER;
        if self.leader && !self.counting.contains(&i) {
            return follow_rule(&seen.item.own, &self.processes[i], expired)
                .filter(|_| parents_ended);
        }
        match take_rule(&seen.item.own, &self.processes[i], expired, self.handoffs)? {
            Op::TakeWithHandoff if w.steals_left == 0 => None,
            op if parents_ended => Some(op),
            _ => None,
        }
    }

    /// Timers that must fire before the clock moves on, and work that a worker does at once:
    /// taking a lease nobody else may hold, and its shutdown.
    fn urgent(&self, w: &World) -> bool {
        let n = self.shards.len();
        w.procs.iter().enumerate().any(|(i, p)| {
            p.alive
                && (p.stopping
                    || (0..n).any(|s| {
                        matches!(self.may_take(w, i, s), Some(Op::Take | Op::TakeExpired))
                    })
                    || p.scanned_at.is_none_or(|at| at < w.now)
                    || p.slots.iter().flatten().any(|slot| {
                        slot.write.as_ref().is_some_and(|x| x.sent < w.now)
                            || slot.m.next_deadline().is_some_and(|d| d <= t(w.now))
                    }))
        })
    }

    /// Feeds one event to a slot's machine and carries out what it asks.
    fn feed(
        &self,
        w: &mut World,
        p: usize,
        s: usize,
        event: Event<Duration>,
        checkpoint: Option<Cp>,
    ) {
        let now = w.now;
        let stopping = w.procs[p].stopping;
        let Some(slot) = w.procs[p].slots[s].as_mut() else {
            return;
        };
        let actions = slot.m.on(event, t(now));
        for action in actions {
            match action {
                Action::Send(op) => {
                    let cp = match op {
                        Op::Checkpoint | Op::CheckpointInHandoff => checkpoint,
                        _ => None,
                    };
                    slot.write = Some(Pending {
                        op,
                        checkpoint: cp,
                        sent: now,
                        applied: None,
                    });
                }
                Action::StartTask => {
                    slot.task = Some(Task {
                        next: if slot.checkpoint == END {
                            END
                        } else {
                            slot.checkpoint + 1
                        },
                        stopping,
                        asked: slot.checkpoint,
                    })
                }
                Action::StopTask => {
                    if let Some(task) = slot.task.as_mut() {
                        task.stopping = true;
                    }
                }
                Action::AbortTask => slot.task = None,
                Action::Refuse | Action::DuplicateWorkerId => {}
            }
        }
        if slot.m.is_gone() && slot.write.is_none() {
            w.procs[p].slots[s] = None;
        }
    }

    /// Applies a write to the table model: its condition, then its effect.
    fn apply(&self, me: &str, pending: &Pending, seen: &Ownership, item: &Item) -> Option<Item> {
        let own = &item.own;
        let counter_and_owner = own.counter == seen.counter && own.owner == seen.owner;
        let mut next = item.clone();
        match &pending.op {
            Op::CheckpointInHandoff | Op::FinishHandoff => {
                if own.checkpoint_owner.as_deref() != Some(me) {
                    return None;
                }
                if pending.op == Op::FinishHandoff {
                    next.own.checkpoint_owner = None;
                }
            }
            op => {
                if !counter_and_owner {
                    return None;
                }
                next.own.counter += 1;
                match op {
                    Op::Take | Op::TakeExpired => {
                        next.own.owner = Some(me.to_string());
                        next.own.handed_over = false;
                        if own.checkpoint_owner.as_deref() == Some(me) || *op == Op::TakeExpired {
                            next.own.checkpoint_owner = None;
                        }
                    }
                    Op::TakeWithHandoff => {
                        if own.checkpoint_owner.is_some() {
                            return None;
                        }
                        next.own.owner = Some(me.to_string());
                        next.own.checkpoint_owner = own.owner.clone();
                    }
                    Op::ClearHandoff => next.own.checkpoint_owner = None,
                    Op::Release => next.own.owner = None,
                    Op::HandOver(to) => {
                        next.own.owner = Some(to.clone());
                        next.own.handed_over = true;
                    }
                    _ => {}
                }
            }
        }
        if let Some(cp) = pending.checkpoint {
            next.checkpoint = cp;
        }
        Some(next)
    }

    fn holder_processing(w: &World, s: usize) -> usize {
        w.procs
            .iter()
            .filter(|p| p.alive)
            .filter(|p| {
                p.slots[s]
                    .as_ref()
                    .is_some_and(|slot| slot.task.is_some() && slot.m.is_processing())
            })
            .count()
    }
}

impl Model for LeaseModel {
    type State = World;
    type Action = Step;

    fn init_states(&self) -> Vec<World> {
        let n = self.shards.len();
        vec![World {
            now: 0,
            table: vec![
                Item {
                    own: Ownership {
                        owner: None,
                        checkpoint_owner: None,
                        counter: 0,
                        handed_over: false,
                    },
                    checkpoint: 0,
                };
                n
            ],
            procs: self.processes.iter().map(|_| Proc::new(n)).collect(),
            faults_left: self.faults,
            steals_left: self.steals,
            assigns_left: self.assigns,
            processed: vec![0; n],
            available_at: vec![0; n],
            violation: None,
        }]
    }

    fn actions(&self, w: &World, out: &mut Vec<Step>) {
        if w.violation.is_some() {
            return;
        }
        let n = self.shards.len();
        if w.now < self.horizon && !self.urgent(w) {
            out.push(Step::Tick);
        }
        let faults = w.faults_left > 0 && w.now < self.quiet_from;
        for (i, p) in w.procs.iter().enumerate() {
            if !p.alive {
                if faults {
                    out.push(Step::Restart(i));
                }
                continue;
            }
            if p.scanned_at.is_none_or(|at| at < w.now) {
                out.push(Step::Scan(i));
            }
            if faults {
                out.push(Step::Crash(i));
                if !p.stopping {
                    out.push(Step::Stop(i));
                }
            }
            if p.stopping && p.slots.iter().all(Option::is_none) {
                out.push(Step::Exit(i));
            }
            if self.leader && w.assigns_left > 0 && !p.stopping {
                for s in 0..n {
                    for step in self.assignments(w, i, s) {
                        out.push(step);
                    }
                }
            }
            for s in 0..n {
                match &p.slots[s] {
                    None => {
                        if self.may_take(w, i, s).is_some() {
                            out.push(Step::Take(i, s));
                        }
                    }
                    Some(slot) => {
                        if slot.write.is_some() {
                            out.push(Step::Answer(i, s));
                            // A lost answer is a fault too: none once faults stop.
                            if w.now < self.quiet_from {
                                out.push(Step::LoseAnswer(i, s, false));
                                out.push(Step::LoseAnswer(i, s, true));
                            }
                        }
                        if slot.m.next_deadline().is_some_and(|d| d <= t(w.now)) {
                            if slot.m.expires_at() <= t(w.now) {
                                out.push(Step::Expire(i, s));
                            } else if slot.write.is_none() {
                                out.push(Step::PollHandoff(i, s));
                            }
                        }
                        if slot.m.state() == State::AwaitingHandoff && slot.write.is_none() {
                            out.push(Step::PollHandoff(i, s));
                        }
                        if let Some(task) = &slot.task {
                            match slot.m.state() {
                                State::WaitingForParents if self.parents_ended(&w.table, s) => {
                                    out.push(Step::ParentsDone(i, s))
                                }
                                State::Reading | State::HandingOff => {
                                    if !task.stopping && task.next <= self.shards[s].records {
                                        out.push(Step::Process(i, s));
                                    }
                                    if slot.write.is_none()
                                        && task.asked != END
                                        && (task.next - 1 > task.asked
                                            || task.next > self.shards[s].records
                                                && self.shards[s].closed)
                                    {
                                        out.push(Step::Checkpoint(i, s));
                                    }
                                }
                                _ => {}
                            }
                            if task.stopping && slot.write.is_none() {
                                out.push(Step::TaskStops(i, s));
                            }
                        }
                        if p.stopping
                            && slot.write.is_none()
                            && matches!(slot.m.state(), State::Parked | State::AwaitingHandoff)
                        {
                            out.push(Step::LetGo(i, s, None));
                            // To any other worker id the scans show holding a lease.
                            let me = &self.processes[i];
                            let mut others: Vec<&String> = p
                                .seen
                                .iter()
                                .flatten()
                                .filter_map(|x| x.item.own.owner.as_ref())
                                .filter(|o| *o != me)
                                .collect();
                            others.sort();
                            others.dedup();
                            for o in others {
                                out.push(Step::LetGo(i, s, Some(o.clone())));
                            }
                        }
                    }
                }
            }
        }
    }

    fn next_state(&self, last: &World, step: Step) -> Option<World> {
        let mut w = last.clone();
        let now = w.now;
        match step {
            Step::Tick => {
                // Every live worker's renewer fires at the tick (renewals are every tick).
                w.now += 1;
                for p in 0..w.procs.len() {
                    if !w.procs[p].alive {
                        continue;
                    }
                    for s in 0..self.shards.len() {
                        match w.procs[p].slots[s].as_mut() {
                            Some(x) if x.write.is_none() => {
                                self.feed(&mut w, p, s, Event::RenewDue, None)
                            }
                            Some(x) => x.renew_waiting = true,
                            None => {}
                        }
                    }
                }
            }
            Step::Scan(p) => {
                for s in 0..self.shards.len() {
                    let item = w.table[s].clone();
                    let since = match &w.procs[p].seen[s] {
                        Some(x)
                            if x.item.own.counter == item.own.counter
                                && x.item.own.owner == item.own.owner =>
                        {
                            x.since
                        }
                        _ => now,
                    };
                    w.procs[p].seen[s] = Some(Seen {
                        item,
                        since,
                        tried: false,
                    });
                }
                w.procs[p].scanned_at = Some(now);
            }
            Step::Expire(p, s) => self.feed(&mut w, p, s, Event::Tick(t(now)), None),
            Step::PollHandoff(p, s) => {
                // The driver keeps the item read, so a task started now starts from its
                // checkpoint.
                let item = w.table[s].clone();
                if let Some(slot) = w.procs[p].slots[s].as_mut() {
                    if item.own.owner == slot.m.seen().owner
                        && item.own.counter == slot.m.seen().counter
                    {
                        slot.checkpoint = item.checkpoint;
                    }
                }
                self.feed(&mut w, p, s, Event::Read(Some(item.own)), None);
            }
            Step::Take(p, s) => {
                let op = self.may_take(&w, p, s)?;
                let seen = w.procs[p].seen[s].clone()?;
                w.procs[p].seen[s].as_mut()?.tried = true;
                let me = &self.processes[p];
                if op == Op::TakeWithHandoff {
                    w.steals_left -= 1;
                }
                let m = LeaseMachine::take(me, seen.item.own.clone(), op.clone(), timing(), t(now));
                w.procs[p].slots[s] = Some(Slot {
                    m,
                    write: Some(Pending {
                        op,
                        checkpoint: None,
                        sent: now,
                        applied: None,
                    }),
                    task: None,
                    checkpoint: seen.item.checkpoint,
                    renew_waiting: false,
                });
            }
            Step::Assign(by, s, to, handoff, mark) => {
                let seen = &last.procs[by].seen[s].as_ref()?.item.own;
                let item = &w.table[s].own;
                let to = self.processes[to].clone();
                w.assigns_left -= 1;
                if handoff {
                    if item.owner == seen.owner && item.checkpoint_owner.is_none() {
                        let old = item.owner.clone();
                        let next = &mut w.table[s].own;
                        next.owner = Some(to);
                        next.checkpoint_owner = old;
                        next.handed_over = mark;
                    }
                } else if item.counter == seen.counter && item.owner == seen.owner {
                    let next = &mut w.table[s].own;
                    next.owner = Some(to);
                    next.checkpoint_owner = None;
                    next.counter += 1;
                    next.handed_over = mark;
                }
            }
            Step::Answer(p, s) => {
                self.apply_write(&mut w, p, s);
                let slot = w.procs[p].slots[s].as_mut()?;
                let pending = slot.write.take()?;
                let current = w.table[s].clone();
                let (event, ended) = match pending.applied.clone()? {
                    Some(item) => {
                        slot.checkpoint = item.checkpoint;
                        (Event::Written(item.own), pending.checkpoint == Some(END))
                    }
                    None => (Event::Conflict(Some(current.own.clone())), false),
                };
                self.feed(&mut w, p, s, event, pending.checkpoint);
                adopt(&mut w, p, s, &current);
                if ended {
                    if let Some(slot) = w.procs[p].slots[s].as_mut() {
                        slot.task = None;
                    }
                    self.feed(&mut w, p, s, Event::TaskEnded(TaskEnd::Ended), None);
                }
                self.renew_if_waiting(&mut w, p, s);
            }
            Step::LoseAnswer(p, s, applied) => {
                if applied {
                    self.apply_write(&mut w, p, s);
                }
                let slot = w.procs[p].slots[s].as_mut()?;
                slot.write = None;
                // The task does not know whether its checkpoint was written: it asks again
                // (the shard task retries a failed `SHARD_END` checkpoint).
                if let Some(task) = slot.task.as_mut() {
                    task.asked = 0;
                }
                self.feed(&mut w, p, s, Event::Failed, None);
                self.renew_if_waiting(&mut w, p, s);
            }
            Step::ParentsDone(p, s) => self.feed(&mut w, p, s, Event::ParentsDone, None),
            Step::Process(p, s) => {
                if !self.parents_ended(&w.table, s) {
                    w.violation = Some("a child shard was read before its parents ended");
                }
                let slot = w.procs[p].slots[s].as_mut()?;
                let task = slot.task.as_mut()?;
                w.processed[s] |= 1 << (task.next - 1);
                task.next += 1;
            }
            Step::Checkpoint(p, s) => {
                let records = self.shards[s].records;
                let closed = self.shards[s].closed;
                let task = w.procs[p].slots[s].as_mut()?.task.as_mut()?;
                let cp = if task.next > records && closed {
                    END
                } else {
                    task.next - 1
                };
                task.asked = cp;
                self.feed(&mut w, p, s, Event::CheckpointDue, Some(cp));
            }
            Step::TaskStops(p, s) => {
                w.procs[p].slots[s].as_mut()?.task = None;
                self.feed(&mut w, p, s, Event::TaskEnded(TaskEnd::Stopped), None);
            }
            Step::LetGo(p, s, to) => self.feed(&mut w, p, s, Event::LetGo { to }, None),
            Step::Crash(p) => {
                w.faults_left -= 1;
                w.procs[p] = Proc::new(self.shards.len());
                w.procs[p].alive = false;
            }
            Step::Stop(p) => {
                w.faults_left -= 1;
                let proc = &mut w.procs[p];
                proc.stopping = true;
                for slot in proc.slots.iter_mut().flatten() {
                    if let Some(task) = slot.task.as_mut() {
                        task.stopping = true;
                    }
                }
            }
            Step::Exit(p) => {
                w.procs[p] = Proc::new(self.shards.len());
                w.procs[p].alive = false;
            }
            Step::Restart(p) => {
                w.faults_left -= 1;
                w.procs[p] = Proc::new(self.shards.len());
            }
        }
        Some(w)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "no two workers process one shard at once",
                |m: &LeaseModel, w: &World| {
                    (0..m.shards.len()).all(|s| LeaseModel::holder_processing(w, s) <= 1)
                },
            ),
            Property::always(
                "checkpoints move forward over processed records, children after parents",
                |_, w: &World| w.violation.is_none(),
            ),
            Property::always(
                "a holder reading a lease never takes itself for its checkpointOwner",
                |m: &LeaseModel, w: &World| {
                    // The item may name a reader as both owner and checkpointOwner for a
                    // moment (a stealer that stops hands the lease back to the worker still
                    // reading it, which learns at its next write); the reader must never take
                    // that item as its own (it would keep `checkpointOwner` on it for good).
                    w.procs.iter().enumerate().all(|(i, p)| {
                        let me = Some(&m.processes[i]);
                        p.slots.iter().flatten().all(|x| {
                            let seen = x.m.seen();
                            !(x.m.state() == State::Reading
                                && seen.owner.as_ref() == me
                                && seen.checkpoint_owner.as_ref() == me)
                        })
                    })
                },
            ),
            Property::always(
                "every shard is held again once faults stop",
                |m: &LeaseModel, w: &World| {
                    if m.leader {
                        return true;
                    }
                    // Checked at the end of time, with every timer fired, when the last fault
                    // is at least `SETTLE` ticks back: a shard that could be worked on (not
                    // ended, parents ended) since `SETTLE` ticks before has a live holder.
                    if w.now < m.horizon || m.horizon < m.quiet_from + SETTLE || m.urgent(w) {
                        return true;
                    }
                    // Only shards that could be worked on `SETTLE` ticks before the end.
                    (0..m.shards.len()).all(|s| {
                        w.table[s].checkpoint == END
                            || !m.parents_ended(&w.table, s)
                            || w.available_at[s] + SETTLE > m.horizon
                            || w.procs.iter().any(|p| {
                                p.alive
                                    && !p.stopping
                                    && p.slots[s].as_ref().is_some_and(|x| !x.m.is_gone())
                            })
                    })
                },
            ),
            Property::sometimes(
                "sometimes: a shard is read to its end",
                |m: &LeaseModel, w: &World| {
                    (0..m.shards.len()).any(|s| m.shards[s].closed && w.table[s].checkpoint == END)
                },
            ),
            Property::sometimes(
                "sometimes: a lease is handed off gracefully",
                |_, w: &World| w.table.iter().any(|i| i.own.checkpoint_owner.is_some()),
            ),
        ]
    }

    fn within_boundary(&self, w: &World) -> bool {
        w.now <= self.horizon
    }
}

impl LeaseModel {
    /// The assignments process `i`, as a leader, may make of lease `s` from its last scan: an
    /// unowned or expired lease directly, a live one with a handoff, to any worker id but its
    /// actual owner, marked or not.
    fn assignments(&self, w: &World, i: usize, s: usize) -> Vec<Step> {
        let p = &w.procs[i];
        let Some(seen) = p.seen[s].as_ref() else {
            return Vec::new();
        };
        let parents_ended = self.shards[s]
            .parents
            .iter()
            .all(|&q| p.seen[q].as_ref().is_some_and(|x| x.item.checkpoint == END));
        if seen.item.checkpoint == END || !parents_ended {
            return Vec::new();
        }
        let own = &seen.item.own;
        let expired = own.owner.is_none() || w.now - seen.since > FAILOVER;
        let actual = own.checkpoint_owner.as_ref().or(own.owner.as_ref());
        let mut out = Vec::new();
        for to in 0..self.processes.len() {
            // One step per worker id.
            if self.processes[..to].contains(&self.processes[to]) {
                continue;
            }
            if actual == Some(&self.processes[to]) && !(expired && own.checkpoint_owner.is_some()) {
                continue;
            }
            let handoff = !expired;
            if handoff && (own.checkpoint_owner.is_some() || !self.handoffs) {
                continue;
            }
            for mark in [false, true] {
                out.push(Step::Assign(i, s, to, handoff, mark));
            }
        }
        out
    }

    /// A renewal that waited for the write in flight goes out now that it is answered.
    fn renew_if_waiting(&self, w: &mut World, p: usize, s: usize) {
        if let Some(slot) = w.procs[p].slots[s].as_mut() {
            if slot.renew_waiting && slot.write.is_none() {
                slot.renew_waiting = false;
                self.feed(w, p, s, Event::RenewDue, None);
            }
        }
    }

    fn apply_write(&self, w: &mut World, p: usize, s: usize) -> Option<()> {
        let me = self.processes[p].clone();
        let slot = w.procs[p].slots[s].as_ref()?;
        let pending = slot.write.clone()?;
        let result = self.apply(&me, &pending, slot.m.seen(), &w.table[s]);
        if let Some(next) = &result {
            if let Some(cp) = pending.checkpoint {
                let old = w.table[s].checkpoint;
                if cp != END && (old == END || cp < old) {
                    w.violation = Some("a checkpoint moved backwards");
                }
                let upto = if cp == END {
                    self.shards[s].records
                } else {
                    cp
                };
                let needed = ((1u16 << upto) - 1) as u8;
                if w.processed[s] & needed != needed {
                    w.violation = Some("a checkpoint passed a record never processed");
                }
            }
            let ended = next.checkpoint == END && w.table[s].checkpoint != END;
            w.table[s] = next.clone();
            if ended {
                let now = w.now;
                for c in 0..self.shards.len() {
                    if self.shards[c].parents.contains(&s) && self.parents_ended(&w.table, c) {
                        w.available_at[c] = now;
                    }
                }
            }
        }
        w.procs[p].slots[s].as_mut()?.write.as_mut()?.applied = Some(result);
        Some(())
    }
}

/// A machine that adopted the item as read also adopts its checkpoint (the driver keeps the
/// whole item).
fn adopt(w: &mut World, p: usize, s: usize, read: &Item) {
    if let Some(slot) = w.procs[p].slots[s].as_mut() {
        if *slot.m.seen() == read.own {
            slot.checkpoint = read.checkpoint;
        }
    }
}
