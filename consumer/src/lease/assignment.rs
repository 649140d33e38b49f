//! Load-aware lease assignment, the Java KCL 3.x algorithm (`LeaseAssignmentManager` with its
//! `VarianceBasedLeaseAssignmentDecider`), as a pure function: leases and worker metrics in,
//! assignments out. The leader ([`super::leader`]) runs a pass every
//! [`AssignmentConfig::interval`] and makes the writes.
//!
//! One pass:
//! 1. Only workers with a fresh, valid metrics entry whose last values are not failing
//!    ([`WorkerLoad`]) are *eligible*; a worker without one keeps what it renews and gets nothing.
//! 2. A lease without `throughputKBps` counts as the average of those that have one; the fleet
//!    target is `average lease throughput x leases / eligible workers`. A "default" worker (no
//!    `sts`, no `opr`) gets one metric, `T`, its assigned throughput as a percentage of that
//!    target, with 100 as its maximum: so it is balanced by throughput.
//! 3. Expired or unassigned leases (oldest first, unassigned before all) go one by one to the
//!    eligible worker furthest below the fleet average in the metric where it is closest to it
//!    (`computePercentageToReachAverage`), whose values are then extrapolated for the lease's
//!    throughput.
//! 4. Every [`AssignmentConfig::variance_every`]th pass (the first one after taking the lead
//!    included), for each metric, the workers above `average x (1 + threshold)` (or above their
//!    operating range; the most loaded one when any worker is outside the band) give up
//!    `assigned throughput x (value - average) / value x dampening`, in leases picked at random
//!    whose throughputs add up to no more than that (or the lightest one when none fits); the
//!    metric with the most to move wins. Each lease goes to the worker furthest below
//!    average, unless that would lift the worker above the fleet average or its range.
//! 5. A lease moved from a live owner is handed over gracefully (`checkpointOwner`); expired
//!    or unassigned leases are assigned directly.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use rand::seq::SliceRandom;
use rand::Rng;

/// The metric a "default" worker is balanced by: its share of the throughput target.
pub const THROUGHPUT_METRIC: &str = "T";

/// The KCL 3.x `WorkerUtilizationAwareAssignmentConfig` defaults, and its pass interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AssignmentConfig {
    /// `dampeningPercentage` (60): how much of a worker's excess load moves in one pass.
    pub dampening_percent: f64,
    /// `reBalanceThresholdPercentage` (10): the band around the fleet average left alone.
    pub rebalance_threshold_percent: f64,
    /// `allowThroughputOvershoot` (true): a worker above average gives its lightest lease when
    /// no set of leases fits the throughput to move.
    pub allow_throughput_overshoot: bool,
    /// `varianceBalancingFrequency` (3): rebalancing runs every this many passes.
    pub variance_every: u32,
    /// `maxThroughputPerHostKBps` (no limit).
    pub max_throughput_per_worker_kbps: f64,
    /// `maxLeasesForWorker` (no limit).
    pub max_leases_per_worker: usize,
    /// `workerMetricsEMAAlpha` (0.5): weight of the newest value in a metric's average.
    pub ema_alpha: f64,
}

impl Default for AssignmentConfig {
    fn default() -> Self {
        Self {
            dampening_percent: 60.0,
            rebalance_threshold_percent: 10.0,
            allow_throughput_overshoot: true,
            variance_every: 3,
            max_throughput_per_worker_kbps: f64::MAX,
            max_leases_per_worker: usize::MAX,
            ema_alpha: 0.5,
        }
    }
}

/// A lease as the leader's scan shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseLoad {
    pub key: String,
    pub owner: Option<String>,
    /// `checkpointOwner`: a handoff in progress; its "actual owner" is still this worker.
    pub checkpoint_owner: Option<String>,
    /// `throughputKBps` as its holder last wrote it.
    pub throughput_kbps: Option<f64>,
    /// Unassigned, or its counter has not moved for the failover time as the leader saw it.
    pub expired_or_unassigned: bool,
    /// Order among expired leases: how long ago the counter last moved (larger first).
    /// Unassigned leases come before every expired one.
    pub idle_for_ms: u64,
}

