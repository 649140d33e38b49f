//! The deeper model check of the lease protocol (the bounded one runs in `cargo test`, in
//! `consumer/tests/lease_model.rs`): two workers (`MODEL_WORKERS=a,b,c` for three), a split
//! and a merge, a fault and a steal, to the end of time (`MODEL_HORIZON` ticks of a third of
//! the failover time), liveness included, depth first, for at most `MODEL_SECONDS` (120) and
//! `MODEL_MAX_STATES` (20 million states generated: runs of 60 million and more outgrew 24 GiB).
//!
//! ```sh
//! cargo run --release -p kinesis-consumer --example lease_model            # the deep configuration
//! MODEL_WORKERS=a,a MODEL_SECONDS=300 cargo run --release -p kinesis-consumer --example lease_model
//! ```
//!
//! Prints the number of states explored, whether that was all of them, and the time taken; exits
//! 1 with a counterexample when a property fails.

#[path = "../tests/model/lease.rs"]
mod model;

use model::{LeaseModel, ShardSpec};
use stateright::{Checker, Model};

fn knob(name: &str, default: u16) -> u16 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let processes: Vec<String> = std::env::var("MODEL_WORKERS")
        .unwrap_or_else(|_| "a,b".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let model = LeaseModel {
        processes,
        // Shard 0 splits into 1 and 2, which merge into 3.
        shards: vec![
            ShardSpec {
                parents: vec![],
                closed: true,
                records: 1,
            },
            ShardSpec {
                parents: vec![0],
                closed: true,
                records: 1,
            },
            ShardSpec {
                parents: vec![0],
                closed: true,
                records: 1,
            },
            ShardSpec {
                parents: vec![1, 2],
                closed: false,
                records: 1,
            },
        ],
        handoffs: true,
        faults: knob("MODEL_FAULTS", 1) as u8,
        steals: knob("MODEL_STEALS", 1) as u8,
        quiet_from: knob("MODEL_QUIET_FROM", 3) as u8,
        horizon: knob("MODEL_HORIZON", 12) as u8,
        leader: false,
        assigns: 0,
        counting: Vec::new(),
    };
    eprintln!("{model:?}");
    let started = std::time::Instant::now();
    // Depth first: memory grows with the states seen (a fingerprint each), not with a queue
    // of whole states.
    let limit = std::time::Duration::from_secs(knob("MODEL_SECONDS", 120).into());
    // Depth first still keeps every state seen: a cap keeps it within a 24 GiB machine.
    let cap = std::env::var("MODEL_MAX_STATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000usize);
    let checker = model
        .checker()
        .threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .timeout(limit)
        .target_state_count(cap)
        .spawn_dfs()
        .join();
    let complete = started.elapsed() < limit && checker.state_count() < cap;
    println!(
        "{} states ({} unique), depth {}, in {:.1} s{}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64(),
        if complete {
            ""
        } else {
            ": stopped at MODEL_SECONDS or MODEL_MAX_STATES, not every state was explored"
        }
    );
    for (name, path) in checker.discoveries() {
        if !name.starts_with("sometimes: ") {
            eprintln!("property broken: {name}\n{path:?}");
            std::process::exit(1);
        }
    }
    println!("every safety and liveness property holds in every state explored");
}
