//! Chaos: a seeded random run of leased mode against the real emulators (kinesis-mock, dynalite)
//! and the fault proxy. The producer writes aggregated records while 3 to 5 leased workers are
//! killed (`kill -9`), stopped (SIGTERM), restarted and added; shards are split and merged; one
//! worker's lease table hangs for a while; one worker's `GetRecords` calls are throttled.
//!
//! It asserts what a user would: every record the producer reported sent was received by some
//! worker (0 lost), every SIGTERM ends its worker with exit 0 within 5 s, and no process
//! panicked. It reports the number of records delivered twice (at least once delivery allows
//! them; the figure is for the README).
//!
//! Short in CI. For a soak run:
//!
//! ```sh
//! CHAOS_SECONDS=1800 CHAOS_SEED=42 cargo test -p kinesis-consumer --test chaos chaos_with_polling -- --nocapture
//! CHAOS_SECONDS=1800 cargo test -p kinesis-consumer --test chaos chaos_with_fanout -- --nocapture
//! ```
//!
//! The seed is printed at the start and again when the run fails, so that a failing run can be
//! repeated (the same seed gives the same sequence of faults; the timing of the processes is
//! the machine's).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;
use testkit::{Emulator, FaultProxy, Kind, Rule, ServiceProcess};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints how to repeat the run if the test fails.
struct SeedOnFailure(String);

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("chaos run failed; repeat it with {}", self.0);
        }
    }
}

struct Worker {
    id: String,
    process: ServiceProcess,
    table: FaultProxy,
    kinesis: FaultProxy,
}

/// A fault on one worker's proxy, cleared at a time.
struct Timed {
    worker: String,
    until: Instant,
}

#[derive(Default)]
struct Tally(BTreeMap<&'static str, usize>);

impl Tally {
    fn add(&mut self, event: &'static str) {
        *self.0.entry(event).or_default() += 1;
    }
}

fn worker(setup: &Setup, n: usize) -> Worker {
    let id = format!("chaos-{n}");
    let table = FaultProxy::start(&setup.dynamo_endpoint);
    let kinesis = FaultProxy::start(&setup.kinesis_endpoint);
    let table_endpoint = table.endpoint();
    let kinesis_endpoint = kinesis.endpoint();
    let process = setup.worker_with(
        &id,
        &[
            ("AWS_ENDPOINT_URL_DYNAMODB", table_endpoint.as_str()),
            ("AWS_ENDPOINT_URL_KINESIS", kinesis_endpoint.as_str()),
        ],
    );
    Worker {
        id,
        process,
        table,
        kinesis,
    }
}

/// The open shards, with their hash key ranges, sorted by starting hash key.
async fn open_shards(setup: &Setup) -> Vec<(String, u128, u128)> {
    let Ok(shards) = kinesis_common::kinesis::list_shards(&setup.kinesis, &setup.stream).await
    else {
        return Vec::new();
    };
    let mut open: Vec<(String, u128, u128)> = shards
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .filter_map(|s| {
            let range = s.hash_key_range()?;
            Some((
                s.shard_id().to_string(),
                range.starting_hash_key().parse().ok()?,
                range.ending_hash_key().parse().ok()?,
            ))
        })
        .collect();
    open.sort_by_key(|s| s.1);
    open
}

async fn wait_active(setup: &Setup) {
    let active = until(Duration::from_secs(30), || async {
        setup
            .kinesis
            .describe_stream_summary()
            .stream_name(&setup.stream)
            .send()
            .await
            .ok()
            .and_then(|o| {
                o.stream_description_summary()
                    .map(|d| d.stream_status().clone())
            })
            == Some(aws_sdk_kinesis::types::StreamStatus::Active)
    })
    .await;
    assert!(
        active,
        "the stream never became ACTIVE again after a reshard"
    );
}

/// Splits a random open shard in the middle of its range, or merges two adjacent open shards.
async fn reshard(setup: &Setup, rng: &mut StdRng, merge: bool) -> Option<&'static str> {
    let open = open_shards(setup).await;
    if merge {
        let pairs: Vec<usize> = (1..open.len())
            .filter(|&i| open[i - 1].2.checked_add(1) == Some(open[i].1))
            .collect();
        if pairs.is_empty() {
            return None;
        }
        let i = pairs[rng.gen_range(0..pairs.len())];
        let done = setup
            .kinesis
            .merge_shards()
            .stream_name(&setup.stream)
            .shard_to_merge(&open[i - 1].0)
            .adjacent_shard_to_merge(&open[i].0)
            .send()
            .await;
        wait_active(setup).await;
        done.ok().map(|_| "merge")
    } else {
        if open.is_empty() || open.len() >= 6 {
            return None;
        }
        let (id, start, end) = &open[rng.gen_range(0..open.len())];
        let middle = start + (end - start) / 2 + 1;
        let done = setup
            .kinesis
            .split_shard()
            .stream_name(&setup.stream)
            .shard_to_split(id)
            .new_starting_hash_key(middle.to_string())
            .send()
            .await;
        wait_active(setup).await;
        done.ok().map(|_| "split")
    }
}