impl LeaseLoad {
    /// The KCL's `actualOwner`: during a handoff, the worker still finishing it.
    pub fn actual_owner(&self) -> Option<&str> {
        self.checkpoint_owner.as_deref().or(self.owner.as_deref())
    }
}

/// A worker's published metrics (`sts`, `opr`), already found fresh and valid.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerLoad {
    pub worker_id: String,
    /// `sts`: metric name -> recent values (-1 = read failed).
    pub stats: BTreeMap<String, Vec<f64>>,
    /// `opr`: metric name -> operating range, first value the maximum utilisation.
    pub operating_range: BTreeMap<String, Vec<i64>>,
}

impl WorkerLoad {
    /// No `sts` and no `opr`: balanced by throughput.
    pub fn is_default(&self) -> bool {
        (self.stats.is_empty() && self.operating_range.is_empty())
            || self.stats.contains_key("THROUGHPUT")
    }

    /// The KCL's `isAnyWorkerMetricFailing`: the last value of a metric is -1.
    pub fn is_failing(&self) -> bool {
        !self.is_default()
            && self
                .stats
                .values()
                .any(|v| v.last().is_some_and(|x| *x == -1.0))
    }
}

/// One write for the leader to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: String,
    pub to: String,
    /// From a live owner: a graceful handoff (`checkpointOwner` = the old owner), not a direct
    /// assignment.
    pub handoff: bool,
}

/// A worker during a pass: its metric averages, extrapolated as leases are added.
#[derive(Debug, Clone)]
struct Candidate {
    id: String,
    /// Metric name -> average value (EMA of `sts`, failures left out).
    values: BTreeMap<String, f64>,
    /// Metric name -> maximum utilisation.
    max: BTreeMap<String, f64>,
}

fn ema(values: &[f64], alpha: f64) -> f64 {
    let mut avg: Option<f64> = None;
    for v in values.iter().copied().filter(|v| *v != -1.0) {
        avg = Some(match avg {
            None => v,
            Some(a) => alpha * v + (1.0 - alpha) * a,
        });
    }
    avg.unwrap_or(0.0)
}

struct Pass<'a, R: Rng> {
    config: &'a AssignmentConfig,
    rng: &'a mut R,
    leases: Vec<LeaseLoad>,
    /// Each lease's actual owner before the pass.
    original_owner: Vec<Option<String>>,
    /// Lease index by worker (actual owner), in scan order.
    by_worker: HashMap<String, Vec<usize>>,
    throughput: HashMap<String, f64>,
    target_throughput: f64,
    fleet_average: BTreeMap<String, f64>,
    target_leases: f64,
    workers: Vec<Candidate>,
    out: Vec<Assignment>,
}

impl<'a, R: Rng> Pass<'a, R> {
    fn assigned(&self, worker: &str) -> f64 {
        self.throughput.get(worker).copied().unwrap_or(0.0)
    }

    fn lease_count(&self, worker: &str) -> usize {
        self.by_worker.get(worker).map_or(0, Vec::len)
    }

    fn has_room(&self, worker: &str) -> bool {
        self.assigned(worker) <= self.config.max_throughput_per_worker_kbps
            && self.lease_count(worker) < self.config.max_leases_per_worker
    }

    /// `computePercentageToReachAverage`: the smallest relative distance below average over
    /// the worker's metrics (1 for a metric at 0).
    fn room(&self, c: &Candidate) -> f64 {
        c.values
            .iter()
            .map(|(name, v)| {
                if *v == 0.0 {
                    1.0
                } else {
                    (self.fleet_average.get(name).copied().unwrap_or(0.0) - v) / v
                }
            })
            .fold(f64::MAX, f64::min)
    }

