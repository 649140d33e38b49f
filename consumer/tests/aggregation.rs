//! KPL aggregation across implementations, against kinesis-mock: records aggregated by the
//! official `aws-kinesis-agg` library are read back one by one by the consumer binary, and
//! records the producer binary aggregates are unpacked by the official library; end to end,
//! aggregated messages survive a shard split.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::message::DataMessage;
use common::testkit::{self, field, Kind, ServiceProcess};
use serde_json::{json, Value};

fn consumer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_consumer"))
}

fn producer_bin() -> PathBuf {
    testkit::sibling_binary(env!("CARGO_BIN_EXE_consumer"), "producer")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

/// Runs the official library through tests/support/kpl_interop.js.
fn official(mode: &str, input: &Value) -> Value {
    testkit::emulators_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/kpl_interop.js");
    let mut child = Command::new("node")
        .arg(script)
        .arg(mode)
        .env("EMULATORS_MODULES", testkit::emulators_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from kpl_interop.js")
}

#[tokio::test]
async fn records_aggregated_by_the_official_library_are_read_one_by_one() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("agg-in");
    testkit::create_stream(&client, &stream, 1).await;

    let messages: Vec<DataMessage> = (0..20).map(|_| DataMessage::new()).collect();
    let input: Vec<Value> = messages
        .iter()
        .map(|m| json!({"partitionKey": m.id.to_string(), "data": b64(&m.to_json())}))
        .collect();
    let aggregated = official("aggregate", &Value::from(input));
    let data = unb64(aggregated["data"].as_str().unwrap());
    assert!(data.starts_with(&common::kpl::MAGIC));
    let put = testkit::put_record(
        &client,
        &stream,
        aggregated["partitionKey"].as_str().unwrap(),
        data,
    )
    .await;

    let reader = ServiceProcess::spawn(
        consumer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[("CONSUMER_POLL_INTERVAL_MS", "200")],
        ),
    );
    let all = testkit::eventually(Duration::from_secs(60), || {
        reader.events("record received").len() >= 20
    })
    .await;
    assert!(all, "{}", reader.dump());
    let events = reader.events("record received");
    assert_eq!(events.len(), 20);
    for (i, (event, message)) in events.iter().zip(&messages).enumerate() {
        assert_eq!(
            event["id"].as_str(),
            Some(message.id.to_string().as_str()),
            "order kept"
        );
        assert_eq!(
            event["sequence_number"].as_str(),
            Some(put.sequence_number())
        );
        assert_eq!(event["sub_sequence_number"].as_u64(), Some(i as u64));
        assert_eq!(
            event["partition_key"].as_str(),
            Some(message.id.to_string().as_str())
        );
    }
    assert!(reader.events("malformed record skipped").is_empty());
}

#[tokio::test]
async fn records_the_producer_aggregates_are_unpacked_by_the_official_library() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("agg-out");
    testkit::create_stream(&client, &stream, 2).await;

    let mut producer = ServiceProcess::spawn(
        &producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("PRODUCER_COUNT", "200"),
                ("PRODUCER_INTERVAL_MS", "0"),
                ("PRODUCER_AGGREGATION", "true"),
            ],
        ),
    );
    producer.expect_exit(Duration::from_secs(60), 0);
    let sent = producer.events("record sent");
    assert_eq!(sent.len(), 200);
    // A shard's last record of a flush may go alone (as the KPL sends a lone record): the rest
    // are aggregated.
    let aggregated = sent
        .iter()
        .filter(|e| e["sub_sequence_number"].is_u64())
        .count();
    assert!(
        aggregated >= 190,
        "only {aggregated} of 200 records were aggregated"
    );

    let stored = testkit::read_stream(&client, &stream).await;
    assert!(
        stored.len() < 20,
        "200 messages packed into {} Kinesis records",
        stored.len()
    );
    let input: Vec<Value> = stored
        .iter()
        .map(|(_, r)| {
            json!({
                "partitionKey": r.partition_key().unwrap_or_default(),
                "sequenceNumber": r.sequence_number(),
                "data": b64(r.data().as_ref()),
            })
        })
        .collect();
    let users = official("deaggregate", &Value::from(input));
    let users = users.as_array().unwrap();
    assert_eq!(users.len(), 200);
    let unpacked: HashSet<String> = users
        .iter()
        .map(|u| {
            let m =
                DataMessage::from_json(&unb64(u["data"].as_str().unwrap())).expect("a DataMessage");
            assert_eq!(
                u["partitionKey"].as_str(),
                Some(m.id.to_string().as_str()),
                "partition key kept"
            );
            m.id.to_string()
        })
        .collect();
    let reported: HashSet<String> = field(&sent, "id").into_iter().collect();
    assert_eq!(unpacked, reported);
}