async fn chaos(retrieval: &str) {
    let _serial = SERIAL.lock().await;
    let seed: u64 = knob("CHAOS_SEED", rand::random());
    let seconds: u64 = knob("CHAOS_SECONDS", 30);
    let repeat = format!("CHAOS_SEED={seed} CHAOS_SECONDS={seconds} (retrieval {retrieval})");
    eprintln!("chaos: seed {seed}, {seconds} s, retrieval {retrieval}; repeat with {repeat}");
    let _seed = SeedOnFailure(repeat);
    let mut rng = StdRng::seed_from_u64(seed);

    let kinesis = Emulator::start_on(
        Kind::KinesisMock,
        testkit::free_port(),
        &[("SHARD_LIMIT", "100")],
    );
    let mut setup = Setup::new("chaos", 2, &kinesis).await;
    if retrieval == "fanout" {
        setup.worker_vars.push(("CONSUMER_RETRIEVAL", "fanout"));
    }
    // 50 messages a second, aggregated, for the whole run.
    let count = (50 * seconds).to_string();
    let mut producer = ServiceProcess::spawn(
        &producer_bin(),
        &setup.env(&[
            ("PRODUCER_COUNT", count.as_str()),
            ("PRODUCER_INTERVAL_MS", "100"),
            ("PRODUCER_MESSAGES_PER_TICK", "5"),
            ("PRODUCER_AGGREGATION", "true"),
            ("PRODUCER_LINGER_MS", "200"),
            ("PRODUCER_SHARD_RATE_LIMIT", "0"),
        ]),
    );

    let mut next = 0;
    let mut alive: Vec<Worker> = Vec::new();
    let mut gone: Vec<Worker> = Vec::new();
    for _ in 0..3 {
        alive.push(worker(&setup, next));
        next += 1;
    }
    let mut tally = Tally::default();
    let mut hung: Vec<Timed> = Vec::new();
    let mut throttled: Vec<Timed> = Vec::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let pause = Duration::from_millis(rng.gen_range(1500..4000));
        tokio::time::sleep(pause.min(end.saturating_duration_since(Instant::now()))).await;
        // Timed faults run out.
        let now = Instant::now();
        for (faults, what) in [(&mut hung, "table"), (&mut throttled, "kinesis")] {
            faults.retain(|f| {
                if f.until > now {
                    return true;
                }
                if let Some(w) = alive.iter().find(|w| w.id == f.worker) {
                    if what == "table" {
                        w.table.clear();
                    } else {
                        w.kinesis.clear();
                    }
                }
                false
            });
        }
        match rng.gen_range(0..8) {
            0 if alive.len() > 2 => {
                let w = alive.remove(rng.gen_range(0..alive.len()));
                w.process.signal("KILL");
                let mut w = w;
                assert!(w.process.wait_exit(Duration::from_secs(5)).is_some());
                gone.push(w);
                tally.add("kill -9");
            }
            1 if alive.len() > 2 => {
                let mut w = alive.remove(rng.gen_range(0..alive.len()));
                w.process.stop();
                gone.push(w);
                tally.add("SIGTERM");
            }
            2 | 3 if alive.len() < 5 => {
                alive.push(worker(&setup, next));
                next += 1;
                tally.add("worker started");
            }
            4 => {
                if let Some(what) = reshard(&setup, &mut rng, false).await {
                    tally.add(what);
                }
            }
            5 => {
                if let Some(what) = reshard(&setup, &mut rng, true).await {
                    tally.add(what);
                }
            }
            6 if !alive.is_empty() => {
                let w = &alive[rng.gen_range(0..alive.len())];
                w.table.set(vec![Rule::hang()]);
                hung.push(Timed {
                    worker: w.id.clone(),
                    until: Instant::now() + Duration::from_millis(rng.gen_range(2000..8000)),
                });
                tally.add("lease table hung");
            }
            7 if !alive.is_empty() => {
                let w = &alive[rng.gen_range(0..alive.len())];
                w.kinesis
                    .set(vec![Rule::throttle().only(&["GetRecords"]).fraction(0.5)]);
                throttled.push(Timed {
                    worker: w.id.clone(),
                    until: Instant::now() + Duration::from_millis(rng.gen_range(2000..8000)),
                });
                tally.add("GetRecords throttled");
            }
            _ => {}
        }
    }

    // The end: faults cleared, two healthy workers at least, the producer done.
    for w in &alive {
        w.table.clear();
        w.kinesis.clear();
    }
    while alive.len() < 2 {
        alive.push(worker(&setup, next));
        next += 1;
    }
    let logs = |alive: &[Worker], gone: &[Worker], producer: &ServiceProcess| {
        let mut all: Vec<&ServiceProcess> = vec![producer];
        all.extend(alive.iter().chain(gone).map(|w| &w.process));
        save_logs("chaos", &all)
    };
    let code = producer
        .wait_exit(Duration::from_secs(120))
        .and_then(|s| s.code());
    assert_eq!(
        code,
        Some(0),
        "the producer did not end within 120 s: {}\n{}",
        logs(&alive, &gone, &producer),
        producer.dump()
    );
    let sent = sent_ids(&producer);
    assert_eq!(sent.len() as u64, 50 * seconds, "{}", producer.dump());
    let received = |alive: &[Worker], gone: &[Worker]| -> Vec<String> {
        alive
            .iter()
            .chain(gone)
            .flat_map(|w| ids(&w.process))
            .collect()
    };
    let complete = until(Duration::from_secs(120), || async {
        let got: HashSet<String> = received(&alive, &gone).into_iter().collect();
        sent.is_subset(&got)
    })
    .await;
    let all = received(&alive, &gone);
    let unique: HashSet<&String> = all.iter().collect();
    let lost: Vec<&String> = sent.iter().filter(|id| !unique.contains(id)).collect();
    for mut w in alive.drain(..) {
        w.process.stop();
        gone.push(w);
    }
    let panicked: Vec<String> = gone
        .iter()
        .flat_map(|w| w.process.stderr_lines())
        .chain(producer.stderr_lines())
        .filter(|l| l.contains("panicked"))
        .collect();
    let mut times: HashMap<&String, usize> = HashMap::new();
    for id in &all {
        *times.entry(id).or_default() += 1;
    }
    let twice = times.values().filter(|n| **n > 1).count();
    eprintln!(
        "chaos ({retrieval}, seed {seed}, {seconds} s): {} records sent, {} received by {} workers, {} lost, {} delivered more than once ({:.1} %, {} extra deliveries); events: {:?}",
        sent.len(),
        unique.len(),
        gone.len(),
        lost.len(),
        twice,
        100.0 * twice as f64 / sent.len().max(1) as f64,
        all.len() - unique.len(),
        tally.0
    );
    assert!(panicked.is_empty(), "a process panicked: {panicked:?}");
    assert!(
        complete && lost.is_empty(),
        "{} of {} records lost: {:?}; {}",
        lost.len(),
        sent.len(),
        &lost[..lost.len().min(10)],
        logs(&alive, &gone, &producer)
    );
}

#[tokio::test]
async fn chaos_with_polling() {
    chaos("polling").await;
}

#[tokio::test]
async fn chaos_with_fanout() {
    chaos("fanout").await;
}