    /// The eligible worker with the most room, among `queue` (the KCL's priority queue).
    fn best(&self, queue: &[usize]) -> Option<usize> {
        queue.iter().copied().max_by(|a, b| {
            self.room(&self.workers[*a])
                .partial_cmp(&self.room(&self.workers[*b]))
                .unwrap_or(Ordering::Equal)
                // Among equals (at start every worker's load is 0): fewer leases, then the
                // smaller id.
                .then_with(|| {
                    self.lease_count(&self.workers[*b].id)
                        .cmp(&self.lease_count(&self.workers[*a].id))
                })
                .then_with(|| self.workers[*b].id.cmp(&self.workers[*a].id))
        })
    }

    fn extrapolated(&self, c: &Candidate, name: &str, added_kbps: f64) -> f64 {
        let avg = self.fleet_average.get(name).copied().unwrap_or(0.0);
        let v = c.values.get(name).copied().unwrap_or(0.0);
        if self.target_throughput > 0.0 {
            v + added_kbps * avg / self.target_throughput
        } else {
            v + avg / self.target_leases
        }
    }

    fn would_overload(&self, c: &Candidate, added_kbps: f64) -> bool {
        c.values.keys().any(|name| {
            let next = self.extrapolated(c, name, added_kbps);
            next > self.fleet_average.get(name).copied().unwrap_or(0.0)
                || c.max.get(name).is_some_and(|m| next > *m)
        })
    }

    /// Moves lease `l` to worker `w` (in memory, and as a write unless it is already there).
    /// Returns whether the worker may take more.
    fn assign(&mut self, l: usize, w: usize, expired: bool, queue: &mut Vec<usize>) {
        let to = self.workers[w].id.clone();
        let lease = &self.leases[l];
        let pending_handoff_expired = expired && lease.checkpoint_owner.is_some();
        if !pending_handoff_expired && lease.actual_owner() == Some(to.as_str()) {
            queue.push(w);
            return;
        }
        let kbps = lease.throughput_kbps.unwrap_or(0.0);
        let names: Vec<String> = self.workers[w].values.keys().cloned().collect();
        for name in names {
            let next = self.extrapolated(&self.workers[w], &name, kbps);
            self.workers[w].values.insert(name, next);
        }
        if let Some(old) = lease.actual_owner().map(str::to_string) {
            if let Some(list) = self.by_worker.get_mut(&old) {
                list.retain(|x| *x != l);
            }
            *self.throughput.entry(old).or_default() -= kbps;
        }
        self.by_worker.entry(to.clone()).or_default().push(l);
        *self.throughput.entry(to.clone()).or_default() += kbps;
        // One write per lease, of the kind its first move in this pass called for; none when
        // it comes back to where it was.
        let key = self.leases[l].key.clone();
        let earlier = self.out.iter().position(|a| a.key == key);
        let handoff = match earlier {
            Some(i) => self.out.remove(i).handoff,
            None => !expired && self.leases[l].owner.is_some(),
        };
        if self.original_owner[l].as_deref() != Some(to.as_str()) {
            self.out.push(Assignment {
                key,
                to: to.clone(),
                handoff,
            });
        }
        // Later passes see the lease where it now is.
        self.leases[l].owner = Some(to);
        self.leases[l].checkpoint_owner = None;
        if self.has_room(&self.workers[w].id) {
            queue.push(w);
        }
    }

    fn assign_expired(&mut self, queue: &mut Vec<usize>) {
        let mut expired: Vec<usize> = (0..self.leases.len())
            .filter(|i| self.leases[*i].expired_or_unassigned)
            .collect();
        // Unassigned first, then those whose counter stopped longest ago.
        expired.sort_by_key(|i| {
            let l = &self.leases[*i];
            (l.owner.is_some(), std::cmp::Reverse(l.idle_for_ms))
        });
        for l in expired {
            let Some(pos) = self.best(queue) else {
                break;
            };
            let w = queue.swap_remove(queue.iter().position(|x| *x == pos).unwrap_or(0));
            self.assign(l, w, true, queue);
        }
    }

