//! Leases at scale (not a test): release-built consumer workers on a many-shard kinesis-mock
//! stream with a dynalite lease table, no records flowing. Reported:
//!
//! - **join**: a worker joining a one-worker application: time from its start until the table
//!   shows it owning its fair share (±1) and its log agrees (`lease acquired`, less handoffs),
//!   and until every stolen shard was handed over (`shard handed over`: it processes them);
//! - **SIGTERM**: one of two balanced workers gets SIGTERM: time until the other owns every
//!   lease in the table and its log agrees;
//! - **DynamoDB calls per minute** with 4 balanced workers: every request of the four goes
//!   through the fault proxy of `testkit` in pass-through mode, which counts them by
//!   operation (the `X-Amz-Target` header) over `BENCH_MEASURE_S` seconds;
//! - **idle cost**: one worker holding every lease: CPU (utime + stime from `/proc/<pid>/stat`)
//!   as a percentage of one core over `BENCH_MEASURE_S` seconds, and `VmRSS` at the end.
//!
//! Run: `cargo run --release -p kinesis-consumer --example scale_bench` (it builds the release
//! binaries first). Knobs: `BENCH_SHARDS` (200), `BENCH_FAILOVER_MS` (10000, the service
//! default), `BENCH_MEASURE_S` (60), `BENCH_ONLY` (a comma-separated subset of `join,idle,calls`;
//! `join` includes the SIGTERM run), `BENCH_SKIP_BUILD=1` (use the binaries in
//! `target/release` as they are). The workers' logs are written to a temporary directory,
//! named at the end. Needs the emulators (`npm ci --prefix emulators`).

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use testkit::{Emulator, FaultProxy, Kind, ServiceProcess};

#[path = "support/bench.rs"]
mod bench;
use bench::{knob, release_dir};

/// One application (lease table) on the stream.
struct App<'a> {
    kinesis: &'a Emulator,
    dynamo_endpoint: String,
    dynamo: aws_sdk_dynamodb::Client,
    stream: String,
    table: String,
    failover_ms: u64,
}

impl App<'_> {
    fn worker(&self, id: &str) -> ServiceProcess {
        let mut env = testkit::service_env_with_dynamo(
            &self.kinesis.endpoint(),
            &self.dynamo_endpoint,
            &self.stream,
        );
        for (k, v) in [
            ("CONSUMER_MODE", "leased".to_string()),
            ("CONSUMER_APPLICATION_NAME", self.table.clone()),
            ("CONSUMER_WORKER_ID", id.to_string()),
            ("CONSUMER_FAILOVER_MS", self.failover_ms.to_string()),
        ] {
            env.push((k.to_string(), v));
        }
        ServiceProcess::spawn(&release_dir().join("consumer"), &env)
    }

    async fn owners(&self) -> BTreeMap<String, Option<String>> {
        let mut owners = BTreeMap::new();
        let mut start = None;
        loop {
            let Ok(out) = self
                .dynamo
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
            else {
                return BTreeMap::new();
            };
            for i in out.items() {
                if let Some(key) = i.get("leaseKey").and_then(|v| v.as_s().ok()) {
                    let owner = i.get("leaseOwner").and_then(|v| v.as_s().ok()).cloned();
                    owners.insert(key.clone(), owner);
                }
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return owners,
            }
        }
    }

    /// Whether `worker` owns between `min` and `max` leases in the table and its log agrees.
    async fn holds(&self, id: &str, p: &ServiceProcess, min: usize, max: usize) -> bool {
        let owned: HashSet<String> = self
            .owners()
            .await
            .into_iter()
            .filter(|(_, o)| o.as_deref() == Some(id))
            .map(|(k, _)| k)
            .collect();
        (min..=max).contains(&owned.len()) && p.held_leases() == owned
    }
}

