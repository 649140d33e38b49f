//! The consumer binary (polling mode) with the producer binary, against kinesis-mock: every
//! message reported sent is read exactly once, resharding loses nothing and reads parents
//! before children, malformed records are skipped with a warning, and the process stops
//! cleanly on SIGTERM or refuses a bad setting.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kinesis_common::message::DataMessage;
use testkit::{field, FaultProxy, Kind, Rule, ServiceProcess};

fn consumer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_consumer"))
}

fn producer_bin() -> PathBuf {
    testkit::sibling_binary(env!("CARGO_BIN_EXE_consumer"), "producer")
}

fn consumer(endpoint: &str, stream: &str) -> ServiceProcess {
    ServiceProcess::spawn(
        consumer_bin(),
        &testkit::env_with(
            endpoint,
            stream,
            &[
                ("CONSUMER_POLL_INTERVAL_MS", "200"),
                ("CONSUMER_SHARD_SYNC_MS", "1000"),
            ],
        ),
    )
}

fn ids(process: &ServiceProcess, message: &str) -> Vec<String> {
    field(&process.events(message), "id")
}

/// Stops the consumer with SIGTERM, checking it exits 0 within 5 seconds.
fn stop(mut process: ServiceProcess) -> ServiceProcess {
    process.stop();
    process
}

#[tokio::test]
async fn every_message_sent_to_a_two_shard_stream_is_read_exactly_once() {
    let emu = testkit::shared(Kind::KinesisMock);
    let stream = testkit::unique_name("e2e");
    testkit::create_stream(&emu.kinesis(), &stream, 2).await;

    let reader = consumer(&emu.endpoint(), &stream);
    let mut producer = ServiceProcess::spawn(
        &producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[("PRODUCER_COUNT", "40"), ("PRODUCER_INTERVAL_MS", "0")],
        ),
    );
    producer.expect_exit(Duration::from_secs(60), 0);
    let sent: HashSet<String> = ids(&producer, "record sent").into_iter().collect();
    assert_eq!(sent.len(), 40);

    let all_read = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all_read, "{}", reader.dump());
    let reader = stop(reader);
    let received = ids(&reader, "record received");
    assert_eq!(
        received.len(),
        sent.len(),
        "a message was read twice: {}",
        reader.dump()
    );
    let shards: HashSet<_> = field(&reader.events("record received"), "shard_id")
        .into_iter()
        .collect();
    assert_eq!(shards.len(), 2, "both shards were read");
    // Each record carries what the producer logged for it.
    testkit::assert_received_as_sent(&producer, &reader);
    for e in reader.events("record received") {
        assert!(e["created_on"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}

#[tokio::test]
async fn a_shard_split_mid_run_loses_nothing_and_reads_the_parent_before_its_children() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("split");
    let parent = testkit::create_single_shard_stream(&client, &stream).await;

    let reader = consumer(&emu.endpoint(), &stream);
    let mut producer = ServiceProcess::spawn(
        &producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[("PRODUCER_COUNT", "60"), ("PRODUCER_INTERVAL_MS", "50")],
        ),
    );
    let some_read = testkit::eventually(Duration::from_secs(60), || {
        ids(&reader, "record received").len() >= 15
    })
    .await;
    assert!(some_read, "{}", reader.dump());
    testkit::split_in_half(&client, &stream, &parent).await;

    producer.expect_exit(Duration::from_secs(90), 0);
    let sent: HashSet<String> = ids(&producer, "record sent").into_iter().collect();
    assert_eq!(sent.len(), 60);
    let written_to_children = field(&producer.events("record sent"), "shard_id")
        .iter()
        .filter(|s| **s != parent)
        .count();
    assert!(
        written_to_children > 0,
        "the producer wrote to the children after the split"
    );

    let all_read = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all_read, "{}", reader.dump());
    let reader = stop(reader);
    let events = reader.events("record received");
    assert_eq!(events.len(), 60, "no duplicates: {}", reader.dump());
    let shard_of: Vec<String> = field(&events, "shard_id");
    let last_parent = shard_of
        .iter()
        .rposition(|s| *s == parent)
        .expect("parent records read");
    let first_child = shard_of
        .iter()
        .position(|s| *s != parent)
        .expect("child records read");
    assert!(
        last_parent < first_child,
        "a child record was read before the parent's last record: {shard_of:?}"
    );
    assert!(!reader.events("shard ended").is_empty());
}

