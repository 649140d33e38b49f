//! The producer binary against kinesis-mock behind the test kit's fault-injecting proxy: the
//! failures the emulator never produces (dropped connections, partial `PutRecords` failures,
//! throttling, 5xx answers without an AWS error code, calls that never answer, a failing
//! `ListShards`) lose nothing, report nothing sent that is not stored, and keep the record time
//! to live.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use testkit::{FaultProxy, Kind, Rule, ServiceProcess};

fn producer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_producer"))
}

/// The `record sent` events as id -> (shard, sequence number).
fn reported_sent(producer: &ServiceProcess) -> HashMap<String, (String, String)> {
    producer
        .events("record sent")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (s("id"), (s("shard_id"), s("sequence_number")))
        })
        .collect()
}

fn time(event: &Value, field: &str) -> DateTime<Utc> {
    event[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time in {field} of {event}"))
}

/// A producer through `proxy` with no SDK-level retries: its own retry loop carries faults.
fn spawn(proxy: &FaultProxy, stream: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    let mut env = vec![("AWS_MAX_ATTEMPTS", "1")];
    env.extend_from_slice(extra);
    ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(&proxy.endpoint(), stream, &env),
    )
}

#[tokio::test]
async fn records_handed_over_while_connections_are_cut_are_retried_until_they_pass() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-outage");
    testkit::create_stream(&emu.kinesis(), &stream, 1).await;
    let proxy = FaultProxy::start(&emu.endpoint());
    let mut producer = spawn(
        &proxy,
        &stream,
        &[
            ("PRODUCER_COUNT", "60"),
            ("PRODUCER_INTERVAL_MS", "100"),
            ("PRODUCER_RECORD_TTL_MS", "60000"),
        ],
    );
    let sending = testkit::eventually(Duration::from_secs(60), || {
        producer.events("record sent").len() >= 5
    })
    .await;
    assert!(sending, "{}", producer.dump());

    // Every connection is dropped for a while (open ones too), then Kinesis is back.
    proxy.set(vec![Rule::cut()]);
    let cut_seen = testkit::eventually(Duration::from_secs(30), || {
        proxy.faults("PutRecords") >= 3
            || !producer.events("PutRecords failed, will retry").is_empty()
    })
    .await;
    assert!(cut_seen, "{}", producer.dump());
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.clear();

    producer.expect_exit(Duration::from_secs(90), 0);
    let sent = reported_sent(&producer);
    assert_eq!(sent.len(), 60, "{}", producer.dump());
    assert!(producer.events("record not sent").is_empty());
    assert!(
        producer
            .events("record sent")
            .iter()
            .any(|e| e["attempts"].as_u64() > Some(1)),
        "no record needed a second PutRecords: {}",
        producer.dump()
    );
    // Every record reported sent is stored under the reported shard and sequence number, and
    // nothing is stored that was not reported sent. A call cut after the emulator stored its
    // records cannot be told from one cut before, so a record retried after a cut may be
    // stored twice (at least once, as with any Kinesis producer): only those may repeat.
    let retried: std::collections::HashSet<String> = producer
        .events("record sent")
        .iter()
        .filter(|e| e["attempts"].as_u64() > Some(1))
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    let stored = testkit::stored_messages(&emu.kinesis(), &stream).await;
    for (id, copies) in &stored {
        let reported = sent
            .get(id)
            .unwrap_or_else(|| panic!("{id} stored, never reported sent"));
        assert!(
            copies.contains(reported),
            "{id}: {copies:?} vs {reported:?}"
        );
        assert!(
            copies.len() == 1 || retried.contains(id),
            "{id} stored {copies:?}"
        );
    }
    assert_eq!(stored.len(), 60);
}

#[tokio::test]
async fn partial_failures_and_throttling_lose_nothing_and_store_nothing_twice() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-partial");
    testkit::create_stream(&emu.kinesis(), &stream, 2).await;
    let proxy = FaultProxy::start(&emu.endpoint());
    // A fifth of the calls throttled whole, and a third of the entries of the others failed
    // individually, as Kinesis does when single shards are over their limits.
    proxy.set(vec![
        Rule::throttle().only(&["PutRecords"]).fraction(0.2),
        Rule::fail_entries("ProvisionedThroughputExceededException").fraction(0.3),
    ]);
    let mut producer = spawn(
        &proxy,
        &stream,
        &[
            ("PRODUCER_COUNT", "300"),
            ("PRODUCER_INTERVAL_MS", "10"),
            ("PRODUCER_MESSAGES_PER_TICK", "5"),
        ],
    );
    producer.expect_exit(Duration::from_secs(120), 0);
    let sent = reported_sent(&producer);
    assert_eq!(sent.len(), 300, "{}", producer.dump());
    assert!(producer.events("record not sent").is_empty());
    assert!(proxy.faults("PutRecords") > 0);
    assert!(
        producer
            .events("record sent")
            .iter()
            .any(|e| e["attempts"].as_u64() > Some(1)),
        "no record was retried: {}",
        producer.dump()
    );
    assert_eq!(testkit::stored_once(&emu.kinesis(), &stream).await, sent);
}

#[tokio::test]
async fn a_bare_502_from_a_proxy_is_retried_not_reported_as_a_rejection() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-502");
    testkit::create_stream(&emu.kinesis(), &stream, 1).await;
    let proxy = FaultProxy::start(&emu.endpoint());
    proxy.set(vec![Rule::error(502, None).only(&["PutRecords"])]);
    let mut producer = spawn(
        &proxy,
        &stream,
        &[
            ("PRODUCER_COUNT", "20"),
            ("PRODUCER_INTERVAL_MS", "100"),
            ("PRODUCER_RECORD_TTL_MS", "60000"),
        ],
    );
    let bounced =
        testkit::eventually(Duration::from_secs(30), || proxy.faults("PutRecords") >= 3).await;
    assert!(bounced, "{}", producer.dump());
    proxy.clear();
    producer.expect_exit(Duration::from_secs(90), 0);
    assert_eq!(reported_sent(&producer).len(), 20, "{}", producer.dump());
    assert!(producer.events("record not sent").is_empty());
}

