//! The producer's HTTP server (`HTTP_ADDR`): health, readiness, metrics that agree with its
//! logs, the status document and page, and the `healthcheck` subcommand.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::{http_get, metric_value, FaultProxy, Kind, Rule, ServiceProcess};

fn producer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_producer"))
}

fn get(addr: &str, path: &str) -> (u16, String) {
    http_get(addr, path).unwrap_or_else(|| panic!("nothing answered GET {path} on {addr}"))
}

#[tokio::test]
async fn health_readiness_metrics_and_status_tell_what_the_producer_does() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-http");
    let proxy = FaultProxy::start(&emu.endpoint());
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let env = testkit::env_with(
        &proxy.endpoint(),
        &stream,
        &[
            ("HTTP_ADDR", &addr),
            ("PRODUCER_INTERVAL_MS", "100"),
            ("STREAM_WAIT_TIMEOUT_MS", "60000"),
            ("AWS_MAX_ATTEMPTS", "1"),
        ],
    );
    let mut producer = ServiceProcess::spawn(producer_bin(), &env);

    // Alive at once, not ready while the stream does not exist, and says why.
    let up = testkit::eventually(Duration::from_secs(30), || {
        http_get(&addr, "/healthz").is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert!(up, "{}", producer.dump());
    let (status, reason) = get(&addr, "/readyz");
    assert_eq!(status, 503);
    assert!(reason.contains(&stream), "{reason}");
    let healthcheck = Command::new(producer_bin())
        .arg("healthcheck")
        .env_clear()
        .env("HTTP_ADDR", &addr)
        .status()
        .expect("run healthcheck");
    assert!(healthcheck.success());

    testkit::create_stream(&emu.kinesis(), &stream, 2).await;
    let ready = testkit::eventually(Duration::from_secs(30), || {
        get(&addr, "/readyz").0 == 200 && producer.events("record sent").len() >= 10
    })
    .await;
    assert!(ready, "{}", producer.dump());

    // Some records rejected for good: counted by error code, as logged.
    proxy.set(vec![Rule::error(400, Some("ValidationException"))
        .only(&["PutRecords"])
        .times(3)]);
    let rejected = testkit::eventually(Duration::from_secs(30), || {
        producer.events("record not sent").len() >= 3
    })
    .await;
    assert!(rejected, "{}", producer.dump());

    // Counters agree with the log lines: wait for a moment between two records.
    let put = format!("kinesis_producer_user_records_put_total{{stream=\"{stream}\"}}");
    let failed = format!(
        "kinesis_producer_user_records_failed_total{{stream=\"{stream}\",error_code=\"ValidationException\"}}"
    );
    let agree = testkit::eventually(Duration::from_secs(30), || {
        let logged = producer.events("record sent").len() as f64;
        let metrics = get(&addr, "/metrics").1;
        let logged_after = producer.events("record sent").len() as f64;
        metric_value(&metrics, &put).is_some_and(|m| m == logged && m == logged_after)
            && metric_value(&metrics, &failed)
                == Some(producer.events("record not sent").len() as f64)
    })
    .await;
    let metrics = get(&addr, "/metrics").1;
    assert!(agree, "{metrics}\n{}", producer.dump());
    for name in [
        "kinesis_producer_kinesis_records_put_total",
        "kinesis_producer_retries_total",
        "kinesis_producer_buffered_records",
        "kinesis_producer_in_flight_calls",
        "kinesis_producer_buffering_seconds_bucket",
        "kinesis_producer_put_records_seconds_bucket",
        "kinesis_producer_user_records_per_kinesis_record_bucket",
        "kinesis_producer_shard_records_put_total",
        "kinesis_producer_shard_bytes_put_total",
        "kinesis_producer_shard_throttles_total",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(name) && l.contains(&stream)),
            "{name} missing:\n{metrics}"
        );
    }

    let (status, body) = get(&addr, "/status");
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(doc["stream"], stream.as_str());
    assert_eq!(doc["ready"], true);
    assert!(doc["acknowledged"].as_u64() >= Some(10), "{doc}");
    // Three calls were rejected, each with one or more records.
    let not_sent = producer.events("record not sent").len();
    assert!(not_sent >= 3);
    assert_eq!(doc["failed"].as_u64(), Some(not_sent as u64), "{doc}");
    let errors = doc["recent_errors"].as_array().expect("errors");
    assert_eq!(errors.len(), not_sent.min(20), "{doc}");
    assert!(errors[0]["error"]
        .as_str()
        .is_some_and(|e| e.contains("ValidationException")));
    let (status, page) = get(&addr, "/");
    assert_eq!(status, 200);
    assert!(page.contains("Kinesis producer") && page.contains("fetch(\"status\""));

    producer.stop();
    // Nothing answers once it stopped, and the healthcheck says so.
    assert!(http_get(&addr, "/healthz").is_none());
    let healthcheck = Command::new(producer_bin())
        .arg("healthcheck")
        .env_clear()
        .env("HTTP_ADDR", &addr)
        .output()
        .expect("run healthcheck");
    assert_eq!(healthcheck.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&healthcheck.stderr).contains(&addr));
}