    /// The workers to take from for one metric, or none when every worker is within the band.
    fn donors(&self, name: &str, avg: f64) -> Vec<usize> {
        let upper = avg * (1.0 + self.config.rebalance_threshold_percent / 100.0);
        let lower = avg * (1.0 - self.config.rebalance_threshold_percent / 100.0);
        let mut trigger = false;
        let mut above = Vec::new();
        let mut most: Option<usize> = None;
        for (i, c) in self.workers.iter().enumerate() {
            let Some(v) = c.values.get(name).copied() else {
                continue;
            };
            let over_range = c.max.get(name).is_some_and(|m| v > *m);
            if v > upper || v < lower || over_range {
                trigger = true;
            }
            if v >= upper || over_range {
                above.push(i);
            }
            if most.is_none_or(|m| self.workers[m].values.get(name).copied().unwrap_or(0.0) < v) {
                most = Some(i);
            }
        }
        if !trigger {
            return Vec::new();
        }
        if above.is_empty() {
            above.extend(most);
        }
        above
    }

    fn leases_to_take(&mut self, worker: &str, kbps: f64) -> Vec<usize> {
        let mut owned = self.by_worker.get(worker).cloned().unwrap_or_default();
        if owned.is_empty() {
            return Vec::new();
        }
        if self.assigned(worker) == 0.0 {
            return vec![owned[0]];
        }
        owned.shuffle(self.rng);
        let mut left = kbps;
        let mut take = Vec::new();
        for l in &owned {
            let t = self.leases[*l].throughput_kbps.unwrap_or(0.0);
            if left - t <= 0.0 {
                continue;
            }
            left -= t;
            take.push(*l);
        }
        if take.is_empty() && self.config.allow_throughput_overshoot {
            take.extend(owned.iter().copied().min_by(|a, b| {
                let ta = self.leases[*a].throughput_kbps.unwrap_or(0.0);
                let tb = self.leases[*b].throughput_kbps.unwrap_or(0.0);
                ta.partial_cmp(&tb).unwrap_or(Ordering::Equal)
            }));
        }
        take
    }

    fn balance_variance(&mut self, queue: &mut Vec<usize>) {
        let mut best: Option<(f64, Vec<(String, f64)>)> = None;
        let averages: Vec<(String, f64)> = self
            .fleet_average
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (name, avg) in averages {
            let mut moves = Vec::new();
            let mut total = 0.0;
            for d in self.donors(&name, avg) {
                let c = &self.workers[d];
                let v = c.values.get(&name).copied().unwrap_or(0.0);
                if v == 0.0 {
                    continue;
                }
                let share = (v - avg) / v * (self.config.dampening_percent / 100.0);
                let kbps = self.assigned(&c.id) * share;
                total += kbps;
                moves.push((c.id.clone(), kbps));
            }
            if best.as_ref().is_none_or(|(t, _)| *t < total) {
                best = Some((total, moves));
            }
        }
        let Some((_, mut moves)) = best else {
            return;
        };
        moves.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal));
        for (worker, kbps) in moves {
            for l in self.leases_to_take(&worker, kbps) {
                let Some(pos) = self.best(queue) else {
                    break;
                };
                let kbps = self.leases[l].throughput_kbps.unwrap_or(0.0);
                if self.would_overload(&self.workers[pos], kbps) {
                    break;
                }
                queue.retain(|x| *x != pos);
                self.assign(l, pos, false, queue);
            }
        }
    }
}

