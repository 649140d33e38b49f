//! Failover measurement for leased mode (not a test): two release-built consumer workers share
//! a 4-shard kinesis-mock stream through a dynalite lease table while the producer writes a
//! steady stream; one worker is stopped with `kill -9` or SIGTERM. Reported per run:
//!
//! - time from the signal to the other worker's `lease acquired` for the first and the last of
//!   the stopped worker's shards, and to its first record processed on them (log timestamps);
//! - duplicates (records processed twice across both workers), and how many records the stopped
//!   worker had processed after its last checkpoint on its shards (the most kill -9 may repeat).
//!
//! Run: `cargo run --release -p kinesis-consumer --example failover_bench` (it builds the release
//! consumer and producer binaries first). Knobs, by environment: `BENCH_FAILOVER_MS` (default
//! 10000, the service default), `BENCH_RUNS` (3 of each kind), `BENCH_INTERVAL_MS` (producer
//! interval, 20). Needs the emulators (`npm ci --prefix emulators`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use testkit::{field, Emulator, Kind, ServiceProcess};

#[path = "support/bench.rs"]
mod bench;
use bench::{knob, release_dir};

struct Run {
    kind: &'static str,
    first_acquired: Option<Duration>,
    last_acquired: Option<Duration>,
    first_record: Option<Duration>,
    duplicates: usize,
    uncheckpointed: usize,
    lost: usize,
}

