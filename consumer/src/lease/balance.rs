//! Which leases a worker should take in one cycle: pure arithmetic, the Java KCL's
//! `DynamoDBLeaseTaker` rules.
//!
//! - Live workers are the distinct owners of leases that are not expired, plus this worker.
//! - Each worker aims at `target = ceil(leases / live workers)`, capped by
//!   `CONSUMER_MAX_LEASES_PER_WORKER`.
//! - Below target, a worker first takes expired (or unowned) leases, as many as it is short.
//! - Only when none is expired does it steal: as many leases as it is short, in one cycle, from
//!   the workers above target (most loaded first), never taking one of them below target; so a
//!   worker joining one that holds 200 leases takes its 100 at once. When nobody is above
//!   target, it steals one lease from the most loaded worker at target, and only while it is
//!   short by two or more (so 6 leases on 4 workers settle at 2-2-1-1 instead of oscillating).
//!   Workers that are balanced (everyone within one of target) never move a lease.
//!
//! Leases at `SHARD_END` are not passed in: nobody needs to hold them.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::Rng;

/// One lease as the taker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub key: String,
    pub owner: Option<String>,
    /// No owner, or its counter has not moved for the failover time as observed here.
    pub expired: bool,
}

/// What to do this cycle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub target: usize,
    /// Live workers counted, this one included.
    pub workers: usize,
    /// Leases to take, in this order.
    pub take: Vec<String>,
    /// Set when `take` is a steal: the victims, most loaded first.
    pub stolen_from: Vec<String>,
}

/// `ceil(leases / workers)`, capped; 0 when there is nothing to hold.
pub fn target(leases: usize, workers: usize, max_per_worker: Option<usize>) -> usize {
    let target = leases.div_ceil(workers.max(1));
    max_per_worker.map_or(target, |max| target.min(max))
}

