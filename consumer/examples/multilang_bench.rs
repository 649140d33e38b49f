//! `consumer multilang` measured (not a test): the kclpy application of `multilang/apps/`
//! (one line per batch, a checkpoint after each) under the release-built daemon, on a
//! kinesis-mock stream with a dynalite lease table. Reported:
//!
//! - start: from spawning the daemon to the first batch a child processed (cold: a new lease
//!   table, so it includes creating it, the shard sync and taking the leases);
//! - resident memory (VmRSS) of the daemon alone and of the daemon with its children, once
//!   every record was processed;
//! - the daemon's CPU time (user + system, from /proc) per million records, and its children's;
//! - takeover: a second daemon joins, the two settle at half the shards each, one is killed
//!   with `kill -9`; the time until the other has processed a record put after the kill on
//!   every shard the killed one held.
//!
//! Run: `cargo run --release -p kinesis-consumer --example multilang_bench` (it builds the release
//! consumer first). Needs the emulators (`npm ci --prefix emulators`) and amazon-kclpy in
//! .venv (`scripts/dev-venv.sh`). Knobs: `BENCH_RECORDS` (20000), `BENCH_SHARDS` (4),
//! `BENCH_FAILOVER_MS` (10000, the default of the daemon and of the Java KCL).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use chrono::{DateTime, Utc};
use testkit::{field, Emulator, Kind, ServiceProcess};