#[tokio::test]
async fn aggregated_messages_survive_a_split_and_are_read_exactly_once() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("agg-split");
    let parent = testkit::create_single_shard_stream(&client, &stream).await;

    let reader = ServiceProcess::spawn(
        consumer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("CONSUMER_POLL_INTERVAL_MS", "200"),
                ("CONSUMER_SHARD_SYNC_MS", "1000"),
            ],
        ),
    );
    let mut producer = ServiceProcess::spawn(
        &producer_bin(),
        &testkit::env_with(
            &emu.endpoint(),
            &stream,
            &[
                ("PRODUCER_COUNT", "400"),
                ("PRODUCER_INTERVAL_MS", "50"),
                ("PRODUCER_MESSAGES_PER_TICK", "5"),
                ("PRODUCER_AGGREGATION", "true"),
            ],
        ),
    );
    let some = testkit::eventually(Duration::from_secs(60), || {
        reader.events("record received").len() >= 50
    })
    .await;
    assert!(some, "{}", reader.dump());
    testkit::split_in_half(&client, &stream, &parent).await;
    producer.expect_exit(Duration::from_secs(120), 0);
    let sent: HashSet<String> = field(&producer.events("record sent"), "id")
        .into_iter()
        .collect();
    assert_eq!(sent.len(), 400);
    let child_shards: HashSet<String> = field(&producer.events("record sent"), "shard_id")
        .into_iter()
        .filter(|s| *s != parent)
        .collect();
    assert_eq!(
        child_shards.len(),
        2,
        "after the split the producer wrote to both children"
    );

    let all = reader
        .wait_until_received(&sent, Duration::from_secs(60))
        .await;
    assert!(all, "{}", reader.dump());
    let mut reader = reader;
    reader.stop();
    assert_eq!(reader.events("record received").len(), 400, "exactly once");
}

#[tokio::test]
async fn a_leased_restart_between_aggregates_neither_skips_nor_repeats_user_records() {
    let kinesis = testkit::shared(Kind::KinesisMock);
    let dynamo = testkit::shared(Kind::Dynalite);
    let client = kinesis.kinesis();
    let stream = testkit::unique_name("agg-restart");
    testkit::create_stream(&client, &stream, 1).await;
    let mut env =
        testkit::service_env_with_dynamo(&kinesis.endpoint(), &dynamo.endpoint(), &stream);
    env.extend(
        [
            ("CONSUMER_MODE", "leased"),
            ("CONSUMER_APPLICATION_NAME", stream.as_str()),
            ("CONSUMER_FAILOVER_MS", "3000"),
            ("CONSUMER_POLL_INTERVAL_MS", "200"),
            // One Kinesis record (one aggregate) a batch: a checkpoint after every aggregate.
            ("CONSUMER_MAX_RECORDS", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let produce = |count: &str| {
        ServiceProcess::spawn(
            &producer_bin(),
            &testkit::env_with(
                &kinesis.endpoint(),
                &stream,
                &[
                    ("PRODUCER_COUNT", count),
                    ("PRODUCER_INTERVAL_MS", "20"),
                    ("PRODUCER_MESSAGES_PER_TICK", "10"),
                    ("PRODUCER_AGGREGATION", "true"),
                    ("PRODUCER_LINGER_MS", "20"),
                ],
            ),
        )
    };
    let mut first_batch = produce("150");
    first_batch.expect_exit(Duration::from_secs(60), 0);

    let mut first = ServiceProcess::spawn(consumer_bin(), &{
        let mut e = env.clone();
        e.push(("CONSUMER_WORKER_ID".into(), "first".into()));
        e
    });
    let some = testkit::eventually(Duration::from_secs(60), || {
        first.events("record received").len() >= 40
    })
    .await;
    assert!(some, "{}", first.dump());
    first.stop();
    let checkpoints = first.events("checkpoint");
    let last = checkpoints.last().expect("the first worker checkpointed");
    assert!(
        last["sub_sequence_number"].as_u64().is_some_and(|s| s > 0),
        "the checkpoint points inside an aggregate: {last}"
    );

    let mut second_batch = produce("50");
    second_batch.expect_exit(Duration::from_secs(60), 0);
    let sent: HashSet<String> = field(&first_batch.events("record sent"), "id")
        .into_iter()
        .chain(field(&second_batch.events("record sent"), "id"))
        .collect();
    assert_eq!(sent.len(), 200);

    let mut second = ServiceProcess::spawn(consumer_bin(), &{
        let mut e = env.clone();
        e.push(("CONSUMER_WORKER_ID".into(), "second".into()));
        e
    });
    let read_by_first = field(&first.events("record received"), "id");
    let all = testkit::eventually(Duration::from_secs(60), || {
        read_by_first.len() + second.events("record received").len() >= 200
    })
    .await;
    assert!(all, "{}", second.dump());
    second.stop();
    let read_by_second = field(&second.events("record received"), "id");
    let mut all_read: Vec<String> = read_by_first
        .iter()
        .chain(&read_by_second)
        .cloned()
        .collect();
    all_read.sort();
    let total = all_read.len();
    all_read.dedup();
    assert_eq!(
        total,
        all_read.len(),
        "a user record was read twice across the restart"
    );
    assert_eq!(
        all_read.into_iter().collect::<HashSet<_>>(),
        sent,
        "no user record skipped"
    );
}