#[test]
fn a_bad_http_addr_ends_the_producer_with_one_line_naming_it() {
    let mut env = testkit::service_env("http://127.0.0.1:9", "s");
    env.push(("HTTP_ADDR".into(), "localhost".into()));
    let mut producer = ServiceProcess::spawn(producer_bin(), &env);
    let status = producer.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(2));
    let err = producer.stderr_lines();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(err[0].contains("HTTP_ADDR"), "{err:?}");
}

#[test]
fn healthcheck_without_http_addr_says_there_is_nothing_to_ask() {
    let out = Command::new(producer_bin())
        .arg("healthcheck")
        .env_clear()
        .output()
        .expect("run healthcheck");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP_ADDR is not set"));
}

/// The page itself, in a real headless browser: it shows the stream, its numbers and charts move
/// without a reload, the shard one partition key makes hot is marked as the hottest against its
/// write limit with that key, and throttles and retries show on that shard when the proxy
/// throttles `PutRecords`.
#[tokio::test]
async fn the_status_page_shows_the_hot_shard_its_key_and_its_throttles_live_in_a_browser() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-page");
    testkit::create_stream(&emu.kinesis(), &stream, 2).await;
    // The shard "hot-key" hashes to, and the other one.
    let shards = kinesis_common::kinesis::list_shards(&emu.kinesis(), &stream)
        .await
        .expect("list shards");
    let hash = kinesis_common::kpl::effective_hash_key("hot-key", None);
    let (hot, cold): (Vec<_>, Vec<_>) = shards.iter().partition(|s| {
        kinesis_common::kinesis::hash_range(s).is_some_and(|(a, b)| (a..=b).contains(&hash))
    });
    let (hot, cold) = (
        hot[0].shard_id().to_string(),
        cold[0].shard_id().to_string(),
    );
    let proxy = FaultProxy::start(&emu.endpoint());
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let mut producer = ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(
            &proxy.endpoint(),
            &stream,
            &[
                ("HTTP_ADDR", &addr),
                ("PRODUCER_INTERVAL_MS", "100"),
                ("PRODUCER_MESSAGES_PER_TICK", "20"),
                ("PRODUCER_PARTITION_KEY", "hot-key"),
                // Throttled calls reach the producer's own retries (and its counts), not the
                // SDK's.
                ("AWS_MAX_ATTEMPTS", "1"),
            ],
        ),
    );
    let ready = testkit::eventually(Duration::from_secs(30), || {
        http_get(&addr, "/readyz").is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert!(ready, "{}", producer.dump());
    let mut browser = testkit::Browser::start();
    browser
        .goto(&format!("http://{addr}/"))
        .expect("page loads");
    browser
        .wait_for("#stream", &stream, false, Duration::from_secs(20))
        .expect("the page names the stream");
    browser
        .wait_for("#state", "ready", false, Duration::from_secs(20))
        .expect("ready");
    let first: u64 = browser.text("#acknowledged").unwrap().parse().unwrap_or(0);
    // It refreshes itself: the count moves without a reload.
    let later = first + 5;
    let moved = testkit::eventually(Duration::from_secs(30), || {
        browser
            .text("#acknowledged")
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|n| n >= later)
    })
    .await;
    assert!(moved, "the acknowledged count stayed at {first}");

    // The hot shard is marked, against its limit, with the key that makes it hot; the other
    // shard is listed, idle.
    browser
        .wait_for("#hottest", &hot, false, Duration::from_secs(30))
        .expect("the hot shard is named the hottest");
    let hot_row = format!("#shards tr[data-shard=\"{hot}\"]");
    let cold_row = format!("#shards tr[data-shard=\"{cold}\"]");
    browser
        .wait_for(
            &format!("{hot_row} .keys"),
            "hot-key",
            false,
            Duration::from_secs(30),
        )
        .expect("the hot shard names its partition key");
    assert_eq!(
        browser.attr(&hot_row, "class").unwrap().as_deref(),
        Some("hot")
    );
    let number = |t: String| {
        t.trim()
            .trim_end_matches('%')
            .trim()
            .parse::<f64>()
            .unwrap()
    };
    // The rate read before and after the share, in case the page refreshed in between.
    let rps = number(browser.text(&format!("{hot_row} .rps")).unwrap());
    let pct = number(browser.text(&format!("{hot_row} .pct")).unwrap());
    let rps_after = number(browser.text(&format!("{hot_row} .rps")).unwrap());
    assert!(rps > 0.0, "hot shard at {rps} records/s");
    // The share of the limit is the rate against 1,000 records a second (the records are
    // small: the byte limit is further away).
    let (low, high) = (rps.min(rps_after) / 10.0, rps.max(rps_after) / 10.0);
    assert!(
        (low - 1.0..=high + 1.0).contains(&pct),
        "{pct} % of the limit for {rps} then {rps_after} records/s"
    );
    assert_eq!(browser.text(&format!("{cold_row} .rps")).unwrap(), "0");
    assert_eq!(browser.text(&format!("{cold_row} .keys")).unwrap(), "");

    // The charts move without a reload: a point every 5 s.
    let points = |browser: &mut testkit::Browser| {
        browser
            .attr("#acknowledged-line", "points")
            .ok()
            .flatten()
            .map_or(0, |p| p.split_whitespace().count())
    };
    let before = points(&mut browser);
    let grew = testkit::eventually(Duration::from_secs(40), || {
        points(&mut browser) >= before + 2
    })
    .await;
    assert!(grew, "the chart did not move from {before} points");

    // Entries throttled one by one, then whole calls: counted on the hot shard, retried.
    proxy.set(vec![Rule::fail_entries(
        "ProvisionedThroughputExceededException",
    )
    .fraction(0.5)
    .times(10)]);
    let throttled = |browser: &mut testkit::Browser| {
        browser
            .text(&format!("{hot_row} .throttles"))
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let shown = testkit::eventually(Duration::from_secs(30), || throttled(&mut browser) > 0).await;
    assert!(shown, "no throttle shown on {hot}\n{}", producer.dump());
    let entries_throttled = throttled(&mut browser);
    proxy.set(vec![Rule::throttle().only(&["PutRecords"]).times(3)]);
    let shown = testkit::eventually(Duration::from_secs(30), || {
        throttled(&mut browser) > entries_throttled
    })
    .await;
    assert!(
        shown,
        "whole calls throttled not shown\n{}",
        producer.dump()
    );
    let retries: u64 = browser
        .text(&format!("{hot_row} .retries"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(retries >= throttled(&mut browser), "{retries} retries");
    assert_eq!(
        browser.text(&format!("{cold_row} .throttles")).unwrap(),
        "0"
    );
    // Prometheus counts them on that shard too.
    let metrics = get(&addr, "/metrics").1;
    let on = |shard: &str| {
        metric_value(
            &metrics,
            &format!(
                "kinesis_producer_shard_throttles_total{{stream=\"{stream}\",shard_id=\"{shard}\"}}"
            ),
        )
    };
    assert!(on(&hot) >= Some(1.0), "{metrics}");
    assert_eq!(on(&cold), Some(0.0), "{metrics}");
    // And a few records not sent, for the chart of failures.
    proxy.set(vec![Rule::error(400, Some("ValidationException"))
        .only(&["PutRecords"])
        .times(2)]);
    // The charts' last points show the throttles and the failures.
    let charted = testkit::eventually(Duration::from_secs(30), || {
        http_get(&addr, "/status")
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|doc| doc["history"].as_array().cloned())
            .is_some_and(|h| {
                h.iter().any(|p| p["throttles"].as_f64() > Some(0.0))
                    && h.iter().any(|p| p["failed"].as_f64() > Some(0.0))
            })
    })
    .await;
    assert!(charted, "{}", producer.dump());
    let drawn = testkit::eventually(Duration::from_secs(20), || {
        browser
            .attr("#throttles-line", "points")
            .ok()
            .flatten()
            .is_some_and(|p| p.split_whitespace().any(|xy| !xy.ends_with(",162.0")))
    })
    .await;
    assert!(drawn, "the throttles line stayed on zero");
    if let Some(path) = std::env::var_os("SCREENSHOT_DIR") {
        browser
            .screenshot(&Path::new(&path).join("producer-page.png"))
            .expect("screenshot");
    }
    producer.stop();
}
