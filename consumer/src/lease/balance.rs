//! Which leases a worker should take in one cycle: pure arithmetic, the Java KCL's
//! `DynamoDBLeaseTaker` rules.
//!
//! - Live workers are the distinct owners of leases that are not expired, plus this worker.
//! - Each worker aims at `target = ceil(leases / live workers)`, capped by
//!   `CONSUMER_MAX_LEASES_PER_WORKER`.
//! - Below target, a worker first takes expired (or unowned) leases, as many as it is short.
//! - Only when none is expired does it steal, at most one lease per cycle, from the most loaded
//!   worker, and only when that worker is above target, or at target while this worker is
//!   short by two or more (so 6 leases on 4 workers settle at 2-2-1-1 instead of oscillating).
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
    /// Set when `take` is a steal: the victim.
    pub stolen_from: Option<String>,
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

    // Most loaded other worker; ties broken by name so the choice is stable.
    let Some((victim, victim_load)) = load
        .iter()
        .filter(|(w, _)| **w != me)
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(w, n)| (w.to_string(), *n))
    else {
        return plan;
    };
    let over = victim_load.saturating_sub(target);
    let steal = if victim_load < target {
        0
    } else if over == 0 {
        usize::from(needed > 1)
    } else {
        needed.min(over)
    }
    .min(1);
    if steal == 0 {
        return plan;
    }
    let candidates: Vec<&LeaseView> = leases
        .iter()
        .filter(|l| !l.expired && l.owner.as_deref() == Some(victim.as_str()))
        .collect();
    if let Some(lease) = candidates.choose(rng) {
        plan.take = vec![lease.key.clone()];
        plan.stolen_from = Some(victim);
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
        assert_eq!(p.stolen_from, None);
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
        assert_eq!(p.stolen_from, None);
        // With a cap of 2, only 2 of them.
        assert_eq!(plan(&l, "me", Some(2), &mut rng()).take.len(), 2);
    }

    #[test]
    fn at_most_one_lease_is_stolen_per_cycle_from_the_most_loaded_worker() {
        let l = owned(&["big", "big", "big", "big", "small", "small"]);
        let p = plan(&l, "me", None, &mut rng());
        assert_eq!((p.workers, p.target), (3, 2));
        assert_eq!(p.take.len(), 1);
        assert_eq!(p.stolen_from.as_deref(), Some("big"));
        assert!(["s0", "s1", "s2", "s3"].contains(&p.take[0].as_str()));
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
        assert_eq!(p.stolen_from.as_deref(), Some("a"));
        assert_eq!(
            plan(&[], "me", None, &mut rng()),
            Plan {
                target: 0,
                workers: 1,
                take: Vec::new(),
                stolen_from: None
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