/// The leases `me` should take now. `leases` must show this worker's own leases as owned by it
/// and not expired.
pub fn plan(
    leases: &[LeaseView],
    me: &str,
    max_per_worker: Option<usize>,
    rng: &mut impl Rng,
) -> Plan {
    let mut load: HashMap<&str, usize> = HashMap::new();
    load.insert(me, 0);
    for lease in leases.iter().filter(|l| !l.expired) {
        if let Some(owner) = lease.owner.as_deref() {
            *load.entry(owner).or_default() += 1;
        }
    }
    let workers = load.len();
    let target = target(leases.len(), workers, max_per_worker);
    let mut plan = Plan {
        target,
        workers,
        ..Plan::default()
    };
    let needed = target.saturating_sub(load[me]);
    if needed == 0 {
        return plan;
    }

    let mut expired: Vec<&LeaseView> = leases.iter().filter(|l| l.expired).collect();
    if !expired.is_empty() {
        // Random order, so that workers starting together do not all race for the same lease.
        expired.shuffle(rng);
        plan.take = expired
            .into_iter()
            .take(needed)
            .map(|l| l.key.clone())
            .collect();
        return plan;
    }

    // Other workers, most loaded first; ties broken by name so the choice is stable.
    let mut others: Vec<(&str, usize)> = load
        .iter()
        .filter(|(w, _)| **w != me)
        .map(|(w, n)| (*w, *n))
        .collect();
    others.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    // As many as this worker is short, from every worker above target, none taken below it.
    let mut quotas: Vec<(&str, usize)> = Vec::new();
    let mut left = needed;
    for (worker, n) in &others {
        if left == 0 || *n <= target {
            break;
        }
        let k = (n - target).min(left);
        quotas.push((worker, k));
        left -= k;
    }
    // Nobody above target: one from the most loaded at target, and only while this worker is
    // short by two or more (6 leases on 4 workers settle at 2-2-1-1 instead of oscillating).
    if quotas.is_empty() && needed > 1 {
        if let Some((worker, n)) = others.first() {
            if *n == target && target > 0 {
                quotas.push((worker, 1));
            }
        }
    }
    for (victim, k) in quotas {
        let candidates: Vec<&LeaseView> = leases
            .iter()
            .filter(|l| !l.expired && l.owner.as_deref() == Some(victim))
            .collect();
        let chosen: Vec<String> = candidates
            .choose_multiple(rng, k)
            .map(|l| l.key.clone())
            .collect();
        if !chosen.is_empty() {
            plan.take.extend(chosen);
            plan.stolen_from.push(victim.to_string());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn leases(spec: &[(&str, Option<&str>, bool)]) -> Vec<LeaseView> {
        spec.iter()
            .map(|(k, o, e)| LeaseView {
                key: k.to_string(),
                owner: o.map(str::to_string),
                expired: *e,
            })
            .collect()
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    /// Leases named `s0..`, owned as listed.
    fn owned(owners: &[&str]) -> Vec<LeaseView> {
        owners
            .iter()
            .enumerate()
            .map(|(i, o)| LeaseView {
                key: format!("s{i}"),
                owner: Some(o.to_string()),
                expired: false,
            })
            .collect()
    }

    #[test]
    fn target_is_the_ceiling_of_leases_over_workers_capped() {
        assert_eq!(target(6, 3, None), 2);
        assert_eq!(target(6, 4, None), 2);
        assert_eq!(target(7, 3, None), 3);
        assert_eq!(target(1, 5, None), 1);
        assert_eq!(target(0, 2, None), 0);
        assert_eq!(target(10, 1, Some(4)), 4);
    }

    #[test]
    fn a_lone_worker_takes_every_unowned_lease() {
        let l = leases(&[("a", None, true), ("b", None, true), ("c", None, true)]);
        let p = plan(&l, "me", None, &mut rng());
        assert_eq!(p.target, 3);
        let mut take = p.take.clone();
        take.sort();
        assert_eq!(take, vec!["a", "b", "c"]);
        assert!(p.stolen_from.is_empty());
    }

    #[test]
    fn expired_leases_are_taken_before_any_steal_and_only_up_to_target() {
        // 6 leases; w1 alive with 3, w2 dead (its 3 expired): target ceil(6/2) = 3.
        let mut l = owned(&["w1", "w1", "w1", "w2", "w2", "w2"]);
        for lease in &mut l[3..] {
            lease.expired = true;
        }
        let p = plan(&l, "me", None, &mut rng());
        assert_eq!((p.workers, p.target), (2, 3));
        assert_eq!(p.take.len(), 3);
        assert!(p
            .take
            .iter()
            .all(|k| ["s3", "s4", "s5"].contains(&k.as_str())));
        assert!(p.stolen_from.is_empty());
        // With a cap of 2, only 2 of them.
        assert_eq!(plan(&l, "me", Some(2), &mut rng()).take.len(), 2);
    }

    #[test]
    fn a_worker_steals_what_it_is_short_from_workers_above_target_only() {
        // 4-2-0: target 2; "big" is 2 over, "small" at target.
        let l = owned(&["big", "big", "big", "big", "small", "small"]);
        let p = plan(&l, "me", None, &mut rng());
        assert_eq!((p.workers, p.target), (3, 2));
        assert_eq!(p.take.len(), 2);
        assert_eq!(p.stolen_from, vec!["big"]);
        assert!(p
            .take
            .iter()
            .all(|k| ["s0", "s1", "s2", "s3"].contains(&k.as_str())));
    }

    #[test]
    fn a_worker_joining_one_with_200_leases_takes_its_half_in_one_cycle() {
        let l = owned(&["old"; 200]);
        let p = plan(&l, "new", None, &mut rng());
        assert_eq!((p.workers, p.target), (2, 100));
        assert_eq!(p.take.len(), 100);
        let distinct: std::collections::HashSet<&String> = p.take.iter().collect();
        assert_eq!(distinct.len(), 100);
        // Joining two with 100 each: 33 from each, none left below target (67).
        let mut owners = vec!["a"; 100];
        owners.extend(vec!["b"; 100]);
        let l = owned(&owners);
        let p = plan(&l, "c", None, &mut rng());
        assert_eq!((p.workers, p.target), (3, 67));
        assert_eq!(p.take.len(), 66);
        assert_eq!(p.stolen_from, vec!["a", "b"]);
        let from_a = p
            .take
            .iter()
            .filter(|k| {
                l.iter()
                    .any(|x| &x.key == *k && x.owner.as_deref() == Some("a"))
            })
            .count();
        assert_eq!(from_a, 33);
        // Capped: no more than the cap allows.
        let l = owned(&["old"; 200]);
        assert_eq!(plan(&l, "new", Some(30), &mut rng()).take.len(), 30);
    }

    /// Whatever the loads, a worker whose load is within one of every other worker's takes
    /// nothing: balanced workers never move a lease back and forth.
    #[test]
    fn balanced_workers_never_steal() {
        for workers in 2..7usize {
            for leases in 0..40usize {
                // Round-robin: loads differ by at most one.
                let names: Vec<String> = (0..workers).map(|w| format!("w{w}")).collect();
                let owners: Vec<&str> = (0..leases).map(|i| names[i % workers].as_str()).collect();
                let l = owned(&owners);
                for me in &names {
                    let p = plan(&l, me, None, &mut rng());
                    assert!(
                        p.take.is_empty(),
                        "{workers} workers, {leases} leases, {me}: {p:?}"
                    );
                }
            }
        }
    }

    /// Plans applied in turn (each worker scans, plans and steals) settle within a few rounds
    /// and then stop moving leases.
    #[test]
    fn repeated_plans_settle_and_stop() {
        for (workers, leases) in [(2usize, 200usize), (3, 200), (4, 200), (4, 6), (5, 17)] {
            let mut owner: Vec<String> = vec!["w0".to_string(); leases];
            let names: Vec<String> = (0..workers).map(|w| format!("w{w}")).collect();
            let mut moves_per_round = Vec::new();
            for _round in 0..6 {
                let mut moved = 0;
                for me in &names {
                    let l = owned(&owner.iter().map(String::as_str).collect::<Vec<_>>());
                    let p = plan(&l, me, None, &mut rng());
                    for key in &p.take {
                        let i: usize = key[1..].parse().unwrap();
                        owner[i] = me.clone();
                        moved += 1;
                    }
                }
                moves_per_round.push(moved);
            }
            assert_eq!(
                moves_per_round[2..],
                [0, 0, 0, 0],
                "{workers} on {leases}: {moves_per_round:?}"
            );
            let target = target(leases, workers, None);
            for me in &names {
                let n = owner.iter().filter(|o| *o == me).count();
                assert!(
                    n + 1 >= target && n <= target,
                    "{me}: {n} of target {target}"
                );
            }
        }
    }

    #[test]
    fn a_fourth_worker_steals_one_from_three_balanced_ones_then_stops() {
        // 2-2-2-0: short by two, the most loaded is at target: steal one.
        let l = owned(&["a", "a", "b", "b", "c", "c"]);
        let p = plan(&l, "d", None, &mut rng());
        assert_eq!(p.target, 2);
        assert_eq!(p.take.len(), 1);
        // 2-2-1-1: short by one, nobody over target: settled.
        let l = owned(&["a", "a", "b", "b", "c", "d"]);
        assert!(plan(&l, "d", None, &mut rng()).take.is_empty());
        assert!(plan(&l, "c", None, &mut rng()).take.is_empty());
    }

    #[test]
    fn a_worker_at_or_above_target_takes_nothing() {
        let l = owned(&["me", "me", "other", "other"]);
        assert!(plan(&l, "me", None, &mut rng()).take.is_empty());
        let l = owned(&["me", "me", "me", "other"]);
        assert!(plan(&l, "me", None, &mut rng()).take.is_empty());
    }

    #[test]
    fn ties_pick_a_stable_victim_and_nothing_is_taken_from_an_empty_table() {
        let l = owned(&["b", "b", "b", "a", "a", "a"]);
        let p = plan(&l, "me", None, &mut rng());
        assert_eq!(p.stolen_from, vec!["a", "b"]);
        assert_eq!(p.take.len(), 2);
        assert_eq!(
            plan(&[], "me", None, &mut rng()),
            Plan {
                target: 0,
                workers: 1,
                take: Vec::new(),
                stolen_from: Vec::new()
            }
        );
    }

    #[test]
    fn owners_of_only_expired_leases_are_not_live_workers() {
        let mut l = owned(&["me", "dead", "dead", "dead"]);
        for lease in &mut l[1..] {
            lease.expired = true;
        }
        let p = plan(&l, "me", None, &mut rng());
        assert_eq!((p.workers, p.target), (1, 4));
        assert_eq!(p.take.len(), 3);
    }
}