#[tokio::test]
async fn hung_calls_neither_stretch_the_record_ttl_nor_keep_a_call_slot() {
    const TTL_MS: i64 = 3000;
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-hang");
    testkit::create_stream(&emu.kinesis(), &stream, 1).await;
    let proxy = FaultProxy::start(&emu.endpoint());
    proxy.set(vec![Rule::hang().only(&["PutRecords"])]);
    // SDK timeouts far beyond the TTL, one call slot: only the producer's own deadline can end
    // a hung call and free the slot.
    let mut producer = spawn(
        &proxy,
        &stream,
        &[
            ("PRODUCER_COUNT", "40"),
            ("PRODUCER_INTERVAL_MS", "200"),
            ("PRODUCER_RECORD_TTL_MS", &TTL_MS.to_string()),
            ("PRODUCER_MAX_IN_FLIGHT", "1"),
            ("KINESIS_ATTEMPT_TIMEOUT_MS", "60000"),
            ("KINESIS_CALL_TIMEOUT_MS", "60000"),
        ],
    );
    let failing = testkit::eventually(Duration::from_secs(30), || {
        producer.events("record not sent").len() >= 3
    })
    .await;
    assert!(failing, "{}", producer.dump());
    proxy.clear();
    let cleared = Utc::now();
    producer.expect_exit(Duration::from_secs(60), 1);

    let not_sent = producer.events("record not sent");
    for event in &not_sent {
        let late = time(event, "timestamp") - time(event, "created_on");
        assert!(
            late.num_milliseconds() <= TTL_MS + 2000,
            "reported {} ms after it was created, the TTL is {TTL_MS} ms: {event}",
            late.num_milliseconds()
        );
        assert!(
            event["error"]
                .as_str()
                .is_some_and(|e| e.contains("time to live")),
            "{event}"
        );
    }
    // Once the calls answer again, a record made a second later is sent: no hung call keeps
    // the only slot.
    let late_failures: Vec<_> = not_sent
        .iter()
        .filter(|e| time(e, "created_on") > cleared + chrono::TimeDelta::seconds(1))
        .collect();
    assert!(late_failures.is_empty(), "{late_failures:?}");
    let sent = reported_sent(&producer);
    assert_eq!(sent.len() + not_sent.len(), 40, "{}", producer.dump());
    assert!(!sent.is_empty());
}

#[tokio::test]
async fn a_shard_map_that_cannot_be_listed_at_first_is_listed_again_and_aggregation_starts() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-listshards");
    testkit::create_stream(&emu.kinesis(), &stream, 2).await;
    let proxy = FaultProxy::start(&emu.endpoint());
    proxy.set(vec![
        Rule::error(500, Some("InternalFailure")).only(&["ListShards"])
    ]);
    let mut producer = spawn(
        &proxy,
        &stream,
        &[
            ("PRODUCER_INTERVAL_MS", "50"),
            ("PRODUCER_MESSAGES_PER_TICK", "10"),
            ("PRODUCER_AGGREGATION", "true"),
        ],
    );
    let unaggregated = testkit::eventually(Duration::from_secs(30), || {
        proxy.faults("ListShards") >= 1 && producer.events("record sent").len() >= 20
    })
    .await;
    assert!(unaggregated, "{}", producer.dump());
    assert!(producer
        .events("record sent")
        .iter()
        .all(|e| e["sub_sequence_number"].is_null()));
    proxy.clear();
    let aggregating = testkit::eventually(Duration::from_secs(60), || {
        producer
            .events("record sent")
            .iter()
            .any(|e| !e["sub_sequence_number"].is_null())
    })
    .await;
    assert!(
        aggregating,
        "ListShards works again but records still go out one by one\n{}",
        producer.dump()
    );
    producer.stop();
}

/// CPU time (user + system) the process used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

#[tokio::test]
async fn a_full_buffer_held_back_by_the_rate_limiter_costs_little_cpu() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-held");
    testkit::create_stream(&emu.kinesis(), &stream, 4).await;
    // 10 records a second on each of 4 shards, and 50,000 records waiting for them.
    let mut producer = ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("PRODUCER_INTERVAL_MS", "0"),
                ("PRODUCER_MESSAGES_PER_TICK", "1000"),
                ("PRODUCER_SHARD_RATE_LIMIT", "1"),
                ("PRODUCER_MAX_BUFFERED_RECORDS", "50000"),
                ("PRODUCER_RECORD_TTL_MS", "600000"),
            ],
        ),
    );
    let flowing = testkit::eventually(Duration::from_secs(60), || {
        producer.events("record sent").len() >= 100
    })
    .await;
    assert!(flowing, "{}", producer.dump());
    // Measurement windows, not waits for a condition: the CPU share over 2 s, four times. The
    // first may still include filling the buffer (on a loaded machine); the quietest counts.
    let mut shares = Vec::new();
    for _ in 0..4 {
        let (before, started) = (cpu_seconds(producer.pid()), std::time::Instant::now());
        tokio::time::sleep(Duration::from_secs(2)).await;
        shares.push((cpu_seconds(producer.pid()) - before) / started.elapsed().as_secs_f64());
    }
    let quietest = shares.iter().copied().fold(f64::MAX, f64::min);
    assert!(
        quietest < 0.25,
        "the producer used {shares:.2?} of a core while the limiter held records back"
    );
    assert!(producer.events("record not sent").is_empty());
    producer.stop();
}
