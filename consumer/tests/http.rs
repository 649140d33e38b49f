//! The consumer's HTTP server (`HTTP_ADDR`): metrics that agree with its logs in both modes, and
//! the live status page in a real headless browser showing every lease of a running leased
//! application and updating when a worker leaves.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use kinesis_common::message::DataMessage;
use serde_json::Value;
use testkit::{http_get, metric_value, Kind, ServiceProcess};

fn consumer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_consumer"))
}

fn get(addr: &str, path: &str) -> (u16, String) {
    http_get(addr, path).unwrap_or_else(|| panic!("nothing answered GET {path} on {addr}"))
}

/// The sum of every series of `name` (all label sets) in a `/metrics` text.
fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn put_messages(kinesis: &aws_sdk_kinesis::Client, stream: &str, n: usize) {
    for _ in 0..n {
        let m = DataMessage::new();
        testkit::put_record(kinesis, stream, &m.id.to_string(), m.to_json()).await;
    }
}

#[tokio::test]
async fn polling_metrics_agree_with_the_logs() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("consumer-metrics");
    let kinesis = emu.kinesis();
    testkit::create_stream(&kinesis, &stream, 2).await;
    put_messages(&kinesis, &stream, 20).await;
    testkit::put_record(&kinesis, &stream, "bad", b"not json".to_vec()).await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let consumer = ServiceProcess::spawn(
        consumer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[("HTTP_ADDR", &addr), ("CONSUMER_POLL_INTERVAL_MS", "200")],
        ),
    );
    let read = testkit::eventually(Duration::from_secs(60), || {
        consumer.events("record received").len() == 20
            && consumer.events("malformed record skipped").len() == 1
    })
    .await;
    assert!(read, "{}", consumer.dump());
    let (status, _) = get(&addr, "/readyz");
    assert_eq!(status, 200);
    let metrics = get(&addr, "/metrics").1;
    assert_eq!(
        metric_sum(&metrics, "kinesis_consumer_records_processed_total"),
        21.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            &format!("kinesis_consumer_malformed_records_total{{stream=\"{stream}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(metric_sum(&metrics, "kinesis_consumer_bytes_processed_total") > 0.0);
    assert!(metric_sum(&metrics, "kinesis_consumer_get_records_seconds_count") > 0.0);
    assert!(metrics.contains("kinesis_consumer_millis_behind_latest{"));
    let doc: Value = serde_json::from_str(&get(&addr, "/status").1).unwrap();
    assert_eq!(doc["mode"], "polling");
    assert_eq!(doc["leases"].as_array().map(Vec::len), Some(2), "{doc}");
    assert!(doc["recent_errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["message"] == "malformed record skipped"));
}

#[tokio::test]
async fn the_status_page_shows_every_lease_and_follows_a_worker_leaving() {
    let kinesis_emu = testkit::shared(Kind::KinesisMock);
    let dynamo_emu = testkit::shared(Kind::Dynalite);
    let stream = testkit::unique_name("consumer-page");
    let app = testkit::unique_name("page-app");
    let kinesis = kinesis_emu.kinesis();
    testkit::create_stream(&kinesis, &stream, 4).await;
    put_messages(&kinesis, &stream, 20).await;
    let worker = |id: &str, addr: &str| {
        let mut env = testkit::service_env_with_dynamo(
            &kinesis_emu.endpoint(),
            &dynamo_emu.endpoint(),
            &stream,
        );
        for (k, v) in [
            ("CONSUMER_MODE", "leased"),
            ("CONSUMER_APPLICATION_NAME", app.as_str()),
            ("CONSUMER_WORKER_ID", id),
            ("CONSUMER_FAILOVER_MS", "3000"),
            ("CONSUMER_POLL_INTERVAL_MS", "200"),
            ("HTTP_ADDR", addr),
        ] {
            env.push((k.to_string(), v.to_string()));
        }
        ServiceProcess::spawn(consumer_bin(), &env)
    };
    let (addr_a, addr_b) = (
        format!("127.0.0.1:{}", testkit::free_port()),
        format!("127.0.0.1:{}", testkit::free_port()),
    );
    let a = worker("worker-a", &addr_a);
    let mut b = worker("worker-b", &addr_b);
    let balanced = testkit::eventually(Duration::from_secs(60), || {
        a.held_leases().len() == 2 && b.held_leases().len() == 2
    })
    .await;
    assert!(balanced, "{}\n{}", a.dump(), b.dump());
    let all_read = testkit::eventually(Duration::from_secs(60), || {
        a.events("record received").len() + b.events("record received").len() >= 20
    })
    .await;
    assert!(all_read, "{}\n{}", a.dump(), b.dump());

    // Metrics agree with what each worker logged.
    let agree = testkit::eventually(Duration::from_secs(30), || {
        let metrics = get(&addr_a, "/metrics").1;
        let gauge = |name: &str| metric_value(&metrics, &format!("{name}{{stream=\"{stream}\"}}"));
        metric_sum(&metrics, "kinesis_consumer_records_processed_total")
            == a.events("record received").len() as f64
            && gauge("kinesis_consumer_leases_held") == Some(2.0)
            && gauge("kinesis_consumer_workers") == Some(2.0)
            && gauge("kinesis_consumer_checkpoints_total")
                == Some(a.events("checkpoint").len() as f64)
            && gauge("kinesis_consumer_lease_acquisitions_total")
                == Some(a.events("lease acquired").len() as f64)
    })
    .await;
    assert!(agree, "{}\n{}", get(&addr_a, "/metrics").1, a.dump());

    let mut browser = testkit::Browser::start();
    browser
        .goto(&format!("http://{addr_a}/"))
        .expect("page loads");
    let shards: HashSet<String> = a.held_leases().union(&b.held_leases()).cloned().collect();
    let table = browser
        .wait_for("#leases", "worker-b", false, Duration::from_secs(20))
        .expect("the page shows the other worker's leases");
    for shard in &shards {
        assert!(
            table.contains(shard.as_str()),
            "{shard} missing from {table}"
        );
    }
    assert!(table.contains("worker-a"));
    browser
        .wait_for("#workers", "worker-b", false, Duration::from_secs(20))
        .expect("both workers listed");

    // Worker B leaves: the page, without a reload, shows A holding every lease and B gone.
    b.stop();
    let took_all =
        testkit::eventually(Duration::from_secs(30), || a.held_leases().len() == 4).await;
    assert!(took_all, "{}", a.dump());
    browser
        .wait_for("#leases", "worker-b", true, Duration::from_secs(30))
        .expect("worker-b's leases move to worker-a on the page");
    browser
        .wait_for("#workers", "worker-b", true, Duration::from_secs(30))
        .expect("worker-b leaves the workers list");
    assert_eq!(browser.text("#worker-count").unwrap(), "1");
}

/// Issue 24: the consumer's page draws records per second and lag over time, moving without a
/// reload, and a picture of the hash key space that shows a split made under load: the parent
/// closed above its two open children.
#[tokio::test]
async fn the_consumer_page_charts_move_and_its_keyspace_shows_a_split_under_load() {
    let kinesis_emu = testkit::shared(Kind::KinesisMock);
    let dynamo_emu = testkit::shared(Kind::Dynalite);
    let stream = testkit::unique_name("consumer-charts");
    let kinesis = kinesis_emu.kinesis();
    testkit::create_stream(&kinesis, &stream, 2).await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let mut env =
        testkit::service_env_with_dynamo(&kinesis_emu.endpoint(), &dynamo_emu.endpoint(), &stream);
    let app = testkit::unique_name("charts-app");
    for (k, v) in [
        ("CONSUMER_MODE", "leased"),
        ("CONSUMER_APPLICATION_NAME", app.as_str()),
        ("CONSUMER_WORKER_ID", "worker-a"),
        ("CONSUMER_FAILOVER_MS", "3000"),
        ("CONSUMER_POLL_INTERVAL_MS", "200"),
        ("CONSUMER_SHARD_SYNC_MS", "1000"),
        ("HTTP_ADDR", addr.as_str()),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    let worker = ServiceProcess::spawn(consumer_bin(), &env);
    let mut producer_env = testkit::env_with(
        &kinesis_emu.endpoint(),
        &stream,
        &[("PRODUCER_COUNT", "100000"), ("PRODUCER_INTERVAL_MS", "50")],
    );
    producer_env.retain(|(k, _)| k != "HTTP_ADDR");
    let producer = ServiceProcess::spawn(
        &testkit::sibling_binary(env!("CARGO_BIN_EXE_consumer"), "producer"),
        &producer_env,
    );
    let reading = testkit::eventually(Duration::from_secs(60), || {
        worker.held_leases().len() == 2 && worker.events("record received").len() >= 20
    })
    .await;
    assert!(reading, "{}\n{}", worker.dump(), producer.dump());

    let mut browser = testkit::Browser::start();
    browser
        .goto(&format!("http://{addr}/"))
        .expect("page loads");
    browser
        .wait_for(
            "#keyspace-summary",
            "2 open, 0 closed",
            false,
            Duration::from_secs(20),
        )
        .expect("the keyspace shows the two shards");
    assert_eq!(browser.count("#keyspace rect.open").unwrap(), 2);

    // The charts: a point every 5 s; the total's line grows without a reload.
    let total = "#rate-chart polyline.total";
    let points = |browser: &mut testkit::Browser| {
        browser
            .attr(total, "points")
            .unwrap()
            .map(|p| p.split_whitespace().count())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let first = loop {
        let n = points(&mut browser);
        if n >= 2 || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(first >= 2, "the rate chart has no line after 40 s");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let later = loop {
        let n = points(&mut browser);
        if n > first || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        later > first,
        "the chart did not move: {first} then {later} points"
    );
    // One line per shard read, in both charts, and the rate drawn is the one read.
    assert_eq!(browser.count("#rate-chart polyline.shard").unwrap(), 2);
    assert_eq!(browser.count("#lag-chart polyline.shard").unwrap(), 2);
    let status: Value = serde_json::from_str(&get(&addr, "/status").1).expect("status JSON");
    let last = status["history"].as_array().and_then(|h| h.last()).cloned();
    assert!(
        last.as_ref()
            .and_then(|p| p["total_rps"].as_f64())
            .is_some_and(|r| r > 0.0),
        "{last:?}"
    );

    // A split while records flow: the parent closes above its two children.
    let parent = "shardId-000000000000";
    let shards = kinesis_common::kinesis::list_shards(&kinesis, &stream)
        .await
        .expect("ListShards");
    let (start, end) = shards
        .iter()
        .find(|s| s.shard_id() == parent)
        .and_then(kinesis_common::kinesis::hash_range)
        .expect("the parent's range");
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(parent)
        .new_starting_hash_key((start + (end - start) / 2 + 1).to_string())
        .send()
        .await
        .expect("SplitShard");
    browser
        .wait_for(
            "#keyspace-summary",
            "3 open, 1 closed",
            false,
            Duration::from_secs(30),
        )
        .expect("the keyspace shows the split");
    assert_eq!(browser.count("#keyspace rect.open").unwrap(), 3);
    assert_eq!(browser.count("#keyspace rect.closed").unwrap(), 1);
    assert_eq!(
        browser
            .attr("#keyspace rect.closed", "data-shard")
            .unwrap()
            .as_deref(),
        Some(parent)
    );
    // The children are read and drawn coloured by their owner once the worker holds them.
    let children_held = testkit::eventually(Duration::from_secs(30), || {
        let held = worker.held_leases();
        held.contains("shardId-000000000002") && held.contains("shardId-000000000003")
    })
    .await;
    assert!(children_held, "{}", worker.dump());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while browser.count("#keyspace rect.unowned").unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the children are still drawn without an owner"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    browser
        .wait_for(
            "#keyspace-legend",
            "worker-a",
            false,
            Duration::from_secs(20),
        )
        .expect("the owner's colour in the legend");
    if let Some(dir) = std::env::var_os("SCREENSHOT_DIR") {
        browser
            .screenshot(&Path::new(&dir).join("consumer-page.png"))
            .expect("screenshot");
    }
}