#[tokio::test]
async fn a_malformed_record_is_skipped_with_a_warning_and_later_records_still_arrive() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("malformed");
    testkit::create_stream(&client, &stream, 1).await;
    let bad = testkit::put_record(&client, &stream, "k", b"this is not json".to_vec()).await;
    let good_message = kinesis_common::message::DataMessage::new();
    testkit::put_record(&client, &stream, "k", good_message.to_json()).await;

    let reader = consumer(&emu.endpoint(), &stream);
    let good_id = good_message.id.to_string();
    let arrived = testkit::eventually(Duration::from_secs(60), || {
        ids(&reader, "record received").contains(&good_id)
    })
    .await;
    assert!(arrived, "{}", reader.dump());
    let warnings = reader.events("malformed record skipped");
    assert_eq!(warnings.len(), 1, "{}", reader.dump());
    assert_eq!(warnings[0]["level"], "WARN");
    assert_eq!(warnings[0]["shard_id"].as_str(), Some(bad.shard_id()));
    assert_eq!(
        warnings[0]["sequence_number"].as_str(),
        Some(bad.sequence_number())
    );
    stop(reader);
}

#[tokio::test]
async fn latest_skips_what_was_written_before_the_consumer_started() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("latest");
    testkit::create_stream(&client, &stream, 1).await;
    let old = kinesis_common::message::DataMessage::new();
    testkit::put_record(&client, &stream, "k", old.to_json()).await;

    let reader = ServiceProcess::spawn(
        consumer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("CONSUMER_INITIAL_POSITION", "LATEST"),
                ("CONSUMER_POLL_INTERVAL_MS", "200"),
            ],
        ),
    );
    let reading = testkit::eventually(Duration::from_secs(60), || {
        !reader.events("reading shard").is_empty()
    })
    .await;
    assert!(reading, "{}", reader.dump());
    let new = kinesis_common::message::DataMessage::new();
    let new_id = new.id.to_string();
    let wrote = async {
        // Keep writing the same message until it shows up: LATEST starts wherever the iterator
        // was taken, which the test cannot observe directly.
        for _ in 0..100 {
            testkit::put_record(&client, &stream, "k", new.to_json()).await;
            if testkit::eventually(Duration::from_secs(1), || {
                ids(&reader, "record received").contains(&new_id)
            })
            .await
            {
                return true;
            }
        }
        false
    }
    .await;
    assert!(wrote, "{}", reader.dump());
    let reader = stop(reader);
    assert!(
        !ids(&reader, "record received").contains(&old.id.to_string()),
        "LATEST read an old record"
    );
}

#[test]
fn a_bad_setting_ends_the_consumer_with_one_line_naming_it() {
    for (var, value) in [
        ("CONSUMER_INITIAL_POSITION", "BEGINNING"),
        ("CONSUMER_RETRIEVAL", "push"),
        ("CONSUMER_ON_FAILURE", "stream:bad name"),
    ] {
        let mut env = testkit::service_env("http://127.0.0.1:9", "s");
        env.push((var.into(), value.into()));
        let mut process = ServiceProcess::spawn(consumer_bin(), &env);
        let status = process
            .wait_exit(Duration::from_secs(10))
            .expect("exits at once");
        assert_eq!(status.code(), Some(2), "{var}");
        let err = process.stderr_lines();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(err[0].contains(var) && err[0].contains(value), "{err:?}");
    }
}

#[tokio::test]
async fn sigterm_while_waiting_for_the_stream_exits_0_within_5_seconds() {
    let emu = testkit::shared(Kind::KinesisMock);
    let process = ServiceProcess::spawn(
        consumer_bin(),
        &testkit::env_with(&emu.endpoint(), &testkit::unique_name("absent"), &[]),
    );
    let waiting = testkit::eventually(Duration::from_secs(30), || {
        !process
            .events("waiting for stream to become ACTIVE")
            .is_empty()
    })
    .await;
    assert!(waiting, "{}", process.dump());
    stop(process);
}

