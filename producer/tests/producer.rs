//! The producer binary against kinesis-mock: what it reports sent is on the stream, it stops
//! cleanly on SIGTERM, and bad settings or a missing stream end it with a clear error.

use std::path::Path;
use std::time::Duration;

use testkit::{field, Kind, ServiceProcess};

fn producer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_producer"))
}

#[tokio::test]
async fn every_record_reported_sent_is_on_the_stream_with_that_sequence_number() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("producer-sent");
    testkit::create_stream(&client, &stream, 2).await;

    let mut producer = ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[("PRODUCER_COUNT", "30"), ("PRODUCER_INTERVAL_MS", "0")],
        ),
    );
    producer.expect_exit(Duration::from_secs(60), 0);

    let sent = producer.events("record sent");
    assert_eq!(sent.len(), 30, "{}", producer.dump());
    let stored = testkit::stored_once(&client, &stream).await;
    assert_eq!(stored.len(), 30);
    for event in &sent {
        let id = event["id"].as_str().unwrap();
        let (shard, seq) = stored
            .get(id)
            .unwrap_or_else(|| panic!("{id} reported sent but not on the stream"));
        assert_eq!(event["shard_id"].as_str(), Some(shard.as_str()));
        assert_eq!(event["sequence_number"].as_str(), Some(seq.as_str()));
    }
    let shards: std::collections::HashSet<_> = field(&sent, "shard_id").into_iter().collect();
    assert_eq!(shards.len(), 2, "random Ids spread over both shards");
}

#[tokio::test]
async fn fixed_partition_key_puts_every_message_on_one_shard() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("producer-key");
    testkit::create_stream(&client, &stream, 4).await;
    let mut producer = ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("PRODUCER_COUNT", "12"),
                ("PRODUCER_INTERVAL_MS", "10"),
                ("PRODUCER_PARTITION_KEY", "tenant-7"),
            ],
        ),
    );
    producer.expect_exit(Duration::from_secs(60), 0);
    let shards: std::collections::HashSet<_> = field(&producer.events("record sent"), "shard_id")
        .into_iter()
        .collect();
    assert_eq!(shards.len(), 1, "{}", producer.dump());
}

#[tokio::test]
async fn sigterm_stops_the_producer_with_exit_0_within_5_seconds() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-term");
    testkit::create_stream(&emu.kinesis(), &stream, 1).await;
    let mut producer = ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(&emu.endpoint(), &stream, &[("PRODUCER_INTERVAL_MS", "50")]),
    );
    let started = testkit::eventually(Duration::from_secs(60), || {
        !producer.events("record sent").is_empty()
    })
    .await;
    assert!(started, "{}", producer.dump());
    producer.stop();
    assert!(
        !producer.events("producer stopped").is_empty(),
        "{}",
        producer.dump()
    );
}

#[test]
fn a_bad_setting_ends_the_producer_with_one_line_naming_it() {
    let mut env = testkit::service_env("http://127.0.0.1:9", "s");
    env.push(("PRODUCER_INTERVAL_MS".into(), "soon".into()));
    let mut producer = ServiceProcess::spawn(producer_bin(), &env);
    let status = producer
        .wait_exit(Duration::from_secs(10))
        .expect("exits at once");
    assert_eq!(status.code(), Some(2));
    let err = producer.stderr_lines();
    assert_eq!(err.len(), 1, "{err:?}");
    assert!(
        err[0].contains("PRODUCER_INTERVAL_MS") && err[0].contains("\"soon\""),
        "{err:?}"
    );
}

#[test]
fn a_setting_that_is_not_utf8_ends_the_producer_with_one_line_naming_it() {
    let (code, stderr) = testkit::run_with_non_utf8_var(producer_bin(), "STREAM_NAME");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("STREAM_NAME") && stderr.contains("not valid UTF-8"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_stream_that_never_appears_ends_the_producer_with_a_clear_error() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("never-created");
    let mut producer = ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[("STREAM_WAIT_TIMEOUT_MS", "1500")],
        ),
    );
    let status = producer
        .wait_exit(Duration::from_secs(30))
        .expect("gives up");
    assert_eq!(status.code(), Some(1), "{}", producer.dump());
    let failure = producer.events("producer failed");
    assert_eq!(failure.len(), 1, "{}", producer.dump());
    let error = failure[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&stream) && error.contains("did not become ACTIVE"),
        "{error}"
    );
}

/// The limiter controls when records reach Kinesis, so that is what is measured: the arrival
/// time Kinesis stamps on each record (not when the producer logged the acknowledgement, which
/// lags the first call by its duration). Load on the machine can only delay records, so the
/// lower bound on the spread and the upper bound on what arrived early both keep their margin.
#[tokio::test]
async fn the_shard_rate_limit_spreads_a_burst_over_time() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("producer-rate");
    testkit::create_stream(&emu.kinesis(), &stream, 1).await;
    // 1% of 1,000 records a second: 10 at once (one second's burst), then 10 a second, so the
    // 30 records beyond the burst need 3 s. Without the limiter all 40 arrive within a few
    // hundred milliseconds.
    const RATE: f64 = 10.0;
    const BURST: f64 = 10.0;
    let mut producer = ServiceProcess::spawn(
        producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("PRODUCER_COUNT", "40"),
                ("PRODUCER_INTERVAL_MS", "0"),
                ("PRODUCER_SHARD_RATE_LIMIT", "1"),
            ],
        ),
    );
    producer.expect_exit(Duration::from_secs(60), 0);
    let mut arrivals: Vec<f64> = testkit::read_stream(&emu.kinesis(), &stream)
        .await
        .iter()
        .map(|(_, r)| {
            let t = r.approximate_arrival_timestamp().expect("arrival time");
            t.secs() as f64 + f64::from(t.subsec_nanos()) / 1e9
        })
        .collect();
    assert_eq!(arrivals.len(), 40, "{}", producer.dump());
    arrivals.sort_by(f64::total_cmp);
    let first = arrivals[0];
    let spread = arrivals[39] - first;
    assert!(
        spread >= 2.0,
        "40 records reached Kinesis within {spread:.3} s; the limit needs 3 s"
    );
    // Never more than the burst plus the rate allows, with one second's worth of slack for the
    // time the first call itself took.
    for (i, t) in arrivals.iter().enumerate() {
        let allowed = BURST + RATE * (t - first + 1.0);
        assert!(
            (i + 1) as f64 <= allowed,
            "{} records had arrived {:.3} s after the first; at most {allowed:.0} allowed",
            i + 1,
            t - first
        );
    }
}
