//! KPL aggregation across implementations, against kinesis-mock: records aggregated by the
//! official `aws-kinesis-agg` library are read back one by one by the consumer binary, and
//! records the producer binary aggregates are unpacked by the official library; end to end,
//! aggregated messages survive a shard split.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kinesis_common::message::DataMessage;
use serde_json::{json, Value};
use testkit::{field, Kind, ServiceProcess};

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
    assert!(data.starts_with(&kinesis_common::kpl::MAGIC));
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
    let dynamo = testkit::shared(testkit::lease_table_emulator());
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

/// Polling consumer with a short poll interval, its stdout in JSON.
fn polling_consumer(binary: &Path, endpoint: &str, stream: &str) -> ServiceProcess {
    ServiceProcess::spawn(
        binary,
        &testkit::env_with(endpoint, stream, &[("CONSUMER_POLL_INTERVAL_MS", "200")]),
    )
}

/// Aggregates whose keys Kinesis itself would refuse (a partition key longer than 256
/// characters, an explicit hash key that is not a decimal 128-bit number) are ordinary
/// malformed records: one warning naming shard and sequence number each, none of their members
/// delivered, and the records after them still arrive.
#[tokio::test]
async fn an_aggregate_with_keys_kinesis_would_refuse_is_a_malformed_record() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("agg-badkeys");
    testkit::create_stream(&client, &stream, 1).await;
    let inner: Vec<DataMessage> = (0..4).map(|_| DataMessage::new()).collect();
    let mut long_key = kinesis_common::kpl::Aggregator::new();
    long_key.add(&"k".repeat(257), None, &inner[0].to_json());
    long_key.add("fine", None, &inner[1].to_json());
    let mut bad_hash = kinesis_common::kpl::Aggregator::new();
    bad_hash.add("fine", Some("not-a-number"), &inner[2].to_json());
    bad_hash.add("fine", None, &inner[3].to_json());
    let bad = [
        testkit::put_record(&client, &stream, "a", long_key.finish()).await,
        testkit::put_record(&client, &stream, "b", bad_hash.finish()).await,
    ];
    let good = DataMessage::new();
    testkit::put_record(&client, &stream, "c", good.to_json()).await;

    let mut reader = polling_consumer(consumer_bin(), &emu.endpoint(), &stream);
    let arrived = testkit::eventually(Duration::from_secs(60), || {
        field(&reader.events("record received"), "id").contains(&good.id.to_string())
    })
    .await;
    assert!(arrived, "{}", reader.dump());
    reader.stop();
    assert_eq!(
        reader.events("record received").len(),
        1,
        "{}",
        reader.dump()
    );
    let warnings = reader.events("malformed record skipped");
    assert_eq!(warnings.len(), 2, "{}", reader.dump());
    for (warning, put) in warnings.iter().zip(&bad) {
        assert_eq!(warning["shard_id"].as_str(), Some(put.shard_id()));
        assert_eq!(
            warning["sequence_number"].as_str(),
            Some(put.sequence_number())
        );
    }
}

/// A KPL aggregate of about `size` bytes: one partition key of `key_len` characters, and as many
/// members with empty data naming it as fit. Written by hand: the aggregator would hash the key
/// once per member. Returns the bytes and the number of members.
fn hostile_aggregate(key_len: usize, size: usize) -> (Vec<u8>, usize) {
    use md5::Digest;
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut message = vec![0x0A]; // field 1, partition_key_table
    varint(key_len, &mut message);
    message.extend(std::iter::repeat_n(b'k', key_len));
    // field 3, a Record of 4 bytes: partition_key_index 0, data empty.
    let member = [0x1A, 0x04, 0x08, 0x00, 0x1A, 0x00];
    let mut members = 0;
    while message.len() + member.len() + 20 <= size {
        message.extend_from_slice(&member);
        members += 1;
    }
    let mut record = kinesis_common::kpl::MAGIC.to_vec();
    record.extend_from_slice(&message);
    record.extend_from_slice(&md5::Md5::digest(&message));
    (record, members)
}

/// A 1 MB aggregate whose ~100,000 members all name one 400 KB partition key. Copying the key
/// per member would need 40 GB; the consumer runs with its address space capped at 1 GB, so a
/// copy kills it instead of the machine. It must skip the record with a warning, stay small
/// and go on.
#[tokio::test]
async fn a_hostile_aggregate_neither_crashes_the_consumer_nor_blows_up_its_memory() {
    let emu = testkit::shared(Kind::KinesisMock);
    let client = emu.kinesis();
    let stream = testkit::unique_name("agg-hostile");
    testkit::create_stream(&client, &stream, 1).await;
    let (hostile, members) = hostile_aggregate(400_000, 1_000_000);
    assert!(members > 90_000, "{members} members");
    let put = testkit::put_record(&client, &stream, "hostile", hostile).await;
    let good = DataMessage::new();
    testkit::put_record(&client, &stream, "after", good.to_json()).await;

    let dir = std::env::temp_dir().join(testkit::unique_name("capped-consumer"));
    std::fs::create_dir_all(&dir).unwrap();
    let wrapper = dir.join("consumer");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -v 1000000 || exit 99\nexec '{}'\n",
            consumer_bin().display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut reader = polling_consumer(&wrapper, &emu.endpoint(), &stream);
    let arrived = testkit::eventually(Duration::from_secs(60), || {
        field(&reader.events("record received"), "id").contains(&good.id.to_string())
    })
    .await;
    assert!(arrived, "{}", reader.dump());
    let peak_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", reader.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    eprintln!("consumer peak resident memory: {peak_kib} KiB");
    reader.stop();
    let warnings = reader.events("malformed record skipped");
    assert_eq!(warnings.len(), 1, "{}", reader.dump());
    assert_eq!(
        warnings[0]["sequence_number"].as_str(),
        Some(put.sequence_number())
    );
    assert_eq!(warnings[0]["partition_key"].as_str(), Some("hostile"));
    assert!(
        peak_kib < 200 * 1024,
        "peak resident memory {peak_kib} KiB for a 1 MB record"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
