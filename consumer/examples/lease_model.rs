//! The deeper model check of the lease protocol (the bounded one runs in `cargo test`, in
//! `consumer/tests/lease_model.rs`): three workers, a split and a merge, faults and steals.
//!
//! ```sh
//! cargo run --release -p consumer --example lease_model            # the deep configuration
//! MODEL_HORIZON=10 MODEL_FAULTS=2 cargo run --release -p consumer --example lease_model
//! ```
//!
//! Prints the number of states explored and the time taken, and exits 1 with a counterexample
//! when a property fails.

#[path = "../tests/model/lease.rs"]
mod model;

use model::{LeaseModel, ShardSpec};
use stateright::{Checker, Model};

fn knob(name: &str, default: u8) -> u8 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let processes: Vec<String> = std::env::var("MODEL_WORKERS")
        .unwrap_or_else(|_| "a,b,c".into())
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
        faults: knob("MODEL_FAULTS", 1),
        steals: knob("MODEL_STEALS", 1),
        quiet_from: knob("MODEL_QUIET_FROM", 3),
        horizon: knob("MODEL_HORIZON", 12),
    };
    eprintln!("{model:?}");
    let started = std::time::Instant::now();
    let checker = model
        .checker()
        .threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .spawn_bfs()
        .join();
    println!(
        "{} states ({} unique), depth {}, in {:.1} s",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed().as_secs_f64()
    );
    checker.assert_properties();
    println!("every property holds");
}