fn json_lines(p: &ServiceProcess) -> Vec<Value> {
    p.lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn at(event: &Value) -> Option<DateTime<Utc>> {
    event["timestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

async fn owners(
    dynamo: &aws_sdk_dynamodb::Client,
    table: &str,
) -> BTreeMap<String, Option<String>> {
    let Ok(out) = dynamo.scan().table_name(table).send().await else {
        return BTreeMap::new();
    };
    out.items()
        .iter()
        .filter_map(|i| {
            let key = i.get("leaseKey")?.as_s().ok()?.clone();
            let owner = i.get("leaseOwner").and_then(|v| v.as_s().ok()).cloned();
            Some((key, owner))
        })
        .collect()
}

async fn wait_for(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn one_run(
    kinesis_emu: &Emulator,
    dynamo_emu: &Emulator,
    kind: &'static str,
    failover_ms: u64,
    interval_ms: u64,
) -> Run {
    let bin = release_dir();
    let stream = testkit::unique_name("bench");
    let table = testkit::unique_name("bench-app");
    testkit::create_stream(&kinesis_emu.kinesis(), &stream, 4).await;
    let dynamo = dynamo_emu.dynamodb();
    let env = |extra: &[(&str, String)]| {
        let mut env = testkit::service_env_with_dynamo(
            &kinesis_emu.endpoint(),
            &dynamo_emu.endpoint(),
            &stream,
        );
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    };
    let worker = |id: &str| {
        ServiceProcess::spawn(
            &bin.join("consumer"),
            &env(&[
                ("CONSUMER_MODE", "leased".into()),
                ("CONSUMER_APPLICATION_NAME", table.clone()),
                ("CONSUMER_WORKER_ID", id.into()),
                ("CONSUMER_FAILOVER_MS", failover_ms.to_string()),
                ("CONSUMER_POLL_INTERVAL_MS", "200".into()),
            ]),
        )
    };
    let mut victim = worker("victim");
    let mut survivor = worker("survivor");
    let settled = wait_for(
        Duration::from_secs(12 * failover_ms / 1000 + 30),
        async || {
            let o = owners(&dynamo, &table).await;
            let of = |w: &str| -> HashSet<String> {
                o.iter()
                    .filter(|(_, x)| x.as_deref() == Some(w))
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            let (v, s) = (of("victim"), of("survivor"));
            v.len() == 2 && s.len() == 2 && victim.held_leases() == v && survivor.held_leases() == s
        },
    )
    .await;
    assert!(
        settled,
        "workers did not settle:\n{}\n{}",
        victim.dump(),
        survivor.dump()
    );
    let victim_shards: HashSet<String> = owners(&dynamo, &table)
        .await
        .into_iter()
        .filter(|(_, o)| o.as_deref() == Some("victim"))
        .map(|(k, _)| k)
        .collect();

    let mut producer = ServiceProcess::spawn(
        &bin.join("producer"),
        &env(&[("PRODUCER_INTERVAL_MS", interval_ms.to_string())]),
    );
    let busy = wait_for(Duration::from_secs(60), async || {
        victim.events("record received").len() >= 50
    })
    .await;
    assert!(busy, "{}", victim.dump());
    let acquired_before = survivor.events("lease acquired").len();
    let received_before = survivor.events("record received").len();
    let signalled = Utc::now();
    victim.signal(if kind == "kill -9" { "KILL" } else { "TERM" });
    let exited = victim.wait_exit(Duration::from_secs(10));
    assert!(exited.is_some(), "the stopped worker did not exit");

    let taken = wait_for(
        Duration::from_millis(3 * failover_ms + 10_000),
        async || {
            let got: HashSet<String> = field(
                &survivor.events("lease acquired")[acquired_before..],
                "shard_id",
            )
            .into_iter()
            .collect();
            victim_shards.is_subset(&got)
        },
    )
    .await;
    // Keep the stream flowing a little after the takeover, then stop the producer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    producer.signal("TERM");
    producer.wait_exit(Duration::from_secs(10));
    let sent: HashSet<String> = field(&producer.events("record sent"), "id")
        .into_iter()
        .collect();
    let received = |p: &ServiceProcess| field(&p.events("record received"), "id");
    wait_for(Duration::from_secs(60), async || {
        let got: HashSet<String> = received(&victim)
            .into_iter()
            .chain(received(&survivor))
            .collect();
        sent.is_subset(&got)
    })
    .await;

    let since = |e: &Value| at(e).map(|t| (t - signalled).to_std().unwrap_or_default());
    let acquisitions: Vec<Duration> = survivor.events("lease acquired")[acquired_before..]
        .iter()
        .filter(|e| {
            e["shard_id"]
                .as_str()
                .is_some_and(|s| victim_shards.contains(s))
        })
        .filter_map(since)
        .collect();
    let first_record = survivor.events("record received")[received_before..]
        .iter()
        .find(|e| {
            e["shard_id"]
                .as_str()
                .is_some_and(|s| victim_shards.contains(s))
        })
        .and_then(since);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in received(&victim).into_iter().chain(received(&survivor)) {
        *counts.entry(id).or_default() += 1;
    }
    let duplicates = counts.values().filter(|n| **n > 1).count();
    let lost = sent.iter().filter(|id| !counts.contains_key(*id)).count();
    let mut pending: HashMap<String, usize> = HashMap::new();
    for e in json_lines(&victim) {
        let shard = e["shard_id"].as_str().unwrap_or_default().to_string();
        match e["message"].as_str() {
            Some("checkpoint") => {
                pending.remove(&shard);
            }
            Some("record received") => *pending.entry(shard).or_default() += 1,
            _ => {}
        }
    }
    let uncheckpointed = victim_shards
        .iter()
        .map(|s| pending.get(s).copied().unwrap_or(0))
        .sum();
    survivor.signal("TERM");
    survivor.wait_exit(Duration::from_secs(10));
    Run {
        kind,
        first_acquired: taken.then(|| acquisitions.iter().min().copied()).flatten(),
        last_acquired: taken.then(|| acquisitions.iter().max().copied()).flatten(),
        first_record,
        duplicates,
        uncheckpointed,
        lost,
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{}", d.as_millis()))
        .unwrap_or_else(|| "-".into())
}

#[tokio::main]
async fn main() {
    let failover_ms = knob("BENCH_FAILOVER_MS", 10_000);
    let runs = knob("BENCH_RUNS", 3);
    let interval_ms = knob("BENCH_INTERVAL_MS", 20);
    bench::build_release(&["consumer", "producer"]);
    let kinesis_emu = Emulator::start(Kind::KinesisMock);
    let dynamo_emu = Emulator::start(Kind::Dynalite);
    println!(
        "failover {failover_ms} ms (renewal every {} ms, scans every {} ms), producer interval {interval_ms} ms, 2 workers, 4 shards",
        failover_ms / 3,
        failover_ms / 2
    );
    println!("| stop | lease acquired, first (ms) | lease acquired, last (ms) | first record (ms) | duplicates | uncheckpointed by the stopped worker | lost |");
    println!("|---|---|---|---|---|---|---|");
    for kind in ["kill -9", "SIGTERM"] {
        for _ in 0..runs {
            let r = one_run(&kinesis_emu, &dynamo_emu, kind, failover_ms, interval_ms).await;
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                r.kind,
                ms(r.first_acquired),
                ms(r.last_acquired),
                ms(r.first_record),
                r.duplicates,
                r.uncheckpointed,
                r.lost
            );
        }
    }
}