/// One assignment pass. `leases` are the leases that can be worked on (not at `SHARD_END`);
/// `workers` the eligible ones (fresh, valid metrics); `variance` whether this pass also
/// rebalances. Returns the writes to make, at most one per lease.
pub fn assign<R: Rng>(
    leases: &[LeaseLoad],
    workers: &[WorkerLoad],
    variance: bool,
    config: &AssignmentConfig,
    rng: &mut R,
) -> Vec<Assignment> {
    let workers: Vec<&WorkerLoad> = workers.iter().filter(|w| !w.is_failing()).collect();
    if workers.is_empty() {
        return Vec::new();
    }
    let known: Vec<f64> = leases.iter().filter_map(|l| l.throughput_kbps).collect();
    let average_lease = if known.is_empty() {
        0.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    let leases: Vec<LeaseLoad> = leases
        .iter()
        .cloned()
        .map(|mut l| {
            l.throughput_kbps.get_or_insert(average_lease);
            l
        })
        .collect();
    let target_throughput = average_lease * leases.len() as f64 / workers.len() as f64;
    let mut by_worker: HashMap<String, Vec<usize>> = HashMap::new();
    let mut throughput: HashMap<String, f64> = HashMap::new();
    for (i, l) in leases.iter().enumerate() {
        if let Some(o) = l.actual_owner() {
            by_worker.entry(o.to_string()).or_default().push(i);
            *throughput.entry(o.to_string()).or_default() += l.throughput_kbps.unwrap_or(0.0);
        }
    }
    let candidates: Vec<Candidate> = workers
        .iter()
        .map(|w| {
            if w.is_default() {
                let assigned = throughput.get(&w.worker_id).copied().unwrap_or(0.0);
                let ratio = if target_throughput > 0.0 {
                    assigned / target_throughput
                } else {
                    0.0
                };
                Candidate {
                    id: w.worker_id.clone(),
                    values: BTreeMap::from([(THROUGHPUT_METRIC.to_string(), ratio * 100.0)]),
                    max: BTreeMap::from([(THROUGHPUT_METRIC.to_string(), 100.0)]),
                }
            } else {
                Candidate {
                    id: w.worker_id.clone(),
                    values: w
                        .stats
                        .iter()
                        .map(|(k, v)| (k.clone(), ema(v, config.ema_alpha)))
                        .collect(),
                    max: w
                        .operating_range
                        .iter()
                        .filter_map(|(k, v)| v.first().map(|m| (k.clone(), *m as f64)))
                        .collect(),
                }
            }
        })
        .collect();
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for c in &candidates {
        for (k, v) in &c.values {
            let e = sums.entry(k.clone()).or_default();
            e.0 += v;
            e.1 += 1;
        }
    }
    let fleet_average = sums
        .into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect();
    let target_leases = (leases.len() / candidates.len()).max(1) as f64;
    let original_owner = leases
        .iter()
        .map(|l| l.actual_owner().map(str::to_string))
        .collect();
    let mut pass = Pass {
        config,
        rng,
        leases,
        original_owner,
        by_worker,
        throughput,
        target_throughput,
        fleet_average,
        target_leases,
        workers: candidates,
        out: Vec::new(),
    };
    let mut queue: Vec<usize> = (0..pass.workers.len())
        .filter(|w| pass.has_room(&pass.workers[*w].id))
        .collect();
    pass.assign_expired(&mut queue);
    if variance {
        pass.balance_variance(&mut queue);
    }
    pass.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn lease(key: &str, owner: Option<&str>, kbps: Option<f64>, expired: bool) -> LeaseLoad {
        LeaseLoad {
            key: key.into(),
            owner: owner.map(str::to_string),
            checkpoint_owner: None,
            throughput_kbps: kbps,
            expired_or_unassigned: expired || owner.is_none(),
            idle_for_ms: 0,
        }
    }

    fn default_worker(id: &str) -> WorkerLoad {
        WorkerLoad {
            worker_id: id.into(),
            ..WorkerLoad::default()
        }
    }

    fn cpu_worker(id: &str, cpu: &[f64]) -> WorkerLoad {
        WorkerLoad {
            worker_id: id.into(),
            stats: BTreeMap::from([("C".to_string(), cpu.to_vec())]),
            operating_range: BTreeMap::from([("C".to_string(), vec![100])]),
        }
    }

    fn run(leases: &[LeaseLoad], workers: &[WorkerLoad], variance: bool) -> Vec<Assignment> {
        let mut rng = StdRng::seed_from_u64(7);
        assign(
            leases,
            workers,
            variance,
            &AssignmentConfig::default(),
            &mut rng,
        )
    }

    /// Applies assignments to the leases' owners (what the writes do).
    fn apply(leases: &mut [LeaseLoad], out: &[Assignment]) {
        for a in out {
            let l = leases.iter_mut().find(|l| l.key == a.key).unwrap();
            l.owner = Some(a.to.clone());
            l.checkpoint_owner = None;
            l.expired_or_unassigned = false;
        }
    }

    fn counts(leases: &[LeaseLoad]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for l in leases {
            *m.entry(l.owner.clone().unwrap_or_default()).or_default() += 1;
        }
        m
    }

    #[test]
    fn unassigned_leases_spread_over_default_workers() {
        let mut leases: Vec<LeaseLoad> = (0..8)
            .map(|i| lease(&format!("s{i}"), None, None, true))
            .collect();
        let workers = [default_worker("a"), default_worker("b")];
        let out = run(&leases, &workers, false);
        assert_eq!(out.len(), 8);
        assert!(out.iter().all(|a| !a.handoff));
        apply(&mut leases, &out);
        // No throughput known yet: the extrapolation is by lease count.
        assert_eq!(
            counts(&leases),
            BTreeMap::from([("a".into(), 4), ("b".into(), 4)])
        );
    }

    #[test]
    fn a_worker_without_metrics_gets_nothing_and_keeps_its_leases() {
        let leases = vec![
            lease("s0", Some("java-old"), Some(10.0), false),
            lease("s1", None, None, true),
        ];
        let out = run(&leases, &[default_worker("a")], false);
        assert_eq!(
            out,
            vec![Assignment {
                key: "s1".into(),
                to: "a".into(),
                handoff: false
            }]
        );
    }

    #[test]
    fn no_eligible_worker_no_assignment() {
        let leases = vec![lease("s0", None, None, true)];
        assert!(run(&leases, &[], true).is_empty());
        let failing = cpu_worker("a", &[10.0, -1.0]);
        assert!(run(&leases, &[failing], true).is_empty());
    }

    #[test]
    fn expired_leases_go_to_the_least_loaded_worker() {
        let leases = vec![
            lease("s0", Some("dead"), Some(10.0), true),
            lease("s1", Some("a"), Some(10.0), false),
        ];
        let out = run(
            &leases,
            &[cpu_worker("a", &[60.0]), cpu_worker("b", &[20.0])],
            false,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, "b");
        assert!(!out[0].handoff, "an expired lease is assigned directly");
    }

    #[test]
    fn variance_moves_load_off_a_hot_worker_with_a_handoff() {
        let mut leases: Vec<LeaseLoad> = (0..4)
            .map(|i| lease(&format!("s{i}"), Some("a"), Some(100.0), false))
            .chain((4..8).map(|i| lease(&format!("s{i}"), Some("b"), Some(100.0), false)))
            .collect();
        let workers = [cpu_worker("a", &[90.0]), cpu_worker("b", &[10.0])];
        // Not a variance pass: nothing moves.
        assert!(run(&leases, &workers, false).is_empty());
        let out = run(&leases, &workers, true);
        assert!(!out.is_empty());
        assert!(out.iter().all(|x| x.to == "b" && x.handoff));
        apply(&mut leases, &out);
        // (90 - 50) / 90 x 60% of 400 KB/s = 106.7 KB/s: one lease of 100 moves.
        assert_eq!(counts(&leases)["a"], 3);
    }

    #[test]
    fn within_the_band_nothing_moves() {
        let leases: Vec<LeaseLoad> = (0..4)
            .map(|i| lease(&format!("s{i}"), Some(["a", "b"][i % 2]), Some(10.0), false))
            .collect();
        let workers = [cpu_worker("a", &[52.0]), cpu_worker("b", &[48.0])];
        assert!(run(&leases, &workers, true).is_empty());
    }

    #[test]
    fn a_hot_shard_leaves_its_worker_with_fewer_leases() {
        // 8 shards, one with 10x the traffic, 4 default workers, repeated passes as the
        // leader would run them (every 3rd with rebalancing).
        let mut leases: Vec<LeaseLoad> = (0..8)
            .map(|i| {
                let mut l = lease(&format!("s{i}"), None, None, true);
                l.throughput_kbps = None;
                l
            })
            .collect();
        let workers: Vec<WorkerLoad> = ["a", "b", "c", "d"].map(default_worker).to_vec();
        let mut rng = StdRng::seed_from_u64(1);
        let config = AssignmentConfig::default();
        for pass in 0..30 {
            for l in &mut leases {
                if l.owner.is_some() {
                    l.throughput_kbps = Some(if l.key == "s0" { 1000.0 } else { 100.0 });
                }
            }
            let out = assign(&leases, &workers, pass % 3 == 0, &config, &mut rng);
            apply(&mut leases, &out);
        }
        let hot = leases
            .iter()
            .find(|l| l.key == "s0")
            .unwrap()
            .owner
            .clone()
            .unwrap();
        let c = counts(&leases);
        let others_min = c
            .iter()
            .filter(|(w, _)| **w != hot)
            .map(|(_, n)| *n)
            .min()
            .unwrap();
        let mut kbps: BTreeMap<String, f64> = BTreeMap::new();
        for l in &leases {
            *kbps.entry(l.owner.clone().unwrap()).or_default() += l.throughput_kbps.unwrap();
        }
        eprintln!("after 30 passes: leases {c:?}, KB/s {kbps:?}, hot shard on {hot}");
        assert!(c[&hot] < others_min, "{c:?}, hot on {hot}");
    }

    /// Whatever the load (500 random fleets): every assignment names an eligible worker and
    /// moves a lease away from its owner, no lease twice, handoffs only of live leases, and
    /// every expired or unassigned lease is assigned when there is an eligible worker.
    #[test]
    fn assignments_are_sound() {
        let mut gen = StdRng::seed_from_u64(42);
        let ids = ["w0", "w1", "w2", "gone3", "gone4"];
        for _ in 0..500 {
            let n = gen.gen_range(1..20);
            let leases: Vec<LeaseLoad> = (0..n)
                .map(|i| {
                    let o: Option<usize> = gen.gen_bool(0.8).then(|| gen.gen_range(0..5));
                    let kbps = gen.gen_bool(0.7).then(|| gen.gen_range(0.0..2000.0));
                    lease(
                        &format!("s{i}"),
                        o.map(|o| ids[o]),
                        kbps,
                        o.is_some_and(|o| o >= 3),
                    )
                })
                .collect();
            let workers: Vec<WorkerLoad> = (0..3)
                .map(|i| {
                    if gen.gen_bool(0.5) {
                        cpu_worker(ids[i], &[gen.gen_range(0.0..100.0)])
                    } else {
                        default_worker(ids[i])
                    }
                })
                .collect();
            let out = run(&leases, &workers, gen.gen_bool(0.5));
            let mut keys: Vec<&str> = out.iter().map(|a| a.key.as_str()).collect();
            keys.sort();
            let total = keys.len();
            keys.dedup();
            assert_eq!(total, keys.len(), "{out:?}");
            for a in &out {
                assert!(["w0", "w1", "w2"].contains(&a.to.as_str()), "{a:?}");
                let l = leases.iter().find(|l| l.key == a.key).unwrap();
                assert_ne!(l.owner.as_deref(), Some(a.to.as_str()), "{a:?}");
                assert!(!(a.handoff && l.expired_or_unassigned), "{a:?}");
            }
            for l in leases.iter().filter(|l| l.expired_or_unassigned) {
                assert!(out.iter().any(|a| a.key == l.key), "{l:?} left: {out:?}");
            }
        }
    }
}
