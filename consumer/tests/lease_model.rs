//! The lease protocol, model-checked: the production state machine of one lease
//! (`kinesis_consumer::lease::machine`) run by several worker processes against a model of the lease
//! table (see `model/lease.rs` for what is modelled and the assumptions).
//!
//! These are bounded checks: every interleaving of up to `depth` steps (takes, steals, writes
//! applied or refused, answers delivered or lost, timers, processing, faults) is explored, and
//! every safety property must hold in every state reached. The deeper check, to the end of
//! time with liveness, is `cargo run --release -p kinesis-consumer --example lease_model`.

#[path = "model/lease.rs"]
mod model;

use model::{LeaseModel, ShardSpec};
use stateright::{Checker, Model};

/// Explores every state within `depth` steps; fails with the counterexample of any `always`
/// property broken.
fn check(model: LeaseModel, depth: usize, handoff_possible: bool) {
    let started = std::time::Instant::now();
    let names: Vec<&'static str> = model.properties().iter().map(|p| p.name).collect();
    let checker = model
        .checker()
        .threads(2)
        .target_max_depth(depth)
        .spawn_bfs()
        .join();
    eprintln!(
        "{} states ({} unique), depth {}, in {:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    for name in names.iter().filter(|n| !n.starts_with("sometimes: ")) {
        checker.assert_no_discovery(name);
    }
    // The model is not vacuous: what it is about happens within the bound.
    for name in names
        .iter()
        .filter(|n| n.starts_with("sometimes: "))
        .filter(|n| handoff_possible || !n.contains("handed off"))
    {
        assert!(
            checker.discovery(name).is_some(),
            "{name} never happened within {depth} steps"
        );
    }
}

fn shard(parents: &[usize], closed: bool) -> ShardSpec {
    ShardSpec {
        parents: parents.to_vec(),
        closed,
        records: 1,
    }
}

/// A model of `processes` (worker ids) on `shards`, with one steal, `faults` faults (crash,
/// SIGTERM, restart) and any number of lost answers before tick 3, and the clock stopping at
/// tick 6.
fn model(processes: &[&str], shards: Vec<ShardSpec>, faults: u8) -> LeaseModel {
    LeaseModel {
        processes: processes.iter().map(|p| p.to_string()).collect(),
        shards,
        handoffs: true,
        faults,
        steals: 1,
        quiet_from: 3,
        horizon: 6,
        leader: false,
        assigns: 0,
        counting: Vec::new(),
    }
}

/// Workers that follow a leader (`CONSUMER_LEASE_ASSIGNMENT=leader`): the same processes,
/// taking only what is theirs, and leaders assigning (`assigns` assignments in all, each
/// direct or with a handoff, marked by our leader or not, as a Java leader's are not).
fn led(processes: &[&str], shards: Vec<ShardSpec>, faults: u8, assigns: u8) -> LeaseModel {
    LeaseModel {
        steals: 0,
        leader: true,
        assigns,
        ..model(processes, shards, faults)
    }
}

/// Two workers on one shard: takes, a steal with a graceful handoff, renewals, answers lost
/// after the write was applied or before, expiry, the shard read to its end.
#[test]
fn two_workers_one_shard_with_a_steal() {
    check(model(&["a", "b"], vec![shard(&[], true)], 0), 21, true);
}

/// Two workers and a crash, a SIGTERM (hand over or release) or a restart, on one shard.
#[test]
fn two_workers_one_shard_with_a_fault() {
    check(model(&["a", "b"], vec![shard(&[], true)], 1), 19, true);
}

/// Two live processes started with one worker id: they never read the shard at once. (No
/// graceful handoff can happen between them: a worker does not steal from its own id.)
#[test]
fn two_processes_with_one_worker_id() {
    check(model(&["a", "a"], vec![shard(&[], true)], 1), 19, false);
}

/// A shard split in two: children never read before their parent ended.
#[test]
fn two_workers_through_a_split() {
    let shards = vec![shard(&[], true), shard(&[0], false), shard(&[0], false)];
    check(model(&["a", "b"], shards, 0), 17, true);
}

/// Three workers: a lease stolen with a handoff, then released by its new owner before the old
/// one finished (the new owner stopped), is taken by a third worker.
#[test]
fn three_workers_one_shard_with_a_fault() {
    check(model(&["a", "b", "c"], vec![shard(&[], true)], 1), 16, true);
}

/// A leader assigns the shard, then moves it to the other worker with a graceful handoff (or
/// two leaders at once, by a lock that was judged expired): never read by two at once.
#[test]
fn led_two_workers_one_shard() {
    check(led(&["a", "b"], vec![shard(&[], true)], 0, 2), 18, true);
}

/// Under a leader, a crash, a SIGTERM or a restart on one shard.
#[test]
fn led_two_workers_one_shard_with_a_fault() {
    check(led(&["a", "b"], vec![shard(&[], true)], 1, 2), 16, true);
}

/// Under a leader, two live processes with one worker id: a lease assigned to that id (marked
/// by our leader, taken at once) is taken by one of them only.
#[test]
fn led_two_processes_with_one_worker_id() {
    check(led(&["a", "a"], vec![shard(&[], true)], 1, 1), 16, false);
}

/// The switch between the KCL 2.x and 3.x algorithms, which each worker reads from the
/// `Migration3.0` record at its own time: one worker takes and steals by count while the other
/// follows a leader, and any live worker may assign (two at once included).
#[test]
fn led_one_follower_beside_one_worker_taking_by_count() {
    let mixed = LeaseModel {
        counting: vec![1],
        steals: 1,
        ..led(&["a", "b"], vec![shard(&[], true)], 0, 2)
    };
    check(mixed, 20, true);
}