#[path = "support/bench.rs"]
mod bench;
use bench::{knob, release_dir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A field of /proc/PID/status in kB (`VmRSS`), 0 once the process is gone.
fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn children(daemon: &ServiceProcess) -> Vec<u32> {
    daemon
        .events("child process started")
        .iter()
        .filter_map(|e| e["pid"].as_u64().map(|p| p as u32))
        .collect()
}

/// Records the children processed (the sum of their `batch SHARD COUNT` lines), and when the
/// first batch came.
fn processed(daemon: &ServiceProcess) -> (u64, Option<DateTime<Utc>>, HashSet<String>) {
    let events = daemon.events("child stderr");
    let mut total = 0;
    let mut first = None;
    let mut shards = HashSet::new();
    for e in &events {
        let line = e["line"].as_str().unwrap_or_default();
        let mut parts = line.split(' ');
        if parts.next() != Some("batch") {
            continue;
        }
        let shard = parts.next().unwrap_or_default().to_string();
        let count: u64 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        if count > 0 {
            total += count;
            shards.insert(shard);
            if first.is_none() {
                first = e["timestamp"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
            }
        }
    }
    (total, first, shards)
}

async fn put(kinesis: &aws_sdk_kinesis::Client, stream: &str, count: usize, tag: &str) {
    let mut sent = 0;
    while sent < count {
        let n = (count - sent).min(500);
        let entries: Vec<PutRecordsRequestEntry> = (sent..sent + n)
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("{tag}-{i}"))
                    .data(Blob::new(format!("{tag}-{i} {}", "x".repeat(100))))
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = kinesis
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .expect("PutRecords");
        assert_eq!(
            out.failed_record_count(),
            Some(0),
            "kinesis-mock failed records"
        );
        sent += n;
    }
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::main]
async fn main() {
    let records = knob("BENCH_RECORDS", 20_000) as usize;
    let shards = knob("BENCH_SHARDS", 4) as i32;
    let failover_ms = knob("BENCH_FAILOVER_MS", 10_000);
    bench::build_release(&["consumer"]);
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "run scripts/dev-venv.sh first");
    let kinesis_emu = Emulator::start(Kind::KinesisMock);
    let dynamo_emu = Emulator::start(Kind::Dynalite);
    let kinesis = kinesis_emu.kinesis();
    let stream = testkit::unique_name("mlbench");
    let app = testkit::unique_name("mlbench-app");
    testkit::create_stream(&kinesis, &stream, shards).await;
    let dir = std::env::temp_dir().join(&app);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let properties = |id: &str| {
        let path = dir.join(format!("{id}.properties"));
        let text = format!(
            "executableName = {} {}\nstreamName = {stream}\napplicationName = {app}\n\
             workerId = {id}\ninitialPositionInStream = TRIM_HORIZON\nregionName = us-east-1\n\
             failoverTimeMillis = {failover_ms}\nmaxRecords = 10000\n\
             idleTimeBetweenReadsInMillis = 200\nmetricsLevel = NONE\n",
            python.display(),
            repo().join("multilang/apps/kclpy_app.py").display(),
        );
        std::fs::write(&path, text).expect("write properties");
        path.display().to_string()
    };
    let mut env =
        testkit::service_env_with_dynamo(&kinesis_emu.endpoint(), &dynamo_emu.endpoint(), &stream);
    env.push(("MULTILANG_QUIET".into(), "1".into()));
    let daemon = |id: &str| {
        ServiceProcess::spawn_with_args(
            &release_dir().join("consumer"),
            &["multilang", &properties(id)],
            &env,
        )
    };

    println!("putting {records} records on {shards} shards ...");
    put(&kinesis, &stream, records, "r").await;
    let spawned = Utc::now();
    let a = daemon("a");
    let done = wait_for(Duration::from_secs(600), || {
        processed(&a).0 >= records as u64
    })
    .await;
    assert!(done, "not every record processed:\n{}", a.dump());
    let (total, first, _) = processed(&a);
    let start_ms = first.map(|f| (f - spawned).num_milliseconds());
    let pids = children(&a);
    let daemon_rss = status_kb(a.pid(), "VmRSS");
    let children_rss: u64 = pids.iter().map(|p| status_kb(*p, "VmRSS")).sum();
    let daemon_cpu = cpu_seconds(a.pid());
    let children_cpu: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
    println!(
        "start to first record processed: {} ms",
        start_ms.unwrap_or(-1)
    );
    println!(
        "resident memory: daemon {:.1} MB, daemon and {} children {:.1} MB",
        daemon_rss as f64 / 1024.0,
        pids.len(),
        (daemon_rss + children_rss) as f64 / 1024.0
    );
    println!(
        "CPU for {total} records (start included): daemon {daemon_cpu:.2} s ({:.1} s per million), children {children_cpu:.2} s",
        daemon_cpu / total as f64 * 1e6
    );

    // Takeover: a second daemon, both settled, one killed.
    let b = daemon("b");
    let half = (shards / 2) as usize;
    let settled = wait_for(Duration::from_secs(12 * failover_ms / 1000 + 60), || {
        a.held_leases().len() == shards as usize - half && b.held_leases().len() == half
    })
    .await;
    assert!(
        settled,
        "daemons did not settle:\n{}\n{}",
        a.dump(),
        b.dump()
    );
    let a_shards = a.held_leases();
    let before = field(&b.events("child stderr"), "line").len();
    a.signal("KILL");
    let killed = Instant::now();
    put(&kinesis, &stream, 200, "after").await;
    let took_over = wait_for(Duration::from_secs(failover_ms / 1000 * 3 + 60), || {
        let lines = b.events("child stderr");
        let seen: HashSet<String> = lines[before.min(lines.len())..]
            .iter()
            .filter_map(|e| {
                let line = e["line"].as_str()?;
                let mut parts = line.split(' ');
                (parts.next() == Some("batch") && parts.nth(1) != Some("0"))
                    .then(|| e["shard_id"].as_str().map(str::to_string))?
            })
            .collect();
        a_shards.is_subset(&seen)
    })
    .await;
    assert!(took_over, "no takeover:\n{}", b.dump());
    println!(
        "takeover after kill -9 (failover {failover_ms} ms): {} ms to a record processed on each of the {} shards taken",
        killed.elapsed().as_millis(),
        a_shards.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