#[test]
fn a_setting_that_is_not_utf8_ends_the_consumer_with_one_line_naming_it() {
    let (code, stderr) = testkit::run_with_non_utf8_var(consumer_bin(), "CONSUMER_MODE");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CONSUMER_MODE") && stderr.contains("not valid UTF-8"),
        "{stderr}"
    );
}

/// The stream is deleted while the consumer reads it: the consumer cannot do anything useful
/// any more, so it says so once and exits 1 (an orchestrator restarts it, and it then waits for
/// the stream as at any start) instead of retrying in a loop.
#[tokio::test]
async fn a_stream_deleted_under_the_consumer_ends_it_with_one_error_line_and_exit_1() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("deleted");
    testkit::create_stream(&client, &stream, 1).await;
    let mut reader = consumer(&emu.endpoint(), &stream);
    let message = DataMessage::new();
    testkit::put_record(&client, &stream, "k", message.to_json()).await;
    let read = testkit::eventually(Duration::from_secs(60), || {
        ids(&reader, "record received").contains(&message.id.to_string())
    })
    .await;
    assert!(read, "{}", reader.dump());

    let lines_before = reader.lines().len();
    client
        .delete_stream()
        .stream_name(&stream)
        .send()
        .await
        .expect("DeleteStream");
    let status = reader.wait_exit(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{}", reader.dump());
    let after: Vec<String> = reader.lines()[lines_before..].to_vec();
    let errors: Vec<&String> = after.iter().filter(|l| l.contains("\"ERROR\"")).collect();
    assert_eq!(errors.len(), 1, "{}", reader.dump());
    assert!(
        errors[0].contains(&stream) && errors[0].contains("consumer failed"),
        "{}",
        errors[0]
    );
    assert!(
        after.len() <= 10,
        "{} lines after the deletion: {}",
        after.len(),
        reader.dump()
    );
}

/// From `LATEST`, shards that were closed before the consumer started hold only history: they
/// are not read, neither at start nor when a later shard sync lists them again.
#[tokio::test]
async fn latest_does_not_read_shards_closed_before_the_start() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("latest-split");
    let parent = testkit::create_single_shard_stream(&client, &stream).await;
    let mut old = HashSet::new();
    for i in 0..10 {
        let m = DataMessage::new();
        testkit::put_record(&client, &stream, &format!("k{i}"), m.to_json()).await;
        old.insert(m.id.to_string());
    }
    testkit::split_in_half(&client, &stream, &parent).await;
    let children: Vec<(String, (u128, u128))> =
        kinesis_common::kinesis::list_shards(&client, &stream)
            .await
            .unwrap()
            .iter()
            .filter(|s| s.parent_shard_id() == Some(parent.as_str()))
            .map(|s| {
                (
                    s.shard_id().to_string(),
                    kinesis_common::kinesis::hash_range(s).unwrap(),
                )
            })
            .collect();
    assert_eq!(children.len(), 2);

    let reader = ServiceProcess::spawn(
        consumer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("CONSUMER_INITIAL_POSITION", "LATEST"),
                ("CONSUMER_POLL_INTERVAL_MS", "200"),
                ("CONSUMER_SHARD_SYNC_MS", "500"),
            ],
        ),
    );
    let reading = testkit::eventually(Duration::from_secs(60), || {
        field(&reader.events("reading shard"), "shard_id").len() == 2
    })
    .await;
    assert!(reading, "{}", reader.dump());
    // New shards the consumer can only learn from a shard listing: once it reads them, a
    // listing has shown it the old parent too.
    let (child, (start, end)) = &children[0];
    client
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(child)
        .new_starting_hash_key((start + (end - start) / 2 + 1).to_string())
        .send()
        .await
        .expect("SplitShard");
    let synced = testkit::eventually(Duration::from_secs(30), || {
        reader.events("reading shard").len() >= 4
    })
    .await;
    assert!(synced, "{}", reader.dump());
    // Written until it shows up: LATEST starts wherever the iterator was taken.
    let new = DataMessage::new();
    let mut arrived = false;
    for _ in 0..60 {
        testkit::put_record(&client, &stream, "new", new.to_json()).await;
        if testkit::eventually(Duration::from_secs(1), || {
            ids(&reader, "record received").contains(&new.id.to_string())
        })
        .await
        {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "{}", reader.dump());
    let reader = stop(reader);
    let replayed: Vec<String> = ids(&reader, "record received")
        .into_iter()
        .filter(|id| old.contains(id))
        .collect();
    assert!(
        replayed.is_empty(),
        "{} old records read: {}",
        replayed.len(),
        reader.dump()
    );
    assert!(
        !field(&reader.events("reading shard"), "shard_id").contains(&parent),
        "{}",
        reader.dump()
    );
}