async fn wait_for(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if f().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn log_time(events: &[serde_json::Value], i: usize) -> Option<DateTime<Utc>> {
    events
        .get(i)?
        .get("timestamp")?
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("not reached".into(), |d| d.as_millis().to_string())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let n = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    n(11) + n(12)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

#[tokio::main]
async fn main() {
    let shards = knob("BENCH_SHARDS", 200) as usize;
    let failover_ms = knob("BENCH_FAILOVER_MS", 10_000);
    let measure = Duration::from_secs(knob("BENCH_MEASURE_S", 60));
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);
    if std::env::var("BENCH_SKIP_BUILD").as_deref() != Ok("1") {
        bench::build_release(&["consumer"]);
    }
    let logs = std::env::temp_dir().join(testkit::unique_name("scale-bench-logs"));
    std::fs::create_dir_all(&logs).expect("log directory");
    let save = |name: &str, p: &ServiceProcess| {
        let _ = std::fs::write(logs.join(format!("{name}.log")), p.lines().join("\n"));
    };
    let kinesis = Emulator::start_on(
        Kind::KinesisMock,
        testkit::free_port(),
        &[("SHARD_LIMIT", "10000")],
    );
    let dynamo_emu = Emulator::start(Kind::Dynalite);
    let stream = testkit::unique_name("scale");
    testkit::create_stream(&kinesis.kinesis(), &stream, shards as i32).await;
    let app = |dynamo_endpoint: String| App {
        kinesis: &kinesis,
        dynamo: dynamo_emu.dynamodb(),
        dynamo_endpoint,
        stream: stream.clone(),
        table: testkit::unique_name("scale-app"),
        failover_ms,
    };
    println!(
        "{shards} shards on kinesis-mock, lease table on dynalite, CONSUMER_FAILOVER_MS={failover_ms}, no records flowing"
    );
    let limit = Duration::from_secs(300);
    let half = shards / 2;

    // (a) and (b): a worker joins one, then one of the two gets SIGTERM.
    if run("join") {
        let a = app(dynamo_emu.endpoint());
        let mut first = a.worker("first");
        let alone = wait_for(limit, async || {
            a.holds("first", &first, shards, shards).await
        })
        .await;
        println!(
            "one worker takes all {shards} leases: {} ms from its start",
            ms(alone)
        );
        let second = a.worker("second");
        let fair = wait_for(limit, async || {
            a.holds("second", &second, half.saturating_sub(1), half + 1)
                .await
                && a.holds("first", &first, half.saturating_sub(1), half + 1)
                    .await
        })
        .await;
        let stolen = second.events("lease acquired").len();
        let started = Instant::now() - fair.unwrap_or_default();
        let handed = wait_for(limit, async || {
            second.events("shard handed over").len()
                + second.events("handoff timed out, starting anyway").len()
                >= stolen
        })
        .await
        .map(|_| started.elapsed());
        println!(
        "(a) join, seen from outside: fair share (±1) owned and held {} ms after the process was spawned; all {stolen} stolen shards handed over (processing) after {} ms",
        ms(fair),
        ms(handed)
    );
        // From its own log: the process start-up (calls to a kinesis-mock busy polling 200 shards)
        // is not the lease protocol's doing.
        let started_at = log_time(&second.events("consumer started"), 0);
        let acquired = second.events("lease acquired");
        let last_acquired = log_time(&acquired, acquired.len().saturating_sub(1));
        let over = second.events("shard handed over");
        let last_over = log_time(&over, over.len().saturating_sub(1));
        let since = |t: Option<DateTime<Utc>>| match (started_at, t) {
            (Some(s), Some(t)) => (t - s).num_milliseconds().to_string(),
            _ => "?".into(),
        };
        println!(
        "(a) join, from the joining worker's log: `consumer started` to its last `lease acquired` {} ms, to its last `shard handed over` {} ms ({} handoffs, {} timed out)",
        since(last_acquired),
        since(last_over),
        over.len(),
        second.events("handoff timed out, starting anyway").len()
    );
        let settle = wait_for(limit, async || {
            a.holds("second", &second, half.saturating_sub(1), half + 1)
                .await
                && a.holds("first", &first, half.saturating_sub(1), half + 1)
                    .await
        })
        .await;
        assert!(settle.is_some());
        first.signal("TERM");
        let all = wait_for(limit, async || {
            a.holds("second", &second, shards, shards).await
        })
        .await;
        let exit = first
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code());
        println!(
        "(b) SIGTERM of one of two: the other owns and holds all {shards} after {} ms (stopped worker exit code {exit:?}, {} leases handed over)",
        ms(all),
        first.events("lease handed over").len()
    );
        let mut second = second;
        second.signal("TERM");
        second.wait_exit(Duration::from_secs(10));
        save("join-first", &first);
        save("join-second", &second);
    }

    // (d) one idle worker holding every lease.
    if run("idle") {
        let d = app(dynamo_emu.endpoint());
        let mut solo = d.worker("solo");
        let all = wait_for(limit, async || d.holds("solo", &solo, shards, shards).await).await;
        assert!(all.is_some(), "the lone worker did not take every lease");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let ticks = clock_ticks_per_second();
        let before = cpu_ticks(solo.pid());
        let t0 = Instant::now();
        tokio::time::sleep(measure).await;
        let used = (cpu_ticks(solo.pid()) - before) as f64 / ticks as f64;
        let cpu = 100.0 * used / t0.elapsed().as_secs_f64();
        println!(
        "(d) one idle worker holding {shards} leases: {cpu:.1}% of a core over {} s, VmRSS {:.1} MiB",
        measure.as_secs(),
        rss_kib(solo.pid()) as f64 / 1024.0
    );
        solo.signal("TERM");
        solo.wait_exit(Duration::from_secs(10));
        save("idle", &solo);
    }

    // (c) DynamoDB calls per minute with 4 balanced workers, counted by the pass-through proxy.
    if run("calls") {
        let proxy = FaultProxy::start(&dynamo_emu.endpoint());
        let c = app(proxy.endpoint());
        let names = ["w1", "w2", "w3", "w4"];
        let mut workers: Vec<ServiceProcess> = names.iter().map(|n| c.worker(n)).collect();
        let quarter = shards.div_ceil(4);
        let balanced = wait_for(limit, async || {
            let mut ok = true;
            for (n, w) in names.iter().zip(&workers) {
                ok &= c.holds(n, w, quarter.saturating_sub(1), quarter).await;
            }
            ok
        })
        .await;
        println!("4 workers balanced after {} ms", ms(balanced));
        // Let the handoffs and the first scans pass.
        tokio::time::sleep(Duration::from_millis(2 * failover_ms)).await;
        let ops = [
            "UpdateItem",
            "Scan",
            "Query",
            "GetItem",
            "PutItem",
            "DeleteItem",
            "DescribeTable",
        ];
        let before: Vec<usize> = ops.iter().map(|op| proxy.requests(op)).collect();
        let t0 = Instant::now();
        tokio::time::sleep(measure).await;
        let minutes = t0.elapsed().as_secs_f64() / 60.0;
        println!(
            "(c) DynamoDB calls per minute, 4 workers on {shards} shards, all workers together:"
        );
        println!("| operation | calls per minute |");
        println!("|---|---|");
        let mut total = 0.0;
        for (op, b) in ops.iter().zip(before) {
            let per_minute = (proxy.requests(op) - b) as f64 / minutes;
            total += per_minute;
            if per_minute > 0.0 {
                println!("| {op} | {per_minute:.0} |");
            }
        }
        println!("| total | {total:.0} |");
        for w in &mut workers {
            w.signal("TERM");
        }
        for (n, w) in names.iter().zip(&mut workers) {
            w.wait_exit(Duration::from_secs(10));
            save(&format!("calls-{n}"), w);
        }
    }
    println!("worker logs in {}", logs.display());
}