/// One `AccessDeniedException` on `GetRecords` after 50 records: the reader backs off and
/// resumes after the last record it read, so nothing is delivered twice.
#[tokio::test]
async fn an_error_on_get_records_resumes_after_the_last_record_read_with_backoff() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let proxy = FaultProxy::start(&emu.endpoint());
    let stream = testkit::unique_name("denied");
    testkit::create_stream(&client, &stream, 1).await;
    let reader = consumer(&proxy.endpoint(), &stream);
    let mut sent = HashSet::new();
    for i in 0..50 {
        let m = DataMessage::new();
        testkit::put_record(&client, &stream, &format!("k{i}"), m.to_json()).await;
        sent.insert(m.id.to_string());
    }
    let first = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(first, "{}", reader.dump());

    proxy.set(vec![Rule::error(400, Some("AccessDeniedException"))
        .only(&["GetRecords"])
        .times(1)]);
    let denied =
        testkit::eventually(Duration::from_secs(30), || proxy.faults("GetRecords") == 1).await;
    assert!(denied, "{}", reader.dump());
    for i in 0..10 {
        let m = DataMessage::new();
        testkit::put_record(&client, &stream, &format!("later{i}"), m.to_json()).await;
        sent.insert(m.id.to_string());
    }
    let all = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all, "{}", reader.dump());
    let reader = stop(reader);
    assert_eq!(
        ids(&reader, "record received").len(),
        60,
        "records delivered twice: {}",
        reader.dump()
    );
    let retried: Vec<_> = reader
        .lines()
        .into_iter()
        .filter(|l| l.contains("AccessDeniedException"))
        .collect();
    assert_eq!(retried.len(), 1, "{}", reader.dump());
    let event: serde_json::Value = serde_json::from_str(&retried[0]).unwrap();
    // Access denied needs someone to act: the retry waits at least a second.
    assert!(
        event["retry_in_ms"].as_u64().is_some_and(|ms| ms >= 1000),
        "{event}"
    );
}

/// Kinesis accepts the calls and never answers: SIGTERM still ends the consumer within 5 s,
/// whatever the call timeouts are.
#[tokio::test]
async fn sigterm_exits_within_5_seconds_while_kinesis_hangs() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let proxy = FaultProxy::start(&emu.endpoint());
    let stream = testkit::unique_name("hang");
    testkit::create_stream(&client, &stream, 2).await;
    let reader = ServiceProcess::spawn(
        consumer_bin(),
        &testkit::env_with(
            &proxy.endpoint(),
            &stream,
            &[
                ("CONSUMER_POLL_INTERVAL_MS", "200"),
                ("KINESIS_ATTEMPT_TIMEOUT_MS", "30000"),
                ("KINESIS_CALL_TIMEOUT_MS", "30000"),
            ],
        ),
    );
    // Both shard readers have their iterators and are polling: from now on each one's next
    // call is a GetRecords.
    let reading = testkit::eventually(Duration::from_secs(60), || {
        reader.events("reading shard").len() == 2 && proxy.requests("GetRecords") >= 4
    })
    .await;
    assert!(reading, "{}", reader.dump());
    proxy.set(vec![Rule::hang()]);
    // Every reader is inside a call that will not be answered for 30 s (a GetRecords, or a
    // GetShardIterator if a reader renews its iterator meanwhile).
    let hanging = testkit::eventually(Duration::from_secs(30), || {
        proxy.faults("GetRecords") + proxy.faults("GetShardIterator") >= 2
    })
    .await;
    assert!(hanging, "{}", reader.dump());
    stop(reader);
}
